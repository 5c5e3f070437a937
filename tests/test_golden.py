"""The format 1.0 compatibility contract: golden files, deterministic saves, and SPEC.md §12.

* every golden file of formats/vectors/digests.json decodes, each tensor matching both the digest in
  its header and the one in digests.json;
* saving the same inputs again (from make_vectors.build, and from the decoded file itself) gives
  byte-identical files: save is deterministic;
* a reader accepts unknown header keys and unknown minor versions, rejects an unknown major version
  naming the version needed, and raises FormatError for every case SPEC.md §12 lists.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import pathlib
import struct

import msgpack
import numpy as np
import pytest
import zstandard

import permcodec
from permcodec import format as fmt, tensors as T
from permcodec.codecs import plain
from permcodec.errors import FormatError, IntegrityError, VersionError
from permcodec.rules import Rule

VECTORS = pathlib.Path(__file__).resolve().parents[1] / "formats" / "vectors"
DIGESTS = json.loads((VECTORS / "digests.json").read_text())
NAMES = sorted(DIGESTS)
# libzstd the golden files were written with: another version may compress raw sections differently
# (the decoded tensors never change), so byte identity of a fresh save is only checked under it.
ZSTD_AT_RELEASE = (1, 5, 7)


def _make_vectors():
    spec = importlib.util.spec_from_file_location("make_vectors", VECTORS / "make_vectors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", NAMES)
def test_golden_file_decodes_to_its_digests(name):
    path = VECTORS / name
    assert hashlib.sha256(path.read_bytes()).hexdigest() == DIGESTS[name]["sha256"], \
        f"{name} changed: golden files never change once released"
    got = {}
    with permcodec.open(path) as f:
        assert f.container.major == 1
        for tensor in f.keys():
            arr = f.get_numpy(tensor, check_digest=True)  # the header's digest
            got[tensor] = hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()
    assert got == DIGESTS[name]["tensors"]
    assert permcodec.verify(path).tensors == len(got)


def _uses_zstd(path) -> bool:
    return any(t.get("encoding", "none") != "none" for t in permcodec.read_header(path)["tensors"])


def _same_bytes(fresh: pathlib.Path, golden: pathlib.Path):
    if fresh.read_bytes() != golden.read_bytes():
        if zstandard.ZSTD_VERSION != ZSTD_AT_RELEASE and _uses_zstd(golden):
            pytest.skip(f"libzstd {zstandard.ZSTD_VERSION} compresses differently from {ZSTD_AT_RELEASE}")
        pytest.fail(f"saving the inputs of {golden.name} again gave different bytes: save is not deterministic")


@pytest.fixture
def release_version(monkeypatch):
    """Write created_by as the golden files do, whatever this permcodec's version is."""
    def use(path):
        created_by = permcodec.read_header(path)["created_by"]
        monkeypatch.setattr(permcodec.api, "__version__", created_by.removeprefix("permcodec "))
    return use


@pytest.mark.parametrize("name", NAMES)
def test_save_is_deterministic_from_the_generator_inputs(name, tmp_path, release_version):
    golden = VECTORS / name
    release_version(golden)
    _make_vectors().write(golden.stem, tmp_path / name)
    _same_bytes(tmp_path / name, golden)


@pytest.mark.parametrize("name", NAMES)
def test_save_is_deterministic_from_the_decoded_file(name, tmp_path, release_version):
    golden = VECTORS / name
    release_version(golden)
    header = permcodec.read_header(golden)
    rules = {t["name"]: Rule.from_dict(t["init"]) for t in header["tensors"] if t["kind"] == "permuted"}
    state = permcodec.load(golden)  # aliases come back as one tensor under two names
    permcodec.save(state, tmp_path / name, rules=rules, codec="plain", metadata=header["metadata"])
    _same_bytes(tmp_path / name, golden)


