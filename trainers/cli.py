"""``python -m trainers``: train with LaPerm and save a verified .perm file; plot the instruments.

    python -m trainers                          # the README's main job: MLP 784-100-100-10, LaPerm,
                                                # embedded MNIST, a few minutes on 2 cores
    python -m trainers --recipe conv7           # a paper recipe (needs the data, and a GPU to be quick)
    python -m trainers --resume runs/mlp/checkpoint.pt
    torchrun --nproc_per_node 2 -m trainers     # data parallel (or: python -m trainers --nproc 2)
    python -m trainers profile runs/mlp/model.perm --out profile.png
    python -m trainers cycles runs/mlp/model.perm --layer 1.weight --row 0 --out cycles.png
    python -m trainers ranking runs/mlp/log.json --out ranking.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import torch

from . import data as data_mod
from . import models
from .train import DECAY, Config

#: The paper's settings (Table 1, §5, appendix A.5). Keras' l2(a) is Adam weight_decay 2a here.
#: Each recipe replaces the main job's learning-rate steps (``lr_steps``) unless it sets its own.
RECIPES = {
    "mlp": {},
    "conv7": dict(model="conv7", data="mnist", augment=True, epochs=45, batch=50, k=20,
                  lr_decay=0.95),
    "conv2": dict(model="conv2", data="cifar10", augment=True, epochs=125, batch=50, k=1000,
                  lr_decay=0.6, lr_decay_every=10, weight_decay=2e-4),
    "conv4": dict(model="conv4", data="cifar10", augment=True, epochs=125, batch=50, k=1000,
                  lr_decay=0.6, lr_decay_every=10, weight_decay=2e-4),
    "conv13": dict(model="conv13", data="cifar10", augment=True, epochs=125, batch=50, k=1000,
                   lr_decay=0.6, lr_decay_every=10, weight_decay=2e-4),
    "resnet50": dict(model="resnet50", data="cifar10", augment=True, epochs=200, batch=50, k=400,
                     lr_steps={"80": 0.1, "120": 0.1, "160": 0.1, "180": 0.5}, weight_decay=2e-4),
    "f1": dict(model="f1", data="mnist", epochs=10, batch=128, k=250, lr_decay=0.95, prune=0.4,
               shared_value=0.08, input_prune_cap=1.0),
    "f2": dict(model="f2", data="mnist", epochs=25, batch=128, k=250, lr_decay=0.95,
               prune={"1.weight": 0.93, "3.weight": 0.86, "5.weight": 0.67}, shared_value=0.03,
               input_prune_cap=1.0, weight_decay=2e-4),
}


def _pairs(text: str, key=str, value=float) -> dict:
    out = {}
    for item in filter(None, text.split(",")):
        k, _, v = item.partition(":" if ":" in item else "=")
        out[key(k.strip())] = value(v)
    return out


def _prune(text: str):
    return _pairs(text) if ("=" in text or ":" in text) else float(text)


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--recipe", choices=RECIPES, help="start from a paper setting; other flags override it")
    a("--model", choices=models.MODELS)
    a("--data", choices=data_mod.DATASETS)
    a("--data-dir", help="where local datasets live (default $PERMCODEC_DATA or "
                         "~/.cache/permcodec/data)")
    a("--verify-data", action=argparse.BooleanOptionalAction, default=None,
      help="check the dataset's pinned SHA-256 digests (default on; off for your own files)")
    a("--normalize", choices=("unit", "zscore"))
    a("--augment", action=argparse.BooleanOptionalAction, default=None)
    a("--limit-train", type=int)
    a("--limit-test", type=int)
    a("--epochs", type=int)
    a("--batch", type=int, help="global batch size (split across processes)")
    a("--optimizer", choices=("laperm", "adam"), help="adam: the baseline, same init, no syncs")
    a("--lr", type=float)
    a("--lr-decay", type=float, help="multiply the lr by this every --lr-decay-every epochs")
    a("--lr-decay-every", type=int)
    a("--lr-steps", type=lambda s: _pairs(s), help="EPOCH:FACTOR,... e.g. 80:0.1,120:0.1")
    a("--weight-decay", type=float)
    a("--decay", choices=DECAY,
      help="what --weight-decay applies to: weights (the paper: no biases, no BatchNorm), "
           "hidden (weights but the output layer: the paper's F2) or all (the earlier choice)")
    a("--k", type=int, help="sync period in steps")
    a("--k-schedule", type=lambda s: [[int(k), int(v)] for k, v in _pairs(s, int, int).items()],
      help="STEP:K,... e.g. 0:20,2000:200")
    a("--init", choices=("he_uniform", "he_normal", "glorot_uniform", "glorot_normal",
                         "lecun_uniform", "lecun_normal"))
    a("--prune", type=_prune, help="one rate, or NAME=RATE,... per weight tensor")
    a("--input-prune-cap", type=float, help="cap on the first layer's pruning rate (0.2)")
    a("--shared-value", type=float, help="weight-agnostic: every kept weight takes this value")
    a("--permute-bias", action=argparse.BooleanOptionalAction, default=None)
    a("--gamma-beta-reset", action=argparse.BooleanOptionalAction, default=None)
    a("--seed", type=int)
    a("--rank-every", type=int, help="ranking distance period in steps (default k; 0 = off)")
    a("--out", help="run folder: log.json, checkpoint.pt, model.perm (default runs/<model>)")
    a("--resume", help="a checkpoint.pt to continue from (its configuration is used)")
    a("--progress", action=argparse.BooleanOptionalAction, default=None)
    a("--nproc", type=int, default=1, help="local data-parallel processes (gloo), like torchrun")
    a("--threads", type=int, help="torch threads per process (default: 1 for f1/f2/mlp, else "
                                  "torch's default)")
    a("--device", help="cpu (default) or cuda")
    return p


def config_from(args) -> Config:
    fields = {f.name for f in dataclasses.fields(Config)}
    values = {"lr_steps": {}, **RECIPES[args.recipe]} if args.recipe not in (None, "mlp") else {}
    values.update({k: v for k, v in vars(args).items() if k in fields and v is not None})
    if args.resume and "out" not in values:
        values["out"] = os.path.dirname(args.resume) or "."
    values.setdefault("out", os.path.join("runs", values.get("model", "mlp")))
    return Config(**values)


def main_train(argv) -> int:
    args = train_parser().parse_args(argv)
    cfg = config_from(args)
    # the MLPs gain nothing from threads, and on a shared CPU two spinning threads can make a
    # step 10x slower; the thread count can change the rounding of training (not of the file)
    threads = args.threads or (1 if cfg.model in ("f1", "f2", "mlp") else None)
    if threads:
        torch.set_num_threads(threads)
    from . import train as train_mod
    if args.nproc > 1:
        train_mod.spawn(cfg, args.nproc, resume=args.resume, epochs=args.epochs)
        return 0
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:  # under torchrun
        import torch.distributed as dist
        dist.init_process_group("nccl" if cfg.device.startswith("cuda") else "gloo")
    try:
        result = train_mod.train(cfg, resume=args.resume, epochs=args.epochs)
    finally:
        if distributed:
            dist.destroy_process_group()
    if not distributed or int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result))
    return 0


def _tensors(path, layers):
    from .instruments import load_state
    state, _ = load_state(path)
    names = layers.split(",") if layers else [n for n, t in state.items()
                                              if t.dim() > 1 and t.is_floating_point()]
    missing = [n for n in names if n not in state]
    if missing:
        raise SystemExit(f"{path} has no tensor {missing}; it has {', '.join(state)}")
    return {n: state[n] for n in names}


def main_plot(argv) -> int:
    from . import instruments
    p = argparse.ArgumentParser(prog="python -m trainers {profile,cycles,ranking}")
    p.add_argument("what", choices=("profile", "cycles", "ranking"))
    p.add_argument("path", help="a .perm file or a checkpoint.pt (ranking: a log.json)")
    p.add_argument("--layer", help="tensor name(s), comma separated (default: all weights / first)")
    p.add_argument("--row", type=int, default=0, help="cycles: which weight vector")
    p.add_argument("--against", default="init",
                   help="cycles: 'init' (the seeded initial weights) or another .perm/checkpoint")
    p.add_argument("--out", help="PNG to write (default: next to the input)")
    a = p.parse_args(argv)
    out = a.out or f"{os.path.splitext(a.path)[0]}.{a.what}.png"
    if a.what == "profile":
        instruments.plot_profiles(_tensors(a.path, a.layer), out, source=a.path)
    elif a.what == "ranking":
        with open(a.path) as fh:
            instruments.plot_ranking(json.load(fh), out, source=a.path)
    else:
        state, config = instruments.load_state(a.path)
        name = a.layer or next(n for n, t in state.items() if t.dim() > 1)
        if a.against == "init":
            if config is None:
                raise SystemExit(f"{a.path} does not say how it was trained: pass --against FILE")
            before = instruments.initial_state(config)[name]
        else:
            before = instruments.load_state(a.against)[0][name]
        cyc = instruments.plot_cycles(before.reshape(before.shape[0], -1)[a.row],
                                      state[name].reshape(before.shape[0], -1)[a.row], out,
                                      title=f"{a.path}: {name} row {a.row} against {a.against}")
        print(f"{len([c for c in cyc if len(c) > 1])} cycles, longest {max(map(len, cyc))}")
    print(f"wrote {out}")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("profile", "cycles", "ranking"):
        return main_plot(argv)
    if argv and argv[0] == "train":
        argv = argv[1:]
    return main_train(argv)
