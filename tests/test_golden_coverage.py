"""Which paths of the specification the golden files exercise: a path with no golden file fails.

The second reader (test_spec_reader.py, test_spec_codecs.py) records the paths it takes while it
decodes each golden file; every path of formats/SPEC.md and formats/codecs/*.md listed in REQUIRED
must be taken by at least one file, so a decoder that passes the golden files has run them all.
"""
from __future__ import annotations

import msgpack
import pytest

from test_spec_codecs import SEEN
from test_spec_reader import GOLDEN, SHARDED, VECTORS, read, read_sharded

FLOATS = ("float64", "float32", "float16", "bfloat16")
RANS = ("lanes=1", "lanes>1", "segments=1", "segments>1", "short last segment", "idle lanes",
        "trivial symbol, lanes>1")
REQUIRED = (
    [("codec", c) for c in ("plain", "packed", "uniform", "model")]
    + [(c, d) for c in ("plain", "packed", "uniform", "model") for d in FLOATS]
    + [("raw", e) for e in ("none", "zstd", "shuffle+zstd")]
    + [("alias",), ("prune",), ("shards",)] + [("dist", d) for d in ("uniform", "normal", "constant")]
    + [("packed", p) for p in ("PERM", "SEQ", "SEQ, 3 tied classes", "ties", "distinct")]
    + [(c, p) for c in ("uniform", "model") for p in RANS]
    + [("model", f"context {k}") for k in range(6)]
    + [("model", p) for p in ("frozen", "halving", "0 lags", "1 lags", "2 lags", "4 lags")]
)


@pytest.fixture(scope="module")
def paths() -> dict:
    """{path: [golden files that take it]}."""
    out: dict = {}
    for path in GOLDEN:
        SEEN.clear()
        read(path.read_bytes())
        for p in SEEN:
            out.setdefault(p, []).append(path.name)
    for index in SHARDED:
        SEEN.clear()
        read_sharded(VECTORS / "sharded" / index)
        for p in SEEN:
            out.setdefault(p, []).append(index)
    return out


def test_every_spec_path_has_a_golden_file(paths):
    missing = [p for p in REQUIRED if p not in paths]
    assert not missing, f"no golden file exercises {missing}: add one to formats/vectors/make_codec_vectors.py"


def test_lags_in_several_tensors():
    with_lags = []
    for path in GOLDEN:
        buf = path.read_bytes()
        h_off, h_len = int.from_bytes(buf[-64:-56], "little"), int.from_bytes(buf[-56:-48], "little")
        header = msgpack.unpackb(buf[h_off:h_off + h_len], raw=False)
        with_lags += [(path.name, t["name"]) for t in header["tensors"]
                      if t["kind"] == "permuted" and t["codec"].get("lags")]
    assert len(with_lags) >= 4 and len({f for f, _ in with_lags}) >= 2, with_lags

