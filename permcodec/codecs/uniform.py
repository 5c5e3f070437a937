"""``uniform``: any permuted tensor within a hair of log2(n!/prod m_v!) bits per row.

Each row is coded as a multiset permutation: at output position i (r = n - i items remain) the
*items* are the remaining singleton sources (values that occur once in the row), in a pool kept
by swap-removal, followed by each tie class (values that occur more than once, ordered by first
occurrence) as one range of its remaining count. The value at position i is one item or one
class range [a, e), coded with the exact integer frequency floor(e*M/r) - floor(a*M/r) out of
M = 2**28 by the rANS coder (csrc/rans.h). All rows of the tensor share one stream per segment.
formats/codecs/uniform.md specifies it bit for bit; ``decode_reference`` is that text in Python
and the compiled coder (csrc/rans.cpp, permcodec._core) is tested equal to it.
"""
from __future__ import annotations

import numpy as np

from .. import _core
from ..errors import PermcodecError
from . import _rans
from ._rans import PREC

NAME = "uniform"
AUTO = True
KEYS = ("name", "lanes", "segment_rows")


def keys_of(values: np.ndarray) -> np.ndarray:
    """Bit patterns of the initial values as unsigned integers (equal iff the values are equal)."""
    v = np.ascontiguousarray(values)
    return v.view(np.dtype(f"<u{v.dtype.itemsize}"))


def _nseg(rows: int, n: int, seg: int) -> int:
    return 0 if rows * n == 0 else -(-rows // seg)


# ---- the model, in plain Python (reference) ------------------------------------------------
def row_items(key_row) -> tuple[list, list]:
    """(pool of singleton sources, tie classes as lists of sources), both in increasing source
    order; tie classes ordered by their first source."""
    groups: dict = {}
    for i, k in enumerate(key_row):
        groups.setdefault(int(k), []).append(i)
    pool = [g[0] for g in groups.values() if len(g) == 1]
    ties = [g for g in groups.values() if len(g) > 1]    # dicts keep first-occurrence order
    return sorted(pool), ties


def interval(a: int, e: int, r: int) -> tuple[int, int]:
    """(cum, freq) of the item range [a, e) among r remaining items."""
    cum = (a << PREC) // r
    return cum, ((e << PREC) // r) - cum


def decode_reference(params: dict, payload, values: np.ndarray) -> np.ndarray:
    """The decoder exactly as formats/codecs/uniform.md states it (slow, for tests)."""
    rows, n = values.shape
    lanes, seg = _rans.check_layout(params, KEYS, rows, n, NAME)
    nseg = _nseg(rows, n, seg)
    words, bounds = _rans.unframe(payload, nseg, lanes)
    keys = keys_of(values)
    perm = np.empty((rows, n), np.int64)
    for g in range(nseg):
        rd = _rans.Reader(words, int(bounds[g]), int(bounds[g + 1]), lanes)
        for row in range(g * seg, min(rows, (g + 1) * seg)):
            pool, ties = row_items(keys[row])
            used = [0] * len(ties)
            for i in range(n):
                r = n - i
                s = rd.slot()
                j = ((s + 1) * r - 1) >> PREC
                if j < len(pool):
                    a, e, src = j, j + 1, pool[j]
                    pool[j] = pool[-1]
                    pool.pop()
                else:
                    a = len(pool)
                    for c, t in enumerate(ties):
                        e = a + len(t) - used[c]
                        if j < e:
                            break
                        a = e
                    src = t[used[c]]
                    used[c] += 1
                rd.advance(*interval(a, e, r))
                perm[row, i] = src
        rd.finish()
    return perm




# ---- the codec interface -------------------------------------------------------------------
GPU_OVERHEAD = 1e-3   # the device layout's framing budget, a fraction of the information limit


def gpu_layout(rows: int, n: int, bits_per_row: float) -> tuple[int, int]:
    """(lanes, segment_rows) for device decoding: the lanes of a segment share one word pointer
    (uniform.md §2), so a GPU decodes *segments* in parallel, one program each. One lane and as
    many segments as fit 96 framing bits each (64 of state, a 32-bit length) into 90% of
    GPU_OVERHEAD of the tensor's information limit (the rest covers the coder's rounding)."""
    if rows * n == 0:
        return 1, 1
    nseg = max(1, int(0.9 * GPU_OVERHEAD * rows * bits_per_row / 96))
    return 1, -(-rows // min(nseg, rows))


def encode(perm: np.ndarray, values: np.ndarray, lanes=None, segment_rows=None, gpu=False, **options):
    """``gpu=True`` picks gpu_layout (many independent segments) unless lanes/segment_rows are given."""
    rows, n = perm.shape
    bits = _rans.row_bits(values)
    if gpu:
        gl, gs = gpu_layout(rows, n, bits)
        lanes = gl if lanes is None else lanes
        segment_rows = gs if segment_rows is None else segment_rows
    lanes, seg = _rans.layout(rows, n, bits, lanes, segment_rows)
    params = {"name": NAME, "lanes": lanes, "segment_rows": seg}
    try:
        payload = _core.uniform_encode(keys_of(values), np.ascontiguousarray(perm, np.int64), lanes, seg)
    except ValueError as e:
        raise PermcodecError(f"uniform.encode: {e}") from None
    return params, payload


def check_payload(params: dict, payload, rows: int, n: int) -> None:
    """Reject bad params or framing before the initial values are generated (uniform.md §1-2)."""
    lanes, seg = _rans.check_layout(params, KEYS, rows, n, NAME)
    _, bounds = _rans.framing(payload, _nseg(rows, n, seg), lanes)
    _rans.check_segment_words(bounds, rows, n, lanes, seg, NAME)


def working_bytes(params: dict, rows: int, n: int, itemsize: int) -> int:
    """An upper bound of what decode_values allocates for a (rows, n) tensor of ``itemsize``-byte
    values: its output plus one row's scratch per decoding thread and the segment table (the
    payload is read in place)."""
    lanes, seg = _rans.check_layout(params, KEYS, rows, n, NAME)
    return rows * n * itemsize + _core.uniform_scratch(rows, n, itemsize, seg)


def decode(params: dict, payload, values: np.ndarray) -> np.ndarray:
    """The permutation (int64 rows x n)."""
    out = np.empty(values.shape, np.int64)
    _decode(params, payload, values, out, True)
    return out


def decode_values(params: dict, payload, values: np.ndarray) -> np.ndarray:
    """The rearranged values themselves (decode, then perm.check_apply, in one pass: every row the
    decoder builds is a permutation by construction)."""
    keys = keys_of(values)
    out = np.empty(keys.shape, keys.dtype)
    _decode(params, payload, values, out, False)
    return out.view(values.dtype)


def _decode(params, payload, values, out, perm: bool) -> None:
    rows, n = values.shape
    lanes, seg = _rans.check_layout(params, KEYS, rows, n, NAME)
    _core.uniform_decode(keys_of(values), payload, lanes, seg, out, perm)


def rows_payload(params: dict, payload, rows: int, n: int, start: int, stop: int, initial=None):
    """(lo, hi, params, payload) decoding rows [lo, hi) ⊇ [start, stop): the covering segments.
    The payload has passed check_payload (tensors.decode_rows)."""
    lanes, seg = _rans.check_layout(params, KEYS, rows, n, NAME)
    lo, hi, sub_seg, sub = _rans.segments_covering(payload, rows, n, lanes, seg, start, stop)
    return lo, hi, {**params, "segment_rows": sub_seg}, sub
