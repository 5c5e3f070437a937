"""The instruments' plots: titles name the file and tensor, long rows stay readable, axes are labelled."""
import pytest
import torch

pytest.importorskip("matplotlib")
from trainers import cli, instruments


def _texts(fig):
    return {"suptitle": fig._suptitle.get_text() if fig._suptitle else "",
            "titles": [ax.get_title() for ax in fig.axes],
            "xlabels": [ax.get_xlabel() for ax in fig.axes], "ylabels": [ax.get_ylabel() for ax in fig.axes]}


def test_cycles_of_a_784_long_row_draw_chords_only_for_short_cycles():
    g = torch.Generator().manual_seed(0)
    before = torch.randn(784, generator=g)
    after = before[torch.randperm(784, generator=g)]
    fig, cyc = instruments.cycles_figure(before, after, title="m.perm: 0.weight row 3", max_chord=12)
    assert sorted(i for c in cyc for i in c) == list(range(784))
    circle, hist = fig.axes
    chords = [c for c in circle.texts]  # one arrow annotation per chord
    assert len(chords) == sum(len(c) for c in cyc if 1 < len(c) <= 12)
    assert max(map(len, cyc)) > 12  # a random row has long cycles: those are in the histogram only
    t = _texts(fig)
    assert t["suptitle"] == "m.perm: 0.weight row 3"
    assert hist.get_xlabel().startswith("cycle length") and hist.get_ylabel() == "number of cycles"
    assert f"longest {max(map(len, cyc))}" in hist.get_title()
    assert sum(p.get_height() for p in hist.patches) == len(cyc)


def test_ranking_has_axis_labels_and_names_its_source():
    log = {"ranking_distance": [{"step": s, "1.weight": {"mean": 10.0 / (s + 1), "sd": 2.0, "n": 100}}
                                for s in (0, 10, 20)]}
    t = _texts(instruments.ranking_figure(log, source="runs/mlp/log.json"))
    assert t["suptitle"] == "ranking distance in runs/mlp/log.json"
    assert t["xlabels"] == ["training step"] and t["ylabels"] == ["ranking distance / row length"]
    assert t["titles"] == ["1.weight"]


def test_profiles_name_the_file_and_each_tensor():
    t = _texts(instruments.profiles_figure({"0.weight": torch.randn(5, 7), "2.weight": torch.randn(3, 5)},
                                           source="m.perm"))
    assert t["suptitle"] == "weight profiles of m.perm"
    assert t["titles"] == ["0.weight (5, 7)", "2.weight (3, 5)"]


def test_the_cli_passes_the_file_and_tensor_into_the_titles(tmp_path, monkeypatch):
    import permcodec
    m = torch.nn.Sequential(torch.nn.Linear(30, 6))
    permcodec.init.apply_(m, seed=0)
    a, b = tmp_path / "a.perm", tmp_path / "b.perm"
    permcodec.save(m, a)
    with torch.no_grad():
        m[0].weight.copy_(m[0].weight.flip(1))
    permcodec.save(m, b)
    seen = []
    real = instruments._save
    monkeypatch.setattr(instruments, "_save", lambda fig, path: seen.append(_texts(fig)) or real(fig, path))
    assert cli.main(["cycles", str(b), "--against", str(a), "--row", "1", "--out", str(tmp_path / "c.png")]) == 0
    assert cli.main(["profile", str(b), "--out", str(tmp_path / "p.png")]) == 0
    assert seen[0]["suptitle"] == f"{b}: 0.weight row 1 against {a}"
    assert seen[1]["suptitle"] == f"weight profiles of {b}"
