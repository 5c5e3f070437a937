"""Compiled hot loops (numba). Each function mirrors a numpy reference elsewhere, operation for
operation, and is tested bit-equal to it; nothing here defines behaviour of its own.

numba emits plain IEEE multiplies and adds (no fast-math, so no fused multiply-add), which keeps
the binary64 value path identical to the reference.
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


def available() -> bool:
    """True where compiled loops run (numba installed and not disabled by NUMBA_DISABLE_JIT)."""
    return _nb is not None and not _nb.config.DISABLE_JIT


if _nb is not None:
    _A, _B, _C, _D, _E, _F = (np.array(c, np.float64) for c in (_v.A, _v.B, _v.C, _v.D, _v.E, _v.F))
    _LOGC = np.array(_v.LOG_C, np.float64)

    @_nb.njit(cache=True, inline="always")
    def _mulhilo(a, b):
        p = np.uint64(a) * np.uint64(b)
        return p >> np.uint64(32), p & np.uint64(0xFFFFFFFF)

    @_nb.njit(cache=True)
    def _block(c0, c1, c2, c3, k0, k1):
        m32 = np.uint64(0xFFFFFFFF)
        for r in range(10):
            if r:
                k0 = (k0 + np.uint64(_px.W0)) & m32
                k1 = (k1 + np.uint64(_px.W1)) & m32
            h0, l0 = _mulhilo(c0, _px.M0)
            h1, l1 = _mulhilo(c2, _px.M1)
            c0, c1, c2, c3 = h1 ^ c1 ^ k0, l1, h0 ^ c3 ^ k1, l0
        return c0, c1, c2, c3

    @_nb.njit(cache=True)
    def _horner(c, x):
        acc = c[0]
        for i in range(1, c.shape[0]):
            acc = acc * x + c[i]
        return acc

    @_nb.njit(cache=True)
    def _log(x):
        bits = _f2i(x)
        e = (bits >> 52) - 1023
        m = _i2f((bits & 0x000FFFFFFFFFFFFF) | (1023 << 52))
        if m > _v.SQRT2:
            m = m * 0.5
            e += 1
        s = (m - 1.0) / (m + 1.0)
        return np.float64(e) * _v.LN2 + (s * 2.0) * _horner(_LOGC, s * s)

    @_nb.njit(cache=True)
    def _f2i(x):
        a = np.empty(1, np.float64)
        a[0] = x
        return a.view(np.int64)[0]

    @_nb.njit(cache=True)
    def _i2f(i):
        a = np.empty(1, np.int64)
        a[0] = i
        return a.view(np.float64)[0]

    @_nb.njit(cache=True)
    def _ppnd16(p):
        q = p - 0.5
        if abs(q) <= 0.425:
            r = 0.180625 - q * q
            return (_horner(_A, r) * q) / _horner(_B, r)
        t = p if q <= 0.0 else 1.0 - p
        t = np.sqrt(-_log(t))
        if t <= 5.0:
            t = t - 1.6
            x = _horner(_C, t) / _horner(_D, t)
        else:
            t = t - 5.0
            x = _horner(_E, t) / _horner(_F, t)
        return -x if q < 0.0 else x

    @_nb.njit(cache=True)
    def _value(dist, scale, wa, wb):
        k = np.int64((wa >> np.uint64(5)) << np.uint64(26) | (wb >> np.uint64(6)))
        odd = k * 2 + 1
        if dist == 0:
            return scale * (np.float64(odd - (1 << 53)) * _v.TWO_M53)
        s = odd - (1 << 53)
        z = _ppnd16(np.float64((1 << 53) - abs(s)) * _v.TWO_M54)
        return scale * (-z if s > 0 else z)

    @_nb.njit(cache=True, parallel=True)
    def _values(seed, stream, start, count, dist, scale, prune, out):
        m32 = np.uint64(0xFFFFFFFF)
        k0 = np.uint64(seed) & m32
        k1 = np.uint64(seed) >> np.uint64(32)
        s0 = np.uint64(stream) & m32
        s1 = np.uint64(stream) >> np.uint64(32)
        end = start + count
        if dist == 2:
            out[:] = scale
        else:
            first = start >> 1
            for b in _nb.prange(((end + 1) >> 1) - first):
                bi = np.uint64(first + b)
                w0, w1, w2, w3 = _block(bi & m32, bi >> np.uint64(32), s0, s1, k0, k1)
                j = (first + b) * 2
                if j >= start:
                    out[j - start] = _value(dist, scale, w0, w1)
                if j + 1 < end:
                    out[j + 1 - start] = _value(dist, scale, w2, w3)
        if prune != 0:
            s1m = s1 | np.uint64(1 << 30)
            p = np.uint64(prune)
            first = start >> 2
            for b in _nb.prange(((end + 3) >> 2) - first):
                bi = np.uint64(first + b)
                w = _block(bi & m32, bi >> np.uint64(32), s0, s1m, k0, k1)
                j0 = (first + b) * 4
                for lane in range(4):
                    j = j0 + lane
                    if j >= start and j < end and w[lane] < p:
                        out[j - start] = 0.0


def values(seed: int, stream: int, start: int, count: int, dist: str, scale: float, prune: int) -> np.ndarray:
    out = np.empty(count, np.float64)
    _values(np.uint64(seed), np.uint64(stream), np.int64(start), np.int64(count), _DIST[dist],
            np.float64(scale), np.int64(prune), out)
    return out
