"""model codec: exact on permutations and multisets, compiled == reference, hostile bytes,
thread counts, bounded memory, and below the uniform limit on LaPerm-trained fixtures."""
import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from codec_cases import TRAINED, shuffled, trained_layers, values
from permcodec import _core, perm as P
from permcodec.codecs import _model_ref as R, _model_search as S, model
from permcodec.errors import FormatError, PermcodecError
from permcodec.perm import info_bits

DTYPES = ["float32", "float16", "bfloat16", "float64"]


@given(rows=st.integers(1, 5), n=st.integers(1, 70), dtype=st.sampled_from(DTYPES),
       zeros=st.sampled_from([0.0, 0.3, 0.9, 1.0]), const=st.booleans(), near=st.sampled_from([None, 0.0, 0.02, 0.3]),
       lanes=st.sampled_from([None, 1, 3]), seg=st.sampled_from([None, 1, 2]), seed=st.integers(0, 2**32 - 1),
       lags=st.sampled_from(["auto", [], [1], [1, 3], [2, 5, 7, 9]]))
def test_roundtrip_reference(rows, n, dtype, zeros, const, near, lanes, seg, seed, lags):
    rng = np.random.default_rng(seed)
    v = values(rng, rows, n, dtype, zeros, const)
    p = shuffled(rng, v, near)
    if near is not None and n > 2:     # frozen columns: force a random subset to keep its order
        cols = np.flatnonzero(rng.random(n) < 0.4)
        k = model.keys_of(v)
        for r in range(rows):
            src = p[r, cols]
            ordered = cols[np.lexsort((cols, k[r, cols]))]           # positions by initial (key, index)
            p[r, ordered] = src[np.lexsort((src, k[r, src]))]        # sources by (key, index)
        p = P.find(v, np.take_along_axis(v, p, 1))
    if not isinstance(lags, str):
        lags = [L for L in lags if L < n]
    params, payload = model.encode(p, v, lanes=lanes, segment_rows=seg, lags=lags)
    assert np.array_equal(model.decode(params, payload, v), p)
    assert np.array_equal(R.decode_reference(params, payload, v), p)
    got = model.decode_values(params, payload, v)
    assert got.dtype == v.dtype and got.tobytes() == np.take_along_axis(v, p, 1).tobytes()


@given(rows=st.integers(1, 4), n=st.integers(1, 60), levels=st.sampled_from([1, 3, 256]),
       seed=st.integers(0, 2**32 - 1))
def test_one_byte_values(rows, n, levels, seed):
    """float8/int8 tensors travel as one-byte patterns (sign bit 0x80 for the order keys)."""
    rng = np.random.default_rng(seed)
    v = rng.integers(0, levels, (rows, n)).astype(np.uint8)
    p = shuffled(rng, v, 0.05)
    params, payload = model.encode(p, v)
    assert np.array_equal(model.decode(params, payload, v), p)
    assert np.array_equal(R.decode_reference(params, payload, v), p)
    assert model.decode_values(params, payload, v).tobytes() == np.take_along_axis(v, p, 1).tobytes()


def test_frozen_columns_pay():
    """Columns that keep their relative order in every row (dead input pixels) are found and cost
    less than the rest."""
    rng = np.random.default_rng(3)
    v = values(rng, 30, 200)
    p = shuffled(rng, v, 0.2)
    cols = np.arange(0, 200, 3)
    k = model.keys_of(v)
    for r in range(30):
        src = p[r, cols]
        p[r, cols[np.argsort(k[r, cols], kind="stable")]] = src[np.argsort(k[r, src], kind="stable")]
    found = model.find_frozen(k, p)
    assert found is not None and found[cols].all()
    with_f = model.encode(p, v, frozen=found, lags=[])
    without = model.encode(p, v, frozen=None, lags=[])
    assert with_f[0]["frozen"] and len(with_f[1]) < 0.9 * len(without[1])
    assert np.array_equal(R.decode_reference(*with_f, v), p)
    bad = found.copy()
    bad[1] = True
    with pytest.raises(ValueError):
        model.encode(p, v, frozen=bad | True, lags=[])


