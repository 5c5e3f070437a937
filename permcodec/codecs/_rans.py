"""The rANS coder shared by ``uniform`` and ``model`` (formats/codecs/uniform.md §3 is normative).

State: an integer x in [2**31, 2**63); probabilities are integer frequencies out of M = 2**28;
the stream is little-endian 32-bit words. Symbol k of a segment is coded by lane k % lanes, every
symbol counted (one with freq = M too, though it leaves its lane's state unchanged), and all lanes
read the stream through one shared word pointer.

Coding a symbol (cum, freq) with 0 <= cum < cum + freq <= M:

    encode (symbols last to first):  if x >> 32 >= freq: emit x & 0xFFFFFFFF; x >>= 32
                                     x = (x // freq) * M + x % freq + cum
    decode (symbols first to last):  s = x % M  (the decoder's model finds cum <= s < cum + freq)
                                     x = freq * (x >> 31) + s - cum
                                     if x < 2**31: x = (x << 32) | next word

Every lane starts (encoder) and ends (decoder) in the state 2**31; a segment is the lanes' final
states (2 words each, low word first) followed by the emitted words in reverse order of emission.
The compiled coder is csrc/rans.h (shared by the codecs in csrc/); this module holds the segment
framing and layout checks, and the plain Python Reader of the reference decoders.
"""
from __future__ import annotations

import numpy as np

from ..errors import FormatError, PermcodecError

PREC = 28
M = 1 << PREC
LOW = 1 << 31
MAX_N = M                # longest row: past M items a range can get frequency 0 (uniform.md §1)
MAX_LANES = 64


def frame(segments: list) -> bytes:
    """Payload = (S-1) little-endian u32 segment lengths in words, then the segments."""
    head = np.array([len(s) for s in segments[:-1]], "<u4")
    return b"".join([head.tobytes()] + [np.asarray(s, "<u4").tobytes() for s in segments])


