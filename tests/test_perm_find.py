"""perm.find: the compiled hash-based path equals the two-sort reference, errors included."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from permcodec import perm as P
from permcodec.errors import NotAPermutationError
from permcodec.rules import make

DT = {"float64": np.float64, "float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}


@st.composite
def cases(draw):
    rows = draw(st.integers(1, 12))
    n = draw(st.integers(1, 400))
    dtype = draw(st.sampled_from(sorted(DT)))
    kind = draw(st.sampled_from(["distinct", "pruned", "shared", "few", "signed_zero"]))
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
            v = v.astype(DT[dtype])
            v.reshape(-1)[::3] = 0x8000 if dtype == "bfloat16" else -0.0
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
    for backend in ("jit", "reference"):
        try:
            outcomes.append(("ok", P.find(v, w, "t", backend=backend).tobytes()))
        except NotAPermutationError as e:
            outcomes.append(("error", str(e)))
    assert outcomes[0] == outcomes[1]


def test_find_large_rows_parallel():
    v = make("he_uniform", (300, 1200), seed=3, name="w", prune=0.3).values((300, 1200), "float32")
    w = np.random.default_rng(0).permuted(v, axis=1)
    assert np.array_equal(P.find(v, w), P.find_reference(v, w))


def test_find_backend_is_checked():
    v = np.zeros((1, 3), np.float32)
    with pytest.raises(ValueError):
        P.find(v, v, backend="gpu")
