"""No save replaces a good file with one the reader refuses, rules survive load -> save, and every
bad argument raises PermcodecError (or a documented OS error naming the user's path) (issue 10)."""
import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import permcodec
from permcodec import api, shards
from permcodec.init import canonical_name
from permcodec.rules import make
from helpers import bit_equal, shuffle_rows_


def good_file(tmp_path):
    p = tmp_path / "m.perm"
    permcodec.save({"w": torch.arange(4.0)}, p)
    return p, p.read_bytes()


# ---- item 1: the writer accepts exactly what the reader accepts ---------------------------------
@pytest.mark.parametrize("state, metadata", [
    ({"w": torch.ones(2)}, {"acc": {1: 0.9}}),
    ({"w": torch.ones(2)}, {None: 1}),
    ({"w": torch.ones(2)}, {"x": 1 << 64}),
    ({"w": torch.ones(2)}, {"x": "\ud800"}),
    ({"w": torch.ones(2)}, {"x": {1.5}}),
    ({"w": torch.ones(2)}, [1, 2]),
    ({"": torch.ones(2)}, None),
    ({"_orig_mod": torch.ones(2)}, None),
    ({"\ud800": torch.ones(2)}, None),
    ({0: torch.ones(2)}, None),
], ids=["int-key", "none-key", "big-int", "surrogate-value", "set", "not-a-dict", "empty-name", "prefix-only",
        "surrogate-name", "int-name"])
def test_a_save_the_reader_would_refuse_raises_and_keeps_the_old_file(tmp_path, state, metadata):
    p, before = good_file(tmp_path)
    with pytest.raises(permcodec.PermcodecError):
        permcodec.save(state, p, metadata=metadata)
    with pytest.raises(permcodec.PermcodecError):
        permcodec.save(state, p, metadata=metadata, max_shard_size=10)
    assert p.read_bytes() == before
    assert [f for f in os.listdir(tmp_path) if f != "m.perm"] == []


def test_a_save_reads_its_own_file_back_before_the_rename(tmp_path, monkeypatch):
    """A writer bug (here: a wrong digest) is caught by the read-back, not by the next load."""
    p, before = good_file(tmp_path)
    real = api._encode_tensor

    def wrong_digest(*a):
        entry, payload = real(*a)
        return dict(entry, digest=bytes(32)), payload
    monkeypatch.setattr(api, "_encode_tensor", wrong_digest)
    for kw in ({}, {"max_shard_size": 100}):
        with pytest.raises(permcodec.IntegrityError, match="was not written.*previous file is unchanged"):
            permcodec.save({"w": torch.ones(3), "v": torch.zeros(5)}, p, **kw)
        assert p.read_bytes() == before and os.listdir(tmp_path) == ["m.perm"]


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | st.floats(allow_nan=False)
    | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)
anything = st.recursive(
    st.none() | st.integers() | st.floats() | st.text() | st.binary() | st.sets(st.integers(), max_size=2),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.none() | st.integers() | st.text(max_size=4),
                                                                inner, max_size=3),
    max_leaves=10)


def _listed(v):
    if isinstance(v, dict):
        return {k: _listed(x) for k, x in v.items()}
    return [_listed(x) for x in v] if isinstance(v, (list, tuple)) else v


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(meta=st.dictionaries(st.text(max_size=10), json_like | anything, max_size=4),
       names=st.lists(st.text(min_size=0, max_size=12) | st.sampled_from(["_orig_mod", "module", "module.a",
                                                                          "a._orig_mod.b", "module._orig_mod"]),
                      min_size=1, max_size=4, unique=True))
