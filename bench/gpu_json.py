"""The device check's figures as bench/out/gpu.json (issue 16's shape), one section at a time.

    python3 bench/gpu_json.py --out bench/out/gpu.json            # on a GPU (CUDA, Triton)
    TRITON_INTERPRET=1 python3 bench/gpu_json.py --tiny --out ... # CPU dry run: tiny sizes

bit_equal compares the device result with the CPU decoder's, bytes for bytes; gws is weights
rebuilt in device memory per second (best of --reps); file_to_gpu_vs_safetensors is permcodec's
file -> device time over safetensors fp32's, same run. The file is rewritten after every section,
so a section that fails or times out leaves the others and an "error" naming it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import traceback

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import permcodec
from permcodec import gpu, tensors as T
from permcodec.api import to_torch
from permcodec.rules import make


def sync(dev):
    if torch.device(dev).type == "cuda":
        torch.cuda.synchronize()


from bench_gpu import best  # noqa: E402  (this folder is on sys.path when run as a script)


def entry(codec, rows, n, dtype="float32", seed=0, **options):
    rule = make("he_normal", (rows, n), seed=seed, name="w")
    v = rule.values((rows, n), dtype)
    rng = np.random.default_rng(seed)
    w = np.take_along_axis(v, np.argsort(rng.random((rows, n)), 1), 1)
    params, payload = T.encode_permuted(w, rule, dtype, "w", codec, **options)
    e = {"name": "w", "shape": [rows, n], "dtype": dtype, "kind": "permuted", "init": rule.to_dict(),
         "codec": params, "digest": T.digest(w)}
    return e, payload, w, rule


def codec_figures(codec, rows, n, dev, reps):
    if codec in ("packed", "plain"):
        e, payload, w, _ = entry(codec, rows, n)
        run = lambda: gpu.decode(e, payload, dev)
    elif codec == "uniform":
        from permcodec import _gpu_uniform as G
        e, payload, w, rule = entry(codec, rows, n, gpu=True)

        def run():
            v = gpu.generate(rule, rows * n, "float32", dev).view(rows, n)
            keys = v.view(torch.int32).to(torch.int64)
            return torch.gather(v, 1, G.decode(e["codec"], payload, keys))
    else:  # model: decoded on the CPU, then copied (no device decoder)
        e, payload, w, rule = entry(codec, rows, n)
        v = rule.values((rows, n), "float32")
        from permcodec.codecs import model
        run = lambda: torch.from_numpy(np.take_along_axis(v, model.decode(e["codec"], payload, v), 1)).to(dev)
    out = run()
    sync(dev)
    equal = out.cpu().numpy().tobytes() == to_torch(w, "float32").numpy().tobytes()
    t = best(lambda: (run(), sync(dev)), reps)
    return {"bit_equal": bool(equal), "gws": round(rows * n / t / 1e9, 4), "weights": rows * n,
            "params": {k: v for k, v in e["codec"].items() if isinstance(v, (int, str))}, "bytes": len(payload)}


def file_ratio(m, dev, reps):
    from safetensors.torch import load_file, save_file
    with tempfile.TemporaryDirectory() as d:
        st, pc = os.path.join(d, "m.safetensors"), os.path.join(d, "m.perm")
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, st)
        permcodec.save(m, pc)
        t_st = best(lambda: (load_file(st, device=str(dev)), sync(dev)), reps)
        t_pc = best(lambda: (permcodec.load(pc, device=dev), sync(dev)), reps)
    return round(t_pc / t_st, 4)


def synthetic(weights):
    """A model of about ``weights`` weights: square Linear layers of 4096 (or smaller) inputs."""
    width = 4096 if weights >= 4096 * 4096 else max(8, int(weights ** 0.5))
    layers = [torch.nn.Linear(width, width, bias=False) for _ in range(max(1, weights // (width * width)))]
    m = torch.nn.Sequential(*layers)
    permcodec.init.apply_(m, seed=0)
    return m


def versions():
    import importlib.metadata as md
    out = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "permcodec": getattr(permcodec, "__version__", None)}
    for p in ("triton", "numpy", "safetensors"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = None
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/out/gpu.json")
    ap.add_argument("--tiny", action="store_true", help="CPU dry run sizes")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", default="", help="comma list of sections (codec names, conv13, synthetic_1b)")
    a = ap.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    res = {"device": torch.cuda.get_device_name(0) if dev == "cuda" else f"cpu ({platform.machine()}, dry run)",
           "versions": versions(), "codecs": {}, "file_to_gpu_vs_safetensors": {}, "errors": {}}
    if os.path.exists(a.out):          # sections of an earlier step of the same run are kept
        try:
            old = json.load(open(a.out))
            for k in ("codecs", "file_to_gpu_vs_safetensors", "errors"):
                res[k].update(old.get(k, {}))
        except (OSError, ValueError):
            pass
    sizes = {"packed": (4096, 4096), "plain": (4096, 4096), "uniform": (1000, 1000), "model": (1000, 1000)}
    if a.tiny:
        sizes = {"packed": (8, 16), "plain": (8, 16), "uniform": (4, 12), "model": (8, 16)}
    jobs = [(c, lambda c=c: codec_figures(c, *sizes[c], dev, a.reps)) for c in sizes]
    from trainers.models import build
    jobs += [("conv13", lambda: file_ratio(build("conv13") if not a.tiny else synthetic(64), dev, a.reps)),
             ("synthetic_1b", lambda: file_ratio(synthetic(10 ** 9 if not a.tiny else 256), dev, 1))]
    only = set(filter(None, a.only.split(",")))
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    for name, job in jobs:
        if only and name not in only:
            continue
        where = res["codecs"] if name in sizes else res["file_to_gpu_vs_safetensors"]
        try:
            where[name] = job()
            res["errors"].pop(name, None)
        except Exception as ex:  # recorded, and the next section still runs
            res["errors"][name] = f"{type(ex).__name__}: {ex}"
            traceback.print_exc()
        print(name, json.dumps(where.get(name)), flush=True)
        text = json.dumps(res, indent=1, default=repr)
        with open(a.out, "w") as fh:
            fh.write(text)
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
