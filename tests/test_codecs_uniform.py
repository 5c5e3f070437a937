"""uniform codec: exact on permutations and multisets, fast == reference, hostile bytes, size."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from codec_cases import TRAINED, shuffled, trained_layers, values
from permcodec.codecs import _rans, uniform
from permcodec.errors import FormatError
from permcodec.perm import info_bits

DTYPES = ["float32", "float16", "bfloat16", "float64"]


def bits(a):
    return a.view(f"u{a.dtype.itemsize}")


def overhead_bound(params, rows, n):
    """Bits the payload may exceed the limit by: 64 per lane, 32 per segment, 1e-4 relative."""
    nseg = -(-rows // params["segment_rows"])
    return nseg * (64 * params["lanes"] + 32 + 32)


@given(rows=st.integers(1, 6), n=st.integers(1, 90), dtype=st.sampled_from(DTYPES),
       zeros=st.sampled_from([0.0, 0.3, 0.9, 1.0]), const=st.booleans(), lanes=st.sampled_from([None, 1, 3]),
       seg=st.sampled_from([None, 1, 2]), seed=st.integers(0, 2**32 - 1))
def test_roundtrip_reference(rows, n, dtype, zeros, const, lanes, seg, seed):
    rng = np.random.default_rng(seed)
    v = values(rng, rows, n, dtype, zeros, const)
    p = shuffled(rng, v)
    params, payload = uniform.encode(p, v, lanes=lanes, segment_rows=seg)
    assert np.array_equal(uniform.decode(params, payload, v), p)
    assert np.array_equal(uniform.decode_reference(params, payload, v), p)
    w = uniform.decode_values(params, payload, v)  # the fused decoder load uses
    assert w.dtype == v.dtype and np.array_equal(bits(w), bits(np.take_along_axis(v, p, 1)))
    assert len(payload) * 8 <= info_bits(v) * 1.0001 + overhead_bound(params, rows, n)


@pytest.mark.parametrize("rows,n", [(1, 2), (50, 25), (20, 100), (4, 576), (3, 784), (2, 4096), (1, 50000), (784, 1)])
@pytest.mark.parametrize("dtype,zeros", [("float32", 0.0), ("float32", 0.5), ("bfloat16", 0.0), ("float16", 0.9)])
def test_lengths(rows, n, dtype, zeros):
    rng = np.random.default_rng(rows * n)
    v = values(rng, rows, n, dtype, zeros)
    p = shuffled(rng, v)
    params, payload = uniform.encode(p, v)
    assert np.array_equal(uniform.decode(params, payload, v), p)
    assert len(payload) * 8 <= info_bits(v) * 1.0001 + overhead_bound(params, rows, n)


def test_within_0_1_percent_of_limit():
    rng = np.random.default_rng(1)
    for rows, n, dtype, zeros in [(2000, 25, "float32", 0.0), (1000, 100, "float32", 0.9), (128, 784, "bfloat16", 0.0),
                                  (24, 4096, "float32", 0.5), (2, 50000, "float32", 0.0)]:
        v = values(rng, rows, n, dtype, zeros)
        p = shuffled(rng, v)
        params, payload = uniform.encode(p, v)
        assert len(payload) * 8 <= info_bits(v) * 1.001, (rows, n, dtype, zeros)
        assert np.array_equal(uniform.decode(params, payload, v), p)


def test_parallel_segments_agree():
    rng = np.random.default_rng(2)
    v = values(rng, 64, 300, "float16", 0.2)
    p = shuffled(rng, v)
    for lanes, seg in [(1, 64), (4, 5), (7, 1)]:
        params, payload = uniform.encode(p, v, lanes=lanes, segment_rows=seg)
        assert np.array_equal(uniform.decode(params, payload, v), p)
        assert np.array_equal(uniform.decode_reference(params, payload, v), p)


def test_trained_fixtures_at_limit():
    for path in TRAINED:
        for name, v, p in trained_layers(path):
            params, payload = uniform.encode(p, v)
            assert np.array_equal(uniform.decode(params, payload, v), p)
            assert len(payload) * 8 <= info_bits(v) * 1.001 + 96, name


@given(data=st.binary(max_size=200), rows=st.integers(0, 4), n=st.integers(0, 40),
       lanes=st.integers(-1, 5), seg=st.integers(-1, 5), extra=st.booleans())
def test_hostile_bytes(data, rows, n, lanes, seg, extra):
    rng = np.random.default_rng(len(data))
    v = values(rng, rows, n, "float16", 0.5)
    params = {"name": "uniform", "lanes": lanes, "segment_rows": seg}
    if extra:
        params["x"] = 1
    got = []
    for dec in (uniform.decode, uniform.decode_reference):
        try:
            p = dec(params, data, v)
        except FormatError:
            got.append(None)
            continue
        assert p.shape == v.shape and all(sorted(r) == list(range(n)) for r in p.tolist())
        got.append(p)
    try:
        w = uniform.decode_values(params, data, v)
    except FormatError:
        w = None
    assert (w is None) == (got[0] is None)
    if w is not None:
        assert np.array_equal(bits(w), bits(np.take_along_axis(v, got[0], 1)))


def test_corrupted_payload_is_caught():
    rng = np.random.default_rng(3)
    v = values(rng, 8, 200)
    p = shuffled(rng, v)
    params, payload = uniform.encode(p, v)
    caught = 0
    for k in range(0, len(payload), max(1, len(payload) // 40)):
        bad = bytearray(payload)
        bad[k] ^= 0x10
        try:
            uniform.decode(params, bytes(bad), v)
        except FormatError:
            caught += 1
    assert caught >= 35


def test_bad_params_rejected():
    v = np.zeros((2, 3), np.float32)
    for params in ({"name": "uniform"}, {"name": "uniform", "lanes": 0, "segment_rows": 1},
                   {"name": "uniform", "lanes": 1, "segment_rows": 3}, {"name": "uniform", "lanes": True, "segment_rows": 1},
                   {"name": "uniform", "lanes": _rans.MAX_LANES + 1, "segment_rows": 1}):
        with pytest.raises(FormatError):
            uniform.decode(params, b"", v)
