"""Sharded files (shards + index, the safetensors hub convention), lazy reads through the index,
and the temporary files a killed save leaves behind."""
import json
import os
import shutil
import time

import pytest
import torch

import permcodec
from permcodec import shards
from permcodec.rules import make
from helpers import bit_equal, shuffle_rows_


def model_state(n=6, seed=1):
    state, rules = {}, {}
    for i in range(n):
        name = f"l{i}.weight"
        rules[name] = make("he_uniform", (32, 50), seed=seed, name=name)
        state[name] = shuffle_rows_(permcodec.init.values_tensor(rules[name], (32, 50), torch.float32).clone(), i)
        state[f"l{i}.bias"] = torch.randn(32, generator=torch.Generator().manual_seed(seed * 100 + i))
    state["head.weight"] = state[f"l{min(2, n - 1)}.weight"]  # tied
    return state, rules


def test_sharded_round_trip(tmp_path):
    state, rules = model_state()
    path = tmp_path / "model.perm"
    permcodec.save(state, path, rules=rules, max_shard_size=8000, metadata={"step": 5})
    files = sorted(os.listdir(tmp_path))
    assert not path.exists() and "model.perm.index.json" in files
    names = [f for f in files if f.endswith(".perm")]
    assert len(names) > 1 and names == shards.shard_names(path, len(names))
    assert all(os.path.getsize(tmp_path / f) <= 8000 for f in names)
    index = json.loads((tmp_path / "model.perm.index.json").read_text())
    assert set(index["weight_map"]) == set(state) and set(index["weight_map"].values()) == set(names)
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for k, t in state.items() if k != "head.weight")
    assert index["weight_map"]["head.weight"] == index["weight_map"]["l2.weight"]
    for p in (path, tmp_path / "model.perm.index.json"):  # the model's path finds its index
        back = permcodec.load(p)
        assert set(back) == set(state) and all(bit_equal(back[k], state[k]) for k in state)
        assert back["head.weight"] is back["l2.weight"]
    rep = permcodec.verify(path, state)
    assert rep.model_checked and rep.permuted == 6
    assert rep.file_bytes == sum(os.path.getsize(tmp_path / f) for f in files)
    h = permcodec.read_header(path)
    assert h["metadata"] == {"step": 5} and {t["shard"] for t in h["tensors"]} == set(names)


def test_lazy_read_maps_one_shard(tmp_path):
    state, rules = model_state()
    permcodec.save(state, tmp_path / "model.perm", rules=rules, max_shard_size="8KB")
    with permcodec.open(tmp_path / "model.perm.index.json") as f:
        assert set(f.keys()) == set(state) and "l5.bias" in f
        assert bit_equal(f.get_tensor("l5.bias"), state["l5.bias"])
        assert list(f._files) == [f.weight_map["l5.bias"]]
        with pytest.raises(permcodec.PermcodecError, match="no tensor"):
            f.get_tensor("nope")


def test_one_shard_is_a_plain_file(tmp_path):
    state, rules = model_state(2)
    permcodec.save(state, tmp_path / "m.perm", rules=rules, max_shard_size="1GB")
    assert sorted(os.listdir(tmp_path)) == ["m.perm"]
    assert all(bit_equal(permcodec.load(tmp_path / "m.perm")[k], v) for k, v in state.items())


def test_a_tensor_bigger_than_a_shard_gets_its_own(tmp_path):
    state = {"big": torch.randn(5000), "a": torch.randn(10), "b": torch.randn(10)}
    permcodec.save(state, tmp_path / "m.perm", max_shard_size=4096)
    index = json.loads((tmp_path / "m.perm.index.json").read_text())
    big = index["weight_map"]["big"]
    assert [k for k, v in index["weight_map"].items() if v == big] == ["big"]
    assert all(bit_equal(permcodec.load(tmp_path / "m.perm")[k], v) for k, v in state.items())


