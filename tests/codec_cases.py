"""Shared inputs for the codec tests: permuted rows with ties, pruning, constants; trained fixtures."""
import os

import numpy as np

from permcodec import perm as P
from permcodec import tensors as T
from permcodec.api import File

DATA = os.path.join(os.path.dirname(__file__), "data")
TRAINED = [os.path.join(DATA, f) for f in ("laperm_mlp_k20.perm", "laperm_mlp_k200_prune50.perm")]


def values(rng, rows, n, dtype="float32", zeros=0.0, const=False):
    """Initial values (rows, n): normal values in dtype (bfloat16 as uint16 patterns), a fraction
    ``zeros`` set to 0, or every value the same constant."""
    v = rng.standard_normal((rows, n)).astype(np.float32)
    if dtype == "bfloat16":
        v = (v.view(np.uint32) >> 16).astype(np.uint16)
        zero = np.uint16(0)
    else:
        v = v.astype(dtype)
        zero = v.dtype.type(0)
    if const:
        v[:] = v.flat[0] if v.size else zero
    if zeros:
        v[rng.random((rows, n)) < zeros] = zero
    return v


def shuffled(rng, v, near=None):
    """A canonical perm rearranging v: uniform at random, or near the initial order (rank noise
    with standard deviation ``near`` * n)."""
    rows, n = v.shape
    if near is None:
        w = np.take_along_axis(v, np.argsort(rng.random((rows, n)), 1), 1)
    else:
        rank = np.argsort(np.argsort(v, 1, kind="stable"), 1) + rng.normal(0, near * n + 1e-9, (rows, n))
        w = np.take_along_axis(np.sort(v, 1), np.argsort(np.argsort(rank, 1), 1), 1)
    return P.find(v, w)


def trained_layers(path):
    """[(name, initial values (rows, n), canonical perm)] of every permuted tensor of a .perm file."""
    out = []
    with File(path) as f:
        for name, e in f.entries.items():
            if e.get("kind") == "permuted":
                rows, n = P.as_rows(e["shape"])
                v = T.initial_rows(e)
                out.append((name, v, P.find(v, f.get_numpy(name).reshape(rows, n), name)))
    return out