@pytest.mark.parametrize("rows,n", [(1, 2), (40, 25), (10, 100), (3, 576), (2, 784), (1, 4096), (1, 50000), (100, 1)])
@pytest.mark.parametrize("dtype,zeros,near", [("float32", 0.0, 0.01), ("float32", 0.5, None), ("bfloat16", 0.0, 0.05)])
def test_lengths(rows, n, dtype, zeros, near):
    rng = np.random.default_rng(rows + n)
    v = values(rng, rows, n, dtype, zeros)
    p = shuffled(rng, v, near)
    params, payload = model.encode(p, v)
    assert np.array_equal(model.decode(params, payload, v), p)


def test_near_identity_beats_limit():
    rng = np.random.default_rng(5)
    v = values(rng, 50, 400)
    p = shuffled(rng, v, 0.01)
    params, payload = model.encode(p, v)
    assert len(payload) * 8 < 0.5 * info_bits(v)
    assert np.array_equal(model.decode(params, payload, v), p)


def test_trained_fixtures_below_uniform():
    """Measured ratios (see formats/codecs/model.md): k20 0.830, pruned k200 0.929."""
    expect = {"laperm_mlp_k20.perm": 0.835, "laperm_mlp_k200_prune50.perm": 0.935}
    for path in TRAINED:
        coded = limit = 0
        for name, v, p in trained_layers(path):
            params, payload = model.encode(p, v)
            assert np.array_equal(model.decode(params, payload, v), p)
            coded += len(payload) * 8
            limit += info_bits(v)
        assert coded / limit <= expect[path.rsplit("/", 1)[-1]]


@given(data=st.binary(max_size=200), rows=st.integers(0, 3), n=st.integers(0, 30),
       lanes=st.integers(-1, 4), seg=st.integers(-1, 4), frozen=st.binary(max_size=5),
       lags=st.lists(st.integers(-1, 31), max_size=5))
def test_hostile_bytes(data, rows, n, lanes, seg, frozen, lags):
    rng = np.random.default_rng(len(data))
    v = values(rng, rows, n, "bfloat16", 0.5)
    params = {"name": "model", "lanes": lanes, "segment_rows": seg, "frozen": frozen, "lags": lags}
    results = []
    for dec in (model.decode, R.decode_reference, model.decode_values):
        try:
            results.append(dec(params, data, v))
        except FormatError:
            results.append(None)
    p, ref, got = results
    assert (p is None) == (ref is None) == (got is None)        # the same inputs are refused
    if p is not None:
        assert p.shape == v.shape and all(sorted(r) == list(range(n)) for r in p.tolist())
        assert np.array_equal(p, ref) and got.tobytes() == np.take_along_axis(v, p, 1).tobytes()


@given(rows=st.integers(1, 4), n=st.integers(1, 150), dtype=st.sampled_from(DTYPES),
       zeros=st.sampled_from([0.0, 0.5, 0.95]), near=st.sampled_from([None, 0.0, 0.01, 0.1]),
       seed=st.integers(0, 2**32 - 1))
def test_compiled_helpers_equal_plain(rows, n, dtype, zeros, near, seed):
    """The compiled row sort (order keys given, or raw bits mapped on the fly), the bitset
    compatibility and its clique equal the plain versions of _model_ref."""
    rng = np.random.default_rng(seed)
    v = values(rng, rows, n, dtype, zeros)
    p = shuffled(rng, v, near)
    k = model.keys_of(v)
    for r in range(rows):
        order, starts = R.row_order(k[r])
        for got in (_core.model_row_classes(k[r], False), _core.model_row_classes(model._bits(v)[r], True)):
            assert np.array_equal(got[0], order) and np.array_equal(got[1], starts)
    ok, okb = R.compat(k, p), S.compat_bits(k, p)
    assert np.array_equal(np.unpackbits(okb.view(np.uint8), axis=1, bitorder="little")[:, :n].astype(bool), ok)
    assert np.array_equal(R.clique(ok), S.clique_bits(okb, n))


def test_sampled_search_and_trials(monkeypatch):
    """Above the exact budgets the frozen set is searched on sampled rows then repaired (still
    valid in every row), and the options are compared on sampled rows; decoding is exact."""
    rng = np.random.default_rng(11)
    v = values(rng, 400, 200)
    p = shuffled(rng, v, 0.05)
    cols = np.arange(0, 200, 3)
    k = model.keys_of(v)
    for r in range(400):
        src = p[r, cols]
        p[r, cols[np.argsort(k[r, cols], kind="stable")]] = src[np.argsort(k[r, src], kind="stable")]
    p[7, [cols[0], cols[-1]]] = p[7, [cols[-1], cols[0]]]      # one row breaks two of them
    p = P.find(v, np.take_along_axis(v, p, 1))
    monkeypatch.setattr(S, "EXACT_WORDS", 1000)
    monkeypatch.setattr(S, "SAMPLE_WORDS", 200 * 4 * 10)  # 10 sampled rows: row 7 is not one
    found = model.find_frozen(k, p)
    assert found is not None and found.sum() >= len(cols) - 2 and not (found[cols[0]] and found[cols[-1]])
    params, payload = model.encode(p, v, frozen=found, lags=[])  # valid in every row
    assert np.array_equal(model.decode(params, payload, v), p)
    assert v.size > model.EXACT_TRIALS
    params, payload = model.encode(p, v)
    assert params["frozen"] and np.array_equal(model.decode(params, payload, v), p)


