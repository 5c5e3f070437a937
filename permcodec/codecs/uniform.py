"""``uniform``: any permuted tensor within a hair of log2(n!/prod m_v!) bits per row.

Each row is coded as a multiset permutation: at output position i (r = n - i items remain) the
*items* are the remaining singleton sources (values that occur once in the row), in a pool kept
by swap-removal, followed by each tie class (values that occur more than once, ordered by first
occurrence) as one range of its remaining count. The value at position i is one item or one
class range [a, e), coded with the exact integer frequency floor(e*M/r) - floor(a*M/r) out of
M = 2**31 by the rANS coder in _rans.py. All rows of the tensor share one stream per segment.
formats/codecs/uniform.md specifies it bit for bit; ``decode_reference`` is that text in Python.
"""
from __future__ import annotations

import numpy as np

from ..errors import FormatError
from . import _rans
from .._perm_jit import index_source, put_row as _put, read_only
from ._rans import LOW, M, PREC, njit, prange

NAME = "uniform"
AUTO = True
KEYS = ("name", "lanes", "segment_rows")


def keys_of(values: np.ndarray) -> np.ndarray:
    """Bit patterns of the initial values as unsigned integers (equal iff the values are equal)."""
    v = np.ascontiguousarray(values)
    return v.view(np.dtype(f"<u{v.dtype.itemsize}"))


def _nseg(rows: int, n: int, seg: int) -> int:
    return 0 if rows * n == 0 else -(-rows // seg)


# ---- the model, in plain Python (reference) ------------------------------------------------
def row_items(key_row) -> tuple[list, list]:
    """(pool of singleton sources, tie classes as lists of sources), both in increasing source
    order; tie classes ordered by their first source."""
    groups: dict = {}
    for i, k in enumerate(key_row):
        groups.setdefault(int(k), []).append(i)
    pool = [g[0] for g in groups.values() if len(g) == 1]
    ties = [g for g in groups.values() if len(g) > 1]    # dicts keep first-occurrence order
    return sorted(pool), ties


def interval(a: int, e: int, r: int) -> tuple[int, int]:
    """(cum, freq) of the item range [a, e) among r remaining items."""
    cum = (a << PREC) // r
    return cum, ((e << PREC) // r) - cum


def decode_reference(params: dict, payload, values: np.ndarray) -> np.ndarray:
    """The decoder exactly as formats/codecs/uniform.md states it (slow, for tests)."""
    rows, n = values.shape
    lanes, seg = _rans.check_layout(params, KEYS, rows, n, NAME)
    nseg = _nseg(rows, n, seg)
    words, bounds = _rans.unframe(payload, nseg, lanes)
    keys = keys_of(values)
    perm = np.empty((rows, n), np.int64)
    for g in range(nseg):
        rd = _rans.Reader(words, int(bounds[g]), int(bounds[g + 1]), lanes)
        for row in range(g * seg, min(rows, (g + 1) * seg)):
            pool, ties = row_items(keys[row])
            used = [0] * len(ties)
            for i in range(n):
                r = n - i
                s = rd.slot()
                j = ((s + 1) * r - 1) >> PREC
                if j < len(pool):
                    a, e, src = j, j + 1, pool[j]
                    pool[j] = pool[-1]
                    pool.pop()
                else:
                    a = len(pool)
                    for c, t in enumerate(ties):
                        e = a + len(t) - used[c]
                        if j < e:
                            break
                        a = e
                    src = t[used[c]]
                    used[c] += 1
                rd.advance(*interval(a, e, r))
                perm[row, i] = src
        rd.finish()
    return perm


# ---- compiled (fast) -----------------------------------------------------------------------
@njit
def _distinct(key_row, n, table, stamp, hbits):
    """True iff the row's n keys are pairwise distinct (open addressing; a slot is live when its
    stamp is the current one, so the table is never cleared)."""
    shift = np.uint64(64 - hbits)
    mask = (1 << hbits) - 1
    st = np.uint64(stamp)
    for i in range(n):
        k = np.uint64(key_row[i])
        h = np.int64((k * np.uint64(0x9E3779B97F4A7C15)) >> shift)
        while True:
            if table[h, 0] != st:
                table[h, 0] = st
                table[h, 1] = k
                break
            if table[h, 1] == k:
                return False
            h = (h + 1) & mask
    return True


@njit
def _setup(key_row, n, table, stamp, hbits, cls, count, tie_of, start, srcs, pool):
    """Classes of one row: fills pool (singletons), srcs/start (tie classes, CSR), cls (class id
    per source, first-occurrence order), tie_of (tie index per class id or -1); returns (S, K)."""
    if _distinct(key_row, n, table, 2 * stamp, hbits):
        for i in range(n):
            pool[i] = i
        return n, 0
    shift = np.uint64(64 - hbits)
    mask = (1 << hbits) - 1
    st = np.uint64(2 * stamp + 1)
    nid = 0
    for i in range(n):
        k = np.uint64(key_row[i])
        h = np.int64((k * np.uint64(0x9E3779B97F4A7C15)) >> shift)
        while True:
            if table[h, 0] != st:
                table[h, 0] = st
                table[h, 1] = k
                table[h, 2] = nid
                count[nid] = 1
                cls[i] = nid
                nid += 1
                break
            if table[h, 1] == k:
                c = np.int64(table[h, 2])
                count[c] += 1
                cls[i] = c
                break
            h = (h + 1) & mask
    K = 0
    for c in range(nid):
        if count[c] > 1:
            tie_of[c] = K
            start[K] = count[c]
            K += 1
        else:
            tie_of[c] = -1
    acc = 0
    for t in range(K):   # counts -> offsets
        c = start[t]
        start[t] = acc
        acc += c
    start[K] = acc
    for c in range(nid):  # count becomes each tie class's fill cursor
        if tie_of[c] >= 0:
            count[c] = start[tie_of[c]]
    S = 0
    for i in range(n):
        c = cls[i]
        if tie_of[c] < 0:
            pool[S] = i
            S += 1
        else:
            srcs[count[c]] = i
            count[c] += 1
    return S, K


@njit(inline="always")
def _fen_build(fen, rem, K):
    for t in range(K):
        fen[t + 1] = rem[t]
    for t in range(1, K + 1):
        u = t + (t & -t)
        if u <= K:
            fen[u] += fen[t]


@njit(inline="always")
def _fen_add(fen, K, t, d):
    t += 1
    while t <= K:
        fen[t] += d
        t += t & -t


@njit(inline="always")
def _fen_prefix(fen, t):
    acc = 0
    while t > 0:
        acc += fen[t]
        t -= t & -t
    return acc


@njit(inline="always")
def _fen_find(fen, K, top, q):
    """(t, prefix(t)) for the tie class t holding item q (0 <= q < total)."""
    pos = 0
    acc = 0
    step = top
    while step:
        nxt = pos + step
        if nxt <= K and acc + fen[nxt] <= q:
            pos = nxt
            acc += fen[nxt]
        step >>= 1
    return pos, acc


@njit(inline="always")
def _scaled(a, r, rinv):
    """floor(a * M / r), by a float estimate that is off by at most one and then corrected."""
    num = a << PREC
    q = np.int64(np.float64(num) * rinv)
    d = num - q * r
    if d < 0:
        q -= 1
    elif d >= r:
        q += 1
    return q


@njit
def _scratch(n):
    hbits = 1
    while (1 << hbits) < 2 * n:
        hbits += 1
    table = np.zeros((1 << hbits, 4), np.uint64)
    return (hbits, table, np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n + 1, np.int64),
            np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64), np.zeros(n + 1, np.int64))


