"""Reproduce RESEARCH.md §3: per row, sigma[j] = final rank of the weight of initial rank j;
its Lehmer digits L_j = #{k > j : sigma[k] < sigma[j]} in [0, n-1-j]; one truncated-geometric
parameter per layer (fitted by grid search); ideal code length / uniform limit per layer.

    python bench/lehmer_study.py [file.perm ...]
"""
import pathlib
import sys
import numpy as np
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from codec_cases import TRAINED, trained_layers
from permcodec.perm import info_bits


def lehmer(sig):
    n = sig.size
    # digit j = number of later entries smaller than sig[j] (O(n^2) numpy, fine for n <= 1000)
    return np.array([(sig[j + 1:] < sig[j]).sum() for j in range(n)])


def sigmas(v, p):
    rows, n = v.shape
    out = []
    for r in range(rows):
        order = np.lexsort((np.arange(n), v[r]))      # positions by (value, index)
        rank0 = np.empty(n, np.int64); rank0[order] = np.arange(n)
        final = rank0[p[r]]                              # final rank of position i
        out.append(final[order])                         # sigma[j]
    return np.array(out)


def geo_bits(L, radix, qs=np.linspace(0.5, 0.99999, 4000)):
    best = None
    for q in qs:
        # -log2 P(L) with P(L) = (1-q) q^L / (1 - q^radix)
        b = -(np.log2(1 - q) + L * np.log2(q) - np.log2(1 - q ** radix)).sum()
        if best is None or b < best[0]:
            best = (b, q)
    return best


for path in sys.argv[1:] or TRAINED:
    tot_lim = tot_geo = 0
    for name, v, p in trained_layers(path):
        rows, n = v.shape
        sig = sigmas(v, p)
        L = np.concatenate([lehmer(s) for s in sig])
        radix = np.tile(n - np.arange(n), rows)
        Li = np.concatenate([lehmer(np.argsort(s)) for s in sig])
        lim = info_bits(v)
        unif = np.log2(radix).sum()
        g, q = geo_bits(L, radix)
        gi, qi = geo_bits(Li, radix)
        disp = np.abs(sig - np.arange(n)).mean() / n
        tot_lim += lim; tot_geo += min(g, unif)
        print(f"{pathlib.Path(path).stem:24s} {name:9s} n={n:4d} limit {lim/v.size:.3f} (distinct {unif/v.size:.3f})"
              f"  geo {g/v.size:.3f} b/w q={q:.4f} ratio {g/lim:.3f} | inverse-perm geo ratio {gi/lim:.3f}"
              f"  mean|disp|/n {disp:.3f}")
    print(f"{pathlib.Path(path).stem:24s} TOTAL geo/limit {tot_geo/tot_lim:.3f}")
