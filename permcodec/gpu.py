"""Rebuild tensors on a torch device: Philox, the value path, permutation decoding and the gather
all run there, bit for bit as the numpy reference (values.py, codecs/).

Two back ends, chosen by one parameter (``backend``): ``"torch"`` (plain tensor operations, any
device, the reference on CPU tensors) and ``"triton"`` (kernels in ``_gpu_triton`` for the two hot
loops, value generation and the ``packed`` swap chains; CUDA, or the CPU through Triton's
interpreter ``TRITON_INTERPRET=1``). ``"auto"`` takes Triton on CUDA where it is installed.

Exactness: only integer operations and binary64 ``+ - * /`` and ``sqrt``, one torch operation at a
time in values.py's order (eager torch never fuses a multiply into an add); the Triton kernels
are compiled with ``enable_fp_fusion=False`` for the same reason. 32x32-bit products are formed
from 16-bit halves, so no int64 ever overflows.

Memory: declared sizes are checked against the payload before anything is allocated on the
device; a tensor is rebuilt ``CHUNK`` weights of rows at a time, so the workspace beyond the
result is bounded. Raw tensors are decompressed on the CPU and copied (zstd has no device
decoder here); ``uniform`` decodes through its Triton kernel (permcodec._gpu_uniform, one program
per segment) where Triton is installed; ``model`` has no device decoder: ``supports`` returns False
for it, and ``File.get_tensor`` then decodes on the CPU and copies.
"""
from __future__ import annotations

import numpy as np
import torch

from . import _core
from . import philox as _px
from . import values as _v
from .codecs import packed as _packed
from .errors import FormatError, IntegrityError, RuleError
from .rules import Rule

CODECS = ("packed", "plain")
CHUNK = 1 << 22  # weights per pass (bounded workspace)
M32 = 0xFFFFFFFF
TORCH = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
         "bfloat16": torch.bfloat16}


def supports(entry: dict) -> bool:
    """True where :func:`decode` rebuilds ``entry`` on a device (uniform: where Triton runs)."""
    name = entry.get("codec", {}).get("name")
    if name == "uniform":
        from . import _gpu_triton
        name = name if _gpu_triton.available() else None
    return entry.get("kind") == "permuted" and name in CODECS + ("uniform",) and entry.get("dtype") in TORCH


def backend_for(device, backend: str = "auto") -> str:
    if backend != "auto":
        return backend
    if torch.device(device).type == "cuda":
        from . import _gpu_triton
        if _gpu_triton.available():
            return "triton"
    return "torch"


# ---- Philox and the value path (torch) ---------------------------------------------------
def _mulhilo(a: torch.Tensor, m: int):
    lo16, hi16 = m & 0xFFFF, m >> 16
    t1 = a * lo16  # < 2**48
    t2 = a * hi16
    s = t1 + ((t2 & 0xFFFF) << 16)
    return (t2 >> 16) + (s >> 32), s & M32


def philox(c0, c1, c2, c3, k0: int, k1: int):
    """philox.philox4x32 on int64 tensors holding 32-bit words."""
    for r in range(_px.ROUNDS):
        if r:
            k0 = (k0 + _px.W0) & M32
            k1 = (k1 + _px.W1) & M32
        h0, l0 = _mulhilo(c0, _px.M0)
        h1, l1 = _mulhilo(c2, _px.M1)
        c0, c1, c2, c3 = h1 ^ c1 ^ k0, l1, h0 ^ c3 ^ k1, l0
    return c0, c1, c2, c3


def _blockwords(seed, stream, domain, i):
    z = torch.zeros_like(i)
    return philox(i & M32, i >> 32, z + (stream & M32), z + ((stream >> 32) | (domain << 30)),
                  seed & M32, seed >> 32)


def element_words(seed, stream, start, count, masked, device):
    j = torch.arange(start, start + count, dtype=torch.int64, device=device)
    w = _blockwords(seed, stream, _px.VALUE_DOMAIN, j >> 1)
    odd = (j & 1).bool()
    a = torch.where(odd, w[2], w[0])
    b = torch.where(odd, w[3], w[1])
    m = None
    if masked:
        mw = _blockwords(seed, stream, _px.MASK_DOMAIN, j >> 2)
        lane = j & 3
        m = torch.where(lane == 0, mw[0], torch.where(lane == 1, mw[1], torch.where(lane == 2, mw[2], mw[3])))
    return a, b, m


def _horner(coeffs, x):
    acc = torch.full_like(x, coeffs[0])
    for c in coeffs[1:]:
        acc = acc * x
        acc = acc + c
    return acc


