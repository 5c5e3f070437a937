"""DCP save of a row-sharded Conv13 with 2 gloo ranks: PermcodecWriter against DCP's FileSystemWriter.

    python bench/bench_dcp.py --reps 1                 # Conv13, codec auto, one save of each
    python bench/bench_dcp.py --reps 3 --codec packed --dir /tmp/permcodec-dcp

Each rank builds Conv13 with seeded rules, rearranges every weight vector at random (a LaPerm
state, the worst case for every codec), shards it by rows with FSDP2 and saves the model's state
dict with each writer in turn, in the same run: bytes on disk and wall time (rank 0, between two
barriers; the best of --reps).
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

WORLD = 2


def _model():
    import permcodec
    from trainers.models import build
    torch.manual_seed(0)
    model = build("conv13")
    permcodec.init.apply_(model, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name in permcodec.init.rules_of(model):
            rows = model.get_parameter(name).reshape(model.get_parameter(name).shape[0], -1)
            rows.copy_(rows.gather(1, torch.argsort(torch.rand(rows.shape, generator=g), dim=1)))
    return model


def _bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def _rank(rank, port, args, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        from permcodec.dcp import PermcodecWriter, rules_for
        from trainers.sharded import shard_rows
        model = _model()
        rules = rules_for(model)
        shard_rows(model)
        state = model.state_dict()
        writers = {"PermcodecWriter": lambda d: PermcodecWriter(d, rules=rules, codec=args.codec, overwrite=True),
                   "FileSystemWriter": lambda d: dcp.FileSystemWriter(d)}
        rows = {}
        for label, make in writers.items():
            folder = os.path.join(args.dir, label)
            best = float("inf")
            for _ in range(args.reps):
                dist.barrier()
                t0 = time.perf_counter()
                dcp.save(state, storage_writer=make(folder))
                dist.barrier()
                best = min(best, time.perf_counter() - t0)
            rows[label] = (_bytes(folder), best)
        if rank == 0:
            torch.save(rows, out)
    finally:
        dist.destroy_process_group()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--codec", default="auto")
    ap.add_argument("--dir", default=None, help="where the checkpoints go (default: a temporary folder)")
    args = ap.parse_args(argv)
    keep = args.dir is not None
    args.dir = args.dir or tempfile.mkdtemp(prefix="permcodec-dcp-")
    out = os.path.join(args.dir, "rows.pt")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        mp.spawn(_rank, args=(port, args, out), nprocs=WORLD, join=True)
        rows = torch.load(out, weights_only=True)
    finally:
        if not keep:
            shutil.rmtree(args.dir, ignore_errors=True)
    base = rows["FileSystemWriter"][0]
    print(f"| writer (Conv13, {WORLD} ranks, codec {args.codec}) | bytes on disk | vs FileSystemWriter "
          f"| save s (best of {args.reps}) |")
    print("|---|---:|---:|---:|")
    for label, (size, secs) in rows.items():
        print(f"| {label} | {size:,} | {size / base:.3f} | {secs:.2f} |")
    return rows


if __name__ == "__main__":
    main()
