"""Reproduce the README's fidelity and sync-cost tables on this machine.

    python -m trainers.fidelity                 # every row, seeds 0 1 2 (about 4 min on 2 cores)
    python -m trainers.fidelity --rows adam,laperm --seeds 0
    python -m trainers.fidelity --sync-cost     # sync time vs step time per model, k = 200
    python -m trainers.fidelity --dataset fashion-mnist --out docs/science-fidelity.md
                                                # the full Fashion-MNIST table (hours on 2 cores)
    python -m trainers.fidelity --dataset fashion-mnist --rows mlp300-adam,mlp300-laperm \
        --epochs 2 --seeds 0,1,2                # a reduced run (rows marked "reduced")

Each fidelity row is one ``python -m trainers`` command (printed with the table); the default
figures are test accuracies on the embedded MNIST digits (1,000 test digits: one digit is 0.1
point). ``--dataset fashion-mnist`` uses the full Fashion-MNIST (60,000/10,000; Debian's
dataset-fashion-mnist) and adds each run's file size, its permuted tensors' bits per weight
against the uniform limit, and the wall time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from .cli import config_from, train_parser
from .train import spawn, train

ROWS = {  # name: (what, paper figure, flags)
    "adam": ("MLP 784-100-100-10, Adam (baseline, same init)", "—", "--optimizer adam"),
    "laperm": ("MLP, LaPerm k=20 (the main job)", "—", ""),
    "laperm-k200": ("MLP, LaPerm k=200", "—", "--k 200"),
    "pruned": ("MLP, LaPerm k=20, 50% pruned (input layer 20%)", "ResNet50: 92.02 vs 92.53 dense",
               "--prune 0.5"),
    "f1-wann": ("F1, weight-agnostic: 40% pruned, all weights 0.08, k=250",
                "85.46 (full MNIST)", "--recipe f1 --data embedded --epochs 150 --lr-decay-every 15"),
    "f1-adam": ("F1, Adam from the same init (free weights)", "—",
                "--recipe f1 --data embedded --epochs 150 --lr-decay-every 15 --optimizer adam"),
    "ddp2": ("MLP, LaPerm k=20, 2 processes (same global batch)", "—", "--nproc 2"),
}


_FASHION = "--data fashion-mnist"
_CONV = f"--recipe conv4 {_FASHION} --no-augment --epochs 30"  # k=1000, lr x0.6 every 10 epochs
#: Fashion-MNIST rows (issue 15): the same seeded init for Adam and LaPerm; "pruned" rows are
#: LaPerm only (Adam would regrow the pruned zeros), compared with their dense LaPerm row.
FASHION_ROWS = {
    "mlp300-adam": ("MLP 784-300-100-10, Adam", "—", f"--model mlp300 {_FASHION} --optimizer adam"),
    "mlp300-laperm": ("MLP 784-300-100-10, LaPerm k=20", "—", f"--model mlp300 {_FASHION}"),
    "mlp300-pruned": ("MLP 784-300-100-10, LaPerm k=20, 50% pruned (input layer 20%)", "—",
                      f"--model mlp300 {_FASHION} --prune 0.5"),
    "conv2-adam": ("Conv2 (28x28x1), Adam", "—", f"{_CONV} --model conv2-28 --optimizer adam"),
    "conv2-laperm": ("Conv2 (28x28x1), LaPerm k=1000", "—", f"{_CONV} --model conv2-28"),
    "conv2-pruned": ("Conv2 (28x28x1), LaPerm k=1000, 50% pruned", "—",
                     f"{_CONV} --model conv2-28 --prune 0.5"),
    "conv4-adam": ("Conv4 (28x28x1), Adam", "—", f"{_CONV} --model conv4-28 --optimizer adam"),
    "conv4-laperm": ("Conv4 (28x28x1), LaPerm k=1000", "—", f"{_CONV} --model conv4-28"),
    "conv4-pruned": ("Conv4 (28x28x1), LaPerm k=1000, 50% pruned", "—",
                     f"{_CONV} --model conv4-28 --prune 0.5"),
}
TABLES = {"embedded": ROWS, "fashion-mnist": FASHION_ROWS}


def run_row(flags: str, seed: int) -> dict:
    """One training run; LaPerm runs add their file's size report (see trainers.frontier)."""
    from .frontier import size_report
    args = train_parser().parse_args(flags.split() + ["--seed", str(seed), "--no-progress"])
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config_from(args)
        cfg.out = tmp
        if args.nproc > 1:
            spawn(cfg, args.nproc)
            return json.load(open(f"{tmp}/log.json"))["result"]
        t = time.perf_counter()
        result = train(cfg, log=lambda *a: None)
        result["wall_seconds"] = time.perf_counter() - t
        if result.get("perm_file"):
            result["size"] = size_report(result["perm_file"])
        return result


def _with(flags: str, extra: str) -> str:
    """``flags`` with ``extra``'s options replacing the same options (argparse keeps the last)."""
    return f"{flags} {extra}".strip()


