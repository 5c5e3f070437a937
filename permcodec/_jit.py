"""Compiled generator (numba): Philox words -> values -> the tensor's dtype, in one pass.

Everything here mirrors the numpy reference in values.py and philox.py and is tested bit-equal to
it (tests/test_generator.py); nothing here defines behaviour of its own. What differs is layout:

* Elements are made in tiles of ``TILE`` (128): the tile's 64 value blocks (and 32 mask blocks)
  are computed lane by lane in straight-line code, so LLVM turns the lane loop into AVX2 code
  (the 32x32->64-bit multiplies become ``vpmuludq``, four blocks per instruction).
* Every step of a tile is its own simple loop over a small buffer that stays in L1: value words
  -> binary64, the normal tails (gathered, computed vectorized, scattered back), the pruning
  mask, and the cast to the output dtype (binary32, then binary16 or bfloat16 by integer
  round-to-nearest-even, exactly as values.cast does).
* Word -> binary64 uses only exact steps: ``k = a' * 2**26 + b'`` with a' = a >> 5 and b' = b >> 6
  converted from int32 (exact), ``u = k * 2**-52 + (2**-53 - 1)`` is exactly ``(2k+1-2**53) * 2**-53``
  (it is representable, so the rounded sum is exact), and the normal rule's
  ``p = (1 - |u|) * 0.5`` is exactly ``(2**53 - |s|) * 2**-54``. From there on the operations are
  the reference's, in its order: no fast-math, so no fused multiply-add and no reassociation.
  ``error_model="numpy"`` only drops Python's zero-division check (which blocks vectorization);
  no division here can have a zero divisor.
* Tiles are split among numba threads; each element's value depends only on its index, so the
  thread count never changes a bit.
"""
from __future__ import annotations

import numpy as np

from . import philox as _px
from . import values as _v

try:  # numba is a declared dependency, but the reference paths work without it
    import numba as _nb
except ImportError:  # pragma: no cover - exercised only where numba is missing
    _nb = None

_DIST = {"uniform": 0, "normal": 1, "constant": 2}
# output dtype -> (mode, numpy storage of the result)
_MODE = {"float64": (0, np.float64), "float32": (1, np.float32), "float16": (2, np.uint16),
         "bfloat16": (3, np.uint16)}
VB = 64              # value blocks per tile
TILE = 2 * VB        # elements per tile
MB = TILE // 4       # mask blocks per tile
SERIAL_BELOW = 1 << 16   # counts below this are made on the calling thread
CHUNK = 1 << 16          # elements per parallel work item (about)


def available() -> bool:
    """True where compiled loops run (numba installed and not disabled by NUMBA_DISABLE_JIT)."""
    return _nb is not None and not _nb.config.DISABLE_JIT


def round_keys(seed: int) -> tuple:
    """The ten Philox round keys ``(k0, k1)`` of ``seed``, flattened: 20 uint64 words."""
    k0, k1 = seed & _px.MASK32, seed >> 32
    out = []
    for _ in range(_px.ROUNDS):
        out += [np.uint64(k0), np.uint64(k1)]
        k0, k1 = (k0 + _px.W0) & _px.MASK32, (k1 + _px.W1) & _px.MASK32
    return tuple(out)


