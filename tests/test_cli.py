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


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, perm_file):
    _, m = perm_file
    path = tmp_path_factory.mktemp("cli_sharded") / "s.perm"
    permcodec.save(m, path, max_shard_size=1200, metadata={"epoch": 3, "note": "sharded"})
    assert (path.parent / "s.perm.index.json").exists()
    return path, m


@pytest.mark.parametrize("which", ["index", "stem"])
def test_info_reads_sharded_saves_with_metadata_and_rules(sharded, which):
    path, m = sharded
    arg = path.parent / "s.perm.index.json" if which == "index" else path
    out = run("info", arg)
    assert out.returncode == 0, out.stderr
    assert "he_uniform(fan_in=40) seed=2 prune=0.2" in out.stdout and '"note": "sharded"' in out.stdout
    js = json.loads(run("info", arg, "--json").stdout)
    assert [t["name"] for t in js["tensors"]] == list(m.state_dict())
    assert js["metadata"] == {"epoch": 3, "note": "sharded"}
    assert js["rules"]["0.weight"] == permcodec.init.rules_of(m)["0.weight"].to_dict()
    assert js["file_bytes"] == sum(p.stat().st_size for p in path.parent.iterdir())


def test_info_json_numbers_are_numbers_and_fast_prints_no_nan(perm_file):
    path, _ = perm_file
    js = json.loads(run("info", path, "--json").stdout)
    row = next(t for t in js["tensors"] if t["name"] == "0.weight")
    assert row["shape"] == [30, 40]
    for key in ("bits_per_weight", "limit_bits_per_weight", "vs_fp32"):
        assert isinstance(row[key], float), key
    assert isinstance(js["totals"]["weights"], int) and isinstance(js["file_bytes"], int)
    fast = run("info", path, "--fast")
    assert fast.returncode == 0 and "nan" not in fast.stdout.lower() and "information limit" not in fast.stdout
    fast_js = json.loads(run("info", path, "--json", "--fast").stdout)
    assert fast_js["totals"]["limit_bits"] is None
    assert all("limit_bits_per_weight" not in t for t in fast_js["tensors"])


def test_diff_equal_and_differing(perm_file, tmp_path):
    path, m = perm_file
    same = tmp_path / "same.perm"
    permcodec.save(m, same, codec="packed")
    res = run("diff", path, same)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0.weight: equal (codec model vs packed)" in res.stdout or "0.weight: equal (codec" in res.stdout
    other = {k: v.clone() for k, v in m.state_dict().items()}
    other["0.bias"][[1, 4]] += 1
    other["2.weight"][1] = other["2.weight"][1].flip(0)
    other["extra"] = torch.zeros(2)
    del other["2.bias"]
    changed = tmp_path / "changed.perm"
    permcodec.save(other, changed)
    res = run("diff", path, changed)
    assert res.returncode == 1
    assert "0.bias: 2 of 30 elements differ" in res.stdout
    assert "2.weight: 1 of 4 rows differ (different rules" in res.stdout
    assert f"2.bias: only in {path}" in res.stdout and f"extra: only in {changed}" in res.stdout
    assert "0.weight: equal (different rules" in res.stdout  # a plain dict save records no rule


def test_version_bare_help_and_positional_help():
    assert run("--version").stdout.strip() == f"permcodec {permcodec.__version__}"
    bare = run()
    assert bare.returncode == 0 and "usage: permcodec" in bare.stdout and "diff" in bare.stdout
    from permcodec.cli import parser
    for action in parser()._subparsers._group_actions[0].choices.values():
        for a in action._actions:
            assert a.help, f"{action.prog}: argument {a.dest} has no help"


def test_codec_lists_its_choices(perm_file, tmp_path):
    from permcodec.cli import CODECS
    from permcodec.codecs import REGISTRY
    assert set(CODECS) == {"auto", *REGISTRY}
    assert "{auto,packed,uniform,model,plain}" in run("export", "--help").stdout
    res = run("export", "a", "b", "--rules", "r", "--codec", "zip")
    assert res.returncode == 2 and "invalid choice: 'zip'" in res.stderr


def test_closed_pipe_exits_quietly(tmp_path):
    state = {f"layer{i}.bias": torch.zeros(3) for i in range(3000)}
    path = tmp_path / "many.perm"
    permcodec.save(state, path)
    res = subprocess.run(f'"{sys.executable}" -m permcodec info "{path}" --json | head -c 10', shell=True,
                         capture_output=True, text=True)
    assert res.stdout == '{\n "tensors'[:10] and res.stderr == ""


def test_info_and_verify_do_not_import_torch(perm_file, tmp_path):
    path, _ = perm_file
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "model.perm").write_bytes(path.read_bytes())
    code = ("import sys, io, contextlib\nfrom permcodec.cli import main\n"
            f"for argv in (['info', {str(path)!r}], ['info', {str(path)!r}, '--json'], ['verify', {str(path)!r}], "
            f"['info', {str(folder)!r}, '--fast']):\n"
            "    out = io.StringIO()\n"
            "    with contextlib.redirect_stdout(out):\n"
            "        assert main(argv) == 0, argv\n"
            "    assert out.getvalue(), argv\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
