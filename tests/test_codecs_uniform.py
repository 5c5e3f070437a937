"""uniform codec: exact on permutations and multisets, fast == reference, hostile bytes, size,
thread-count independence, bounded working memory."""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, strategies as st

from codec_cases import TRAINED, shuffled, trained_layers, values
from permcodec.codecs import _rans, uniform
from permcodec.errors import FormatError, PermcodecError
from permcodec.perm import info_bits

DTYPES = ["float32", "float16", "bfloat16", "float64"]


def bits(a):
    return a.view(f"u{a.dtype.itemsize}")


def overhead_bound(params, rows, n):
    """Bits the payload may exceed the limit by: 64 per lane, 32 per segment, 1e-4 relative."""
    nseg = -(-rows // params["segment_rows"])
    return nseg * (64 * params["lanes"] + 32 + 32)


@given(rows=st.integers(1, 6), n=st.integers(1, 90), dtype=st.sampled_from(DTYPES),
       zeros=st.sampled_from([0.0, 0.3, 0.9, 1.0]), const=st.booleans(), lanes=st.sampled_from([None, 1, 3, 4]),
       seg=st.sampled_from([None, 1, 2]), seed=st.integers(0, 2**32 - 1))
def test_roundtrip_reference(rows, n, dtype, zeros, const, lanes, seg, seed):
    rng = np.random.default_rng(seed)
    v = values(rng, rows, n, dtype, zeros, const)
    p = shuffled(rng, v)
    params, payload = uniform.encode(p, v, lanes=lanes, segment_rows=seg)
    uniform.check_payload(params, payload, rows, n)
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
                   {"name": "uniform", "lanes": 1, "segment_rows": 3},
                   {"name": "uniform", "lanes": True, "segment_rows": 1},
                   {"name": "uniform", "lanes": _rans.MAX_LANES + 1, "segment_rows": 1}):
        with pytest.raises(FormatError):
            uniform.decode(params, b"", v)


@given(rows=st.integers(1, 4), n=st.integers(1, 3000), levels=st.integers(1, 300), seed=st.integers(0, 2**32 - 1))
def test_one_byte_keys(rows, n, levels, seed):
    """float8/int8 tensors travel as one-byte keys (the compiled decoder indexes a direct table)."""
    rng = np.random.default_rng(seed)
    v = rng.integers(0, min(levels, 256), (rows, n)).astype(np.uint8)
    p = shuffled(rng, v)
    params, payload = uniform.encode(p, v)
    assert np.array_equal(uniform.decode(params, payload, v), p)
    assert np.array_equal(uniform.decode_values(params, payload, v), np.take_along_axis(v, p, 1))
    if rows * n <= 2000:
        assert np.array_equal(uniform.decode_reference(params, payload, v), p)


