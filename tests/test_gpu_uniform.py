"""uniform on a device: the Triton decoder (permcodec._gpu_uniform, through TRITON_INTERPRET on CPU
tensors here, compiled on CUDA under -m gpu) equals uniform.decode_reference bit for bit, rejects
corrupt streams, and the gpu layout stays within +0.1% of the information limit."""
import os
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from permcodec.codecs import uniform
from permcodec.errors import FormatError
from permcodec.perm import info_bits

DEV = "cuda" if torch.cuda.is_available() else "cpu"
pytest.importorskip("triton")
if DEV == "cpu" and "permcodec._gpu_uniform" in sys.modules and not os.environ.get("TRITON_INTERPRET"):
    pytest.skip("the kernel was defined compiled and there is no CUDA", allow_module_level=True)
_env = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1" if DEV == "cpu" else (_env or "0")   # read when the kernel is defined
from permcodec import _gpu_uniform as G  # noqa: E402
if _env is None:
    del os.environ["TRITON_INTERPRET"]
else:
    os.environ["TRITON_INTERPRET"] = _env


def keys64(v: np.ndarray) -> torch.Tensor:
    k = uniform.keys_of(v)
    return torch.from_numpy(k.view(np.int64) if k.itemsize == 8 else k.astype(np.int64)).to(DEV)


def case(rng, rows, n, dtype, levels, zeros):
    v = rng.standard_normal((rows, n))
    if levels:
        v = np.round(v * levels)
    v[rng.random((rows, n)) < zeros] = 0.0
    return v.astype(dtype), np.argsort(rng.random((rows, n)), 1)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 5), n=st.integers(1, 12), dtype=st.sampled_from(["float32", "float16", "float64"]),
       levels=st.sampled_from([0, 1, 3]), zeros=st.sampled_from([0.0, 0.5, 0.9]),
       layout=st.sampled_from([{}, {"gpu": True}, {"lanes": 3, "segment_rows": 2}, {"lanes": 64, "segment_rows": 1}]),
       seed=st.integers(0, 2**32 - 1))
def test_kernel_equals_reference(rows, n, dtype, levels, zeros, layout, seed):
    v, perm = case(np.random.default_rng(seed), rows, n, dtype, levels, zeros)
    params, payload = uniform.encode(perm, v, **layout)
    ref = uniform.decode_reference(params, payload, v)
    got = G.decode(params, payload, keys64(v)).cpu().numpy()
    same = np.take_along_axis(v, ref, 1).tobytes() == np.take_along_axis(v, perm, 1).tobytes()
    assert same and got.tobytes() == ref.tobytes()   # ref is perm's canonical form (ties in source order)


def test_row_tables_match_reference_model():
    rng = np.random.default_rng(1)
    v, _ = case(rng, 4, 11, "float32", 2, 0.3)
    pool, npool, tsrc, coff, ccnt = (t.cpu().numpy() for t in G.row_tables(keys64(v)))
    for r in range(4):
        ref_pool, ref_ties = uniform.row_items(uniform.keys_of(v)[r])
        assert pool[r, :npool[r]].tolist() == ref_pool
        got_ties = [tsrc[r, coff[r, c]:coff[r, c] + ccnt[r, c]].tolist() for c in range(len(ref_ties))]
        assert got_ties == ref_ties and ccnt[r, len(ref_ties):].sum() == 0


@pytest.mark.parametrize("where", ["state", "stream", "truncate"])
def test_corrupt_payload_raises(where):
    v, perm = case(np.random.default_rng(2), 3, 9, "float32", 0, 0.0)
    params, payload = uniform.encode(perm, v)
    b = bytearray(payload)
    if where == "state":
        b[7] |= 0x80                       # lane 0's initial state >= 2**63
    elif where == "stream":
        b[-4:] = b"\xff\xff\xff\xff"
    else:
        b = b[:-4]
    with pytest.raises(FormatError):
        G.decode(params, bytes(b), keys64(v))


@pytest.mark.parametrize("rows, n, levels", [(256, 300, 0), (64, 2000, 0), (128, 500, 2)])
def test_gpu_layout_within_a_thousandth_of_the_limit(rows, n, levels):
    v, perm = case(np.random.default_rng(3), rows, n, "float32", levels, 0.0)
    params, payload = uniform.encode(perm, v, gpu=True)
    limit = info_bits(v)
    assert len(payload) * 8 <= limit * 1.001
    nseg = -(-rows // params["segment_rows"])   # as many segments as 96 framing bits each allow
    assert params["lanes"] == 1 and nseg >= min(rows, int(0.85e-3 * limit / 96))
    assert np.take_along_axis(v, uniform.decode(params, payload, v), 1).tobytes() == \
        np.take_along_axis(v, perm, 1).tobytes()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_million_values_equal_reference():
    v, perm = case(np.random.default_rng(4), 1000, 1000, "float32", 0, 0.0)
    params, payload = uniform.encode(perm, v, gpu=True)
    got = G.decode(params, payload, keys64(v)).cpu().numpy()
    assert got.tobytes() == uniform.decode(params, payload, v).tobytes()


@pytest.mark.parametrize("family, dtype, prune", [("he_normal", "float32", 0.0), ("he_uniform", "float64", 0.5),
                                                  ("he_normal", "bfloat16", 0.0), ("constant", "float32", 0.6)])
def test_gpu_decode_uniform_entry(family, dtype, prune, monkeypatch):
    """gpu.decode's uniform path (values generated on the device, then the kernel) = the CPU file path."""
    if DEV == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")   # gpu.supports: Triton runs (interpreted) here
    from permcodec import gpu
    from tests.test_gpu import entry_for
    e, payload, w = entry_for(family, dtype, prune, (5, 2, 7), "uniform")
    out = gpu.decode(e, payload, DEV, check_digest=True)
    assert out.cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes() == \
        np.ascontiguousarray(w).view(np.uint8).tobytes()
    with pytest.raises(FormatError):
        gpu.decode(e, payload[:-4], DEV)
