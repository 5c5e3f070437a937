"""The permcodec container, version 1: a pure function of bytes (struct, msgpack, hashlib).

Layout (formats/SPEC.md §2), all integers little endian::

    0     preamble   magic(8) major(u16) minor(u16) flags(u32) + 48 zero bytes
    64    sections   each at a multiple of 64, zero padding between
    H     header     msgpack map
    H+L   trailer    header_offset(u64) header_length(u64) sha256(32) reserved(8)=0 end_magic(8)

The trailer's digest is SHA-256 over preamble[0:16] || header || trailer[0:16]; every section's
SHA-256 is in the header. So every byte of a file is covered by a check. ``Writer`` streams
sections to a file object and writes the header last; ``Container`` validates a whole buffer
(bytes or mmap) before anything is decoded.
"""
from __future__ import annotations

import hashlib
import math
import struct

import msgpack

from . import dtypes
from .errors import FormatError, IntegrityError, RuleError, VersionError

MAGIC = b"\x89PERM\r\n\x1a"
END_MAGIC = b"PERMEND\x00"
MAJOR, MINOR = 1, 0
ALIGN = 64
DATA_START = 64
TRAILER = struct.Struct("<QQ32s8s8s")
PREAMBLE = struct.Struct("<8sHHI")
MAX_HEADER = 100 << 20  # bytes
MAX_TENSORS = 1 << 20
MAX_NDIM = 32
MAX_NUMEL = 1 << 48
# A reader decodes at most max(MIN_BUDGET, MAX_EXPANSION * file size) bytes of tensors from one file
# (zstd itself expands at most ~2^15-fold), so a small hostile file cannot demand huge allocations.
MAX_EXPANSION = 1 << 15
MIN_BUDGET = 1 << 26
KINDS = ("raw", "permuted", "alias")
ENCODINGS = ("none", "zstd", "shuffle+zstd")


def _pad(n: int) -> int:
    return -n % ALIGN


def preamble(minor: int = MINOR) -> bytes:
    return PREAMBLE.pack(MAGIC, MAJOR, minor, 0) + bytes(DATA_START - PREAMBLE.size)


class Writer:
    """Streams sections to ``f`` (positioned at its start) and finishes with header and trailer."""

    def __init__(self, f):
        self.f = f
        self.pos = 0
        self.sections = []
        self._write(preamble())

    def _write(self, b) -> None:
        self.f.write(b)
        self.pos += len(b)

    def add_section(self, data) -> int:
        data = memoryview(data).cast("B")
        self._write(bytes(_pad(self.pos)))
        self.sections.append({"offset": self.pos, "length": len(data), "sha256": hashlib.sha256(data).digest()})
        self._write(data)
        return len(self.sections) - 1

    def finish(self, header: dict) -> int:
        header = dict(header, sections=self.sections)
        body = msgpack.packb(header, use_bin_type=True)
        if len(body) > MAX_HEADER:
            raise FormatError(f"header of {len(body)} bytes exceeds the {MAX_HEADER}-byte limit: "
                              "split the model into shards")
        self._write(bytes(_pad(self.pos)))
        offset = self.pos
        self._write(body)
        lens = struct.pack("<QQ", offset, len(body))
        digest = hashlib.sha256(preamble()[:PREAMBLE.size] + body + lens).digest()
        self._write(TRAILER.pack(offset, len(body), digest, bytes(8), END_MAGIC))
        return self.pos


def pack(header: dict, sections) -> bytes:
    """A whole file in memory from a header (without ``sections``) and section payloads."""
    import io
    buf = io.BytesIO()
    w = Writer(buf)
    for s in sections:
        w.add_section(s)
    w.finish(header)
    return buf.getvalue()


def _fail(msg: str):
    raise FormatError(msg)


def _int(v, what: str, lo: int = 0, hi: int = (1 << 64) - 1) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        _fail(f"{what} must be an integer in [{lo}, {hi}], got {v!r}")
    return v


