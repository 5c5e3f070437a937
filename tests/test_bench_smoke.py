"""bench/bench_codecs.py runs end to end on a small case and writes the fields the README quotes."""
import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_bench_codecs_quick(tmp_path):
    pytest.importorskip("safetensors")
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("bench_codecs", ROOT / "bench" / "bench_codecs.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    trained = sorted(str(p) for p in (ROOT / "tests" / "data").glob("*.perm"))[:1]
    bench.main(["--quick", "--models", "f1", "--trained", *trained, "--out", str(tmp_path)])
    res = json.loads((tmp_path / "results.json").read_text())
    from permcodec import codecs
    assert set(res["codec_names"]) == set(codecs.REGISTRY) | {"auto"}
    assert [c["case"] for c in res["cases"]][:2] == ["f1 dense", "f1 pruned 50%"]
    assert len(res["cases"]) == 2 + len(trained)
    for case in res["cases"]:
        assert case["limit_bits"] > 0 and case["permuted_weights"] > 0
        for name in res["codec_names"]:
            r = case["codecs"][name]
            assert "error" not in r, (case["case"], name, r)
            for key in ("bpw", "ratio_to_limit", "bytes", "save_mws", "load_mws"):
                assert r[key] > 0
            assert r["ratio_to_limit"] >= 0.5
        assert set(case["peers"]) == set(bench.PEERS)
        for r in case["peers"].values():
            assert r["bytes"] > 0 and r["load_s"] > 0
    assert {(g["dist"], g["dtype"]) for g in res["generator"]} >= {("uniform", "float32"), ("normal", "bfloat16")}
    md = (tmp_path / "results.md").read_text()
    assert "| case |" in md and "Generator alone" in md
    assert (tmp_path / "results.png").stat().st_size > 0


def test_ans_peer_quick(capsys):
    """bench/ans_peer.py: uniform and constriction both round-trip (the script asserts it) and
    land at the same size: on 20 rows of 100 (10.5 kbit) a 32-bit final state is 0.3%."""
    pytest.importorskip("constriction")
    spec = importlib.util.spec_from_file_location("ans_peer", ROOT / "bench" / "ans_peer.py")
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    peer.main(["--quick"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 20 × 100")]
    assert len(rows) == 1
    over = [float(c.strip().rstrip("%")) for c in rows[0].split("|")[2:4]]
    assert all(0 <= o < 0.5 for o in over) and abs(over[0] - over[1]) < 0.05, rows[0]