# ---- SPEC.md §12 and §15 -----------------------------------------------------------------------
def _base():
    """(header without sections, section payloads) of a small valid file: a permuted vector of 3,
    raw int8 / zstd int64 / bool tensors, and an alias."""
    rule = Rule("uniform", 0.5, 7, 11)
    v = rule.values((1, 3), "float32")
    perm = np.array([[2, 0, 1]])
    codec, w_payload = plain.encode(perm)
    z = np.arange(64, dtype=np.int64)
    z_payload = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(z.tobytes())
    r, b = np.array([1, -2, 3], np.int8), np.array([1, 0, 0, 1], np.bool_)
    w_digest = T.digest(np.take_along_axis(v, perm, 1))
    tensors = [
        {"name": "w", "shape": [3], "dtype": "float32", "digest": w_digest, "kind": "permuted", "layout": "rows",
         "init": rule.to_dict(), "codec": codec, "section": 0},
        {"name": "r", "shape": [3], "dtype": "int8", "digest": T.digest(r), "kind": "raw", "encoding": "none",
         "section": 1},
        {"name": "z", "shape": [64], "dtype": "int64", "digest": T.digest(z), "kind": "raw", "encoding": "zstd",
         "section": 2},
        {"name": "b", "shape": [4], "dtype": "bool", "digest": T.digest(b), "kind": "raw", "encoding": "none",
         "section": 3},
        {"name": "a", "shape": [3], "dtype": "float32", "digest": w_digest, "kind": "alias", "target": "w"},
    ]
    return {"format": "permcodec", "metadata": {}, "tensors": tensors}, [w_payload, r.tobytes(), z_payload, b.tobytes()]


def read_all(buf) -> dict:
    """Validate, then decode every tensor and check its digest: what a verifying reader does."""
    c = fmt.Container(buf)
    out = {}
    for e in c.header["tensors"]:
        if e["kind"] != "alias":
            arr = T.decode(e, c.section(e["section"]))
            if T.digest(arr) != e["digest"]:
                raise IntegrityError(f"tensor {e['name']!r} does not match its digest")
            out[e["name"]] = arr
    return out


def _t(h, name):
    return next(t for t in h["tensors"] if t["name"] == name)


def reseal(buf: bytes) -> bytes:
    """Recompute the trailer digest over the bytes as they are, so only the intended defect remains."""
    buf = bytearray(buf)
    h_off, h_len = struct.unpack_from("<QQ", buf, len(buf) - 64)
    digest = hashlib.sha256(bytes(buf[:16]) + bytes(buf[h_off:h_off + h_len]) + bytes(buf[-64:-48])).digest()
    buf[-48:-16] = digest
    return bytes(buf)


def with_header_bytes(buf: bytes, body: bytes) -> bytes:
    """Replace the header with ``body`` (any bytes), fix offsets and digest."""
    h_off, _ = struct.unpack_from("<QQ", buf, len(buf) - 64)
    trailer = bytearray(buf[-64:])
    trailer[8:16] = struct.pack("<Q", len(body))
    return reseal(buf[:h_off] + body + bytes(trailer))


def edit(fn):
    """A case that edits the header (and sections list) and packs a correctly sealed file."""
    def build():
        h, secs = _base()
        buf = fmt.pack(h, secs)
        c = fmt.Container(buf)
        header = msgpack.unpackb(buf[c.header_offset:len(buf) - 64], raw=False)
        fn(header)
        return with_header_bytes(buf, msgpack.packb(header, use_bin_type=True))
    return build


def payloads(fn):
    """A case that changes section payloads (the header's section list is rewritten to match)."""
    def build():
        h, secs = _base()
        fn(h, secs)
        return fmt.pack(h, secs)
    return build


def raw(fn):
    """A case that edits the bytes of a valid file."""
    def build():
        h, secs = _base()
        return fn(bytearray(fmt.pack(h, secs)))
    return build


def _setitem(buf, at, value):
    buf[at] = value
    return bytes(buf)


def _section_offset(buf, i):
    return fmt.Container(bytes(buf)).header["sections"][i]["offset"]


def _header_late(b):
    """64 more zero bytes between the last section and the header."""
    h_off = struct.unpack_from("<Q", b, len(b) - 64)[0]
    return reseal(bytes(b[:h_off]) + bytes(64) + bytes(b[h_off:-64]) + struct.pack("<Q", h_off + 64) + bytes(b[-56:]))


def _alias(h):
    return _t(h, "a")


def _wide_zstd(h, secs):
    secs[2] = zstandard.ZstdCompressor(write_content_size=True).compress(np.arange(65, dtype=np.int64).tobytes())


