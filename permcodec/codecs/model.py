"""``model``: below the uniform limit on trained networks, whose weights stay near their initial rank.

Each row is visited in the order of its initial values (key, then index). The value found at the
t-th position is one of the remaining *items* (the row's values in key order, equal values merged
into a class range); it is coded relative to the centre C = the number of remaining items below
the position's own initial class, as the displacement d = j - C. An adaptive table of integer
counts over logarithmic displacement buckets (both signs; one table per segment) gives each
bucket a share of M = 2**28, split evenly among the bucket's items, every item keeping at least
one; the rANS coder of _rans.py writes the symbols. Where this does not pay (a permutation far
from its initial order, pruned rows) save(codec="auto") keeps ``uniform`` for that tensor.
formats/codecs/model.md specifies it bit for bit; ``decode_reference`` is that text in Python.
"""
from __future__ import annotations

import numpy as np

from ..errors import FormatError
from . import _rans
from ._rans import LOW, M, PREC, njit, prange
from .uniform import ERRORS, _fen_add, _fen_build, _fen_find, _fen_prefix, _nseg, keys_of

NAME = "model"
AUTO = True
KEYS = ("name", "lanes", "segment_rows")
SIDE = 56            # magnitude buckets per sign: enough for displacements below 2**28
INC = 24             # count added to the coded bucket
LIMIT = 1 << 16      # counts are halved (rounding up) when their sum exceeds this


# ---- displacement buckets ------------------------------------------------------------------
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
    """Table index of displacement d: 2*bucket(d) for d >= 0, 2*bucket(-d-1)+1 for d < 0."""
    return 2 * bucket(d) if d >= 0 else 2 * bucket(-d - 1) + 1


@njit
def _table(cnt, C, r, G, T, lo, w):
    """Fill, for every bucket id, the first valid displacement lo, the valid width w, the slot
    start G and the slot count T, for centre C among r items (buckets outside get w = 0)."""
    W = 0
    nneg = bucket(C - 1) + 1 if C > 0 else 0
    npos = bucket(r - 1 - C) + 1 if r - 1 - C >= 0 else 0
    for b in range(SIDE):
        w[2 * b] = 0
        w[2 * b + 1] = 0
    for b in range(nneg):         # d in [-C, -1]: d = -u - 1
        ulo, uhi = bucket_range(b)
        bid = 2 * b + 1
        lo[bid] = -min(uhi, C - 1) - 1
        w[bid] = min(uhi, C - 1) - ulo + 1
        W += cnt[bid]
    for b in range(npos):         # d in [0, r-1-C]
        ulo, uhi = bucket_range(b)
        bid = 2 * b
        lo[bid] = ulo
        w[bid] = min(uhi, r - 1 - C) - ulo + 1
        W += cnt[bid]
    E = M - r
    K = 0
    g = 0
    q0 = 0
    for k in range(nneg + npos):  # d order: negative far -> near, then positive near -> far
        bid = 2 * (nneg - 1 - k) + 1 if k < nneg else 2 * (k - nneg)
        K += cnt[bid]
        q1 = (K * E) // W
        G[bid] = g
        T[bid] = w[bid] + q1 - q0
        g += T[bid]
        q0 = q1
    return nneg, npos


@njit
def _cdf(j, C, r, G, T, lo, w):
    """F(j): the first slot of item j (F(r) = M)."""
    if j == r:
        return M
    bid = bucket_id(j - C)
    return G[bid] + ((j - C - lo[bid]) * T[bid]) // w[bid]


@njit
def _credit(cnt, tot, a, e, C):
    """Add INC to the bucket of the coded range's displacement (0 if it holds the centre, else its
    end nearest the centre); halve all counts when their sum exceeds LIMIT. Returns the sum."""
    if a <= C < e:
        d = 0
    elif a > C:
        d = a - C
    else:
        d = e - 1 - C
    cnt[bucket_id(d)] += INC
    tot += INC
    if tot > LIMIT:
        tot = 0
        for q in range(2 * SIDE):
            cnt[q] = (cnt[q] + 1) >> 1
            tot += cnt[q]
    return tot


