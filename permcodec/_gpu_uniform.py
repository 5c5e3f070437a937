"""``uniform`` decoded on a device: one Triton program per segment (formats/codecs/uniform.md).

The lanes of a segment share one stream-word pointer and a row's model changes after every
symbol, so a segment is sequential; segments are independent, and uniform.encode(gpu=True) makes
many of them within +0.1% of the information limit. The row tables (singleton pool, tie classes
by first source) are built with torch sorts; the kernel is §3-§4 symbol by symbol. Tested
bit-equal to uniform.decode_reference (tests/test_gpu_uniform.py); ``model`` stays on the CPU.
"""
from __future__ import annotations

import numpy as np
import torch

from ._gpu_triton import _launch_opts, triton
from .codecs import _rans, uniform
from .errors import FormatError

if triton is not None:
    import triton.language as tl

OPTS = _launch_opts()   # fixed when the kernel is defined: TRITON_INTERPRET is read then too


def row_tables(keys: torch.Tensor):
    """Per row (all int64, padded to n): the pool (singleton sources ascending) and its size; the
    tie sources grouped by class (classes by first source, sources ascending), each class's
    offset into them and count."""
    rows, n = keys.shape
    dev = keys.device
    ar = torch.arange(n, device=dev).expand(rows, n)
    order = torch.sort(keys, dim=1, stable=True).indices
    sk = torch.gather(keys, 1, order)
    start = torch.ones_like(sk, dtype=torch.bool)
    start[:, 1:] = sk[:, 1:] != sk[:, :-1]
    gid = (torch.cumsum(start.to(torch.int64), 1) - 1 + torch.arange(rows, device=dev)[:, None] * n).reshape(-1)
    size = torch.bincount(gid, minlength=rows * n)[gid].reshape(rows, n)
    first = order.reshape(-1)[torch.nonzero(start.reshape(-1)).squeeze(1)]
    first_of = first[torch.cumsum(start.reshape(-1).to(torch.int64), 0) - 1].reshape(rows, n)
    single = torch.zeros(rows, n, dtype=torch.bool, device=dev).scatter_(1, order, size == 1)
    cls_first = torch.empty(rows, n, dtype=torch.int64, device=dev).scatter_(1, order, first_of)
    pool = torch.sort(torch.where(single, ar, n), dim=1).values
    npool = single.sum(1)
    tkey = torch.where(single, n * n + ar, cls_first * n + ar)
    tsrc = torch.sort(tkey, dim=1).values % n
    tfirst = torch.sort(tkey, dim=1).values // n
    cstart = torch.zeros(rows, n, dtype=torch.bool, device=dev)
    cstart[:, 0] = True
    cstart[:, 1:] = tfirst[:, 1:] != tfirst[:, :-1]
    cstart &= ar < (n - npool)[:, None]
    coff = torch.sort(torch.where(cstart, ar, n), dim=1).values
    ncls = cstart.sum(1)
    nxt = torch.cat([coff[:, 1:], torch.full((rows, 1), n, device=dev, dtype=torch.int64)], 1)
    nxt = torch.where(ar + 1 == ncls[:, None], (n - npool)[:, None].expand(rows, n), nxt)
    ccnt = torch.where(ar < ncls[:, None], nxt - coff, 0)
    return pool.contiguous(), npool.contiguous(), tsrc.contiguous(), coff.contiguous(), ccnt.contiguous()


