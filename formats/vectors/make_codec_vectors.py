"""Write the golden files of the ``packed``, ``uniform`` and ``model`` codecs and codec_digests.json.

    python formats/vectors/make_codec_vectors.py      # writes files that do not exist yet

Inputs come from make_vectors.py's builders (portable Philox-derived tensors), saved with one
codec forced; ``near`` is a stand-in for a trained net (every weight vector close to its initial
order), where ``model`` beats the information limit. The later sets (``packed``, ``lanes``,
``contexts``) fix each tensor's codec options (lanes, segments, frozen columns, lags) so that every
path of formats/codecs/*.md has a file (tests/test_golden_coverage.py checks it). Golden files
never change once released; tests/test_codec_vectors.py decodes them and checks that saving again
gives the same bytes.
"""
from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import torch

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

import make_vectors as mv  # noqa: E402
import permcodec  # noqa: E402
from permcodec import philox  # noqa: E402
from permcodec.api import to_numpy  # noqa: E402
from permcodec.init import values_tensor  # noqa: E402
from permcodec.perm import as_rows  # noqa: E402
from permcodec.rules import make, stream_of  # noqa: E402


def near():
    """he_uniform MLP whose rows are their sorted initial values placed by (initial rank +
    Philox noise of about 3% of n): a near-identity permutation like LaPerm's."""
    s, r = {}, {}
    for name, shape in (("fc1.weight", (24, 96)), ("fc2.weight", (10, 24))):
        rule = make("he_uniform", shape, seed=mv.SEED, name=name)
        r[name] = rule
        v = values_tensor(rule, shape, torch.float32)
        rows, n = as_rows(shape)
        words = philox.blocks(mv.SEED, stream_of("near:" + name), 0, 0, (rows * n + 3) // 4).reshape(-1)[:rows * n]
        noise = (words.astype(np.int64) % (2 * (n // 16) + 1)) - n // 16
        base = np.argsort(np.argsort(v.numpy().reshape(rows, n), 1, kind="stable"), 1, kind="stable")
        target = np.argsort(np.argsort(base * 4 + noise.reshape(rows, n) * 4 + np.arange(n) % 4, 1,
                                       kind="stable"), 1, kind="stable")
        srt = np.sort(v.numpy().reshape(rows, n), 1)
        s[name] = torch.from_numpy(np.take_along_axis(srt, target, 1).reshape(shape).copy())
    return s, r, {"description": "near-identity rearrangement of a he_uniform MLP 96-24-10"}


def rearranged(rule, shape, dtype=torch.float32, spread=None, fixed=()):
    """``rule``'s values with every row rearranged by portable Philox words: uniformly at random,
    except the columns in ``fixed``, which keep their own values (fixed points: columns a ``model``
    encoder may freeze); or, with ``spread``, near the initial order (each position takes the value
    whose rank is its own initial rank plus noise of up to ``spread`` * n, as in ``near``)."""
    v = values_tensor(rule, shape, dtype)
    rows, n = as_rows(shape)
    words = philox.blocks(mv.SEED, stream_of(f"golden:{rule.stream}"), 0, 0, (rows * n + 3) // 4).reshape(-1)[:rows * n]
    words = words.reshape(rows, n).astype(np.int64)
    if spread is None:
        free = np.setdiff1d(np.arange(n), np.asarray(fixed, np.int64))
        order = np.tile(np.arange(n), (rows, 1))
        order[:, free] = free[np.argsort(words[:, free], axis=1, kind="stable")]
    else:
        vals = v.reshape(rows, n)
        srt = np.argsort((vals.float() if dtype == torch.bfloat16 else vals).numpy(), axis=1, kind="stable")
        rank = np.argsort(srt, axis=1, kind="stable")
        half = int(spread * n)
        key = rank * 4 + (words % (2 * half + 1) - half) * 4 + np.arange(n) % 4
        order = np.take_along_axis(srt, np.argsort(np.argsort(key, 1, kind="stable"), 1, kind="stable"), 1)
    return torch.gather(v.reshape(rows, n), 1, torch.from_numpy(order)).reshape(shape).clone()


def _tensor(s, r, opts, name, family, shape, dtype=torch.float32, spread=None, fixed=(), options=None, **kw):
    rule = make(family, shape, seed=mv.SEED, name=name, **kw)
    r[name], s[name] = rule, rearranged(rule, shape, dtype, spread, fixed)
    opts[name] = options or {}


def seq():
    """Rows that packed codes in SEQ mode: float16 values that overflow to +-inf or are pruned
    (three tied classes: -inf, +0.0, +inf; a rare finite singleton) and a bfloat16 constant half
    pruned (two classes)."""
    s, r, o = {}, {}, {}
    _tensor(s, r, o, "inf.weight", "uniform", (6, 48), torch.float16, value=1e7, prune=0.3)
    _tensor(s, r, o, "const.weight", "constant", (8, 40), torch.bfloat16, value=-1.5, prune=0.5)
    return s, r, {"description": "packed SEQ rows: float16 +-inf ties, bfloat16 constant 50% pruned"}, o


def lanes():
    """Multi-lane and multi-segment rANS layouts: a short last segment, lanes left idle, trivial
    symbols (freq = M) interleaved, a 1-D tensor; model options vary per tensor."""
    s, r, o = {}, {}, {}
    _tensor(s, r, o, "a.weight", "he_uniform", (24, 96), spread=0.05,
            options={"lanes": 3, "segment_rows": 5, "lags": [1], "frozen": None})
    _tensor(s, r, o, "b.weight", "he_uniform", (12, 40), prune=0.5,
            options={"lanes": 4, "segment_rows": 12, "lags": [2, 5], "frozen": None})
    _tensor(s, r, o, "c.weight", "glorot_uniform", (10, 24), torch.float16,
            options={"lanes": 64, "segment_rows": 1, "lags": [], "frozen": None})
    _tensor(s, r, o, "vec", "uniform", (30,), torch.float64, value=0.5,
            options={"lanes": 2, "segment_rows": 1, "lags": [1, 3, 4, 7], "frozen": None})
    return s, r, {"description": "multi-lane, multi-segment rANS layouts"}, o


def contexts():
    """``model`` contexts 0-5 (frozen columns, two lags), lags in several tensors, and a segment of
    3072 symbols in context 0, enough to halve its count table (tot_k > 65536)."""
    s, r, o = {}, {}, {}
    frozen = np.zeros(64, bool)
    frozen[[3, 10, 11, 40, 63]] = True
    _tensor(s, r, o, "ctx.weight", "he_uniform", (16, 64), fixed=np.flatnonzero(frozen),
            options={"lanes": 2, "segment_rows": 16, "lags": [1, 2], "frozen": frozen})
    _tensor(s, r, o, "lag.weight", "he_uniform", (8, 50), prune=0.2, spread=0.04,
            options={"lanes": 1, "segment_rows": 8, "lags": [1, 2, 3, 9], "frozen": None})
    _tensor(s, r, o, "halve.weight", "he_uniform", (24, 128), spread=0.1,
            options={"lanes": 1, "segment_rows": 24, "lags": [], "frozen": None})
    return s, r, {"description": "model contexts 0-5, lags, a count-table halving"}, o


def save_with(state, path, rules, codec, options, metadata) -> int:
    """permcodec.save with per-tensor codec options (lanes, segment_rows, frozen, lags), which save
    itself chooses automatically; every tensor here is permuted."""
    from permcodec import format as fmt
    from permcodec import tensors as T

    def write(f):
        w, entries = fmt.Writer(f), []
        for name, t in state.items():
            arr, dt = to_numpy(t)
            params, payload = T.encode_permuted(arr, rules[name], dt, name, codec, **options.get(name, {}))
            entries.append({"name": name, "shape": list(arr.shape), "dtype": dt, "digest": T.digest(arr),
                            "kind": "permuted", "layout": "rows", "init": rules[name].to_dict(), "codec": params,
                            "section": w.add_section(payload)})
        return w.finish({"format": "permcodec", "created_by": f"permcodec {permcodec.__version__}",
                         "metadata": metadata, "tensors": entries})
    with open(path, "wb") as f:
        return write(f)


BUILDERS = {"tiny": mv.tiny, "dense": mv.dense, "pruned90": mv.BUILDERS["pruned90"],
            "weight_agnostic": mv.weight_agnostic, "mixed": mv.mixed, "near": near}
FILES = {f"codec_{codec}_{name}.perm": (codec, name) for codec in ("uniform", "model") for name in BUILDERS}
BUILDERS.update(seq=seq, lanes=lanes, contexts=contexts)
FILES.update({f"codec_packed_{name}.perm": ("packed", name)
              for name in ("dense", "pruned90", "weight_agnostic", "mixed", "seq")})
FILES.update({"codec_uniform_lanes.perm": ("uniform", "lanes"), "codec_model_lanes.perm": ("model", "lanes"),
              "codec_model_contexts.perm": ("model", "contexts")})


def write(fname, path) -> int:
    codec, name = FILES[fname]
    state, rules, meta, *options = BUILDERS[name]()
    if options:
        return save_with(state, path, rules, codec, options[0], meta)
    return permcodec.save(state, path, rules=rules, codec=codec, metadata=meta)


def main():
    index = HERE / "codec_digests.json"
    known = json.loads(index.read_text()) if index.exists() else {}
    for fname in FILES:
        path = HERE / fname
        if path.exists():
            print(f"{fname}: exists, left as it is (golden files never change)")
            continue
        size = write(fname, path)
        known[fname] = mv.digests(path)
        print(f"{fname}: {size} bytes")
    index.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
