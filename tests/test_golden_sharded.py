"""The golden sharded save (formats/vectors/sharded/, SPEC §16): the library loads it to its
recorded digests through the index, and saving the same model again gives the same files."""
import hashlib
import json
import pathlib
import sys

import numpy as np

import permcodec

VECTORS = pathlib.Path(__file__).resolve().parents[1] / "formats" / "vectors"
sys.path.insert(0, str(VECTORS))
KNOWN = json.loads((VECTORS / "sharded_digests.json").read_text())
INDEX = VECTORS / "sharded" / "model.perm.index.json"


def test_library_loads_the_sharded_save():
    known = KNOWN[INDEX.name]
    assert permcodec.verify(INDEX).tensors == len(known["tensors"])
    with permcodec.open(INDEX) as f:
        got = {n: hashlib.sha256(np.ascontiguousarray(f.get_numpy(n, check_digest=True)).tobytes()).hexdigest()
               for n in f.keys()}
    assert got == known["tensors"]


def test_saving_again_gives_the_same_files(tmp_path):
    import make_vectors as mv
    mv.write_sharded(tmp_path / "model.perm")
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(p.name for p in INDEX.parent.iterdir())
    for name in written:
        assert (tmp_path / name).read_bytes() == (INDEX.parent / name).read_bytes(), name
