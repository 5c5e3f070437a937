"""The ``model`` encoder's choices: which columns are frozen, which lags to use.

These only pick the header parameters (they change the size, never whether a file decodes):
the frozen set is a greedy clique of pairwise-compatible columns (compiled: csrc/model.cpp), the
lags the column shifts whose displacements correlate best within rows (numpy).
"""
from __future__ import annotations

import numpy as np

from .. import _core

EXACT_WORDS = 1 << 28     # frozen search: all rows while rows * n * ceil(n/64) stays below this,
SAMPLE_WORDS = 1 << 26    # otherwise pairs tested on evenly spaced rows, then repaired on all rows


def compat_bits(keys: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """ok[p] bit q (uint64 words): columns p and q keep their order in every row."""
    return _core.model_compat_bits(np.ascontiguousarray(keys), False, np.ascontiguousarray(perm, np.int64))


def clique_bits(ok: np.ndarray, n: int) -> np.ndarray:
    """Greedy clique of compat_bits' sets, columns by decreasing degree (stable)."""
    return _core.model_clique_bits(ok, n)


def find_frozen(keys: np.ndarray, perm: np.ndarray) -> np.ndarray | None:
    """A set of columns whose weights keep their relative order in every row (greedy clique of
    the pairwise-compatible columns), or None where it would be too slow or too small. Above
    EXACT_WORDS the compatibility is measured on a deterministic sample of rows and the clique is
    then repaired against every row (O(rows * n))."""
    rows, n = keys.shape
    if n < 8 or n > 4096:
        return None
    per_row = n * ((n + 63) >> 6)
    if rows * per_row <= EXACT_WORDS:
        chosen = clique_bits(compat_bits(keys, perm), n)
    else:
        pick = np.unique(np.linspace(0, rows - 1, max(1, min(rows, SAMPLE_WORDS // per_row))).astype(np.int64))
        chosen = clique_bits(compat_bits(keys[pick], perm[pick]), n)
        _core.model_repair(np.ascontiguousarray(keys), False, np.ascontiguousarray(perm, np.int64), chosen)
    return chosen if chosen.sum() >= 4 else None


def find_lags(keys: np.ndarray, perm: np.ndarray, most: int = 2, span: int = 128) -> list:
    """Up to ``most`` column lags whose displacements correlate best (> 0.1) within rows (measured
    on at most 256 evenly spaced rows holding about 2**17 weights)."""
    rows, n = keys.shape
    if n < 3:
        return []
    pick = np.unique(np.linspace(0, rows - 1, min(rows, 256, -(-(1 << 17) // n))).astype(np.int64))
    k = keys[pick]
    rank = np.argsort(np.argsort(k, 1, kind="stable"), 1, kind="stable")
    d = (np.take_along_axis(rank, perm[pick], 1) - rank).astype(np.float64)
    d -= d.mean()
    var = (d * d).mean()
    if var == 0:
        return []
    corr = [((d[:, :-s] * d[:, s:]).mean() / var, s) for s in range(1, min(n - 1, span) + 1)]
    corr.sort(reverse=True)
    return sorted(s for c, s in corr[:most] if c > 0.1)
