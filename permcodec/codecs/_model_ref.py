"""``model`` in plain Python, exactly as formats/codecs/model.md states it: the executable spec.

Slow; the tests compare the compiled coder (csrc/model.cpp) with it bit for bit. Besides the
reference decoder, plain twins of the compiled helpers (row sort, column compatibility, greedy
clique) that the tests hold the fast versions to. Never a runtime fallback.
"""
from __future__ import annotations

import numpy as np

from ..errors import FormatError
from . import _rans
from ._rans import M
from .model import INC, LIMIT, NB, NCTX, check_params, keys_of, unframe
from .uniform import _nseg


def _bucket(u: int) -> int:
    return u if u < 2 else 2 * (u.bit_length() - 1) + ((u >> (u.bit_length() - 2)) & 1)


def _range(b: int) -> tuple[int, int]:
    if b < 2:
        return b, b
    e = b >> 1
    lo = (2 | (b & 1)) << (e - 1)
    return lo, lo + (1 << (e - 1)) - 1


def _id(d: int) -> int:
    return 2 * _bucket(d) if d >= 0 else 2 * _bucket(-d - 1) + 1


def _intervals(cnt: list, c: int, vlo: int, r: int) -> list:
    """[(first offset, width, G, T)] of the valid buckets in increasing offset."""
    spans = []
    if c > vlo:
        for b in range(_bucket(c - vlo - 1), -1, -1):
            ulo, uhi = _range(b)
            uhi = min(uhi, c - vlo - 1)
            spans.append((-uhi - 1, uhi - ulo + 1, 2 * b + 1))
    for b in range(_bucket(r - 1 - c) + 1):
        ulo, uhi = _range(b)
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


def _cdf(j: int, c: int, r: int, spans: list) -> int:
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
    words, bounds = unframe(payload, rows, n, lanes, seg)
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
                spans = _intervals(cnt, c, vlo, r)
                s = rd.slot()
                d0, width, g0, t0 = next(sp for sp in spans if s < sp[2] + sp[3])
                j = c + d0 + ((s - g0 + 1) * width - 1) // t0
                a = 0
                for cf, m in enumerate(rem):
                    if j < a + m:
                        break
                    a += m
                e = a + rem[cf]
                c0 = _cdf(a, c, r, spans)
                rd.advance(c0, _cdf(e, c, r, spans) - c0)
                final[i] = cf
                d = 0 if a <= c < e else (a - c if a > c else e - 1 - c)
                cnt[_id(d)] += INC
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


# ---- plain twins of the encoder's compiled search helpers ----------------------------------
def row_order(key_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions sorted by (key, index), first sorted index of each class + [n])."""
    order = np.argsort(key_row, kind="stable")
    k = key_row[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]]) if k.size else np.zeros(0, np.int64)
    return order, np.r_[starts, k.size].astype(np.int64)


def compat(keys: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """ok[p, q]: in every row, positions p and q keep their order (initial (key, index) order vs
    final class order, ties allowed)."""
    rows, n = keys.shape
    ok = np.ones((n, n), bool)
    for row in range(rows):
        order, starts = row_order(keys[row])
        t0 = np.empty(n, np.int64)
        t0[order] = np.arange(n)
        clsof = np.empty(n, np.int64)
        clsof[order] = np.repeat(np.arange(starts.size - 1), np.diff(starts))
        fc = clsof[perm[row]]
        bad = (t0[:, None] < t0[None, :]) & (fc[:, None] > fc[None, :])
        ok &= ~(bad | bad.T)
    return ok


def clique(ok: np.ndarray) -> np.ndarray:
    """Greedy clique: columns by decreasing degree (stable), each kept if compatible with all kept."""
    n = ok.shape[0]
    chosen = np.zeros(n, bool)
    members: list = []
    for p in np.argsort(-ok.sum(1), kind="stable"):
        if all(ok[p, q] for q in members):
            chosen[p] = True
            members.append(p)
    return chosen