@njit
def _encode_segment(keys, perm, lo, hi, cum, freq):
    n = keys.shape[1]
    hbits, table, cls, count, tie_of, start, srcs, pool, where, fen = _scratch(n)
    rem = np.empty(n, np.int64)
    rinv = 1.0 / np.arange(n + 1, dtype=np.float64)
    k = 0
    for row in range(lo, hi):
        S, K = _setup(keys[row], n, table, row + 1, hbits, cls, count, tie_of, start, srcs, pool)
        for t in range(K):
            rem[t] = start[t + 1] - start[t]
        if K:
            _fen_build(fen, rem, K)
        for q in range(S):
            where[pool[q]] = q
        for i in range(n):
            r = n - i
            src = perm[row, i]
            t = -1 if K == 0 else tie_of[cls[src]]
            if t < 0:
                a = where[src]
                e = a + 1
                last = pool[S - 1]
                pool[a] = last
                where[last] = a
                S -= 1
            else:
                a = S + _fen_prefix(fen, t)
                e = a + rem[t]
                rem[t] -= 1
                _fen_add(fen, K, t, -1)
            c0 = _scaled(a, r, rinv[r])
            cum[k] = c0
            freq[k] = _scaled(e, r, rinv[r]) - c0
            k += 1


@njit(parallel=True)
def _encode_all(keys, perm, seg, lanes, nseg, out, sizes):
    rows, n = keys.shape
    for g in prange(nseg):
        lo = g * seg
        hi = min(rows, lo + seg)
        cnt = (hi - lo) * n
        cum = np.empty(cnt, np.int64)
        freq = np.empty(cnt, np.int64)
        _encode_segment(keys, perm, lo, hi, cum, freq)
        sizes[g] = _rans.encode_symbols(cum, freq, lanes, out[g])


