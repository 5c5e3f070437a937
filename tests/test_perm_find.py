"""perm.find and perm.check_apply: the compiled core (csrc/perm.cpp) equals the numpy references,
errors included, on ties, pruned zeros, -0.0 beside +0.0 and NaN patterns, at any thread count."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from permcodec import perm as P
from permcodec.errors import FormatError, NotAPermutationError
from permcodec.rules import make

DT = {"float64": np.float64, "float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}


@st.composite
def cases(draw):
    rows = draw(st.integers(1, 12))
    n = draw(st.integers(1, 400))
    dtype = draw(st.sampled_from(sorted(DT)))
    kind = draw(st.sampled_from(["distinct", "pruned", "shared", "few", "signed_zero", "nan"]))
    seed = draw(st.integers(0, 2**32))
    rng = np.random.default_rng(seed)
    if kind == "distinct":
        v = make("he_normal", (rows, n), seed=seed, name="w").values((rows, n), dtype)
    elif kind == "pruned":
        v = make("he_uniform", (rows, n), seed=seed, name="w", prune=0.5).values((rows, n), dtype)
    elif kind == "shared":
        v = make("constant", (rows, n), seed=seed, name="w", prune=0.9, value=0.03).values((rows, n), dtype)
    else:
        v = rng.integers(0, 5, (rows, n)).astype(DT[dtype])
        if kind == "signed_zero":
            v.reshape(-1)[::3] = 0x8000 if dtype == "bfloat16" else -0.0
        if kind == "nan":  # a few NaN payloads and both signs: each pattern is its own value
            bits = v.view(np.dtype(f"u{v.dtype.itemsize}")).reshape(-1)
            width = v.dtype.itemsize * 8
            exp = {16: 0x7C00 if dtype == "float16" else 0x7F80, 32: 0x7F800000, 64: 0x7FF0000000000000}[width]
            for i, payload in enumerate((1, 2, 1 << 3)):
                bits[i::5] = (exp | payload) | ((i & 1) << (width - 1))
    return v, rng.permuted(v, axis=1), rng


@given(cases())
def test_find_equals_reference(case):
    v, w, _ = case
    assert np.array_equal(P.find(v, w), P.find_reference(v, w))
    assert np.array_equal(P.apply(v, P.find(v, w)).view(np.uint8), w.view(np.uint8))


@given(cases())
def test_find_rejects_what_the_reference_rejects(case):
    v, w, rng = case
    w = w.copy()
    r, j = int(rng.integers(w.shape[0])), int(rng.integers(w.shape[1]))
    flat = w.view(np.dtype(f"u{w.dtype.itemsize}"))
    flat[r, j] ^= 1 << int(rng.integers(w.dtype.itemsize * 8))
    outcomes = []
    for backend in ("auto", "reference"):
        try:
            outcomes.append(("ok", P.find(v, w, "t", backend=backend).tobytes()))
        except NotAPermutationError as e:
            outcomes.append(("error", str(e)))
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("threads", ["1", "2", "4"])
def test_large_rows_at_any_thread_count(threads, monkeypatch):
    monkeypatch.setenv("PERMCODEC_NUM_THREADS", threads)
    v = make("he_uniform", (300, 1200), seed=3, name="w", prune=0.3).values((300, 1200), "float32")
    w = np.random.default_rng(0).permuted(v, axis=1)
    p = P.find(v, w)
    assert np.array_equal(p, P.find_reference(v, w))
    assert P.check_apply(v, p).tobytes() == P.apply(v, p).tobytes() == w.tobytes()


@given(cases())
def test_check_apply_equals_reference(case):
    v, w, _ = case
    p = P.find_reference(v, w)
    assert P.check_apply(v, p).tobytes() == P.apply(v, P.check(p)).tobytes()


@given(cases(), st.sampled_from(["repeat", "negative", "too_big", "huge"]), st.integers(0, 2**32))
def test_check_apply_rejects_what_check_rejects(case, damage, seed):
    v, w, _ = case
    p = P.find_reference(v, w).copy()
    rng = np.random.default_rng(seed)
    r, j = int(rng.integers(p.shape[0])), int(rng.integers(p.shape[1]))
    p[r, j] = {"repeat": p[r, (j + 1) % p.shape[1]], "negative": -1, "too_big": p.shape[1],
               "huge": -(2**63)}[damage]
    if damage == "repeat" and p.shape[1] == 1:
        return  # a one-element row cannot repeat an index
    with pytest.raises(FormatError) as expected:
        P.check(p, "rows")
    with pytest.raises(FormatError) as got:
        P.check_apply(v, p, "rows")
    assert str(got.value) == str(expected.value)


def test_find_backend_is_checked():
    v = np.zeros((1, 3), np.float32)
    with pytest.raises(ValueError):
        P.find(v, v, backend="gpu")


def test_empty_rows():
    v = np.zeros((3, 0), np.float32)
    assert P.find(v, v).shape == (3, 0)
    assert P.check_apply(v, np.zeros((3, 0), np.int64)).shape == (3, 0)


@given(cases())
def test_tied_rows_equals_reference(case):
    v, _, _ = case
    assert np.array_equal(P.tied_rows(v), P.tied_rows_reference(v))
