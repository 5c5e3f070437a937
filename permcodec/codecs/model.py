"""``model``: below the uniform limit on trained networks (version 2: Lehmer digits in context).

Each row is visited in the order of its initial values (key, then index). The value found at the
t-th position is one of the remaining *items* (the row's values in key order, equal values merged
into a class range); its item index is coded relative to a *centre* c with an adaptive table of
integer counts over logarithmic offset buckets, one table per *context*:

- context 0: no neighbour decoded yet: c = 0, so the symbol is the position's Lehmer digit
  (RESEARCH.md §3: a trained weight mostly ends below the weights that started above it);
- context 1: a *frozen* column (a header bitmap; columns whose weights keep their relative order
  in every row, e.g. the weights of input pixels that are zero in every training image): only
  items at or above the previous frozen position's final class are valid, c = the first of them;
- contexts 2..5: 1, 2, 3, >= 4 already decoded *neighbours* i +- lag (lags in the header, e.g. 1
  and 28 for MNIST pixels): c = the remaining item at the position's initial sorted index plus
  the neighbours' mean displacement.

The rANS coder of _rans.py writes the symbols. The encoder picks the frozen set and the lags
(trying a few) and save(codec="auto") keeps ``uniform`` where ``model`` does not pay.
formats/codecs/model.md specifies it bit for bit; ``decode_reference`` is that text in Python.
"""
from __future__ import annotations

import numpy as np

from ..errors import FormatError
from . import _rans
from ._rans import LOW, M, PREC, njit, prange
from ..dtypes import order_keys
from .uniform import ERRORS as _UERR, _fen_add, _fen_build, _fen_find, _fen_prefix, _nseg


def keys_of(values: np.ndarray) -> np.ndarray:
    """Order keys of the initial values: unsigned integers in the order of the numbers (negative
    patterns inverted, the sign bit set on the others), equal iff the bit patterns are equal."""
    return np.ascontiguousarray(order_keys(np.ascontiguousarray(values)))

NAME = "model"
AUTO = True
KEYS = ("name", "lanes", "segment_rows", "frozen", "lags")
SIDE = 56            # magnitude buckets per sign: enough for offsets below 2**28
NB = 2 * SIDE        # bucket ids per context
NCTX = 6             # contexts (tables)
INC = 24             # count added to the coded bucket
LIMIT = 1 << 16      # a table's counts are halved (rounding up) when their sum exceeds this
MAX_LAGS = 4
ERRORS = dict(_UERR)
ERRORS[4] = "a frozen position has no valid item left"


# ---- offset buckets ------------------------------------------------------------------------
@njit
def bucket(u):
    """Magnitude bucket of u >= 0: 0, 1, then two buckets per octave (2, 3 | 4-5, 6-7 | ...)."""
    if u < 2:
        return u
    e = 0
    while (u >> (e + 1)) > 0:
        e += 1
    return 2 * e + ((u >> (e - 1)) & 1)


@njit
def bucket_range(b):
    """(lo, hi) magnitudes of bucket b, inclusive."""
    if b < 2:
        return b, b
    e = b >> 1
    lo = (2 | (b & 1)) << (e - 1)
    return lo, lo + (1 << (e - 1)) - 1


@njit
def bucket_id(d):
    """Table index of offset d: 2*bucket(d) for d >= 0, 2*bucket(-d-1)+1 for d < 0."""
    return 2 * bucket(d) if d >= 0 else 2 * bucket(-d - 1) + 1


# The fast coders keep, per context, the counts in *layout order* (offset order): layout index
# SIDE - 1 - B holds the negative bucket of magnitude B (id 2B+1), SIDE + B the positive one (id 2B),
# so the valid buckets of any symbol are one contiguous layout range [SIDE - nneg, SIDE + npos) and
# model.md §6's running sums are differences of one prefix-sum array P (P[x] = counts of layout
# indices < x; P[0] = 0, P[NB] = the table's total). Closed forms of §6 for layout bucket x:
#     G_x = (d0_x - (v - C)) + floor(Kp_x E / W),  T_x = w_x + floor(K_x E / W) - floor(Kp_x E / W)
# with Kp_x = P[x] - P[xs], K_x = P[x + 1] - P[xs], W = P[xe] - P[xs] (the widths of the earlier
# valid buckets sum to d0_x - (v - C)): O(1) per bucket instead of a walk over every valid bucket.
PB = NB + 1          # prefix entries per context


@njit
def _bucket_table(n):
    """bucket(u) for 0 <= u <= n (a lookup instead of a bit scan)."""
    bk = np.empty(n + 1, np.int64)
    for u in range(n + 1):
        bk[u] = bucket(u)
    return bk


@njit
def _prefix_init(P):
    for ctx in range(NCTX):
        for y in range(PB):
            P[ctx * PB + y] = y


