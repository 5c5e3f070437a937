"""``packed``: a fixed layout in which every weight vector decodes on its own (formats/codecs/packed.md).

Each row is a Fisher–Yates swap chain. Its *items* are the row's source indices in increasing
order, leaving out the members of its largest class L of equal values (ties broken by the smallest
source index), so a row with ``m`` copies of its most common value has ``T = n - m`` items and
digits of radices ``n, n-1, ..., m+1``. Item ``t`` takes the slot ``free[d_t]`` and the last free
slot moves into its place; the members of L then fill the ``m`` slots left, in increasing order.
Members of any other class of equal values have their slots sorted, so the result is the canonical
permutation (perm.py). A row of distinct values costs log2(n!) bits and a row with one repeated
value (pruned zeros, a constant) log2(n!/m!): both the information limit. Further repeated classes
cost log2(m_c!) bits each above it.

Digits become bits through a small state machine with a schedule fixed by ``(n, m)`` alone: state
``x`` below a bound ``U`` (``U`` does not depend on the data); before digit ``t``, ``K_t`` bits are
shifted into ``x`` (MSB first) so that ``U`` reaches ``need_t = min(2**37, R_t * ... * R_{T-1})``;
then ``d = x mod R``, ``x = x div R``, ``U = U div R``. Every row's size is ``sum K_t`` bits, within
a bit of the limit, and ``x`` ends at 0 in every valid stream. Rows follow each other in the bit
stream without padding; the stream is zero-padded to a whole byte.

``params``: ``{"name": "packed", "ties": bool}``; ``ties`` is false exactly when no row repeats a
value (every class is a single element and L is the element at index 0). A payload that says
``ties=false`` for values with a repeated value in some row is rejected: two readers could
otherwise read different permutations from it.

This module holds the layout, the payload checks, the memory bound and the plain reference
encoder and decoder (the executable spec); the compiled core (csrc/packed.cpp, ``permcodec._core``)
runs the loops and is tested equal to the references bit for bit.
"""
from __future__ import annotations

import numpy as np

from .. import _core
from ..dtypes import order_keys
from ..errors import FormatError, PermcodecError

NAME = "packed"
AUTO = False
NEED_BITS = 37
NEED = 1 << NEED_BITS
MAX_N = 1 << 24


# ---- layout --------------------------------------------------------------------------------
PERM, SEQ = 0, 1  # row modes: Fisher-Yates chain over the items / class of every position


def radices(mode: int, n: int, p: int) -> list:
    """The digits' radices of a row: PERM with largest class size ``p``: n, n-1, ..., p+1;
    SEQ with ``p`` classes: p, repeated n times."""
    return list(range(n, p, -1)) if mode == PERM else [p] * n


def schedule(mode: int, n: int, p: int) -> np.ndarray:
    """``K_t`` (uint8, one per digit): bits read before digit ``t``. Pure integer arithmetic,
    the same for every row with the same ``(mode, n, p)``."""
    rad = radices(mode, n, p)
    T = len(rad)
    out = np.zeros(T, np.uint8)
    P, tail = 1, T  # the tail: digits whose suffix product P stays below NEED
    while tail > 0 and P * rad[tail - 1] < NEED:
        tail -= 1
        P *= rad[tail]
    U = 1
    for t in range(T):
        R = rad[t]
        if t < tail:
            need = NEED
        else:
            need = P
            P //= R
        if U < need:
            k = (need - 1).bit_length() - U.bit_length()
            if (U << k) < need:
                k += 1
            out[t] = k
            U <<= k
        U //= R
    return out


def row_bits(mode: int, n: int, p: int) -> int:
    return int(schedule(mode, n, p).sum(dtype=np.int64))


def row_mode(n: int, m: int, k: int) -> tuple:
    """(mode, p) of a row of length ``n`` with ``k`` classes, the largest of size ``m``:
    SEQ where it takes fewer bits than PERM."""
    if k > 1 and row_bits(SEQ, n, k) < row_bits(PERM, n, m):
        return SEQ, k
    return PERM, m