def _no_content_size(h, secs):
    secs[2] = zstandard.ZstdCompressor(write_content_size=False).compress(np.arange(64, dtype=np.int64).tobytes())


def _corrupt_zstd(h, secs):
    b = bytearray(zstandard.ZstdCompressor(write_checksum=True, write_content_size=True).compress(
        np.arange(64, dtype=np.int64).tobytes()))
    b[-1] ^= 0xFF  # the frame's content checksum no longer matches
    secs[2] = bytes(b)


def _past_header(h):
    _t(h, "b")["encoding"] = "zstd"  # no length rule for zstd sections, so only the tiling check is left
    h["sections"][3]["length"] = 10_000


def _big_rule(key, value):
    return edit(lambda h: _t(h, "w")["init"].__setitem__(key, value))


MUST_REJECT = {
    # 1-7: preamble and trailer
    "short-file": raw(lambda b: bytes(b[:127])),
    "bad-magic": raw(lambda b: _setitem(b, 1, ord("Q"))),
    "major-2": raw(lambda b: reseal(_setitem(b, 8, 2))),
    "flags": raw(lambda b: reseal(_setitem(b, 12, 1))),
    "reserved-preamble": raw(lambda b: reseal(_setitem(b, 40, 1))),
    "end-magic": raw(lambda b: _setitem(b, len(b) - 2, ord("X"))),
    "reserved-trailer": raw(lambda b: _setitem(b, len(b) - 12, 1)),
    "header-too-long": raw(lambda b: bytes(b[:-56]) + struct.pack("<Q", fmt.MAX_HEADER + 1) + bytes(b[-48:])),
    "header-offset-unaligned": raw(lambda b: bytes(b[:-64])
                                   + struct.pack("<Q", struct.unpack_from("<Q", b, len(b) - 64)[0] + 8)
                                   + bytes(b[-56:])),
    "header-offset-low": raw(lambda b: bytes(b[:-64]) + struct.pack("<Q", 0) + bytes(b[-56:])),
    "file-size-mismatch": raw(lambda b: reseal(bytes(b[:-64]) + bytes(64) + bytes(b[-64:]))),
    "trailer-digest": raw(lambda b: _setitem(b, len(b) - 30, b[len(b) - 30] ^ 1)),
    # 8: header bytes
    "header-not-msgpack": raw(lambda b: with_header_bytes(bytes(b), b"\xc1" * 40)),
    "header-trailing-bytes": raw(lambda b: with_header_bytes(
        bytes(b), msgpack.packb({"sections": [], "tensors": []}) + b"\x00")),
    "header-not-a-map": raw(lambda b: with_header_bytes(bytes(b), msgpack.packb([1, 2]))),
    "header-int-key": raw(lambda b: with_header_bytes(bytes(b), msgpack.packb({"sections": [], "tensors": [], 1: 2}))),
    "header-bad-utf8": raw(lambda b: with_header_bytes(
        bytes(b), b"\x82\xa8sections\x90\xa7tensors\x91\x81\xa4name\xa2\xff\xfe")),
    # 9: top level and sections
    "no-sections": edit(lambda h: h.pop("sections")),
    "no-tensors": edit(lambda h: h.pop("tensors")),
    "metadata-not-map": edit(lambda h: h.__setitem__("metadata", [1])),
    "section-not-map": edit(lambda h: h["sections"].__setitem__(0, 64)),
    "section-offset-str": edit(lambda h: h["sections"][0].__setitem__("offset", "64")),
    "section-length-negative": edit(lambda h: h["sections"][1].__setitem__("length", -1)),
    "section-sha-short": edit(lambda h: h["sections"][0].__setitem__("sha256", b"\x00" * 31)),
    # 10: tensor entries
    "tensor-not-map": edit(lambda h: h["tensors"].append("x")),
    "name-missing": edit(lambda h: _t(h, "r").pop("name")),
    "name-empty": edit(lambda h: _t(h, "r").__setitem__("name", "")),
    "name-duplicate": edit(lambda h: _t(h, "r").__setitem__("name", "z")),
    "name-not-str": edit(lambda h: _t(h, "r").__setitem__("name", b"r")),
    "shape-not-list": edit(lambda h: _t(h, "r").__setitem__("shape", 3)),
    "shape-33-dims": edit(lambda h: _t(h, "r").__setitem__("shape", [1] * 33)),
    "shape-dim-too-big": edit(lambda h: _t(h, "r").__setitem__("shape", [2**48 + 1])),
    "shape-numel-too-big": edit(lambda h: _t(h, "r").__setitem__("shape", [2**24, 2**24, 2])),
    "shape-negative": edit(lambda h: _t(h, "r").__setitem__("shape", [-3])),
    "shape-bool": edit(lambda h: _t(h, "r").__setitem__("shape", [True, 3])),
    "dtype-unknown": edit(lambda h: _t(h, "r").__setitem__("dtype", "int4")),
    "kind-unknown": edit(lambda h: _t(h, "r").__setitem__("kind", "lazy")),
    "digest-short": edit(lambda h: _t(h, "r").__setitem__("digest", b"\x00" * 31)),
    # 11: sections named
    "section-out-of-range": edit(lambda h: _t(h, "r").__setitem__("section", 9)),
    "section-bool": edit(lambda h: _t(h, "w").__setitem__("section", False)),
    "section-shared": edit(lambda h: _t(h, "b").__setitem__("section", 1)),
    "section-orphan": edit(lambda h: h["tensors"].remove(_t(h, "b"))),
    # 12: raw
    "encoding-unknown": edit(lambda h: _t(h, "r").__setitem__("encoding", "lz4")),
    "none-wrong-length": edit(lambda h: _t(h, "r").__setitem__("shape", [4])),
    # 13: permuted
    "permuted-int": edit(lambda h: _t(h, "w").__setitem__("dtype", "int32")),
    "permuted-scalar": edit(lambda h: _t(h, "w").__setitem__("shape", [])),
    "permuted-empty": edit(lambda h: _t(h, "w").__setitem__("shape", [0])),
    "layout-unknown": edit(lambda h: _t(h, "w").__setitem__("layout", "columns")),
    "codec-not-map": edit(lambda h: _t(h, "w").__setitem__("codec", "plain")),
    "codec-no-name": edit(lambda h: _t(h, "w").__setitem__("codec", {})),
    "init-missing": edit(lambda h: _t(h, "w").pop("init")),
    "init-no-seed": edit(lambda h: _t(h, "w")["init"].pop("seed")),
    "init-dist-unknown": _big_rule("dist", "cauchy"),
    "init-scale-int": _big_rule("scale", 1),
    "init-scale-inf": _big_rule("scale", float("inf")),
    "init-seed-negative": _big_rule("seed", -1),  # 2**64 itself is not a msgpack int
    "init-stream-2^62": _big_rule("stream", 2**62),
    "init-prune-2^32+1": _big_rule("prune", 2**32 + 1),
    "init-prune-negative": _big_rule("prune", -1),
    "init-unknown-key": _big_rule("offset", 0.5),
    "init-label-not-str": _big_rule("label", 3),
    # 14: aliases
    "alias-target-missing": edit(lambda h: _alias(h).__setitem__("target", "nope")),
    "alias-target-not-str": edit(lambda h: _alias(h).__setitem__("target", 0)),
    "alias-to-alias": edit(lambda h: h["tensors"].append(dict(_alias(h), name="a2", target="a"))),
    "alias-shape": edit(lambda h: _alias(h).__setitem__("shape", [1, 3])),
    "alias-dtype": edit(lambda h: _alias(h).__setitem__("dtype", "float64")),
    "alias-digest": edit(lambda h: _alias(h).__setitem__("digest", b"\x01" * 32)),
    # 15: tiling
    "section-misplaced": edit(lambda h: h["sections"][1].__setitem__("offset", h["sections"][1]["offset"] + 64)),
    "first-section-not-at-64": edit(lambda h: h["sections"][0].__setitem__("offset", 0)),
    "section-into-header": edit(_past_header),
    "padding-not-zero": raw(lambda b: reseal(_setitem(b, _section_offset(b, 0) + 5, 7))),
    "header-not-aligned-after-sections": raw(_header_late),
    # 16: section digest
    "section-digest": raw(lambda b: _setitem(b, _section_offset(b, 1), b[_section_offset(b, 1)] ^ 1)),
    # 17: zstd
    "zstd-trailing-byte": payloads(lambda h, s: s.__setitem__(2, s[2] + b"\x00")),
    "zstd-two-frames": payloads(lambda h, s: s.__setitem__(2, s[2] + zstandard.ZstdCompressor().compress(b"x"))),
    "zstd-wrong-content-size": payloads(_wide_zstd),
    "zstd-no-content-size": payloads(_no_content_size),
    "zstd-corrupt": payloads(_corrupt_zstd),
    # 18: bool
    "bool-byte-2": payloads(lambda h, s: s.__setitem__(3, b"\x01\x02\x00\x01")),
    # 19: codecs
    "codec-unknown": edit(lambda h: _t(h, "w").__setitem__("codec", {"name": "zip"})),
    "plain-unknown-param": edit(lambda h: _t(h, "w")["codec"].__setitem__("width", 2)),
    "codec-version-unread": edit(lambda h: _t(h, "w")["codec"].__setitem__("version", 2)),
    "codec-version-zero": edit(lambda h: _t(h, "w")["codec"].__setitem__("version", 0)),
    "codec-version-bool": edit(lambda h: _t(h, "w")["codec"].__setitem__("version", True)),
    "codec-version-str": edit(lambda h: _t(h, "w")["codec"].__setitem__("version", "1")),
    "codec-bin-key": edit(lambda h: _t(h, "w")["codec"].__setitem__(b"name", "plain")),
    "init-bin-key": edit(lambda h: _t(h, "w")["init"].__setitem__(b"seed", 7)),
    "plain-wrong-length": payloads(lambda h, s: s.__setitem__(0, s[0] + b"\x00")),
    "plain-spare-bits": payloads(lambda h, s: s.__setitem__(0, bytes([s[0][0] | 0x80]))),
    "plain-repeated-index": payloads(lambda h, s: s.__setitem__(0, bytes([0b000101]))),
    "plain-index-out-of-range": payloads(lambda h, s: s.__setitem__(0, bytes([0b000111]))),
    # 20: decoded digest
    "decoded-digest": edit(lambda h: _t(h, "r").__setitem__("digest", b"\x02" * 32)),
    "decoded-digest-permuted": edit(lambda h: [_t(h, n).__setitem__("digest", b"\x03" * 32) for n in ("w", "a")]),
}


