"""Triton kernels for gpu.py's two hot loops: value generation (Philox + the value path) and the
``packed`` swap chains (one lane per row). They repeat gpu.py's torch operations in the same order
and are tested bit-equal to them, on the CPU through Triton's interpreter (``TRITON_INTERPRET=1``).

Exactness in compiled kernels: every launch passes ``enable_fp_fusion=False`` (no multiply-add
contraction); binary64 ``/`` and ``sqrt`` lower to
the correctly rounded ``div.rn.f64`` / ``sqrt.rn.f64`` (only binary32 division is approximate in
Triton); binary64 constants and the rule's
scale travel in a float64 tensor (Triton types Python float arguments as binary32).
"""
from __future__ import annotations

import os

import torch

from . import values as _v

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton is the optional [gpu] extra
    triton = None

BLOCK = 256
ROWS = 32  # rows (lanes) per program of the swap-chain kernels


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def available() -> bool:
    return triton is not None and (torch.cuda.is_available() or interpreted())


def _launch_opts():
    return {} if interpreted() else {"enable_fp_fusion": False}


if triton is not None:
    @triton.jit
    def _mulhilo(a, m):
        t1 = a * (m & 0xFFFF)
        t2 = a * (m >> 16)
        s = t1 + ((t2 & 0xFFFF) << 16)
        return (t2 >> 16) + (s >> 32), s & 0xFFFFFFFF

    @triton.jit
    def _philox(c0, c1, c2, c3, k0, k1):
        for r in tl.static_range(10):
            if r > 0:
                k0 = (k0 + 0x9E3779B9) & 0xFFFFFFFF
                k1 = (k1 + 0xBB67AE85) & 0xFFFFFFFF
            h0, l0 = _mulhilo(c0, 0xD2511F53)
            h1, l1 = _mulhilo(c2, 0xCD9E8D57)
            c0, c1, c2, c3 = h1 ^ c1 ^ k0, l1, h0 ^ c3 ^ k1, l0
        return c0, c1, c2, c3

    @triton.jit
    def _h8(x, cf, o: tl.constexpr):
        acc = x * 0.0 + tl.load(cf + o)
        for i in tl.static_range(1, 8):
            acc = acc * x
            acc = acc + tl.load(cf + o + i)
        return acc

    @triton.jit
    def _h12(x, cf, o: tl.constexpr):
        acc = x * 0.0 + tl.load(cf + o)
        for i in tl.static_range(1, 12):
            acc = acc * x
            acc = acc + tl.load(cf + o + i)
        return acc

    @triton.jit
    def _log(x, cf):
        bits = x.to(tl.int64, bitcast=True)
        e = (bits >> 52) - 1023
        m = ((bits & 0x000FFFFFFFFFFFFF) | (1023 << 52)).to(tl.float64, bitcast=True)
        big = m > tl.load(cf + 48)
        m = tl.where(big, m * 0.5, m)
        e = tl.where(big, e + 1, e).to(tl.float64)
        s = (m - 1.0) / (m + 1.0)
        return e * tl.load(cf + 49) + (s * 2.0) * _h12(s * s, cf, 50)

    @triton.jit
    def _ppnd16(p, cf):
        q = p - 0.5
        r = 0.180625 - q * q
        central = (_h8(r, cf, 0) * q) / _h8(r, cf, 8)
        t = tl.where(q <= 0.0, p, 1.0 - p)
        small = tl.abs(q) <= 0.425
        t = tl.sqrt(-_log(tl.where(small, p * 0.0 + 0.25, t), cf))
        near = t - 1.6
        far = t - 5.0
        tail = tl.where(t <= 5.0, _h8(near, cf, 16) / _h8(near, cf, 24), _h8(far, cf, 32) / _h8(far, cf, 40))
        tail = tl.where(q < 0.0, -tail, tail)
        return tl.where(small, central, tail)

    @triton.jit
    def _values_kernel(out, cf, ip, count, DIST: tl.constexpr, PRUNED: tl.constexpr, BLOCK: tl.constexpr):
        i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        live = i < count
        j = i + tl.load(ip + 0)
        k0 = tl.load(ip + 1)
        k1 = tl.load(ip + 2)
        s0 = tl.load(ip + 3)
        s1 = tl.load(ip + 4)
        prune = tl.load(ip + 5)
        scale = tl.load(cf + 62)
        blk = j >> 1
        z = j * 0
        w0, w1, w2, w3 = _philox(blk & 0xFFFFFFFF, blk >> 32, z + s0, z + s1, k0, k1)
        odd = (j & 1) == 1
        a = tl.where(odd, w2, w0)
        b = tl.where(odd, w3, w1)
        k = ((a >> 5) << 26) | (b >> 6)
        o = k * 2 + 1
        if DIST == 0:
            x = scale * ((o - (1 << 53)).to(tl.float64) * tl.load(cf + 63))
        elif DIST == 1:
            s = o - (1 << 53)
            zz = _ppnd16(((1 << 53) - tl.abs(s)).to(tl.float64) * tl.load(cf + 64), cf)
            x = scale * tl.where(s > 0, -zz, zz)
        else:
            x = z.to(tl.float64) * 0.0 + scale
        if PRUNED:
            mb = j >> 2
            m0, m1, m2, m3 = _philox(mb & 0xFFFFFFFF, mb >> 32, z + s0, z + (s1 | (1 << 30)), k0, k1)
            lane = j & 3
            mw = tl.where(lane == 0, m0, tl.where(lane == 1, m1, tl.where(lane == 2, m2, m3)))
            x = tl.where(mw < prune, 0.0, x)
        tl.store(out + i, x, mask=live)

    @triton.jit
    def _read24(units, pos, k):
        u = pos // 24
        off = pos - u * 24
        win = (tl.load(units + u) << 24) | tl.load(units + u + 1)
        return (win >> (48 - off - k)) & ((tl.full(pos.shape, 1, tl.int64) << k) - 1)

    @triton.jit
    def _step(units, pos, k, x, R):
        k1 = tl.minimum(k, 24)
        k2 = k - k1
        x = (x << k) | ((_read24(units, pos, k1) << k2) | _read24(units, pos + k1, k2))
        q = (x.to(tl.float64) * (1.0 / R.to(tl.float64))).to(tl.int64)
        d = x - q * R
        q = tl.where(d < 0, q - 1, tl.where(d >= R, q + 1, q))
        d = x - q * R
        return q, d

    @triton.jit
    def _chains_distinct(units, offs, K, free, out, bad, rows, n, ROWS: tl.constexpr):
        r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
        live = r < rows
        base = r * n
        for i in range(0, n):
            tl.store(free + base + i, (r * 0 + i).to(tl.int32), mask=live)
        pos = tl.load(offs + r, mask=live, other=0)
        x = r * 0
        for t in range(0, n - 1):
            k = tl.load(K + t + r * 0).to(tl.int64)
            k = tl.where(live, k, 0)
            R = r * 0 + (n - t)
            x, d = _step(units, pos, k, x, R)
            pos += k
            slot = tl.load(free + base + d, mask=live, other=0).to(tl.int64)
            tl.store(out + base + slot, r * 0 + t + 1, mask=live)
            last = tl.load(free + base + R - 1, mask=live, other=0)
            tl.store(free + base + d, last, mask=live)
        slot = tl.load(free + base, mask=live, other=0).to(tl.int64)
        tl.store(out + base + slot, r * 0, mask=live)
        tl.store(bad + r, (x != 0).to(tl.int8), mask=live)

    @triton.jit
    def _chains_general(units, offs, K, mode, p, T, items, lab_src, cst, big, m, free, out, bad,
                        rows, n, ROWS: tl.constexpr):
        r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
        live = r < rows
        base = r * n
        for i in range(0, n):
            tl.store(free + base + i, (r * 0 + i).to(tl.int32), mask=live)
        pos = tl.load(offs + r, mask=live, other=0)
        md = tl.load(mode + r, mask=live, other=0)
        pr = tl.load(p + r, mask=live, other=1)
        Tr = tl.load(T + r, mask=live, other=0)
        x = r * 0
        for t in range(0, n):
            act = live & (t < Tr)
            k = tl.load(K + base + t, mask=act, other=0).to(tl.int64)
            R = tl.where(md == 1, pr, n - t)
            R = tl.where(act, R, 1)
            q, d = _step(units, pos, k, x, R)
            x = tl.where(act, q, x)
            pos += k
            seq = act & (md == 1)
            prm = act & (md == 0)
            # SEQ: position t holds class d
            lab = tl.load(cst + base + d, mask=seq, other=0)
            tl.store(out + base + t, lab, mask=seq)
            # PERM: item t takes slot free[d]
            slot = tl.load(free + base + d, mask=prm, other=0).to(tl.int64)
            src = tl.load(items + base + t, mask=prm, other=0)
            tl.store(out + base + slot, tl.load(lab_src + base + src, mask=prm, other=0), mask=prm)
            last = tl.load(free + base + R - 1, mask=prm, other=0)
            tl.store(free + base + d, last, mask=prm)
        mm = tl.load(m + r, mask=live, other=0)
        bg = tl.load(big + r, mask=live, other=0)
        for i in range(0, n):
            fill = live & (md == 0) & (i < mm)
            slot = tl.load(free + base + i, mask=fill, other=0).to(tl.int64)
            tl.store(out + base + slot, bg, mask=fill)
        tl.store(bad + r, (x != 0).to(tl.int8), mask=live)