def classes(keys: np.ndarray):
    """Per row: ``order`` (stable argsort of keys), ``start`` (True where a class begins in sorted
    order), ``big`` (where in ``order`` the largest class begins: ties to the class holding the
    smallest source index), its size ``m`` and the number of classes ``k``."""
    rows, n = keys.shape
    order = np.argsort(keys, axis=1, kind="stable")
    sk = np.take_along_axis(keys, order, 1)
    start = np.ones((rows, n), bool)
    start[:, 1:] = sk[:, 1:] != sk[:, :-1]
    big = np.zeros(rows, np.int64)
    m = np.ones(rows, np.int64)
    k = start.sum(axis=1)
    for r in range(rows):
        s = np.flatnonzero(start[r])
        length = np.diff(np.append(s, n))
        best = length.max()
        cands = s[length == best]
        big[r] = cands[np.argmin(order[r, cands])]  # stable sort: order[start] is the class's smallest
        m[r] = best
    return order, start, big, m, k


def tied_rows(keys: np.ndarray) -> np.ndarray:
    """True for every row that repeats a key."""
    sk = np.sort(keys, axis=1)
    return (sk[:, 1:] == sk[:, :-1]).any(axis=1)


def has_ties(keys: np.ndarray) -> bool:
    return bool(tied_rows(keys).any())


# ---- encoding ------------------------------------------------------------------------------
def encode(perm: np.ndarray, values: np.ndarray, **options):
    """(params, payload) for the canonical ``perm`` of rows of ``values``."""
    rows, n = perm.shape
    if n > MAX_N:
        raise PermcodecError(f"packed codes rows of at most {MAX_N} weights, not {n}: use codec='uniform'")
    try:
        ties, payload = _core.packed_encode(np.ascontiguousarray(perm, np.int64), _bits(values.reshape(rows, n)))
    except ValueError as e:
        raise PermcodecError(f"{e}: pass the canonical permutation from perm.find") from None
    return {"name": NAME, "ties": ties}, payload


def _bits(values: np.ndarray) -> np.ndarray:
    """The values' bit patterns (what the core compares and gathers), C-contiguous."""
    return np.ascontiguousarray(values).view(np.dtype(f"u{values.dtype.itemsize}"))