@njit(inline="always")
def _layout(d, bk):
    """Layout index of offset d."""
    return SIDE + bk[d] if d >= 0 else SIDE - 1 - bk[-d - 1]


@njit(inline="always")
def _span(x, c, vlo, r):
    """(first valid offset d0, valid width w) of layout bucket x."""
    if x >= SIDE:
        ulo, uhi = bucket_range(x - SIDE)
        return ulo, min(uhi, r - 1 - c) - ulo + 1
    ulo, uhi = bucket_range(SIDE - 1 - x)
    uhi = min(uhi, c - vlo - 1)
    return -uhi - 1, uhi - ulo + 1


@njit(inline="always")
def _muldiv(K, E, W, winv):
    """floor(K * E / W) for 0 <= K <= W <= 2**17, E < 2**28 (K * E < 2**45 is exact in binary64:
    the float quotient is off by at most one, then corrected exactly)."""
    num = K * E
    q = np.int64(np.float64(num) * winv)
    rest = num - q * W
    if rest < 0:
        q -= 1
    elif rest >= W:
        q += 1
    return q


@njit(inline="always")
def _slots(P, pb, x, base, E, W, winv, c, vlo, r):
    """(G, T, d0, w) of layout bucket x (model.md §6)."""
    d0, w = _span(x, c, vlo, r)
    q0 = _muldiv(np.int64(P[pb + x]) - base, E, W, winv)
    q1 = _muldiv(np.int64(P[pb + x + 1]) - base, E, W, winv)
    return d0 + c - vlo + q0, w + q1 - q0, d0, w


@njit(inline="always")
def _cdf_at(j, c, vlo, r, P, pb, base, E, W, winv, bk):
    """F(j): the first slot of item j (F(r) = M)."""
    if j == r:
        return M
    d = j - c
    G, T, d0, w = _slots(P, pb, _layout(d, bk), base, E, W, winv, c, vlo, r)
    if w == 1:
        return G
    return G + ((d - d0) * T) // w


@njit(inline="always")
def _cdf_near(j, c, vlo, r, P, pb, base, E, W, winv, bk, G, T, d0, w):
    """F(j), reusing (G, T, d0, w) when j's offset falls in that bucket."""
    if j == r:
        return M
    d = j - c
    if d0 <= d < d0 + w:
        return G if w == 1 else G + ((d - d0) * T) // w
    return _cdf_at(j, c, vlo, r, P, pb, base, E, W, winv, bk)


@njit(inline="always")
def _window(P, pb, c, vlo, r, bk):
    """(xs, xe, base = P[xs], W, 1/W, E) of a symbol: its valid layout range and the §6 sums."""
    xs = SIDE - (bk[c - vlo - 1] + 1) if c > vlo else SIDE
    xe = SIDE + bk[r - 1 - c] + 1
    base = np.int64(P[pb + xs])
    W = np.int64(P[pb + xe]) - base
    return xs, xe, base, W, 1.0 / W, M - (r - vlo)


@njit(inline="always")
def _credit(P, pb, a, e, c, bk):
    """Add INC to the bucket of the coded range's offset (0 if it holds the centre, else its end
    nearest the centre); halve the context's counts (rounding up) when their sum exceeds LIMIT."""
    if a <= c < e:
        d = 0
    elif a > c:
        d = a - c
    else:
        d = e - 1 - c
    Q = P[pb: pb + PB]
    x1 = np.uint64(_layout(d, bk) + 1)
    for y in range(x1, np.uint64(PB)):
        Q[y] += INC
    if Q[NB] > LIMIT:
        prev = np.int32(0)
        acc = np.int32(0)
        for y in range(1, PB):
            cy = Q[y] - prev
            prev = Q[y]
            acc += (cy + 1) >> 1
            Q[y] = acc


@njit
def _context(t, i, n, r, frozen, lags, done, disp, fen, cls_sorted, lastcls):
    """(context, vlo, centre) of the position i = order[t]."""
    if frozen[i]:
        vlo = _fen_prefix(fen, lastcls)
        return 1, vlo, vlo
    acc = 0
    nav = 0
    for k in range(lags.shape[0]):
        L = lags[k]
        if i - L >= 0 and done[i - L]:
            acc += disp[i - L]
            nav += 1
        if i + L < n and done[i + L]:
            acc += disp[i + L]
            nav += 1
    if nav == 0:
        return 0, 0, 0
    P = t + acc // nav            # floor division
    if P < 0:
        P = 0
    elif P > n - 1:
        P = n - 1
    c = _fen_prefix(fen, cls_sorted[P])
    if c > r - 1:
        c = r - 1
    return 1 + min(nav, 4), 0, c


