"""The accuracy-size frontier: test accuracy against bits per weight for LaPerm runs across the
learning rate, k, epochs and pruning, each file coded with ``codec="auto"`` and ``codec="model"``,
beside the Adam baseline stored as fp32, fp16 and zstd (issue 15, item 5).

    python -m trainers.frontier                                  # the grid of docs/science.md
    python -m trainers.frontier --lrs 3e-4,1e-3,3e-3 --ks 20,200 --epochs 10 --prunes 0,0.5 \\
        --out docs/frontier

Writes ``<out>.md`` (a table), ``<out>.png`` (the plot) and ``<out>.json`` (every figure).
Bits per weight count the whole file over every parameter, so LaPerm and the baselines share an
axis; the table also gives the permuted tensors' bits against their uniform limit
(log2 of the number of distinct rearrangements of each row).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import tempfile
from pathlib import Path

import torch

from .train import Config, evaluate, load_checkpoint, train

__all__ = ["size_report", "recode", "run_laperm", "run_baseline", "main"]


def size_report(path) -> dict:
    """The file's bytes, and its permuted tensors' bits against their uniform (information) limit."""
    from permcodec import api
    from permcodec import tensors as T
    from permcodec.perm import info_bits
    out = {"file_bytes": Path(path).stat().st_size, "weights": 0, "permuted_weights": 0,
           "permuted_bits": 0, "limit_bits": 0.0}
    with api.File(path) as f:
        for e in f.entries.values():
            if e["kind"] == "alias":
                continue
            n = math.prod(e["shape"])
            out["weights"] += n
            if e["kind"] == "permuted":
                out["permuted_weights"] += n
                out["permuted_bits"] += 8 * f.header["sections"][e["section"]]["length"]
                out["limit_bits"] += info_bits(T.initial_rows(e))
    return out


def recode(path, dest, codec: str) -> dict:
    """Write ``path``'s tensors again to ``dest`` with ``codec``; its :func:`size_report`."""
    import permcodec
    from permcodec import api
    from permcodec.rules import Rule
    with api.File(path) as f:
        rules = {n: Rule.from_dict(e["init"]) for n, e in f.entries.items()
                 if e["kind"] == "permuted"}
    permcodec.save(permcodec.load(path), dest, rules=rules, codec=codec)
    return size_report(dest)


def _cfg(**kw) -> Config:
    return Config(**{"progress": False, "rank_every": 0, **kw})


def run_laperm(tmp: Path, **kw) -> dict:
    """One LaPerm run; its accuracy and the sizes of its file under codec "auto" and "model"."""
    cfg = _cfg(out=str(tmp), **kw)
    r = train(cfg, log=lambda *a: None)
    row = {**kw, "test_acc": r["test_acc"], "train_seconds": r["train_seconds"]}
    for codec in ("auto", "model"):
        rep = recode(r["perm_file"], tmp / f"{codec}.perm", codec)
        row[codec] = {**rep, "bits_per_weight": 8 * rep["file_bytes"] / rep["weights"],
                      "ratio_to_limit": rep["permuted_bits"] / rep["limit_bits"]}
    return row


def run_baseline(tmp: Path, **kw) -> list[dict]:
    """The Adam baseline from the same seeded init, stored as fp32, fp16, and zstd of each."""
    import zstandard
    from . import data as data_mod
    from . import models
    cfg = _cfg(out=str(tmp), optimizer="adam", **kw)
    r = train(cfg, log=lambda *a: None)
    state = load_checkpoint(tmp / "checkpoint.pt")["model"]
    n = sum(t.numel() for t in state.values())
    ds = data_mod.load(cfg.data, root=cfg.data_dir, limit_test=cfg.limit_test)
    rows = []
    for dtype, bits in ((torch.float32, 32), (torch.float16, 16)):
        rounded = {k: v.to(dtype) for k, v in state.items()}
        model = models.build(cfg.model)
        model.load_state_dict({k: v.float() for k, v in rounded.items()})
        correct, total = evaluate(model, ds.x_test, ds.y_test)
        raw = b"".join(v.contiguous().numpy().tobytes() for v in rounded.values())
        zst = len(zstandard.ZstdCompressor(level=19).compress(raw))
        for name, size in ((f"fp{bits}", len(raw)), (f"fp{bits}+zstd-19", zst)):
            rows.append({"format": name, "test_acc": correct / total, "file_bytes": size,
                         "bits_per_weight": 8 * size / n, "train_seconds": r["train_seconds"]})
    return rows


