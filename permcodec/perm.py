"""Canonical permutations: find them in trained weights, check them, apply them.

A permuted tensor is held as ``rows x n`` (row = fan-in of one output unit). Row ``r`` of the
trained tensor is ``w[r] = v[r][perm[r]]``: a gather from the initial values ``v``. Where ``v``
has equal values (pruned zeros, a shared constant, ties) many ``perm`` give the same ``w``; the
canonical one sends equal values' positions, in increasing order, to their sources in increasing
order. Equality is equality of bit patterns.
"""
from __future__ import annotations

import numpy as np

from .dtypes import order_keys
from .errors import FormatError, NotAPermutationError


def as_rows(shape) -> tuple[int, int]:
    """(rows, n) of a tensor of ``shape``: shape[0] rows of prod(shape[1:]); 1-D is one row."""
    if len(shape) == 1:
        return 1, int(shape[0])
    n = 1
    for d in shape[1:]:
        n *= int(d)
    return int(shape[0]), n


def find(v: np.ndarray, w: np.ndarray, name: str = "tensor", backend: str = "auto") -> np.ndarray:
    """The canonical ``perm`` (int64, rows x n) with ``w == take_along_axis(v, perm, 1)``.

    Raises NotAPermutationError naming the first row whose values differ, and how many.
    ``backend``: "auto" (the compiled core) or "reference" (numpy); never changes the result.
    """
    if backend not in ("auto", "reference"):
        raise ValueError(f"backend must be 'auto' or 'reference', not {backend!r}")
    if backend == "reference" or v.shape != w.shape or v.dtype != w.dtype or v.ndim != 2:
        return find_reference(v, w, name)
    from ._native import core
    perm, ok = core().find(_bits(v), _bits(w))
    if not ok.all():
        find_reference(v, w, name)  # raises the reference's message
        raise AssertionError("compiled perm.find and the reference disagree")  # pragma: no cover
    return perm


def _bits(a: np.ndarray) -> np.ndarray:
    """The values' bit patterns as unsigned integers of their width, C-contiguous (a view if possible)."""
    return np.ascontiguousarray(a).view(np.dtype(f"<u{a.dtype.itemsize}"))


def find_reference(v: np.ndarray, w: np.ndarray, name: str = "tensor") -> np.ndarray:
    """:func:`find` with two stable sorts per row (numpy only); the definition the fast path follows."""
    kv = order_keys(v)
    kw = order_keys(w)
    sv = np.argsort(kv, axis=1, kind="stable")
    sw = np.argsort(kw, axis=1, kind="stable")
    sorted_v = np.take_along_axis(kv, sv, 1)
    sorted_w = np.take_along_axis(kw, sw, 1)
    bad = np.flatnonzero((sorted_v != sorted_w).any(axis=1))
    if bad.size:
        r = int(bad[0])
        differ = _multiset_difference(sorted_v[r], sorted_w[r])
        raise NotAPermutationError(
            f"{name!r} row {r} is not a rearrangement of its initial values: {differ} of {v.shape[1]} values "
            f"differ ({bad.size} of {v.shape[0]} rows affected). Was the model saved between two syncs "
            f"(call LaPerm.sync() first), or initialized with another rule or seed?")
    perm = np.empty_like(sv)
    np.put_along_axis(perm, sw, sv, 1)
    return perm


def _multiset_difference(a: np.ndarray, b: np.ndarray) -> int:
    """How many elements of sorted ``b`` have no partner in sorted ``a``."""
    ua, ca = np.unique(a, return_counts=True)
    ub, cb = np.unique(b, return_counts=True)
    common, ia, ib = np.intersect1d(ua, ub, assume_unique=True, return_indices=True)
    return int(cb.sum() - np.minimum(ca[ia], cb[ib]).sum())


def check(perm: np.ndarray, what: str = "permutation") -> np.ndarray:
    """Raise FormatError unless every row of ``perm`` is a permutation of 0..n-1."""
    rows, n = perm.shape
    if perm.size and (perm.min() < 0 or perm.max() >= n):
        raise FormatError(f"decoded {what} has an index outside [0, {n}): corrupt payload")
    flat = (perm + (np.arange(rows, dtype=np.int64)[:, None] * n)).ravel()
    seen = np.zeros(rows * n, dtype=bool)
    seen[flat] = True
    if not seen.all():
        raise FormatError(f"decoded {what} repeats an index: corrupt payload")
    return perm


def check_apply(v: np.ndarray, perm: np.ndarray, what: str = "permutation") -> np.ndarray:
    """:func:`check` then :func:`apply`, in one compiled row-parallel pass (same result and error)."""
    from ._native import core
    if v.ndim != 2 or perm.ndim != 2 or v.shape != perm.shape or not perm.size:
        return apply(v, check(perm, what))
    out = core().check_apply(_bits(v), np.ascontiguousarray(perm, dtype=np.int64))
    if out is None:
        check(perm, what)  # raises the reference's message
        raise AssertionError("compiled perm.check_apply and the reference disagree")  # pragma: no cover
    return out.view(v.dtype)


def apply(v: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """``w = v[perm]`` row by row."""
    return np.take_along_axis(v, perm, 1)


def tied_rows(v: np.ndarray) -> np.ndarray:
    """Per row of ``v`` (rows x n): True where some bit pattern occurs more than once (compiled)."""
    from ._native import core
    return core().tied_rows(_bits(v))


def tied_rows_reference(v: np.ndarray) -> np.ndarray:
    """:func:`tied_rows` by sorting (numpy only)."""
    k = np.sort(_bits(v), axis=1)
    return (k[:, 1:] == k[:, :-1]).any(axis=1)


def info_bits(v: np.ndarray) -> float:
    """The information limit, in bits, of all rows of ``v``: sum log2(n! / prod m_v!)."""
    from math import lgamma, log
    k = np.sort(order_keys(v), axis=1)
    total = 0.0
    n = v.shape[1]
    for row in k:
        change = np.flatnonzero(np.diff(row)) + 1
        counts = np.diff(np.concatenate(([0], change, [n])))
        total += lgamma(n + 1) - sum(lgamma(int(c) + 1) for c in counts[counts > 1])
    return total / log(2)