def log_(x):
    bits = x.view(torch.int64)
    e = (bits >> 52) - 1023
    m = ((bits & 0x000FFFFFFFFFFFFF) | (1023 << 52)).view(torch.float64)
    big = m > _v.SQRT2
    m = torch.where(big, m * 0.5, m)
    e = torch.where(big, e + 1, e).to(torch.float64)
    s = (m - 1.0) / (m + 1.0)
    return e * _v.LN2 + (s * 2.0) * _horner(_v.LOG_C, s * s)


def sqrt_rn(x):
    """Correctly rounded binary64 sqrt. torch's CPU kernel is not (its AVX2 path is within 0.5001
    ulp: 3 of 231 normal values differed), so CPU tensors go through numpy's (the instruction);
    CUDA's double sqrt is IEEE round-to-nearest."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sqrt(x.numpy()))
    return torch.sqrt(x)


def ppnd16(p):
    q = p - 0.5
    r = 0.180625 - q * q
    central = (_horner(_v.A, r) * q) / _horner(_v.B, r)
    t = torch.where(q <= 0.0, p, 1.0 - p)
    t = sqrt_rn(-log_(torch.where(q.abs() <= 0.425, torch.full_like(t, 0.25), t)))
    near = t - 1.6
    far = t - 5.0
    tail = torch.where(t <= 5.0, _horner(_v.C, near) / _horner(_v.D, near),
                       _horner(_v.E, far) / _horner(_v.F, far))
    tail = torch.where(q < 0.0, -tail, tail)
    return torch.where(q.abs() <= 0.425, central, tail)


def from_words(a, b, m, dist, scale, prune):
    k = ((a >> 5) << 26) | (b >> 6)
    odd = k * 2 + 1
    if dist == "uniform":
        x = scale * ((odd - (1 << 53)).to(torch.float64) * _v.TWO_M53)
    elif dist == "normal":
        s = odd - (1 << 53)
        z = ppnd16(((1 << 53) - s.abs()).to(torch.float64) * _v.TWO_M54)
        x = scale * torch.where(s > 0, -z, z)
    elif dist == "constant":
        x = torch.full(a.shape, float(scale), dtype=torch.float64, device=a.device)
    else:
        raise RuleError(f"unknown distribution {dist!r}: expected 'uniform', 'normal' or 'constant'")
    if prune:
        x = torch.where(m < prune, torch.zeros_like(x), x)
    return x


def cast(x, dtype: str):
    """values.cast on a device; bfloat16 rounds through binary32 by the same integer formula."""
    if dtype == "float64":
        return x
    f32 = x.to(torch.float32)
    if dtype == "float32":
        return f32
    if dtype == "float16":
        return f32.to(torch.float16)
    b = f32.view(torch.int32).to(torch.int64) & M32
    h = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    return (h - ((h >> 15) << 16)).to(torch.int16).view(torch.bfloat16)


def generate(rule: Rule, count: int, dtype: str, device, start: int = 0, backend: str = "torch"):
    """Elements ``start .. start+count-1`` of ``rule`` as a ``dtype`` tensor on ``device``."""
    if backend == "triton":
        from . import _gpu_triton
        return _gpu_triton.generate(rule, count, dtype, device, start)
    a, b, m = element_words(rule.seed, rule.stream, start, count, bool(rule.prune), device)
    return cast(from_words(a, b, m, rule.dist, rule.scale, rule.prune), dtype)


# ---- keys and classes ------------------------------------------------------------------------
def order_keys(v: torch.Tensor) -> torch.Tensor:
    """int64 keys with dtypes.order_keys' order (signed), equal iff the bit patterns are."""
    itype = {8: torch.int64, 4: torch.int32, 2: torch.int16}[v.element_size()]
    b = v.view(itype).to(torch.int64)
    return torch.where(b < 0, (~b) ^ (-(1 << 63)), b)


def classes(keys: torch.Tensor):
    """packed.classes on a device: order, start, run start of every sorted position, big, m, k."""
    rows, n = keys.shape
    sk, order = torch.sort(keys, dim=1, stable=True)
    start = torch.ones_like(sk, dtype=torch.bool)
    start[:, 1:] = sk[:, 1:] != sk[:, :-1]
    idx = torch.arange(n, device=keys.device).expand(rows, n)
    run = torch.cummax(torch.where(start, idx, torch.zeros_like(idx)), dim=1).values  # run start per position
    length = torch.zeros_like(idx).scatter_add_(1, run, torch.ones_like(idx))  # at each run start
    m = length.max(dim=1).values
    first = torch.where(start & (length == m[:, None]), order, torch.full_like(order, n))
    big = first.argmin(dim=1)  # the largest class holding the smallest source index
    k = start.sum(dim=1)
    return order, start, run, big, m, k


