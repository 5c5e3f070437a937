"""The trainer end to end: CLI smoke run to a verified .perm file, resume parity, DDP, plots."""
import json
import shutil

import pytest
import torch

import permcodec
from trainers import cli, instruments
from trainers.train import Config, spawn, train

TINY = dict(limit_train=400, limit_test=200, batch=50, k=3, progress=False)  # 8 steps/epoch


def quiet(*a, **k):
    pass


def test_cli_smoke_run_writes_a_verified_perm_file(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["--epochs", "1", "--limit-train", "400", "--limit-test", "200", "--k", "4",
                     "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(printed.strip().splitlines()[-1])
    assert result["verified"] and result["rebuilt_test_correct"] == result["test_correct"]
    assert "verified" in printed and "fp32" in printed
    path = out / "model.perm"
    permcodec.verify(path)
    meta = permcodec.read_header(path)["metadata"]
    assert meta["test_correct"] == result["test_correct"] and meta["test_total"] == 200
    assert meta["config"]["k"] == 4 and meta["dataset"]["name"] == "embedded"
    assert len(meta["dataset"]["sha256"]) == 64
    log = json.loads((out / "log.json").read_text())
    assert log["epochs"][0]["step"] == 8 and log["result"]["syncs"] == 2
    assert log["ranking_distance"] and "1.weight" in log["ranking_distance"][0]
    assert result["perm_bytes"] < result["fp32_bytes"]

    # the instruments, from the CLI, on the .perm file
    assert cli.main(["profile", str(path), "--out", str(tmp_path / "p.png")]) == 0
    assert cli.main(["cycles", str(path), "--layer", "3.weight", "--row", "2",
                     "--out", str(tmp_path / "c.png")]) == 0
    assert cli.main(["ranking", str(out / "log.json"), "--out", str(tmp_path / "r.png")]) == 0
    for name in ("p.png", "c.png", "r.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "cycles, longest" in capsys.readouterr().out


def test_resume_from_checkpoint_is_bit_identical(tmp_path):
    cfg = Config(epochs=2, augment=True, out=str(tmp_path / "a"), **TINY)
    train(cfg, log=quiet)  # epoch end at step 8 -> checkpoint at the next sync, step 9
    ckpt = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 9
    shutil.copy(tmp_path / "a" / "checkpoint.pt", tmp_path / "ckpt.pt")
    resumed = train(Config(out=str(tmp_path / "b"), progress=False), resume=str(tmp_path / "ckpt.pt"),
                    log=quiet)
    assert resumed["steps"] == 16 and resumed["syncs"] == 6
    a, b = (permcodec.load(tmp_path / d / "model.perm") for d in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    la, lb = (json.loads((tmp_path / d / "log.json").read_text()) for d in "ab")
    drop = lambda recs: [{k: v for k, v in r.items() if k != "seconds"} for r in recs]
    assert drop(la["epochs"]) == drop(lb["epochs"])


def test_checkpoints_are_taken_at_the_first_sync_after_an_epoch(tmp_path):
    train(Config(epochs=3, out=str(tmp_path), **{**TINY, "k": 5}), log=quiet)
    # epochs end at steps 8, 16, 24; syncs at 5, 10, 15, 20; the run ends at step 24
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 20


def test_two_processes_stay_bit_identical_and_write_one_file(tmp_path):
    out = tmp_path / "ddp"
    cfg = Config(epochs=2, out=str(out), rank_every=0, **TINY)
    spawn(cfg, 2)
    log = json.loads((out / "log.json").read_text())
    assert log["world_size"] == 2
    reps = log["replicas"]
    assert len(reps) == log["result"]["syncs"] == 6  # 5 syncs, and the one at the end of the run
    assert all(len(r["digests"]) == 2 and r["digests"][0] == r["digests"][1] for r in reps)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "log.json", "model.perm"]
    permcodec.verify(out / "model.perm")
    assert log["result"]["rebuilt_test_correct"] == log["result"]["test_correct"]


def test_adam_baseline_uses_the_same_init_and_saves_no_perm_file(tmp_path):
    r = train(Config(epochs=1, optimizer="adam", out=str(tmp_path), **TINY), log=quiet)
    assert r["syncs"] == 0 and "perm_file" not in r
    assert not (tmp_path / "model.perm").exists()


def test_cycles_reproduce_the_rearrangement():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, generator=g)
    b = a[torch.randperm(40, generator=g)]
    ra, rb = instruments.ranks(a)[0].tolist(), instruments.ranks(b)[0].tolist()
    cyc = instruments.cycles(ra, rb)
    assert sorted(v for c in cyc for v in c) == list(range(40))
    sigma = {c[i]: c[(i + 1) % len(c)] for c in cyc for i in range(len(c))}
    assert all(sigma[x] == y for x, y in zip(ra, rb))


def test_ranking_distance_matches_definition():
    w = torch.nn.Parameter(torch.randn(5, 9))
    rd = instruments.RankingDistance({"w": w})
    r0 = instruments.ranks(w)
    with torch.no_grad():
        w.mul_(-1)
    d = (instruments.ranks(w) - r0).abs().double()
    got = rd.update()["w"]
    assert got["mean"] == pytest.approx(float(d.mean())) and got["n"] == 9
    assert got["sd"] == pytest.approx(float(((d - d.mean()) ** 2).mean().sqrt()))


def test_cli_flags_and_recipes_make_the_config():
    parse = lambda *a: cli.config_from(cli.train_parser().parse_args(list(a)))
    main_job = parse()
    assert (main_job.model, main_job.k, main_job.epochs, main_job.out) == ("mlp", 20, 30, "runs/mlp")
    f1 = parse("--recipe", "f1", "--data", "embedded", "--k-schedule", "0:20,100:250")
    assert (f1.shared_value, f1.prune, f1.input_prune_cap, f1.lr_steps) == (0.08, 0.4, 1.0, {})
    assert f1.k_schedule == [[0, 20], [100, 250]] and f1.data == "embedded"
    assert parse("--prune", "1.weight=0.5,3.weight:0.25").prune == {"1.weight": 0.5, "3.weight": 0.25}
    assert parse("--resume", "x/checkpoint.pt").out == "x"


@pytest.mark.parametrize("name", ["laperm", "instruments", "train"])
def test_docstring_examples(name):
    import doctest
    import importlib
    assert doctest.testmod(importlib.import_module(f"trainers.{name}")).failed == 0
