"""Compiled loops of the ``packed`` codec (numba). They repeat packed.py's reference operation for
operation and are tested equal to it; nothing here defines behaviour of its own.

Rows are independent, so both directions run in parallel over blocks of rows; the bit writer of
the encoder is the one sequential pass.
"""
from __future__ import annotations

import numpy as np

from ..dtypes import order_keys
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

    @_nb.njit(cache=True)
    def _bitlen(v):
        b = 0
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
    def _dec_distinct(words, n, idx, K, offs, out, bad):
        """Rows of distinct values (L = {0}); four rows at a time share one schedule, so their
        independent division chains overlap."""
        inv = np.empty(n, np.float64)
        for t in range(n):
            inv[t] = 1.0 / (n - t)
        rows = idx.shape[0]
        for b in _nb.prange((rows + BLOCK - 1) // BLOCK):
            f0 = np.empty(n, np.int32)
            f1 = np.empty(n, np.int32)
            f2 = np.empty(n, np.int32)
            f3 = np.empty(n, np.int32)
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
                    out[r0, f0[d0]] = t + 1
                    f0[d0] = f0[R - 1]
                    out[r1, f1[d1]] = t + 1
                    f1[d1] = f1[R - 1]
                    out[r2, f2[d2]] = t + 1
                    f2[d2] = f2[R - 1]
                    out[r3, f3[d3]] = t + 1
                    f3[d3] = f3[R - 1]
                out[r0, f0[0]] = 0
                out[r1, f1[0]] = 0
                out[r2, f2[0]] = 0
                out[r3, f3[0]] = 0
                bad[r0] = x0 != 0
                bad[r1] = x1 != 0
                bad[r2] = x2 != 0
                bad[r3] = x3 != 0
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
                    out[r0, f0[d0]] = t + 1
                    f0[d0] = f0[R - 1]
                out[r0, f0[0]] = 0
                bad[r] = x0 != 0
                r += 1

    @_nb.njit(cache=True, parallel=True)
    def _dec_general(words, n, rows, order, start, mode, p, big, m, offs, tix, tables, out, bad):
        for b in _nb.prange((rows + BLOCK - 1) // BLOCK):
            free = np.empty(n, np.int32)
            slot_of = np.empty(n, np.int32)
            mark = np.zeros(n, np.bool_)
            tmp = np.empty(n, np.int64)
            cstart = np.empty(n + 1, np.int64)
            used = np.zeros(n, np.int64)
            for r in range(b * BLOCK, min(rows, (b + 1) * BLOCK)):
                K = tables[tix[r]]
                pos = offs[r]
                x = np.int64(0)
                orow = out[r]
                ordr = order[r]
                srow = start[r]
                if mode[r] == 1:  # SEQ: the class of every position
                    k = 0
                    for i in range(n):
                        if srow[i]:
                            cstart[k] = i
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
                    continue
                ms = m[r]
                bg = big[r]
                for i in range(n):
                    free[i] = i
                    mark[i] = False
                for i in range(bg, bg + ms):
                    mark[ordr[i]] = True
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
                        for i in range(a, e):
                            tmp[i - a] = slot_of[ordr[i]]
                        sl = np.sort(tmp[:e - a])
                        for i in range(a, e):
                            orow[sl[i - a]] = ordr[i]
                    a = e
                sl = np.sort(free[:ms])
                for i in range(ms):
                    orow[sl[i]] = ordr[bg + i]

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
    def _enc_rows(perm, n, rows, order, start, mode, p, big, m, tix, tables, chunks):
        """Per row: the chunk value read before every digit (reverse pass of the state machine)."""
        for b in _nb.prange((rows + BLOCK - 1) // BLOCK):
            free = np.empty(n, np.int64)
            where = np.empty(n, np.int64)
            inv = np.empty(n, np.int64)
            mark = np.zeros(n, np.bool_)
            digits = np.empty(n, np.int64)
            cls = np.empty(n, np.int64)
            for r in range(b * BLOCK, min(rows, (b + 1) * BLOCK)):
                K = tables[tix[r]]
                prow = perm[r]
                if mode[r] == 1:
                    c = -1
                    for i in range(n):
                        if start[r, i]:
                            c += 1
                        cls[order[r, i]] = c
                    for j in range(n):
                        digits[j] = cls[prow[j]]
                    T = n
                else:
                    for j in range(n):
                        inv[prow[j]] = j
                        free[j] = j
                        where[j] = j
                        mark[j] = False
                    if order.shape[0] == 0:
                        mark[0] = True
                    else:
                        for i in range(big[r], big[r] + m[r]):
                            mark[order[r, i]] = True
                    t = 0
                    for s in range(n):
                        if mark[s]:
                            continue
                        slot = inv[s]
                        d = where[slot]
                        last = free[n - t - 1]
                        free[d] = last
                        where[last] = d
                        digits[t] = d
                        t += 1
                    T = t
                x = np.int64(0)
                for t in range(T - 1, -1, -1):
                    R = p[r] if mode[r] == 1 else n - t
                    x = x * R + digits[t]
                    k = K[t]
                    chunks[r, t] = x & ((np.int64(1) << k) - 1)
                    x >>= k

    @_nb.njit(cache=True)
    def _write(chunks, tix, tables, T, out):
        acc = _u64(0)
        nacc = 0
        o = 0
        for r in range(chunks.shape[0]):
            K = tables[tix[r]]
            for t in range(T[r]):
                k = K[t]
                if k == 0:
                    continue
                v = _u64(chunks[r, t])
                # acc holds nacc < 8 pending bits; k <= 38 so acc never exceeds 46 bits
                acc = (acc << _u64(k)) | v
                nacc += k
                while nacc >= 8:
                    nacc -= 8
                    out[o] = np.uint8((acc >> _u64(nacc)) & _u64(0xFF))
                    o += 1
                acc &= (_u64(1) << _u64(nacc)) - _u64(1)
        if nacc:
            out[o] = np.uint8((acc << _u64(8 - nacc)) & _u64(0xFF))


# ---- drivers -------------------------------------------------------------------------------
def _tables(n, keys_modes):
    """Distinct (mode, p) -> row of a uint8 table, and each one's bits."""
    uniq = sorted(set(keys_modes))
    tables = np.zeros((len(uniq), n), np.uint8)
    bits = np.empty(len(uniq), np.int64)
    for i, (mode, p) in enumerate(uniq):
        bits[i] = _schedule(mode, n, p, tables[i])
    return {u: i for i, u in enumerate(uniq)}, tables, bits


def _layout(keys, ties):
    """Everything the row loops need: order, start, per-row mode, p, big, m, table index, tables,
    row bits."""
    rows, n = keys.shape
    if not ties:
        index, tables, bits = _tables(n, [(0, 1)])
        one = np.ones(rows, np.int64)
        return (np.empty((0, n), np.int64), np.empty((0, n), np.bool_), np.zeros(rows, np.int64), one,
                np.zeros(rows, np.int64), one, np.zeros(rows, np.int64), tables, np.full(rows, bits[0]))
    order, start, big, m, k = _P.classes(keys)
    # PERM (largest class m) or SEQ (k classes) per row: whichever takes fewer bits
    scratch = np.zeros(n, np.uint8)
    perm_bits = {int(v): _schedule(0, n, int(v), scratch) for v in np.unique(m)}
    seq_bits = {int(v): _schedule(1, n, int(v), scratch) for v in np.unique(k) if v > 1}
    choose_seq = np.array([kk > 1 and seq_bits[kk] < perm_bits[mm] for mm, kk in zip(m.tolist(), k.tolist())], bool)
    modes = choose_seq.astype(np.int64)
    p = np.where(choose_seq, k, m).astype(np.int64)
    index, tables, bits = _tables(n, list(zip(modes.tolist(), p.tolist())))
    tix = np.array([index[(a, b)] for a, b in zip(modes.tolist(), p.tolist())], np.int64)
    return order, start, modes, p, big, m, tix, tables, bits[tix]


def encode(perm, keys, ties) -> bytes:
    rows, n = perm.shape
    order, start, modes, p, big, m, tix, tables, rbits = _layout(keys, ties)
    T = np.where(modes == 1, n, n - m)
    chunks = np.zeros((rows, max(n, 1)), np.int64)
    _enc_rows(np.ascontiguousarray(perm, np.int64), n, rows, order, start, modes, p, big, m, tix, tables, chunks)
    total = int(rbits.sum())
    out = np.zeros((total + 7) // 8, np.uint8)
    _write(chunks, tix, tables, T, out)
    return out.tobytes()


def _words(payload):
    b = np.frombuffer(payload, np.uint8)
    padded = np.zeros(((len(b) + 7) // 8 + 1) * 8, np.uint8)
    padded[:len(b)] = b
    return padded.view(">u8").byteswap().view(np.uint64) if np.little_endian else padded.view(np.uint64)


def decode(params, payload, values) -> np.ndarray:
    ties = _P.check_params(params, values)
    rows, n = values.shape
    out = np.empty((rows, n), np.int64)
    bad = np.zeros(rows, np.int8)
    K = np.zeros(max(n, 1), np.uint8)
    rowbits = int(_schedule(0, n, 1, K))
    bits = np.full(rows, rowbits, np.int64)
    tied = np.zeros(rows, np.bool_)
    if ties:  # only rows that repeat a value need their classes
        raw = values.view(np.dtype(f"u{values.dtype.itemsize}"))  # equal keys <=> equal bit patterns
        _tied_rows(np.ascontiguousarray(raw), tied)
        sub = np.flatnonzero(tied)
        if sub.size:
            order, start, modes, p, big, m, tix, tables, rbits = _layout(order_keys(values[sub]), True)
            bits[sub] = rbits
    offs = np.zeros(rows, np.int64)
    np.cumsum(bits[:-1], out=offs[1:])
    _P.check_size(payload, int(bits.sum()))
    words = _words(payload)
    if n:
        _dec_distinct(words, n, np.flatnonzero(~tied), K, offs, out, bad)
    if tied.any():
        part = np.empty((sub.size, n), np.int64)
        pbad = np.zeros(sub.size, np.int8)
        _dec_general(words, n, sub.size, order, start, modes, p, big, m, offs[sub], tix, tables, part, pbad)
        out[sub] = part
        bad[sub] = pbad
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        why = "does not end in state 0" if bad[r] == 1 else "places too many copies of one value"
        raise FormatError(f"packed row {r} {why}: corrupt payload")
    return out