# ---- rows: initial order and classes --------------------------------------------------------
@njit
def _classes(key_row, order, cstart, cls_sorted, tmp, hist):
    """Sort positions by (key, index) into order (a stable LSD radix sort over the key bytes that
    vary in the row; tmp: int64[n] and hist: int64[256] scratch); class per sorted index; returns
    the class count with cstart[c] the first sorted index of class c (cstart[ncls] = n)."""
    n = key_row.shape[0]
    diff = np.uint64(0)
    if n:
        k0 = np.uint64(key_row[0])
        for q in range(n):
            diff |= np.uint64(key_row[q]) ^ k0
    for q in range(n):
        order[q] = q
    src = order
    dst = tmp
    passes = 0
    for byte in range(8):
        sh = np.uint64(8 * byte)
        if ((diff >> sh) & np.uint64(255)) == 0:
            continue
        for h in range(256):
            hist[h] = 0
        for q in range(n):
            hist[np.int64((np.uint64(key_row[q]) >> sh) & np.uint64(255))] += 1
        acc = 0
        for h in range(256):
            c = hist[h]
            hist[h] = acc
            acc += c
        for q in range(n):
            i = src[q]
            h = np.int64((np.uint64(key_row[i]) >> sh) & np.uint64(255))
            dst[hist[h]] = i
            hist[h] += 1
        src, dst = dst, src
        passes += 1
    if passes & 1:
        for q in range(n):
            order[q] = tmp[q]
    ncls = 0
    for q in range(n):
        if q == 0 or key_row[order[q]] != key_row[order[q - 1]]:
            cstart[ncls] = q
            ncls += 1
        cls_sorted[q] = ncls - 1
    cstart[ncls] = n
    return ncls


@njit
def _segment_scratch(n):
    """Work arrays of a segment coder (the same for both directions): class sort buffers, the
    class of each position, remaining counts, the Fenwick tree, done flags, displacements, the
    adaptive context counts (initialised) and the bucket table."""
    P = np.empty(NCTX * PB, np.int32)
    _prefix_init(P)
    return (np.empty(n, np.int64), np.empty(n + 1, np.int64), np.empty(n, np.int64), np.empty(n, np.int64),
            np.empty(256, np.int64), np.empty(n, np.int64), np.empty(n, np.int64), np.zeros(n + 1, np.int64),
            np.zeros(n, np.bool_), np.zeros(n, np.int64), P, _bucket_table(n))


@njit
def _encode_segment(keys, perm, frozen, lags, lo_row, hi_row, cum, freq):
    n = keys.shape[1]
    order, cstart, cls_sorted, tmp, hist, clsof, rem, fen, done, disp, P, bk = _segment_scratch(n)
    k = 0
    for row in range(lo_row, hi_row):
        ncls = _classes(keys[row], order, cstart, cls_sorted, tmp, hist)
        for q in range(n):
            clsof[order[q]] = cls_sorted[q]
            done[q] = False
        for c in range(ncls):
            rem[c] = cstart[c + 1] - cstart[c]
        _fen_build(fen, rem, ncls)
        lastcls = 0
        for t in range(n):
            r = n - t
            i = order[t]
            ctx, vlo, c = _context(t, i, n, r, frozen, lags, done, disp, fen, cls_sorted, lastcls)
            cf = clsof[perm[row, i]]
            a = _fen_prefix(fen, cf)
            e = a + rem[cf]
            if a < vlo:
                return 1              # the frozen set does not hold in this row
            pb = ctx * PB
            xs, xe, base, W, winv, E = _window(P, pb, c, vlo, r, bk)
            da = a - c
            G, T, d0, w = _slots(P, pb, _layout(da, bk), base, E, W, winv, c, vlo, r)
            c0 = G if w == 1 else G + ((da - d0) * T) // w
            cum[k] = c0
            freq[k] = _cdf_near(e, c, vlo, r, P, pb, base, E, W, winv, bk, G, T, d0, w) - c0
            k += 1
            _credit(P, pb, a, e, c, bk)
            rem[cf] -= 1
            _fen_add(fen, ncls, cf, -1)
            done[i] = True
            disp[i] = cstart[cf] - cstart[cls_sorted[t]]
            if frozen[i]:
                lastcls = cf
    return 0


@njit
def _encode_one(keys, perm, frozen, lags, lanes, out):
    """One segment of all rows, without the thread pool (a parallel launch for one segment cost
    5x the work on a loaded 2-core machine); returns the words written or -1."""
    rows, n = keys.shape
    cum = np.empty(rows * n, np.int64)
    freq = np.empty(rows * n, np.int64)
    if _encode_segment(keys, perm, frozen, lags, 0, rows, cum, freq):
        return -1
    return _rans.encode_symbols(cum, freq, lanes, out)


