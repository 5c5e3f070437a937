"""Rebuild throughput per codec and file -> device memory time against safetensors fp32.

    python3 bench/bench_gpu.py            # model table (GPU figures where a GPU is present)
    python3 bench/bench_gpu.py --sizes    # packed bits/weight against the information limit
    python3 bench/bench_gpu.py --cpu      # packed encode/decode throughput on this CPU

Where torch.cuda is unavailable it runs gpu.py's torch path on CPU tensors (correctness and the
code path only) and says that the GPU figures are unmeasured.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import permcodec
from permcodec import gpu, perm as P
from permcodec.codecs import packed


def rows_of(kind, rows, n, rng):
    v = rng.standard_normal((rows, n)).astype(np.float32)
    if kind.startswith("pruned"):
        v[rng.random((rows, n)) < int(kind[6:]) / 100] = 0.0
    elif kind.startswith("agnostic"):
        v = np.where(rng.random((rows, n)) < int(kind[8:]) / 100, 0.0, 0.03).astype(np.float32)
    elif kind == "float16":
        v = v.astype(np.float16)
    return v


def sizes():
    rng = np.random.default_rng(0)
    kinds = ["fp32", "pruned50", "pruned90", "agnostic50", "agnostic90", "float16"]
    print("| n | " + " | ".join(kinds) + " |")
    print("|---|" + "---|" * len(kinds))
    for n in (100, 576, 784, 4096):
        rows = max(8, 400000 // n)
        cells = []
        for kind in kinds:
            v = rows_of(kind, rows, n, rng)
            p = P.find(v, np.take_along_axis(v, np.argsort(rng.random(v.shape), 1), 1))
            _, payload = packed.encode(p, v)
            bits, limit = len(payload) * 8 / v.size, P.info_bits(v) / v.size
            cells.append(f"{bits:.4f} / {limit:.4f} (+{100 * (bits / limit - 1):.3f}%)")
        print(f"| {n} | " + " | ".join(cells) + " |")
    print("cells: packed bits/weight / limit bits/weight (overhead)")


def cpu_speed():
    rng = np.random.default_rng(1)
    print("| rows x n | kind | encode M/s | decode M/s (codec only) |")
    print("|---|---|---|---|")
    for rows, n, kind in ((8192, 784, "fp32"), (1024, 4096, "fp32"), (40000, 100, "fp32"),
                            (8192, 784, "pruned50"), (8192, 784, "pruned90"), (8192, 784, "float16")):
        v = rows_of(kind, rows, n, rng)
        p = P.find(v, np.take_along_axis(v, np.argsort(rng.random(v.shape), 1), 1))
        packed.decode(*packed.encode(p, v), v)  # compile
        enc = best(lambda: packed.encode(p, v))
        params, payload = packed.encode(p, v)
        dec = best(lambda: packed.decode(params, payload, v))
        print(f"| {rows} x {n} | {kind} | {v.size / enc / 1e6:.0f} | {v.size / dec / 1e6:.0f} |")


def best(f, reps=3):
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        out.append(time.perf_counter() - t)
    return min(out)


def model(big: bool):
    layers = [torch.nn.Linear(784, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 1024), torch.nn.ReLU(),
              torch.nn.Linear(1024, 10)] if big else [torch.nn.Linear(784, 100), torch.nn.ReLU(),
                                                        torch.nn.Linear(100, 10)]
    m = torch.nn.Sequential(*layers)
    permcodec.init.apply_(m, seed=0)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from helpers import trained_like
    return trained_like(m)


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def models(device):
    from safetensors.torch import load_file, save_file
    on_gpu = torch.device(device).type == "cuda"
    m = model(big=on_gpu)
    weights = sum(p.numel() for p in m.parameters())
    with tempfile.TemporaryDirectory() as d:
        st = os.path.join(d, "m.safetensors")
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, st)
        sync(device)
        t_st = best(lambda: (load_file(st, device=str(device)), sync(device)))
        print(f"model: {weights} weights; device {device}; safetensors fp32 file -> {device}: "
              f"{t_st * 1e3:.2f} ms ({os.path.getsize(st)} bytes)")
        print("| codec | backend | file bytes | file -> device ms | rebuild G weights/s (permuted tensors) |")
        print("|---|---|---|---|---|")
        for codec in ("packed", "plain", "auto"):
            path = os.path.join(d, f"m.{codec}.perm")
            permcodec.save(m, path, codec=codec)
            for backend in (("torch", "triton") if on_gpu else ("torch",)):
                if backend == "triton" and not on_gpu:
                    continue
                old = gpu.backend_for
                gpu.backend_for = lambda dev, b="auto", _b=backend: _b
                try:
                    f = permcodec.open(path)
                    ents = [e for e in f.entries.values() if e["kind"] == "permuted"]
                    dev_ok = all(gpu.supports(e) for e in ents)
                    t_load = best(lambda: (permcodec.load(path, device=device), sync(device)))
                    n_perm = sum(int(np.prod(e["shape"])) for e in ents)
                    if dev_ok:
                        t_dec = best(lambda: ([gpu.decode(e, f.container.section(e["section"]), device, backend=backend)
                                               for e in ents], sync(device)))
                        rate = f"{n_perm / t_dec / 1e9:.4f}"
                    else:
                        rate = "CPU decode + copy (no device decoder)"
                    f.close()
                finally:
                    gpu.backend_for = old
                print(f"| {codec} | {backend} | {os.path.getsize(path)} | {t_load * 1e3:.2f} | {rate} |")
    if not on_gpu:
        print("\nNo CUDA device: the figures above are gpu.py's torch path on CPU tensors. GPU figures "
              "(packed >= 50 G weights/s target, file -> GPU vs safetensors) are UNMEASURED.")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", action="store_true")
    ap.add_argument("--cpu", action="store_true")
    a = ap.parse_args()
    if a.sizes:
        return sizes()
    if a.cpu:
        return cpu_speed()
    models("cuda" if torch.cuda.is_available() else "cpu")


if __name__ == "__main__":
    main()
