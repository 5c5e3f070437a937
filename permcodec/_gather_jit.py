"""Compiled check-and-gather (numba): ``perm.check`` then ``perm.apply`` in one parallel pass.

For each row: every index must lie in [0, n) and occur once; the output row is the gather
``v[r][perm[r]]``. Mirrors perm.check + perm.apply (the reference), tested equal to them.
"""
from __future__ import annotations

import numpy as np

try:
    import numba as _nb
except ImportError:  # pragma: no cover
    _nb = None


def available() -> bool:
    return _nb is not None and not _nb.config.DISABLE_JIT


if _nb is not None:
    @_nb.njit(cache=True, parallel=True)
    def _check_apply(v, perm, out):
        rows, n = perm.shape
        bad = np.zeros(rows, np.bool_)
        for r in _nb.prange(rows):
            seen = np.zeros(n, np.bool_)
            for i in range(n):
                j = perm[r, i]
                if j < 0 or j >= n or seen[j]:
                    bad[r] = True
                    break
                seen[j] = True
                out[r, i] = v[r, j]
        return bad.any()


def check_apply(v: np.ndarray, perm: np.ndarray):
    """The gathered rows, or None if some row of ``perm`` is not a permutation."""
    bits = np.ascontiguousarray(v).view(np.dtype(f"u{v.dtype.itemsize}"))  # a gather moves bits only
    out = np.empty(perm.shape, dtype=bits.dtype)
    return None if _check_apply(bits, np.ascontiguousarray(perm), out) else out.view(v.dtype)
