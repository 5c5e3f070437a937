"""permcodec's ``uniform`` codec against a general-purpose ANS library on the same permutations.

    python bench/ans_peer.py [--reps 3]

The peer is constriction (Rust ANS; ``AnsCoder`` with a ``Uniform`` model and one radix per
symbol): it is given each row's Fisher–Yates digits (radices n, n-1, ..., 2), which is all the
entropy coding a uniform permutation needs. It is timed on digits -> bits only; ``uniform`` is
timed on the whole job: permutation -> bits, and bits -> the rearranged values (class
bookkeeping, the gather and the permutation check included). Sizes are the payload bits against
the information limit log2(n!) per row. Both run on one core here: these tensors are below
uniform's 2**22-bit threshold for coding segments in parallel.

Why permcodec does not code through constriction: the file format must be specified bit for bit
(formats/codecs/uniform.md) so that a second implementation can read it, and decoding must fuse
with the permutation's bookkeeping and the gather in compiled code; a per-symbol radix array
(one int32 per weight in each direction) and a library-defined stream layout give neither.
This script measures what that costs: the sizes are the same, and the library codes the digits
alone 2-3x faster than ``uniform`` does the whole job (figures in the README).
"""
from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from permcodec import perm as P
from permcodec.codecs import uniform as U

CASES = [(1000, 100), (100, 784), (64, 4608), (16, 50000)]
QUICK = [(20, 100), (4, 784)]


def best(reps, fn):
    t = math.inf
    for _ in range(reps):
        s = time.perf_counter()
        out = fn()
        t = min(t, time.perf_counter() - s)
    return t, out


def case(rows, n, reps, rng):
    sizes = np.arange(n, 1, -1, dtype=np.int64)                  # radices of digits 0 .. n-2
    digits = (rng.random((rows, n - 1)) * sizes).astype(np.int64)
    perm = np.tile(np.arange(n, dtype=np.int64), (rows, 1))      # Fisher–Yates from the digits
    idx = np.arange(rows)
    for t in range(n - 1):
        j = n - 1 - t
        d = digits[:, t]
        a, b = perm[idx, d].copy(), perm[idx, j].copy()
        perm[idx, d], perm[idx, j] = b, a
    v = rng.standard_normal((rows, n)).astype(np.float32)
    p = P.find(v, P.apply(v, perm))
    limit = rows * math.lgamma(n + 1) / math.log(2)
    row = {"rows": rows, "n": n, "limit_bits": limit}

    te, (params, payload) = best(reps, lambda: U.encode(p, v))
    td, w = best(reps, lambda: U.decode_values(params, payload, v))
    assert np.array_equal(w.view(np.uint32), P.apply(v, p).view(np.uint32))
    row["uniform"] = {"bits": len(payload) * 8, "enc_s": te, "dec_s": td}
    try:
        import constriction
    except ImportError:
        row["constriction"] = None
        return row
    flat, radix = digits.ravel().astype(np.int32), np.tile(sizes, rows).astype(np.int32)
    model = constriction.stream.model.Uniform()

    def enc():
        c = constriction.stream.stack.AnsCoder()
        c.encode_reverse(flat, model, radix)
        return c.get_compressed()

    te, comp = best(reps, enc)
    td, back = best(reps, lambda: constriction.stream.stack.AnsCoder(comp).decode(model, radix))
    assert np.array_equal(back, flat)
    row["constriction"] = {"bits": int(comp.size) * 32, "enc_s": te, "dec_s": td}
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="two small cases, one repetition (smoke test)")
    args = ap.parse_args(argv)
    if args.quick:
        args.reps = 1
    rng = np.random.default_rng(0)
    print(f"`python bench/ans_peer.py --reps {args.reps}`; over limit = payload / log2(n!) - 1; "
          "M/s = weights per second, best of reps\n")
    print("| rows × n | uniform over limit | constriction over limit | uniform enc / dec M/s "
          "| constriction enc / dec M/s (digits only) |")
    print("|---|---:|---:|---:|---:|")
    for rows, n in QUICK if args.quick else CASES:
        r = case(rows, n, args.reps, rng)
        w = rows * n
        u, c = r["uniform"], r["constriction"]
        cells = [f"{rows} × {n}", f"{u['bits'] / r['limit_bits'] - 1:+.4%}"]
        cells.append(f"{c['bits'] / r['limit_bits'] - 1:+.4%}" if c else "not installed")
        cells.append(f"{w / u['enc_s'] / 1e6:.0f} / {w / u['dec_s'] / 1e6:.0f}")
        cells.append(f"{w / c['enc_s'] / 1e6:.0f} / {w / c['dec_s'] / 1e6:.0f}" if c else "—")
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
