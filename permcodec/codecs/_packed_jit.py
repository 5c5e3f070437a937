"""Compiled loops of the ``packed`` codec (numba). They repeat packed.py's reference operation for
operation and are tested equal to it; nothing here defines behaviour of its own.

Rows are independent, so both directions run in parallel over blocks of rows; the bit writer of
the encoder is the one sequential pass.
"""
from __future__ import annotations

import numpy as np

from .. import _perm_jit
from ..errors import FormatError
from . import packed as _P

try:  # numba is a declared dependency, but the reference paths work without it
    import numba as _nb
except ImportError:  # pragma: no cover
    _nb = None

BLOCK = 64  # rows per parallel task


def available() -> bool:
    return _nb is not None and not _nb.config.DISABLE_JIT


if _nb is not None:
    _u64 = np.uint64
    _put = _perm_jit.put_row

    @_nb.njit(cache=True)
    def _bitlen(v):
        """Bit length of 0 <= v < 2**63."""
        b = 0
        if v >> 32:
            v >>= 32
            b += 32
        if v >> 16:
            v >>= 16
            b += 16
        if v >> 8:
            v >>= 8
            b += 8
        while v:
            v >>= 1
            b += 1
        return b

    @_nb.njit(cache=True)
    def _schedule(mode, n, p, out):
        """packed.schedule into ``out``; returns the row's bits."""
        T = n - p if mode == 0 else n
        need_max = np.int64(1) << _P.NEED_BITS
        P = np.int64(1)
        tail = T
        while tail > 0:
            R = n - tail + 1 if mode == 0 else p
            if P * R >= need_max:
                break
            tail -= 1
            P *= R
        U = np.int64(1)
        total = 0
        for t in range(T):
            R = n - t if mode == 0 else p
            if t < tail:
                need = need_max
            else:
                need = P
                P //= R
            k = 0
            if U < need:
                k = _bitlen(need - 1) - _bitlen(U)
                if (U << k) < need:
                    k += 1
                U <<= k
            out[t] = k
            total += k
            U //= R
        return total

    @_nb.njit(cache=True, inline="always")
    def _read(words, pos, k):
        w = pos >> 6
        off = pos & 63
        hi = words[w] << _u64(off)
        if off:
            hi |= words[w + 1] >> _u64(64 - off)
        return np.int64(hi >> _u64(64 - k))

    @_nb.njit(cache=True, inline="always")
    def _divmod(x, R, ir):
        """(x div R, x mod R) for 0 <= x < 2**52 from a binary64 estimate, corrected exactly."""
        q = np.int64(np.float64(x) * ir)
        d = x - q * R
        if d < 0:
            q -= 1
            d += R
        elif d >= R:
            q += 1
            d -= R
        return q, d

    @_nb.njit(cache=True, inline="always")
    def _digit(words, pos, k, x, R, ir):
        if k:
            x = (x << k) | _read(words, pos, k)
        return _divmod(x, R, ir)

    @_nb.njit(cache=True, parallel=True)
    def _dec_distinct(words, n, idx, K, offs, src, out, bad):
        """Rows of distinct values (L = {0}); four rows at a time share one schedule, so their
        independent division chains overlap. Each row is decoded into a scratch row, then
        out[r, j] = src[r, perm[j]] (src: the values' bit patterns, or the identity for a
        permutation)."""
        inv = np.empty(n, np.float64)
        for t in range(n):
            inv[t] = 1.0 / (n - t)
        rows = idx.shape[0]
        for b in _nb.prange((rows + BLOCK - 1) // BLOCK):
            f0 = np.empty(n, np.int32)
            f1 = np.empty(n, np.int32)
            f2 = np.empty(n, np.int32)
            f3 = np.empty(n, np.int32)
            s0 = np.empty(n, np.int64)
            s1 = np.empty(n, np.int64)
            s2 = np.empty(n, np.int64)
            s3 = np.empty(n, np.int64)
            stamp = np.full(n, -1, np.int64)
            hi = min(rows, (b + 1) * BLOCK)
            r = b * BLOCK
            while r + 4 <= hi:
                r0, r1, r2, r3 = idx[r], idx[r + 1], idx[r + 2], idx[r + 3]
                p0, p1, p2, p3 = offs[r0], offs[r1], offs[r2], offs[r3]
                for i in range(n):
                    f0[i] = i
                    f1[i] = i
                    f2[i] = i
                    f3[i] = i
                x0 = np.int64(0)
                x1 = np.int64(0)
                x2 = np.int64(0)
                x3 = np.int64(0)
                for t in range(n - 1):
                    R = n - t
                    k = np.int64(K[t])
                    ir = inv[t]
                    x0, d0 = _digit(words, p0, k, x0, R, ir)
                    x1, d1 = _digit(words, p1, k, x1, R, ir)
                    x2, d2 = _digit(words, p2, k, x2, R, ir)
                    x3, d3 = _digit(words, p3, k, x3, R, ir)
                    p0 += k
                    p1 += k
                    p2 += k
                    p3 += k
                    s0[f0[d0]] = t + 1
                    f0[d0] = f0[R - 1]
                    s1[f1[d1]] = t + 1
                    f1[d1] = f1[R - 1]
                    s2[f2[d2]] = t + 1
                    f2[d2] = f2[R - 1]
                    s3[f3[d3]] = t + 1
                    f3[d3] = f3[R - 1]
                s0[f0[0]] = 0
                s1[f1[0]] = 0
                s2[f2[0]] = 0
                s3[f3[0]] = 0
                bad[r0] = 1 if x0 != 0 else (0 if _put(s0, src, r0, out, stamp) else 3)
                bad[r1] = 1 if x1 != 0 else (0 if _put(s1, src, r1, out, stamp) else 3)
                bad[r2] = 1 if x2 != 0 else (0 if _put(s2, src, r2, out, stamp) else 3)
                bad[r3] = 1 if x3 != 0 else (0 if _put(s3, src, r3, out, stamp) else 3)
                r += 4
            while r < hi:
                r0 = idx[r]
                p0 = offs[r0]
                for i in range(n):
                    f0[i] = i
                x0 = np.int64(0)
                for t in range(n - 1):
                    R = n - t
                    k = np.int64(K[t])
                    x0, d0 = _digit(words, p0, k, x0, R, inv[t])
                    p0 += k
                    s0[f0[d0]] = t + 1
                    f0[d0] = f0[R - 1]
                s0[f0[0]] = 0
                bad[r0] = 1 if x0 != 0 else (0 if _put(s0, src, r0, out, stamp) else 3)
                r += 1

    @_nb.njit(cache=True, inline="always")
    def _okey(b, width):
        """dtypes.order_keys of one bit pattern, as uint64."""
        v = _u64(b)
        sign = _u64(1) << _u64(width - 1)
        if v & sign:
            return v ^ ((sign - _u64(1)) | sign)
        return v | sign

    @_nb.njit(cache=True)
    def _sorted_classes(row, width, kbuf):
        """A stable argsort of the row's order keys (classes contiguous, members increasing)."""
        for i in range(row.shape[0]):
            kbuf[i] = _okey(row[i], width)
        return np.argsort(kbuf, kind="mergesort")

    @_nb.njit(cache=True, parallel=True)
    def _tied_rows(keys, out):
        """out[r] = True where row r repeats a key (open addressing, one table per task)."""
        rows, n = keys.shape
        size = 1
        while size < 2 * n:
            size <<= 1
        shift = _u64(64 - max(_bitlen(size - 1), 1))
        for b in _nb.prange((rows + BLOCK - 1) // BLOCK):
            table = np.empty(size, keys.dtype)
            stamp = np.full(size, -1, np.int64)
            for r in range(b * BLOCK, min(rows, (b + 1) * BLOCK)):
                for j in range(n):
                    key = keys[r, j]
                    h = np.int64((_u64(key) * _u64(0x9E3779B97F4A7C15)) >> shift)
                    while stamp[h] == r:
                        if table[h] == key:
                            out[r] = True
                            break
                        h = (h + 1) & (size - 1)
                    if out[r]:
                        break
                    stamp[h] = r
                    table[h] = key

    @_nb.njit(cache=True, parallel=True)
    def _scan(raw, idx, m, k, nrep, lkey):
        """Per row, without sorting: the number of classes k, the largest class's size m, the
        number of classes with several members, and the bit pattern of L (among the largest
        classes, the one met first in source order). The all-zero pattern (+0.0, pruned weights)
        is counted apart, branch free; the other patterns go through a hash table in which 0
        marks an empty slot."""
        rows, n = raw.shape
        size = 1
        while size < 4 * n:
            size <<= 1
        mask = _u64(size - 1)
        shift = _u64(64 - max(_bitlen(size - 1), 1))
        zero = raw.dtype.type(0)
        nidx = idx.shape[0]
        for b in _nb.prange((nidx + BLOCK - 1) // BLOCK):
            table = np.zeros(size, raw.dtype)
            cnt = np.empty(size, np.int64)
            uniq = np.empty(max(n, 1), np.int64)
            nzi = np.empty(n + 1, np.int64)
            for i0 in range(b * BLOCK, min(nidx, (b + 1) * BLOCK)):
                r = idx[i0]
                row = raw[r]
                nnz = 0
                for j in range(n):
                    nzi[nnz] = j
                    nnz += row[j] != zero
                nu = 0
                for i in range(nnz):
                    key = row[nzi[i]]
                    h = (_u64(key) * _u64(0x9E3779B97F4A7C15)) >> shift
                    while True:
                        t = table[h]
                        if t == zero:
                            table[h] = key
                            cnt[h] = 1
                            uniq[nu] = h
                            nu += 1
                            break
                        if t == key:
                            cnt[h] += 1
                            break
                        h = (h + _u64(1)) & mask
                best = 0
                big = 0
                rep = 0
                for i in range(nu):  # uniq is in order of first occurrence
                    c = cnt[uniq[i]]
                    if c > best:
                        best = c
                        big = uniq[i]
                    rep += c > 1
                lk = table[big] if nu else zero
                for i in range(nu):
                    table[uniq[i]] = zero
                z = n - nnz
                if z:
                    nu += 1
                    rep += z > 1
                    if z > best:
                        best = z
                        lk = zero
                    elif z == best:  # equal sizes: the class met first
                        j = 0
                        while row[j] != zero and row[j] != lk:
                            j += 1
                        if row[j] == zero:
                            lk = zero
                m[r] = best
                k[r] = nu
                nrep[r] = rep
                lkey[r] = lk

    @_nb.njit(cache=True)
    def _bits_of(mode, n, ps, out):
        scratch = np.zeros(max(n, 1), np.uint8)
        for i in range(ps.shape[0]):
            out[i] = _schedule(mode, n, ps[i], scratch)

    @_nb.njit(cache=True, inline="always")
    def _one_split(row, key, items, lm, free, orow):
        """Items (sources not holding L's pattern, increasing) and L's members, branch free;
        returns the number of items."""
        T = 0
        nl = 0
        for s in range(row.shape[0]):
            e = np.int64(row[s] == key)
            items[T] = s
            lm[nl] = s
            T += 1 - e
            nl += e
            free[s] = s
            orow[s] = -1
        return T

    @_nb.njit(cache=True, inline="always")
    def _one_fill(orow, lm):
        """L's members, increasing, into the slots left (marked -1), increasing."""
        j2 = 0
        for j in range(orow.shape[0]):
            v = orow[j]
            e = np.int64(v < 0)
            orow[j] = lm[j2] if e else v
            j2 += e

    @_nb.njit(cache=True, inline="always")
    def _one_chain(words, n, K, pos, x, t0, T, inv, items, free, orow):
        for t in range(t0, T):
            R = n - t
            kk = np.int64(K[t])
            x, d = _digit(words, pos, kk, x, R, inv[t])
            pos += kk
            orow[free[d]] = items[t]
            free[d] = free[R - 1]
        return x

    @_nb.njit(cache=True, parallel=True)
    def _dec_one(words, n, idx, raw, lkey, tix, tables, offs, src, out, bad):
        """PERM rows whose only repeated value is L's (pruned zeros, a constant): L's members are
        the positions holding L's bit pattern, no class search. Four rows at a time: their
        radices agree (n - t), so their division chains overlap up to the shortest row."""
        inv = np.empty(max(n, 1), np.float64)
        for t in range(n):
            inv[t] = 1.0 / (n - t)
        rows = idx.shape[0]
        for b in _nb.prange((rows + BLOCK - 1) // BLOCK):
            free = np.empty((4, n), np.int64)
            items = np.empty((4, n + 1), np.int64)
            lm = np.empty((4, n + 1), np.int64)
            sc = np.empty((4, n), np.int64)
            stamp = np.full(n, -1, np.int64)
            hi = min(rows, (b + 1) * BLOCK)
            i = b * BLOCK
            while i + 4 <= hi:
                r0, r1, r2, r3 = idx[i], idx[i + 1], idx[i + 2], idx[i + 3]
                o0, o1, o2, o3 = sc[0], sc[1], sc[2], sc[3]
                f0, f1, f2, f3 = free[0], free[1], free[2], free[3]
                i0, i1, i2, i3 = items[0], items[1], items[2], items[3]
                T0 = _one_split(raw[r0], lkey[r0], i0, lm[0], f0, o0)
                T1 = _one_split(raw[r1], lkey[r1], i1, lm[1], f1, o1)
                T2 = _one_split(raw[r2], lkey[r2], i2, lm[2], f2, o2)
                T3 = _one_split(raw[r3], lkey[r3], i3, lm[3], f3, o3)
                K0, K1, K2, K3 = tables[tix[r0]], tables[tix[r1]], tables[tix[r2]], tables[tix[r3]]
                p0, p1, p2, p3 = offs[r0], offs[r1], offs[r2], offs[r3]
                x0 = np.int64(0)
                x1 = np.int64(0)
                x2 = np.int64(0)
                x3 = np.int64(0)
                Tm = min(min(T0, T1), min(T2, T3))
                for t in range(Tm):
                    R = n - t
                    ir = inv[t]
                    k0 = np.int64(K0[t])
                    k1 = np.int64(K1[t])
                    k2 = np.int64(K2[t])
                    k3 = np.int64(K3[t])
                    x0, d0 = _digit(words, p0, k0, x0, R, ir)
                    x1, d1 = _digit(words, p1, k1, x1, R, ir)
                    x2, d2 = _digit(words, p2, k2, x2, R, ir)
                    x3, d3 = _digit(words, p3, k3, x3, R, ir)
                    p0 += k0
                    p1 += k1
                    p2 += k2
                    p3 += k3
                    o0[f0[d0]] = i0[t]
                    f0[d0] = f0[R - 1]
                    o1[f1[d1]] = i1[t]
                    f1[d1] = f1[R - 1]
                    o2[f2[d2]] = i2[t]
                    f2[d2] = f2[R - 1]
                    o3[f3[d3]] = i3[t]
                    f3[d3] = f3[R - 1]
                bad[r0] = _one_chain(words, n, K0, p0, x0, Tm, T0, inv, i0, f0, o0) != 0
                bad[r1] = _one_chain(words, n, K1, p1, x1, Tm, T1, inv, i1, f1, o1) != 0
                bad[r2] = _one_chain(words, n, K2, p2, x2, Tm, T2, inv, i2, f2, o2) != 0
                bad[r3] = _one_chain(words, n, K3, p3, x3, Tm, T3, inv, i3, f3, o3) != 0
                _one_fill(o0, lm[0])
                _one_fill(o1, lm[1])
                _one_fill(o2, lm[2])
                _one_fill(o3, lm[3])
                if not bad[r0] and not _put(o0, src, r0, out, stamp):
                    bad[r0] = 3
                if not bad[r1] and not _put(o1, src, r1, out, stamp):
                    bad[r1] = 3
                if not bad[r2] and not _put(o2, src, r2, out, stamp):
                    bad[r2] = 3
                if not bad[r3] and not _put(o3, src, r3, out, stamp):
                    bad[r3] = 3
                i += 4
            while i < hi:
                r0 = idx[i]
                o0 = sc[0]
                T0 = _one_split(raw[r0], lkey[r0], items[0], lm[0], free[0], o0)
                bad[r0] = _one_chain(words, n, tables[tix[r0]], offs[r0], np.int64(0), 0, T0, inv, items[0],
                                     free[0], o0) != 0
                _one_fill(o0, lm[0])
                if not bad[r0] and not _put(o0, src, r0, out, stamp):
                    bad[r0] = 3
                i += 1

    @_nb.njit(cache=True, parallel=True)
    def _dec_general(words, n, idx, raw, width, mode, p, tix, tables, offs, src, out, bad):
        """Any row (several repeated values, SEQ): classes from a stable sort of the row's keys."""
        rows = idx.shape[0]
        for b in _nb.prange((rows + BLOCK - 1) // BLOCK):
            free = np.empty(n, np.int64)
            slot_of = np.empty(n, np.int64)
            mark = np.zeros(n, np.bool_)
            srow = np.zeros(n, np.bool_)
            kbuf = np.empty(n, np.uint64)
            tmp = np.empty(n, np.int64)
            cstart = np.empty(n + 1, np.int64)
            used = np.zeros(n, np.int64)
            orow = np.empty(n, np.int64)
            stamp = np.full(n, -1, np.int64)
            for i in range(b * BLOCK, min(rows, (b + 1) * BLOCK)):
                r = idx[i]
                ordr = _sorted_classes(raw[r], width, kbuf)
                bg = 0
                ms = 0
                a = 0
                while a < n:  # runs of equal keys = classes; L: longest, then smallest member
                    e = a + 1
                    while e < n and kbuf[ordr[e]] == kbuf[ordr[a]]:
                        e += 1
                    srow[a] = True
                    for j in range(a + 1, e):
                        srow[j] = False
                    if e - a > ms or (e - a == ms and ordr[a] < ordr[bg]):
                        ms = e - a
                        bg = a
                    a = e
                K = tables[tix[r]]
                pos = offs[r]
                x = np.int64(0)
                if mode[r] == 1:  # SEQ: the class of every position
                    k = 0
                    for j in range(n):
                        if srow[j]:
                            cstart[k] = j
                            used[k] = 0
                            k += 1
                    cstart[k] = n
                    ik = 1.0 / k
                    for j in range(n):
                        kk = np.int64(K[j])
                        x, c = _digit(words, pos, kk, x, k, ik)
                        pos += kk
                        if cstart[c] + used[c] >= cstart[c + 1]:
                            bad[r] = 2
                            break
                        orow[j] = ordr[cstart[c] + used[c]]
                        used[c] += 1
                    if x != 0:
                        bad[r] = 1
                    if not bad[r] and not _put(orow, src, r, out, stamp):
                        bad[r] = 3
                    continue
                for j in range(n):
                    free[j] = j
                    mark[j] = False
                for j in range(bg, bg + ms):
                    mark[ordr[j]] = True
                t = 0
                for s in range(n):
                    if mark[s]:
                        continue
                    R = n - t
                    kk = np.int64(K[t])
                    x, d = _digit(words, pos, kk, x, R, 1.0 / R)
                    pos += kk
                    slot = free[d]
                    slot_of[s] = slot
                    orow[slot] = s
                    free[d] = free[R - 1]
                    t += 1
                if x != 0:
                    bad[r] = 1
                # other classes with several members: their slots in increasing order
                a = 0
                while a < n:
                    e = a + 1
                    while e < n and not srow[e]:
                        e += 1
                    if e - a > 1 and a != bg:
                        for j in range(a, e):
                            tmp[j - a] = slot_of[ordr[j]]
                        sl = np.sort(tmp[:e - a])
                        for j in range(a, e):
                            orow[sl[j - a]] = ordr[j]
                    a = e
                sl = np.sort(free[:ms])
                for j in range(ms):
                    orow[sl[j]] = ordr[bg + j]
                if not bad[r] and not _put(orow, src, r, out, stamp):
                    bad[r] = 3

    @_nb.njit(cache=True, inline="always")
    def _emit(out, edge, b, o, fb, lb, byte):
        if o == fb:
            edge[b, 0] |= byte
        elif o == lb:
            edge[b, 1] |= byte
        else:
            out[o] = byte

    @_nb.njit(cache=True, inline="always")
    def _emit32(out, edge, b, o, fb, lb, w):
        """The low 32 bits of ``w``, big-endian, at bytes o .. o+3."""
        for i in range(4):
            _emit(out, edge, b, o + i, fb, lb, np.uint8((w >> _u64(24 - 8 * i)) & _u64(0xFF)))

    @_nb.njit(cache=True, parallel=True)
    def _enc(perm, raw, width, ties, mode, p, lkey, tix, tables, offs, out, edge):
        """Every row's digits, the reverse pass of the state machine and the bits, written in
        parallel by blocks of rows; a block's first and last bytes (shared with its neighbours)
        go to ``edge`` and are merged afterwards."""
        rows, n = perm.shape
        for b in _nb.prange((rows + BLOCK - 1) // BLOCK):
            free = np.empty(n, np.int64)
            where = np.empty(n, np.int64)
            inv = np.empty(n, np.int64)
            items = np.empty(n + 1, np.int64)
            digits = np.empty(n, np.int64)
            chunks = np.empty(n, np.int64)
            cls = np.empty(n, np.int64)
            kbuf = np.empty(n, np.uint64)
            r0 = b * BLOCK
            r1 = min(rows, r0 + BLOCK)
            if offs[r1] == offs[r0]:
                continue
            fb = offs[r0] >> 3
            lb = (offs[r1] - 1) >> 3
            o = fb
            acc = _u64(0)
            nacc = offs[r0] & 7  # leading bits of the first byte belong to the previous block
            for r in range(r0, r1):
                K = tables[tix[r]]
                prow = perm[r]
                if mode[r] == 1:  # SEQ: digit j is the class of perm[j]
                    ordr = _sorted_classes(raw[r], width, kbuf)
                    c = -1
                    for i in range(n):
                        if i == 0 or kbuf[ordr[i]] != kbuf[ordr[i - 1]]:
                            c += 1
                        cls[ordr[i]] = c
                    for j in range(n):
                        digits[j] = cls[prow[j]]
                    T = n
                else:
                    T = 0
                    if ties:  # items: the sources outside L, increasing (branch free)
                        row = raw[r]
                        key = lkey[r]
                        for s in range(n):
                            items[T] = s
                            T += row[s] != key
                    else:
                        for s in range(1, n):
                            items[T] = s
                            T += 1
                    for j in range(n):
                        inv[prow[j]] = j
                        free[j] = j
                        where[j] = j
                    for t in range(T):
                        d = where[inv[items[t]]]
                        last = free[n - t - 1]
                        free[d] = last
                        where[last] = d
                        digits[t] = d
                x = np.int64(0)
                pr = p[r]
                for t in range(T - 1, -1, -1):
                    R = pr if mode[r] == 1 else n - t
                    x = x * R + digits[t]
                    kk = K[t]
                    chunks[t] = x & ((np.int64(1) << kk) - 1)
                    x >>= kk
                for t in range(T):
                    kk = np.int64(K[t])
                    v = _u64(chunks[t])
                    if kk > 24:  # acc holds nacc < 32 pending bits: push the high part first
                        acc = (acc << _u64(kk - 24)) | (v >> _u64(24))
                        nacc += kk - 24
                        v &= _u64(0xFFFFFF)
                        kk = 24
                        if nacc >= 32:
                            nacc -= 32
                            _emit32(out, edge, b, o, fb, lb, acc >> _u64(nacc))
                            o += 4
                            acc &= (_u64(1) << _u64(nacc)) - _u64(1)
                    acc = (acc << _u64(kk)) | v
                    nacc += kk
                    if nacc >= 32:
                        nacc -= 32
                        _emit32(out, edge, b, o, fb, lb, acc >> _u64(nacc))
                        o += 4
                        acc &= (_u64(1) << _u64(nacc)) - _u64(1)
            while nacc >= 8:
                nacc -= 8
                _emit(out, edge, b, o, fb, lb, np.uint8((acc >> _u64(nacc)) & _u64(0xFF)))
                o += 1
            if nacc:
                _emit(out, edge, b, o, fb, lb, np.uint8((acc << _u64(8 - nacc)) & _u64(0xFF)))

    @_nb.njit(cache=True)
    def _merge_edges(out, edge, offs, rows):
        for b in range((rows + BLOCK - 1) // BLOCK):
            r0 = b * BLOCK
            r1 = min(rows, r0 + BLOCK)
            if offs[r1] == offs[r0]:
                continue
            out[offs[r0] >> 3] |= edge[b, 0]
            out[(offs[r1] - 1) >> 3] |= edge[b, 1]


# ---- drivers -------------------------------------------------------------------------------
def _raw(values):
    """Bit patterns of rows x n values: equal patterns <=> equal order keys."""
    return np.ascontiguousarray(values).view(np.dtype(f"u{values.dtype.itemsize}"))


def _classes(raw):
    rows = raw.shape[0]
    m = np.empty(rows, np.int64)
    k = np.empty(rows, np.int64)
    nrep = np.empty(rows, np.int64)
    lkey = np.empty(rows, raw.dtype)
    tied = np.zeros(rows, np.bool_)
    _tied_rows(raw, tied)  # cheap, stops at a row's first repeat; rows without one are settled
    m.fill(1)
    k.fill(raw.shape[1])
    nrep.fill(0)
    if raw.shape[1]:
        lkey[:] = raw[:, 0]
    sub = np.flatnonzero(tied)
    if sub.size:
        _scan(raw, sub, m, k, nrep, lkey)
    return m, k, nrep, lkey


def _layout(n, m, k):
    """Per row: mode (PERM 0 / SEQ 1), p, index into the schedule tables, bits; the tables."""
    um, im = np.unique(m, return_inverse=True)
    uk, ik = np.unique(k, return_inverse=True)
    pb = np.empty(um.size, np.int64)
    sb = np.empty(uk.size, np.int64)
    _bits_of(0, n, um, pb)
    _bits_of(1, n, np.maximum(uk, 1), sb)
    seq = (k > 1) & (sb[ik.ravel()] < pb[im.ravel()])
    mode = seq.astype(np.int64)
    p = np.where(seq, k, m).astype(np.int64)
    uniq, tix = np.unique(mode * (n + 1) + p, return_inverse=True)
    tix = tix.ravel().astype(np.int64)
    tables = np.zeros((uniq.size, max(n, 1)), np.uint8)
    bits = np.empty(uniq.size, np.int64)
    for i, u in enumerate(uniq.tolist()):
        bits[i] = _schedule(u // (n + 1), n, u % (n + 1), tables[i])
    return mode, p, tix, tables, bits[tix]


def _offsets(rbits):
    offs = np.zeros(rbits.size + 1, np.int64)
    np.cumsum(rbits, out=offs[1:])
    return offs


def encode(perm, values):
    """(ties, payload) for the canonical ``perm`` of ``values`` (rows x n)."""
    rows, n = perm.shape
    raw = _raw(values.reshape(rows, n))
    m, k, nrep, lkey = _classes(raw)
    ties = bool(rows and n and nrep.any())
    if ties:
        mode, p, tix, tables, rbits = _layout(n, m, k)
    else:
        tables = np.zeros((1, max(n, 1)), np.uint8)
        rbits = np.full(rows, _schedule(0, n, 1, tables[0]), np.int64)
        mode, p, tix = np.zeros(rows, np.int64), np.ones(rows, np.int64), np.zeros(rows, np.int64)
    offs = _offsets(rbits)
    out = np.zeros((int(offs[-1]) + 7) // 8, np.uint8)
    edge = np.zeros(((rows + BLOCK - 1) // BLOCK, 2), np.uint8)
    if n:
        _enc(np.ascontiguousarray(perm, np.int64), raw, raw.dtype.itemsize * 8, ties, mode, p, lkey, tix, tables,
             offs, out, edge)
        _merge_edges(out, edge, offs, rows)
    return ties, out.tobytes()


def _words(payload):
    b = np.frombuffer(payload, np.uint8)
    padded = np.zeros(((len(b) + 7) // 8 + 1) * 8, np.uint8)
    padded[:len(b)] = b
    return padded.view(">u8").byteswap().view(np.uint64) if np.little_endian else padded.view(np.uint64)


def decode(params, payload, values) -> np.ndarray:
    """The permutation (int64 rows x n)."""
    src = _perm_jit.index_source(_raw(values))
    out = np.empty_like(src)
    _decode(params, payload, values, src, out)
    return out.astype(np.int64)


def decode_values(params, payload, values) -> np.ndarray:
    """The rearranged values themselves: the permutation is never materialized."""
    src = _perm_jit.read_only(_raw(values))
    out = np.empty(src.shape, src.dtype)
    _decode(params, payload, values, src, out)
    return out.view(values.dtype)


def _decode(params, payload, values, src, out) -> None:
    ties = _P.check_params(params, values)
    rows, n = values.shape
    bad = np.zeros(rows, np.int8)
    K = np.zeros(max(n, 1), np.uint8)
    rowbits = int(_schedule(0, n, 1, K))
    if ties and rows and n:
        raw = _raw(values)
        m, k, nrep, lkey = _classes(raw)
        mode, p, tix, tables, rbits = _layout(n, m, k)
        perm_rows = mode == 0
        distinct = np.flatnonzero(perm_rows & (nrep == 0))
        one = np.flatnonzero(perm_rows & (nrep == 1))
        general = np.flatnonzero(~perm_rows | (nrep > 1))
    else:
        rbits = np.full(rows, rowbits, np.int64)
        distinct, one, general = np.arange(rows), (), ()
    offs = _offsets(rbits)
    _P.check_size(payload, int(offs[-1]))
    words = _words(payload)
    if n:
        _dec_distinct(words, n, distinct, K, offs, src, out, bad)
    if len(one):
        _dec_one(words, n, one, raw, lkey, tix, tables, offs, src, out, bad)
    if len(general):
        _dec_general(words, n, general, raw, raw.dtype.itemsize * 8, mode, p, tix, tables, offs, src, out, bad)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        why = {1: "does not end in state 0", 2: "places too many copies of one value"}.get(
            int(bad[r]), "is not a permutation")
        raise FormatError(f"packed row {r} {why}: corrupt payload")
