"""CPU time of save(codec="auto")'s per-tensor work (uniform, then model where model.worth says so;
without model.worth, as before it existed: always both) on the permuted tensors of .perm files and
on two random-permutation tensors (where model loses).

    python bench/model_auto_cost.py runs/X/model.perm ...
"""
import pathlib
import sys
import time
import numpy as np
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from codec_cases import trained_layers, values, shuffled
from permcodec.codecs import model as Mo, uniform as U
def auto(p, v):
    pu, bu = U.encode(p, v)
    w = getattr(Mo, "worth", None)
    if w is None or w(p, v):
        pm, bm = Mo.encode(p, v)
        return min(len(bu), len(bm))
    return len(bu)
cases = {}
for f in sys.argv[1:]:
    cases[pathlib.Path(f).parent.name] = trained_layers(f)
rng = np.random.default_rng(0)
v = values(rng, 1024, 1152); cases["random 1024x1152"] = [("w", v, shuffled(rng, v))]
v = values(rng, 512, 4608); cases["random 512x4608"] = [("w", v, shuffled(rng, v))]
for name, layers in cases.items():
    auto(layers[0][2][:2], layers[0][1][:2])
    t = time.process_time(); tot = sum(auto(p, v) for _, v, p in layers); dt = time.process_time() - t
    W = sum(v.size for _, v, p in layers)
    print(f"{name:20s} {W/1e6:.2f} Mw auto {dt:.2f} CPU s = {W/dt/1e6:.2f} M/CPU s, {tot} bytes")
