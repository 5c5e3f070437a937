"""Compiled ``perm.find`` (numba): the canonical permutation by hashing, no sorting.

Per row: the initial values' bit patterns go into an open-addressing hash table that numbers
the distinct values (classes) in order of first occurrence; a counting sort then lists each
class's source positions in increasing order. Each trained value, scanned in increasing
position, takes the next unused source of its class. That is exactly the canonical rule of
perm.py (equal values' positions in increasing order map to their sources in increasing order),
in O(n) per row instead of two stable sorts. A value with no class, or one class used more often
than it occurs, marks the row bad; perm.find then reports it with the reference's message.
Tested equal to ``perm.find_reference``.

``check_apply`` is the decoder's side: perm.check then perm.apply (the reference) in one parallel
pass over rows, tested equal to them. ``put_row`` is the same for one row, for the fast codecs'
fused decoders (``decode_values``).
"""
from __future__ import annotations

import numpy as np

try:
    import numba as _nb
except ImportError:  # pragma: no cover
    _nb = None


def available() -> bool:
    return _nb is not None and not _nb.config.DISABLE_JIT


def put_row(prow, src, r, out, stamp):
    """out[r, j] = src[r, prow[j]] for every j, checking on the way that ``prow`` is a
    permutation of range(n); False if it is not. ``prow`` is a decoder's scratch row (in
    cache), so this fused check-and-gather costs one pass instead of a round trip of an int64
    permutation through memory. ``stamp`` (n entries, never equal to r before this call)
    marks the sources taken."""
    n = prow.shape[0]
    for j in range(n):
        s = prow[j]
        if s < 0 or s >= n or stamp[s] == r:
            return False
        stamp[s] = r
        out[r, j] = src[r, s]
    return True


def read_only(a: np.ndarray) -> np.ndarray:
    """A read-only view: numba compiles read-only and writable arrays separately, so the sources
    handed to the decoders are always read-only (one compile per dtype whatever the caller has)."""
    v = a.view()
    v.flags.writeable = False
    return v


def index_source(bits: np.ndarray) -> np.ndarray:
    """Row-wise indices 0..n-1 in the dtype of ``bits`` (the values' bit patterns) where they fit,
    so that decoding the permutation itself runs the very specialization that gathers values
    (one compile per dtype, not two); the caller widens the result to int64."""
    rows, n = bits.shape
    dt = bits.dtype if n <= np.iinfo(bits.dtype).max + 1 else np.dtype(np.uint32)
    return read_only(np.ascontiguousarray(np.broadcast_to(np.arange(n, dtype=dt), (rows, n))))


if _nb is not None:
    put_row = _nb.njit(cache=True, inline="always")(put_row)
    HASH = np.uint64(0x9E3779B97F4A7C15)

    @_nb.njit(cache=True)
    def _row(kv, kw, out, tkeys, tids, cls, cnt, base, src, logsize):
        """Canonical permutation of one row into ``out``; False if kw is not a rearrangement.
        The table has 2**logsize >= 2n slots."""
        n = kv.shape[0]
        bits = np.uint64(64 - logsize)
        mask = (1 << logsize) - 1
        tids[:] = -1
        ncls = 0
        for i in range(n):
            k = np.uint64(kv[i])
            h = np.int64((k * HASH) >> bits)
            while True:
                c = tids[h]
                if c < 0:
                    tids[h] = ncls
                    tkeys[h] = k
                    cls[i] = ncls
                    cnt[ncls] = 1
                    ncls += 1
                    break
                if tkeys[h] == k:
                    cls[i] = c
                    cnt[c] += 1
                    break
                h = (h + 1) & mask
        if ncls == n:        # all distinct: class c is source c
            for c in range(n):
                cnt[c] = 0
        else:
            s = 0
            for c in range(ncls):
                base[c] = s
                s += cnt[c]
                cnt[c] = 0
            for i in range(n):
                c = cls[i]
                src[base[c] + cnt[c]] = i
                cnt[c] += 1
            for i in range(n):
                c = cls[i]
                cnt[c] = 0
            for c in range(ncls):   # cnt now counts uses; remember the class sizes in cls
                cls[c] = (base[c + 1] if c + 1 < ncls else n) - base[c]
        for j in range(n):
            k = np.uint64(kw[j])
            h = np.int64((k * HASH) >> bits)
            while True:
                c = tids[h]
                if c < 0:
                    return False
                if tkeys[h] == k:
                    break
                h = (h + 1) & mask
            if ncls == n:
                if cnt[c]:
                    return False
                cnt[c] = 1
                out[j] = c
            else:
                if cnt[c] >= cls[c]:
                    return False
                out[j] = src[base[c] + cnt[c]]
                cnt[c] += 1
        return True

    @_nb.njit(cache=True)
    def _rows(kv, kw, out, r0, r1, ok):
        n = kv.shape[1]
        logsize = 1
        while (1 << logsize) < 2 * n:
            logsize += 1
        size = 1 << logsize
        tkeys = np.empty(size, np.uint64)
        tids = np.empty(size, np.int64)
        cls = np.empty(n, np.int64)
        cnt = np.empty(n, np.int64)
        base = np.empty(n, np.int64)
        src = np.empty(n, np.int64)
        for r in range(r0, r1):
            ok[r] = _row(kv[r], kw[r], out[r], tkeys, tids, cls, cnt, base, src, logsize)

    @_nb.njit(cache=True, parallel=True)
    def _all(kv, kw, out, ok, chunks):
        rows = kv.shape[0]
        for c in _nb.prange(chunks):
            _rows(kv, kw, out, c * rows // chunks, (c + 1) * rows // chunks, ok)

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


def find(kv: np.ndarray, kw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(perm int64 rows x n, ok bool per row) from bit-pattern keys of the initial and trained rows."""
    rows, n = kv.shape
    out = np.empty((rows, n), np.int64)
    ok = np.empty(rows, np.bool_)
    if rows and n:
        chunks = max(1, min(rows, rows * n // (1 << 15), 16 * _nb.get_num_threads()))
        if chunks == 1:
            _rows(kv, kw, out, 0, rows, ok)
        else:
            _all(kv, kw, out, ok, chunks)
    else:
        ok[:] = True
    return out, ok


def check_apply(v: np.ndarray, perm: np.ndarray):
    """The gathered rows, or None if some row of ``perm`` is not a permutation."""
    bits = np.ascontiguousarray(v).view(np.dtype(f"u{v.dtype.itemsize}"))  # a gather moves bits only
    out = np.empty(perm.shape, dtype=bits.dtype)
    return None if _check_apply(bits, np.ascontiguousarray(perm), out) else out.view(v.dtype)
