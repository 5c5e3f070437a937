"""``plain``: every index in ceil(log2 n) bits, little-endian bit order, rows back to back.

The simplest exact codec, and the baseline the others are measured against. Bit ``b`` of the
payload is bit ``b % 8`` of byte ``b // 8``; index ``i`` of the row-major permutation occupies
bits ``[i*w, (i+1)*w)``, least significant bit first, where ``w = max(1, ceil(log2 n))``.
"""
from __future__ import annotations

import numpy as np

from ..errors import FormatError
from ..perm import check

NAME = "plain"
AUTO = False


def width(n: int) -> int:
    return max(1, int(n - 1).bit_length())


def encode(perm: np.ndarray, values=None, **options):
    rows, n = perm.shape
    w = width(n)
    bits = ((perm.reshape(-1, 1).astype(np.uint64) >> np.arange(w, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8)
    return {"name": NAME}, np.packbits(bits.ravel(), bitorder="little").tobytes()


def check_payload(params: dict, payload, rows: int, n: int) -> None:
    """Reject a payload of the wrong length before the initial values are generated."""
    if set(params) != {"name"}:
        raise FormatError(f"plain takes no parameters, got {sorted(map(str, set(params) - {'name'}))}")
    need = (rows * n * width(n) + 7) // 8
    if len(payload) != need:
        raise FormatError(f"plain payload is {len(payload)} bytes, {need} expected for {rows}x{n}")
    spare = -(rows * n * width(n)) % 8
    if spare and payload[-1] >> (8 - spare):
        raise FormatError(f"plain payload: the {spare} unused high bits of the last byte are not zero")


def decode(params: dict, payload, values) -> np.ndarray:
    rows, n = values.shape
    w = width(n)
    check_payload(params, payload, rows, n)
    bits = np.unpackbits(np.frombuffer(payload, np.uint8), bitorder="little")[: rows * n * w]
    weights = np.left_shift(np.int64(1), np.arange(w, dtype=np.int64))
    perm = (bits.reshape(rows * n, w).astype(np.int64) @ weights).reshape(rows, n)
    return check(perm, "plain permutation")