if _nb is not None:
    _jit = _nb.njit(cache=True, error_model="numpy")
    _inline = _nb.njit(cache=True, error_model="numpy", inline="always")

    M32 = np.uint64(0xFFFFFFFF)
    U32 = np.uint64(32)
    PM0 = np.uint64(_px.M0)
    PM1 = np.uint64(_px.M1)
    TWO26 = 2.0 ** 26
    TWO_M52 = 2.0 ** -52
    UOFF = 2.0 ** -53 - 1.0   # exact
    _A, _B, _C, _D, _E, _F = (tuple(c) for c in (_v.A, _v.B, _v.C, _v.D, _v.E, _v.F))
    _LOGC = tuple(_v.LOG_C)
    SQRT2 = _v.SQRT2
    LN2 = _v.LN2

    @_inline
    def _round(x0, x1, x2, x3, k0, k1):
        p0 = (x0 & M32) * PM0
        p1 = (x2 & M32) * PM1
        return (p1 >> U32) ^ x1 ^ k0, p1 & M32, (p0 >> U32) ^ x3 ^ k1, p0 & M32

    @_inline
    def _philox(i, s0, s1, ks):
        """Block ``i`` (uint64) of the stream with counter words 2, 3 = ``s0``, ``s1``."""
        x0, x1, x2, x3 = i & M32, i >> U32, s0, s1
        x0, x1, x2, x3 = _round(x0, x1, x2, x3, ks[0], ks[1])
        x0, x1, x2, x3 = _round(x0, x1, x2, x3, ks[2], ks[3])
        x0, x1, x2, x3 = _round(x0, x1, x2, x3, ks[4], ks[5])
        x0, x1, x2, x3 = _round(x0, x1, x2, x3, ks[6], ks[7])
        x0, x1, x2, x3 = _round(x0, x1, x2, x3, ks[8], ks[9])
        x0, x1, x2, x3 = _round(x0, x1, x2, x3, ks[10], ks[11])
        x0, x1, x2, x3 = _round(x0, x1, x2, x3, ks[12], ks[13])
        x0, x1, x2, x3 = _round(x0, x1, x2, x3, ks[14], ks[15])
        x0, x1, x2, x3 = _round(x0, x1, x2, x3, ks[16], ks[17])
        x0, x1, x2, x3 = _round(x0, x1, x2, x3, ks[18], ks[19])
        return x0, x1, x2, x3

    @_inline
    def _unit(a, b):
        """``(2k + 1 - 2**53) * 2**-53`` for value words ``a``, ``b`` (exact)."""
        hi = np.float64(np.int32(a >> np.uint64(5)))
        lo = np.float64(np.int32(b >> np.uint64(6)))
        return (hi * TWO26 + lo) * TWO_M52 + UOFF

    @_inline
    def _h8(c, x):
        acc = c[0]
        acc = acc * x + c[1]
        acc = acc * x + c[2]
        acc = acc * x + c[3]
        acc = acc * x + c[4]
        acc = acc * x + c[5]
        acc = acc * x + c[6]
        acc = acc * x + c[7]
        return acc

    @_inline
    def _h12(c, x):
        acc = c[0]
        acc = acc * x + c[1]
        acc = acc * x + c[2]
        acc = acc * x + c[3]
        acc = acc * x + c[4]
        acc = acc * x + c[5]
        acc = acc * x + c[6]
        acc = acc * x + c[7]
        acc = acc * x + c[8]
        acc = acc * x + c[9]
        acc = acc * x + c[10]
        acc = acc * x + c[11]
        return acc

    @_jit
    def _tile_uniform(t, s0, s1, ks, scale, buf):
        b0 = np.uint64(t * VB)
        for lane in range(VB):
            w0, w1, w2, w3 = _philox(b0 + np.uint64(lane), s0, s1, ks)
            buf[2 * lane] = scale * _unit(w0, w1)
            buf[2 * lane + 1] = scale * _unit(w2, w3)

    @_inline
    def _central(p):
        q = p - 0.5
        r = 0.180625 - q * q
        return (_h8(_A, r) * q) / _h8(_B, r)

    @_jit
    def _tile_normal(t, s0, s1, ks, scale, buf, ub, pb, idx, tp, tq, ti):
        b0 = np.uint64(t * VB)
        for lane in range(VB):   # u = s * 2**-53, p = (2**53 - |s|) * 2**-54, central ppnd16
            w0, w1, w2, w3 = _philox(b0 + np.uint64(lane), s0, s1, ks)
            u = _unit(w0, w1)
            p = (1.0 - abs(u)) * 0.5
            ub[2 * lane] = u
            pb[2 * lane] = p
            buf[2 * lane] = _central(p)
            u = _unit(w2, w3)
            p = (1.0 - abs(u)) * 0.5
            ub[2 * lane + 1] = u
            pb[2 * lane + 1] = p
            buf[2 * lane + 1] = _central(p)
        n = 0                    # the tails, |q| > 0.425 (about 15%): gather ...
        for i in range(TILE):
            p = pb[i]
            idx[n] = i
            tp[n] = p
            n += abs(p - 0.5) > 0.425
        for j in range(n):      # ... t = p or 1 - p, then log(t) as values.log_ does ...
            p = tp[j]
            tq[j] = p if p - 0.5 <= 0.0 else 1.0 - p
        tb = tq.view(np.int64)
        for j in range(n):
            bits = tb[j]
            ti[j] = (bits & 0x000FFFFFFFFFFFFF) | (1023 << 52)
            tb[j] = bits >> 52
        mf = ti.view(np.float64)
        for j in range(n):
            m = mf[j]
            e = np.float64(np.int32(tb[j] - 1023))
            big = m > SQRT2
            m = m * 0.5 if big else m
            e = e + 1.0 if big else e
            s = (m - 1.0) / (m + 1.0)
            r = np.sqrt(-(e * LN2 + (s * 2.0) * _h12(_LOGC, s * s)))
            mf[j] = r
            r = r - 1.6
            tq[j] = _h8(_C, r) / _h8(_D, r)
        for j in range(n):      # ... the far tail (t > 5, p < 1.4e-11) is rare: scalar
            if mf[j] > 5.0:
                r = mf[j] - 5.0
                tq[j] = _h8(_E, r) / _h8(_F, r)
        for j in range(n):      # ... and scatter back
            x = tq[j]
            buf[idx[j]] = -x if tp[j] - 0.5 < 0.0 else x
        for i in range(TILE):   # the upper half by symmetry, then the scale
            z = buf[i]
            buf[i] = scale * (-z if ub[i] > 0.0 else z)

    @_jit
    def _tile_mask(t, s0, s1m, ks, prune, buf, mw):
        b0 = np.uint64(t * MB)
        for lane in range(MB):
            w0, w1, w2, w3 = _philox(b0 + np.uint64(lane), s0, s1m, ks)
            mw[4 * lane] = np.int64(w0)
            mw[4 * lane + 1] = np.int64(w1)
            mw[4 * lane + 2] = np.int64(w2)
            mw[4 * lane + 3] = np.int64(w3)
        for i in range(TILE):
            buf[i] = 0.0 if mw[i] < prune else buf[i]

    @_inline
    def _f16_bits(x):
        """binary32 bits -> binary16 bits, round to nearest even (finite and infinite inputs)."""
        sign = (x >> np.uint32(16)) & np.uint32(0x8000)
        ax = x & np.uint32(0x7FFFFFFF)
        b = ax - np.uint32(0x38000000)            # normal: rebias the exponent, round 13 bits off
        normal = (b + np.uint32(0xFFF) + ((b >> np.uint32(13)) & np.uint32(1))) >> np.uint32(13)
        e = np.int32(ax >> np.uint32(23))         # subnormal: m * 2**(e - 126) units of 2**-24
        m = (ax & np.uint32(0x7FFFFF)) | np.uint32(0x800000)
        sh = np.uint32(min(max(126 - e, 1), 31))
        q = m >> sh
        rem = m & ((np.uint32(1) << sh) - np.uint32(1))
        half = np.uint32(1) << (sh - np.uint32(1))
        sub = q + np.uint32((rem > half) | ((rem == half) & ((q & np.uint32(1)) == np.uint32(1))))
        h = sub if ax < np.uint32(0x38800000) else normal
        h = np.uint32(0x7C00) if ax >= np.uint32(0x477FF000) else h
        return np.uint16(sign | h)

    @_jit
    def _store(buf, b32, out, o, lo, hi, mode):
        """``out[o + i - lo] = cast(buf[i])`` for i in [lo, hi) (values.cast, fused)."""
        if mode == 0:
            for i in range(lo, hi):
                out[o + i - lo] = buf[i]
        elif mode == 1:
            for i in range(lo, hi):
                out[o + i - lo] = np.float32(buf[i])
        else:
            for i in range(lo, hi):
                b32[i] = np.float32(buf[i])
            u = b32.view(np.uint32)
            if mode == 3:
                for i in range(lo, hi):
                    b = u[i]
                    out[o + i - lo] = np.uint16((b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1)))
                                                >> np.uint32(16))
            else:
                for i in range(lo, hi):
                    out[o + i - lo] = _f16_bits(u[i])

    @_jit
    def _tiles(t0, t1, start, end, ks, s0, s1, dist, scale, prune, mode, out):
        """Tiles ``t0 .. t1-1`` (absolute), clipped to elements [start, end), into ``out``."""
        buf = np.empty(TILE, np.float64)
        b32 = np.empty(TILE, np.float32)
        mw = np.empty(TILE, np.int64)
        ub = np.empty(TILE, np.float64)
        pb = np.empty(TILE, np.float64)
        idx = np.empty(TILE, np.int64)
        tp = np.empty(TILE, np.float64)
        tq = np.empty(TILE, np.float64)
        ti = np.empty(TILE, np.int64)
        s1m = s1 | np.uint64(_px.MASK_DOMAIN << 30)
        for t in range(t0, t1):
            if dist == 0:
                _tile_uniform(t, s0, s1, ks, scale, buf)
            elif dist == 1:
                _tile_normal(t, s0, s1, ks, scale, buf, ub, pb, idx, tp, tq, ti)
            else:
                buf[:] = scale
            if prune != 0:
                _tile_mask(t, s0, s1m, ks, prune, buf, mw)
            lo = max(start - t * TILE, 0)
            hi = min(end - t * TILE, TILE)
            _store(buf, b32, out, t * TILE + lo - start, lo, hi, mode)

    @_nb.njit(cache=True, parallel=True)
    def _tiles_parallel(chunks, start, end, ks, s0, s1, dist, scale, prune, mode, out):
        tf = start // TILE
        n = (end + TILE - 1) // TILE - tf
        for c in _nb.prange(chunks):
            _tiles(tf + c * n // chunks, tf + (c + 1) * n // chunks, start, end, ks, s0, s1, dist, scale,
                   prune, mode, out)


def generate(seed: int, stream: int, start: int, count: int, dist: str, scale: float, prune: int,
             dtype: str) -> np.ndarray:
    """Elements ``start .. start+count-1`` of a rule, already in ``dtype`` (values.generate's bits)."""
    mode, storage = _MODE[dtype]
    out = np.empty(count, storage)
    if count:
        args = (np.int64(start), np.int64(start + count), round_keys(seed), np.uint64(stream & _px.MASK32),
                np.uint64(stream >> 32), _DIST[dist], np.float64(scale), np.int64(prune), mode, out)
        if count < SERIAL_BELOW:
            _tiles(np.int64(start // TILE), np.int64((start + count + TILE - 1) // TILE), *args)
        else:
            _tiles_parallel(np.int64(min(count // CHUNK, 64 * _nb.get_num_threads())), *args)
    return out.view(np.float16) if dtype == "float16" else out


def values(seed: int, stream: int, start: int, count: int, dist: str, scale: float, prune: int) -> np.ndarray:
    """binary64 values (values.from_words' bits) of elements ``start .. start+count-1``."""
    return generate(seed, stream, start, count, dist, scale, prune, "float64")