class Container:
    """A validated view of a permcodec file held in ``buf`` (bytes, bytearray or mmap).

    Construction checks the preamble, trailer, header digest, header schema and that the
    sections tile the data region exactly; it reads no section. ``section(i)`` returns a
    section's bytes after checking its SHA-256.
    """

    def __init__(self, buf):
        self.buf = memoryview(buf).cast("B") if not isinstance(buf, memoryview) else buf.cast("B")
        size = len(self.buf)
        if size < DATA_START + TRAILER.size:
            _fail(f"file is {size} bytes, shorter than the smallest permcodec file ({DATA_START + TRAILER.size}): "
                  "truncated or not a permcodec file")
        magic, self.major, self.minor, flags = PREAMBLE.unpack_from(self.buf, 0)
        if magic != MAGIC:
            _fail("not a permcodec file: bad magic bytes at offset 0")
        if self.major != MAJOR:
            raise VersionError(f"file format version {self.major}.{self.minor} is not readable by this reader "
                               f"(reads {MAJOR}.x): install a permcodec that reads format {self.major}")
        if flags != 0 or any(self.buf[PREAMBLE.size:DATA_START]):
            _fail("reserved preamble bytes are not zero: corrupt file")
        h_off, h_len, digest, reserved, end = TRAILER.unpack_from(self.buf, size - TRAILER.size)
        if end != END_MAGIC:
            _fail("bad end magic: the file is truncated or was not written completely")
        if reserved != bytes(8):
            _fail("reserved trailer bytes are not zero: corrupt file")
        if h_len > MAX_HEADER:
            _fail(f"header length {h_len} exceeds the {MAX_HEADER}-byte limit")
        if h_off < DATA_START or h_off % ALIGN or h_off + h_len + TRAILER.size != size:
            _fail(f"header offset {h_off} and length {h_len} do not fit a {size}-byte file")
        body = self.buf[h_off:h_off + h_len]
        lens = struct.pack("<QQ", h_off, h_len)
        if hashlib.sha256(bytes(self.buf[:PREAMBLE.size]) + bytes(body) + lens).digest() != digest:
            raise IntegrityError("header checksum mismatch: the file is corrupt")
        try:
            header = msgpack.unpackb(bytes(body), raw=False, strict_map_key=True, use_list=True)
        except Exception as e:  # msgpack raises several types on malformed input
            _fail(f"header is not valid msgpack: {e}")
        self.header = validate_header(header)
        self._check_tiling(h_off)
        self._check_budget(size)
        self.header_offset = h_off

    def _check_tiling(self, end: int) -> None:
        pos = DATA_START
        for i, s in enumerate(self.header["sections"]):
            off, length = s["offset"], s["length"]
            if off % ALIGN or off < pos or off - pos >= ALIGN:
                _fail(f"section {i} at offset {off} does not follow section {i - 1} (ends at {pos}) "
                      "with only alignment padding")
            if any(self.buf[pos:off]):
                _fail(f"padding before section {i} is not zero: corrupt file")
            pos = off + length
            if pos > end:
                _fail(f"section {i} ({off}+{length}) runs past the header at {end}")
        if end - pos >= ALIGN or any(self.buf[pos:end]):
            _fail(f"bytes between the last section (ends at {pos}) and the header ({end}) are not alignment padding")

    def _check_budget(self, size: int) -> None:
        total = sum(math.prod(t["shape"]) * dtypes.itemsize(t["dtype"])
                    for t in self.header["tensors"] if t["kind"] != "alias")
        budget = max(MIN_BUDGET, MAX_EXPANSION * size)
        if total > budget:
            _fail(f"tensors declare {total} decoded bytes, more than this reader decodes from a {size}-byte file "
                  f"({budget}: {MAX_EXPANSION} bytes per file byte, at least {MIN_BUDGET}): hostile or corrupt "
                  f"(raise permcodec.format.MAX_EXPANSION to read it anyway)")

    def section(self, i: int, check: bool = True) -> memoryview:
        s = self.header["sections"][i]
        view = self.buf[s["offset"]:s["offset"] + s["length"]]
        if check and hashlib.sha256(view).digest() != s["sha256"]:
            raise IntegrityError(f"section {i} checksum mismatch: the file is corrupt")
        return view


MAX_DEPTH = 500  # nesting of metadata maps and lists (msgpack packs at most 511); both sides refuse deeper
INT_RANGE = (-(1 << 63), (1 << 64) - 1)  # what msgpack's int family holds


def name_problem(name) -> str | None:
    """What makes ``name`` unusable as a tensor name (writer and reader), or None."""
    if not isinstance(name, str):
        return f"tensor name {name!r} is a {type(name).__name__}, not a str"
    if not name:
        return "a tensor name is empty"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return f"tensor name {name!r} is not valid Unicode (it holds a lone surrogate)"
    return None


def metadata_problem(meta, reading: bool = False) -> str | None:
    """What makes ``meta`` unusable as header metadata (SPEC §3.1), or None. The writer accepts
    exactly what the reader returns (and tuples, read back as lists); a reader also accepts bin keys."""
    if not isinstance(meta, dict):
        return f"metadata must be a dict, not {type(meta).__name__}"
    stack = [(meta, "metadata", 0)]
    while stack:
        v, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"{where} is nested more than {MAX_DEPTH} levels deep"
        if isinstance(v, dict):
            for k, item in v.items():
                if not isinstance(k, str) and not (reading and isinstance(k, bytes)):
                    return f"{where} has the key {k!r} ({type(k).__name__}): map keys must be str"
                stack.append((k, f"{where} key", depth + 1))
                stack.append((item, f"{where}[{k!r}]", depth + 1))
        elif isinstance(v, (list, tuple)):
            stack.extend((item, f"{where}[{i}]", depth + 1) for i, item in enumerate(v))
        elif isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return f"{where} holds a string that is not valid Unicode (a lone surrogate): {v!r}"
        elif isinstance(v, int):  # bool included
            if not INT_RANGE[0] <= v <= INT_RANGE[1]:
                return f"{where} = {v} is outside msgpack's integers [-2^63, 2^64)"
        elif v is not None and not isinstance(v, (float, bytes)):
            return (f"{where} is a {type(v).__name__}: metadata holds str, int, float, bool, None, bytes, "
                    f"lists and dicts with str keys")
    return None


