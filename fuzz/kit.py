"""Shared by tests/test_fuzz.py and fuzz/fuzz_load.py: small valid files, a reader oracle, and
``reseal`` (recompute every checksum of a mutated file so that mutations reach the decoders).

Without resealing, almost every mutation dies at the trailer or section SHA-256 check; with it,
mutated headers and payloads get through to the header schema, the tiling check, zstd and the
permutation codecs.
"""
from __future__ import annotations

import hashlib
import io
import os
import struct
import tempfile

import msgpack
import numpy as np

from permcodec import format as fmt, tensors as T
from permcodec.errors import IntegrityError

TRAILER = fmt.TRAILER


# ---- building files ------------------------------------------------------------------------
def seal(data: bytes, body: bytes, *, major: int = fmt.MAJOR, minor: int = fmt.MINOR, flags: int = 0) -> bytes:
    """A file from its data region ``data`` (bytes 64.. up to the header, any content) and the
    header's msgpack ``body``; the trailer digest is computed, so the file passes the header
    checksum whatever ``body`` holds."""
    pre = fmt.PREAMBLE.pack(fmt.MAGIC, major, minor, flags) + bytes(fmt.DATA_START - fmt.PREAMBLE.size)
    head = pre + data
    head += bytes(-len(head) % fmt.ALIGN)
    lens = struct.pack("<QQ", len(head), len(body))
    digest = hashlib.sha256(pre[:fmt.PREAMBLE.size] + body + lens).digest()
    return head + body + TRAILER.pack(len(head), len(body), digest, bytes(8), fmt.END_MAGIC)


def build(header: dict, payloads, **kw) -> bytes:
    """A well-formed file from ``header`` (its ``sections`` replaced) and section payloads."""
    buf = io.BytesIO()
    w = fmt.Writer(buf)
    for p in payloads:
        w.add_section(p)
    data = buf.getvalue()[fmt.DATA_START:]
    body = msgpack.packb(dict(header, sections=w.sections), use_bin_type=True)
    return seal(data, body, **kw)


def split(buf: bytes):
    """(header, [section payloads]) of a valid file, without validating the schema."""
    h_off, h_len = TRAILER.unpack_from(buf, len(buf) - TRAILER.size)[:2]
    header = msgpack.unpackb(buf[h_off:h_off + h_len], raw=False, strict_map_key=False)
    return header, [buf[s["offset"]:s["offset"] + s["length"]] for s in header["sections"]]


def reseal(buf: bytes) -> bytes:
    """``buf`` with every checksum recomputed, as far as its trailer and header can be parsed:
    the section SHA-256s in the header (for sections that lie inside the file) and the trailer's
    header digest. What cannot be parsed is left alone, so the reader sees the damage."""
    buf = bytes(buf)
    if len(buf) < fmt.DATA_START + TRAILER.size:
        return buf
    h_off, h_len, _, reserved, end = TRAILER.unpack_from(buf, len(buf) - TRAILER.size)
    if h_off > len(buf) - TRAILER.size or h_off + h_len > len(buf) - TRAILER.size:
        return buf
    body = buf[h_off:h_off + h_len]
    try:
        header = msgpack.unpackb(body, raw=False, strict_map_key=False)
        for s in header["sections"]:
            off, length = s["offset"], s["length"]
            if isinstance(off, int) and isinstance(length, int) and 0 <= off <= off + length <= h_off:
                s["sha256"] = hashlib.sha256(buf[off:off + length]).digest()
        body = msgpack.packb(header, use_bin_type=True)
    except Exception:  # not a map of sections: keep the mutated body as it is, fix the digest only
        pass
    pre = buf[:fmt.PREAMBLE.size]
    lens = struct.pack("<QQ", h_off, len(body))
    digest = hashlib.sha256(pre + body + lens).digest()
    return buf[:h_off] + body + TRAILER.pack(h_off, len(body), digest, reserved, end)


