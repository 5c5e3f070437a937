"""``model``: below the uniform limit on trained networks (version 2: Lehmer digits in context).

Each row is visited in the order of its initial values (key, then index). The value found at the
t-th position is one of the remaining *items* (the row's values in key order, equal values merged
into a class range); its item index is coded relative to a *centre* c with an adaptive table of
integer counts over logarithmic offset buckets, one table per *context*:

- context 0: no neighbour decoded yet: c = 0, so the symbol is the position's Lehmer digit
  (RESEARCH.md §3: a trained weight mostly ends below the weights that started above it);
- context 1: a *frozen* column (a header bitmap; columns whose weights keep their relative order
  in every row, e.g. the weights of input pixels that are zero in every training image): only
  items at or above the previous frozen position's final class are valid, c = the first of them;
- contexts 2..5: 1, 2, 3, >= 4 already decoded *neighbours* i +- lag (lags in the header, e.g. 1
  and 28 for MNIST pixels): c = the remaining item at the position's initial sorted index plus
  the neighbours' mean displacement.

The coder is compiled (csrc/model.cpp, with the rANS coder of csrc/rans.h); this module checks
the parameters and framing, picks the encoder's options (_model_search.py: frozen set, lags;
trying a few) and save(codec="auto") keeps ``uniform`` where ``model`` does not pay.
formats/codecs/model.md specifies it bit for bit; ``decode_reference`` (_model_ref.py) is that
text in Python.
"""
from __future__ import annotations

import numpy as np

from .. import _core
from ..dtypes import order_keys
from ..errors import FormatError, PermcodecError
from . import _rans
from ._model_search import find_frozen, find_lags
from .uniform import _nseg

NAME = "model"
AUTO = True
KEYS = ("name", "lanes", "segment_rows", "frozen", "lags")
SIDE = 56            # magnitude buckets per sign: enough for offsets below 2**28
NB = 2 * SIDE        # bucket ids per context
NCTX = 6             # contexts (tables)
INC = 24             # count added to the coded bucket
LIMIT = 1 << 16      # a table's counts are halved (rounding up) when their sum exceeds this
MAX_LAGS = 4
MAX_N = _rans.MAX_N         # 2**28: every item needs a slot of M = 2**28 (csrc/model.cpp checks it too)


def keys_of(values: np.ndarray) -> np.ndarray:
    """Order keys of the initial values: unsigned integers in the order of the numbers (negative
    patterns inverted, the sign bit set on the others), equal iff the bit patterns are equal."""
    return np.ascontiguousarray(order_keys(np.ascontiguousarray(values)))


def _bits(values: np.ndarray) -> np.ndarray:
    """The values' bit patterns as unsigned integers (the compiled coder maps them to order keys)."""
    v = np.ascontiguousarray(values)
    return v.view(np.dtype(f"u{v.dtype.itemsize}"))


