"""The permcodec command line: outputs and exit codes a shell user expects."""
import json
import subprocess
import sys

import pytest
import torch

import permcodec
from helpers import trained_like


def run(*args):
    return subprocess.run([sys.executable, "-m", "permcodec", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def perm_file(tmp_path_factory):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(40, 30), torch.nn.ReLU(), torch.nn.Linear(30, 4))
    permcodec.init.apply_(m, seed=2, prune=0.5)
    trained_like(m)
    path = tmp_path_factory.mktemp("cli") / "m.perm"
    permcodec.save(m, path)
    return path, m


def test_info_table_and_json(perm_file):
    path, _ = perm_file
    out = run("info", path)
    assert out.returncode == 0, out.stderr
    assert "0.weight" in out.stdout and "permuted" in out.stdout and "information limit" in out.stdout
    js = json.loads(run("info", path, "--json").stdout)
    row = next(t for t in js["tensors"] if t["name"] == "0.weight")
    assert float(row["bits_per_weight"]) >= float(row["limit_bits_per_weight"]) > 0


def test_verify_ok_and_corrupt(perm_file, tmp_path):
    path, _ = perm_file
    ok = run("verify", path)
    assert ok.returncode == 0 and ok.stdout.startswith("OK")
    data = bytearray(path.read_bytes())
    data[100] ^= 0x40
    bad = tmp_path / "bad.perm"
    bad.write_bytes(data)
    res = run("verify", bad)
    assert res.returncode == 1 and "corrupt" in res.stderr
    missing = run("verify", tmp_path / "nope.perm")
    assert missing.returncode == 2 and "No such file" in missing.stderr


def test_export_and_to_safetensors_round_trip(perm_file, tmp_path):
    from safetensors.torch import load_file, save_file
    path, m = perm_file
    st = tmp_path / "m.safetensors"
    assert run("to-safetensors", path, st).returncode == 0
    state = load_file(st)
    for k, v in m.state_dict().items():
        assert torch.equal(state[k], v)
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({k: r.to_dict() for k, r in permcodec.init.rules_of(m).items()}))
    out = tmp_path / "back.perm"
    res = run("export", st, out, "--rules", rules)
    assert res.returncode == 0, res.stderr
    permcodec.verify(out, m)
    state["0.weight"][0, 0] = 9.0
    save_file(state, st)
    res = run("export", st, tmp_path / "x.perm", "--rules", rules)
    assert res.returncode == 2 and "'0.weight' row 0" in res.stderr