def _row(n, cl, r):
    """(mode, p, items, L, tied, seq) of row ``r``: PERM items are the source indices outside the
    largest class L in increasing order; ``tied`` lists the other classes with several members;
    ``seq`` lists every class's members (SEQ rows)."""
    if cl is None:
        return PERM, 1, list(range(1, n)), [0], [], None
    order, start, big, m, k = (c[r] for c in cl)
    bounds = np.append(np.flatnonzero(start), n)
    members = [np.sort(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    mode, p = row_mode(n, int(m), int(k))
    if mode == SEQ:
        return SEQ, p, None, None, None, members
    L = np.sort(order[big:big + m])
    inL = np.zeros(n, bool)
    inL[L] = True
    tied = [c for c, a in zip(members, bounds[:-1]) if len(c) > 1 and a != big]
    return PERM, p, [int(s) for s in np.flatnonzero(~inL)], [int(s) for s in L], tied, None


def encode_reference(perm: np.ndarray, keys: np.ndarray, ties: bool) -> bytes:
    rows, n = perm.shape
    cl = classes(keys) if ties else None
    bits = []
    for r in range(rows):
        mode, p, items, L, tied, seq = _row(n, cl, r)
        if mode == PERM:
            inv = np.empty(n, np.int64)
            inv[perm[r]] = np.arange(n)
            free = list(range(n))
            where = list(range(n))
            digits = []
            for t, s in enumerate(items):
                slot = int(inv[s])
                d = where[slot]
                last = free[n - t - 1]
                free[d] = last
                where[last] = d
                digits.append(d)
        else:
            cls = np.empty(n, np.int64)
            for c, mem in enumerate(seq):
                cls[mem] = c
            digits = [int(c) for c in cls[perm[r]]]
        rad = radices(mode, n, p)
        K = schedule(mode, n, p)
        x = 0
        chunks = [0] * len(rad)
        for t in range(len(rad) - 1, -1, -1):
            x = x * rad[t] + digits[t]
            chunks[t] = x & ((1 << int(K[t])) - 1)
            x >>= int(K[t])
        assert x == 0
        for t in range(len(rad)):
            bits.extend((chunks[t] >> i) & 1 for i in range(int(K[t]) - 1, -1, -1))
    return np.packbits(np.array(bits, np.uint8), bitorder="big").tobytes()


# ---- decoding ------------------------------------------------------------------------------
def _ties(params) -> bool:
    """Validate ``params`` (formats/codecs/packed.md §2); returns ``ties``."""
    if not isinstance(params, dict) or params.get("name") != NAME:
        raise FormatError(f"packed params must be a map with name 'packed', got {params!r}")
    extra = set(params) - {"name", "ties"}
    if extra:
        raise FormatError(f"packed params have unknown fields {sorted(extra)}: upgrade permcodec")
    ties = params.get("ties")
    if not isinstance(ties, bool):
        raise FormatError(f"packed params field 'ties' must be true or false, got {ties!r}")
    return ties


def _check_n(n: int) -> None:
    if n > MAX_N:
        raise FormatError(f"packed rows hold at most {MAX_N} weights, this tensor's rows have {n}")


def check_params(params, values) -> bool:
    """Validate ``params`` against the tensor (rows x n values); returns ``ties``."""
    ties = _ties(params)
    if values.ndim != 2:
        raise FormatError(f"packed decodes rows x n values, got shape {values.shape}")
    _check_n(values.shape[1])
    return ties


def check_size(payload, total_bits: int) -> None:
    need = (total_bits + 7) // 8
    if len(payload) != need:
        raise FormatError(f"packed payload is {len(payload)} bytes, {need} expected ({total_bits} bits)")
    if total_bits % 8 and payload[-1] & ((1 << (8 - total_bits % 8)) - 1):
        raise FormatError("packed payload's padding bits are not zero: corrupt payload")


def _most_bits(rows: int, n: int) -> int:
    """Bits of ``rows`` rows of distinct values: the largest layout (a repeated value only shrinks it)."""
    return rows * _core.packed_row_bits(PERM, n, 1) if n >= 2 else 0


def check_payload(params: dict, payload, rows: int, n: int) -> None:
    """Reject bad params or a payload of impossible length before the initial values are generated:
    exact for ``ties=false`` (every row has one layout), an upper bound otherwise."""
    ties = _ties(params)
    _check_n(n)
    most = _most_bits(rows, n)
    if not ties:
        check_size(payload, most)
    elif len(payload) > (most + 7) // 8:
        raise FormatError(f"packed payload is {len(payload)} bytes, rows of {rows} x {n} weights take at most "
                          f"{(most + 7) // 8}: corrupt payload")


def working_bytes(params: dict, rows: int, n: int, itemsize: int) -> int:
    """An upper bound of what :func:`decode_values` allocates, for the loader to check before
    decoding: the output, 16 bytes per row for the row layouts (``ties`` only), 8 per block of 64
    rows, the row-size tables (41 bytes per weight of one row), each thread's O(n) scratch, and a
    fixed 8 MiB for thread stacks and allocator arenas (RSS measured in the tests)."""
    ties = _ties(params)
    out = rows * n * itemsize
    layout = 16 * rows if ties and n >= 2 else 0
    threads = min(max(rows, 1), _core.num_threads())
    scratch = threads * _core.packed_scratch_bytes(n, itemsize)
    return out + layout + 8 * (rows // 64 + 2) + 41 * (n + 1) + scratch + (8 << 20)


def decode(params: dict, payload, values: np.ndarray) -> np.ndarray:
    """The canonical permutation (int64, rows x n) stored in ``payload``; FormatError if corrupt."""
    ties = check_params(params, values)
    return _core.packed_decode(_bits(values), payload, ties, False)


def decode_values(params: dict, payload, values: np.ndarray) -> np.ndarray:
    """The rearranged values (rows x n, values' dtype) without materializing the permutation:
    what decode and perm.check_apply give together, in one pass (tested equal)."""
    ties = check_params(params, values)
    return _core.packed_decode(_bits(values), payload, ties, True).view(values.dtype)


def decode_reference(params: dict, payload, values: np.ndarray) -> np.ndarray:
    """Plain reference decoder: one row at a time, Python integers (formats/codecs/packed.md §4)."""
    ties = check_params(params, values)
    rows, n = values.shape
    keys = order_keys(values)
    tied = tied_rows(keys) if not ties and n else np.zeros(rows, bool)
    if tied.any():
        r = int(np.flatnonzero(tied)[0])
        raise FormatError(f"packed row {r} holds equal values while the payload says ties=false "
                          f"(a conforming writer sets ties=true): corrupt payload")
    cl = classes(keys) if ties else None
    layout = [_row(n, cl, r) for r in range(rows)]
    check_size(payload, sum(row_bits(mode, n, p) for mode, p, *_ in layout))
    stream = np.unpackbits(np.frombuffer(payload, np.uint8), bitorder="big")
    perm = np.empty((rows, n), np.int64)
    pos = 0
    for r, (mode, p, items, L, tied, seq) in enumerate(layout):
        rad = radices(mode, n, p)
        K = schedule(mode, n, p)
        free = list(range(n))
        x = 0
        digits = []
        for t, R in enumerate(rad):
            for i in range(int(K[t])):
                x = (x << 1) | int(stream[pos + i])
            pos += int(K[t])
            x, d = divmod(x, R)
            digits.append(d)
        if x != 0:
            raise FormatError(f"packed row {r} does not end in state 0: corrupt payload")
        row = perm[r]
        if mode == SEQ:
            used = [0] * p
            for j, c in enumerate(digits):
                if used[c] == len(seq[c]):
                    raise FormatError(f"packed row {r} places too many copies of one value: corrupt payload")
                row[j] = seq[c][used[c]]
                used[c] += 1
            continue
        slot_of = {}
        for t, (s, d) in enumerate(zip(items, digits)):
            slot_of[s] = free[d]
            free[d] = free[n - t - 1]
        for s, slot in slot_of.items():
            row[slot] = s
        for members in tied:
            row[sorted(slot_of[int(s)] for s in members)] = members
        row[sorted(free[:len(L)])] = L
    return perm


# ---- rows of a tensor ----------------------------------------------------------------------
LAYOUT_CHUNK = 1 << 20   # weights whose initial values rows_payload holds at a time


def _bit_range(payload, first: int, last: int) -> bytes:
    """Bits [first, last) of ``payload`` as a payload of their own (MSB first, zero-padded)."""
    if last > 8 * len(payload):
        raise FormatError(f"packed payload is {len(payload)} bytes, its rows need at least {(last + 7) // 8}: "
                          f"corrupt payload")
    size = (last - first + 7) // 8
    b0, shift = first // 8, first % 8
    src = np.zeros(size + 1, np.uint16)
    got = np.frombuffer(payload, np.uint8)[b0:b0 + size + 1]
    src[:got.size] = got
    out = ((src[:-1] << shift) | (src[1:] >> (8 - shift))).astype(np.uint8)
    if (last - first) % 8:
        out[-1] &= (0xFF << (8 - (last - first) % 8)) & 0xFF
    return out.tobytes()


def rows_payload(params: dict, payload, rows: int, n: int, start: int, stop: int, initial):
    """(start, stop, params, payload) decoding rows [start, stop) alone: rows follow each other
    without padding, so only their bits are cut out. Without ties every row has one layout; with
    ties the rows above ``start`` are sized by the core's layout pass over their initial values
    (``initial(lo, hi)``, LAYOUT_CHUNK weights at a time), never decoded."""
    ties = _ties(params)
    _check_n(n)
    if n < 2:
        return start, stop, params, b""
    if not ties:
        per = _core.packed_row_bits(PERM, n, 1)
        return start, stop, params, _bit_range(payload, start * per, stop * per)
    step = max(1, LAYOUT_CHUNK // n)
    first = 0
    for lo in range(0, start, step):
        first += _core.packed_layout_bits(_bits(initial(lo, min(start, lo + step))), True)
    last = first + _core.packed_layout_bits(_bits(initial(start, stop)), True)
    return start, stop, params, _bit_range(payload, first, last)