def test_whatever_save_accepts_load_returns(tmp_path_factory, meta, names):
    folder = tmp_path_factory.mktemp("meta")
    p, before = good_file(folder)
    state = {n: torch.full((i + 1,), float(i)) for i, n in enumerate(names)}
    for size in (None, 10):
        try:
            permcodec.save(state, p, metadata=meta, max_shard_size=size)
        except permcodec.PermcodecError:
            assert p.read_bytes() == before and shards.is_index(p) is False
            continue
        got = permcodec.load(p)
        assert set(got) == {canonical_name(n) for n in names}
        assert all(bit_equal(got[canonical_name(n)], t) for n, t in state.items())
        assert permcodec.read_header(p)["metadata"] == _listed(meta)
        with permcodec.open(p) as f:
            assert f.metadata == _listed(meta)


# ---- item 2: rules survive a round trip ------------------------------------------------------------
def trained(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(30, 20), torch.nn.ReLU(), torch.nn.Linear(20, 10))
    permcodec.init.apply_(model, seed=seed)
    for p in model.parameters():
        if permcodec.init.rule_of(p) is not None:
            shuffle_rows_(p, 3)
    return model


@pytest.mark.parametrize("codec", ["auto", "plain", "packed"])
def test_load_then_save_keeps_the_rules_and_the_bytes(tmp_path, codec):
    model = trained()
    a, b, c = tmp_path / "a.perm", tmp_path / "b.perm", tmp_path / "c.perm"
    permcodec.save(model, a, codec=codec, metadata={"k": 1})
    state, rules = permcodec.load(a, rules=True)
    assert set(rules) == {"0.weight", "2.weight"} and rules == permcodec.api.rules_of(a)
    assert rules == permcodec.init.rules_of(model)
    permcodec.save(state, b, codec=codec, metadata={"k": 1})
    assert b.read_bytes() == a.read_bytes()
    fresh = torch.nn.Sequential(torch.nn.Linear(30, 20), torch.nn.ReLU(), torch.nn.Linear(20, 10))
    permcodec.load_into(fresh, a)
    assert permcodec.init.rules_of(fresh) == rules
    permcodec.save(fresh, c, codec=codec, metadata={"k": 1})
    assert c.read_bytes() == a.read_bytes()


def test_rules_of_a_sharded_model_and_of_aliases(tmp_path):
    model = trained()
    state = dict(model.state_dict())
    state["tied"] = state["0.weight"]
    permcodec.save(state, tmp_path / "m.perm", rules=permcodec.init.rules_of(model), max_shard_size=1500)
    assert shards.is_index(tmp_path / "m.perm")
    rules = permcodec.api.rules_of(tmp_path / "m.perm")
    assert rules["tied"] == rules["0.weight"] and set(rules) == {"0.weight", "2.weight", "tied"}


def test_a_changed_loaded_tensor_is_not_silently_stored_raw(tmp_path):
    permcodec.save(trained(), tmp_path / "a.perm")
    state = permcodec.load(tmp_path / "a.perm")
    state["0.weight"] = state["0.weight"] * 2  # a new tensor: no rule, stored raw
    permcodec.save(state, tmp_path / "b.perm")
    assert permcodec.read_header(tmp_path / "b.perm")["tensors"][0]["kind"] == "raw"
    state = permcodec.load(tmp_path / "a.perm")
    state["0.weight"].mul_(2)  # changed in place: still tagged, so the mismatch is reported
    with pytest.raises(permcodec.NotAPermutationError):
        permcodec.save(state, tmp_path / "c.perm")
    permcodec.save(state, tmp_path / "c.perm", on_mismatch="raw")
    assert bit_equal(permcodec.load(tmp_path / "c.perm")["0.weight"], state["0.weight"])


# ---- exception types ------------------------------------------------------------------------------
@pytest.mark.parametrize("make_state", [
    lambda: {"w": torch.eye(3).to_sparse()},
    lambda: {"w": torch.empty(3, device="meta")},
    lambda: {"w": torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])},
], ids=["sparse", "meta", "nested"])
def test_unstorable_tensors_raise_permcodec_error(tmp_path, make_state):
    with pytest.raises(permcodec.PermcodecError, match="tensor 'w'"):
        permcodec.save(make_state(), tmp_path / "m.perm")


