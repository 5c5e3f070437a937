"""The ``packed`` codec: exact and canonical on permutations and multisets, reference == fast,
corrupt bytes -> FormatError, and sizes within the stated bounds of the information limit."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from permcodec import perm as P
from permcodec.codecs import get, packed
from permcodec.dtypes import order_keys
from permcodec.errors import FormatError

KINDS = ("distinct", "pruned", "constant", "weight_agnostic", "float16", "bfloat16", "few")


def make(kind, rows, n, rate, seed):
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((rows, n)).astype(np.float32)
    if kind == "pruned":
        v[rng.random((rows, n)) < rate] = 0.0
    elif kind == "constant":
        v[:] = np.float32(0.08)
        v[rng.random((rows, n)) < rate] = 0.0
    elif kind == "weight_agnostic":
        v = np.where(rng.random((rows, n)) < rate, 0.0, 0.03).astype(np.float32)
    elif kind == "float16":
        v = (v * 0.05).astype(np.float16)
        v[rng.random((rows, n)) < rate / 2] = 0.0
    elif kind == "bfloat16":
        v = (v.view(np.uint32) >> 16).astype(np.uint16)  # bf16 bit patterns, truncated
        v[:, : n // 3] &= 0xFFC0  # coarse values: many ties
    elif kind == "few":
        v = rng.integers(-2, 3, (rows, n)).astype(np.float64) * 0.5
    return v


def trained(v, seed):
    rng = np.random.default_rng(seed + 1)
    w = np.take_along_axis(v, np.argsort(rng.random(v.shape), axis=1), 1)
    return P.find(v, w)


def bits(a):
    return a.view(f"u{a.dtype.itemsize}")


def roundtrip(v, p):
    params, payload = packed.encode(p, v)
    keys = order_keys(v)
    assert payload == packed.encode_reference(p, keys, params["ties"])
    ref = packed.decode_reference(params, payload, v)
    fast = packed.decode(params, payload, v)
    assert np.array_equal(ref, p) and np.array_equal(fast, p)
    # the fused decoder (what load uses) gives the gathered values, bit for bit
    w = packed.decode_values(params, payload, v)
    assert w.dtype == v.dtype and np.array_equal(bits(w), bits(P.apply(v, p)))
    return params, payload


@given(kind=st.sampled_from(KINDS), rows=st.integers(1, 6), n=st.integers(1, 200),
       rate=st.floats(0.0, 1.0), seed=st.integers(0, 2**32 - 1))
def test_exact_and_canonical(kind, rows, n, rate, seed):
    v = make(kind, rows, n, rate, seed)
    p = trained(v, seed)
    params, payload = roundtrip(v, p)
    assert get("packed") is packed
    # never more than coding every row as distinct values (plus the rounding to a byte)
    assert len(payload) <= (rows * packed.row_bits(packed.PERM, n, 1) + 7) // 8


@pytest.mark.parametrize("n", [1, 2, 3, 577, 1500])
def test_lengths_and_identity(n):
    v = make("distinct", 3, n, 0, n)
    roundtrip(v, trained(v, n))
    roundtrip(v, np.tile(np.arange(n), (3, 1)))


@pytest.mark.parametrize("n, bound", [(100, 0.05), (576, 0.01), (784, 0.01), (4096, 0.01)])
def test_size_within_bound_of_limit(n, bound):
    v = make("distinct", 4, n, 0, 7)
    p = trained(v, 7)
    _, payload = packed.encode(p, v)
    limit = P.info_bits(v)
    assert len(payload) * 8 <= limit * (1 + bound)
    assert len(payload) * 8 <= limit * 1.001 + 8  # measured: within a bit per row


@pytest.mark.parametrize("kind, rate", [("pruned", 0.5), ("pruned", 0.9), ("weight_agnostic", 0.5)])
def test_multisets_near_limit(kind, rate):
    v = make(kind, 8, 784, rate, 3)
    _, payload = packed.encode(trained(v, 3), v)
    assert len(payload) * 8 <= P.info_bits(v) * 1.01


@given(data=st.binary(max_size=300), n=st.integers(1, 40), rows=st.integers(1, 4),
       ties=st.booleans(), kind=st.sampled_from(KINDS), seed=st.integers(0, 1000))
def test_random_bytes_decode_or_format_error(data, n, rows, ties, kind, seed):
    v = make(kind, rows, n, 0.5, seed)
    params = {"name": "packed", "ties": ties}
    results = []
    for decode in (packed.decode_reference, packed.decode):
        try:
            results.append(P.check(decode(params, data, v)))
        except FormatError:
            results.append(None)
    assert (results[0] is None) == (results[1] is None)
    try:
        w = packed.decode_values(params, data, v)
    except FormatError:
        w = None
    assert (w is None) == (results[1] is None)
    if w is not None:
        assert np.array_equal(bits(w), bits(P.apply(v, results[1])))


@given(n=st.integers(2, 60), seed=st.integers(0, 1000), kind=st.sampled_from(KINDS))
def test_corrupted_payload(n, seed, kind):
    """Flipping any bit gives a valid permutation or FormatError, with both decoders agreeing."""
    v = make(kind, 3, n, 0.5, seed)
    params, payload = packed.encode(trained(v, seed), v)
    if not payload:
        return
    bit = seed % (len(payload) * 8)
    bad = bytearray(payload)
    bad[bit // 8] ^= 0x80 >> (bit % 8)
    results = []
    for decode in (packed.decode_reference, packed.decode):
        try:
            results.append(P.check(decode(params, bytes(bad), v)))
        except FormatError:
            results.append(None)
    assert (results[0] is None) == (results[1] is None)
    if results[0] is not None:
        assert np.array_equal(results[0], results[1])
        assert np.array_equal(bits(packed.decode_values(params, bytes(bad), v)), bits(P.apply(v, results[0])))
    else:
        with pytest.raises(FormatError):
            packed.decode_values(params, bytes(bad), v)


def test_bad_params():
    v = make("distinct", 2, 5, 0, 0)
    params, payload = packed.encode(trained(v, 0), v)
    for bad in ({"name": "packed"}, {"name": "packed", "ties": 1}, {"name": "packed", "ties": False, "x": 1}, []):
        with pytest.raises(FormatError):
            packed.decode(bad, payload, v)
    with pytest.raises(FormatError):
        packed.decode(params, payload + b"\0", v)
    with pytest.raises(FormatError):
        packed.decode(params, payload[:-1], v)


def test_worked_examples_of_the_spec():
    """formats/codecs/packed.md §7, byte for byte."""
    v = np.array([[0.3, -0.1, 0.7, 0.2]], np.float32)
    assert packed.encode(np.array([[2, 0, 3, 1]]), v) == ({"name": "packed", "ties": False}, b"\x18")
    assert packed.decode_reference({"name": "packed", "ties": False}, b"\x18", v).tolist() == [[2, 0, 3, 1]]
    v = np.array([[0, 0.5, 0, 0.5, 0, 0]], np.float32)
    p = P.find(v, np.array([[0.5, 0, 0, 0.5, 0, 0]], np.float32))
    assert p.tolist() == [[1, 0, 2, 3, 4, 5]]
    assert packed.encode(p, v) == ({"name": "packed", "ties": True}, b"\x90")
    assert packed.schedule(packed.PERM, 4, 1).tolist() == [5, 0, 0]


@pytest.mark.parametrize("kind", KINDS)
def test_many_rows_blocks(kind):
    """More rows than a parallel block (64): block edges that share a byte, mixed row layouts."""
    for rows, n in ((200, 13), (130, 3), (70, 57)):
        v = make(kind, rows, n, 0.5, rows + n)
        roundtrip(v, trained(v, rows))