def test_worth_decides_only_whether_model_runs():
    """auto skips the model encode where the sampled prospect says it loses (random rows), keeps
    it where it wins; a forced codec="model" gives the same bits either way."""
    from permcodec import tensors
    from permcodec.rules import make
    rng = np.random.default_rng(2)
    for name, v, p in trained_layers(TRAINED[0])[:1]:
        assert model.worth(p, v) and model.prospect(p, v) < 0.9
    rule = make("he_uniform", (400, 300), seed=5, name="w")
    v = rule.values((400, 300), "float32")
    rnd = np.take_along_axis(v, np.argsort(rng.random(v.shape), 1), 1)
    assert not model.worth(P.find(v, rnd), v)
    params, _ = tensors.encode_permuted(rnd, rule, "float32", "w")
    assert params["name"] == "uniform"
    near = np.take_along_axis(v, P.find(v, v), 1)                  # identity: model is ~free
    params, payload = tensors.encode_permuted(near, rule, "float32", "w")
    assert params["name"] == "model"
    assert payload == tensors.encode_permuted(near, rule, "float32", "w", codec="model")[1]


def test_thread_count_never_changes_bits(monkeypatch):
    """Segments run in parallel: payloads, decoded permutations and the frozen search are the
    same with 1, 2 and 4 threads."""
    rng = np.random.default_rng(4)
    v = values(rng, 64, 300, "float16", 0.2)
    p = shuffled(rng, v, 0.03)
    k = model.keys_of(v)
    got = []
    for threads in ("1", "2", "4"):
        monkeypatch.setenv("PERMCODEC_NUM_THREADS", threads)
        assert _core.num_threads() == int(threads)
        params, payload = model.encode(p, v, lanes=3, segment_rows=5)
        dec = model.decode(params, payload, v)
        got.append((payload, dec.tobytes(), model.decode_values(params, payload, v).tobytes(),
                    S.compat_bits(k, p).tobytes()))
    assert got[0] == got[1] == got[2]
    assert np.array_equal(dec, p) and np.array_equal(R.decode_reference(params, payload, v), p)


def test_rows_longer_than_2_28_are_refused():
    """The coder gives every item a slot of M = 2**28, so n <= 2**28 everywhere (model.md §1)."""
    n = (1 << 28) + 1
    params = {"name": "model", "lanes": 1, "segment_rows": 1, "frozen": b"", "lags": []}
    for call in (lambda: model.check_params(params, 1, n), lambda: model.check_payload(params, b"", 1, n),
                 lambda: model.working_bytes(params, 1, n, 4)):
        with pytest.raises(FormatError, match=f"at most {1 << 28}"):
            call()
    huge = np.broadcast_to(np.zeros(1, np.float32), (1, n))      # no memory behind it
    for dec in (model.decode, model.decode_values):
        with pytest.raises(FormatError, match=f"at most {1 << 28}"):
            dec(params, b"", huge)
    with pytest.raises(PermcodecError, match="2\\*\\*28"):
        model.encode(np.broadcast_to(np.zeros(1, np.int64), (1, n)), huge)
    assert model.check_params(params, 1, 1 << 28)[0] == 1        # the limit itself is accepted


def test_payload_longer_than_any_encoding_is_refused():
    rng = np.random.default_rng(8)
    v = values(rng, 3, 40)
    params, payload = model.encode(shuffled(rng, v), v)
    model.check_payload(params, payload, 3, 40)
    longest = 4 * model.max_words(3, 40, params["lanes"], params["segment_rows"])
    assert len(payload) <= longest
    with pytest.raises(FormatError, match="longer than any encoding"):
        model.check_payload(params, payload + bytes(longest), 3, 40)
    params, payload = model.encode(shuffled(rng, v), v, segment_rows=1)
    padded = payload + bytes(4 * 41)                    # the last segment: 41 words more than symbols
    assert len(padded) <= 4 * model.max_words(3, 40, params["lanes"], 1)
    with pytest.raises(FormatError, match="segment 2 has more stream words than symbols"):
        model.check_payload(params, padded, 3, 40)


