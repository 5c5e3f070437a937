"""Permutation codecs: rows of a canonical permutation <-> bytes.

A codec is a module with a ``NAME`` and two functions::

    encode(perm, values, **options) -> (params: dict, payload: bytes)
    decode(params, payload, values) -> perm

``perm`` is an int64 array (rows, n), canonical as perm.py defines it; ``values`` are the
tensor's initial values as (rows, n) (numpy; bfloat16 as uint16 patterns), which a codec may use
for the tie structure and the initial rank order. ``params`` go into the header (msgpack-safe
values only) and change the bits; options that only change speed do not appear in them.
``decode`` must return a valid permutation or raise FormatError, for any bytes.

An optional ``decode_values(params, payload, values) -> rearranged values`` (values' dtype and
shape) is what ``decode`` followed by perm.check_apply gives, in one pass; the loader prefers it.
It must check the permutation property itself (csrc/perm.h's ``put_row`` does it while gathering).

An optional ``worth(perm, values) -> bool`` lets save(codec="auto") skip a slow codec where a
cheap deterministic look ahead says it will not be the smallest (it never changes a codec's bits).
"""
from __future__ import annotations

from ..errors import FormatError, PermcodecError
from . import model, packed, plain, uniform

REGISTRY = {plain.NAME: plain, packed.NAME: packed, uniform.NAME: uniform, model.NAME: model}


def register(module) -> None:
    REGISTRY[module.NAME] = module


def get(name: str):
    try:
        return REGISTRY[name]
    except KeyError:
        raise FormatError(f"unknown codec {name!r}: this permcodec knows {', '.join(sorted(REGISTRY))}; "
                          f"upgrade permcodec to read this file") from None


def choose(name: str) -> list:
    """Candidate codecs for save(codec=name): 'auto' tries every size-optimal one."""
    if name == "auto":
        return [m for m in REGISTRY.values() if getattr(m, "AUTO", False)] or [plain]
    if name not in REGISTRY:
        raise PermcodecError(f"unknown codec {name!r}: choose one of auto, {', '.join(sorted(REGISTRY))}")
    return [REGISTRY[name]]
