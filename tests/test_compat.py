"""Compatibility through the public API: a newer minor version with unknown optional fields loads;
an unknown major version is refused, naming the version needed. (Container-level cases and the
golden files of every released version are in test_golden.py.)"""
import json
import pathlib
import sys

import pytest
import torch

import permcodec
from permcodec.rules import make
from helpers import bit_equal, shuffle_rows_

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "fuzz"))
import kit


def saved(tmp_path):
    rule = make("he_uniform", (6, 10), seed=3, name="w")
    state = {"w": shuffle_rows_(permcodec.init.values_tensor(rule, (6, 10), torch.float32).clone()),
             "b": torch.arange(6.0), "tied": None}
    state["tied"] = state["w"]
    permcodec.save(state, tmp_path / "m.perm", rules={"w": rule})
    return state, (tmp_path / "m.perm").read_bytes()


def test_newer_minor_with_unknown_fields_loads(tmp_path):
    state, data = saved(tmp_path)
    header, payloads = kit.split(data)
    header.pop("sections")
    header["compression_stats"] = {"ratio": 3.1}                 # unknown top-level field
    header["metadata"]["future"] = [1, 2, 3]
    for t in header["tensors"]:
        t["x-future-hint"] = {"nested": b"\x00"}                 # unknown tensor fields (a rule's are
                                                                 # refused: they could change the bits)
    buf = kit.build(header, payloads, minor=9)
    p = tmp_path / "newer.perm"
    p.write_bytes(buf)
    back = permcodec.load(p)
    assert all(bit_equal(back[k], v) for k, v in state.items())
    assert permcodec.read_header(p)["version"] == [1, 9]
    assert permcodec.verify(p).tensors == 3


@pytest.mark.parametrize("major", [0, 2, 65535])
def test_unknown_major_is_refused_naming_the_version(tmp_path, major):
    _, data = saved(tmp_path)
    header, payloads = kit.split(data)
    header.pop("sections")
    p = tmp_path / "other.perm"
    p.write_bytes(kit.build(header, payloads, major=major))
    for fn in (permcodec.load, permcodec.verify, permcodec.read_header):
        with pytest.raises(permcodec.VersionError, match=rf"version {major}\.0 .*format {major}"):
            fn(p)


def test_index_with_unknown_fields_loads(tmp_path):
    state, _ = saved(tmp_path)
    permcodec.save(state, tmp_path / "s.perm", max_shard_size=300)
    p = tmp_path / "s.perm.index.json"
    index = json.loads(p.read_text())
    index["metadata"]["x-future"] = 1
    index["extra"] = {"a": [1]}
    p.write_text(json.dumps(index))
    assert all(bit_equal(permcodec.load(p)[k], v) for k, v in state.items())
