"""Tensor dtypes as the file names them, and how each is held in numpy (no torch here).

bfloat16 and the float8 formats have no numpy dtype: their bytes travel as unsigned integers of
the same width. The decoded bytes of every tensor are its elements in C order, little endian.
"""
from __future__ import annotations

import numpy as np

from .errors import FormatError

# file name -> (numpy storage dtype, itemsize)
STORAGE = {
    "float64": np.dtype("<f8"), "float32": np.dtype("<f4"), "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"), "float8_e4m3fn": np.dtype("u1"), "float8_e5m2": np.dtype("u1"),
    "complex128": np.dtype("<c16"), "complex64": np.dtype("<c8"),
    "int64": np.dtype("<i8"), "int32": np.dtype("<i4"), "int16": np.dtype("<i2"), "int8": np.dtype("i1"),
    "uint64": np.dtype("<u8"), "uint32": np.dtype("<u4"), "uint16": np.dtype("<u2"), "uint8": np.dtype("u1"),
    "bool": np.dtype("?"),
}
# dtypes whose tensors can be permuted (initial values come from a rule)
PERMUTABLE = ("float64", "float32", "float16", "bfloat16")


def storage(name: str) -> np.dtype:
    try:
        return STORAGE[name]
    except KeyError:
        raise FormatError(f"unknown dtype {name!r}: this reader knows {', '.join(STORAGE)}") from None


def itemsize(name: str) -> int:
    return storage(name).itemsize


def order_keys(values: np.ndarray) -> np.ndarray:
    """Unsigned integer keys with the same order as the float values and equal iff the bits are
    equal (-0.0 sorts just below +0.0). ``values`` are float arrays, or uint16 bfloat16 patterns."""
    width = values.dtype.itemsize * 8
    bits = values.view(np.dtype(f"u{values.dtype.itemsize}"))
    sign = bits.dtype.type(1 << (width - 1))
    return np.where(bits & sign, ~bits, bits | sign)