# ---- small valid files -------------------------------------------------------------------------
def _state():
    import torch

    import permcodec
    from permcodec.rules import make
    g = torch.Generator().manual_seed(0)
    state, rules = {}, {}
    for name, shape, dtype, fam, prune in (("fc.weight", (4, 6), torch.float32, "he_uniform", 0.0),
                                           ("conv.weight", (3, 2, 2, 2), torch.float16, "he_normal", 0.5),
                                           ("emb.weight", (5, 4), torch.bfloat16, "glorot_uniform", 0.0),
                                           ("head.weight", (2, 7), torch.float64, "constant", 0.3)):
        rule = make(fam, shape, seed=7, name=name, prune=prune, **({"value": 0.25} if fam == "constant" else {}))
        t = permcodec.init.values_tensor(rule, shape, dtype).clone()
        rows = t.reshape(shape[0], -1)
        rows.copy_(torch.gather(rows, 1, torch.argsort(torch.rand(rows.shape, generator=g), dim=1)))
        state[name], rules[name] = t, rule
    state["fc.bias"] = torch.randn(4, generator=g)                 # raw, incompressible: "none"
    state["bn.running_var"] = torch.ones(64)                       # raw, compressible: zstd
    state["steps"] = torch.tensor(12345, dtype=torch.int64)        # 0-d
    state["mask"] = torch.rand(3, 5, generator=g) > 0.5            # bool
    state["empty"] = torch.zeros(0, 3)
    state["tied"] = state["fc.weight"]                             # alias
    return state, rules


def small_files(codecs=None) -> dict[str, bytes]:
    """A few small valid files (each under ~3 KB) covering every kind, encoding and codec."""
    import permcodec
    from permcodec.codecs import REGISTRY
    state, rules = _state()
    codecs = codecs or ["auto", *sorted(REGISTRY)]
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for codec in codecs:
            p = os.path.join(d, f"{codec}.perm")
            permcodec.save(state, p, rules=rules, codec=codec, metadata={"step": 3, "note": "fuzz seed"})
            out[codec] = open(p, "rb").read()
        p = os.path.join(d, "raw.perm")
        permcodec.save({"w": state["fc.weight"], "b": state["bn.running_var"]}, p)
        out["raw"] = open(p, "rb").read()
    return out


# ---- the oracle ----------------------------------------------------------------------------------
def decode_all(buf) -> int:
    """Decode every tensor of ``buf`` as load(verify) does, from memory; returns the count.
    Raises PermcodecError on any bad input; anything else is a bug."""
    c = fmt.Container(buf)
    n = 0
    for t in c.header["tensors"]:
        if t["kind"] == "alias":
            continue
        arr = T.decode(t, c.section(t["section"]))
        if T.digest(arr) != t["digest"]:
            raise IntegrityError(f"tensor {t['name']!r} does not rebuild to its digest")
        if tuple(arr.shape) != tuple(t["shape"]):
            raise AssertionError(f"decoded shape {arr.shape} != declared {t['shape']}")
        n += 1
    return n


def numpy_bytes(arr) -> bytes:
    return np.ascontiguousarray(arr).tobytes()


# ---- sharded saves and their index ---------------------------------------------------------------
SHARD_LIMIT = 900  # bytes: the small state of _state() in several shards


def sharded_save(folder: str, seed_shift: int = 0) -> dict[str, bytes]:
    """Save _state() (each float tensor shifted by ``seed_shift`` rows, so two saves differ) in
    shards into ``folder`` as model.perm; returns {name: tensor bytes} of what was saved."""
    import torch

    import permcodec
    state, rules = _state()
    if seed_shift:
        state = {k: (torch.roll(v, seed_shift, dims=-1) if v.dim() and k in rules else v) for k, v in state.items()}
        state["tied"] = state["fc.weight"]
    permcodec.save(state, os.path.join(folder, "model.perm"), rules=rules, max_shard_size=SHARD_LIMIT)
    return {k: _tensor_bytes(v) for k, v in state.items()}


def _tensor_bytes(t) -> bytes:
    import permcodec
    return permcodec.api._bits(t).numpy().tobytes() + repr((t.dtype, tuple(t.shape))).encode()


def read_sharded(path) -> dict[str, bytes]:
    """{name: tensor bytes} of the sharded model at ``path`` as load and verify read it; raises
    PermcodecError on any bad index or shard."""
    import permcodec
    permcodec.verify(path)
    return {k: _tensor_bytes(v) for k, v in permcodec.load(path).items()}


def index_oracle(path, expected: dict[str, bytes]) -> str:
    """'ok' if the model at ``path`` reads back exactly as ``expected``, 'error' on PermcodecError;
    a model that reads back different from the one saved (silent loss) is an AssertionError."""
    from permcodec.errors import PermcodecError
    try:
        got = read_sharded(path)
    except PermcodecError:
        return "error"
    if got != expected:
        raise AssertionError(f"a damaged index or shard set read back as a different model: "
                             f"{sorted(set(got) ^ set(expected))[:5] or 'values differ'}")
    return "ok"
