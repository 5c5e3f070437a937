"""Peak memory of saving and loading a model larger than a shard.

    python3 bench/bench_memory.py                      # 300 MB of tensors, 100 MB shards
    python3 bench/bench_memory.py --mb 300 --shard 100MB --dir /tmp/permcodec-bench

Builds a model (half permuted tensors with seeded rules, half raw random tensors, 25 MB each),
keeps it as a torch file, then runs each phase in a fresh process: save sharded, save unsharded,
load everything through the index, and read one tensor lazily through the index. Each phase
reports, above the process's memory just before the phase: the peak resident set (VmHWM, reset
through /proc/self/clear_refs), the sampled peak of anonymous memory (RssAnon, every 5 ms; what
a mapped file's pages are not), and the tracemalloc peak (numpy and Python allocations).

    python3 bench/bench_memory.py --hostile            # the issue-10 memory bombs instead

reads each few-KB hostile file of tests/test_integrity_memory.py (2^25 rows of one float16 weight,
packed; one row of 2^25 weights, uniform and model) in a fresh process and reports the same peaks
beside the reader's bound (permcodec.tensors.working_budget) and the outcome.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MB = 1 << 20


def status() -> dict:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) * 1024
    return out


class Peak:
    """Samples RssAnon and RssFile in a thread; resets VmHWM at the start."""

    def __enter__(self):
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            pass
        self.base = status()
        self.anon = self.file = 0
        self.stop = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        return self

    def _run(self):
        while not self.stop:
            s = status()
            self.anon, self.file = max(self.anon, s["RssAnon"]), max(self.file, s["RssFile"])
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.stop = True
        self.t.join()
        end = status()
        self.result = {"peak_rss_mb": (end["VmHWM"] - self.base["VmRSS"]) / MB,
                       "peak_anon_mb": (max(self.anon, end["RssAnon"]) - self.base["RssAnon"]) / MB,
                       "peak_file_mb": (max(self.file, end["RssFile"]) - self.base["RssFile"]) / MB}


def build(args) -> None:
    import torch

    import permcodec
    from permcodec.rules import make
    n = max(2, args.mb // 25)
    state, rules = {}, {}
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        name = f"layer{i}.weight"
        shape = (2560, 2560)  # 25 MiB of float32
        if i % 2 == 0:
            rules[name] = make("he_uniform", shape, seed=0, name=name)
            t = permcodec.init.values_tensor(rules[name], shape, torch.float32).clone()
            rows = t.reshape(shape[0], -1)
            rows.copy_(torch.gather(rows, 1, torch.argsort(torch.rand(rows.shape, generator=g), dim=1)))
        else:
            t = torch.randn(shape, generator=g)
        state[name] = t
    torch.save({"state": state, "rules": {k: r.to_dict() for k, r in rules.items()}},
               os.path.join(args.dir, "model.pt"))


BOMBS = {  # name: (shape, codec params or None for the model codec's own, payload)
    "bomb_packed": ((1 << 25, 1), {"name": "packed", "ties": True}, b""),
    "bomb_uniform": ((1, 1 << 25), {"name": "uniform", "lanes": 1, "segment_rows": 1}, None),
    "bomb_model": ((1, 1 << 25), None, None),
}


def bomb(args) -> None:
    """Write the hostile file of phase ``args.phase`` (float16, constant rule) to args.dir."""
    import numpy as np

    from permcodec import codecs, tensors as T
    from permcodec.rules import Rule
    sys.path.insert(0, os.path.join(ROOT, "fuzz"))
    import kit
    shape, params, payload = BOMBS[args.phase]
    rule = Rule("constant", 0.5, 1, 3)
    if params is None:
        params = codecs.get("model").encode(np.tile(np.arange(64), (1, 1)), rule.values((1, 64), "float16"))[0]
    digest = T.digest(np.full(shape, 0.5, np.float16))
    entry = {"name": "w", "shape": list(shape), "dtype": "float16", "kind": "permuted", "layout": "rows",
             "init": rule.to_dict(), "codec": params, "digest": digest, "section": 0}
    data = kit.build({"format": "permcodec", "metadata": {}, "tensors": [entry]},
                     [os.urandom(2048) if payload is None else payload])
    with open(os.path.join(args.dir, args.phase + ".perm"), "wb") as fh:
        fh.write(data)


def phase(args) -> None:
    import tracemalloc

    import torch

    import permcodec
    d = args.dir
    model = None
    if args.phase.startswith("save"):
        model = torch.load(os.path.join(d, "model.pt"), weights_only=True)
    t0 = time.perf_counter()
    tracemalloc.start()
    with Peak() as p:
        if args.phase == "save_sharded":
            permcodec.save(model["state"], os.path.join(d, "sharded.perm"), rules=model["rules"],
                           max_shard_size=args.shard)
        elif args.phase == "save_single":
            permcodec.save(model["state"], os.path.join(d, "single.perm"), rules=model["rules"])
        elif args.phase == "load_sharded":
            state = permcodec.load(os.path.join(d, "sharded.perm"))
        elif args.phase == "load_single":
            state = permcodec.load(os.path.join(d, "single.perm"))
        elif args.phase == "lazy_one":
            with permcodec.open(os.path.join(d, "sharded.perm")) as f:
                state = {"layer3.weight": f.get_tensor("layer3.weight")}
                opened = list(f._files)
        elif args.phase in BOMBS:
            try:
                state = permcodec.load(os.path.join(d, args.phase + ".perm"))
                outcome = "ok"
            except (permcodec.PermcodecError, MemoryError) as e:
                state, outcome = {}, f"{type(e).__name__}: {str(e)[:160]}"
    peak_traced = tracemalloc.get_traced_memory()[1] / MB
    res = dict(p.result, phase=args.phase, seconds=round(time.perf_counter() - t0, 2), tracemalloc_peak_mb=peak_traced)
    if args.phase.startswith(("load", "lazy", "bomb")):
        res["decoded_mb"] = sum(t.numel() * t.element_size() for t in state.values()) / MB
    if args.phase == "lazy_one":
        res["shards_opened"] = opened
    if args.phase in BOMBS:
        from permcodec.tensors import working_budget
        rows, n = BOMBS[args.phase][0]
        res.update(outcome=outcome, file_bytes=os.path.getsize(os.path.join(d, args.phase + ".perm")),
                   working_budget_mb=working_budget(rows, n, 2) / MB)
    print(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=300, help="megabytes of tensors (25 MB each)")
    ap.add_argument("--shard", default="100MB", help="max_shard_size")
    ap.add_argument("--dir", default="/tmp/permcodec-bench-memory")
    ap.add_argument("--hostile", action="store_true", help="read the issue-10 memory bombs instead")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--write", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase == "build":
        return build(args)
    if args.phase in BOMBS and args.write:
        return bomb(args)
    if args.phase:
        return phase(args)
    os.makedirs(args.dir, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    base = [sys.executable, __file__, "--mb", str(args.mb), "--shard", args.shard, "--dir", args.dir]
    if args.hostile:
        for ph in BOMBS:
            subprocess.run(base + ["--phase", ph, "--write"], check=True, env=env)
            out = subprocess.run(base + ["--phase", ph], check=True, env=env, capture_output=True, text=True).stdout
            print(out.strip().splitlines()[-1], flush=True)
        return
    subprocess.run(base + ["--phase", "build"], check=True, env=env)
    rows = []
    for ph in ("save_sharded", "save_single", "load_sharded", "load_single", "lazy_one"):
        out = subprocess.run(base + ["--phase", ph], check=True, env=env, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    files = {f: os.path.getsize(os.path.join(args.dir, f)) / MB for f in sorted(os.listdir(args.dir))}
    print(json.dumps({"files_mb": files}))


if __name__ == "__main__":
    main()