def test_base_file_is_valid():
    h, secs = _base()
    out = read_all(fmt.pack(h, secs))
    assert sorted(out) == ["b", "r", "w", "z"]


@pytest.mark.parametrize("case", sorted(MUST_REJECT))
def test_must_reject(case):
    buf = MUST_REJECT[case]()
    with pytest.raises(FormatError):
        read_all(buf)


def test_must_reject_more_than_max_tensors(monkeypatch):
    monkeypatch.setattr(fmt, "MAX_TENSORS", 4)
    h, secs = _base()
    with pytest.raises(FormatError):
        read_all(fmt.pack(h, secs))


def test_unknown_major_names_the_version_needed():
    buf = MUST_REJECT["major-2"]()
    with pytest.raises(VersionError, match=r"2\.0.*reads 1\.x.*format 2"):
        read_all(buf)


def test_unknown_minor_and_unknown_optional_keys_are_accepted():
    """Unknown keys are ignored everywhere except in the init and codec maps, whose every key changes
    the decoded bits (SPEC.md §3)."""
    h, secs = _base()
    h["future_key"] = {"anything": [1, 2.5, b"x"]}
    _t(h, "w")["future_tensor_key"] = "ignored"
    _t(h, "a")["section"] = 99  # ignored on an alias
    h[b"future_bin_key"] = 1  # a bin key is a key it does not know (SPEC.md §3)
    _t(h, "w")["codec"]["version"] = 1  # an explicit codec version 1 reads as its absence (§10.3)
    buf = bytearray(fmt.pack(h, secs))
    buf[10:12] = struct.pack("<H", 7)  # minor 7
    c = fmt.Container(reseal(bytes(buf)))
    assert (c.major, c.minor) == (1, 7)
    base_h, base_secs = _base()
    assert {k: v.tobytes() for k, v in read_all(reseal(bytes(buf))).items()} == \
        {k: v.tobytes() for k, v in read_all(fmt.pack(base_h, base_secs)).items()}
