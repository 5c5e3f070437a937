"""Tensor payloads <-> bytes, without torch: raw encodings, permuted tensors, digests.

The torch adapter (api.py) hands numpy arrays in and gets numpy arrays back; everything that
decides bytes lives here, so the format can be read with numpy alone.

Before a permuted tensor's values are generated, the working memory its decode will take (the
values, and the codec's ``working_bytes``, or a conservative formula for a codec without one) is
checked against :func:`working_budget`: WORK_FACTOR times the decoded size, plus O(row) scratch
per decoding thread. A small hostile file cannot make a decode allocate more than that; a valid
file that does not fit in memory raises MemoryError saying so, never a corruption error.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os

import numpy as np
import zstandard

from . import codecs, dtypes, perm as _perm
from .errors import FormatError, PermcodecError, VersionError
from .rules import Rule
from .values import generate


def digest(arr: np.ndarray) -> bytes:
    return hashlib.sha256(np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data).digest()


# ---- raw tensors -------------------------------------------------------------------------
def _shuffle(b: np.ndarray, size: int) -> np.ndarray:
    return b.reshape(-1, size).T.copy()


def _unshuffle(b: np.ndarray, size: int) -> np.ndarray:
    return b.reshape(size, -1).T.copy()


def encode_raw(arr: np.ndarray, level: int = 3) -> tuple[str, bytes]:
    """(encoding, payload) for a raw tensor: the smallest of none, zstd and shuffle+zstd."""
    b = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
    cctx = zstandard.ZstdCompressor(level=level, write_content_size=True)
    best = ("none", b.tobytes())
    if b.size == 0:
        return best
    candidates = [("zstd", b)]
    if arr.dtype.itemsize > 1:
        candidates.insert(0, ("shuffle+zstd", _shuffle(b, arr.dtype.itemsize)))
    for enc, data in candidates:
        out = cctx.compress(data.tobytes())
        if len(out) < len(best[1]):
            best = (enc, out)
    return best


def _frame_size(payload) -> tuple[int, int]:
    """(bytes taken, most bytes it can produce) of the zstd frame at the start of ``payload``, from
    its block headers alone (zstd's format document, §Blocks), before anything is allocated."""
    pos, most = zstandard.frame_header_size(payload), 0
    while True:
        if pos + 3 > len(payload):
            raise zstandard.ZstdError("frame ends inside a block header")
        head = int.from_bytes(payload[pos:pos + 3], "little")
        kind, size = (head >> 1) & 3, head >> 3
        if kind == 3:
            raise zstandard.ZstdError("reserved block type")
        pos += 3 + (1 if kind == 1 else size)
        most += zstandard.BLOCKSIZE_MAX if kind == 2 else size  # raw and RLE blocks state their size
        if head & 1:
            return pos + 4 * zstandard.get_frame_parameters(payload).has_checksum, most


def _out_of_memory(entry: dict) -> MemoryError:
    return MemoryError(f"out of memory decoding tensor {entry['name']!r} ({entry['dtype']} {entry['shape']}, "
                       f"{nbytes(entry)} bytes): the file is valid as far as read; free memory, or read "
                       f"tensors one at a time with permcodec.open")


def decode_raw(entry: dict, payload) -> np.ndarray:
    try:
        return _decode_raw(entry, payload)
    except MemoryError:
        raise _out_of_memory(entry) from None


def _decode_raw(entry: dict, payload) -> np.ndarray:
    dt = dtypes.storage(entry["dtype"])
    shape = tuple(entry["shape"])
    nbytes = math.prod(shape) * dt.itemsize
    enc = entry["encoding"]
    if enc == "none":
        data = np.frombuffer(payload, np.uint8).copy()
    else:
        try:
            declared = zstandard.frame_content_size(payload)
            used, most = _frame_size(payload)
        except zstandard.ZstdError as e:
            raise FormatError(f"tensor {entry['name']!r}: bad zstd frame: {e}") from None
        if used != len(payload):
            raise FormatError(f"tensor {entry['name']!r}: section holds {len(payload)} bytes, its zstd frame {used}")
        if declared != nbytes or nbytes > most:
            raise FormatError(f"tensor {entry['name']!r}: zstd frame declares {declared} bytes and can produce at "
                              f"most {most}, shape and dtype need {nbytes}")
        try:
            data = zstandard.ZstdDecompressor().decompress(payload, max_output_size=nbytes)
        except zstandard.ZstdError as e:
            raise FormatError(f"tensor {entry['name']!r}: zstd data is corrupt: {e}") from None
        if len(data) != nbytes:
            raise FormatError(f"tensor {entry['name']!r}: zstd frame gave {len(data)} bytes, expected {nbytes}")
        data = np.frombuffer(data, np.uint8)
        if enc == "shuffle+zstd":
            data = _unshuffle(data, dt.itemsize)
    if dt == np.bool_ and data.size and data.max() > 1:
        raise FormatError(f"tensor {entry['name']!r}: a bool tensor holds a byte other than 0 or 1")
    return data.view(dt).reshape(shape)


# ---- permuted tensors --------------------------------------------------------------------
def initial_rows(entry: dict, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """The initial values of rows [lo, hi) of a permuted tensor as (hi - lo, n): the generator is
    counter-based, so rows below ``lo`` are never generated."""
    rule = Rule.from_dict(entry["init"])
    rows, n = _perm.as_rows(entry["shape"])
    if lo == 0 and hi is None:
        return rule.values((rows, n), entry["dtype"])
    hi = rows if hi is None else hi
    return generate(rule, (hi - lo) * n, entry["dtype"], start=lo * n).reshape(hi - lo, n)


def codec_of(entry: dict):
    """(codec module, parameters) of a permuted tensor: the codec map less its ``version`` (absent
    means 1, SPEC §10), once this permcodec is known to read that version of the codec."""
    params = dict(entry["codec"])
    version = params.pop("version", 1)
    module = codecs.get(params["name"])
    reads = getattr(module, "VERSION", 1)   # a codec module states VERSION once it has a version 2
    if type(version) is not int or version < 1:
        raise FormatError(f"tensor {entry['name']!r}: codec version must be an integer >= 1, not {version!r}")
    if version > reads:
        from . import __version__
        raise VersionError(f"tensor {entry['name']!r}: codec {module.NAME!r} version {version} is not readable by "
                           f"permcodec {__version__}, which reads {module.NAME!r} versions 1 to {reads}: install a "
                           f"permcodec release that reads {module.NAME!r} version {version} (pip install -U permcodec)")
    return module, params


def _versioned(module, params: dict) -> dict:
    """The codec map a writer records: ``version`` only past 1, so version-1 files keep the bytes
    they had before the key existed (the released golden files re-save identically)."""
    version = getattr(module, "VERSION", 1)
    return params if version == 1 else {**params, "version": version}


def encode_permuted(arr: np.ndarray, rule: Rule, dtype: str, name: str, codec: str = "auto",
                    **options) -> tuple[dict, bytes]:
    """(codec params, payload) of ``arr``, which must rearrange ``rule``'s values row by row."""
    rows, n = _perm.as_rows(arr.shape)
    v = rule.values((rows, n), dtype)
    p = _perm.find(v, arr.reshape(rows, n), name)
    best = None
    candidates = codecs.choose(codec)
    for module in candidates:
        worth = getattr(module, "worth", None)  # a slow codec's cheap look ahead (auto only)
        if len(candidates) > 1 and worth is not None and not worth(p, v):
            continue
        params, payload = module.encode(p, v, **options)
        params = _versioned(module, params)
        if best is None or len(payload) < len(best[1]):
            best = (params, payload)
    return best


# ---- working memory ------------------------------------------------------------------------
WORK_FACTOR = 16         # a decode may take this many times the tensor's decoded bytes ...
ROW_SCRATCH = 320        # ... plus this many bytes per weight of a row, per decoding thread (packed's
                         # row tables and hash scratch are the largest, ~260 B at n = 2^22) ...
FIXED_SCRATCH = 64 << 20  # ... plus this much (tables, the interpreter's own growth)


def decode_threads(rows: int) -> int:
    """Threads a decode of ``rows`` rows may use (the compiled core's count, else the CPUs)."""
    try:
        from . import _core
        threads = _core.num_threads()
    except (ImportError, AttributeError):
        threads = os.cpu_count() or 1
    return max(1, min(threads, rows))


def working_budget(rows: int, n: int, itemsize: int) -> int:
    """The most working memory a permuted (rows, n) tensor's decode may take."""
    return WORK_FACTOR * rows * n * itemsize + decode_threads(rows) * ROW_SCRATCH * (n + 1) + FIXED_SCRATCH


def working_need(module, params: dict, rows: int, n: int, itemsize: int) -> int:
    """Bytes a decode by codec ``module`` will take: the initial values, and what the codec says
    (``working_bytes``) or, without it, the permutation (int64) and check_apply's output."""
    values = rows * n * itemsize
    bound = getattr(module, "working_bytes", None)
    if bound is None:
        return values + rows * n * (8 + itemsize) + 16 * rows
    need = values + int(bound(params, rows, n, itemsize))
    if getattr(module, "decode_values", None) is None:  # decode's int64 permutation, then check_apply
        need += rows * n * (8 + itemsize)
    return need


def check_working_memory(entry: dict, module, params: dict) -> None:
    """Refuse a permuted tensor whose decode would take more than working_budget, before anything
    is allocated (FormatError: a valid file never asks for it)."""
    rows, n = _perm.as_rows(entry["shape"])
    itemsize = dtypes.itemsize(entry["dtype"])
    need, budget = working_need(module, params, rows, n, itemsize), working_budget(rows, n, itemsize)
    if need > budget:
        raise FormatError(f"tensor {entry['name']!r}: decoding {rows} x {n} weights with codec {module.NAME!r} "
                          f"would take {need} bytes of working memory, more than the {budget} this reader allows "
                          f"({WORK_FACTOR} x the decoded size + O(row) per thread): hostile or corrupt")


@contextlib.contextmanager
def _codec_errors(entry: dict, module, what: str):
    """A codec must not crash on hostile bytes: anything but a PermcodecError is reported as a
    corrupt payload (FormatError), and running out of memory as such."""
    try:
        yield
    except PermcodecError:
        raise
    except MemoryError:
        raise _out_of_memory(entry) from None
    except Exception as e:
        raise FormatError(f"tensor {entry['name']!r}: codec {module.NAME!r} {what} the payload: {e!r}") from None


def check_permuted(entry: dict, payload):
    """(codec module, parameters) of a permuted tensor, after every check that needs no initial
    values: the codec version, the codec's ``check_payload`` (optional) and the working-memory bound."""
    module, params = codec_of(entry)
    check = getattr(module, "check_payload", None)
    with _codec_errors(entry, module, "rejects"):
        if check is not None:
            check(params, payload, *_perm.as_rows(entry["shape"]))
        check_working_memory(entry, module, params)
    return module, params


def decode_permuted(entry: dict, payload, values: np.ndarray | None = None) -> np.ndarray:
    module, params = check_permuted(entry, payload)
    fused = getattr(module, "decode_values", None)  # decode + check_apply in one pass (fast codecs)
    with _codec_errors(entry, module, "failed on"):
        v = initial_rows(entry) if values is None else values
        p = (fused or module.decode)(params, payload, v)
    if fused is not None:
        if not isinstance(p, np.ndarray) or p.shape != v.shape or p.dtype != v.dtype:
            raise FormatError(f"tensor {entry['name']!r}: codec returned {getattr(p, 'shape', p)!r}, "
                              f"expected {v.shape}")
        return p.reshape(entry["shape"])
    if not isinstance(p, np.ndarray) or p.shape != v.shape or p.dtype.kind not in "iu":
        raise FormatError(f"tensor {entry['name']!r}: codec returned {getattr(p, 'shape', p)!r}, expected {v.shape}")
    # whatever the codec does, its output must be a permutation
    try:
        what = f"permutation of {entry['name']!r} (codec {module.NAME!r})"
        return _perm.check_apply(v, p, what).reshape(entry["shape"])
    except MemoryError:
        raise _out_of_memory(entry) from None


def decode_rows(entry: dict, payload, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) along dim 0 (0 <= start <= stop <= shape[0]) of a tensor, equal bit for
    bit to ``decode(entry, payload)[start:stop]``. A permuted tensor whose codec has
    ``rows_payload`` (packed, uniform, model) decodes only the rows, or segments, covering the
    slice, after the whole payload's checks; raw tensors, 1-D tensors and other codecs decode whole."""
    shape = list(entry["shape"])
    module = codec_of(entry)[0] if entry["kind"] == "permuted" else None
    cut = getattr(module, "rows_payload", None)
    if cut is None or len(shape) < 2 or math.prod(shape) == 0:
        return decode(entry, payload)[start:stop]
    module, params = check_permuted(entry, payload)
    if start >= stop:
        return np.empty([0] + shape[1:], dtypes.storage(entry["dtype"]))
    rows, n = _perm.as_rows(shape)
    with _codec_errors(entry, module, "rejects"):
        lo, hi, sub_params, sub = cut(params, payload, rows, n, start, stop, lambda a, b: initial_rows(entry, a, b))
    part = {**entry, "shape": [hi - lo] + shape[1:], "codec": {**entry["codec"], **sub_params}}
    out = decode_permuted(part, sub, initial_rows(entry, lo, hi))
    return out[start - lo:stop - lo]


def decode(entry: dict, payload) -> np.ndarray:
    if entry["kind"] == "raw":
        return decode_raw(entry, payload)
    return decode_permuted(entry, payload)


def nbytes(entry: dict) -> int:
    """Decoded bytes of a header entry (shape × itemsize)."""
    return math.prod(entry["shape"]) * dtypes.itemsize(entry["dtype"])