def fidelity(rows, seeds, table=ROWS, extra: str = "") -> list[dict]:
    """Each row's accuracy over ``seeds``; ``extra`` flags (e.g. fewer epochs) mark it reduced."""
    out = []
    for name in rows:
        what, paper, flags = table[name]
        flags = _with(flags, extra)
        accs, results = [], []
        for seed in seeds:
            r = run_row(flags, seed)
            accs.append(100 * r["test_acc"])
            results.append(r)
            print(f"  {name} seed {seed}: {accs[-1]:.2f}%  ({r['train_seconds']:.0f}s)", flush=True)
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        size = results[-1].get("size")
        out.append({"row": name, "what": what, "paper": paper, "accs": accs,
                    "mean": statistics.mean(accs), "sd": sd, "reduced": extra, "seeds": seeds,
                    "command": f"python -m trainers {flags} --seed S".replace("  ", " "),
                    "sync_fraction": [r["sync_seconds"] / r["train_seconds"] for r in results],
                    "wall_seconds": statistics.mean(r.get("wall_seconds", 0) for r in results),
                    "file_bytes": size["file_bytes"] if size else results[-1].get("fp32_bytes"),
                    "size": size})
        print(f"{what}: {out[-1]['mean']:.2f} ± {sd:.2f}", flush=True)
    return out


def markdown(rows: list[dict]) -> str:
    """The table of docs/science.md: accuracy, file size, bits per permuted weight vs the limit."""
    lines = ["| row | test acc % (mean ± SD) | seeds | file bytes | bits / permuted weight | "
             "uniform limit | ratio | wall s / run | reduced |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        s = r["size"]
        bits = (f"{s['permuted_bits'] / s['permuted_weights']:.3f} | "
                f"{s['limit_bits'] / s['permuted_weights']:.3f} | "
                f"{s['permuted_bits'] / s['limit_bits']:.3f}x") if s else "32 (fp32) | | "
        size = f"{r['file_bytes']:,}" + ("" if s else " (fp32)")
        lines.append(f"| {r['what']} | {r['mean']:.2f} ± {r['sd']:.2f} | {len(r['accs'])} | "
                     f"{size} | {bits} | {r['wall_seconds']:.0f} | {r['reduced'] or 'no'} |")
    return "\n".join(lines) + "\n"


def _median_time(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def sync_cost(names, k: int = 200, batch: int = 50, steps: int = 5) -> list[dict]:
    """Median time of one training step (batch 50) and of one sync, and the overhead at ``k``."""
    from . import models
    from .laperm import LaPerm
    from .train import Config, build_model
    out = []
    for name in names:
        model = build_model(Config(model=name))
        opt = LaPerm(model, k=10 ** 9)
        x = torch.randn(batch, *models.INPUT[name])
        y = torch.randint(0, 10, (batch,))

        def step():
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        step()  # warm-up (allocations, Adam state)
        t_step = _median_time(step, steps)
        t_sync = _median_time(opt.sync, steps)
        n = sum(p.numel() for p in opt.permuted().values())
        row = {"model": name, "permuted": n, "step_s": t_step, "sync_s": t_sync,
               f"overhead_k{k}": t_sync / (k * t_step)}
        print(f"{name:9s} {n:>11,d} permuted  step {1e3 * t_step:8.1f} ms  sync "
              f"{1e3 * t_sync:7.1f} ms  overhead at k={k}: {100 * row[f'overhead_k{k}']:.3f}%",
              flush=True)
        out.append(row)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainers.fidelity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=TABLES, default="embedded",
                   help="which table: the embedded MNIST-5k rows or the Fashion-MNIST rows")
    p.add_argument("--rows", help="comma separated (default: every row of the table): "
                                  f"{', '.join(ROWS)}; or {', '.join(FASHION_ROWS)}")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, help="fewer epochs than the row's (marks it reduced)")
    p.add_argument("--limit-train", type=int, help="a prefix of the training set (reduced)")
    p.add_argument("--extra", default="", help="more flags for every row, e.g. '--k 100' (reduced)")
    p.add_argument("--out", help="also write the table as markdown here")
    p.add_argument("--sync-cost", action="store_true", help="measure the sync cost instead")
    p.add_argument("--models", default="mlp,f2,conv7,conv4,resnet20,resnet50")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: robust on a busy box)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    def write(res):  # after every row: a long run stopped midway keeps what it measured
        if a.out and not a.sync_cost:
            with open(a.out, "w") as f:
                f.write(markdown(res))
        if a.json:
            with open(a.json, "w") as f:
                json.dump(res, f, indent=1)

    if a.sync_cost:
        write(sync_cost(a.models.split(",")))
        return 0
    table = TABLES[a.dataset]
    extra = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                     (("epochs", a.epochs), ("limit_train", a.limit_train)) if v)
    extra = f"{extra} {a.extra}".strip()
    rows = a.rows.split(",") if a.rows else list(table)
    unknown = [r for r in rows if r not in table]
    if unknown:
        p.error(f"unknown rows {unknown} for --dataset {a.dataset}; choose from {', '.join(table)}")
    res = []
    for row in rows:
        res += fidelity([row], [int(s) for s in a.seeds.split(",")], table, extra)
        write(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
