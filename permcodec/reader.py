"""Reading permcodec files without torch: a path (memory-mapped), bytes, or a file object.

The torch adapter's ``permcodec.File`` adds ``get_tensor`` on top of :class:`File`; the CLI's
``info`` and ``verify`` use this one, so they never import torch. ``safe_open(...,
framework="np")`` hands out numpy arrays from it.
"""
from __future__ import annotations

import io
import mmap
import os

import numpy as np

from . import format as fmt
from .errors import IntegrityError, PermcodecError, TensorNotFoundError


class Metadata(dict):
    """The file's metadata; calling it returns itself, so both ``f.metadata`` (permcodec) and
    ``f.metadata()`` (safetensors' safe_open) read it."""

    def __call__(self) -> dict:
        return self


def in_memory(source) -> bool:
    """Whether ``source`` is bytes or a file object rather than a path."""
    return isinstance(source, (bytes, bytearray, memoryview)) or hasattr(source, "read")


def _buffer(source):
    """(buffer, mmap to close or None, name) of a path, a bytes-like object or a binary file object."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return source, None, "<bytes>"
    if in_memory(source):
        name = str(getattr(source, "name", "<file object>"))
        data = None if isinstance(source, io.TextIOBase) else source.read()
        if not isinstance(data, (bytes, bytearray)):
            raise PermcodecError(f"{name} is opened in text mode: open it with 'rb'")
        return data, None, name
    path = os.fspath(source)
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise fmt.FormatError(f"{path} is empty: not a permcodec file")
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    return mm, mm, path


class File:
    """A permcodec file opened for lazy reading: one tensor is decoded at a time (numpy)."""

    def __init__(self, source):
        buf, self._mm, self.path = _buffer(source)
        if len(buf) == 0:
            raise fmt.FormatError(f"{self.path} is empty: not a permcodec file")
        try:
            self.container = fmt.Container(buf)
        except BaseException:
            self.close()
            raise
        self.header = self.container.header
        self.entries = {t["name"]: t for t in self.header["tensors"]}

    @property
    def metadata(self) -> Metadata:
        return Metadata(self.header.get("metadata", {}))

    def keys(self):
        return list(self.entries)

    def __contains__(self, name):
        return name in self.entries

    def entry(self, name) -> dict:
        """The header entry of ``name`` (an alias's target entry)."""
        try:
            e = self.entries[name]
        except (KeyError, TypeError):
            raise TensorNotFoundError(f"no tensor {name!r} in {self.path}: it holds {_some(self.keys())}") from None
        return self.entries[e["target"]] if e["kind"] == "alias" else e

    def get_numpy(self, name, check_digest: bool = False) -> np.ndarray:
        from . import tensors as T  # the codecs: imported on the first decode, not to read a header
        e = self.entry(name)
        arr = T.decode(e, self.container.section(e["section"]))
        if check_digest and T.digest(arr) != e["digest"]:
            raise IntegrityError(f"tensor {name!r} does not rebuild to its recorded digest "
                                 f"(decoder or generator mismatch): report this with the file")
        return arr

    def get_rows(self, name, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) along dim 0 of ``name`` (0 <= start <= stop <= shape[0]), decoding
        only what covers them where the codec allows (tensors.decode_rows)."""
        from . import tensors as T
        e = self.entry(name)
        return T.decode_rows(e, self.container.section(e["section"]), start, stop)

    def close(self):
        mm, self._mm = getattr(self, "_mm", None), None
        self.container = None
        if mm is not None:
            try:
                mm.close()
            except BufferError:  # a view is still alive; the map closes when it is collected
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _some(names, shown: int = 5) -> str:
    names = list(names)
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return (", ".join(map(repr, names[:shown])) or "no tensors") + more


def check(f, each=None) -> tuple[int, int, int]:
    """Decode every tensor of ``f`` (a File or ShardedFile) and check its digest; ``each(name,
    array)`` sees every decoded array. Returns (tensors, elements, permuted tensors)."""
    tensors = weights = permuted = 0
    for name, e in f.entries.items():
        arr = f.get_numpy(name, check_digest=True)
        tensors += 1
        weights += arr.size if e["kind"] != "alias" else 0
        permuted += e["kind"] == "permuted"
        if each is not None:
            each(name, arr)
    return tensors, weights, permuted
