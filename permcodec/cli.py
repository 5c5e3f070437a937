"""The ``permcodec`` command: info, verify, export, to-safetensors.

Exit codes: 0 success, 1 the file failed a check (corrupt, mismatch), 2 bad usage or input.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

from .errors import FormatError, PermcodecError


def _info(args) -> int:
    from . import api, tensors as T
    from .perm import info_bits

    with api.File(args.path) as f:
        rows = []
        tot = {"weights": 0, "bits": 0, "limit": 0.0, "fp32": 0, "permuted_weights": 0}
        for name, e in f.entries.items():
            if e["kind"] == "alias":
                rows.append((name, str(e["shape"]), e["dtype"], f"alias of {e['target']}", "", "", "", ""))
                continue
            n = math.prod(e["shape"])
            sec = f.header["sections"][e["section"]]
            bits = sec["length"] * 8
            tot["weights"] += n
            tot["bits"] += bits
            tot["fp32"] += n * 32
            if e["kind"] == "permuted":
                limit = info_bits(T.initial_rows(e)) if not args.fast else float("nan")
                tot["limit"] += 0 if math.isnan(limit) else limit
                tot["permuted_weights"] += n
                rows.append((name, str(e["shape"]), e["dtype"], "permuted", e["codec"]["name"],
                             f"{bits / n:.3f}", f"{limit / n:.3f}", f"{32 * n / max(bits, 1):.1f}x"))
            else:
                rows.append((name, str(e["shape"]), e["dtype"], "raw", e["encoding"], f"{bits / max(n, 1):.3f}", "",
                             f"{32 * n / max(bits, 1):.1f}x"))
    if args.json:
        print(json.dumps({"tensors": [dict(zip(("name", "shape", "dtype", "kind", "codec", "bits_per_weight",
                                                   "limit_bits_per_weight", "vs_fp32"), r)) for r in rows],
                          "totals": tot, "file_bytes": os.path.getsize(args.path)}, indent=1))
        return 0
    head = ("tensor", "shape", "dtype", "kind", "codec", "bits/w", "limit", "vs fp32")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    size = os.path.getsize(args.path)
    print(f"\n{tot['weights']:,} elements, file {size:,} bytes = {8 * size / max(tot['weights'], 1):.3f} bits/element; "
          f"fp32 would be {tot['fp32'] // 8:,} bytes ({tot['fp32'] / 8 / size:.2f}x larger)")
    if tot["permuted_weights"] and not args.fast:
        print(f"permuted: information limit {tot['limit'] / tot['permuted_weights']:.3f} bits/weight")
    return 0


def _verify(args) -> int:
    from . import api
    rep = api.verify(args.path)
    print(f"OK {args.path}: {rep.tensors} tensors ({rep.permuted} permuted), {rep.weights:,} elements, "
          f"every digest matches")
    return 0


def _export(args) -> int:
    from . import api
    from .rules import Rule
    from safetensors.numpy import load_file as _unused  # noqa: F401  (fail early if missing)
    from safetensors.torch import load_file
    state = load_file(args.checkpoint)
    with open(args.rules) as fh:
        rules = {k: Rule.from_dict(v) for k, v in json.load(fh).items()}
    size = api.export(state, rules, args.output, codec=args.codec)
    print(f"wrote {args.output}: {size:,} bytes")
    return 0


def _to_safetensors(args) -> int:
    from safetensors.torch import save_file
    from . import api
    state = api.load(args.path)
    seen, out = {}, {}
    for k, v in state.items():  # safetensors refuses shared storage: keep one copy per alias
        out[k] = v.clone() if id(v) in seen else v
        seen[id(v)] = k
    meta = {"permcodec_metadata": json.dumps(api.read_header(args.path).get("metadata", {}), default=str)}
    save_file(out, args.output, metadata=meta)
    print(f"wrote {args.output}: {os.path.getsize(args.output):,} bytes")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="permcodec", description="Inspect, verify and convert permcodec files.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("info", help="per-tensor shapes, codecs, bits per weight and the information limit")
    s.add_argument("path")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--fast", action="store_true", help="skip the information limit (no value regeneration)")
    s.set_defaults(fn=_info)
    s = sub.add_parser("verify", help="decode everything and check every digest")
    s.add_argument("path")
    s.set_defaults(fn=_verify)
    s = sub.add_parser("export", help="a .safetensors checkpoint + rules JSON -> .perm")
    s.add_argument("checkpoint")
    s.add_argument("output")
    s.add_argument("--rules", required=True, help="JSON map {tensor name: rule dict} (Rule.to_dict())")
    s.add_argument("--codec", default="auto")
    s.set_defaults(fn=_export)
    s = sub.add_parser("to-safetensors", help="rebuild the weights and write them as .safetensors")
    s.add_argument("path")
    s.add_argument("output")
    s.set_defaults(fn=_to_safetensors)
    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except FormatError as e:
        print(f"permcodec: {args.path if hasattr(args, 'path') else ''}: {e}", file=sys.stderr)
        return 1
    except (PermcodecError, OSError, ValueError) as e:
        print(f"permcodec: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