def _table(runs, baselines) -> str:
    lines = ["| run | test acc | file bytes (auto) | bits/weight (auto) | bits/weight (model) "
             "| model codec vs uniform limit | train s |", "|---|---:|---:|---:|---:|---:|---:|"]
    for b in baselines:
        lines.append(f"| Adam, {b['format']} | {100 * b['test_acc']:.2f} | {b['file_bytes']:,} | "
                     f"{b['bits_per_weight']:.2f} | | | {b['train_seconds']:.0f} |")
    for r in sorted(runs, key=lambda r: r["auto"]["bits_per_weight"]):
        name = f"LaPerm lr {r['lr']:g}, k {r['k']}, {r['epochs']} ep, prune {r['prune']:g}"
        lines.append(f"| {name} | {100 * r['test_acc']:.2f} | {r['auto']['file_bytes']:,} | "
                     f"{r['auto']['bits_per_weight']:.3f} | {r['model']['bits_per_weight']:.3f} | "
                     f"{r['model']['ratio_to_limit']:.3f}x | {r['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def _plot(runs, baselines, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for prune, marker in ((0.0, "o"), (0.5, "s")):
        sel = [r for r in runs if r["prune"] == prune]
        if not sel:
            continue
        sc = ax.scatter([r["model"]["bits_per_weight"] for r in sel],
                        [100 * r["test_acc"] for r in sel], c=[math.log10(r["lr"]) for r in sel],
                        marker=marker, cmap="viridis", label=f"LaPerm, prune {prune:g} (model codec)")
        for r in sel:
            ax.annotate(f"k{r['k']}", (r["model"]["bits_per_weight"], 100 * r["test_acc"]),
                        fontsize=6, xytext=(4, -2), textcoords="offset points")
    if runs:
        fig.colorbar(sc, ax=ax, label="log10 lr")
    for i, b in enumerate(baselines):
        ax.scatter(b["bits_per_weight"], 100 * b["test_acc"], marker="x", color="k")
        ax.annotate(f"Adam {b['format']}", (b["bits_per_weight"], 100 * b["test_acc"]),
                    fontsize=7, xytext=(-20, 8 if i % 2 else -14), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("bits per weight (whole file / all parameters)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainers.frontier", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mlp")
    p.add_argument("--data", default="embedded")
    p.add_argument("--lrs", default="3e-4,1e-3,3e-3")
    p.add_argument("--ks", default="20,200")
    p.add_argument("--epochs", default="10")
    p.add_argument("--prunes", default="0,0.5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit-train", type=int)
    p.add_argument("--out", default="docs/frontier", help="writes OUT.md, OUT.png and OUT.json")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--replot", action="store_true", help="redraw OUT.md and OUT.png from OUT.json")
    a = p.parse_args(argv)
    out = Path(a.out)
    if a.replot:
        saved = json.loads(out.with_suffix(".json").read_text())
        out.with_suffix(".md").write_text(_table(saved["runs"], saved["baselines"]))
        _plot(saved["runs"], saved["baselines"], out.with_suffix(".png"))
        return 0
    torch.set_num_threads(a.threads)
    common = dict(model=a.model, data=a.data, seed=a.seed, limit_train=a.limit_train)
    grid = list(itertools.product(_floats(a.lrs), [int(k) for k in a.ks.split(",")],
                                  [int(e) for e in a.epochs.split(",")], _floats(a.prunes)))
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        baselines = run_baseline(Path(tmp) / "adam", epochs=max(e for _, _, e, _ in grid),
                                 **common)
        for i, (lr, k, epochs, prune) in enumerate(grid):
            folder = Path(tmp) / f"run{i}"
            runs.append(run_laperm(folder, lr=lr, k=k, epochs=epochs, prune=prune, **common))
            r = runs[-1]
            print(f"lr {lr:g} k {k} epochs {epochs} prune {prune:g}: {100 * r['test_acc']:.2f}%  "
                  f"auto {r['auto']['bits_per_weight']:.3f} b/w, model "
                  f"{r['model']['bits_per_weight']:.3f} b/w ({r['model']['ratio_to_limit']:.3f}x "
                  f"the limit)  {r['train_seconds']:.0f}s", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"runs": runs, "baselines": baselines,
                                                    "args": vars(a)}, indent=1))
    out.with_suffix(".md").write_text(_table(runs, baselines))
    _plot(runs, baselines, out.with_suffix(".png"))
    print(f"wrote {out}.md, {out}.png, {out}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
