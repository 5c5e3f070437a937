"""The verbs a safetensors / torch user expects: save_file/load_file/safe_open, bytes and file
objects, load_into like load_state_dict, folders, the mid-training message, short rules."""
import io
import json

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

import permcodec
from helpers import bit_equal, trained_like
from permcodec.errors import PermcodecError, RuleError, TensorNotFoundError


def _model(seed=0, prune=0.0):
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(24, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5))
    permcodec.init.apply_(m, seed=seed, prune=prune)
    return trained_like(m, seed)


def _equal_states(a, b):
    return list(a) == list(b) and all(bit_equal(a[k], b[k]) for k in a)


# ---- 1. safetensors-style verbs -----------------------------------------------------------------
def test_save_file_load_file_and_safe_open(tmp_path):
    m = _model(prune=0.5)
    state = dict(m.state_dict())
    path = tmp_path / "m.perm"
    permcodec.save_file(state, path, metadata={"step": 10}, rules=permcodec.init.rules_of(m))
    assert _equal_states(permcodec.load_file(path), state)
    with permcodec.safe_open(path, framework="pt", device="cpu") as f:
        assert f.metadata() == {"step": 10}
        assert f.keys() == list(state)
        assert bit_equal(f.get_tensor("2.weight"), state["2.weight"])
        sl = f.get_slice("0.weight")
        assert sl.get_shape() == [16, 24] and sl.get_dtype() == "float32"
        assert bit_equal(sl[3:7], state["0.weight"][3:7])
        with pytest.raises(KeyError) as e:
            f.get_tensor("nope")
        assert isinstance(e.value, PermcodecError) and "no tensor 'nope'" in str(e.value)
        with pytest.raises(TensorNotFoundError):
            f.get_slice("nope")
    with permcodec.safe_open(path, framework="np") as f:
        arr = f.get_tensor("0.bias")
        assert isinstance(arr, np.ndarray) and arr.tobytes() == state["0.bias"].numpy().tobytes()
    with pytest.raises(PermcodecError, match="framework 'tf' is not supported"):
        permcodec.safe_open(path, framework="tf")
    with pytest.raises(PermcodecError, match="takes a dict of tensors"):
        permcodec.save_file(m, tmp_path / "x.perm")
    with permcodec.open(path) as f:  # permcodec's own reader: metadata as an attribute and a call
        assert f.metadata == f.metadata() == {"step": 10}
        with pytest.raises(KeyError):
            f.entry("nope")


# ---- 2. bytes and file objects ------------------------------------------------------------------
@given(rows=st.integers(1, 6), cols=st.integers(1, 40), dtype=st.sampled_from(["float32", "float16", "bfloat16",
                                                                                 "float64"]),
       prune=st.sampled_from([0.0, 0.5, 0.9]), seed=st.integers(0, 3))
def test_bytes_round_trip_is_the_file_bit_for_bit(tmp_path_factory, rows, cols, dtype, prune, seed):
    w = torch.empty(rows, cols, dtype=getattr(torch, dtype))
    permcodec.init.he_uniform_(w, seed=seed, name="w", prune=prune)
    g = torch.Generator().manual_seed(seed)
    w.copy_(w.gather(1, torch.argsort(torch.rand(rows, cols, generator=g), dim=1)))
    state = {"w": w, "b": torch.arange(rows, dtype=torch.int16)}
    data = permcodec.save(state, rules={"w": permcodec.init.rule_of(w)})
    assert isinstance(data, bytes)
    path = tmp_path_factory.mktemp("b") / "m.perm"
    permcodec.save(state, path, rules={"w": permcodec.init.rule_of(w)})
    assert path.read_bytes() == data
    for source in (data, bytearray(data), memoryview(data), io.BytesIO(data)):
        assert _equal_states(permcodec.load(source), state)
    with open(path, "rb") as fh:
        assert _equal_states(permcodec.load(fh), state)
    assert permcodec.read_header(data)["tensors"][0]["kind"] == "permuted"
    assert permcodec.verify(data).tensors == 2