# ---- parameters and framing ----------------------------------------------------------------
def check_params(params: dict, rows: int, n: int):
    """(lanes, segment_rows, frozen as uint8[n] 0/1, lags as int64[]) after validating params."""
    lanes, seg = _rans.check_layout(params, KEYS, rows, n, NAME)     # also n <= MAX_N
    fz, lags = params["frozen"], params["lags"]
    if not isinstance(fz, (bytes, bytearray)) or len(fz) not in (0, (n + 7) // 8):
        raise FormatError(f"model codec param frozen must be empty or {(n + 7) // 8} bytes, got {type(fz).__name__} "
                          f"of length {len(fz) if isinstance(fz, (bytes, bytearray)) else '?'}")
    if fz and n % 8 and fz[-1] >> (n % 8):
        raise FormatError("model codec param frozen has bits set past the row length")
    if (not isinstance(lags, list) or len(lags) > MAX_LAGS
            or any(not isinstance(L, int) or isinstance(L, bool) or not 1 <= L < max(n, 1) for L in lags)
            or any(a >= b for a, b in zip(lags, lags[1:]))):
        raise FormatError(f"model codec param lags must be at most {MAX_LAGS} increasing integers in [1, n-1], "
                          f"got {lags!r}")
    frozen = (np.unpackbits(np.frombuffer(bytes(fz), np.uint8), bitorder="little")[:n] if fz
              else np.zeros(n, np.uint8))
    return lanes, seg, frozen, np.array(lags, np.int64)


def max_words(rows: int, n: int, lanes: int, seg: int) -> int:
    """Longest payload (32-bit words) an encoding can have: the segment table, every lane's state,
    and at most one stream word per coded symbol. Longer payloads are refused before decoding."""
    nseg = _nseg(rows, n, seg)
    return max(nseg - 1, 0) + nseg * 2 * lanes + rows * n


def unframe(payload, rows: int, n: int, lanes: int, seg: int):
    """(words, segment bounds) of a payload, after _rans.unframe's checks and the length checks
    above: in total (before the words are copied) and per segment (its lanes' states and at most
    one stream word per symbol)."""
    words, bounds = framed(payload, rows, n, lanes, seg)
    return words.astype(np.uint32), bounds


def framed(payload, rows: int, n: int, lanes: int, seg: int):
    """unframe's checks and bounds, the words a view of ``payload`` (check_payload copies nothing)."""
    if len(payload) > 4 * max_words(rows, n, lanes, seg):
        raise FormatError(f"model payload is {len(payload)} bytes, longer than any encoding of a "
                          f"{rows}x{n} tensor ({4 * max_words(rows, n, lanes, seg)} bytes at most)")
    nseg = _nseg(rows, n, seg)
    words, bounds = _rans.framing(payload, nseg, lanes)
    _rans.check_segment_words(bounds, rows, n, lanes, seg, "model")
    return words, bounds


def check_payload(params: dict, payload, rows: int, n: int) -> None:
    """Reject bad params or framing before the initial values are generated."""
    lanes, seg, _, _ = check_params(params, rows, n)
    framed(payload, rows, n, lanes, seg)


def working_bytes(params: dict, rows: int, n: int, itemsize: int) -> int:
    """Upper bound of the memory ``decode_values`` allocates (a checked, framed payload): the
    output (rows*n*itemsize), the payload as words (at most max_words), and per thread one
    segment's row scratch (O(n)). ``decode`` needs 8-byte output items instead of itemsize."""
    lanes, seg, _, _ = check_params(params, rows, n)
    nseg = _nseg(rows, n, seg)
    threads = min(_core.num_threads(), nseg)
    per_thread = _core.model_row_scratch_bytes * (n + 1) + _core.model_segment_scratch_bytes
    return rows * n * itemsize + 4 * max_words(rows, n, lanes, seg) + threads * per_thread + 8 * (nseg + 1)


# ---- decoding ------------------------------------------------------------------------------
def _decode(params, payload, values, out, gather: bool):
    rows, n = values.shape
    lanes, seg, frozen, lags = check_params(params, rows, n)
    words, bounds = unframe(payload, rows, n, lanes, seg)
    _core.model_decode(_bits(values), frozen, lags, seg, lanes, words, bounds, out, gather)
    return out


def decode(params: dict, payload, values: np.ndarray) -> np.ndarray:
    """The canonical permutation (int64 rows x n)."""
    return _decode(params, payload, values, np.empty(values.shape, np.int64), False)


def decode_values(params: dict, payload, values: np.ndarray) -> np.ndarray:
    """The rearranged values themselves (decode then perm.check_apply, in one pass: a decoded
    row is a permutation by construction, each position taking one remaining item)."""
    out = np.empty(values.shape, np.dtype(f"u{values.dtype.itemsize}"))
    return _decode(params, payload, values, out, True).view(values.dtype)


def rows_payload(params: dict, payload, rows: int, n: int, start: int, stop: int, initial=None):
    """(lo, hi, params, payload) decoding rows [lo, hi) ⊇ [start, stop): the covering segments
    (count tables restart at every segment, formats/codecs/model.md §5b-6). The payload has
    passed check_payload (tensors.decode_rows)."""
    lanes, seg, _, _ = check_params(params, rows, n)
    lo, hi, sub_seg, sub = _rans.segments_covering(payload, rows, n, lanes, seg, start, stop)
    return lo, hi, {**params, "segment_rows": sub_seg}, sub


# ---- encoding ------------------------------------------------------------------------------
def _encode_with(keys, perm, rows, n, lanes, seg, frozen, lags):
    """(params, payload) with the given options, or None if a frozen column changes order."""
    fbits = np.zeros(n, np.uint8) if frozen is None else np.asarray(frozen, np.uint8)
    params = {"name": NAME, "lanes": lanes, "segment_rows": seg,
              "frozen": b"" if frozen is None or not fbits.any() else np.packbits(fbits, bitorder="little").tobytes(),
              "lags": [int(L) for L in lags]}
    payload = _core.model_encode(keys, False, perm, fbits, np.array(lags, np.int64), seg, lanes)
    return None if payload is None else (params, payload)


EXACT_TRIALS = 1 << 16    # tensors up to this many weights try every option on the whole tensor
TRIAL_WEIGHTS = 1 << 16   # larger ones try them on about this many evenly spaced rows' weights


def sample_rows(rows: int, n: int, weights: int = TRIAL_WEIGHTS) -> np.ndarray:
    """Evenly spaced row indices holding about ``weights`` weights (at least one row)."""
    return np.unique(np.linspace(0, rows - 1, max(1, min(rows, -(-weights // max(n, 1))))).astype(np.int64))


def encode(perm: np.ndarray, values: np.ndarray, lanes=None, segment_rows=None, frozen="auto", lags="auto",
           **options):
    """frozen: "auto" (search), None, or a bool array of n; lags: "auto" (try none, the best and
    the best two correlated lags) or a list of increasing integers in [1, n-1]. With more than one
    option to try, a tensor above EXACT_TRIALS weights compares them on a deterministic sample of
    rows (sample_rows) and encodes the whole tensor once, with the winner."""
    rows, n = perm.shape
    if n > MAX_N:
        raise PermcodecError(f"the model codec takes rows of at most 2**28 = {MAX_N} weights (got {n}); "
                             f"use codec='uniform' or 'packed'")
    lanes, seg = _rans.layout(rows, n, _rans.row_bits(values), lanes, segment_rows)
    keys = keys_of(values)
    perm = np.ascontiguousarray(perm, np.int64)
    if rows * n == 0:
        return _encode_with(keys, perm, rows, n, lanes, seg, None, [])
    fz_opts = [None]
    if isinstance(frozen, str):
        found = find_frozen(keys, perm)
        if found is not None:
            fz_opts.append(found)
    elif frozen is not None:
        fz_opts = [np.asarray(frozen, bool)]
    if isinstance(lags, str):
        best = find_lags(keys, perm)
        lag_opts = [[]] + [best[:k] for k in range(1, len(best) + 1)]
    else:
        lag_opts = [list(lags)]
    opts = [(fz, lg) for fz in fz_opts for lg in lag_opts]
    if len(opts) > 1 and rows * n > EXACT_TRIALS:
        pick = sample_rows(rows, n)
        ks, ps = np.ascontiguousarray(keys[pick]), np.ascontiguousarray(perm[pick])
        sizes = []
        for fz, lg in opts:
            got = _encode_with(ks, ps, len(pick), n, 1, len(pick), fz, lg)
            sizes.append(np.inf if got is None else len(got[1]))
        opts = [opts[int(np.argmin(sizes))]]
    result = None
    for fz, lg in opts:
        got = _encode_with(keys, perm, rows, n, lanes, seg, fz, lg)
        if got is None:
            raise ValueError("model codec: the given frozen columns change their order in some row")
        if result is None or len(got[1]) < len(result[1]):
            result = got
    return result


PROSPECT_WEIGHTS = 1 << 15   # weights of the sample that ``prospect`` codes
WORTH = 0.995                # ``worth``: run the full encode where the sample codes below this


def prospect(perm: np.ndarray, values: np.ndarray) -> float:
    """model bits / information limit on about PROSPECT_WEIGHTS weights of evenly spaced rows: the
    smaller of the cheapest options (no frozen columns, no lags) and the frozen columns and lags
    found on the sample itself. Deterministic; milliseconds whatever the tensor's size."""
    from ..perm import info_bits
    rows, n = perm.shape
    if rows * n == 0:
        return 1.0
    pick = sample_rows(rows, n, PROSPECT_WEIGHTS)
    v = np.ascontiguousarray(values[pick])
    limit = info_bits(v)
    if limit <= 0:
        return 0.0
    k, p = keys_of(v), np.ascontiguousarray(perm[pick], np.int64)
    best = len(_encode_with(k, p, len(pick), n, 1, len(pick), None, [])[1])
    fz, lg = find_frozen(k, p), find_lags(k, p)
    if fz is not None or lg:
        best = min(best, len(_encode_with(k, p, len(pick), n, 1, len(pick), fz, lg)[1]))
    return best * 8 / limit


def worth(perm: np.ndarray, values: np.ndarray) -> bool:
    """Whether save(codec="auto") should run the full ``model`` encode beside ``uniform``: always
    for tensors up to EXACT_TRIALS weights, else where ``prospect`` < WORTH. It only decides whether
    ``model`` is tried, never the bits of a ``model`` encoding."""
    rows, n = perm.shape
    return rows * n <= EXACT_TRIALS or prospect(perm, values) < WORTH

