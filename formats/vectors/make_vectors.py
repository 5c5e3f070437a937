"""Write the format 1.0 golden files (formats/SPEC.md §14.7) and digests.json, and the sharded
save of SPEC §16 (sharded/, sharded_digests.json).

    python formats/vectors/make_vectors.py            # writes files that do not exist yet

Golden files never change once released: this script refuses to overwrite one. Every input is
derived from permcodec's own Philox generator (no numpy or torch random streams), so ``build(name)``
gives the same tensors on every machine, and tests/test_golden.py checks that saving them again
gives the same bytes as the file on disk.
"""
from __future__ import annotations

import hashlib
import json
import pathlib
import sys
from unittest import mock

import numpy as np
import torch

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

import permcodec  # noqa: E402
from permcodec import philox  # noqa: E402
from permcodec.init import values_tensor  # noqa: E402
from permcodec.perm import as_rows  # noqa: E402
from permcodec.rules import make, stream_of  # noqa: E402

SEED = 20261123


def shuffled(rule, shape, dtype=torch.float32, salt="train"):
    """``rule``'s initial values with every weight vector rearranged (a stand-in for training):
    row r is sorted by Philox words of (SEED, stream_of(salt + name)), a portable permutation."""
    v = values_tensor(rule, shape, dtype)
    rows, n = as_rows(shape)
    words = philox.blocks(SEED, stream_of(f"{salt}:{rule.stream}"), 0, 0, (rows * n + 3) // 4).reshape(-1)[:rows * n]
    order = torch.from_numpy(np.argsort(words.reshape(rows, n), axis=1, kind="stable"))
    return torch.gather(v.reshape(rows, n), 1, order).reshape(shape).clone()


def filler(name, shape, dtype=torch.float32, bound=0.1):
    """Deterministic 'trained' values for a raw float tensor."""
    r = make("uniform", shape, seed=SEED, name="raw:" + name, value=bound)
    return values_tensor(r, shape, dtype)


def permuted(state, rules, name, family, shape, dtype=torch.float32, **kw):
    r = make(family, shape, seed=SEED, name=name, **kw)
    rules[name] = r
    state[name] = shuffled(r, shape, dtype)


def dense():
    s, r = {}, {}
    permuted(s, r, "fc1.weight", "he_uniform", (32, 64))
    s["fc1.bias"] = filler("fc1.bias", (32,))
    permuted(s, r, "fc2.weight", "he_uniform", (10, 32))
    s["fc2.bias"] = filler("fc2.bias", (10,))
    return s, r, {"description": "dense he_uniform float32 MLP 64-32-10"}


def pruned(rate):
    def build():
        s, r = {}, {}
        permuted(s, r, "conv.weight", "he_uniform", (8, 4, 3, 3), prune=rate)
        s["conv.bias"] = filler("conv.bias", (8,))
        permuted(s, r, "fc.weight", "he_uniform", (16, 72), prune=rate)
        permuted(s, r, "out.weight", "glorot_uniform", (10, 16), prune=rate)
        return s, r, {"description": f"he_uniform float32, {rate:.0%} of weights pruned at init"}
    return build


def weight_agnostic():
    s, r = {}, {}
    for name, shape in (("fc1.weight", (24, 40)), ("fc2.weight", (6, 24))):
        permuted(s, r, name, "constant", shape, value=0.75, prune=0.4)
    return s, r, {"description": "weight-agnostic: one shared value 0.75, 40% pruned"}


def mixed():
    s, r = {}, {}
    permuted(s, r, "emb.weight", "glorot_uniform", (12, 16), torch.float64)
    permuted(s, r, "proj.weight", "lecun_uniform", (8, 12), torch.float16, prune=0.25)
    permuted(s, r, "head.weight", "he_normal", (6, 8), torch.bfloat16)
    permuted(s, r, "vec", "uniform", (20,), torch.float32, value=0.5)  # 1-D: one weight vector
    s["tied.weight"] = s["emb.weight"]  # one storage under two names: stored once, as an alias
    s["norm.weight"] = filler("norm.weight", (16,), torch.bfloat16, 1.0)
    s["steps"] = torch.tensor(12345, dtype=torch.int64)
    s["index"] = torch.arange(-50, 50, 3, dtype=torch.int32)
    s["mask"] = torch.arange(40) % 3 == 0
    s["bytes"] = torch.arange(256, dtype=torch.int64).to(torch.uint8)
    s["half"] = filler("half", (4, 4), torch.float16)
    s["empty"] = torch.zeros(0, 3)
    return s, r, {"description": "mixed dtypes: f64/f16/bf16/f32 permuted, raw int/bool/uint8/bf16/f16, "
                                  "an alias, an empty tensor",
                  "epoch": 3, "lr": 0.001}


def raw_only():
    s = {"weight": filler("weight", (16, 16)),
         "counts": torch.arange(0, 3000, 7, dtype=torch.int64),
         "small": torch.tensor([1, 2, 3], dtype=torch.int8),
         "scalar": torch.tensor(2.5, dtype=torch.float64),
         "nothing": torch.zeros(0, dtype=torch.float32)}
    return s, {}, {}


def normal():
    s, r = {}, {}
    permuted(s, r, "fc1.weight", "he_normal", (24, 48))
    permuted(s, r, "fc2.weight", "glorot_normal", (12, 24), torch.float64, prune=0.3)
    permuted(s, r, "fc3.weight", "normal", (4, 12), value=0.02)
    return s, r, {"description": "normal-distribution rules (AS241 quantile)"}


def tiny():
    s, r = {}, {}
    permuted(s, r, "w", "uniform", (4,), value=1.0)
    return s, r, {}


BUILDERS = {"tiny": tiny, "dense": dense, "pruned50": pruned(0.5), "pruned90": pruned(0.9),
            "weight_agnostic": weight_agnostic, "mixed": mixed, "raw_only": raw_only, "normal": normal}


def build(name):
    """(state dict, rules, metadata) of golden file ``name``."""
    return BUILDERS[name]()


def write(name, path) -> int:
    state, rules, meta = build(name)
    return permcodec.save(state, path, rules=rules, codec="plain", metadata=meta)


def digests(path) -> dict:
    out = {"sha256": hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest(), "tensors": {}}
    with permcodec.open(path) as f:
        for name in f.keys():
            arr = f.get_numpy(name, check_digest=True)
            out["tensors"][name] = hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()
    return out


SHARDED = HERE / "sharded" / "model.perm"
SAVE_ID = hashlib.sha256(b"permcodec golden sharded save").digest()[:16]


def write_sharded(path=SHARDED) -> int:
    """mixed() in shards of at most 1500 bytes (uniform codec): an index and four shards, an alias
    in its target's shard. A real save draws a random save id; this one is fixed so that saving
    again gives the same bytes."""
    from permcodec import shards
    state, rules, meta = mixed()
    with mock.patch.object(shards.os, "urandom", lambda n: SAVE_ID[:n]):
        return permcodec.save(state, path, rules=rules, codec="uniform", metadata=meta, max_shard_size=1500)


def sharded_digests(index_path) -> dict:
    index = json.loads(pathlib.Path(index_path).read_text())
    files = sorted(set(index["weight_map"].values()))
    out = {"sha256": hashlib.sha256(pathlib.Path(index_path).read_bytes()).hexdigest(),
           "shards": {n: hashlib.sha256((pathlib.Path(index_path).parent / n).read_bytes()).hexdigest() for n in files},
           "tensors": {}}
    state = permcodec.load(index_path)
    for name, t in state.items():
        out["tensors"][name] = hashlib.sha256(np.ascontiguousarray(permcodec.api.to_numpy(t)[0]).tobytes()).hexdigest()
    return out


def main():
    index = HERE / "digests.json"
    known = json.loads(index.read_text()) if index.exists() else {}
    for name in BUILDERS:
        path = HERE / f"{name}.perm"
        if path.exists():
            print(f"{path.name}: exists, left as it is (golden files never change)")
            continue
        size = write(name, path)
        known[path.name] = digests(path)
        print(f"{path.name}: {size} bytes")
    index.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n")
    sharded = pathlib.Path(str(SHARDED) + ".index.json")
    if sharded.exists():
        print("sharded/: exists, left as it is (golden files never change)")
        return
    SHARDED.parent.mkdir(exist_ok=True)
    size = write_sharded()
    (HERE / "sharded_digests.json").write_text(json.dumps({sharded.name: sharded_digests(sharded)}, indent=1,
                                                          sort_keys=True) + "\n")
    print(f"sharded/: {size} bytes")


if __name__ == "__main__":
    main()
