"""The fidelity table's Fashion-MNIST rows and the frontier's measurements (issue 15, items 3, 4)."""
import json
import math

import pytest
import torch

import permcodec
from trainers import fidelity, frontier
from trainers.cli import config_from, train_parser
from trainers.train import build_model


def _config(flags: str):
    return config_from(train_parser().parse_args(flags.split()))


def test_fashion_rows_share_the_init_and_reduced_flags_override():
    rows = fidelity.FASHION_ROWS
    for net in ("mlp300", "conv2", "conv4"):
        adam, laperm = _config(rows[f"{net}-adam"][2]), _config(rows[f"{net}-laperm"][2])
        assert adam.optimizer == "adam" and laperm.optimizer == "laperm"
        assert adam.data == laperm.data == "fashion-mnist"
        # the same seeded init: only the optimizer differs between the two rows
        assert {**vars(adam), "optimizer": None} == {**vars(laperm), "optimizer": None}
        assert _config(rows[f"{net}-pruned"][2]).prune == 0.5
    conv = _config(fidelity._with(rows["conv4-adam"][2], "--epochs 1 --k 50"))
    assert (conv.model, conv.epochs, conv.k, conv.augment) == ("conv4-28", 1, 50, False)
    assert conv.weight_decay > 0 and conv.decay is None  # the paper's: weights only


def _saved(tmp_path, prune=0.0):
    cfg = _config(f"--prune {prune} --seed 3")
    model = build_model(cfg)
    path = tmp_path / f"m{prune}.perm"
    permcodec.save(model, path)
    return model, path


@pytest.mark.parametrize("prune", [0.0, 0.5])
def test_size_report_counts_bits_against_the_uniform_limit(tmp_path, prune):
    model, path = _saved(tmp_path, prune)
    rep = frontier.size_report(path)
    assert rep["file_bytes"] == path.stat().st_size
    assert rep["weights"] == sum(t.numel() for t in model.state_dict().values())
    weights = {n: p for n, p in model.named_parameters() if n.endswith("weight")}
    assert rep["permuted_weights"] == sum(p.numel() for p in weights.values())
    if prune == 0.0:  # distinct values: the limit is log2(n!) per row
        limit = sum(p.shape[0] * math.lgamma(p.shape[1] + 1) for p in weights.values()) / math.log(2)
        assert rep["limit_bits"] == pytest.approx(limit, rel=1e-12)
    else:  # the pruned zeros tie: fewer distinct rearrangements than n!
        dense = frontier.size_report(_saved(tmp_path, 0.0)[1])
        assert rep["limit_bits"] < dense["limit_bits"]
    # an untrained net is the identity permutation: far below the uniform limit
    assert 0 < rep["permuted_bits"] < rep["limit_bits"]


@pytest.mark.parametrize("codec", ["auto", "model"])
def test_recode_keeps_every_bit(tmp_path, codec):
    _, path = _saved(tmp_path, 0.5)
    rep = frontier.recode(path, tmp_path / f"{codec}.perm", codec)
    before, after = permcodec.load(path), permcodec.load(tmp_path / f"{codec}.perm")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert rep["file_bytes"] == (tmp_path / f"{codec}.perm").stat().st_size


def test_fidelity_markdown_marks_reduced_rows():
    size = {"file_bytes": 1000, "permuted_bits": 600, "permuted_weights": 100, "limit_bits": 800.0}
    rows = [{"what": "A", "mean": 90.0, "sd": 0.5, "accs": [89.5, 90.5], "file_bytes": 1000,
             "size": size, "wall_seconds": 12, "reduced": "--epochs 2"},
            {"what": "B", "mean": 91.0, "sd": 0.0, "accs": [91.0], "file_bytes": 4000,
             "size": None, "wall_seconds": 3, "reduced": ""}]
    md = fidelity.markdown(rows).splitlines()
    assert md[2] == ("| A | 90.00 ± 0.50 | 2 | 1,000 | 6.000 | 8.000 | 0.750x | 12 | --epochs 2 |")
    assert md[3].startswith("| B | 91.00 ± 0.00 | 1 | 4,000 (fp32) | 32 (fp32) |")
    assert md[3].endswith("| 3 | no |")


def test_frontier_writes_table_plot_and_figures(tmp_path):
    out = tmp_path / "f"
    assert frontier.main(["--lrs", "1e-3", "--ks", "2", "--epochs", "1", "--prunes", "0,0.5",
                          "--limit-train", "200", "--out", str(out)]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    assert [r["prune"] for r in res["runs"]] == [0.0, 0.5]
    for r in res["runs"]:
        for codec in ("auto", "model"):
            s = r[codec]
            assert s["bits_per_weight"] == 8 * s["file_bytes"] / s["weights"]
            assert 0 < s["ratio_to_limit"] < 1.5
        assert r["auto"]["file_bytes"] <= r["model"]["file_bytes"]  # auto picks the smallest
    formats = {b["format"]: b for b in res["baselines"]}
    assert formats["fp32"]["bits_per_weight"] == 32 and formats["fp16"]["bits_per_weight"] == 16
    assert formats["fp16+zstd-19"]["file_bytes"] < formats["fp16"]["file_bytes"]
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = out.with_suffix(".md").read_text().splitlines()
    assert len(table) == 2 + 4 + 2 and "Adam, fp32" in table[2]
    out.with_suffix(".md").unlink()
    assert frontier.main(["--replot", "--out", str(out)]) == 0  # from the figures alone
    assert out.with_suffix(".md").read_text().splitlines() == table


def test_fidelity_command_writes_each_row_as_it_goes(tmp_path):
    js, md = tmp_path / "f.json", tmp_path / "f.md"
    assert fidelity.main(["--rows", "adam,laperm", "--seeds", "0", "--epochs", "1", "--limit-train",
                          "200", "--json", str(js), "--out", str(md)]) == 0
    res = json.loads(js.read_text())
    assert [r["row"] for r in res] == ["adam", "laperm"]
    assert all(r["reduced"] == "--epochs 1 --limit-train 200" for r in res)
    assert res[0]["size"] is None and res[1]["size"]["permuted_weights"] == 784 * 100 + 100 * 100 + 1000
    lines = md.read_text().splitlines()
    assert len(lines) == 4 and lines[2].endswith("| --epochs 1 --limit-train 200 |")
    with pytest.raises(SystemExit):
        fidelity.main(["--dataset", "fashion-mnist", "--rows", "adam"])  # not a row of that table