# ---- rows: initial order and classes --------------------------------------------------------
@njit
def _classes(key_row, order, cstart, cls_sorted):
    """Sort positions by (key, index) into order; class per sorted index; returns the class count
    with cstart[c] the first sorted index of class c (cstart[ncls] = n)."""
    n = key_row.shape[0]
    o = np.argsort(key_row, kind="mergesort")
    ncls = 0
    for q in range(n):
        order[q] = o[q]
        if q == 0 or key_row[o[q]] != key_row[o[q - 1]]:
            cstart[ncls] = q
            ncls += 1
        cls_sorted[q] = ncls - 1
    cstart[ncls] = n
    return ncls


@njit
def _encode_segment(keys, perm, lo_row, hi_row, cum, freq):
    n = keys.shape[1]
    order = np.empty(n, np.int64)
    cstart = np.empty(n + 1, np.int64)
    cls_sorted = np.empty(n, np.int64)
    clsof = np.empty(n, np.int64)
    rem = np.empty(n, np.int64)
    fen = np.zeros(n + 1, np.int64)
    cnt = np.ones(2 * SIDE, np.int64)
    tot = 2 * SIDE
    G = np.empty(2 * SIDE, np.int64)
    T = np.empty(2 * SIDE, np.int64)
    lo = np.empty(2 * SIDE, np.int64)
    w = np.empty(2 * SIDE, np.int64)
    k = 0
    for row in range(lo_row, hi_row):
        ncls = _classes(keys[row], order, cstart, cls_sorted)
        for q in range(n):
            clsof[order[q]] = cls_sorted[q]
        for c in range(ncls):
            rem[c] = cstart[c + 1] - cstart[c]
        _fen_build(fen, rem, ncls)
        for t in range(n):
            r = n - t
            i = order[t]
            C = _fen_prefix(fen, cls_sorted[t])
            cf = clsof[perm[row, i]]
            a = _fen_prefix(fen, cf)
            e = a + rem[cf]
            _table(cnt, C, r, G, T, lo, w)
            c0 = _cdf(a, C, r, G, T, lo, w)
            cum[k] = c0
            freq[k] = _cdf(e, C, r, G, T, lo, w) - c0
            k += 1
            tot = _credit(cnt, tot, a, e, C)
            rem[cf] -= 1
            _fen_add(fen, ncls, cf, -1)


@njit(parallel=True)
def _encode_all(keys, perm, seg, lanes, nseg, out, sizes):
    rows, n = keys.shape
    for g in prange(nseg):
        lo = g * seg
        hi = min(rows, lo + seg)
        cum = np.empty((hi - lo) * n, np.int64)
        freq = np.empty((hi - lo) * n, np.int64)
        _encode_segment(keys, perm, lo, hi, cum, freq)
        sizes[g] = _rans.encode_symbols(cum, freq, lanes, out[g])


