"""A second, minimal permcodec reader written from formats/SPEC.md alone.

It imports nothing from permcodec: only struct, hashlib, msgpack, zstandard and numpy (and the
codecs of formats/codecs/*.md, written from those documents in test_spec_codecs.py). It reads the
AS241 and logarithm constants out of SPEC.md's own tables, decodes every golden file of
formats/vectors/ (raw encodings, every codec, aliases, every rule distribution) and checks the
digests, and recomputes the test vectors printed in SPEC.md §14. If it passes, the spec is complete
enough to write a reader from; if the spec has a typo in a constant, it fails.
"""
from __future__ import annotations

import hashlib
import json
import pathlib
import re
import struct

import msgpack
import numpy as np
import pytest
import zstandard
import test_spec_codecs
from test_spec_codecs import DECODERS, SEEN

ROOT = pathlib.Path(__file__).resolve().parents[1]
SPEC = (ROOT / "formats" / "SPEC.md").read_text()
VECTORS = ROOT / "formats" / "vectors"
INDEXES = ("digests.json", "codec_digests.json")
DIGESTS = {name: known for index in INDEXES for name, known in json.loads((VECTORS / index).read_text()).items()}
GOLDEN = sorted(VECTORS / name for name in DIGESTS)
SHARDED = json.loads((VECTORS / "sharded_digests.json").read_text())


# ---- constants, read from the spec's tables ----------------------------------------------------
def _f64(bits: str) -> float:
    return struct.unpack(">d", bytes.fromhex(bits.strip("`").removeprefix("0x").removeprefix("0X")))[0]


def _table_rows(after: str, start: int = 0):
    """Data rows (lists of cells) of the first markdown table at or after ``start`` whose header
    line starts with ``after``."""
    lines = SPEC[SPEC.index(after, start):].splitlines()
    assert lines[0].startswith("|") and set(lines[1]) <= set("|-: ")
    for line in lines[2:]:
        if not line.startswith("|"):
            return
        yield [c.strip() for c in line.strip().strip("|").split("|")]


def _poly_table(header: str) -> tuple[list, list]:
    left, right = [], []
    for cells in _table_rows(header):
        left.append(_f64(cells[2]))
        right.append(_f64(cells[4]))
    return left, right


A, B = _poly_table("| m | A | bits | B | bits |")
C, D = _poly_table("| m | C | bits | D | bits |")
E, F = _poly_table("| m | E | bits | F | bits |")
G = [_f64(cells[2]) for cells in _table_rows("| m | g[m] | bits |")]
SQRT2 = _f64(re.search(r"`SQRT2` = [0-9.]+ \(bits `(0x[0-9A-F]{16})`\)", SPEC).group(1))
LN2 = _f64(re.search(r"`LN2` = [0-9.]+ \(bits `(0x[0-9A-F]{16})`\)", SPEC).group(1))


def test_constants_read_from_spec():
    assert len(A) == len(B) == len(C) == len(D) == len(E) == len(F) == 8 and len(G) == 12
    assert B[-1] == D[-1] == F[-1] == G[-1] == 1.0 and G[0] == 1.0 / 23
    assert abs(LN2 - 0.6931471805599453) < 1e-16 and abs(SQRT2 * SQRT2 - 2) < 1e-15


# ---- §7 Philox4x32-10 ----------------------------------------------------------------------------
M0, M1, W0, W1, MASK = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85, 0xFFFFFFFF


def philox(c0, c1, c2, c3, k0, k1):
    c = [np.asarray(x, np.uint64) for x in (c0, c1, c2, c3)]
    for r in range(10):
        K0, K1 = np.uint64((k0 + r * W0) & MASK), np.uint64((k1 + r * W1) & MASK)
        p0, p1 = c[0] * np.uint64(M0), c[2] * np.uint64(M1)
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ K0, p1 & np.uint64(MASK), (p0 >> np.uint64(32)) ^ c[3] ^ K1,
             p0 & np.uint64(MASK)]
    return c


