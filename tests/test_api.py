"""save / load / export / verify round trips, bit for bit, and their errors."""
import os

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

import permcodec
from permcodec import Rule
from permcodec.rules import make
from helpers import bit_equal, shuffle_rows_, trained_like

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def mlp():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(30, 20), torch.nn.ReLU(), torch.nn.Linear(20, 5), torch.nn.BatchNorm1d(5))
    permcodec.init.apply_(m, seed=11)
    return trained_like(m)


def test_model_round_trip(tmp_path):
    m = mlp()
    path = tmp_path / "m.perm"
    permcodec.save(m, path)
    state = permcodec.load(path)
    for k, v in m.state_dict().items():
        assert bit_equal(v, state[k]), k
    rep = permcodec.verify(path, m)
    assert rep.model_checked and rep.permuted == 2


tensor_specs = st.tuples(
    st.lists(st.integers(1, 9), min_size=1, max_size=4),      # shape
    st.sampled_from(DTYPES),
    st.sampled_from(["he_uniform", "he_normal", "glorot_uniform", "constant"]),
    st.sampled_from([0.0, 0.3, 0.5, 0.9, 0.99, 1.0]),
)


@given(specs=st.lists(tensor_specs, min_size=1, max_size=5), seed=st.integers(0, 2**64 - 1),
       codec=st.sampled_from(["auto", "plain"]))
def test_random_models_round_trip(tmp_path_factory, specs, seed, codec):
    state, rules = {}, {}
    for i, (shape, dtype, fam, prune) in enumerate(specs):
        name = f"layer{i}.weight"
        kw = {"value": 0.08} if fam == "constant" else {}
        rule = make(fam, tuple(shape), seed=seed, name=name, prune=prune, **kw)
        t = permcodec.init.values_tensor(rule, shape, dtype).clone()
        shuffle_rows_(t, i)
        state[name] = t
        rules[name] = rule
        state[f"layer{i}.bias"] = torch.randn(shape[0]).to(dtype)
    state["steps"] = torch.tensor(7)
    state["mask"] = torch.rand(3, 3) > 0.5
    path = tmp_path_factory.mktemp("rt") / "x.perm"
    permcodec.export(state, rules, path, codec=codec)
    back = permcodec.load(path)
    assert set(back) == set(state)
    for k in state:
        assert bit_equal(state[k], back[k]), k
    permcodec.verify(path, state)


def test_export_names_tensor_row_and_count(tmp_path):
    rule = make("he_uniform", (4, 50), seed=1, name="fc.weight")
    t = permcodec.init.values_tensor(rule, (4, 50), torch.float32).clone()
    t[2, 7] = 123.0
    t[2, 9] = 5.0
    with pytest.raises(permcodec.NotAPermutationError, match=r"'fc.weight' row 2 .* 2 of 50 values differ"):
        permcodec.export({"fc.weight": t}, {"fc.weight": rule}, tmp_path / "x.perm")
    assert not (tmp_path / "x.perm").exists()
    assert not [p for p in os.listdir(tmp_path)], "no temporary file may be left behind"


def test_failed_save_keeps_previous_file(tmp_path):
    m = mlp()
    path = tmp_path / "m.perm"
    permcodec.save(m, path)
    before = path.read_bytes()
    m[0].weight.data[0, 0] = 42.0
    with pytest.raises(permcodec.PermcodecError):
        permcodec.save(m, path)
    assert path.read_bytes() == before


def test_on_mismatch_raw_stores_exact_values(tmp_path):
    m = mlp()
    m[0].weight.data[0, 0] = 42.0
    permcodec.save(m, tmp_path / "m.perm", on_mismatch="raw")
    h = permcodec.read_header(tmp_path / "m.perm")
    kinds = {t["name"]: t["kind"] for t in h["tensors"]}
    assert kinds["0.weight"] == "raw" and kinds["2.weight"] == "permuted"
    assert bit_equal(permcodec.load(tmp_path / "m.perm")["0.weight"], m[0].weight)


def test_tied_weights_stored_once(tmp_path):
    emb = torch.nn.Embedding(10, 8)
    head = torch.nn.Linear(8, 10, bias=False)
    head.weight = emb.weight
    m = torch.nn.ModuleDict({"emb": emb, "head": head})
    permcodec.init.he_uniform_(emb.weight, seed=3, name="emb.weight")
    shuffle_rows_(emb.weight)
    path = tmp_path / "t.perm"
    permcodec.save(m, path, rules={"emb.weight": permcodec.init.rule_of(emb.weight)})
    h = permcodec.read_header(path)
    kinds = {t["name"]: t["kind"] for t in h["tensors"]}
    assert sorted(kinds.values()) == ["alias", "permuted"]
    state = permcodec.load(path)
    assert state["emb.weight"] is state["head.weight"]
    assert bit_equal(state["head.weight"], head.weight)


