"""Hostile and damaged files: every input ends in PermcodecError, in bounded time and memory.

Mutations of small valid files (truncations, bit flips, inserted and deleted bytes), read as they
are and resealed with correct checksums (fuzz/kit.py) so that they reach the decoders; hostile
headers built field by field; hand-made bombs with a tracemalloc bound; and the corruption test:
every single-byte change of a small file is detected. PERMCODEC_DEEP=1 runs more examples.
"""
import copy
import os
import pathlib
import struct
import sys
import time
import tracemalloc
import warnings

import msgpack
import pytest
import zstandard
from hypothesis import given, settings, strategies as st

import permcodec
from permcodec import format as fmt
from permcodec.errors import PermcodecError

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "fuzz"))
import kit  # noqa: E402

DEEP = bool(os.environ.get("PERMCODEC_DEEP"))
FILES = kit.small_files()
NAMES = sorted(FILES)
SECONDS = 5.0  # no single input may take longer than this
many = settings(max_examples=5000 if DEEP else 100)  # cheap examples: more than the quick profile's


def read(buf) -> str:
    """'ok' or 'error' (PermcodecError); any other exception fails the test, as does slowness."""
    t = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            kit.decode_all(buf)
        result = "ok"
    except PermcodecError:
        result = "error"
    assert time.perf_counter() - t < SECONDS, "reading one small input took too long"
    return result


def both(buf) -> str:
    """Read ``buf`` as it is (must fail if it differs from a valid file) and resealed."""
    read(kit.reseal(buf))
    return read(buf)


# ---- mutations of valid files -----------------------------------------------------------------
def test_seed_files_are_valid():
    for name in NAMES:
        assert read(FILES[name]) == "ok" and kit.reseal(FILES[name]) == FILES[name], name


@pytest.mark.parametrize("name", ["raw", "auto"])
def test_every_truncation_raises(name):
    data = FILES[name]
    step = 1 if DEEP or name == "raw" else 7
    for cut in range(0, len(data), step):
        assert both(data[:cut]) == "error", cut


@many
@given(name=st.sampled_from(NAMES), pos=st.integers(0, 1 << 20), bits=st.integers(1, 255))
def test_byte_changes_are_detected(name, pos, bits):
    data = bytearray(FILES[name])
    data[pos % len(data)] ^= bits
    assert both(bytes(data)) == "error"


@many
@given(name=st.sampled_from(NAMES), edits=st.lists(
    st.tuples(st.sampled_from(["insert", "delete", "set"]), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=9)),
    min_size=1, max_size=6))
def test_inserted_and_deleted_bytes(name, edits):
    data = bytearray(FILES[name])
    for op, pos, chunk in edits:
        pos %= len(data) + 1
        if op == "insert":
            data[pos:pos] = chunk
        elif op == "delete":
            del data[pos:pos + len(chunk)]
        else:
            data[pos:pos + len(chunk)] = chunk
    changed = bytes(data) != FILES[name]
    assert both(bytes(data)) == "error" or not changed


@many
@given(st.binary(max_size=600))
def test_random_bytes(data):
    assert both(data) == "error"


# ---- hostile headers ----------------------------------------------------------------------------
scalars = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=True), st.text(max_size=12), st.binary(max_size=40),
    st.integers(-2**63, 2**64 - 1),
    st.sampled_from([0, 1, 63, 64, 65, 2**31, 2**32, 2**48, 2**48 + 1, 2**63, 2**64 - 1]),
    st.sampled_from(["raw", "permuted", "alias", "none", "zstd", "shuffle+zstd", "plain", "uniform", "rows",
                     "float32", "bfloat16", "bool", "int64", "fc.weight", "fc.bias", "tied"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)), max_leaves=12)


def leaves(obj, path=()):
    yield path
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield from leaves(v, path + (k,))


def assign(obj, path, value):
    for k in path[:-1]:
        obj = obj[k]
    if value is DELETE:
        del obj[path[-1]]
    else:
        obj[path[-1]] = value


DELETE = object()


