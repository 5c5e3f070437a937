"""Speed of the ``model`` codec (M weights/s): encode with fixed params, encode with the default
search (frozen columns, lags), decode, and the reference-equal check; the trained fixtures' layers
tiled to a larger tensor, and a synthetic near-identity tensor.

    python bench/model_speed.py [--repeat 3]
"""
import argparse
import os
import pathlib
import sys
import time
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
import numpy as np
from codec_cases import TRAINED, shuffled, trained_layers, values
from permcodec.codecs import model as Mo, uniform as U


CLOCK = time.perf_counter


def best(f, repeat):
    out, ts = None, []
    for _ in range(repeat):
        t = CLOCK(); out = f(); ts.append(CLOCK() - t)
    return out, min(ts)


def cases():
    layers = trained_layers(TRAINED[0])
    for name, v, p in layers:
        reps = max(1, 300_000 // v.size)
        yield f"k20 {name} x{reps}", np.tile(v, (reps, 1)), np.tile(p, (reps, 1))
    rng = np.random.default_rng(1)
    v = values(rng, 2048, 1024)
    yield "near 2048x1024", v, shuffled(rng, v, 0.02)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cpu", action="store_true", help="CPU time of the process (all threads) instead of "
                    "wall time: M weights per CPU second, steadier on a loaded machine")
    a = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if a.cpu else time.perf_counter
    print(f"load: {os.getloadavg()}  clock: {'CPU' if a.cpu else 'wall'}")
    for label, v, p in cases():
        (pa, ba), t_auto = best(lambda: Mo.encode(p, v), a.repeat)
        fz = (np.unpackbits(np.frombuffer(pa["frozen"], np.uint8), bitorder="little")[: v.shape[1]].astype(bool)
              if pa["frozen"] else None)
        _, t_fix = best(lambda: Mo.encode(p, v, frozen=fz, lags=pa["lags"]), a.repeat)
        d, t_dec = best(lambda: Mo.decode(pa, ba, v), a.repeat)
        assert (d == p).all()
        (pu, bu), t_u = best(lambda: U.encode(p, v), a.repeat)
        _, t_ud = best(lambda: U.decode(pu, bu, v), a.repeat)
        w = v.size / 1e6
        print(f"{label:24s} {v.size/1e6:5.2f} Mw  model/uniform {len(ba)/len(bu):.3f}  model enc(auto) {w/t_auto:6.2f} "
              f"enc(fixed) {w/t_fix:6.2f} dec {w/t_dec:6.2f} M/s | uniform enc {w/t_u:6.1f} dec {w/t_ud:6.1f}  "
              f"frozen {bool(pa['frozen'])} lags {pa['lags']}")


if __name__ == "__main__":
    main()