def block_words(seed, stream, domain, blocks):
    """(len(blocks), 4) uint64 words of the given block indices (§7.2)."""
    i = np.asarray(blocks, np.uint64)
    ones = np.ones_like(i)
    out = philox(i & np.uint64(MASK), i >> np.uint64(32), ones * np.uint64(stream & MASK),
                 ones * np.uint64((stream >> 32) + domain * 2**30), seed & MASK, seed >> 32)
    return np.stack(out, axis=1)


# ---- §8 values ------------------------------------------------------------------------------------
def horner(coeffs, x):
    acc = np.full_like(x, coeffs[0])
    for c in coeffs[1:]:
        acc = acc * x + c
    return acc


def L(x):
    u = x.view(np.uint64)
    e = (u >> np.uint64(52)).astype(np.int64) - 1023
    m = ((u & np.uint64(2**52 - 1)) | np.uint64(1023 << 52)).view(np.float64)
    big = m > SQRT2
    m = np.where(big, m * 0.5, m)
    e = (e + big).astype(np.float64)
    s = (m - 1.0) / (m + 1.0)
    return e * LN2 + (s * 2.0) * horner(G, s * s)


def N(p):
    """AS241 for p < 1/2 (§8.3)."""
    q = p - 0.5
    r = 0.180625 - q * q
    central = (horner(A, r) * q) / horner(B, r)
    rr = np.sqrt(-L(np.where(q >= -0.425, 0.25, p)))
    near, far = rr - 1.6, rr - 5.0
    tail = -np.where(rr <= 5.0, horner(C, near) / horner(D, near), horner(E, far) / horner(F, far))
    return np.where(q >= -0.425, central, tail)


def x_of_k(k, dist, scale):
    s = 2 * k.astype(np.int64) + 1 - 2**53
    if dist == "uniform":
        return scale * (s.astype(np.float64) * 2.0**-53)
    if dist == "normal":
        z = N((2**53 - np.abs(s)).astype(np.float64) * 2.0**-54)
        return np.where(s < 0, scale * z, scale * -z)
    assert dist == "constant"
    return np.full(len(k), scale)