def test_encode_rejects_a_perm_that_is_not_a_permutation():
    rng = np.random.default_rng(9)
    v = values(rng, 2, 30)
    p = shuffled(rng, v)
    for bad in (30, -1):
        q = p.copy()
        q[1, 3] = bad
        with pytest.raises(ValueError, match="outside"):
            model.encode(q, v, frozen=None, lags=[])
    q = p.copy()
    q[0, 0] = q[0, 1]
    with pytest.raises(ValueError, match="not a permutation"):
        model.encode(q, v, frozen=None, lags=[])


_RSS = """
import json, sys
import numpy as np
from permcodec.codecs import model

def status(key):   # kB lines of /proc/self/status
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key + ":"))

d = np.load(sys.argv[1])
v, payload = d["v"], d["payload"].tobytes()
params = dict(json.loads(sys.argv[2]), frozen=b"")
rows, n = v.shape
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")                   # reset the peak (VmHWM) to the current RSS
before = status("VmRSS")
out = model.decode_values(params, payload, v)
print(json.dumps(dict(grew=status("VmHWM") - before, bound=model.working_bytes(params, rows, n, v.dtype.itemsize))))
"""


@pytest.mark.parametrize("rows,n", [(1, 1 << 21), (256, 4096)])
def test_working_bytes_bounds_the_decoder(rows, n, tmp_path):
    """Issue 10: one long row no longer needs ~90 bytes per weight. In a fresh process, the peak
    RSS (VmHWM, reset just before) grows by at most working_bytes while decode_values runs, and
    working_bytes is a small multiple of the decoded size plus O(n) per thread."""
    rng = np.random.default_rng(0)
    v = rng.standard_normal((rows, n)).astype(np.float32)
    p = shuffled(rng, v, 0.001)
    params, payload = model.encode(p, v, frozen=None, lags=[1])
    np.savez(tmp_path / "case.npz", v=v, payload=np.frombuffer(payload, np.uint8))
    del p
    params = dict(params, frozen="")     # bytes are not JSON; the subprocess puts b"" back
    run = subprocess.run([sys.executable, "-c", _RSS, str(tmp_path / "case.npz"), json.dumps(params)],
                         capture_output=True, text=True, timeout=600,
                         env={"PERMCODEC_NUM_THREADS": "2", "PYTHONPATH": "."})
    assert run.returncode == 0, run.stderr
    m = json.loads(run.stdout.strip().splitlines()[-1])
    assert 0 < m["grew"] <= m["bound"]
    assert m["bound"] <= 2 * rows * n * 4 + 2 * 40 * n + 3 * payload.__len__() + (1 << 16)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)),
                                                     min_size=1, max_size=4),
       lanes=st.sampled_from([1, 2]), seg=st.sampled_from([1, 3]))
def test_mutated_payloads(seed, flips, lanes, seg):
    """A valid payload with bytes flipped: the compiled decoder and the reference agree (the same
    permutation, or both refuse with FormatError) and nothing reads outside the payload."""
    rng = np.random.default_rng(seed)
    v = values(rng, 4, 33, "float16", 0.3)
    p = shuffled(rng, v, 0.05)
    frozen = np.zeros(33, bool)
    frozen[::4] = True
    for r in range(4):                                              # make the frozen set hold
        cols = np.flatnonzero(frozen)
        k = model.keys_of(v)
        src = p[r, cols]
        p[r, cols[np.lexsort((cols, k[r, cols]))]] = src[np.lexsort((src, k[r, src]))]
    p = P.find(v, np.take_along_axis(v, p, 1))
    params, payload = model.encode(p, v, lanes=lanes, segment_rows=seg, frozen=frozen, lags=[1, 2])
    data = bytearray(payload)
    for at, x in flips:
        data[at % len(data)] ^= x
    got = []
    for dec in (model.decode, R.decode_reference):
        try:
            got.append(dec(params, bytes(data), v))
        except FormatError:
            got.append(None)
    assert (got[0] is None) == (got[1] is None)
    if got[0] is not None:
        assert np.array_equal(got[0], got[1])