# ---- packed ----------------------------------------------------------------------------------
def _units(payload, device):
    """Payload bytes as 24-bit big-endian units in int64 (two more, zero, at the end)."""
    b = np.frombuffer(payload, np.uint8)
    padded = np.zeros(((len(b) + 2) // 3 + 2) * 3, np.int64)
    padded[:len(b)] = b
    u = (padded[0::3] << 16) | (padded[1::3] << 8) | padded[2::3]
    return torch.from_numpy(u).to(device)


def read_bits(units, pos, k):
    """The ``k <= 38`` bits at bit ``pos`` (MSB first), per element, as int64."""
    k1 = torch.clamp(k, max=24)
    k2 = k - k1
    return (_read24(units, pos, k1) << k2) | _read24(units, pos + k1, k2)


def _read24(units, pos, k):
    u = pos // 24
    off = pos - u * 24
    win = (units[u] << 24) | units[u + 1]
    return (win >> (48 - off - k)) & (torch.bitwise_left_shift(torch.ones_like(k), k) - 1)


def divmod_exact(x, R):
    q = torch.div(x, R, rounding_mode="floor")
    return q, x - q * R


def layout(n: int, ties: bool, m=None, k=None):
    """Host side: per-row mode, radix parameter, table index, bit offsets; the schedule tables."""
    if not ties:
        K = np.zeros(max(n, 1), np.uint8)
        s = _core.packed_schedule(_packed.PERM, n, 1)
        K[:s.size] = s
        return None, K[None, :], int(s.sum(dtype=np.int64))
    keys_modes = []
    for mm, kk in zip(m.tolist(), k.tolist()):
        keys_modes.append(_packed.row_mode(n, mm, kk) if kk > 1 else (_packed.PERM, mm))
    uniq = sorted(set(keys_modes))
    tables = np.zeros((len(uniq), max(n, 1)), np.uint8)
    ubits = []
    for i, (mode, p) in enumerate(uniq):
        s = _packed.schedule(mode, n, p)
        tables[i, :len(s)] = s
        ubits.append(int(s.sum(dtype=np.int64)))
    index = {u: i for i, u in enumerate(uniq)}
    tix = np.array([index[u] for u in keys_modes], np.int64)
    mode = np.array([u[0] for u in keys_modes], np.int64)
    p = np.array([u[1] for u in keys_modes], np.int64)
    rbits = np.array(ubits, np.int64)[tix]
    return (mode, p, tix, rbits), tables, int(rbits.sum())


def packed_chains(units, offs, n, K, mode=None, p=None, T=None, items=None, lab_src=None, cst=None,
                  big=None, m=None):
    """The swap chains of a group of rows, in lockstep (torch). Distinct rows (``mode`` None):
    returns perm. Otherwise returns ``lab``: the run start (in sorted order) of the class placed at
    every position, and ``bad`` rows."""
    rows = offs.shape[0]
    dev = offs.device
    free = torch.arange(n, device=dev).repeat(rows, 1)
    rix = torch.arange(rows, device=dev)
    x = torch.zeros(rows, dtype=torch.int64, device=dev)
    pos = offs.clone()
    distinct = mode is None
    out = torch.empty((rows, n), dtype=torch.int64, device=dev)
    Tmax = n - 1 if distinct else int(T.max())
    for t in range(Tmax):
        k = K[:, t] if K.shape[0] == rows else K[0, t].expand(rows)
        act = None if distinct else t < T
        if act is not None:
            k = torch.where(act, k, torch.zeros_like(k))
        x = (x << k) | read_bits(units, pos, k)
        pos = pos + k
        R = torch.full_like(x, n - t) if distinct else torch.where(mode == 1, p, n - t).clamp(min=1)
        q, d = divmod_exact(x, R)
        x = q if act is None else torch.where(act, q, x)
        if distinct:
            slot = free[rix, d]
            out[rix, slot] = t + 1
            free[rix, d] = free[rix, R - 1]
            continue
        seq = act & (mode == 1)
        perm = act & (mode == 0)
        dd = torch.where(perm, d, torch.zeros_like(d))
        slot = free[rix, dd]
        src = items[:, t] if items.shape[1] > t else torch.zeros_like(d)
        lab_perm = torch.gather(lab_src, 1, src[:, None].clamp(0, n - 1))[:, 0]
        lab_seq = torch.gather(cst, 1, torch.where(seq, d, torch.zeros_like(d))[:, None])[:, 0]
        target = torch.where(seq, torch.full_like(slot, t), slot)
        val = torch.where(seq, lab_seq, lab_perm)
        cur = out[rix, target]
        out[rix, target] = torch.where(act, val, cur)
        Rm1 = torch.where(perm, R - 1, dd)
        free[rix, dd] = torch.where(perm, free[rix, Rm1], slot)
    bad = x != 0
    if distinct:
        out[rix, free[:, 0]] = 0
        return out, bad
    # the largest class fills the free slots left (PERM rows)
    i = torch.arange(n, device=dev).expand(rows, n)
    fill = (i < m[:, None]) & (mode[:, None] == 0)
    tgt = torch.where(fill, free, torch.full_like(free, n))
    scratch = torch.cat([out, torch.zeros((rows, 1), dtype=out.dtype, device=dev)], 1)
    scratch.scatter_(1, tgt, big[:, None].expand(rows, n).clone())
    return scratch[:, :n], bad


def canonical(lab, order, run):
    """perm from the class (run start) placed at every position: each class's positions, in
    increasing order, take its members in increasing order. FormatError if counts differ."""
    rows, n = lab.shape
    j = torch.arange(n, device=lab.device).expand(rows, n)
    key, _ = torch.sort(lab * n + j, dim=1)
    if not torch.equal(torch.div(key, n, rounding_mode="floor"), run):
        raise FormatError("packed: a row places the wrong number of copies of a value: corrupt payload")
    out = torch.empty_like(order)
    out.scatter_(1, key % n, order)
    return out


def packed_chunk(params, units, bits_or_layout, v, r0, backend="torch"):
    """perm of rows ``r0 ..`` (values ``v`` on a device) of a packed payload already on the device
    as 24-bit ``units``; ``bits_or_layout`` is the row size (no ties) or :func:`layout`'s result
    for the whole tensor."""
    rows, n = v.shape
    dev = v.device
    if not params["ties"]:
        bits, K = bits_or_layout
        offs = (torch.arange(rows, dtype=torch.int64, device=dev) + r0) * bits
        if backend == "triton":
            from . import _gpu_triton
            perm, bad = _gpu_triton.chains_distinct(units, offs, n, K[0])
        else:
            perm, bad = packed_chains(units, offs, n, K)
        _bad(bad, r0)
        return perm
    (mode, p, tix, offs_all), tables = bits_or_layout
    order, start, run, big, m, k = classes(order_keys(v))
    sl = slice(r0, r0 + rows)
    mode_t, p_t, offs = mode[sl], p[sl], offs_all[sl]
    T = torch.where(mode_t == 1, torch.full_like(m, n), n - m)
    i = torch.arange(n, device=dev).expand(rows, n)
    inL = torch.zeros((rows, n), dtype=torch.bool, device=dev)
    inL.scatter_(1, order, run == big[:, None])
    items = torch.sort(torch.where(inL, i + n, i), dim=1).values.clamp(max=n - 1)  # sources outside L
    lab_src = torch.empty_like(order)
    lab_src.scatter_(1, order, run)  # each source's class, as the run start in sorted order
    cst = torch.sort(torch.where(start, i, torch.full_like(i, n)), dim=1).values.clamp(max=n - 1)
    args = (offs, n, tables[tix[sl]], mode_t, p_t, T, items, lab_src, cst, big, m)
    if backend == "triton":
        from . import _gpu_triton
        lab, bad = _gpu_triton.chains_general(units, *args)
    else:
        lab, bad = packed_chains(units, *args)
    _bad(bad, r0)
    return canonical(lab, order, run)


def decode_packed(params, payload, values, backend="torch"):
    """Canonical perm of ``values`` (rows x n, on a device) from a packed payload (whole tensor)."""
    rows, n = values.shape
    plan = _packed_plan(params, payload, rows, n, values.device, lambda r0, r1: values[r0:r1])
    return packed_chunk(params, _units(payload, values.device), plan, values, 0, backend)


def _packed_plan(params, payload, rows, n, dev, values_of):
    """Validate a packed payload's size and lay its rows out; ``values_of(r0, r1)`` gives rows'
    initial values (only called where rows repeat values, to find their classes)."""
    ties = _packed.check_params(params, np.empty((1, n)))
    if not ties:
        _, K, bits = layout(n, False)
        _packed.check_size(payload, rows * bits)
        return bits, torch.from_numpy(K).to(dev).to(torch.int64)
    m = np.empty(rows, np.int64)
    k = np.empty(rows, np.int64)
    step = max(1, CHUNK // max(n, 1))
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        *_, mm, kk = classes(order_keys(values_of(r0, r1)))
        m[r0:r1], k[r0:r1] = mm.cpu().numpy(), kk.cpu().numpy()
    (mode, p, tix, rbits), tables, total = layout(n, True, m, k)
    _packed.check_size(payload, total)
    offs = np.zeros(rows, np.int64)
    np.cumsum(rbits[:-1], out=offs[1:])
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(dev)
    return (t(mode), t(p), t(tix), t(offs)), t(tables).to(torch.int64)


def _bad(bad, r0=0):
    if bool(bad.any()):
        r = r0 + int(torch.nonzero(bad)[0, 0])
        raise FormatError(f"packed row {r} does not end in state 0: corrupt payload")


# ---- plain -----------------------------------------------------------------------------------
def plain_chunk(data, rows_total, n, r0, r1):
    """Rows r0..r1 of a plain payload (``data``: its bytes as an int64 tensor on the device)."""
    from .codecs import plain
    w = plain.width(n)
    dev = data.device
    bit = torch.arange(r0 * n * w, r1 * n * w, device=dev)
    bits = (data[bit >> 3] >> (bit & 7)) & 1
    perm = (bits.view(-1, w) << torch.arange(w, device=dev)).sum(1).view(r1 - r0, n)
    if bool((perm >= n).any()):
        raise FormatError("decoded plain permutation has an index outside [0, n): corrupt payload")
    seen = torch.zeros((r1 - r0) * n, dtype=torch.bool, device=dev)
    seen[(perm + torch.arange(r1 - r0, device=dev)[:, None] * n).view(-1)] = True
    if not bool(seen.all()):
        raise FormatError("decoded plain permutation repeats an index: corrupt payload")
    return perm


# ---- tensors ---------------------------------------------------------------------------------
def decode(entry: dict, payload, device, check_digest: bool = False, backend: str = "auto") -> torch.Tensor:
    """Rebuild the permuted tensor ``entry`` on ``device`` from its codec ``payload``, ``CHUNK``
    weights at a time; sizes are checked before the result is allocated."""
    from .perm import as_rows
    if not supports(entry):
        raise FormatError(f"tensor {entry.get('name')!r} cannot be decoded on a device: use the CPU path")
    backend = backend_for(device, backend)
    rows, n = as_rows(entry["shape"])
    if n > _packed.MAX_N and entry["codec"]["name"] == "packed":
        raise FormatError(f"tensor {entry['name']!r}: packed rows hold at most {_packed.MAX_N} weights, not {n}")
    rule = Rule.from_dict(entry["init"])
    from .tensors import codec_of
    module, params = codec_of(entry)   # the codec version and the codec's one validator, as on the CPU
    dtype, name = entry["dtype"], module.NAME
    check = getattr(module, "check_payload", None)
    if check is not None:
        check(params, payload, rows, n)
    step = max(1, CHUNK // max(n, 1))
    gen = lambda r0, r1: generate(rule, (r1 - r0) * n, dtype, device, r0 * n, backend).view(r1 - r0, n)
    if name == "uniform":   # segments decode in parallel, the whole tensor in one launch
        from . import _gpu_uniform
        v = gen(0, rows)
        bits = v.view({8: torch.int64, 4: torch.int32, 2: torch.int16}[v.element_size()])
        out = torch.gather(v, 1, _gpu_uniform.decode(params, payload, bits.to(torch.int64)))
        return _digest_checked(out.view(entry["shape"]), entry, device, check_digest)
    if name == "packed":
        plan = _packed_plan(params, payload, rows, n, device, gen)  # validates sizes first
        data = _units(payload, device)
        perm_of = lambda v, r0, r1: packed_chunk(params, data, plan, v, r0, backend)
    else:
        data = torch.from_numpy(np.frombuffer(payload, np.uint8).copy()).to(device).to(torch.int64)
        perm_of = lambda v, r0, r1: plain_chunk(data, rows, n, r0, r1)
    out = torch.empty((rows, n), dtype=TORCH[dtype], device=device)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        v = gen(r0, r1)
        out[r0:r1] = torch.gather(v, 1, perm_of(v, r0, r1))
    return _digest_checked(out.view(entry["shape"]), entry, device, check_digest)


def _digest_checked(out, entry, device, check: bool):
    if check:
        from .api import to_numpy
        from .tensors import digest
        if digest(to_numpy(out)[0]) != entry["digest"]:
            raise IntegrityError(f"tensor {entry['name']!r} does not rebuild to its recorded digest on {device}")
    return out
