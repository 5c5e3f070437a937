"""safe_open(...).get_slice(name)[a:b] decodes only what covers the rows (packed: those rows;
uniform, model: their segments) and equals the whole tensor's rows bit for bit."""
from contextlib import contextmanager
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import permcodec
from helpers import bit_equal, shuffle_rows_
from permcodec import perm as P, rules, tensors as T
from permcodec.codecs import _rans, packed
from permcodec.dtypes import order_keys
from permcodec.errors import FormatError, PermcodecError

CODECS = ["packed", "uniform", "model", "plain"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@contextmanager
def segments_of(seg):
    """Encoders of the rANS codecs use ``seg`` rows per segment (None: their default layout)."""
    layout = _rans.layout
    with mock.patch.object(_rans, "layout", lambda rows, n, bits, lanes=None, segment_rows=None:
                           layout(rows, n, bits, lanes, seg if segment_rows is None else segment_rows)):
        yield


def rearranged(shape, dtype, prune, seed):
    """(rule, a tensor of ``shape`` whose rows rearrange the rule's values)."""
    rule = rules.make("he_uniform", shape, seed=seed, name="w", prune=prune)
    return rule, shuffle_rows_(permcodec.init.values_tensor(rule, shape, DTYPES[dtype]), seed)


def encoded(codec, shape, dtype, prune, seg, seed=0):
    """(entry, payload) of a rearranged tensor, as a file records them."""
    rule, t = rearranged(shape, dtype, prune, seed)
    rows, n = P.as_rows(shape)
    arr = permcodec.api._bits(t).numpy().reshape(rows, n).view(T.initial_rows(
        {"init": rule.to_dict(), "shape": list(shape), "dtype": dtype}).dtype)
    with segments_of(seg):
        params, payload = T.encode_permuted(arr, rule, dtype, "w", codec)
    entry = {"name": "w", "kind": "permuted", "shape": list(shape), "dtype": dtype, "init": rule.to_dict(),
             "codec": params}
    return entry, payload


shapes = st.tuples(st.integers(1, 40), st.integers(1, 9), st.sampled_from([(), (1,), (3,)])).map(
    lambda s: (s[0], s[1], *s[2]))
bounds = st.one_of(st.none(), st.integers(-50, 50))
rows_index = st.builds(slice, bounds, bounds, st.sampled_from([None, 1, 2, 3]))
index = st.one_of(rows_index, st.tuples(rows_index, st.builds(slice, bounds, bounds)),
                  st.integers(-3, 2), st.tuples(st.just(slice(None)), st.integers(0, 0)))


@settings(max_examples=60, deadline=None)
@given(codec=st.sampled_from(CODECS), shape=shapes, dtype=st.sampled_from(sorted(DTYPES)),
       prune=st.sampled_from([0.0, 0.3, 0.9]), seg=st.sampled_from([None, 1, 3, 7]), seed=st.integers(0, 3),
       idx=st.lists(index, min_size=1, max_size=4))
def test_slice_equals_loaded_rows(codec, shape, dtype, prune, seg, seed, idx):
    rule, t = rearranged(shape, dtype, prune, seed)
    raw = torch.arange(shape[0] * 2, dtype=torch.float32).reshape(shape[0], 2)
    with segments_of(seg):
        blob = permcodec.save({"w": t, "b": raw}, rules={"w": rule}, codec=codec)
    state = permcodec.load(blob)
    with permcodec.safe_open(blob) as f, permcodec.safe_open(blob, framework="np") as g:
        for name in ("w", "b"):
            for i in idx:
                try:
                    want = state[name][i]
                except IndexError:
                    with pytest.raises(IndexError):
                        f.get_slice(name)[i]
                    continue
                got = f.get_slice(name)[i]
                assert bit_equal(got, want), (name, i)
                assert g.get_slice(name)[i].tobytes() == permcodec.api._bits(want.contiguous()).numpy().tobytes()


@settings(max_examples=40, deadline=None)
@given(codec=st.sampled_from(CODECS), rows=st.integers(1, 70), n=st.integers(1, 12),
       dtype=st.sampled_from(sorted(DTYPES)), prune=st.sampled_from([0.0, 0.1, 0.5, 0.95]),
       seg=st.sampled_from([None, 1, 4, 9]), data=st.data())
def test_decode_rows_equals_decode(codec, rows, n, dtype, prune, seg, data):
    entry, payload = encoded(codec, (rows, n), dtype, prune, seg)
    full = T.decode(entry, payload)
    for _ in range(4):
        a = data.draw(st.integers(0, rows))
        b = data.draw(st.integers(a, rows))
        got = T.decode_rows(entry, payload, a, b)
        assert got.dtype == full.dtype and got.shape == full[a:b].shape
        assert got.tobytes() == full[a:b].tobytes()


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 150), n=st.integers(2, 20), prune=st.sampled_from([0.0, 0.2, 0.6, 0.97]),
       seed=st.integers(0, 9))