_CF = None


def _coefficients(device, scale):
    c = list(_v.A) + list(_v.B) + list(_v.C) + list(_v.D) + list(_v.E) + list(_v.F)
    c += [_v.SQRT2, _v.LN2] + list(_v.LOG_C) + [float(scale), _v.TWO_M53, _v.TWO_M54]
    return torch.tensor(c, dtype=torch.float64, device=device)


def generate(rule, count, dtype, device, start=0):
    """gpu.generate through the value kernel; the cast to ``dtype`` is gpu.cast."""
    from . import gpu
    out = torch.empty(count, dtype=torch.float64, device=device)
    if count == 0:
        return gpu.cast(out, dtype)
    ip = torch.tensor([start, rule.seed & 0xFFFFFFFF, rule.seed >> 32, rule.stream & 0xFFFFFFFF,
                       rule.stream >> 32, rule.prune], dtype=torch.int64, device=device)
    dist = {"uniform": 0, "normal": 1, "constant": 2}[rule.dist]
    _values_kernel[(triton.cdiv(count, BLOCK),)](out, _coefficients(device, rule.scale), ip, count, DIST=dist,
                                                 PRUNED=bool(rule.prune), BLOCK=BLOCK, **_launch_opts())
    return gpu.cast(out, dtype)


def chains_distinct(units, offs, n, K):
    rows = offs.shape[0]
    dev = offs.device
    free = torch.empty((rows, n), dtype=torch.int32, device=dev)
    out = torch.empty((rows, n), dtype=torch.int64, device=dev)
    bad = torch.zeros(rows, dtype=torch.int8, device=dev)
    _chains_distinct[(triton.cdiv(rows, ROWS),)](units, offs, K.contiguous(), free, out, bad, rows, n, ROWS=ROWS,
                                                 **_launch_opts())
    return out, bad.bool()


def chains_general(units, offs, n, K, mode, p, T, items, lab_src, cst, big, m):
    rows = offs.shape[0]
    dev = offs.device
    free = torch.empty((rows, n), dtype=torch.int32, device=dev)
    out = torch.empty((rows, n), dtype=torch.int64, device=dev)
    bad = torch.zeros(rows, dtype=torch.int8, device=dev)
    c = lambda a: a.contiguous().to(torch.int64)
    _chains_general[(triton.cdiv(rows, ROWS),)](units, c(offs), c(K), c(mode), c(p), c(T), c(items), c(lab_src),
                                                c(cst), c(big), c(m), free, out, bad, rows, n, ROWS=ROWS,
                                                **_launch_opts())
    return out, bad.bool()