@njit(parallel=True)
def _encode_all(keys, perm, frozen, lags, seg, lanes, nseg, out, sizes):
    rows, n = keys.shape
    for g in prange(nseg):
        lo = g * seg
        hi = min(rows, lo + seg)
        cum = np.empty((hi - lo) * n, np.int64)
        freq = np.empty((hi - lo) * n, np.int64)
        if _encode_segment(keys, perm, frozen, lags, lo, hi, cum, freq):
            sizes[g] = -1
        else:
            sizes[g] = _rans.encode_symbols(cum, freq, lanes, out[g])


@njit
def _decode_segment(keys, frozen, lags, lo_row, hi_row, lanes, words, wlo, whi, out):
    n = keys.shape[1]
    order, cstart, cls_sorted, tmp, hist, fcls, rem, fen, done, disp, P, bk = _segment_scratch(n)
    x = np.empty(lanes, np.int64)
    if not _rans.read_states(words, wlo, lanes, x):
        return 1
    p = wlo + 2 * lanes
    lane = 0
    for row in range(lo_row, hi_row):
        ncls = _classes(keys[row], order, cstart, cls_sorted, tmp, hist)
        for c in range(ncls):
            rem[c] = cstart[c + 1] - cstart[c]
        for q in range(n):
            done[q] = False
        _fen_build(fen, rem, ncls)
        top = 1
        while top * 2 <= ncls:
            top *= 2
        lastcls = 0
        for t in range(n):
            r = n - t
            i = order[t]
            ctx, vlo, c = _context(t, i, n, r, frozen, lags, done, disp, fen, cls_sorted, lastcls)
            if vlo >= r:
                return 4
            pb = ctx * PB
            xs_, xe, base, W, winv, E = _window(P, pb, c, vlo, r, bk)
            xs = x[lane]
            s = xs & (M - 1)
            # the valid bucket holding slot s: the last layout index whose G <= s (G increases)
            lo_x = xs_
            hi_x = xe - 1
            while lo_x < hi_x:
                mid = (lo_x + hi_x + 1) >> 1
                d0, w = _span(mid, c, vlo, r)
                off = s - (d0 + c - vlo)
                if off >= 0 and (np.int64(P[pb + mid]) - base) * E < (off + 1) * W:
                    lo_x = mid
                else:
                    hi_x = mid - 1
            G, T, d0, w = _slots(P, pb, lo_x, base, E, W, winv, c, vlo, r)
            j = c + d0 + ((s - G + 1) * w - 1) // T
            cf, a = _fen_find(fen, ncls, top, j)
            e = a + rem[cf]
            c0 = _cdf_near(a, c, vlo, r, P, pb, base, E, W, winv, bk, G, T, d0, w)
            f = _cdf_near(e, c, vlo, r, P, pb, base, E, W, winv, bk, G, T, d0, w) - c0
            xs, p, ok = _rans.advance(xs, f, s, c0, words, p, whi)
            if not ok:
                return 2
            x[lane] = xs
            lane += 1
            if lane == lanes:
                lane = 0
            fcls[i] = cf
            _credit(P, pb, a, e, c, bk)
            rem[cf] -= 1
            _fen_add(fen, ncls, cf, -1)
            done[i] = True
            disp[i] = cstart[cf] - cstart[cls_sorted[t]]
            if frozen[i]:
                lastcls = cf
        for c in range(ncls):         # sources of each class, in increasing position order
            rem[c] = cstart[c]
        orow = out[row]
        for i in range(n):
            c = fcls[i]
            orow[i] = order[rem[c]]
            rem[c] += 1
    if p != whi:
        return 3
    for l in range(lanes):
        if x[l] != LOW:
            return 3
    return 0


@njit(parallel=True)
def _decode_all(keys, frozen, lags, seg, lanes, words, bounds, out, err):
    rows = keys.shape[0]
    for g in prange(bounds.shape[0] - 1):
        lo = g * seg
        err[g] = _decode_segment(keys, frozen, lags, lo, min(rows, lo + seg), lanes, words,
                                 bounds[g], bounds[g + 1], out)


# ---- encoder side: the frozen set and the lags -----------------------------------------------
@njit
def _compat(keys, perm):
    """ok[p, q]: in every row, positions p and q keep their order (initial (key, index) order
    vs final class order, ties allowed)."""
    rows, n = keys.shape
    ok = np.ones((n, n), np.bool_)
    order = np.empty(n, np.int64)
    cstart = np.empty(n + 1, np.int64)
    cls_sorted = np.empty(n, np.int64)
    tmp = np.empty(n, np.int64)
    hist = np.empty(256, np.int64)
    t0 = np.empty(n, np.int64)
    clsof = np.empty(n, np.int64)
    fc = np.empty(n, np.int64)
    for row in range(rows):
        _classes(keys[row], order, cstart, cls_sorted, tmp, hist)
        for q in range(n):
            t0[order[q]] = q
            clsof[order[q]] = cls_sorted[q]
        for q in range(n):
            fc[q] = clsof[perm[row, q]]
        for p in range(n):
            for q in range(n):
                if t0[p] < t0[q] and fc[p] > fc[q]:
                    ok[p, q] = False
                    ok[q, p] = False
    return ok