def test_layout_bits_is_the_reference_layout(rows, n, prune, seed):
    """The compiled layout pass that places a slice sums the reference's row layouts."""
    v = rules.make("he_uniform", (rows, n), seed=seed, name="w", prune=prune).values((rows, n), "float32")
    cl = packed.classes(order_keys(v))
    for lo, hi in ((0, rows), (rows // 3, rows), (0, rows // 2)):
        layouts = [packed._row(n, cl, r)[:2] for r in range(lo, hi)]
        want = sum(packed.row_bits(mode, n, p) for mode, p in layouts)
        assert packed._core.packed_layout_bits(packed._bits(v[lo:hi]), True) == want


@contextmanager
def counted_generation():
    """Counts the initial values generated (every path: rules.Rule.values and tensors' rows)."""
    made = [0]
    real = permcodec.values.generate

    def counting(rule, count, dtype, start=0, simd="auto"):
        made[0] += count
        return real(rule, count, dtype, start, simd)
    with mock.patch.object(rules, "generate", counting), mock.patch.object(T, "generate", counting):
        yield made


@pytest.mark.parametrize("n, prune, ties", [(16, 0.0, False), (512, 0.5, True)])
def test_one_row_of_a_large_packed_tensor_generates_its_row(n, prune, ties):
    rows = 4096
    rule, t = rearranged((rows, n), "float32", prune, 1)
    blob = permcodec.save({"w": t}, rules={"w": rule}, codec="packed")
    with permcodec.safe_open(blob) as f:
        assert f._f.entry("w")["codec"]["ties"] is ties
        for start, stop in ((3000, 3001), (7, 9), (4095, 4096)):
            with counted_generation() as made:
                got = f.get_slice("w")[start:stop]
            assert bit_equal(got, t[start:stop])
            assert made[0] == expected_generation(ties, start, stop, n)


def expected_generation(ties, start, stop, n):
    """Without ties every row has one layout: only the slice's rows are generated. With ties the
    rows above are sized (never decoded) from their values, and the slice's own layout is taken
    before its decode: (start + 2 (stop - start)) rows. Rows below the slice: never."""
    return (start + 2 * (stop - start)) * n if ties else (stop - start) * n


@pytest.mark.parametrize("codec", ["uniform", "model"])
def test_rans_slice_generates_its_segments(codec):
    rows, n, seg = 600, 64, 50
    rule, t = rearranged((rows, n), "float32", 0.5, 2)
    with segments_of(seg):
        blob = permcodec.save({"w": t}, rules={"w": rule}, codec=codec)
    with permcodec.safe_open(blob) as f:
        with counted_generation() as made:
            got = f.get_slice("w")[110:140]
        assert bit_equal(got, t[110:140]) and made[0] == seg * n      # segment 2 alone
        with counted_generation() as made:
            got = f.get_slice("w")[149:151]
        assert bit_equal(got, t[149:151]) and made[0] == 2 * seg * n  # segments 2 and 3


def _hostile(payload, rng):
    b = bytearray(payload)
    kind = rng.integers(4)
    if kind == 0 and b:
        return bytes(b[:-1 - rng.integers(len(b))])
    if kind == 1:
        return bytes(b) + bytes(rng.integers(1, 9))
    if kind == 2 and b:
        i = rng.integers(len(b))
        b[i] ^= 1 << rng.integers(8)
        return bytes(b)
    return bytes(rng.integers(0, 256, len(b), np.uint8))


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("prune", [0.0, 0.5])
def test_hostile_payloads_raise_format_error(codec, prune):
    rows, n = 40, 9
    entry, payload = encoded(codec, (rows, n), "float32", prune, 6)
    rng = np.random.default_rng(0)
    for trial in range(60):
        bad = _hostile(payload, rng)
        a = int(rng.integers(0, rows))
        b = int(rng.integers(a, rows + 1))
        try:
            got = T.decode_rows(entry, bad, a, b)
        except PermcodecError as e:
            assert isinstance(e, FormatError), e
            continue
        assert got.shape == (b - a, n)
        if a == 0 and b == rows:  # the whole range decodes exactly as a whole decode does
            assert got.tobytes() == T.decode(entry, bad).tobytes()


def test_short_packed_payloads_and_bad_params_raise_format_error():
    for prune in (0.0, 0.5):
        entry, payload = encoded("packed", (30, 8), "float32", prune, None)
        with pytest.raises(FormatError, match="packed payload"):
            T.decode_rows(entry, payload[: len(payload) // 2], 20, 30)
    entry, payload = encoded("uniform", (30, 8), "float32", 0.0, 4)
    with pytest.raises(FormatError, match="segment_rows"):
        T.decode_rows({**entry, "codec": {**entry["codec"], "segment_rows": 0}}, payload, 3, 5)
    with pytest.raises(FormatError, match="too short for its 7-word segment table"):
        T.decode_rows(entry, payload[:8], 3, 5)
    with pytest.raises(FormatError, match="tile the payload"):  # the table alone: no segment
        T.decode_rows(entry, payload[:-4 * (len(payload) // 4 - 7)], 3, 5)


def test_sharded_save_slices_decode_only_their_rows(tmp_path, monkeypatch):
    """A slice of a tensor in a sharded save goes to its shard's row decode, bit-equal to load()."""
    import torch
    import permcodec
    from permcodec import tensors as T
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Linear(256, 32))
    permcodec.init.apply_(model, seed=5)
    path = tmp_path / "model.perm"
    permcodec.save(model, path, max_shard_size=8_000, codec="packed")
    assert (tmp_path / "model.perm.index.json").exists()
    want = permcodec.load(path)
    calls = []
    real = T.decode_rows
    monkeypatch.setattr(T, "decode_rows", lambda *a, **k: calls.append(a[2:4]) or real(*a, **k))
    with permcodec.safe_open(path) as f:
        got = f.get_slice("0.weight")[7:9]
    assert calls == [(7, 9)]
    assert torch.equal(got.view(torch.int32), want["0.weight"][7:9].view(torch.int32))