@njit
def _decode_segment(keys, lo, hi, lanes, words, wlo, whi, src, out):
    """Decode rows [lo, hi) from words[wlo:whi] into out[r, j] = src[r, perm[j]] (src: the
    values' bit patterns, or the identity for the permutation itself); returns 0, or an error
    code (1 bad state, 2 stream ends early, 3 stream does not end in the initial state, 4 a row
    is not a permutation)."""
    n = keys.shape[1]
    hbits, table, cls, count, tie_of, start, srcs, pool, used, fen = _scratch(n)
    rem = np.empty(n, np.int64)
    orow = np.empty(n, np.int64)
    stamp = np.full(n, -1, np.int64)
    rinv = 1.0 / np.arange(n + 1, dtype=np.float64)
    x = np.empty(lanes, np.int64)
    if not _rans.read_states(words, wlo, lanes, x):
        return 1
    p = wlo + 2 * lanes
    mmask = np.int64(M - 1)
    lane = 0
    for row in range(lo, hi):
        S, K = _setup(keys[row], n, table, row + 1, hbits, cls, count, tie_of, start, srcs, pool)
        top = 0
        if K:
            for t in range(K):
                rem[t] = start[t + 1] - start[t]
                used[t] = start[t]
            _fen_build(fen, rem, K)
            top = 1
            while top * 2 <= K:
                top *= 2
        for i in range(n):
            r = n - i
            xs = x[lane]
            s = xs & mmask
            j = ((s + 1) * r - 1) >> PREC
            if j < S:
                a = j
                e = j + 1
                orow[i] = pool[j]
                S -= 1
                pool[j] = pool[S]
            else:
                t, pre = _fen_find(fen, K, top, j - S)
                a = S + pre
                e = a + rem[t]
                orow[i] = srcs[used[t]]
                used[t] += 1
                rem[t] -= 1
                _fen_add(fen, K, t, -1)
            ri = rinv[r]
            c0 = _scaled(a, r, ri)
            f = _scaled(e, r, ri) - c0
            xs, p, ok = _rans.advance(xs, f, s, c0, words, p, whi)
            if not ok:
                return 2
            x[lane] = xs
            lane += 1
            if lane == lanes:
                lane = 0
        if not _put(orow, src, row, out, stamp):
            return 4
    if p != whi:
        return 3
    for l in range(lanes):
        if x[l] != LOW:
            return 3
    return 0


@njit(parallel=True)
def _decode_all(keys, seg, lanes, words, bounds, src, out, err):
    rows = keys.shape[0]
    for g in prange(bounds.shape[0] - 1):
        lo = g * seg
        err[g] = _decode_segment(keys, lo, min(rows, lo + seg), lanes, words, bounds[g], bounds[g + 1], src, out)


ERRORS = {1: "a lane's initial state is outside [2**31, 2**63)", 2: "the stream ends early",
          3: "the stream does not end in the initial state", 4: "a row is not a permutation"}


# ---- the codec interface -------------------------------------------------------------------
def encode(perm: np.ndarray, values: np.ndarray, lanes=None, segment_rows=None, **options):
    rows, n = perm.shape
    lanes, seg = _rans.layout(rows, n, _rans.row_bits(values), lanes, segment_rows)
    params = {"name": NAME, "lanes": lanes, "segment_rows": seg}
    nseg = _nseg(rows, n, seg)
    if nseg == 0:
        return params, b""
    keys = keys_of(values)
    out = np.empty((nseg, seg * n + 2 * lanes), np.uint32)
    sizes = np.empty(nseg, np.int64)
    _encode_all(keys, np.ascontiguousarray(perm, np.int64), seg, lanes, nseg, out, sizes)
    return params, _rans.frame([out[g, : sizes[g]] for g in range(nseg)])


def check_payload(params: dict, payload, rows: int, n: int) -> None:
    """Reject bad params or framing before the initial values are generated."""
    lanes, seg = _rans.check_layout(params, KEYS, rows, n, NAME)
    _rans.unframe(payload, _nseg(rows, n, seg), lanes)


def decode(params: dict, payload, values: np.ndarray) -> np.ndarray:
    """The permutation (int64 rows x n)."""
    src = index_source(_bits(values))
    out = np.empty_like(src)
    _decode(params, payload, values, src, out)
    return out.astype(np.int64)


def decode_values(params: dict, payload, values: np.ndarray) -> np.ndarray:
    """The rearranged values themselves (decode, then perm.check_apply, in one pass)."""
    src = _bits(values)
    out = np.empty(src.shape, src.dtype)
    _decode(params, payload, values, src, out)
    return out.view(values.dtype)


def _bits(values):
    return read_only(np.ascontiguousarray(values).view(np.dtype(f"u{values.dtype.itemsize}")))


def _decode(params, payload, values, src, out) -> None:
    rows, n = values.shape
    lanes, seg = _rans.check_layout(params, KEYS, rows, n, NAME)
    nseg = _nseg(rows, n, seg)
    words, bounds = _rans.unframe(payload, nseg, lanes)
    if nseg:
        err = np.zeros(nseg, np.int64)
        _decode_all(keys_of(values), seg, lanes, words, bounds, src, out, err)
        bad = np.flatnonzero(err)
        if bad.size:
            g = int(bad[0])
            raise FormatError(f"uniform payload segment {g} is corrupt: {ERRORS[int(err[g])]}")
