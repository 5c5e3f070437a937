"""The codecs of formats/codecs/*.md, written from those documents alone, and their worked examples.

Like test_spec_reader.py (which calls these decoders for the golden files) this imports nothing
from permcodec: if a document leaves a step out or states it wrongly, a golden file or a worked
example stops decoding here. ``SEEN`` records the paths each decode takes (codec modes, contexts,
lanes, segments, halvings) for tests/test_golden_coverage.py.
"""
from __future__ import annotations

import functools
import pathlib
import re
import struct

import numpy as np

CODECS_DIR = pathlib.Path(__file__).resolve().parents[1] / "formats" / "codecs"
SEEN: set = set()


def order_keys(row) -> list:
    """packed.md §3 / model.md §4: the bit pattern b of width w, ~b if the sign bit is set, else
    b | 2^(w-1) (bfloat16 rows come as uint16 patterns)."""
    width = row.dtype.itemsize * 8
    bits = row.view(f"<u{row.dtype.itemsize}")
    top = 1 << (width - 1)
    return [(~int(b)) & (2 * top - 1) if int(b) & top else int(b) | top for b in bits]


def sorted_classes(row) -> list:
    """Classes of equal values, numbered in key order; each class's sources increasing."""
    keys = order_keys(row)
    order = sorted(range(len(keys)), key=lambda i: (keys[i], i))
    classes = []
    for t, i in enumerate(order):
        if t and keys[i] == keys[order[t - 1]]:
            classes[-1].append(i)
        else:
            classes.append([i])
    return classes


# ---- packed.md -------------------------------------------------------------------------------
NEED = 2**37


@functools.lru_cache(maxsize=None)
def schedule(radices: tuple) -> tuple:
    """packed.md §4: K_t for the radices."""
    P, tail = 1, len(radices)
    while tail > 0 and P * radices[tail - 1] < NEED:
        tail -= 1
        P *= radices[tail]
    U, K = 1, []
    for t, R in enumerate(radices):
        if t < tail:
            need = NEED
        else:
            need, P = P, P // R
        k = 0
        while U << k < need:
            k += 1
        K.append(k)
        U = (U << k) // R
    return tuple(K)


def packed_decode(params, payload, v):
    assert set(params) == {"name", "ties"} and isinstance(params["ties"], bool)
    rows, n = v.shape
    assert n <= 2**24
    layout = []
    for r in range(rows):
        classes = sorted_classes(v[r])
        assert params["ties"] or len(classes) == n, "ties=false but a row holds equal values (packed.md §2)"
        big = max(classes, key=lambda c: (len(c), -c[0]))
        k, m = len(classes), len(big)
        perm_rad, seq_rad = tuple(range(n, m, -1)), (k,) * n
        seq = k > 1 and sum(schedule(seq_rad)) < sum(schedule(perm_rad))
        layout.append((classes, big, seq_rad if seq else perm_rad, seq))
        SEEN.add(("packed", "SEQ" if seq else "PERM"))
        if seq and sum(len(c) > 1 for c in classes) >= 3:
            SEEN.add(("packed", "SEQ, 3 tied classes"))
        SEEN.add(("packed", "ties" if params["ties"] else "distinct"))
    total = sum(sum(schedule(rad)) for _, _, rad, _ in layout)
    assert len(payload) == (total + 7) // 8
    bits = "".join(f"{b:08b}" for b in payload)
    assert "1" not in bits[total:], "padding bits must be zero"
    perm, pos = np.empty((rows, n), np.int64), 0
    for r, (classes, big, rad, seq) in enumerate(layout):
        x, digits = 0, []
        for R, k in zip(rad, schedule(rad)):
            x = (x << k) + (int(bits[pos:pos + k], 2) if k else 0)
            pos += k
            digits.append(x % R)
            x //= R
        assert x == 0
        slots = {c: [] for c in range(len(classes))}
        if seq:
            for j, c in enumerate(digits):
                slots[c].append(j)
        else:
            cls_of = {s: c for c, members in enumerate(classes) for s in members}
            items = sorted(s for s in range(n) if s not in big)
            free = list(range(n))
            for t, (s, d) in enumerate(zip(items, digits)):
                slots[cls_of[s]].append(free[d])
                free[d] = free[n - t - 1]
            slots[classes.index(big)] += free[:len(big)]
        for c, members in enumerate(classes):
            assert len(slots[c]) == len(members)
            perm[r, sorted(slots[c])] = members
    return perm