@pytest.mark.parametrize("size, expected", [(123, 123), ("2GB", 2 * 10**9), ("500MiB", 500 * 2**20),
                                            ("1.5 kb", 1500), ("10", 10)])
def test_parse_size(size, expected):
    assert shards.parse_size(size) == expected


@pytest.mark.parametrize("size", [0, -5, "2 parsecs", "", None, True, "0GB"])
def test_parse_size_errors(size):
    with pytest.raises(permcodec.PermcodecError, match="max_shard_size"):
        shards.parse_size(size)


def _sharded(folder, seed):
    folder.mkdir()
    state, rules = model_state(seed=seed)
    permcodec.save(state, folder / "model.perm", rules=rules, max_shard_size=8000)
    return state


def test_mixed_shards_are_refused(tmp_path):
    """A save interrupted while renaming shards over an older save leaves a mix: refused, not mixed."""
    _sharded(tmp_path / "a", 1)
    _sharded(tmp_path / "b", 2)
    first = shards.shard_names(tmp_path / "a" / "model.perm", len(os.listdir(tmp_path / "a")) - 1)[0]
    shutil.copy(tmp_path / "b" / first, tmp_path / "a" / first)
    with pytest.raises(permcodec.IntegrityError, match="save the model again"):
        permcodec.load(tmp_path / "a" / "model.perm")
    os.unlink(tmp_path / "a" / first)
    with pytest.raises(permcodec.FormatError, match="missing"):
        permcodec.load(tmp_path / "a" / "model.perm")


@pytest.mark.parametrize("index", [b"{not json", b"[]", b'{"weight_map": {"w": "../../etc/passwd"}, "metadata": {}}',
                                   b'{"weight_map": {"w": 5}}', b'{"weight_map": {"w": "x.perm"}, "metadata": 3}',
                                   b'{"weight_map": {"w": "x.perm"}, "metadata": {"permcodec": {"shards": {}}}}',
                                   b"\xff\xfe"])
def test_hostile_index(tmp_path, index):
    (tmp_path / "m.perm.index.json").write_bytes(index)
    with pytest.raises(permcodec.FormatError):
        permcodec.load(tmp_path / "m.perm")


def test_weight_map_must_match_the_shards(tmp_path):
    _sharded(tmp_path / "a", 1)
    p = tmp_path / "a" / "model.perm.index.json"
    index = json.loads(p.read_text())
    wm = index["weight_map"]
    other = next(k for k in wm if wm[k] != wm["l0.bias"])
    wm["l0.bias"], wm[other] = wm[other], wm["l0.bias"]
    p.write_text(json.dumps(index))
    with pytest.raises(permcodec.IntegrityError, match="weight map"):
        permcodec.load(p)


def test_stale_temp_files_are_removed(tmp_path):
    old = tmp_path / ".permcodec-abc.tmp"
    fresh = tmp_path / ".permcodec-def.tmp"
    other = tmp_path / "notes.tmp"
    for p in (old, fresh, other):
        p.write_bytes(b"partial")
    t = time.time() - 2 * shards.STALE_SECONDS
    os.utime(old, (t, t))
    os.utime(other, (t, t))
    permcodec.save({"w": torch.ones(3)}, tmp_path / "m.perm")
    assert not old.exists() and fresh.exists() and other.exists()


@pytest.mark.parametrize("shard", [None, "4MB"])
def test_save_streams_one_tensor_at_a_time(tmp_path, shard):
    """24 MiB of incompressible tensors: a save that kept every encoding would peak above 24 MiB."""
    import tracemalloc
    g = torch.Generator().manual_seed(0)
    state = {f"t{i}": torch.randn(1 << 18, generator=g) for i in range(24)}  # 1 MiB each (torch memory)
    tracemalloc.start()
    try:
        permcodec.save(state, tmp_path / "m.perm", max_shard_size=shard)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"save peaked at {peak / 2**20:.1f} MiB"
    assert all(bit_equal(permcodec.load(tmp_path / "m.perm")[k], v) for k, v in state.items())