def validate_header(h) -> dict:
    """Check the header's schema; returns it. Everything a decoder trusts is checked here."""
    from .rules import Rule  # numpy only
    if not isinstance(h, dict):
        _fail("header is not a map")
    sections = h.get("sections")
    if not isinstance(sections, list):
        _fail("header has no 'sections' list")
    for i, s in enumerate(sections):
        if not isinstance(s, dict):
            _fail(f"section {i} is not a map")
        _int(s.get("offset"), f"section {i} offset")
        _int(s.get("length"), f"section {i} length")
        if not isinstance(s.get("sha256"), bytes) or len(s["sha256"]) != 32:
            _fail(f"section {i} sha256 must be 32 bytes")
    problem = metadata_problem(h.get("metadata", {}), reading=True)
    if problem:
        _fail(f"header {problem}")
    tensors = h.get("tensors")
    if not isinstance(tensors, list) or len(tensors) > MAX_TENSORS:
        _fail("header has no 'tensors' list (or more than 2^20 entries)")
    names = {}
    used = set()
    for i, t in enumerate(tensors):
        if not isinstance(t, dict):
            _fail(f"tensor entry {i} is not a map")
        name = t.get("name")
        problem = name_problem(name)
        if problem or name in names:
            _fail(f"tensor entry {i}: {problem or f'duplicate name {name!r}'}")
        names[name] = t
        shape = t.get("shape")
        if not isinstance(shape, list) or len(shape) > MAX_NDIM:
            _fail(f"tensor {name!r}: shape must be a list of at most {MAX_NDIM} sizes")
        for d in shape:
            _int(d, f"tensor {name!r} dimension", 0, MAX_NUMEL)
        if math.prod(shape) > MAX_NUMEL:
            _fail(f"tensor {name!r}: {math.prod(shape)} elements exceeds the limit of 2^48")
        dt = t.get("dtype")
        if not isinstance(dt, str):
            _fail(f"tensor {name!r}: dtype must be a string")
        dtypes.storage(dt)
        kind = t.get("kind")
        if kind not in KINDS:
            _fail(f"tensor {name!r}: unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
        if not isinstance(t.get("digest"), bytes) or len(t["digest"]) != 32:
            _fail(f"tensor {name!r}: digest must be 32 bytes (SHA-256 of the decoded tensor)")
        if kind == "alias":
            continue
        sec = _int(t.get("section"), f"tensor {name!r} section", 0, len(sections) - 1 if sections else -1)
        if sec in used:
            _fail(f"tensor {name!r}: section {sec} is used twice")
        used.add(sec)
        nbytes = math.prod(shape) * dtypes.itemsize(dt)
        if kind == "raw":
            enc = t.get("encoding")
            if enc not in ENCODINGS:
                _fail(f"tensor {name!r}: unknown encoding {enc!r} (expected one of {', '.join(ENCODINGS)})")
            if enc == "none" and sections[sec]["length"] != nbytes:
                _fail(f"tensor {name!r}: section holds {sections[sec]['length']} bytes, shape and dtype need {nbytes}")
        else:
            if dt not in dtypes.PERMUTABLE or len(shape) == 0 or math.prod(shape) == 0:
                _fail(f"tensor {name!r}: a permuted tensor must be a non-empty float tensor, not {dt} {shape}")
            try:
                Rule.from_dict(t.get("init"))
            except RuleError as e:
                _fail(f"tensor {name!r}: bad init rule: {e}")
            codec = t.get("codec")
            if not isinstance(codec, dict) or not isinstance(codec.get("name"), str):
                _fail(f"tensor {name!r}: codec must be a map with a 'name'")
            if t.get("layout", "rows") != "rows":
                _fail(f"tensor {name!r}: unknown layout {t.get('layout')!r}")
    for name, t in names.items():
        if t["kind"] == "alias":
            target = names.get(t.get("target")) if isinstance(t.get("target"), str) else None
            if target is None or target["kind"] == "alias":
                _fail(f"alias {name!r} points at {t.get('target')!r}, which is not a stored tensor")
            if target["shape"] != t["shape"] or target["dtype"] != t["dtype"]:
                _fail(f"alias {name!r} does not match the shape and dtype of {t['target']!r}")
            if target["digest"] != t["digest"]:
                _fail(f"alias {name!r} records a digest different from its target {t['target']!r}")
    if len(used) != len(sections):
        _fail(f"{len(sections) - len(used)} section(s) belong to no tensor")
    return h
