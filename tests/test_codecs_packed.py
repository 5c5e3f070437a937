"""The ``packed`` codec: exact and canonical on permutations and multisets, reference == fast,
corrupt bytes -> FormatError, and sizes within the stated bounds of the information limit."""
import subprocess
import sys

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
    assert params["ties"] == packed.has_ties(keys)  # the writer never says ties=false for tied values
    assert payload == packed.encode_reference(p, keys, params["ties"])
    packed.check_payload(params, payload, *v.shape)  # never refuses what the writer wrote
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


@pytest.mark.parametrize("kind", KINDS)
def test_thread_count_never_changes_a_bit(kind, monkeypatch):
    """Rows are split among threads by blocks; 1, 2 and 4 threads give the same bytes and values."""
    v = make(kind, 300, 301, 0.5, 11)  # above the serial threshold: the split really happens
    p = trained(v, 11)
    results = []
    for threads in ("1", "2", "4"):
        monkeypatch.setenv("PERMCODEC_NUM_THREADS", threads)
        params, payload = packed.encode(p, v)
        w = packed.decode_values(params, payload, v)
        results.append((params, payload, bits(w).tobytes(), packed.decode(params, payload, v).tobytes()))
    assert results[0] == results[1] == results[2]
    assert results[0][1] == packed.encode_reference(p, order_keys(v), results[0][0]["ties"])


@pytest.mark.parametrize("threads", ["1", "4"])
def test_thread_count_same_first_bad_row(threads, monkeypatch):
    """A bad payload is reported at the same (first) row whatever the split, as the reference does."""
    monkeypatch.setenv("PERMCODEC_NUM_THREADS", threads)
    v = make("distinct", 400, 200, 0, 5)
    _, payload = packed.encode(trained(v, 5), v)
    v[350, 7] = v[350, 9]  # two rows in different threads' shares repeat a value
    v[150, 3] = v[150, 4]
    params = {"name": "packed", "ties": False}
    for decode in (packed.decode_values, packed.decode, packed.decode_reference):
        with pytest.raises(FormatError, match="packed row 150 "):
            decode(params, payload, v)


@given(kind=st.sampled_from(("pruned", "constant", "weight_agnostic", "float16", "bfloat16", "few")),
       rows=st.integers(1, 5), n=st.integers(2, 80), seed=st.integers(0, 1000))
def test_ties_false_with_tied_values_is_rejected(kind, rows, n, seed):
    """packed.md §2: a payload saying ties=false for values where a row repeats one is refused by
    the reference and the compiled decoder alike, whatever its bytes."""
    v = make(kind, rows, n, 0.5, seed)
    if not packed.has_ties(order_keys(v)):
        return
    params = {"name": "packed", "ties": False}
    distinct = make("distinct", rows, n, 0, seed)
    _, payload = packed.encode(trained(distinct, seed), distinct)  # a well-formed ties=false stream
    packed.check_payload(params, payload, rows, n)  # the length alone is fine
    for decode in (packed.decode_reference, packed.decode, packed.decode_values):
        with pytest.raises(FormatError, match="ties=false"):
            decode(params, payload, v)


def test_check_payload_before_values():
    """Length and params are checked from (rows, n) alone: exact without ties, a ceiling with them."""
    ok = {"name": "packed", "ties": False}
    most = (3 * packed.row_bits(packed.PERM, 50, 1) + 7) // 8
    packed.check_payload(ok, bytes(most), 3, 50)
    for payload in (bytes(most - 1), bytes(most + 1), bytes(most - 1) + b"\xff"):
        with pytest.raises(FormatError):
            packed.check_payload(ok, payload, 3, 50)
    tied = {"name": "packed", "ties": True}
    packed.check_payload(tied, b"", 3, 50)
    packed.check_payload(tied, bytes(most), 3, 50)
    with pytest.raises(FormatError):
        packed.check_payload(tied, bytes(most + 1), 3, 50)
    with pytest.raises(FormatError):
        packed.check_payload(tied, b"", 1, packed.MAX_N + 1)
    with pytest.raises(FormatError):
        packed.check_payload({"name": "packed", "ties": 0}, b"", 1, 1)


def test_working_bytes_is_a_small_multiple_of_the_tensor():
    """issue 10: the decoder's own allocations stay below a few times the decoded tensor, plus O(n)
    per thread; the bound grows with rows, n and itemsize as the decoder does."""
    for ties in (False, True):
        params = {"name": "packed", "ties": ties}
        for rows, n, size in ((1 << 25, 1, 2), (1 << 20, 2, 2), (4096, 576, 4), (64, 4608, 4)):
            decoded = rows * n * size
            wb = packed.working_bytes(params, rows, n, size)
            assert decoded <= wb <= 9 * decoded + 64 * packed._core.packed_scratch_bytes(n, size) + (8 << 20)
    assert packed.working_bytes({"name": "packed", "ties": True}, 1 << 25, 1, 2) < 3 * (1 << 26)


HOSTILE = """
import resource, sys
import numpy as np
from permcodec.codecs import packed
rows, n = 1 << 25, 1
v = np.zeros((rows, n), np.float16)  # a ~3 KB file declares this: [2^25, 1] float16, ties
params = {"name": "packed", "ties": True}
packed.check_payload(params, b"", rows, n)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
w = packed.decode_values(params, b"", v)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
assert w.shape == v.shape and w.dtype == v.dtype and not w.any()
bound = packed.working_bytes(params, rows, n, 2)
print(grown, bound)
sys.exit(0 if grown <= bound else 1)
"""


def test_hostile_many_one_weight_rows_stay_within_bound():
    """The file that drove the numba decoder to +3.5 GB: now within working_bytes (RSS measured)."""
    r = subprocess.run([sys.executable, "-c", HOSTILE], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


@given(data=st.binary(min_size=1, max_size=64), n=st.integers(2, 30), rows=st.integers(1, 3),
       kind=st.sampled_from(KINDS), seed=st.integers(0, 1000))
def test_check_payload_never_refuses_a_decodable_payload(data, n, rows, kind, seed):
    """check_payload runs before the values exist; it must only refuse what decode also refuses."""
    v = make(kind, rows, n, 0.5, seed)
    params = {"name": "packed", "ties": packed.has_ties(order_keys(v))}
    try:
        packed.check_payload(params, data, rows, n)
    except FormatError:
        with pytest.raises(FormatError):
            packed.decode_values(params, data, v)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 40, 577, 4608])
def test_compiled_schedules_equal_the_reference(n):
    """The core builds PERM schedules from (PERM, n, 1)'s prefix plus the tail: same K_t as packed.schedule."""
    ps = sorted({1, 2, 3, n // 2, n - 3, n - 1, n} & set(range(1, n + 1))) if n > 60 else range(1, n + 1)
    for p in ps:
        for mode in (packed.PERM, packed.SEQ):
            assert packed._core.packed_schedule(mode, n, p).tolist() == packed.schedule(mode, n, p).tolist()
            assert packed._core.packed_row_bits(mode, n, p) == packed.row_bits(mode, n, p)


def test_encoder_refuses_what_is_not_a_permutation():
    """The core indexes with perm: an index out of range or repeated is refused, never written."""
    from permcodec.errors import PermcodecError
    v = make("distinct", 2, 6, 0, 1)
    for bad in ([[0, 1, 2, 3, 4, 6], [0, 1, 2, 3, 4, 5]], [[0, 1, 2, 3, 4, 5], [0, 0, 2, 3, 4, 5]],
                [[-1, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]]):
        with pytest.raises(PermcodecError, match="not a permutation"):
            packed.encode(np.array(bad), v)