def unframe(payload, nseg: int, lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """(words as uint32, segment bounds int64[nseg+1]) after checking that the segments tile the
    payload exactly and each holds at least its lanes' states."""
    words, bounds = framing(payload, nseg, lanes)
    return words.astype(np.uint32), bounds


def framing(payload, nseg: int, lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """unframe's checks and bounds, the words a view of ``payload`` (nothing copied)."""
    if len(payload) % 4:
        raise FormatError(f"rANS payload is {len(payload)} bytes, not a whole number of 32-bit words")
    words = np.frombuffer(payload, "<u4")
    if nseg < 1:
        if words.size:
            raise FormatError("rANS payload has data but the tensor has no symbols")
        return words, np.zeros(1, np.int64)
    if words.size < nseg - 1:
        raise FormatError(f"rANS payload too short for its {nseg - 1}-word segment table")
    sizes = words[: nseg - 1].astype(np.int64)
    bounds = np.empty(nseg + 1, np.int64)
    bounds[0] = nseg - 1
    bounds[1:nseg] = bounds[0] + np.cumsum(sizes)
    bounds[nseg] = words.size
    if (np.diff(bounds) < 2 * lanes).any():
        raise FormatError("rANS segment table does not tile the payload (a segment is shorter than "
                          "its lanes' states or the lengths overrun the payload)")
    return words, bounds


def check_segment_words(bounds: np.ndarray, rows: int, n: int, lanes: int, seg: int, name: str) -> None:
    """A segment holds its lanes' states and at most one stream word per symbol (the encoder emits
    at most one per symbol, the decoder reads at most one): a longer one cannot decode."""
    nseg = bounds.size - 1
    if nseg and rows and n:
        symbols = np.minimum(seg, rows - seg * np.arange(nseg, dtype=np.int64)) * n
        over = np.flatnonzero(np.diff(bounds) > 2 * lanes + symbols)
        if over.size:
            raise FormatError(f"{name} payload segment {int(over[0])} has more stream words than symbols: corrupt")


def check_layout(params: dict, keys: tuple, rows: int, n: int, name: str) -> tuple[int, int]:
    """Validate the shared params (lanes, segment_rows); returns them."""
    if not isinstance(params, dict) or set(params) != set(keys):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise FormatError(f"{name} codec params must have exactly the keys {sorted(keys)}, got {got}")
    lanes, seg = params["lanes"], params["segment_rows"]
    for key, v, hi in (("lanes", lanes, MAX_LANES), ("segment_rows", seg, max(rows, 1))):
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= hi:
            raise FormatError(f"{name} codec param {key}={v!r} is not an integer in [1, {hi}]")
    if n > MAX_N:
        raise FormatError(f"{name} codec rows are at most {MAX_N} long, this tensor's are {n}")
    return lanes, seg


def layout(rows: int, n: int, bits_per_row: float, lanes=None, segment_rows=None) -> tuple[int, int]:
    """Default (lanes, segment_rows) for a tensor of about ``bits_per_row`` coded bits per row:
    every lane flushes 64 bits and every segment costs a 32-bit length, so small tensors get one
    lane and one segment, large ones 4 lanes (speed) and segments of >= 2**21 bits (decoded in
    parallel); the overhead stays below 0.03% of the payload either way."""
    if n > MAX_N:
        raise PermcodecError(f"rows longer than {MAX_N} are not supported by the rANS codecs (got {n})")
    total = rows * max(bits_per_row, 1.0)
    if lanes is None:
        lanes = 1 if total < (1 << 20) else 4
    if segment_rows is None:
        segment_rows = rows if total < (1 << 22) else -(-(1 << 21) // int(max(bits_per_row, 1.0)))
    return int(lanes), int(max(1, min(segment_rows, max(rows, 1))))


def row_bits(values: np.ndarray, sample: int = 16) -> float:
    """Mean information limit per row, from up to ``sample`` evenly spaced rows."""
    from ..perm import info_bits
    rows = values.shape[0]
    if rows == 0:
        return 0.0
    pick = np.unique(np.linspace(0, rows - 1, min(rows, sample)).astype(np.int64))
    return info_bits(values[pick]) / pick.size


class Reader:
    """The decoding side, one operation at a time (reference decoders)."""

    def __init__(self, words, lo: int, hi: int, lanes: int):
        self.words = [int(w) for w in words[lo:hi]]
        self.lanes = lanes
        self.x = [self.words[2 * l] | (self.words[2 * l + 1] << 32) for l in range(lanes)]
        for x in self.x:
            if not LOW <= x < (1 << 63):
                raise FormatError(f"rANS initial state {x:#x} outside [2**31, 2**63)")
        self.pos = 2 * lanes
        self.k = 0

    def slot(self) -> int:
        return self.x[self.k % self.lanes] % M

    def advance(self, cum: int, freq: int) -> None:
        lane = self.k % self.lanes
        x = self.x[lane]
        x = freq * (x >> PREC) + x % M - cum
        if x < LOW:
            if self.pos >= len(self.words):
                raise FormatError("rANS stream ends early: corrupt payload")
            x = (x << 32) | self.words[self.pos]
            self.pos += 1
        self.x[lane] = x
        self.k += 1

    def finish(self) -> None:
        if self.pos != len(self.words) or any(x != LOW for x in self.x):
            raise FormatError("rANS stream does not end in the initial state: corrupt payload")


def segments_covering(payload, rows: int, n: int, lanes: int, seg: int, start: int, stop: int):
    """(lo, hi, segment_rows, payload) of the whole segments that cover rows [start, stop) of a
    framed payload (start < stop): segments decode independently (uniform.md §2), so the rows
    [lo, hi) decode from this smaller payload with these params as they do from the whole one.
    Only those segments' words are copied."""
    nseg = 0 if rows * n == 0 else -(-rows // seg)
    words, bounds = framing(payload, nseg, lanes)
    g0, g1 = start // seg, -(-stop // seg)
    lo, hi = g0 * seg, min(rows, g1 * seg)
    head = np.diff(bounds[g0:g1]).astype("<u4")     # the sub-payload's segment table
    return lo, hi, min(seg, hi - lo), head.tobytes() + words[bounds[g0]:bounds[g1]].tobytes()