if triton is not None:
    @triton.jit
    def _uniform_kernel(words, bounds, meta, pool, npool, tsrc, coff, ccnt, used, state, out, err):
        g = tl.program_id(0).to(tl.int64)
        rows = tl.load(meta + 0)
        n = tl.load(meta + 1)
        seg = tl.load(meta + 2)
        lanes = tl.load(meta + 3)
        LOW = 2147483648
        lo = tl.load(bounds + g)
        hi = tl.load(bounds + g + 1)
        bad = lo < 0
        lane = lo * 0
        while lane < lanes:
            v = tl.load(words + lo + 2 * lane) | (tl.load(words + lo + 2 * lane + 1) << 32)
            bad = bad | (v < LOW)
            tl.store(state + g * lanes + lane, tl.where(v < LOW, LOW, v))
            lane += 1
        p = lo + 2 * lanes
        k = lo * 0
        row = g * seg
        r1 = tl.minimum(rows, row + seg)
        while row < r1:
            S = tl.load(npool + row)
            base = row * n
            i = lo * 0
            while i < n:
                r = n - i
                sp = state + g * lanes + k % lanes
                x = tl.load(sp)
                s = x & 268435455
                j = ((s + 1) * r - 1) >> 28
                single = j < S
                tie = j >= S          # (a comparison, not ~single: lowers the same everywhere)
                c = lo * 0
                a = S
                e = S + tl.load(ccnt + base, mask=tie, other=0) - tl.load(used + base, mask=tie, other=0)
                while tie & (j >= e):
                    c += 1
                    a = e
                    e = a + tl.load(ccnt + base + c) - tl.load(used + base + c)
                a = tl.where(single, j, a)
                e = tl.where(single, j + 1, e)
                src_p = tl.load(pool + base + j, mask=single, other=0)
                last = tl.load(pool + base + S - 1, mask=single, other=0)
                tl.store(pool + base + j, last, mask=single)
                S = tl.where(single, S - 1, S)
                u = tl.load(used + base + c, mask=tie, other=0)
                src_t = tl.load(tsrc + base + tl.load(coff + base + c, mask=tie, other=0) + u,
                                mask=tie, other=0)
                tl.store(used + base + c, u + 1, mask=tie)
                tl.store(out + base + i, tl.where(single, src_p, src_t))
                cum = (a << 28) // r
                freq = ((e << 28) // r) - cum
                x = freq * (x >> 28) + s - cum
                need = x < LOW
                over = need & (p >= hi)
                bad = bad | over
                w = tl.load(words + p, mask=need & (p < hi), other=0)
                x = tl.where(need, (x << 32) | w, x)
                p = tl.where(need & (p < hi), p + 1, p)
                tl.store(sp, tl.where(over, LOW, x))
                k += 1
                i += 1
            row += 1
        lane = lo * 0
        while lane < lanes:
            bad = bad | (tl.load(state + g * lanes + lane) != LOW)
            lane += 1
        bad = bad | (p != hi)
        tl.store(err + g, bad.to(tl.int32))


def decode(params: dict, payload, keys: torch.Tensor) -> torch.Tensor:
    """The permutation (int64 rows x n, on keys.device) of a ``uniform`` payload; ``keys`` are the
    initial values' bit patterns (uniform.keys_of) as int64. Raises FormatError on a corrupt one."""
    rows, n = keys.shape
    uniform.check_payload(params, payload, rows, n)
    lanes, seg = params["lanes"], params["segment_rows"]
    nseg = uniform._nseg(rows, n, seg)
    dev = keys.device
    out = torch.empty(rows, n, dtype=torch.int64, device=dev)
    if nseg == 0:
        return out
    w, bounds = _rans.unframe(payload, nseg, lanes)
    words = torch.from_numpy(w.astype(np.int64)).to(dev)
    pool, npool, tsrc, coff, ccnt = row_tables(keys)
    meta = torch.tensor([rows, n, seg, lanes], dtype=torch.int64, device=dev)
    used = torch.zeros(rows, n, dtype=torch.int64, device=dev)
    state = torch.empty(nseg * lanes, dtype=torch.int64, device=dev)
    err = torch.zeros(nseg, dtype=torch.int32, device=dev)
    _uniform_kernel[(nseg,)](words, torch.from_numpy(bounds).to(dev), meta, pool, npool, tsrc, coff, ccnt,
                             used, state, out, err, **OPTS)
    bad = torch.nonzero(err).flatten()
    if bad.numel():
        raise FormatError(f"uniform payload segment {int(bad[0])} does not decode (the rANS stream ends "
                          "early, has unread words or does not end in the initial state): corrupt")
    return out