@njit
def _decode_segment(keys, lo_row, hi_row, lanes, words, wlo, whi, out):
    n = keys.shape[1]
    order = np.empty(n, np.int64)
    cstart = np.empty(n + 1, np.int64)
    cls_sorted = np.empty(n, np.int64)
    fcls = np.empty(n, np.int64)
    rem = np.empty(n, np.int64)
    fen = np.zeros(n + 1, np.int64)
    cnt = np.ones(2 * SIDE, np.int64)
    tot = 2 * SIDE
    G = np.empty(2 * SIDE, np.int64)
    T = np.empty(2 * SIDE, np.int64)
    lo = np.empty(2 * SIDE, np.int64)
    w = np.empty(2 * SIDE, np.int64)
    x = np.empty(lanes, np.int64)
    for l in range(lanes):
        v = np.int64(words[wlo + 2 * l]) | (np.int64(words[wlo + 2 * l + 1]) << 32)
        if v < LOW:
            return 1
        x[l] = v
    p = wlo + 2 * lanes
    lane = 0
    for row in range(lo_row, hi_row):
        ncls = _classes(keys[row], order, cstart, cls_sorted)
        for c in range(ncls):
            rem[c] = cstart[c + 1] - cstart[c]
        _fen_build(fen, rem, ncls)
        top = 1
        while top * 2 <= ncls:
            top *= 2
        for t in range(n):
            r = n - t
            C = _fen_prefix(fen, cls_sorted[t])
            nneg, npos = _table(cnt, C, r, G, T, lo, w)
            xs = x[lane]
            s = xs & (M - 1)
            bid = 0
            for kk in range(nneg + npos):
                bid = 2 * (nneg - 1 - kk) + 1 if kk < nneg else 2 * (kk - nneg)
                if s < G[bid] + T[bid]:
                    break
            j = C + lo[bid] + ((s - G[bid] + 1) * w[bid] - 1) // T[bid]
            cf, a = _fen_find(fen, ncls, top, j)
            e = a + rem[cf]
            c0 = _cdf(a, C, r, G, T, lo, w)
            f = _cdf(e, C, r, G, T, lo, w) - c0
            xs = f * (xs >> PREC) + s - c0
            if xs < LOW:
                if p >= whi:
                    return 2
                xs = (xs << 32) | np.int64(words[p])
                p += 1
            x[lane] = xs
            lane += 1
            if lane == lanes:
                lane = 0
            fcls[order[t]] = cf
            tot = _credit(cnt, tot, a, e, C)
            rem[cf] -= 1
            _fen_add(fen, ncls, cf, -1)
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
def _decode_all(keys, seg, lanes, words, bounds, out, err):
    rows = keys.shape[0]
    for g in prange(bounds.shape[0] - 1):
        lo = g * seg
        err[g] = _decode_segment(keys, lo, min(rows, lo + seg), lanes, words, bounds[g], bounds[g + 1], out)


# ---- reference decoder (plain Python, as the spec states it) --------------------------------
def _ref_bucket(u: int) -> int:
    return u if u < 2 else 2 * (u.bit_length() - 1) + ((u >> (u.bit_length() - 2)) & 1)


def _ref_range(b: int) -> tuple[int, int]:
    if b < 2:
        return b, b
    e = b >> 1
    lo = (2 | (b & 1)) << (e - 1)
    return lo, lo + (1 << (e - 1)) - 1


def _ref_intervals(cnt: list, C: int, r: int) -> list:
    """[(first d, width, G, T, bucket id)] of the valid buckets in increasing d."""
    spans = []
    if C > 0:
        for b in range(_ref_bucket(C - 1), -1, -1):
            ulo, uhi = _ref_range(b)
            uhi = min(uhi, C - 1)
            spans.append((-uhi - 1, uhi - ulo + 1, 2 * b + 1))
    for b in range(_ref_bucket(r - 1 - C) + 1 if r - 1 - C >= 0 else 0):
        ulo, uhi = _ref_range(b)
        spans.append((ulo, min(uhi, r - 1 - C) - ulo + 1, 2 * b))
    W = sum(cnt[bid] for _, _, bid in spans)
    E, K, g, out = M - r, 0, 0, []
    for d0, width, bid in spans:
        q0 = K * E // W
        K += cnt[bid]
        t = width + K * E // W - q0
        out.append((d0, width, g, t, bid))
        g += t
    return out


def _ref_cdf(j: int, C: int, r: int, spans: list) -> int:
    if j == r:
        return M
    d = j - C
    for d0, width, g, t, _ in spans:
        if d0 <= d < d0 + width:
            return g + (d - d0) * t // width
    raise AssertionError("item outside every bucket")


