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

The working corpus lives in fuzz/corpus/ (not committed); it is seeded from fuzz/seeds/, small
valid files that ``python3 fuzz/fuzz_load.py --write-seeds`` regenerates.
"""
from __future__ import annotations

import copy
import os
import random
import sys
import warnings

import atheris

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

# modules with numba-compiled functions stay uninstrumented (numba cannot compile instrumented bytecode)
NUMBA = ["permcodec._jit", "permcodec.codecs._rans", "permcodec.codecs._packed_jit", "permcodec.codecs.uniform",
         "permcodec.codecs.model", "permcodec.gpu"]
with atheris.instrument_imports(include=["permcodec"], exclude=NUMBA):
    import permcodec.format  # noqa: F401
    import permcodec.tensors  # noqa: F401
    from permcodec.errors import PermcodecError
import msgpack  # noqa: E402

import kit  # noqa: E402

HOSTILE = [0, 1, -1, 63, 64, 65, 2**31, 2**32, 2**48, 2**48 + 1, 2**63, 2**64 - 1, -2**63, 0.5, float("nan"),
           float("inf"), -0.0, 1e308, True, False, None, "", "x" * 300, "zstd", "none", "shuffle+zstd", "raw",
           "permuted", "alias", "plain", "uniform", "float32", "bfloat16", "bool", "fc.weight", "rows",
           b"", bytes(32), b"\xff" * 31, [], [0], [2**40, 2**40], [1] * 33, [[[[]]]], {}, {"name": "plain"},
           {"dist": "normal", "scale": 1.0, "seed": 0, "stream": 0}, msgpack.ExtType(1, b"x")]


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
            mutated = atheris.Mutate(raw, max(len(raw) * 2, 8))
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
        payloads[i] = atheris.Mutate(bytes(payloads[i]), max(2 * len(payloads[i]), 16))
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
        return atheris.Mutate(data, max_size)


def mutate(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    if rng.random() < 0.5:
        try:
            return _structured(data, max_size, rng)
        except Exception:
            pass
    return atheris.Mutate(data, max_size)


def check(data: bytes) -> None:
    """The oracle: reading ``data`` succeeds or raises PermcodecError; nothing else."""
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


def main(argv) -> None:
    warnings.simplefilter("ignore")  # overflow warnings from hostile rule scales are expected
    seeds = os.path.join(HERE, "seeds")
    if "--write-seeds" in argv:
        write_seeds(seeds)
        return
    if not os.path.isdir(seeds):
        write_seeds(seeds)
    for name in sorted(os.listdir(seeds)):  # a seed that does not decode is a bug in the writer or a codec
        with open(os.path.join(seeds, name), "rb") as fh:
            try:
                kit.decode_all(fh.read())
            except PermcodecError as e:
                print(f"warning: seed {name} does not decode: {e}", file=sys.stderr)
    args = [a for a in argv if a]
    if not any(not a.startswith("-") for a in args[1:]):  # no corpus or input given: use ours
        corpus = os.path.join(HERE, "corpus")
        os.makedirs(corpus, exist_ok=True)
        args += [corpus, seeds]
    # 25 s: the first call of a numba-compiled decoder compiles it (seconds on a loaded machine)
    defaults = {"-timeout=": "25", "-rss_limit_mb=": "3072", "-max_len=": "65536"}
    args += [k + v for k, v in defaults.items() if not any(a.startswith(k) for a in args)]
    atheris.Setup(args, check, custom_mutator=mutate)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