def test_bad_bytes_and_text_files_raise_permcodec_errors(tmp_path):
    with pytest.raises(permcodec.FormatError):
        permcodec.load(b"")
    with pytest.raises(permcodec.FormatError):
        permcodec.load(b"not a permcodec file at all")
    p = tmp_path / "t.perm"
    p.write_bytes(permcodec.save({"a": torch.ones(3)}))
    with open(p) as fh, pytest.raises(PermcodecError, match="text mode: open it with 'rb'"):
        permcodec.load(fh)


# ---- 3. load_into like load_state_dict ----------------------------------------------------------
def test_load_into_strict_false_returns_incompatible_keys(tmp_path):
    m = _model()
    permcodec.save(m, tmp_path / "m.perm")
    other = torch.nn.Sequential(torch.nn.Linear(24, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5), torch.nn.Linear(5, 2))
    del other[2].bias
    other[2].register_parameter("bias", None)
    res = permcodec.load_into(other, tmp_path / "m.perm", strict=False)
    assert isinstance(res, torch.nn.modules.module._IncompatibleKeys)
    assert res.missing_keys == ["3.bias", "3.weight"] and res.unexpected_keys == ["2.bias"]
    assert bit_equal(other[0].weight, m[0].weight) and bit_equal(other[2].weight, m[2].weight)
    ok = permcodec.load_into(_model(seed=9), tmp_path / "m.perm")
    assert ok.missing_keys == [] and ok.unexpected_keys == []


def test_load_into_refuses_a_dtype_difference_unless_cast(tmp_path):
    m = _model()
    permcodec.save(m, tmp_path / "m.perm")
    half = _model(seed=4).to(torch.float64)
    with pytest.raises(PermcodecError, match="pass cast=True"):
        permcodec.load_into(half, tmp_path / "m.perm")
    permcodec.load_into(half, tmp_path / "m.perm", cast=True)
    for k, v in m.state_dict().items():
        assert bit_equal(half.state_dict()[k], v.to(torch.float64))
    assert permcodec.init.rules_of(half) == {}  # cast values are not the rule's arrangement any more


def test_load_into_materializes_a_meta_model_with_tied_weights(tmp_path):
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
            self.b.weight = self.a.weight
            self.register_buffer("steps", torch.zeros(2, dtype=torch.int64))

    src = Tied()
    permcodec.init.he_uniform_(src.a.weight, seed=1, name="a.weight")
    trained_like(src)
    src.steps += 7
    permcodec.save(src, tmp_path / "t.perm")
    with torch.device("meta"):
        dst = Tied()
    permcodec.load_into(dst, tmp_path / "t.perm")
    assert dst.a.weight.device.type == "cpu" and dst.a.weight is dst.b.weight
    assert isinstance(dst.a.weight, torch.nn.Parameter) and dst.a.weight.requires_grad
    assert _equal_states(dst.state_dict(), src.state_dict())
    assert permcodec.save(dst) == permcodec.save(src)  # the rule came along: stored as a permutation again


# ---- 4. folders ------------------------------------------------------------------------------------
def test_folders_hold_model_perm_or_a_sharded_save(tmp_path):
    m = _model()
    permcodec.save(m, f"{tmp_path}/out/")
    assert (tmp_path / "out" / "model.perm").exists()
    for arg in (tmp_path / "out", f"{tmp_path}/out/"):
        assert _equal_states(permcodec.load(arg), m.state_dict())
    permcodec.save(m, f"{tmp_path}/sh/", max_shard_size=700)
    names = sorted(p.name for p in (tmp_path / "sh").iterdir())
    assert "model.perm.index.json" in names and names[0].startswith("model-00001-of-")
    assert _equal_states(permcodec.load(tmp_path / "sh"), m.state_dict())
    with permcodec.open(tmp_path / "sh") as f:
        assert sorted(f.keys()) == sorted(m.state_dict())
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither model.perm nor model.perm.index.json"):
        permcodec.load(tmp_path / "empty")
    with pytest.raises(IsADirectoryError, match="end the path with '/'"):
        permcodec.save(m, tmp_path / "empty")


