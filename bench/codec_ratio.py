"""Bits per weight of the uniform and model codecs against the information limit, per permuted
tensor of .perm files (default: the trained fixtures in tests/data).

    python bench/codec_ratio.py [file.perm ...]
"""
import pathlib
import sys
import time
import numpy as np
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from codec_cases import TRAINED, trained_layers
from permcodec.codecs import model as Mo, uniform as U
from permcodec.perm import info_bits
def label(path):
    p = pathlib.Path(path)
    return p.parent.name if p.stem == "model" else p.stem   # trainers write runs/<name>/model.perm


def drift(v, p):
    """Mean |final sorted index - initial sorted index| / n (0: untrained, ~1/3: random)."""
    rank = np.argsort(np.argsort(Mo.keys_of(v), 1, kind="stable"), 1, kind="stable")
    return float(np.abs(np.take_along_axis(rank, p, 1) - rank).mean() / v.shape[1])


for path in sys.argv[1:] or TRAINED:
    L = Mb = Ub = Best = 0
    for name, v, p in trained_layers(path):
        lim = info_bits(v)
        t = time.perf_counter(); pm, bm = Mo.encode(p, v); te = time.perf_counter() - t
        t = time.perf_counter(); d = Mo.decode(pm, bm, v); td = time.perf_counter() - t
        pu, bu = U.encode(p, v)
        assert (d == p).all() and (U.decode(pu, bu, v) == p).all()
        m, u = len(bm) * 8, len(bu) * 8
        L += lim; Mb += m; Ub += u; Best += min(m, u)
        print(f"{label(path):14s} {name:10s} {str(v.shape):11s} drift {drift(v, p):.3f} limit {lim/v.size:.3f} "
              f"uniform {u/v.size:.3f} model {m/v.size:.3f} b/w  model/limit {m/lim:.3f}  "
              f"model enc {v.size/te/1e6:.1f} dec {v.size/td/1e6:.1f} M/s")
    print(f"{label(path):14s} TOTAL uniform/limit {Ub/L:.4f}  model/limit {Mb/L:.3f}  "
          f"auto(best per tensor)/limit {Best/L:.3f}")
