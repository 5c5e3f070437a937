"""Write the golden files of the ``uniform`` and ``model`` codecs and codec_digests.json.

    python formats/vectors/make_codec_vectors.py      # writes files that do not exist yet

Inputs come from make_vectors.py's builders (portable Philox-derived tensors), saved with one
codec forced; ``near`` is a stand-in for a trained net (every weight vector close to its initial
order), where ``model`` beats the information limit. Golden files never change once released;
tests/test_codec_vectors.py decodes them and checks that saving again gives the same bytes.
"""
from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import torch

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

import make_vectors as mv  # noqa: E402
import permcodec  # noqa: E402
from permcodec import philox  # noqa: E402
from permcodec.init import values_tensor  # noqa: E402
from permcodec.perm import as_rows  # noqa: E402
from permcodec.rules import make, stream_of  # noqa: E402


def near():
    """he_uniform MLP whose rows are their sorted initial values placed by (initial rank +
    Philox noise of about 3% of n): a near-identity permutation like LaPerm's."""
    s, r = {}, {}
    for name, shape in (("fc1.weight", (24, 96)), ("fc2.weight", (10, 24))):
        rule = make("he_uniform", shape, seed=mv.SEED, name=name)
        r[name] = rule
        v = values_tensor(rule, shape, torch.float32)
        rows, n = as_rows(shape)
        words = philox.blocks(mv.SEED, stream_of("near:" + name), 0, 0, (rows * n + 3) // 4).reshape(-1)[:rows * n]
        noise = (words.astype(np.int64) % (2 * (n // 16) + 1)) - n // 16
        base = np.argsort(np.argsort(v.numpy().reshape(rows, n), 1, kind="stable"), 1, kind="stable")
        target = np.argsort(np.argsort(base * 4 + noise.reshape(rows, n) * 4 + np.arange(n) % 4, 1,
                                       kind="stable"), 1, kind="stable")
        srt = np.sort(v.numpy().reshape(rows, n), 1)
        s[name] = torch.from_numpy(np.take_along_axis(srt, target, 1).reshape(shape).copy())
    return s, r, {"description": "near-identity rearrangement of a he_uniform MLP 96-24-10"}


BUILDERS = {"tiny": mv.tiny, "dense": mv.dense, "pruned90": mv.BUILDERS["pruned90"],
            "weight_agnostic": mv.weight_agnostic, "mixed": mv.mixed, "near": near}
FILES = {f"codec_{codec}_{name}.perm": (codec, name) for codec in ("uniform", "model") for name in BUILDERS}


def write(fname, path) -> int:
    codec, name = FILES[fname]
    state, rules, meta = BUILDERS[name]()
    return permcodec.save(state, path, rules=rules, codec=codec, metadata=meta)


def main():
    index = HERE / "codec_digests.json"
    known = json.loads(index.read_text()) if index.exists() else {}
    for fname in FILES:
        path = HERE / fname
        if path.exists():
            print(f"{fname}: exists, left as it is (golden files never change)")
            continue
        size = write(fname, path)
        known[fname] = mv.digests(path)
        print(f"{fname}: {size} bytes")
    index.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