@njit
def _clique(ok):
    n = ok.shape[0]
    deg = np.zeros(n, np.int64)
    for p in range(n):
        for q in range(n):
            if ok[p, q]:
                deg[p] += 1
    idx = np.argsort(-deg, kind="mergesort")
    chosen = np.zeros(n, np.bool_)
    members = np.empty(n, np.int64)
    m = 0
    for z in range(n):
        p = idx[z]
        good = True
        for y in range(m):
            if not ok[p, members[y]]:
                good = False
                break
        if good:
            chosen[p] = True
            members[m] = p
            m += 1
    return chosen


@njit
def _repair(keys, perm, chosen):
    """Row by row, keep of the flagged columns (in initial order) a longest subsequence with
    non-decreasing final classes and unflag the others; afterwards the flagged set is valid in
    every row (a subset of a valid set stays valid). O(rows * n log n)."""
    rows, n = keys.shape
    order = np.empty(n, np.int64)
    cstart = np.empty(n + 1, np.int64)
    cls_sorted = np.empty(n, np.int64)
    tmp = np.empty(n, np.int64)
    hist = np.empty(256, np.int64)
    clsof = np.empty(n, np.int64)
    seq = np.empty(n, np.int64)        # flagged columns in initial order
    val = np.empty(n, np.int64)        # their final classes
    tail = np.empty(n + 1, np.int64)   # tail[L]: index in seq ending the best subsequence of length L
    prev = np.empty(n, np.int64)
    keep = np.zeros(n, np.bool_)
    for row in range(rows):
        _classes(keys[row], order, cstart, cls_sorted, tmp, hist)
        for q in range(n):
            clsof[order[q]] = cls_sorted[q]
        m = 0
        for t in range(n):
            i = order[t]
            if chosen[i]:
                seq[m] = i
                val[m] = clsof[perm[row, i]]
                m += 1
        best = 0
        for z in range(m):
            lo, hi = 1, best + 1        # first length L whose tail value exceeds val[z]
            while lo < hi:
                mid = (lo + hi) >> 1
                if val[tail[mid]] > val[z]:
                    hi = mid
                else:
                    lo = mid + 1
            prev[z] = tail[lo - 1] if lo > 1 else -1
            tail[lo] = z
            if lo > best:
                best = lo
        if best == m:
            continue
        for z in range(m):
            keep[z] = False
        z = tail[best] if best else -1
        while z >= 0:
            keep[z] = True
            z = prev[z]
        for z in range(m):
            if not keep[z]:
                chosen[seq[z]] = False


@njit
def _popcount(x):
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@njit
def _compat_bits(keys, perm):
    """_compat as bitsets (ok[p] bit q), O(rows * n**2 / 64): per row, positions are visited in
    decreasing initial order with the set of those already visited (initially later) and the
    prefix sets less[f] = {q: final class of q < f}; p conflicts with the later q below its final
    class and with the earlier q above it."""
    rows, n = keys.shape
    nw = (n + 63) >> 6
    ok = np.zeros((n, nw), np.uint64)
    for p in range(n):
        for q in range(n):
            ok[p, q >> 6] |= np.uint64(1) << np.uint64(q & 63)
    order = np.empty(n, np.int64)
    cstart = np.empty(n + 1, np.int64)
    cls_sorted = np.empty(n, np.int64)
    tmp = np.empty(n, np.int64)
    hist = np.empty(256, np.int64)
    clsof = np.empty(n, np.int64)
    fc = np.empty(n, np.int64)
    less = np.zeros((n + 1, nw), np.uint64)
    after = np.zeros(nw, np.uint64)
    for row in range(rows):
        ncls = _classes(keys[row], order, cstart, cls_sorted, tmp, hist)
        for q in range(n):
            clsof[order[q]] = cls_sorted[q]
        for q in range(n):
            fc[q] = clsof[perm[row, q]]
        for f in range(ncls + 1):       # less[f]: columns whose final class is below f
            for w in range(nw):
                less[f, w] = 0
        for q in range(n):
            less[fc[q] + 1, q >> 6] |= np.uint64(1) << np.uint64(q & 63)
        for f in range(1, ncls + 1):
            for w in range(nw):
                less[f, w] |= less[f - 1, w]
        for w in range(nw):
            after[w] = 0
        for t in range(n - 1, -1, -1):
            p = order[t]
            f = fc[p]
            for w in range(nw):         # later and below, or earlier (not p) and above
                bad = (after[w] & less[f, w]) | (~after[w] & ~less[f + 1, w])
                ok[p, w] &= ~bad
            ok[p, p >> 6] |= np.uint64(1) << np.uint64(p & 63)
            after[p >> 6] |= np.uint64(1) << np.uint64(p & 63)
    return ok


