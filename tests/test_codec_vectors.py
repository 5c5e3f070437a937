"""Golden files of the packed, uniform and model codecs (formats/vectors/codec_*.perm) decode to their
recorded digests with the fast and the reference decoders, and saving again gives the same bytes."""
import hashlib
import json
import pathlib
import sys

import numpy as np
import pytest

import permcodec
from permcodec import tensors as T
from permcodec.codecs import _model_ref, packed, uniform

VECTORS = pathlib.Path(__file__).resolve().parents[1] / "formats" / "vectors"
sys.path.insert(0, str(VECTORS))
INDEX = json.loads((VECTORS / "codec_digests.json").read_text())


@pytest.mark.parametrize("fname", sorted(INDEX))
def test_vector(fname, tmp_path):
    import make_codec_vectors as mcv
    path = VECTORS / fname
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == INDEX[fname]["sha256"]
    codec = mcv.FILES[fname][0]
    ref = {"uniform": uniform, "model": _model_ref, "packed": packed}[codec].decode_reference
    with permcodec.open(path) as f:
        for name, digest in INDEX[fname]["tensors"].items():
            arr = f.get_numpy(name, check_digest=True)
            assert hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest() == digest
            e = f.entry(name)
            if e["kind"] == "permuted":
                assert e["codec"]["name"] == codec
                v = T.initial_rows(e)
                p = ref(e["codec"], f.container.section(e["section"]), v)
                assert np.array_equal(np.take_along_axis(v, p, 1).reshape(arr.shape), arr)
    mcv.write(fname, tmp_path / fname)
    assert (tmp_path / fname).read_bytes() == data
