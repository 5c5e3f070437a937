"""Coverage-guided fuzzing of the permcodec reader with atheris (libFuzzer for Python).

One command (``pip install atheris``, or ``pip install -e .[fuzz]``)::

    python3 fuzz/fuzz_load.py -max_total_time=900

Every input is read twice: as it is (the preamble, trailer and checksum paths) and resealed with
every checksum recomputed (fuzz/kit.py), so mutations reach the header schema, the tiling check,
zstd and the permutation codecs. A custom mutator mixes libFuzzer's byte mutations with
structured ones (a header field replaced by a hostile value, a section mutated, sections moved,
dropped or duplicated). Any exception other than PermcodecError, a run over ``-timeout`` seconds or
over ``-rss_limit_mb`` is a failure; libFuzzer writes the input to ``crash-*`` / ``timeout-*`` /
``oom-*`` in the current directory. Replay one with ``python3 fuzz/fuzz_load.py crash-...``.

Inputs that start with ``{`` are shard indexes: each is written beside the shards of a fixed
sharded save (kit.sharded_save) and read through it; reading it must give exactly the saved model
or raise PermcodecError (kit.index_oracle), never a different model.

The working corpus lives in fuzz/corpus/ (not committed); it is seeded from fuzz/seeds/, small
valid files and one index that ``python3 fuzz/fuzz_load.py --write-seeds`` regenerates.

Without atheris, ``python3 fuzz/fuzz_load.py --campaign N`` runs N inputs of the same mutators
(random byte edits in place of libFuzzer's) and reports failures, inputs per second and peak RSS.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import random
import sys
import tempfile
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

try:
    import atheris
except ImportError:  # --campaign runs without it
    atheris = None

# the device path is left uninstrumented (it imports torch and Triton); the compiled core is C++
with (atheris.instrument_imports(include=["permcodec"], exclude=["permcodec.gpu"]) if atheris
      else contextlib.nullcontext()):
    import permcodec.format
    import permcodec.shards
    import permcodec.tensors  # noqa: F401
    from permcodec.errors import PermcodecError
import msgpack  # noqa: E402

import kit  # noqa: E402

HOSTILE = [0, 1, -1, 63, 64, 65, 2**31, 2**32, 2**48, 2**48 + 1, 2**63, 2**64 - 1, -2**63, 0.5, float("nan"),
           float("inf"), -0.0, 1e308, True, False, None, "", "x" * 300, "zstd", "none", "shuffle+zstd", "raw",
           "permuted", "alias", "plain", "uniform", "float32", "bfloat16", "bool", "fc.weight", "rows",
           b"", bytes(32), b"\xff" * 31, [], [0], [2**40, 2**40], [1] * 33, [[[[]]]], {}, {"name": "plain"},
           {"dist": "normal", "scale": 1.0, "seed": 0, "stream": 0}, msgpack.ExtType(1, b"x")]


def _byte_mutate(data: bytes, max_size: int, rng: random.Random | None = None) -> bytes:
    """libFuzzer's Mutate where atheris is installed; else a few random byte edits."""
    if atheris is not None and rng is None:
        return atheris.Mutate(data, max_size)
    rng = rng or random.Random()
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(len(buf) + 1)
        op = rng.randrange(4)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 2:
            del buf[pos:pos + rng.randint(1, 16)]
        else:
            buf[pos:pos + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff"])
    return bytes(buf[:max_size])


def _leaves(obj, path=()):
    """Every (path, value) of a header, maps and lists included."""
    yield path, obj
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield from _leaves(v, path + (k,))


def _set(obj, path, value):
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value


def _structured(data: bytes, max_size: int, rng: random.Random) -> bytes:
    header, payloads = kit.split(data)
    header = copy.deepcopy(header)
    op = rng.randrange(6)
    if op <= 1:  # replace one field (or a map entry) by a hostile value, or drop it
        path, value = rng.choice(list(_leaves(header))[1:])
        if rng.random() < 0.15 and isinstance(path[-1], str):
            parent = header
            for k in path[:-1]:
                parent = parent[k]
            del parent[path[-1]]
        elif isinstance(value, (bytes, str)) and rng.random() < 0.5:
            raw = value.encode() if isinstance(value, str) else value
            mutated = _byte_mutate(raw, max(len(raw) * 2, 8), _RNG)
            _set(header, path, mutated.decode("utf-8", "replace") if isinstance(value, str) else mutated)
        elif isinstance(value, int) and not isinstance(value, bool) and rng.random() < 0.5:
            _set(header, path, value + rng.choice([-1, 1, -64, 64, 1 << rng.randrange(64)]))
        else:
            _set(header, path, copy.deepcopy(rng.choice(HOSTILE)))
        if op == 1 and "sections" in header and isinstance(header["sections"], list):
            body = msgpack.packb(header, use_bin_type=True)   # keep the mutated section table as is
            return kit.seal(data[64:kit.TRAILER.unpack_from(data, len(data) - kit.TRAILER.size)[0]], body)[:max_size]
    elif op == 2 and payloads:  # mutate one section's payload
        i = rng.randrange(len(payloads))
        payloads[i] = _byte_mutate(bytes(payloads[i]), max(2 * len(payloads[i]), 16), _RNG)
    elif op == 3 and len(payloads) > 1:  # swap two sections
        i, j = rng.sample(range(len(payloads)), 2)
        payloads[i], payloads[j] = payloads[j], payloads[i]
    elif op == 4 and isinstance(header.get("tensors"), list) and header["tensors"]:  # drop or duplicate
        ts = header["tensors"]
        t = rng.choice(ts)
        ts.remove(t) if rng.random() < 0.5 else ts.append(copy.deepcopy(t))
    else:  # a deep or wide value in the metadata
        depth = rng.choice([10, 200, 1000, 5000])
        deep = 0
        for _ in range(depth):
            deep = [deep]
        header.setdefault("metadata", {})
        if isinstance(header["metadata"], dict):
            header["metadata"]["deep"] = deep
    try:
        return kit.build({k: v for k, v in header.items() if k != "sections"}, payloads)[:max_size]
    except Exception:  # msgpack refuses some structures (too deep): fall back to byte mutation
        return _byte_mutate(data, max_size, _RNG)


_RNG = None  # set by --campaign: byte edits then come from this seeded generator, not libFuzzer


def _structured_index(data: bytes, max_size: int, rng: random.Random) -> bytes:
    """An index with one entry dropped, renamed or re-pointed, its permcodec block or a listing
    changed, or a field replaced by a hostile value."""
    index = json.loads(data)
    wm = index.get("weight_map") if isinstance(index, dict) else None
    op = rng.randrange(5)
    if op == 0 and isinstance(wm, dict) and wm:
        key = rng.choice(sorted(wm))
        value = wm.pop(key)
        if rng.random() < 0.5:
            wm[key + rng.choice(["_", ".x"])] = value
    elif op == 1 and isinstance(wm, dict) and wm:
        wm[rng.choice(sorted(wm))] = rng.choice(sorted(set(map(str, wm.values()))) + ["x.perm", "..", ""])
    elif op == 2 and isinstance(index, dict) and isinstance(index.get("metadata"), dict):
        index["metadata"].pop("permcodec", None) if rng.random() < 0.5 else index.pop("metadata")
    else:
        path, _ = rng.choice(list(_leaves(index))[1:] or [((), None)])
        if path:
            _set(index, path, copy.deepcopy(rng.choice(HOSTILE[:-1] + [[2**70], {"a": {"b": []}}])))
    return json.dumps(index, default=repr).encode()[:max_size]


def mutate(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    if rng.random() < 0.5:
        try:
            return (_structured_index if data[:1] == b"{" else _structured)(data, max_size, rng)
        except Exception:
            pass
    return _byte_mutate(data, max_size, _RNG)


_SHARDS: dict = {}  # the folder of the fixed sharded save, and what it holds


def _sharded() -> tuple[str, dict]:
    if not _SHARDS:
        folder = tempfile.mkdtemp(prefix="permcodec-fuzz-")
        _SHARDS.update(folder=folder, expected=kit.sharded_save(folder))
    return _SHARDS["folder"], _SHARDS["expected"]


def check(data: bytes) -> None:
    """The oracle: reading ``data`` succeeds or raises PermcodecError; nothing else. An index
    (starting with ``{``) must read back as the saved model or raise."""
    if data[:1] == b"{":
        folder, expected = _sharded()
        path = os.path.join(folder, "model.perm.index.json")
        with open(path, "wb") as fh:
            fh.write(data)
        kit.index_oracle(path, expected)
        return
    for buf in (data, kit.reseal(data)):
        try:
            kit.decode_all(buf)
        except PermcodecError:
            pass


def write_seeds(folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    for name, data in kit.small_files().items():
        with open(os.path.join(folder, f"{name}.perm"), "wb") as f:
            f.write(data)
    with tempfile.TemporaryDirectory() as d:
        kit.sharded_save(d)
        with open(os.path.join(d, "model.perm.index.json"), "rb") as src, \
                open(os.path.join(folder, "index.json"), "wb") as f:
            f.write(src.read())


def campaign(count: int, seeds: str, seed: int = 0) -> int:
    """Run ``count`` mutated inputs through the oracle without atheris; returns the failures."""
    import resource
    import time
    import traceback
    global _RNG
    _RNG = random.Random(seed)
    corpus = []
    for name in sorted(os.listdir(seeds)):
        with open(os.path.join(seeds, name), "rb") as fh:
            corpus.append(fh.read())
    failures, t0 = 0, time.perf_counter()
    peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    most = 0
    for i in range(count):
        data = _RNG.choice(corpus)
        for _ in range(_RNG.randint(1, 3)):
            data = mutate(data, 65536, _RNG.getrandbits(32))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            check(data)
        except Exception:
            failures += 1
            name = os.path.join(HERE, f"crash-campaign-{seed}-{i}")
            with open(name, "wb") as fh:
                fh.write(data)
            print(f"failure {failures} (input {i}, written to {name}):\n{traceback.format_exc()}", file=sys.stderr)
        most = max(most, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
        if (i + 1) % 5000 == 0:
            print(f"{i + 1} inputs, {failures} failures, {(i + 1) / (time.perf_counter() - t0):.0f}/s", flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"inputs": count, "failures": failures, "seconds": round(time.perf_counter() - t0, 1),
                      "peak_rss_mib": round(rss / 1024, 1), "peak_rss_after_warmup_mib": round(peak0 / 1024, 1),
                      "largest_rss_growth_by_one_input_mib": round(most / 1024, 1)}))
    return failures


def main(argv) -> None:
    warnings.simplefilter("ignore")  # overflow warnings from hostile rule scales are expected
    seeds = os.path.join(HERE, "seeds")
    if "--write-seeds" in argv:
        write_seeds(seeds)
        return
    if not os.path.isdir(seeds) or not os.listdir(seeds):
        write_seeds(seeds)
    if "--campaign" in argv:
        i = argv.index("--campaign")
        sys.exit(1 if campaign(int(argv[i + 1]), seeds, int(argv[i + 2]) if len(argv) > i + 2 else 0) else 0)
    for name in sorted(os.listdir(seeds)):  # a seed that does not decode is a bug in the writer or a codec
        with open(os.path.join(seeds, name), "rb") as fh:
            try:
                check(fh.read()) if name.endswith(".json") else kit.decode_all(fh.read())
            except PermcodecError as e:
                print(f"warning: seed {name} does not decode: {e}", file=sys.stderr)
    args = [a for a in argv if a]
    if not any(not a.startswith("-") for a in args[1:]):  # no corpus or input given: use ours
        corpus = os.path.join(HERE, "corpus")
        os.makedirs(corpus, exist_ok=True)
        args += [corpus, seeds]
    defaults = {"-timeout=": "5", "-rss_limit_mb=": "3072", "-max_len=": "65536"}
    args += [k + v for k, v in defaults.items() if not any(a.startswith(k) for a in args)]
    atheris.Setup(args, check, custom_mutator=mutate)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