@njit
def _clique_bits(ok, n):
    """_clique on _compat_bits' sets: the same greedy clique, visiting columns by decreasing
    degree (stable)."""
    nw = ok.shape[1]
    deg = np.zeros(n, np.int64)
    for p in range(n):
        for w in range(nw):
            deg[p] += _popcount(ok[p, w])
    idx = np.argsort(-deg, kind="mergesort")
    chosen = np.zeros(n, np.bool_)
    members = np.zeros(nw, np.uint64)
    for z in range(n):
        p = idx[z]
        good = True
        for w in range(nw):
            if (ok[p, w] & members[w]) != members[w]:
                good = False
                break
        if good:
            chosen[p] = True
            members[p >> 6] |= np.uint64(1) << np.uint64(p & 63)
    return chosen


EXACT_WORDS = 1 << 28     # frozen search: all rows while rows * n * ceil(n/64) stays below this,
SAMPLE_WORDS = 1 << 26    # otherwise pairs tested on evenly spaced rows, then _repair on all rows


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
        chosen = _clique_bits(_compat_bits(keys, perm), n)
    else:
        pick = np.unique(np.linspace(0, rows - 1, max(1, min(rows, SAMPLE_WORDS // per_row))).astype(np.int64))
        chosen = _clique_bits(_compat_bits(np.ascontiguousarray(keys[pick]), np.ascontiguousarray(perm[pick])), n)
        _repair(keys, perm, chosen)
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


# ---- reference decoder (plain Python, as the spec states it) --------------------------------
def _ref_bucket(u: int) -> int:
    return u if u < 2 else 2 * (u.bit_length() - 1) + ((u >> (u.bit_length() - 2)) & 1)


def _ref_range(b: int) -> tuple[int, int]:
    if b < 2:
        return b, b
    e = b >> 1
    lo = (2 | (b & 1)) << (e - 1)
    return lo, lo + (1 << (e - 1)) - 1


def _ref_id(d: int) -> int:
    return 2 * _ref_bucket(d) if d >= 0 else 2 * _ref_bucket(-d - 1) + 1


def _ref_intervals(cnt: list, c: int, vlo: int, r: int) -> list:
    """[(first offset, width, G, T)] of the valid buckets in increasing offset."""
    spans = []
    if c > vlo:
        for b in range(_ref_bucket(c - vlo - 1), -1, -1):
            ulo, uhi = _ref_range(b)
            uhi = min(uhi, c - vlo - 1)
            spans.append((-uhi - 1, uhi - ulo + 1, 2 * b + 1))
    for b in range(_ref_bucket(r - 1 - c) + 1):
        ulo, uhi = _ref_range(b)
        spans.append((ulo, min(uhi, r - 1 - c) - ulo + 1, 2 * b))
    W = sum(cnt[bid] for _, _, bid in spans)
    E, K, g, out = M - (r - vlo), 0, 0, []
    for d0, width, bid in spans:
        q0 = K * E // W
        K += cnt[bid]
        t = width + K * E // W - q0
        out.append((d0, width, g, t))
        g += t
    return out


def _ref_cdf(j: int, c: int, r: int, spans: list) -> int:
    if j == r:
        return M
    d = j - c
    for d0, width, g, t in spans:
        if d0 <= d < d0 + width:
            return g + (d - d0) * t // width
    raise AssertionError("item outside every bucket")


def decode_reference(params: dict, payload, values: np.ndarray) -> np.ndarray:
    """The decoder exactly as formats/codecs/model.md states it (slow, for tests)."""
    rows, n = values.shape
    lanes, seg, frozen, lags = check_params(params, rows, n)
    nseg = _nseg(rows, n, seg)
    words, bounds = _rans.unframe(payload, nseg, lanes)
    keys = keys_of(values)
    perm = np.empty((rows, n), np.int64)
    frozen = [bool(f) for f in frozen]
    for g in range(nseg):
        rd = _rans.Reader(words, int(bounds[g]), int(bounds[g + 1]), lanes)
        tables = [[1] * NB for _ in range(NCTX)]
        for row in range(g * seg, min(rows, (g + 1) * seg)):
            order = sorted(range(n), key=lambda i: (int(keys[row, i]), i))
            classes, start = [], []            # sources of each class, increasing; first sorted index
            for t, i in enumerate(order):
                if classes and keys[row, classes[-1][0]] == keys[row, i]:
                    classes[-1].append(i)
                else:
                    classes.append([i])
                    start.append(t)
            cls_at = [c for c, members in enumerate(classes) for _ in members]   # by sorted index
            rem = [len(members) for members in classes]
            final, disp = [None] * n, [None] * n
            last = 0
            for t, i in enumerate(order):
                r = n - t
                if frozen[i]:
                    ctx, vlo = 1, sum(rem[:last])
                    c = vlo
                    if vlo >= r:
                        raise FormatError("model payload: a frozen position has no valid item left")
                else:
                    near = [disp[q] for L in lags for q in (i - L, i + L) if 0 <= q < n and disp[q] is not None]
                    vlo = 0
                    if not near:
                        ctx, c = 0, 0
                    else:
                        ctx = 1 + min(len(near), 4)
                        P = min(max(t + sum(near) // len(near), 0), n - 1)
                        c = min(sum(rem[: cls_at[P]]), r - 1)
                cnt = tables[ctx]
                spans = _ref_intervals(cnt, c, vlo, r)
                s = rd.slot()
                d0, width, g0, t0 = next(sp for sp in spans if s < sp[2] + sp[3])
                j = c + d0 + ((s - g0 + 1) * width - 1) // t0
                a = 0
                for cf, m in enumerate(rem):
                    if j < a + m:
                        break
                    a += m
                e = a + rem[cf]
                c0 = _ref_cdf(a, c, r, spans)
                rd.advance(c0, _ref_cdf(e, c, r, spans) - c0)
                final[i] = cf
                d = 0 if a <= c < e else (a - c if a > c else e - 1 - c)
                cnt[_ref_id(d)] += INC
                if sum(cnt) > LIMIT:
                    tables[ctx] = [(q + 1) >> 1 for q in cnt]
                rem[cf] -= 1
                disp[i] = start[cf] - start[cls_at[t]]
                if frozen[i]:
                    last = cf
            used = [0] * len(classes)
            for i in range(n):
                perm[row, i] = classes[final[i]][used[final[i]]]
                used[final[i]] += 1
        rd.finish()
    return perm


# ---- the codec interface -------------------------------------------------------------------
def check_params(params: dict, rows: int, n: int):
    """(lanes, segment_rows, frozen as uint8[n] 0/1, lags as int64[]) after validating params."""
    lanes, seg = _rans.check_layout(params, KEYS, rows, n, NAME)
    fz, lags = params["frozen"], params["lags"]
    if not isinstance(fz, (bytes, bytearray)) or len(fz) not in (0, (n + 7) // 8):
        raise FormatError(f"model codec param frozen must be empty or {(n + 7) // 8} bytes, got {type(fz).__name__} "
                          f"of length {len(fz) if isinstance(fz, (bytes, bytearray)) else '?'}")
    if fz and n % 8 and fz[-1] >> (n % 8):
        raise FormatError("model codec param frozen has bits set past the row length")
    if (not isinstance(lags, list) or len(lags) > MAX_LAGS
            or any(not isinstance(L, int) or isinstance(L, bool) or not 1 <= L < max(n, 1) for L in lags)
            or any(a >= b for a, b in zip(lags, lags[1:]))):
        raise FormatError(f"model codec param lags must be at most {MAX_LAGS} increasing integers in [1, n-1], got {lags!r}")
    frozen = (np.unpackbits(np.frombuffer(bytes(fz), np.uint8), bitorder="little")[:n] if fz
              else np.zeros(n, np.uint8))
    return lanes, seg, frozen, np.array(lags, np.int64)


def _encode_with(keys, perm, rows, n, lanes, seg, frozen, lags):
    nseg = _nseg(rows, n, seg)
    fbits = np.zeros(n, np.uint8) if frozen is None else np.asarray(frozen, np.uint8)
    params = {"name": NAME, "lanes": lanes, "segment_rows": seg,
              "frozen": b"" if frozen is None or not fbits.any() else np.packbits(fbits, bitorder="little").tobytes(),
              "lags": [int(L) for L in lags]}
    if nseg == 0:
        return params, b""
    out = np.empty((nseg, seg * n + 2 * lanes), np.uint32)
    sizes = np.empty(nseg, np.int64)
    if nseg == 1:
        sizes[0] = _encode_one(keys, perm, fbits, np.array(lags, np.int64), lanes, out[0])
    else:
        _encode_all(keys, perm, fbits, np.array(lags, np.int64), seg, lanes, nseg, out, sizes)
    if (sizes < 0).any():
        return None
    return params, _rans.frame([out[g, : sizes[g]] for g in range(nseg)])


EXACT_TRIALS = 1 << 16    # tensors up to this many weights try every option on the whole tensor
TRIAL_WEIGHTS = 1 << 16   # larger ones try them on about this many evenly spaced rows' weights


def sample_rows(rows: int, n: int, weights: int = TRIAL_WEIGHTS) -> np.ndarray:
    """Evenly spaced row indices holding about ``weights`` weights (at least one row)."""
    return np.unique(np.linspace(0, rows - 1, max(1, min(rows, -(-weights // max(n, 1))))).astype(np.int64))


def encode(perm: np.ndarray, values: np.ndarray, lanes=None, segment_rows=None, frozen="auto", lags="auto",
           **options):
    """frozen: "auto" (search), None, or a bool array of n; lags: "auto" (try none, the best and
    the best two correlated lags) or a list of increasing integers in [1, n-1]. With more than one
    option to try, a tensor above EXACT_TRIALS weights compares them on a deterministic sample of
    rows (sample_rows) and encodes the whole tensor once, with the winner."""
    rows, n = perm.shape
    lanes, seg = _rans.layout(rows, n, _rans.row_bits(values), lanes, segment_rows)
    keys = keys_of(values)
    perm = np.ascontiguousarray(perm, np.int64)
    if rows * n == 0:
        return _encode_with(keys, perm, rows, n, lanes, seg, None, [])
    fz_opts = [None]
    if isinstance(frozen, str):
        found = find_frozen(keys, perm)
        if found is not None:
            fz_opts.append(found)
    elif frozen is not None:
        fz_opts = [np.asarray(frozen, bool)]
    if isinstance(lags, str):
        best = find_lags(keys, perm)
        lag_opts = [[]] + [best[:k] for k in range(1, len(best) + 1)]
    else:
        lag_opts = [list(lags)]
    opts = [(fz, lg) for fz in fz_opts for lg in lag_opts]
    if len(opts) > 1 and rows * n > EXACT_TRIALS:
        pick = sample_rows(rows, n)
        ks, ps = np.ascontiguousarray(keys[pick]), np.ascontiguousarray(perm[pick])
        sizes = []
        for fz, lg in opts:
            got = _encode_with(ks, ps, len(pick), n, 1, len(pick), fz, lg)
            sizes.append(np.inf if got is None else len(got[1]))
        opts = [opts[int(np.argmin(sizes))]]
    result = None
    for fz, lg in opts:
        got = _encode_with(keys, perm, rows, n, lanes, seg, fz, lg)
        if got is None:
            raise ValueError("model codec: the given frozen columns change their order in some row")
        if result is None or len(got[1]) < len(result[1]):
            result = got
    return result


PROSPECT_WEIGHTS = 1 << 15   # weights of the sample that ``prospect`` codes
WORTH = 0.995                # ``worth``: run the full encode where the sample codes below this


def prospect(perm: np.ndarray, values: np.ndarray) -> float:
    """model bits / information limit on about PROSPECT_WEIGHTS weights of evenly spaced rows: the
    smaller of the cheapest options (no frozen columns, no lags) and the frozen columns and lags
    found on the sample itself. Deterministic; milliseconds whatever the tensor's size."""
    from ..perm import info_bits
    rows, n = perm.shape
    if rows * n == 0:
        return 1.0
    pick = sample_rows(rows, n, PROSPECT_WEIGHTS)
    v = np.ascontiguousarray(values[pick])
    limit = info_bits(v)
    if limit <= 0:
        return 0.0
    k, p = keys_of(v), np.ascontiguousarray(perm[pick], np.int64)
    best = len(_encode_with(k, p, len(pick), n, 1, len(pick), None, [])[1])
    fz, lg = find_frozen(k, p), find_lags(k, p)
    if fz is not None or lg:
        best = min(best, len(_encode_with(k, p, len(pick), n, 1, len(pick), fz, lg)[1]))
    return best * 8 / limit


def worth(perm: np.ndarray, values: np.ndarray) -> bool:
    """Whether save(codec="auto") should run the full ``model`` encode beside ``uniform``: always
    for tensors up to EXACT_TRIALS weights, else where ``prospect`` < WORTH. It only decides whether
    ``model`` is tried, never the bits of a ``model`` encoding."""
    rows, n = perm.shape
    return rows * n <= EXACT_TRIALS or prospect(perm, values) < WORTH


def check_payload(params: dict, payload, rows: int, n: int) -> None:
    """Reject bad params or framing before the initial values are generated."""
    lanes, seg, _, _ = check_params(params, rows, n)
    _rans.unframe(payload, _nseg(rows, n, seg), lanes)


def decode(params: dict, payload, values: np.ndarray) -> np.ndarray:
    rows, n = values.shape
    lanes, seg, frozen, lags = check_params(params, rows, n)
    nseg = _nseg(rows, n, seg)
    words, bounds = _rans.unframe(payload, nseg, lanes)
    out = np.empty((rows, n), np.int64)
    if nseg:
        err = np.zeros(nseg, np.int64)
        if nseg == 1:   # no thread pool for one segment
            err[0] = _decode_segment(keys_of(values), frozen, lags, 0, rows, lanes, words, bounds[0], bounds[1], out)
        else:
            _decode_all(keys_of(values), frozen, lags, seg, lanes, words, bounds, out, err)
        bad = np.flatnonzero(err)
        if bad.size:
            g = int(bad[0])
            raise FormatError(f"model payload segment {g} is corrupt: {ERRORS[int(err[g])]}")
    return out
