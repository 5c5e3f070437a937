"""model codec: exact on permutations and multisets, fast == reference, hostile bytes, and
below the uniform limit on LaPerm-trained fixtures."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from codec_cases import TRAINED, shuffled, trained_layers, values
from permcodec import perm as P
from permcodec.codecs import model
from permcodec.errors import FormatError
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
    assert np.array_equal(model.decode_reference(params, payload, v), p)


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
    assert np.array_equal(model.decode_reference(*with_f, v), p)
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
    for dec in (model.decode, model.decode_reference):
        try:
            p = dec(params, data, v)
        except FormatError:
            continue
        assert p.shape == v.shape and all(sorted(r) == list(range(n)) for r in p.tolist())