def binary64(rule, count):
    """x of elements 0 .. count-1 (§7.3, §8.1-§8.5)."""
    j = np.arange(count, dtype=np.uint64)
    seed, stream = rule["seed"], rule["stream"]
    vb = block_words(seed, stream, 0, np.arange((count + 1) // 2))
    odd = (j & np.uint64(1)).astype(np.int64)
    a = vb[j // np.uint64(2), 2 * odd]
    b = vb[j // np.uint64(2), 2 * odd + 1]
    k = (a >> np.uint64(5)) * np.uint64(2**26) + (b >> np.uint64(6))
    x = x_of_k(k, rule["dist"], rule["scale"])
    prune = rule.get("prune", 0)
    if prune:
        mb = block_words(seed, stream, 1, np.arange((count + 3) // 4))
        m = mb[j // np.uint64(4), (j % np.uint64(4)).astype(np.int64)]
        x = np.where(m < np.uint64(prune), 0.0, x)
    return x


def to_dtype(x, dtype):
    """§8.6; bfloat16 as uint16 patterns."""
    if dtype == "float64":
        return x
    f = x.astype(np.float32)
    if dtype == "float32":
        return f
    if dtype == "float16":
        with np.errstate(over="ignore"):   # overflow gives +-inf (§8.6)
            return f.astype(np.float16)
    u = f.view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16)
    return (rounded & np.uint64(0xFFFF)).astype(np.uint16)


# ---- §2-§6 container and tensors --------------------------------------------------------------------
WIDTH = {"float64": "<f8", "float32": "<f4", "float16": "<f2", "bfloat16": "<u2", "float8_e4m3fn": "u1",
         "float8_e5m2": "u1", "complex128": "<c16", "complex64": "<c8", "int64": "<i8", "int32": "<i4",
         "int16": "<i2", "int8": "i1", "uint64": "<u8", "uint32": "<u4", "uint16": "<u2", "uint8": "u1",
         "bool": "u1"}


def read(buf: bytes, header_out: dict | None = None) -> dict:
    """{name: numpy array in storage dtype} of a whole file, checking what the spec says to check."""
    assert len(buf) >= 128 and buf[:8] == b"\x89PERM\r\n\x1a"
    major, minor, flags = struct.unpack_from("<HHI", buf, 8)
    assert major == 1 and flags == 0 and not any(buf[16:64])
    h_off, h_len, digest, reserved, end = struct.unpack_from("<QQ32s8s8s", buf, len(buf) - 64)
    assert end == b"PERMEND\x00" and reserved == bytes(8)
    assert h_off >= 64 and h_off % 64 == 0 and h_off + h_len + 64 == len(buf)
    header_bytes = buf[h_off:h_off + h_len]
    assert hashlib.sha256(buf[:16] + header_bytes + buf[len(buf) - 64:len(buf) - 48]).digest() == digest
    header = msgpack.unpackb(header_bytes, raw=False)
    if header_out is not None:
        header_out.update(header)
    assert all(isinstance(k, str) for k in _keys(header))
    pos = 64
    for s in header["sections"]:
        assert s["offset"] == -(-pos // 64) * 64 and not any(buf[pos:s["offset"]])
        pos = s["offset"] + s["length"]
        assert hashlib.sha256(buf[s["offset"]:pos]).digest() == s["sha256"]
    assert h_off == -(-pos // 64) * 64 and not any(buf[pos:h_off])
    out = {}
    for t in header["tensors"]:
        if t["kind"] == "alias":
            continue
        s = header["sections"][t["section"]]
        payload = buf[s["offset"]:s["offset"] + s["length"]]
        arr = (decode_raw if t["kind"] == "raw" else decode_permuted)(t, payload)
        assert hashlib.sha256(arr.tobytes()).digest() == t["digest"], t["name"]
        out[t["name"]] = arr
    for t in header["tensors"]:
        if t["kind"] == "alias":
            SEEN.add(("alias",))
            target = next(u for u in header["tensors"] if u["name"] == t["target"])
            assert target["kind"] != "alias" and (target["shape"], target["dtype"], target["digest"]) == (
                t["shape"], t["dtype"], t["digest"])
            out[t["name"]] = out[t["target"]]
    return out


def read_sharded(index_path: pathlib.Path) -> dict:
    """{name: array} of a sharded model (§16): the index, then every shard checked against it."""
    index = json.loads(index_path.read_bytes().decode("utf-8"))
    weight_map = index["weight_map"]
    listing = index["metadata"]["permcodec"]["shards"]
    files = sorted(set(weight_map.values()))
    assert all(f and f not in (".", "..") and "/" not in f and "\\" not in f for f in files)
    assert set(listing) == set(files)
    out, marks = {}, []
    for f in files:
        buf = (index_path.parent / f).read_bytes()
        assert len(buf) == listing[f]["bytes"] and buf[-48:-16].hex() == listing[f]["trailer_sha256"]
        header: dict = {}
        tensors = read(buf, header)
        assert {t["name"] for t in header["tensors"]} == {n for n, g in weight_map.items() if g == f}
        marks.append(header["shard"])
        out.update(tensors)
    K = len(files)
    assert len({m["save_id"] for m in marks}) == 1 and len(marks[0]["save_id"]) == 16
    assert sorted(m["number"] for m in marks) == list(range(1, K + 1))
    assert all(m["last"] == (m["number"] == K) for m in marks)
    SEEN.add(("shards",))
    return out


def _keys(obj):
    """Every map key of the header, at every level (§3: keys are str)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _keys(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _keys(v)


def decode_raw(t, payload):
    dt = np.dtype(WIDTH[t["dtype"]])
    n = int(np.prod(t["shape"], dtype=np.int64))
    size = n * dt.itemsize
    if t["encoding"] == "none":
        data = payload
    else:
        assert zstandard.frame_content_size(payload) == size
        d = zstandard.ZstdDecompressor().decompressobj()
        data = d.decompress(payload)
        assert d.eof and not d.unused_data and len(data) == size
        if t["encoding"] == "shuffle+zstd":
            data = np.frombuffer(data, np.uint8).reshape(dt.itemsize, n).T.tobytes()
        else:
            assert t["encoding"] == "zstd"
    assert len(data) == size
    arr = np.frombuffer(data, dt).reshape(t["shape"])
    SEEN.add(("raw", t["encoding"]))
    if t["dtype"] == "bool":
        assert arr.max(initial=0) <= 1
    return arr


def decode_permuted(t, payload):
    shape = t["shape"]
    assert t.get("layout", "rows") == "rows"
    assert set(t["init"]) <= {"dist", "scale", "seed", "stream", "prune", "label"}
    rows, n = (1, shape[0]) if len(shape) == 1 else (shape[0], int(np.prod(shape[1:])))
    v = to_dtype(binary64(t["init"], rows * n), t["dtype"]).reshape(rows, n)
    codec = dict(t["codec"])
    name = codec.pop("name")
    version = codec.pop("version", 1)
    assert type(version) is int and version == 1, "§10.3: every codec is at version 1 in format 1.0"
    SEEN.update({("codec", name), (name, t["dtype"]), ("dist", t["init"]["dist"])})
    if t["init"].get("prune", 0):
        SEEN.add(("prune",))
    if name != "plain":
        perm = DECODERS[name]({"name": name, **codec}, payload, v)
        assert (np.sort(perm, axis=1) == np.arange(n)).all()
        return np.take_along_axis(v, perm, 1).reshape(shape)
    assert not codec
    wd = max(1, (n - 1).bit_length())
    nbits = rows * n * wd
    assert len(payload) == (nbits + 7) // 8
    bits = np.unpackbits(np.frombuffer(payload, np.uint8), bitorder="little")
    assert not bits[nbits:].any()
    perm = (bits[:nbits].reshape(-1, wd).astype(np.int64) << np.arange(wd)).sum(axis=1).reshape(rows, n)
    assert (np.sort(perm, axis=1) == np.arange(n)).all()
    return np.take_along_axis(v, perm, 1).reshape(shape)


# ---- the golden files --------------------------------------------------------------------------------
def test_golden_files_exist():
    assert {p.name for p in GOLDEN} >= {"tiny.perm", "dense.perm", "pruned50.perm", "pruned90.perm",
                                        "weight_agnostic.perm", "mixed.perm", "raw_only.perm", "normal.perm"}


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.name)
def test_spec_reader_decodes_golden_file(path):
    buf = path.read_bytes()
    known = DIGESTS[path.name]
    assert hashlib.sha256(buf).hexdigest() == known["sha256"]
    tensors = read(buf)
    assert {n: hashlib.sha256(a.tobytes()).hexdigest() for n, a in tensors.items()} == known["tensors"]


def test_lanes_count_symbols_with_freq_M(monkeypatch):
    """uniform.md §2 as written (every position takes its lane's turn, even with freq = M) decodes
    the multi-lane golden files above; the other reading (skipping those symbols) does not."""
    advance = test_spec_codecs.Lanes.advance

    def skipping(self, cum, freq, trace=None):
        advance(self, cum, freq, trace)
        if freq == test_spec_codecs.M:
            self.k -= 1

    monkeypatch.setattr(test_spec_codecs.Lanes, "advance", skipping)
    for name in ("codec_uniform_lanes.perm", "codec_model_lanes.perm"):
        with pytest.raises((AssertionError, IndexError, StopIteration)):
            read((VECTORS / name).read_bytes())


@pytest.mark.parametrize("index", sorted(SHARDED))
def test_spec_reader_decodes_sharded_save(index):
    known = SHARDED[index]
    path = VECTORS / "sharded" / index
    assert hashlib.sha256(path.read_bytes()).hexdigest() == known["sha256"]
    for f, sha in known["shards"].items():
        assert hashlib.sha256((path.parent / f).read_bytes()).hexdigest() == sha
    tensors = read_sharded(path)
    assert {n: hashlib.sha256(a.tobytes()).hexdigest() for n, a in tensors.items()} == known["tensors"]


# ---- the test vectors of §14 -------------------------------------------------------------------------
def _hex_words(cell):
    return [int(w, 16) for w in cell.strip("`").split()]


def test_philox_known_answers():
    rows = list(_table_rows("| counter (c0 c1 c2 c3) | key (k0 k1) | output (x0 x1 x2 x3) |"))
    assert len(rows) == 3
    for ctr, key, expected in rows:
        out = philox(*[[c] for c in _hex_words(ctr)], *_hex_words(key))
        assert [int(o[0]) for o in out] == _hex_words(expected)


def test_k_vectors():
    rows = list(_table_rows("| k | s | t (bits) | p (bits) | normal x (bits) | normal x |"))
    assert len(rows) >= 10
    for k, s, t, p, z, _ in rows:
        k = int(k.strip("`"), 16)
        assert int(s.replace("−", "-")) == 2 * k + 1 - 2**53
        kk = np.array([k], np.uint64)
        assert x_of_k(kk, "uniform", 1.0)[0] == _f64(t)
        assert (2**53 - abs(2 * k + 1 - 2**53)) * 2.0**-54 == _f64(p)
        assert x_of_k(kk, "normal", 1.0).view(np.uint64)[0] == np.array([_f64(z)]).view(np.uint64)[0]


def test_log_vectors():
    for _, bits, out, _ in _table_rows("| x | bits | L(x) bits | L(x) |"):
        assert L(np.array([_f64(bits)])).view(np.uint64)[0] == np.array([_f64(out)]).view(np.uint64)[0]


def _bits(x, dtype):
    y = to_dtype(np.array([x]), dtype)
    return "%0*X" % (2 * y.itemsize, int(y.view(f"u{y.itemsize}")[0]))


def test_rounding_vectors():
    rows = list(_table_rows("| x (bits) | float32 | float16 | bfloat16 | note |"))
    assert len(rows) >= 6
    for xbits, f32, f16, bf16, _ in rows:
        x = _f64(xbits.split()[0])
        with np.errstate(over="ignore"):
            assert [_bits(x, d) for d in ("float32", "float16", "bfloat16")] == [c.strip("`") for c in (f32, f16, bf16)]


RULES = {  # §14.2, as printed above each table
    "R1": {"dist": "uniform", "scale": 0.25, "seed": 0, "stream": 0},
    "R2": {"dist": "uniform", "scale": 0.08838834764831845, "seed": 1234, "stream": 2596328039884401304,
           "prune": 2147483648},
    "R3": {"dist": "normal", "scale": 0.05103103630798288, "seed": 1234, "stream": 2596328039884401304},
    "R4": {"dist": "normal", "scale": 1.0, "seed": 2**64 - 1, "stream": 2**62 - 1, "prune": 858993459},
    "R5": {"dist": "constant", "scale": 0.75, "seed": 42, "stream": 7, "prune": 1717986918},
}


@pytest.mark.parametrize("name", list(RULES))
def test_element_vectors(name):
    at = SPEC.index(f"**{name}** =")
    section = SPEC[at:]
    rule = RULES[name]
    assert f"`{{dist: {rule['dist']}" in section[:200]
    header = next(line for line in section.splitlines() if line.startswith("| j |"))
    cols = [c.strip() for c in header.strip().strip("|").split("|")]
    rows = list(_table_rows(header, at))
    assert rows
    for cells in rows:
        row = dict(zip(cols, cells))
        j = int(row["j"])
        x = binary64(rule, j + 1)[j]
        assert np.array([x]).view(np.uint64)[0] == np.array([_f64(row["x (bits)"].split()[0])]).view(np.uint64)[0]
        for d, col in (("float32", "f32"), ("float16", "f16"), ("bfloat16", "bf16")):
            assert _bits(x, d) == row[col].strip("`")
        if "value block words" in row and "same" not in row["value block words"]:
            value_words = block_words(rule["seed"], rule["stream"], 0, [j // 2])[0]
            assert list(value_words) == _hex_words(row["value block words"])
        if "mask block words" in row and "same" not in row["mask block words"]:
            mask_words = block_words(rule["seed"], rule["stream"], 1, [j // 4])[0]
            assert list(mask_words) == _hex_words(row["mask block words"])
        if "k" in row:
            vb = block_words(rule["seed"], rule["stream"], 0, [j // 2])[0]
            a, b = (int(vb[0]), int(vb[1])) if j % 2 == 0 else (int(vb[2]), int(vb[3]))
            assert (a >> 5) * 2**26 + (b >> 6) == int(row["k"])


def test_stream_of_vectors():
    for name, value in _table_rows("| name | stream_of(name) |"):
        digest = hashlib.sha256(name.strip("`").encode()).digest()
        assert int.from_bytes(digest[:8], "little") >> 2 == int(value.split()[0])
