"""Philox4x32-10, the counter-based generator every permcodec value comes from.

Philox (Salmon et al., SC'11, the Random123 library) maps a 128-bit counter and a 64-bit key to
128 random bits using only 32x32->64-bit integer multiplies, xors and additions, so every machine
and every device computes the same words. ``philox4x32`` is the plain numpy reference;
the compiled core (csrc/values.cpp, ``permcodec._core``) holds the fast path, tested equal to it.

Known-answer vectors (Random123 ``tests/kat_vectors``) are in ``KAT`` and checked by the tests.
"""
from __future__ import annotations

import numpy as np

M0 = 0xD2511F53
M1 = 0xCD9E8D57
W0 = 0x9E3779B9
W1 = 0xBB67AE85
ROUNDS = 10
MASK32 = 0xFFFFFFFF

# (counter[4], key[2]) -> output[4], from Random123 tests/kat_vectors.
KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def philox4x32(c0, c1, c2, c3, k0, k1):
    """Ten Philox rounds on uint64 arrays holding 32-bit words; returns four uint64 word arrays."""
    c0, c1, c2, c3 = (np.asarray(x, dtype=np.uint64) for x in (c0, c1, c2, c3))
    k0 = np.uint64(k0)
    k1 = np.uint64(k1)
    m32 = np.uint64(MASK32)
    for r in range(ROUNDS):
        if r:
            k0 = (k0 + np.uint64(W0)) & m32
            k1 = (k1 + np.uint64(W1)) & m32
        p0 = c0 * np.uint64(M0)
        p1 = c2 * np.uint64(M1)
        c0, c1, c2, c3 = (
            (p1 >> np.uint64(32)) ^ c1 ^ k0,
            p1 & m32,
            (p0 >> np.uint64(32)) ^ c3 ^ k1,
            p0 & m32,
        )
    return c0, c1, c2, c3


STREAM_BITS = 62
VALUE_DOMAIN = 0
MASK_DOMAIN = 1


def blocks(seed: int, stream: int, domain: int, start: int, count: int) -> np.ndarray:
    """Words of blocks ``start .. start+count-1``: uint32 array (count, 4).

    Block ``i`` of (seed, stream, domain) is Philox4x32-10 with key
    ``(seed mod 2^32, seed >> 32)`` and counter
    ``(i mod 2^32, i >> 32, stream mod 2^32, (stream >> 32) | domain << 30)``.
    """
    i = np.arange(start, start + count, dtype=np.uint64)
    out = philox4x32(i & np.uint64(MASK32), i >> np.uint64(32),
                     np.full(count, stream & MASK32, np.uint64),
                     np.full(count, (stream >> 32) | (domain << 30), np.uint64),
                     seed & MASK32, seed >> 32)
    return np.stack(out, axis=1).astype(np.uint32)


def element_words(seed: int, stream: int, start: int, count: int, masked: bool):
    """Per-element words ``(a, b, m)`` for elements ``start .. start+count-1`` (see values.py).

    ``m`` is None when ``masked`` is false.
    """
    j = np.arange(start, start + count, dtype=np.uint64)
    first = start >> 1
    vb = blocks(seed, stream, VALUE_DOMAIN, first, ((start + count + 1) >> 1) - first)
    row = (j >> np.uint64(1)) - np.uint64(first)
    odd = (j & np.uint64(1)).astype(bool)
    a = np.where(odd, vb[row, 2], vb[row, 0])
    b = np.where(odd, vb[row, 3], vb[row, 1])
    m = None
    if masked:
        first = start >> 2
        mb = blocks(seed, stream, MASK_DOMAIN, first, ((start + count + 3) >> 2) - first)
        m = mb[(j >> np.uint64(2)) - np.uint64(first), (j & np.uint64(3)).astype(np.int64)]
    return a, b, m
