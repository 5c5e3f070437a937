"""Speed of the compiled core's generator and permutation kernels, beside this machine's floors.

    python3 bench/bench_core.py                    # 2**24 values, best of 5, all CPU threads
    python3 bench/bench_core.py --n 4194304 --reps 3 --threads 1

Each kernel is timed over the same number of elements; the floors are measured in the same run
on the same bytes: a numpy copy (memcpy) of the output and SHA-256 (hashlib) of it. Rates are
millions of elements per second of wall time, best of --reps, and per CPU-second of that run: on
a busy machine (see the load average printed first) the wall rate drops while the rate per
CPU-second (one core's throughput) holds; on an idle machine the wall rate of a parallel kernel
approaches the per-CPU-second rate times the cores.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TARGETS = {("uniform", "float32"): 1000.0, ("normal", "float32"): 400.0}  # M values/s on 2 cores (issue 11)


def best(fn, reps: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of the fastest of ``reps`` calls, after one warm-up call."""
    fn()
    runs = []
    for _ in range(reps):
        w, c = time.perf_counter(), time.process_time()
        fn()
        runs.append((time.perf_counter() - w, time.process_time() - c))
    return min(runs)


def row(what: str, count: int, secs: tuple[float, float], note: str = "") -> str:
    wall, cpu = secs
    return f"| {what} | {count / wall / 1e6:,.0f} | {count / max(cpu, 1e-9) / 1e6:,.0f} | {cpu / wall:.2f} | {note} |"


def generator_rows(core, n: int, reps: int) -> list[str]:
    out = []
    for dist, dtype in [("uniform", "float32"), ("normal", "float32"), ("normal", "bfloat16")]:
        for simd in core.simd_paths():
            secs = best(lambda: core.generate(7, 11, 0, n, dist, 1.0, 0, dtype, simd), reps)
            target = TARGETS.get((dist, dtype))
            note = f"target >= {target:,.0f} (2 cores)" if target and simd != "portable" else ""
            out.append(row(f"generate {dist} {dtype} ({simd})", n, secs, note))
    return out


def floor_rows(n: int, reps: int) -> list[str]:
    src = np.random.default_rng(0).random(n, dtype=np.float32)
    dst = np.empty_like(src)
    copy = best(lambda: np.copyto(dst, src), reps)
    sha = best(lambda: hashlib.sha256(memoryview(src)).digest(), reps)
    return [row("floor: numpy copy of the float32 output (memcpy)", n, copy, f"{src.nbytes / copy[0] / 1e9:.1f} GB/s"),
            row("floor: SHA-256 of the float32 output (hashlib)", n, sha, f"{src.nbytes / sha[0] / 1e9:.2f} GB/s")]


def perm_rows(core, n: int, reps: int) -> list[str]:
    from permcodec import perm
    from permcodec.rules import make
    cols = 2048
    rows = max(1, n // cols)
    out = []
    for label, rule in [("distinct", make("he_normal", (rows, cols), seed=1, name="w")),
                        ("30% pruned (ties)", make("he_uniform", (rows, cols), seed=1, name="w", prune=0.3))]:
        v = rule.values((rows, cols), "float32")
        w = np.random.default_rng(0).permuted(v, axis=1)
        p = perm.find(v, w)
        out.append(row(f"perm.find float32 {label}", v.size, best(lambda: perm.find(v, w), reps),
                       f"{rows} x {cols}"))
        out.append(row(f"perm.check_apply float32 {label}", v.size, best(lambda: perm.check_apply(v, p), reps),
                       f"{rows} x {cols}"))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1 << 24, help="elements per timed call")
    ap.add_argument("--reps", type=int, default=5, help="timed calls per kernel (the best is shown)")
    ap.add_argument("--threads", type=int, default=0, help="PERMCODEC_NUM_THREADS (0: all CPUs)")
    args = ap.parse_args(argv)
    if args.threads:
        os.environ["PERMCODEC_NUM_THREADS"] = str(args.threads)
    from permcodec._native import core
    core = core()
    print(f"permcodec._core: {core.num_threads()} threads, SIMD paths {core.simd_paths()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, n = {args.n:,}, best of {args.reps}")
    print("\n| kernel | M elements/s (wall) | M elements per CPU-second | CPU s / wall s | note |\n"
          "|---|---:|---:|---:|---|")
    for line in generator_rows(core, args.n, args.reps) + floor_rows(args.n, args.reps) + \
            perm_rows(core, args.n, args.reps):
        print(line, flush=True)


if __name__ == "__main__":
    main()