# ---- uniform.md §1-§3: framing and the rANS coder (shared with model) ------------------------------
M, LOW = 2**28, 2**31


def segments(params, payload, rows, n):
    """[(first row, end row, Lanes)] of uniform.md §2."""
    L, R = params["lanes"], params["segment_rows"]
    assert type(L) is int and 1 <= L <= 64 and type(R) is int and 1 <= R <= max(rows, 1) and n <= 2**28
    S = -(-rows // R) if rows * n else 0
    assert len(payload) % 4 == 0
    words = struct.unpack(f"<{len(payload) // 4}I", payload)
    if S == 0:
        assert not words
        return []
    pos, out = S - 1, []
    for g in range(S):
        length = words[g] if g < S - 1 else len(words) - pos
        assert length >= 2 * L and pos + length <= len(words)
        out.append((g * R, min(rows, (g + 1) * R), Lanes(words[pos:pos + length], L, params["name"])))
        pos += length
    assert pos == len(words)
    name = params["name"]
    SEEN.add((name, "lanes>1" if L > 1 else "lanes=1"))
    SEEN.add((name, "segments>1" if S > 1 else "segments=1"))
    if rows % R:
        SEEN.add((name, "short last segment"))
    if any((hi - lo) * n < L for lo, hi, _ in out):
        SEEN.add((name, "idle lanes"))
    return out


class Lanes:
    """The rANS decoder of one segment: symbol k is coded by lane k mod L, every lane refills from
    the one shared pointer into the segment's stream words."""

    def __init__(self, words, lanes, codec):
        self.codec = codec
        self.x = [words[2 * i] | words[2 * i + 1] << 32 for i in range(lanes)]
        assert all(LOW <= x < 2**63 for x in self.x)
        self.words, self.pos, self.k = words, 2 * lanes, 0

    def slot(self):
        return self.x[self.k % len(self.x)] % M

    def advance(self, cum, freq, trace=None):
        if trace is not None:
            trace.append((cum, freq))
        lane = self.k % len(self.x)
        s = self.x[lane] % M
        assert 1 <= freq and cum <= s < cum + freq <= M
        x = freq * (self.x[lane] >> 28) + s - cum
        if x < LOW:
            x = (x << 32) | self.words[self.pos]     # IndexError: a read past the segment's end
            self.pos += 1
        self.x[lane] = x
        self.k += 1
        if freq == M and len(self.x) > 1:
            SEEN.add((self.codec, "trivial symbol, lanes>1"))

    def finish(self):
        assert self.pos == len(self.words) and all(x == LOW for x in self.x)


# ---- uniform.md §4 -------------------------------------------------------------------------------
def uniform_decode(params, payload, v, trace=None):
    assert set(params) == {"name", "lanes", "segment_rows"}
    rows, n = v.shape
    perm = np.empty((rows, n), np.int64)
    for lo, hi, rd in segments(params, payload, rows, n):
        for row in range(lo, hi):
            groups = {}
            for i, b in enumerate(v[row].view(f"<u{v.dtype.itemsize}")):
                groups.setdefault(int(b), []).append(i)
            pool = sorted(g[0] for g in groups.values() if len(g) == 1)
            ties = sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])
            rem, used = [len(g) for g in ties], [0] * len(ties)
            for i in range(n):
                r, s = n - i, rd.slot()
                j = ((s + 1) * r - 1) >> 28
                if j < len(pool):
                    a, e, perm[row, i] = j, j + 1, pool[j]
                    pool[j] = pool[-1]
                    pool.pop()
                else:
                    a = len(pool)
                    c = 0
                    while j >= a + rem[c]:
                        a += rem[c]
                        c += 1
                    e = a + rem[c]
                    perm[row, i] = ties[c][used[c]]
                    used[c] += 1
                    rem[c] -= 1
                cum = (a << 28) // r
                rd.advance(cum, ((e << 28) // r) - cum, trace)
        rd.finish()
    return perm


# ---- model.md -------------------------------------------------------------------------------------
def bucket(u):
    if u < 2:
        return u
    e = u.bit_length() - 1
    return 2 * e + ((u >> (e - 1)) & 1)


def bucket_range(B):
    if B < 2:
        return B, B
    e = B >> 1
    lo = (2 | (B & 1)) << (e - 1)
    return lo, lo + 2 ** (e - 1) - 1


def bucket_id(d):
    return 2 * bucket(d) if d >= 0 else 2 * bucket(-d - 1) + 1


def valid_buckets(v, C, r):
    """[(id, d0, w)] of model.md §6, in increasing d."""
    out = []
    if C > v:
        for B in range(bucket(C - v - 1), -1, -1):
            lo, hi = bucket_range(B)
            hi = min(hi, C - v - 1)
            out.append((2 * B + 1, -hi - 1, hi - lo + 1))
    for B in range(bucket(r - 1 - C) + 1):
        lo, hi = bucket_range(B)
        out.append((2 * B, lo, min(hi, r - 1 - C) - lo + 1))
    return out


def slot_spans(table, vlo, C, r) -> list:
    """model.md §6: [(id, d0, w, G_b, T_b)] of the valid buckets; the T_b sum to M."""
    buckets = valid_buckets(vlo, C, r)
    W, E, K, G, spans = sum(table[b] for b, _, _ in buckets), M - (r - vlo), 0, 0, []
    for b, d0, w in buckets:
        q0 = K * E // W
        K += table[b]
        T = w + K * E // W - q0
        spans.append((b, d0, w, G, T))
        G += T
    assert G == M
    return spans


def cdf(j, C, r, spans) -> int:
    """F(j) of model.md §6."""
    if j == r:
        return M
    b, d0, w, G, T = next(sp for sp in spans if sp[1] <= j - C < sp[1] + sp[2])
    return G + (j - C - d0) * T // w


def context(t, i, frozen, lags, disp, rem, cls, last) -> tuple:
    """model.md §5: (context k, first valid item v, centre C) of position i at sorted index t."""
    n = len(disp)
    r = n - t
    if frozen:
        vlo = sum(rem[:last])
        assert vlo < r
        return 1, vlo, vlo
    N = [disp[q] for lag in lags for q in (i - lag, i + lag) if 0 <= q < n and disp[q] is not None]
    if not N:
        return 0, 0, 0
    P = min(max(t + sum(N) // len(N), 0), n - 1)
    return 1 + min(len(N), 4), 0, min(sum(rem[:cls[P]]), r - 1)


def model_decode(params, payload, v, trace=None):
    assert set(params) == {"name", "lanes", "segment_rows", "frozen", "lags"}
    rows, n = v.shape
    fz, lags = params["frozen"], params["lags"]
    assert isinstance(fz, bytes) and len(fz) in (0, -(-n // 8)) and n <= 2**28
    frozen = [bool(fz and fz[i // 8] >> (i % 8) & 1) for i in range(8 * len(fz))]
    assert not any(frozen[n:])
    frozen = frozen[:n] or [False] * n
    assert isinstance(lags, list) and len(lags) <= 4 and all(type(x) is int and 1 <= x <= n - 1 for x in lags)
    assert all(a < b for a, b in zip(lags, lags[1:]))
    if any(frozen):
        SEEN.add(("model", "frozen"))
    SEEN.add(("model", f"{len(lags)} lags"))
    perm = np.empty((rows, n), np.int64)
    for lo, hi, rd in segments(params, payload, rows, n):
        cnt = [[1] * 112 for _ in range(6)]
        for row in range(lo, hi):
            classes = sorted_classes(v[row])
            start = [0]
            for c in classes:
                start.append(start[-1] + len(c))
            cls = [c for c, members in enumerate(classes) for _ in members]   # of each sorted index
            order = [i for c in classes for i in c]
            rem = [len(c) for c in classes]
            disp, final, last = [None] * n, [None] * n, 0
            for t, i in enumerate(order):
                r = n - t
                k, vlo, C = context(t, i, frozen[i], lags, disp, rem, cls, last)
                SEEN.add(("model", f"context {k}"))
                table = cnt[k]
                spans = slot_spans(table, vlo, C, r)
                s = rd.slot()
                b, d0, w, Gb, T = next(sp for sp in spans if sp[3] <= s < sp[3] + sp[4])
                j = C + d0 + ((s - Gb + 1) * w - 1) // T
                cf, a = 0, 0
                while j >= a + rem[cf]:
                    a += rem[cf]
                    cf += 1
                e = a + rem[cf]
                rd.advance(cdf(a, C, r, spans), cdf(e, C, r, spans) - cdf(a, C, r, spans), trace)
                final[i] = cf
                dstar = 0 if a <= C < e else (a - C if a > C else e - 1 - C)
                table[bucket_id(dstar)] += 24
                if sum(table) > 65536:
                    table[:] = [(x + 1) >> 1 for x in table]
                    SEEN.add(("model", "halving"))
                rem[cf] -= 1
                disp[i] = start[cf] - start[cls[t]]
                if frozen[i]:
                    last = cf
            used = [0] * len(classes)
            for i in range(n):
                perm[row, i] = classes[final[i]][used[final[i]]]
                used[final[i]] += 1
        rd.finish()
    return perm


DECODERS = {"packed": packed_decode, "uniform": uniform_decode, "model": model_decode}


# ---- the worked examples of the codec documents ----------------------------------------------------
def _doc(name: str) -> str:
    return (CODECS_DIR / name).read_text()


def _example(doc: str, heading: str) -> str:
    return doc[doc.index(heading):]


def _hex_after(text: str, lead: str) -> bytes:
    """The payload bytes printed as `xx xx ...` right after ``lead``."""
    return bytes.fromhex(re.search(re.escape(lead) + r"\s*`([0-9a-f ]+)`", text).group(1))


def test_uniform_worked_example():
    text = _example(_doc("uniform.md"), "## 5. Worked example")
    assert "n = 3, float32 values [0.5, 0.0, 0.0], perm = [1, 0, 2]" in text
    v = np.array([[0.5, 0.0, 0.0]], np.float32)
    payload = _hex_after(text, "so the payload is that state as two words:")
    params = {"name": "uniform", "lanes": 1, "segment_rows": 1}
    trace = []
    assert uniform_decode(params, payload, v, trace).tolist() == [[1, 0, 2]]
    table = [(int(row[5]), int(row[6])) for row in _rows(text, "| position | r | items |")]
    assert trace == table


def test_model_worked_example():
    text = _example(_doc("model.md"), "## 8. Worked example")
    assert "One row, n = 2, values [0.1, 0.3] (float32), perm = [1, 0]" in text
    payload = _hex_after(text, "= 4429185024, payload")
    params = {"name": "model", "lanes": 1, "segment_rows": 1, "frozen": b"", "lags": []}
    trace = []
    assert model_decode(params, payload, np.array([[0.1, 0.3]], np.float32), trace).tolist() == [[1, 0]]
    assert trace == [(134217728, 134217728), (0, 2**28)]
    assert "cum = 134217728, freq = 134217728" in text and "cum = 0, freq = 2^28" in text


def test_packed_worked_examples():
    text = _example(_doc("packed.md"), "## 7. Worked examples")
    distinct = np.array([[0.3, -0.1, 0.7, 0.2]], np.float32)
    pruned = np.array([[0, 0.5, 0, 0.5, 0, 0]], np.float32)
    got = re.findall(r"Payload:?\s+`0x([0-9A-F]{2})`[,.]\s+params\s+`(\{[^`]*\})`", text)
    assert got == [("18", '{"name": "packed", "ties": false}'), ("90", '{"name": "packed", "ties": true}')]
    assert packed_decode({"name": "packed", "ties": False}, b"\x18", distinct).tolist() == [[2, 0, 3, 1]]
    assert packed_decode({"name": "packed", "ties": True}, b"\x90", pruned).tolist() == [[1, 0, 2, 3, 4, 5]]


def test_packed_ties_false_with_equal_values_is_rejected():
    """packed.md §2: even a payload of the length a class-blind reader expects is rejected."""
    v = np.array([[0, 0.5, 0, 0.5, 0, 0]], np.float32)
    blind = bytes(-(-sum(schedule(tuple(range(6, 1, -1)))) // 8))
    try:
        packed_decode({"name": "packed", "ties": False}, blind, v)
    except AssertionError as e:
        assert "ties=false but a row holds equal values" in str(e)
    else:
        raise AssertionError("decoded a ties=false payload over a row with equal values")


def _rows(text: str, header: str):
    lines = text[text.index(header):].splitlines()
    for line in lines[2:]:
        if not line.startswith("|"):
            return
        yield [c.strip() for c in line.strip().strip("|").split("|")]
