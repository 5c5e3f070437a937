"""Folders as save and load targets, as Hugging Face users pass them: ``save(model, "out/")``
writes ``out/model.perm`` (or its shards and ``out/model.perm.index.json``), ``load("out")`` and
``load("out/")`` read whichever of the two the folder holds."""
from __future__ import annotations

import errno
import os

WEIGHTS_NAME = "model.perm"
INDEX_NAME = WEIGHTS_NAME + ".index.json"


def save_target(path) -> str:
    """The file a save to ``path`` writes: ``path/model.perm`` when ``path`` ends with a separator
    (the folder is created), else ``path``. Saving to an existing folder named without the
    separator is refused by the save, so that a typo never writes somewhere unexpected."""
    path = os.fspath(path)
    if path.endswith(("/", os.sep)):
        os.makedirs(path, exist_ok=True)
        return os.path.join(path, WEIGHTS_NAME)
    return path


def load_target(path) -> str:
    """The file (or shard index) to read for ``path``: a folder's ``model.perm`` or its index."""
    path = os.fspath(path)
    if not os.path.isdir(path) or path.endswith(".index.json"):  # a folder named as an index is refused later
        return path
    for name in (WEIGHTS_NAME, INDEX_NAME):
        if os.path.exists(os.path.join(path, name)):
            return os.path.join(path, name)
    raise FileNotFoundError(errno.ENOENT, f"the folder holds neither {WEIGHTS_NAME} nor {INDEX_NAME}: "
                                          f"give the path of a .perm file", path)