def test_conjugate_and_negative_views_are_stored_by_value(tmp_path):
    z = torch.complex(torch.arange(3.0), torch.ones(3)).conj()
    n = torch.arange(3.0)._neg_view()
    permcodec.save({"z": z, "n": n}, tmp_path / "m.perm")
    got = permcodec.load(tmp_path / "m.perm")
    assert bit_equal(got["z"], z.resolve_conj()) and bit_equal(got["n"], n.resolve_neg())


@pytest.mark.parametrize("kw", [{"zstd_level": 99}, {"zstd_level": "3"}, {"on_mismatch": "skip"},
                                {"max_shard_size": "lots"}, {"rules": ["x"]}, {"rules": {"w": "he_uniform"}},
                                {"rules": {"w": 3}}])
def test_bad_save_arguments_raise_permcodec_error(tmp_path, kw):
    with pytest.raises(permcodec.PermcodecError):
        permcodec.save({"w": torch.ones(4, 4)}, tmp_path / "m.perm", **kw)


@pytest.mark.parametrize("rules", [[make("he_uniform", (4, 4), seed=0, name="w")], {"w": "he_uniform"}])
def test_bad_export_rules_raise_rule_error(tmp_path, rules):
    with pytest.raises(permcodec.RuleError, match="rule"):
        permcodec.export({"w": torch.ones(4, 4)}, rules, tmp_path / "m.perm")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_this_machine_lacks_raises_permcodec_error(tmp_path):
    p, _ = good_file(tmp_path)
    for device in ("cuda", "cuda:3", "nonsense"):
        with pytest.raises(permcodec.PermcodecError, match="device"):
            permcodec.load(p, device=device)
        with permcodec.open(p) as f, pytest.raises(permcodec.PermcodecError, match="device"):
            f.get_tensor("w", device=device)


@pytest.mark.parametrize("sharded", [None, 10])
def test_os_errors_name_the_users_path(tmp_path, sharded):
    (tmp_path / "dir.perm").mkdir()
    with pytest.raises(IsADirectoryError) as e:
        permcodec.save({"w": torch.ones(2)}, tmp_path / "dir.perm", max_shard_size=sharded)
    assert e.value.filename == str(tmp_path / "dir.perm") and ".permcodec-" not in str(e.value)
    with pytest.raises(FileNotFoundError) as e:
        permcodec.save({"w": torch.ones(2)}, tmp_path / "missing" / "m.perm", max_shard_size=sharded)
    assert e.value.filename == str(tmp_path / "missing") and ".permcodec-" not in str(e.value)
    assert sorted(os.listdir(tmp_path)) == ["dir.perm"]


def test_verify_with_nonfinite_and_model_mismatch(tmp_path):
    state = {"w": torch.tensor([math.nan, math.inf, -0.0])}
    permcodec.save(state, tmp_path / "m.perm")
    assert permcodec.verify(tmp_path / "m.perm", state).model_checked
    with pytest.raises(permcodec.IntegrityError):
        permcodec.verify(tmp_path / "m.perm", {"w": torch.tensor([math.nan, math.inf, 0.0])})


def test_loaded_tensors_still_pickle_for_weights_only_torch_load(tmp_path):
    """The rule travels by identity, not as a tensor attribute that torch.save would pickle."""
    permcodec.save(trained(), tmp_path / "a.perm")
    state = permcodec.load(tmp_path / "a.perm")
    assert permcodec.init.rule_of(state["0.weight"]) is not None
    torch.save(state, tmp_path / "a.pt")
    again = torch.load(tmp_path / "a.pt", weights_only=True)
    assert all(bit_equal(again[k], v) for k, v in state.items())
    assert permcodec.init.rule_of(again["0.weight"]) is None  # a copy is not the loaded tensor