def spec_encode(perm, v, lanes, seg, count_trivial=True):
    """uniform.md read literally, in plain Python: symbol k of a segment on lane k mod L (trivial
    symbols, freq = M, counted unless ``count_trivial`` is False), all lanes emitting into one
    shared stream."""
    keys = uniform.keys_of(v)
    rows, n = perm.shape
    segments = []
    for lo in range(0, rows, seg):
        syms = []
        for row in range(lo, min(rows, lo + seg)):
            pool, ties = uniform.row_items(keys[row])
            used = [0] * len(ties)
            for i in range(n):
                src, r = int(perm[row, i]), n - i
                if src in pool:
                    a = pool.index(src)
                    e = a + 1
                    pool[a] = pool[-1]
                    pool.pop()
                else:
                    c = next(c for c, t in enumerate(ties) if src in t)
                    a = len(pool) + sum(len(t) - u for t, u in zip(ties[:c], used[:c]))
                    e = a + len(ties[c]) - used[c]
                    used[c] += 1
                syms.append(uniform.interval(a, e, r))
        lane_of, k = [], 0
        for cum, freq in syms:
            lane_of.append(k % lanes)
            k += count_trivial or freq != _rans.M
        x, stream = [_rans.LOW] * lanes, []
        for (cum, freq), lane in reversed(list(zip(syms, lane_of))):
            if x[lane] >> 35 >= freq:
                stream.append(x[lane] & 0xFFFFFFFF)
                x[lane] >>= 32
            x[lane] = (x[lane] // freq) * _rans.M + x[lane] % freq + cum
        states = [w for s in x for w in (s & 0xFFFFFFFF, s >> 32)]
        segments.append(states + stream[::-1])
    return _rans.frame(segments)


def test_lanes_count_every_symbol_and_share_one_stream():
    """Pins uniform.md §2: the k-th symbol of a segment is coded by lane k mod L counting the
    trivial ones (freq = M: a constant row, a row's last position), and the lanes read one
    shared stream of words."""
    rng = np.random.default_rng(7)
    v = values(rng, 6, 40, "float16", 0.5)
    v[2] = v[2, 0]          # a constant row: every symbol trivial
    v[4, :30] = v[4, 0]     # a row of mostly trivial-looking ties
    p = shuffled(rng, v)
    for lanes, seg in [(3, 6), (4, 2), (5, 3)]:
        params, payload = uniform.encode(p, v, lanes=lanes, segment_rows=seg)
        assert payload == spec_encode(p, v, lanes, seg)
        assert payload != spec_encode(p, v, lanes, seg, count_trivial=False)
        assert np.array_equal(uniform.decode_reference(params, payload, v), p)
        assert np.array_equal(uniform.decode(params, payload, v), p)


@pytest.mark.parametrize("dtype,zeros", [("float32", 0.0), ("float16", 0.3), ("float64", 0.9)])
def test_thread_count_never_changes_bits(monkeypatch, dtype, zeros):
    rng = np.random.default_rng(4)
    v = values(rng, 48, 3000, dtype, zeros)   # above the serial threshold, 12 segments
    p = shuffled(rng, v)
    got = []
    for threads in ("1", "2", "4"):
        monkeypatch.setenv("PERMCODEC_NUM_THREADS", threads)
        params, payload = uniform.encode(p, v, lanes=4, segment_rows=4)
        got.append((payload, uniform.decode(params, payload, v), bits(uniform.decode_values(params, payload, v))))
    for payload, perm, w in got[1:]:
        assert payload == got[0][0] and np.array_equal(perm, p) and np.array_equal(w, got[0][2])
    bad = bytearray(got[0][0])
    bad[len(bad) // 2] ^= 1
    msgs = []
    for threads in ("1", "3"):
        monkeypatch.setenv("PERMCODEC_NUM_THREADS", threads)
        with pytest.raises(FormatError) as e:
            uniform.decode_values(params, bytes(bad), v)
        msgs.append(str(e.value))
    assert msgs[0] == msgs[1]   # the first corrupt segment is reported, whatever the split


def test_unaligned_payload_buffer():
    rng = np.random.default_rng(5)
    v = values(rng, 3, 500, "float32", 0.2)
    p = shuffled(rng, v)
    params, payload = uniform.encode(p, v, lanes=2)
    view = memoryview(b"\0" + payload)[1:]
    assert np.array_equal(uniform.decode(params, view, v), p)


def test_encode_rejects_a_non_permutation():
    v = np.arange(12, dtype=np.float32).reshape(2, 6)
    p = np.tile(np.arange(6), (2, 1))
    for bad in (6, -1, 0):
        q = p.copy()
        q[1, 3] = bad
        with pytest.raises(PermcodecError):
            uniform.encode(q, v)


def test_check_payload_rejects_inconsistent_layouts():
    """Before any value is generated: a segment holding more words than its lanes' states plus
    one per symbol cannot decode (each symbol reads at most one word), rows past M items."""
    params = {"name": "uniform", "lanes": 1, "segment_rows": 1}
    states = np.array([0, 1], "<u4").tobytes()
    uniform.check_payload(params, states + b"\0" * 8, 1, 2)      # 2 symbols: at most 2 words
    with pytest.raises(FormatError, match="more stream words"):
        uniform.check_payload(params, states + b"\0" * 12, 1, 2)
    with pytest.raises(FormatError, match="more stream words"):   # segment 1 of 2 too long
        uniform.check_payload(params, np.array([2, 0, 1, 0, 1, 0, 0], "<u4").tobytes(), 2, 1)
    with pytest.raises(FormatError):
        uniform.check_payload(params, states, 1, _rans.M + 1)
    with pytest.raises(FormatError):
        uniform.working_bytes({"name": "uniform", "lanes": 0, "segment_rows": 1}, 1, 2, 4)


@pytest.mark.parametrize("itemsize", [1, 2, 4, 8])
def test_working_bytes_is_linear_in_the_decoded_size(itemsize):
    """The bound the loader checks: the output plus per thread one row's scratch (at most 32
    bytes per weight, plus a 256 KiB table for 2-byte keys), plus the segment table."""
    for rows, n, seg in [(1, 1 << 25, 1), (1000, 3000, 7), (1 << 20, 4, 1 << 20), (3, 5, 1)]:
        params = {"name": "uniform", "lanes": 4, "segment_rows": seg}
        nseg = -(-rows // seg)
        threads = 1 if nseg == 1 else min(nseg, 256)
        got = uniform.working_bytes(params, rows, n, itemsize)
        scratch = threads * (32 * n + (1 << 18) + (1 << 13)) + 8 * (nseg + 1)
        assert rows * n * itemsize < got <= rows * n * itemsize + scratch


MEASURE = """
import resource, sys
import numpy as np
from permcodec.codecs import uniform
n = 1 << 25
v = np.zeros((1, n), np.float16)          # one row of 2**25 equal values: a 2-word payload
params = {"name": "uniform", "lanes": 1, "segment_rows": 1}
payload = np.array([1 << 31, 0], "<u4").tobytes()  # the state 2**31: nothing coded
uniform.check_payload(params, payload, 1, n)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
w = uniform.decode_values(params, payload, v)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
assert not w.any()
print(after - before, uniform.working_bytes(params, 1, n, 2))
"""


def test_long_row_memory_stays_within_working_bytes():
    """Issue 10: a tiny file declaring one row of 2**25 weights drove +3.1 GB; now the decode's
    peak stays within working_bytes, a small multiple of the 64 MiB it decodes to."""
    env = dict(os.environ, PERMCODEC_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", MEASURE], capture_output=True, text=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=600)
    assert out.returncode == 0, out.stderr
    grew, bound = map(int, out.stdout.split())
    assert grew <= bound and bound <= 12 * (2 << 25)