# ---- 5. saving between two syncs -----------------------------------------------------------------
def test_a_save_between_syncs_names_synced_view(tmp_path):
    from trainers.laperm import LaPerm
    m = _model()
    opt = LaPerm(m, k=10, lr=0.1)
    x = torch.randn(8, 24)
    for _ in range(3):
        opt.zero_grad()
        m(x).square().mean().backward()
        opt.step()
    with pytest.raises(permcodec.NotAPermutationError, match=r"with opt\.synced_view\(\): permcodec\.save\(model, "
                                                               r"path\)"):
        permcodec.save(m, tmp_path / "m.perm")
    with opt.synced_view():
        permcodec.save(m, tmp_path / "m.perm")


# ---- 6. short rules -----------------------------------------------------------------------------
def test_short_rules_derive_what_init_apply_derives(tmp_path):
    m = _model(seed=3, prune=0.5)
    full = permcodec.init.rules_of(m)
    short = {"0.weight": {"rule": "he_uniform", "seed": 3, "prune": 0.2},  # apply_ caps the input layer at 0.2
             "2.weight": {"rule": "he_uniform", "seed": 3, "prune": 0.5}}
    from permcodec import rulespec
    for name, d in short.items():
        assert rulespec.from_dict(d, name=name, shape=m.state_dict()[name].shape) == full[name]
    state = dict(m.state_dict())
    a = permcodec.export(state, short, tmp_path / "a.perm")
    b = permcodec.export(state, {k: r.to_dict() for k, r in full.items()}, tmp_path / "b.perm")
    assert a == b and (tmp_path / "a.perm").read_bytes() == (tmp_path / "b.perm").read_bytes()


@pytest.mark.parametrize("rule, message", [
    ({"rule": "he_uniform"}, "needs a seed"),
    ({"rule": "he_uniform", "seed": 0, "scale": 2.0}, "unknown fields \\['scale'\\]"),
    ({"rule": "kaiming", "seed": 0}, "unknown initializer 'kaiming'"),
    ({"rule": "he_uniform", "seed": 0, "prune": 1.5}, "outside \\[0, 1\\]"),
    ({"rule": "he_uniform", "seed": 0, "prune": "half"}, "malformed rule"),
    ({"rule": "constant", "seed": 0}, "needs value="),
])
def test_bad_short_rules_name_the_problem(rule, message):
    with pytest.raises(RuleError, match=message):
        permcodec.save({"w": torch.zeros(3, 4)}, rules={"w": rule})


def test_cli_export_takes_short_rules(tmp_path):
    import subprocess
    import sys
    from safetensors.torch import save_file
    m = _model(seed=1)
    save_file(dict(m.state_dict()), tmp_path / "m.safetensors")
    (tmp_path / "rules.json").write_text(json.dumps({"0.weight": {"rule": "he_uniform", "seed": 1},
                                                     "2.weight": {"rule": "he_uniform", "seed": 1}}))
    res = subprocess.run([sys.executable, "-m", "permcodec", "export", tmp_path / "m.safetensors",
                          tmp_path / "m.perm", "--rules", tmp_path / "rules.json"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    kinds = {t["name"]: t["kind"] for t in permcodec.read_header(tmp_path / "m.perm")["tensors"]}
    assert kinds == {"0.bias": "raw", "0.weight": "permuted", "2.bias": "raw", "2.weight": "permuted"}
    permcodec.verify(tmp_path / "m.perm", m)


@given(family=st.sampled_from(["he_uniform", "he_normal", "glorot_uniform", "glorot_normal", "lecun_uniform",
                               "lecun_normal"]),
       seed=st.integers(0, 2**64 - 1), prune=st.floats(0, 1), hidden=st.integers(1, 9), kernel=st.integers(1, 3))
def test_short_rules_equal_init_apply_for_every_family(family, seed, prune, hidden, kernel):
    m = torch.nn.Sequential(torch.nn.Conv2d(3, hidden, kernel), torch.nn.Conv2d(hidden, 4, kernel))
    recorded = permcodec.init.apply_(m, seed=seed, rule=family, prune=prune)
    from permcodec import rulespec
    got = rulespec.from_dict({"rule": family, "seed": seed, "prune": prune}, name="1.weight", shape=m[1].weight.shape)
    assert got == recorded["1.weight"] and got.scale == recorded["1.weight"].scale  # scale compared exactly