@many
@given(name=st.sampled_from(NAMES), data=st.data())
def test_hostile_header_fields(name, data):
    header, payloads = kit.split(FILES[name])
    header = copy.deepcopy(header)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in leaves(header) if p]
        path = data.draw(st.sampled_from(paths))
        value = data.draw(st.one_of(values, st.just(DELETE)) if isinstance(path[-1], str) else values)
        assign(header, path, value)
    keep_table = data.draw(st.booleans())
    if keep_table:  # the mutated section table as it is: offsets, lengths, order, overlaps
        h_off = kit.TRAILER.unpack_from(FILES[name], len(FILES[name]) - kit.TRAILER.size)[0]
        buf = kit.seal(FILES[name][fmt.DATA_START:h_off], msgpack.packb(header, use_bin_type=True))
    else:
        buf = kit.build({k: v for k, v in header.items() if k != "sections"}, payloads)
    read(buf)


@many
@given(name=st.sampled_from(NAMES), data=st.data())
def test_hostile_payloads(name, data):
    header, payloads = kit.split(FILES[name])
    payloads = list(payloads)
    i = data.draw(st.integers(0, len(payloads) - 1))
    payloads[i] = data.draw(st.one_of(
        st.binary(max_size=64),
        st.builds(lambda p, b: p[:len(p) // 2] + b, st.just(payloads[i]), st.binary(max_size=32)),
        st.builds(zstandard.ZstdCompressor().compress, st.binary(max_size=200))))
    if data.draw(st.booleans()) and len(payloads) > 1:
        j = data.draw(st.integers(0, len(payloads) - 1))
        payloads[i], payloads[j] = payloads[j], payloads[i]
    read(kit.build({k: v for k, v in header.items() if k != "sections"}, payloads))


# ---- bombs: bounded memory ------------------------------------------------------------------------
MB = 1 << 20


def bounded(buf, limit=16 * MB):
    """Read ``buf``; it must fail with PermcodecError, allocating at most ``limit`` bytes."""
    tracemalloc.start()
    try:
        assert read(buf) == "error"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit, f"peak {peak / MB:.1f} MiB"


def _header(name="auto", drop_alias=True):
    header, payloads = kit.split(FILES[name])
    header = copy.deepcopy(header)
    header.pop("sections")
    if drop_alias:
        header["tensors"] = [t for t in header["tensors"] if t["kind"] != "alias"]
    return header, list(payloads)


def _tensor(header, name):
    return next(t for t in header["tensors"] if t["name"] == name)


@pytest.mark.parametrize("shape", [[1 << 20, 1 << 20], [1 << 14, 1 << 14], [1 << 22], [2**48], [2**24, 2**24, 2]])
def test_permuted_tensor_with_huge_shape(shape):
    header, payloads = _header()
    _tensor(header, "fc.weight")["shape"] = shape
    bounded(kit.build(header, payloads))


@pytest.mark.parametrize("encoding", ["zstd", "none", "shuffle+zstd"])
def test_raw_tensor_with_huge_shape(encoding):
    header, payloads = _header()
    t = _tensor(header, "bn.running_var")
    t["shape"], t["encoding"] = [1 << 24], encoding
    bounded(kit.build(header, payloads))
    t["shape"] = [1 << 40]
    bounded(kit.build(header, payloads))


def _frame(content_size: int, blocks: bytes) -> bytes:
    """A zstd frame header declaring ``content_size`` (8-byte field, single segment) + ``blocks``."""
    return b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + struct.pack("<Q", content_size) + blocks


@pytest.mark.parametrize("blocks", [
    b"\x01\x00\x00",                                      # one empty last raw block
    bytes([0x03 | (5 << 3), 0, 0]) + b"\x07",              # a last RLE block of 5 bytes
    bytes([0x05 | (3 << 3) & 0xFF, 0, 0]) + b"abc",       # a last compressed block of garbage
    b"\x06\x00\x00",                                      # reserved block type
    b"",                                                  # no block at all
])
def test_zstd_frames_claiming_more_than_they_hold(blocks):
    header, payloads = _header()
    t = _tensor(header, "bn.running_var")
    t["shape"] = [(48 * MB) // 4]                         # under the file budget: only the frame is wrong
    payloads[t["section"]] = _frame(48 * MB, blocks)
    bounded(kit.build(header, payloads))


def test_zstd_bomb_against_small_shape():
    header, payloads = _header()
    t = _tensor(header, "bn.running_var")
    payloads[t["section"]] = zstandard.ZstdCompressor().compress(bytes(256 * MB))  # ~8 KB, 256 MiB inside
    bounded(kit.build(header, payloads))


def test_zstd_frame_with_lying_content_size():
    header, payloads = _header()
    t = _tensor(header, "bn.running_var")
    real = bytearray(zstandard.ZstdCompressor().compress(bytes(64 * MB)))  # content size in 4 bytes
    end = zstandard.frame_header_size(real)
    real[end - 4:end] = struct.pack("<I", 256)  # now it claims the tensor's 256 bytes
    assert zstandard.frame_content_size(real) == 256
    payloads[t["section"]] = bytes(real)
    bounded(kit.build(header, payloads))


def test_budget_counts_every_tensor():
    header, payloads = _header()
    extra = []
    for i in range(40):  # many tensors, each small enough, together too big for a tiny file
        header["tensors"].append({"name": f"z{i}", "shape": [1 << 21], "dtype": "float32", "kind": "raw",
                                  "encoding": "zstd", "digest": bytes(32), "section": len(payloads) + i})
        extra.append(b"")
    buf = kit.build(header, payloads + extra)
    with pytest.raises(permcodec.FormatError, match="MAX_EXPANSION"):
        fmt.Container(buf)


@pytest.mark.parametrize("body", [
    b"\x91" * 100_000 + b"\xc0",                         # arrays nested 100000 deep
    b"\x81\xa7tensors\xdd\xff\xff\xff\xff",               # an array that claims 2^32-1 entries
    b"\x81\xa8metadata\xdb\xff\xff\xff\xff",              # a string that claims 4 GiB
    b"\xc6\xff\xff\xff\xf0",                              # a bin that claims 4 GiB
    b"\x81\x01\x02",                                      # an integer map key
    b"\xd6\xff\x00\x00\x00\x00",                          # a timestamp extension
    b"\x82\xa8sections\x90\xa7tensors\x90trailing",        # bytes after the map
])
def test_hostile_msgpack(body):
    bounded(kit.seal(b"", body))


def test_deep_but_valid_metadata_loads():
    header, payloads = _header()
    deep = 0
    for _ in range(200):
        deep = [deep]
    header["metadata"] = {"deep": deep}
    assert read(kit.build(header, payloads)) == "ok"


@pytest.mark.parametrize("h_off, h_len", [(2**64 - 1, 2**64 - 1), (64, 2**63), (2**63, 0), (0, 0), (65, 10)])
def test_trailer_offsets(h_off, h_len):
    data = bytearray(FILES["raw"])
    struct.pack_into("<QQ", data, len(data) - kit.TRAILER.size, h_off, h_len)
    bounded(bytes(data))
    bounded(kit.reseal(bytes(data)))


@pytest.mark.parametrize("change", ["overlap", "reverse", "gap", "past_header", "shared", "huge"])
def test_section_tables(change):
    header, payloads = kit.split(FILES["auto"])
    header = copy.deepcopy(header)
    secs = header["sections"]
    if change == "overlap":
        secs[1]["offset"] = secs[0]["offset"]
    elif change == "reverse":
        secs.reverse()
    elif change == "gap":
        secs[-1]["offset"] += 64
    elif change == "past_header":
        secs[-1]["length"] += 4096
    elif change == "shared":
        header["tensors"][1]["section"] = header["tensors"][0]["section"]
    else:
        secs[0]["length"] = 2**63
    h_off = kit.TRAILER.unpack_from(FILES["auto"], len(FILES["auto"]) - kit.TRAILER.size)[0]
    buf = kit.reseal(kit.seal(FILES["auto"][fmt.DATA_START:h_off], msgpack.packb(header, use_bin_type=True)))
    bounded(buf)


def test_api_never_raises_other_errors(tmp_path):
    path = tmp_path / "x.perm"
    for buf in (b"", b"\x00" * 200, FILES["raw"][:-1], kit.seal(b"", b"\x80")):
        path.write_bytes(buf)
        for fn in (permcodec.load, permcodec.verify, permcodec.read_header):
            with pytest.raises(PermcodecError):
                fn(path)


# ---- corruption: every byte -----------------------------------------------------------------------
def _smallest_golden():
    files = sorted((ROOT / "formats" / "vectors").glob("**/*.perm"), key=lambda p: p.stat().st_size)
    return files[0] if files else None


@pytest.mark.parametrize("source", ["raw", "auto", "golden"])
def test_every_single_byte_change_is_detected(tmp_path, source):
    """xor 0xFF and one flipped bit at every position: load and verify both refuse the file."""
    if source == "golden":
        golden = _smallest_golden()
        if golden is None:
            pytest.skip("no golden files in formats/vectors yet")
        data = golden.read_bytes()
    else:
        data = FILES[source]
    assert read(data) == "ok"
    path = tmp_path / "c.perm"
    through_api = len(data) <= 1024 or DEEP  # the bigger files go through the in-memory reader
    missed = []
    for pos in range(len(data)):
        for mask in (0xFF, 1 << (pos % 8)) if through_api or source == "golden" or DEEP else (0xFF,):
            bad = bytearray(data)
            bad[pos] ^= mask
            if through_api:
                path.write_bytes(bad)
                for fn in (permcodec.verify, permcodec.load):
                    try:
                        fn(path)
                        missed.append((pos, mask, fn.__name__))
                    except PermcodecError:
                        pass
            elif read(bytes(bad)) != "error":
                missed.append((pos, mask))
    assert not missed, f"undetected changes: {missed[:10]}"



# ---- hostile index files: never a silently different model (issue 10) ------------------------------
@pytest.fixture(scope="module")
def two_saves(tmp_path_factory):
    """Two different sharded saves of the same names, as (folder, {name: bytes})."""
    a, b = tmp_path_factory.mktemp("save_a"), tmp_path_factory.mktemp("save_b")
    return (a, kit.sharded_save(str(a))), (b, kit.sharded_save(str(b), 1))


INDEX = "model.perm.index.json"
index_values = st.one_of(values, st.sampled_from(["model-00001-of-00003.perm", "model-00002-of-00003.perm",
                                                  "model-00003-of-00003.perm", "model-00009-of-00009.perm",
                                                  "..", "/etc/passwd", "sub/x.perm", ""]))


def _index_edit(index, shards_, data):
    """One hostile edit of a parsed index (or of the shard files beside it, through ``shards_``)."""
    if not isinstance(index, dict):
        return data.draw(values)
    wm = index.get("weight_map")
    op = data.draw(st.sampled_from(["drop", "rename", "repoint", "field", "no-block", "no-meta", "listing",
                                    "swap-shard", "drop-shard", "junk"]))
    if op in ("drop", "rename", "repoint") and isinstance(wm, dict) and wm:
        key = data.draw(st.sampled_from(sorted(wm)))
        if op == "drop":
            del wm[key]
        elif op == "rename":
            wm[key + data.draw(st.sampled_from(["_", ".x", " "]))] = wm.pop(key)
        else:
            wm[key] = data.draw(index_values)
    elif op == "field":
        paths = [p for p in leaves(index) if p]
        if paths:
            assign(index, data.draw(st.sampled_from(paths)), data.draw(st.one_of(index_values, st.just(DELETE))))
    elif op == "no-block" and isinstance(index.get("metadata"), dict):
        index["metadata"].pop("permcodec", None)
    elif op == "no-meta":
        index.pop("metadata", None)
    elif op == "listing" and isinstance(index.get("metadata"), dict):
        block = index["metadata"].get("permcodec")
        listed = block.get("shards") if isinstance(block, dict) else None
        if isinstance(listed, dict) and listed and all(isinstance(v, dict) for v in listed.values()):
            name = data.draw(st.sampled_from(sorted(listed)))
            listed[name] = data.draw(st.sampled_from([{}, {"bytes": 1}, dict(listed[name], trailer_sha256="0" * 64)]))
    elif op in ("swap-shard", "drop-shard"):
        shards_.append((op, data.draw(st.integers(0, 2))))
    else:
        return data.draw(values)
    return index


@settings(max_examples=200 if DEEP else 40, deadline=None)
@given(data=st.data())
def test_hostile_index_never_loads_a_different_model(two_saves, data):
    import json
    import shutil
    import tempfile
    (a, expected), (b, _) = two_saves
    with tempfile.TemporaryDirectory() as d:
        folder = pathlib.Path(d) / "m"
        shutil.copytree(a, folder)
        index, shard_ops = json.loads((folder / INDEX).read_text()), []
        for _ in range(data.draw(st.integers(1, 3))):
            index = _index_edit(index, shard_ops, data)
        (folder / INDEX).write_text(json.dumps(index, default=repr))
        names = sorted(f.name for f in folder.glob("model-*.perm"))
        for op, i in shard_ops:
            name = names[i % len(names)]
            if op == "drop-shard":
                (folder / name).unlink(missing_ok=True)
            elif (b / name).exists():
                shutil.copy(b / name, folder / name)
        t = time.perf_counter()
        for path in (folder / "model.perm", folder / INDEX):
            assert kit.index_oracle(path, expected) in ("ok", "error")
        assert time.perf_counter() - t < SECONDS


def test_a_shard_of_another_save_is_refused_whatever_the_index_says(two_saves, tmp_path):
    import json
    import shutil
    (a, expected), (b, _) = two_saves
    shutil.copytree(a, tmp_path / "m")
    index = json.loads((tmp_path / "m" / INDEX).read_text())
    del index["metadata"]["permcodec"]
    (tmp_path / "m" / INDEX).write_text(json.dumps(index))
    assert kit.index_oracle(tmp_path / "m" / "model.perm", expected) == "ok"
    for name in sorted(set(index["weight_map"].values())):
        shutil.copy(b / name, tmp_path / "m" / name)
        assert kit.index_oracle(tmp_path / "m" / "model.perm", expected) == "error", name
        shutil.copy(a / name, tmp_path / "m" / name)


# ---- memory bombs: a small file declaring a big permuted tensor (issue 10) -------------------------
def _codec_params():
    out = {}
    for name in NAMES:
        header, _ = kit.split(FILES[name])
        for t in header["tensors"]:
            if t["kind"] == "permuted":
                out.setdefault(t["codec"]["name"], []).append(t["codec"])
    return out


PARAMS = _codec_params()
BOMB_ELEMENTS = 1 << (24 if DEEP else 20)


bombs = st.fixed_dictionaries({"rows_log": st.integers(0, 24), "family": st.sampled_from(["constant", "uniform"]),
                                "dtype": st.sampled_from(["float16", "float32", "bfloat16"]),
                                "payload": st.binary(max_size=96)})


def _bomb(data, rows_log, family, dtype, payload):
    """(file, rows, n, itemsize): one permuted tensor of BOMB_ELEMENTS weights in rows of any length,
    with a seed file's codec params (one of them hostile, sometimes) and a small payload."""
    codec = data.draw(st.sampled_from(sorted(PARAMS)))
    params = copy.deepcopy(data.draw(st.sampled_from(PARAMS[codec])))
    if data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(params)))
        params[key] = data.draw(st.one_of(scalars, st.sampled_from([1 << 20, 1 << 30, 1 << 40])))
    rows = 1 << min(rows_log, 20)
    n = max(1, BOMB_ELEMENTS // rows)
    rule = {"dist": family, "scale": 0.5, "seed": 1, "stream": 3}
    entry = {"name": "w", "shape": [rows, n], "dtype": dtype, "kind": "permuted", "layout": "rows", "init": rule,
             "codec": params, "digest": bytes(32), "section": 0}
    buf = kit.build({"format": "permcodec", "metadata": {}, "tensors": [entry]}, [payload])
    return buf, rows, n, {"float16": 2, "float32": 4, "bfloat16": 2}[dtype]


@settings(max_examples=60 if DEEP else 15, deadline=None)
@given(data=st.data(), bomb=bombs)
def test_memory_bombs_are_refused_or_decoded(data, bomb):
    read(_bomb(data, **bomb)[0])


@settings(max_examples=60 if DEEP else 15, deadline=None)
@given(data=st.data(), bomb=bombs)
def test_memory_bombs_stay_within_the_working_budget(data, bomb):
    from permcodec import tensors as T
    buf, rows, n, itemsize = _bomb(data, **bomb)
    tracemalloc.start()
    try:
        read(buf)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= T.working_budget(rows, n, itemsize), f"peak {peak / MB:.1f} MiB"
