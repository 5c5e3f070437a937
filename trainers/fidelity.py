"""Reproduce the README's fidelity and sync-cost tables on this machine.

    python -m trainers.fidelity                 # every row, seeds 0 1 2 (about 4 min on 2 cores)
    python -m trainers.fidelity --rows adam,laperm --seeds 0
    python -m trainers.fidelity --sync-cost     # sync time vs step time per model, k = 200

Each fidelity row is one ``python -m trainers`` command (printed with the table); the figures are
test accuracies on the embedded MNIST digits (1,000 test digits: one digit is 0.1 point).
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


def run_row(flags: str, seed: int) -> dict:
    args = train_parser().parse_args(flags.split() + ["--seed", str(seed), "--no-progress"])
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config_from(args)
        cfg.out = tmp
        if args.nproc > 1:
            spawn(cfg, args.nproc)
            return json.load(open(f"{tmp}/log.json"))["result"]
        return train(cfg, log=lambda *a: None)


def fidelity(rows, seeds) -> list[dict]:
    table = []
    for name in rows:
        what, paper, flags = ROWS[name]
        accs, results = [], []
        for seed in seeds:
            r = run_row(flags, seed)
            accs.append(100 * r["test_acc"])
            results.append(r)
            print(f"  {name} seed {seed}: {accs[-1]:.2f}%  ({r['train_seconds']:.0f}s)", flush=True)
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        table.append({"row": name, "what": what, "paper": paper, "accs": accs,
                      "mean": statistics.mean(accs), "sd": sd,
                      "command": f"python -m trainers {flags} --seed S".replace("  ", " "),
                      "sync_fraction": [r["sync_seconds"] / r["train_seconds"] for r in results]})
        print(f"{what}: {table[-1]['mean']:.2f} ± {sd:.2f}", flush=True)
    return table


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
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma separated: {', '.join(ROWS)}")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--sync-cost", action="store_true", help="measure the sync cost instead")
    p.add_argument("--models", default="mlp,f2,conv7,conv4,resnet20,resnet50")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: robust on a busy box)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.sync_cost:
        res = sync_cost(a.models.split(","))
    else:
        res = fidelity(a.rows.split(","), [int(s) for s in a.seeds.split(",")])
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