def test_compile_prefix_and_load_into(tmp_path):
    m = mlp()
    sd = {"_orig_mod." + k: v for k, v in m.state_dict().items()}
    rules = {"_orig_mod." + k: v for k, v in permcodec.init.rules_of(m).items()}
    permcodec.save(sd, tmp_path / "c.perm", rules=rules)
    assert "0.weight" in permcodec.load(tmp_path / "c.perm")
    fresh = torch.nn.Sequential(torch.nn.Linear(30, 20), torch.nn.ReLU(), torch.nn.Linear(20, 5),
                                torch.nn.BatchNorm1d(5))
    permcodec.load_into(fresh, tmp_path / "c.perm")
    for k, v in m.state_dict().items():
        assert bit_equal(v, fresh.state_dict()[k])
    with pytest.raises(permcodec.PermcodecError, match="missing"):
        permcodec.load_into(torch.nn.Sequential(torch.nn.Linear(30, 20)), tmp_path / "c.perm")


def test_non_contiguous_tensors(tmp_path):
    rule = make("he_uniform", (6, 8), seed=5, name="w")
    base = permcodec.init.values_tensor(rule, (8, 6), torch.float32)  # values of another shape
    t = base.t()  # non-contiguous (6, 8)
    assert not t.is_contiguous()
    rule = make("he_uniform", (6, 8), seed=5, name="w")
    w = permcodec.init.values_tensor(rule, (6, 8), torch.float32).clone()
    shuffle_rows_(w)
    state = {"w": w, "view": t}
    permcodec.export(state, {"w": rule}, tmp_path / "n.perm")
    back = permcodec.load(tmp_path / "n.perm")
    assert bit_equal(back["view"], t.contiguous()) and bit_equal(back["w"], w)


def test_read_header_and_lazy_access(tmp_path):
    m = mlp()
    permcodec.save(m, tmp_path / "m.perm", metadata={"accuracy": 0.91, "dataset": "toy"})
    h = permcodec.read_header(tmp_path / "m.perm")
    assert h["metadata"] == {"accuracy": 0.91, "dataset": "toy"} and h["version"][0] == 1
    with permcodec.open(tmp_path / "m.perm") as f:
        assert set(f.keys()) == set(m.state_dict())
        assert bit_equal(f.get_tensor("2.weight"), m[2].weight)


def test_rule_errors():
    with pytest.raises(permcodec.RuleError):
        make("he_uniform", (3, 3), seed=1)  # no name, no stream
    with pytest.raises(permcodec.RuleError):
        make("he_uniform", (3, 3), seed=1, name="x", prune=1.5)
    with pytest.raises(permcodec.RuleError):
        Rule.from_dict({"dist": "cauchy", "scale": 1.0, "seed": 0, "stream": 0})
    r = make("glorot_normal", (3, 4), seed=2**64 - 1, name="x", prune=0.5)
    assert Rule.from_dict(r.to_dict()) == r


def test_rules_must_name_existing_tensors(tmp_path):
    with pytest.raises(permcodec.RuleError, match="not in the model"):
        permcodec.save({"a": torch.zeros(2)}, tmp_path / "x.perm",
                       rules={"b": make("he_uniform", (2,), seed=0, name="b")})


@pytest.mark.parametrize("cut", [0, 10, 63, 100, -1, -64, -65])
def test_truncated_files_raise(tmp_path, cut):
    m = mlp()
    permcodec.save(m, tmp_path / "m.perm")
    data = (tmp_path / "m.perm").read_bytes()
    (tmp_path / "t.perm").write_bytes(data[:cut])
    with pytest.raises(permcodec.FormatError):
        permcodec.load(tmp_path / "t.perm")


def test_flipped_bytes_raise(tmp_path):
    m = mlp()
    permcodec.save(m, tmp_path / "m.perm")
    data = bytearray((tmp_path / "m.perm").read_bytes())
    rng = np.random.default_rng(0)
    for pos in rng.choice(len(data), 40, replace=False):
        bad = bytearray(data)
        bad[pos] ^= 1 << int(rng.integers(8))
        (tmp_path / "b.perm").write_bytes(bad)
        with pytest.raises(permcodec.FormatError):
            permcodec.verify(tmp_path / "b.perm")


def test_saved_file_has_the_usual_mode(tmp_path):
    old = os.umask(0o022)
    try:
        permcodec.save({"a": torch.zeros(3)}, tmp_path / "m.perm")
    finally:
        os.umask(old)
    assert (tmp_path / "m.perm").stat().st_mode & 0o777 == 0o644


@given(rows=st.integers(1, 6), n=st.integers(1, 60), seed=st.integers(0, 2**32 - 1), corrupt=st.booleans())
def test_compiled_check_apply_equals_reference(rows, n, seed, corrupt):
    from permcodec import perm as P
    rng = np.random.default_rng(seed)
    v = rng.random((rows, n)).astype(np.float32)
    p = np.argsort(rng.random((rows, n)), axis=1)
    if corrupt and n > 1:
        p[rng.integers(rows), rng.integers(n)] = p[0, 0] if rng.random() < 0.5 else n
    try:
        want = P.apply(v, P.check(p.copy()))
    except permcodec.FormatError:
        with pytest.raises(permcodec.FormatError):
            P.check_apply(v, p)
        return
    assert np.array_equal(P.check_apply(v, p), want)
