"""Every codec against the information limit and against the usual checkpoint formats, in one run.

    python bench/bench_codecs.py            # the paper's architectures + trained fixtures (minutes)
    python bench/bench_codecs.py --quick    # small models only (the CI smoke test)

For each case (a model at a random-init LaPerm state: seeded rules from permcodec.init.apply_ and
random row permutations, dense and 50% pruned; F1/F2 also weight-agnostic; and each trained
``.perm`` fixture) it saves the state with every codec in permcodec.codecs.REGISTRY (and "auto"),
and with safetensors fp32/fp16, torch.save and zstd-19 over the safetensors fp32 file, then loads
each back. Reported: bits per permuted weight and its ratio to the information limit
(permcodec.perm.info_bits), file size, save and load time (best of --reps; M weights/s counts every
element of the state dict, and a permcodec load includes regenerating the initial values), and
the generator alone. Writes bench/out/results.json, results.md (the tables) and results.png.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import zstandard  # noqa: E402

import permcodec  # noqa: E402
from permcodec import codecs, perm as P, values  # noqa: E402
from permcodec.rules import Rule, make  # noqa: E402

FULL_MODELS = ["mlp", "f1", "f2", "conv7", "conv2", "conv4", "conv13", "resnet20", "resnet50"]
QUICK_MODELS = ["mlp", "f1", "resnet20"]
WANN = {"f1": (0.08, 0.4), "f2": (0.03, 0.9)}   # weight-agnostic: shared value, pruning rate
PEERS = ["safetensors-fp32", "safetensors-fp16", "torch.save", "zstd19(safetensors-fp32)"]


# ---- cases ---------------------------------------------------------------------------------
def laperm_state(name: str, prune: float, shared=None, seed: int = 0):
    """(state dict, rules) of model ``name`` at a random LaPerm state: seeded init, rows permuted.
    The input layer keeps 80% of its weights, except in weight-agnostic nets (every layer at ``prune``)."""
    from trainers.models import PERMUTE_BIAS, build
    torch.manual_seed(seed)
    model = build(name)
    rules = permcodec.init.apply_(model, seed=seed, prune=prune, shared_value=shared,
                                  bias=PERMUTE_BIAS.get(name, False),
                                  input_prune_cap=prune if shared is not None else 0.2)
    rng = np.random.default_rng(seed)
    state = {k: t.detach().clone() for k, t in model.state_dict().items()}
    for k in rules:
        t = state[k]
        rows = t.reshape(t.shape[0], -1) if t.dim() > 1 else t.reshape(1, -1)
        state[k] = torch.from_numpy(rng.permuted(rows.numpy(), axis=1)).reshape(t.shape).contiguous()
    return state, rules


def trained_state(path: str):
    """(state dict, rules) of a saved .perm file: its tensors and the rules in its header."""
    header = permcodec.read_header(path)
    rules = {t["name"]: Rule.from_dict(t["init"]) for t in header["tensors"] if t["kind"] == "permuted"}
    return permcodec.load(path), rules


def cases(models: list[str], quick: bool, trained: list[str]):
    for name in models:
        yield f"{name} dense", lambda n=name: laperm_state(n, 0.0)
        yield f"{name} pruned 50%", lambda n=name: laperm_state(n, 0.5)
        if name in WANN and not quick:
            value, rate = WANN[name]
            yield f"{name} weight-agnostic {rate:.0%}", lambda n=name, v=value, r=rate: laperm_state(n, r, v)
    for path in trained:
        yield f"trained {pathlib.Path(path).stem}", lambda p=path: trained_state(p)


# ---- measuring -----------------------------------------------------------------------------
def best_of(reps: int, fn):
    best, out = float("inf"), None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def limit_bits(state, rules) -> tuple[float, int]:
    """(information limit in bits, permuted weights) of the rule-covered tensors."""
    bits, count = 0.0, 0
    for name, rule in rules.items():
        t = state[name]
        rows, n = P.as_rows(tuple(t.shape))
        v = rule.values((rows, n), permcodec.api.TORCH_NAMES[t.dtype])
        bits += P.info_bits(v)
        count += rows * n
    return bits, count


def permuted_bytes(path) -> int:
    h = permcodec.read_header(path)
    return sum(h["sections"][t["section"]]["length"] for t in h["tensors"] if t["kind"] == "permuted")


def run_codec(state, rules, codec, path, reps):
    enc, _ = best_of(reps, lambda: permcodec.save(state, path, rules=rules, codec=codec))
    dec, got = best_of(reps, lambda: permcodec.load(path))
    for k, t in state.items():  # the point of the library: bit for bit
        if not torch.equal(permcodec.api._bits(got[k]), permcodec.api._bits(t)):
            raise AssertionError(f"{codec}: {k} did not round-trip")
    h = permcodec.read_header(path)
    used = sorted({t["codec"]["name"] for t in h["tensors"] if t["kind"] == "permuted"})
    return {"bytes": os.path.getsize(path), "permuted_bytes": permuted_bytes(path), "save_s": enc,
            "load_s": dec, "codecs_used": used}


def run_peer(state, peer, path, reps):
    """Save once (peers' save speed is not reported), load best of ``reps``."""
    from safetensors.torch import load as st_load, load_file, save as st_save, save_file
    contig = {k: t.contiguous() for k, t in state.items()}
    reps_load, reps = reps, 1
    if peer == "safetensors-fp32":
        enc, _ = best_of(reps, lambda: save_file(contig, path))
        dec, _ = best_of(reps_load, lambda: load_file(path))
    elif peer == "safetensors-fp16":
        half = {k: (t.half() if t.is_floating_point() else t) for k, t in contig.items()}
        enc, _ = best_of(reps, lambda: save_file(half, path))
        dec, _ = best_of(reps_load, lambda: load_file(path))
    elif peer == "torch.save":
        enc, _ = best_of(reps, lambda: torch.save(contig, path))
        dec, _ = best_of(reps_load, lambda: torch.load(path, weights_only=True))
    else:
        cctx = zstandard.ZstdCompressor(level=19, threads=-1)

        def save():
            with open(path, "wb") as f:
                f.write(cctx.compress(st_save(contig)))
        enc, _ = best_of(reps, save)

        def load():
            with open(path, "rb") as f:
                return st_load(zstandard.ZstdDecompressor().decompress(f.read()))
        dec, _ = best_of(reps_load, load)
    return {"bytes": os.path.getsize(path), "load_s": dec}


def warm_up(codec_names, tmp):
    """Touch every path once (page-in, allocator warm-up), so that no timing includes it."""
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        lin = torch.nn.Linear(40, 30).to(dtype)
        permcodec.init.apply_(lin, seed=0, prune=0.5)
        for codec in codec_names:
            try:
                permcodec.save(lin, os.path.join(tmp, "warm.perm"), codec=codec)
                permcodec.load(os.path.join(tmp, "warm.perm"))
            except Exception:
                pass
    for dtype in values.DTYPES:
        for dist in ("uniform", "normal", "constant"):
            values.generate(make(dist, (1,), seed=0, name="w", value=1.0, prune=0.5), 1 << 17, dtype)


def run_case(label, make_state, codec_names, reps, tmp):
    state, rules = make_state()
    elements = sum(t.numel() for t in state.values())
    limit, permuted = limit_bits(state, rules)
    row = {"case": label, "elements": elements, "permuted_weights": permuted, "limit_bits": limit,
           "limit_bpw": limit / max(permuted, 1), "codecs": {}, "peers": {}}
    for codec in codec_names:
        try:
            r = run_codec(state, rules, codec, os.path.join(tmp, f"m.{codec}.perm"), reps)
        except Exception as e:  # a codec that cannot store this case is reported, not fatal
            row["codecs"][codec] = {"error": f"{type(e).__name__}: {e}"[:300]}
            continue
        r["bpw"] = r["permuted_bytes"] * 8 / max(permuted, 1)
        r["ratio_to_limit"] = r["permuted_bytes"] * 8 / limit if limit else None
        r["save_mws"] = elements / r["save_s"] / 1e6
        r["load_mws"] = elements / r["load_s"] / 1e6
        row["codecs"][codec] = r
    for peer in PEERS:
        r = run_peer(state, peer, os.path.join(tmp, "peer.bin"), reps)
        r["load_mws"] = elements / r["load_s"] / 1e6
        row["peers"][peer] = r
    return row


def generator_speed(count: int, reps: int) -> list[dict]:
    out = []
    for dist in ("uniform", "normal"):
        for prune in (0.0, 0.5):
            rule = make(dist, (count,), seed=1, name="bench", prune=prune, value=0.05)
            for dtype in values.DTYPES:
                values.generate(rule, 1 << 17, dtype)  # compile / warm
                t, _ = best_of(reps, lambda: values.generate(rule, count, dtype))
                out.append({"dist": dist, "prune": prune, "dtype": dtype, "count": count, "mvalues_s": count / t / 1e6})
    return out


# ---- reporting -----------------------------------------------------------------------------
def _fmt_mb(b):
    return f"{b / 1e6:.3f}" if b < 1e7 else f"{b / 1e6:.1f}"


def markdown(res) -> str:
    codec_names = res["codec_names"]
    lines = [f"Command: `{res['command']}`  ", f"Machine: {res['machine']}; load average at start "
             f"{res['loadavg_start']}, at end {res['loadavg_end']}; best of {res['reps']}.", ""]
    lines += ["**Size.** Bits per permuted weight (ratio to the information limit log2(n!/∏m!)); "
              "file sizes in MB (whole file: permuted tensors, raw tensors, header).", ""]
    head = ["case", "weights", "limit b/w"] + [f"{c} b/w" for c in codec_names] + \
           [f"{c} MB" for c in codec_names if c == "auto"] + [f"{p} MB" for p in PEERS]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for row in res["cases"]:
        cells = [row["case"], f"{row['permuted_weights']:,}", f"{row['limit_bpw']:.2f}"]
        for c in codec_names:
            r = row["codecs"][c]
            cells.append("error" if "error" in r else f"{r['bpw']:.2f} ({r['ratio_to_limit']:.3f})")
        if "auto" in codec_names:
            r = row["codecs"]["auto"]
            cells.append("—" if "error" in r else _fmt_mb(r["bytes"]))
        cells += [_fmt_mb(row["peers"][p]["bytes"]) for p in PEERS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "**Speed.** Save (encode) / load (decode, incl. regenerating initial values) of the whole "
              "model, M weights/s over every element of the state dict; peers: load only.", ""]
    head = ["case"] + [f"{c} save / load" for c in codec_names] + [f"{p} load" for p in PEERS]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for row in res["cases"]:
        cells = [row["case"]]
        for c in codec_names:
            r = row["codecs"][c]
            cells.append("error" if "error" in r else f"{r['save_mws']:.1f} / {r['load_mws']:.1f}")
        cells += [f"{row['peers'][p]['load_mws']:.1f}" for p in PEERS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"**Generator alone** (values.generate, {res['generator'][0]['count']:,} values, M values/s):", ""]
    dtypes = list(values.DTYPES)
    lines += ["| rule | " + " | ".join(dtypes) + " |", "|---|" + "---:|" * len(dtypes)]
    for dist in ("uniform", "normal"):
        for prune in (0.0, 0.5):
            g = {x["dtype"]: x["mvalues_s"] for x in res["generator"] if x["dist"] == dist and x["prune"] == prune}
            label = dist + (f", {prune:.0%} pruned" if prune else "")
            lines.append(f"| {label} | " + " | ".join(f"{g[d]:.0f}" for d in dtypes) + " |")
    errors = [(row["case"], c, r["error"]) for row in res["cases"] for c, r in row["codecs"].items() if "error" in r]
    if errors:
        lines += ["", "Errors:"] + [f"- {case}, {c}: {e}" for case, c, e in errors]
    return "\n".join(lines) + "\n"


def plot(res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    codec_names = [c for c in res["codec_names"]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5.5))
    labels = [row["case"] for row in res["cases"]]
    x = np.arange(len(labels))
    width = 0.8 / max(len(codec_names), 1)
    for i, c in enumerate(codec_names):
        ys = [row["codecs"][c].get("ratio_to_limit") or np.nan for row in res["cases"]]
        ax1.bar(x + i * width - 0.4 + width / 2, ys, width, label=c)
    ax1.axhline(1.0, color="k", lw=0.8, ls="--")
    ax1.set_ylim(0, 2.5)
    ax1.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
    ax1.set_ylabel("permuted bits / information limit")
    ax1.set_title("Size against the information limit (axis cut at 2.5)")
    ax1.legend(fontsize=8)
    big = max(res["cases"], key=lambda r: r["elements"])
    for c in codec_names:
        r = big["codecs"][c]
        if "error" not in r:
            ax2.scatter(r["bytes"] / 1e6, r["load_s"] * 1e3, marker="o")
            ax2.annotate(c, (r["bytes"] / 1e6, r["load_s"] * 1e3), fontsize=8)
    for p in PEERS:
        r = big["peers"][p]
        ax2.scatter(r["bytes"] / 1e6, r["load_s"] * 1e3, marker="s")
        ax2.annotate(p, (r["bytes"] / 1e6, r["load_s"] * 1e3), fontsize=8)
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("file size (MB)")
    ax2.set_ylabel("load time (ms)")
    ax2.set_title(f"{big['case']}: file size vs load time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small models, one repetition (CI smoke test)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per timing (best of; default 2, quick 1)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"), help="output folder")
    ap.add_argument("--trained", nargs="*", default=None,
                    help=".perm files of trained models (default: tests/data/*.perm and bench/fixtures/*.perm)")
    ap.add_argument("--models", nargs="*", default=None,
                    help=f"architectures from trainers/models.py (default: {' '.join(FULL_MODELS)}; "
                         f"quick: {' '.join(QUICK_MODELS)})")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    reps = args.reps or (1 if args.quick else 2)
    trained = args.trained if args.trained is not None else sorted(
        glob.glob(str(ROOT / "tests" / "data" / "*.perm")) + glob.glob(str(ROOT / "bench" / "fixtures" / "*.perm")))
    codec_names = sorted(codecs.REGISTRY) + ["auto"]
    command = "python bench/bench_codecs.py" + " --quick" * args.quick + (f" --reps {args.reps}" if args.reps else "") \
        + (" --models " + " ".join(args.models) if args.models is not None else "")
    res = {"command": command,
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, permcodec core "
                      f"{permcodec._core.num_threads()} threads, torch {torch.get_num_threads()} threads",
           "loadavg_start": [round(x, 2) for x in os.getloadavg()], "reps": reps, "quick": args.quick,
           "permcodec": permcodec.__version__, "codec_names": codec_names, "cases": []}
    models = args.models if args.models is not None else (QUICK_MODELS if args.quick else FULL_MODELS)
    with tempfile.TemporaryDirectory(prefix="permcodec-bench-") as tmp:
        warm_up(codec_names, tmp)
        for label, make_state in cases(models, args.quick, trained):
            t = time.perf_counter()
            row = run_case(label, make_state, codec_names, reps, tmp)
            res["cases"].append(row)
            print(f"{label}: {row['permuted_weights']:,} permuted weights, limit {row['limit_bpw']:.2f} b/w, "
                  + ", ".join(f"{c} {r['bpw']:.2f}" if "error" not in r else f"{c} error"
                              for c, r in row["codecs"].items()) + f" ({time.perf_counter() - t:.1f} s)", flush=True)
    res["generator"] = generator_speed(1 << 20 if args.quick else 10_000_000, reps)
    res["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    md = markdown(res)
    (out / "results.md").write_text(md)
    if not args.no_plot:
        plot(res, out / "results.png")
    print()
    print(md)
    return res


if __name__ == "__main__":
    main()