def decode_reference(params: dict, payload, values: np.ndarray) -> np.ndarray:
    """The decoder exactly as formats/codecs/model.md states it (slow, for tests)."""
    rows, n = values.shape
    lanes, seg = _rans.check_layout(params, KEYS, rows, n, NAME)
    nseg = _nseg(rows, n, seg)
    words, bounds = _rans.unframe(payload, nseg, lanes)
    keys = keys_of(values)
    perm = np.empty((rows, n), np.int64)
    for g in range(nseg):
        rd = _rans.Reader(words, int(bounds[g]), int(bounds[g + 1]), lanes)
        cnt = [1] * (2 * SIDE)
        for row in range(g * seg, min(rows, (g + 1) * seg)):
            order = sorted(range(n), key=lambda i: (int(keys[row, i]), i))
            classes = []                       # sources of each class, increasing
            for i in order:
                if classes and keys[row, classes[-1][0]] == keys[row, i]:
                    classes[-1].append(i)
                else:
                    classes.append([i])
            cls_of = {i: c for c, members in enumerate(classes) for i in members}
            rem = [len(members) for members in classes]
            final = [0] * n
            for t, i in enumerate(order):
                r = n - t
                C = sum(rem[: cls_of[i]])
                spans = _ref_intervals(cnt, C, r)
                s = rd.slot()
                d0, width, g0, t0, _ = next(sp for sp in spans if s < sp[2] + sp[3])
                j = C + d0 + ((s - g0 + 1) * width - 1) // t0
                a = 0
                for cf, m in enumerate(rem):
                    if j < a + m:
                        break
                    a += m
                e = a + rem[cf]
                c0 = _ref_cdf(a, C, r, spans)
                rd.advance(c0, _ref_cdf(e, C, r, spans) - c0)
                final[i] = cf
                d = 0 if a <= C < e else (a - C if a > C else e - 1 - C)
                bid = 2 * _ref_bucket(d) if d >= 0 else 2 * _ref_bucket(-d - 1) + 1
                cnt[bid] += INC
                if sum(cnt) > LIMIT:
                    cnt = [(c + 1) >> 1 for c in cnt]
                rem[cf] -= 1
            used = [0] * len(classes)
            for i in range(n):
                perm[row, i] = classes[final[i]][used[final[i]]]
                used[final[i]] += 1
        rd.finish()
    return perm


# ---- the codec interface -------------------------------------------------------------------
def encode(perm: np.ndarray, values: np.ndarray, lanes=None, segment_rows=None, **options):
    rows, n = perm.shape
    lanes, seg = _rans.layout(rows, n, _rans.row_bits(values), lanes, segment_rows)
    params = {"name": NAME, "lanes": lanes, "segment_rows": seg}
    nseg = _nseg(rows, n, seg)
    if nseg == 0:
        return params, b""
    out = np.empty((nseg, seg * n + 2 * lanes), np.uint32)
    sizes = np.empty(nseg, np.int64)
    _encode_all(keys_of(values), np.ascontiguousarray(perm, np.int64), seg, lanes, nseg, out, sizes)
    return params, _rans.frame([out[g, : sizes[g]] for g in range(nseg)])


def check_payload(params: dict, payload, rows: int, n: int) -> None:
    """Reject bad params or framing before the initial values are generated."""
    lanes, seg = _rans.check_layout(params, KEYS, rows, n, NAME)
    _rans.unframe(payload, _nseg(rows, n, seg), lanes)


def decode(params: dict, payload, values: np.ndarray) -> np.ndarray:
    rows, n = values.shape
    lanes, seg = _rans.check_layout(params, KEYS, rows, n, NAME)
    nseg = _nseg(rows, n, seg)
    words, bounds = _rans.unframe(payload, nseg, lanes)
    out = np.empty((rows, n), np.int64)
    if nseg:
        err = np.zeros(nseg, np.int64)
        _decode_all(keys_of(values), seg, lanes, words, bounds, out, err)
        bad = np.flatnonzero(err)
        if bad.size:
            g = int(bad[0])
            raise FormatError(f"model payload segment {g} is corrupt: {ERRORS[int(err[g])]}")
    return out
