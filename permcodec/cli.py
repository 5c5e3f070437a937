"""The ``permcodec`` command: info, verify, diff, export, to-safetensors.

Exit codes: 0 success (for diff: the two files decode to the same tensors), 1 the file failed a
check (corrupt, mismatch) or diff found a difference, 2 bad usage or input. ``info`` and
``verify`` read files without importing torch.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

from . import __version__
from .errors import FormatError, PermcodecError


def _open(path):
    """A reader of ``path``, without torch for a single file or bytes; a sharded save is read
    through the torch adapter (shards.py opens its shards as permcodec.File)."""
    from . import paths, shards
    from .reader import File
    target = paths.load_target(path)
    if shards.is_index(target):
        from .api import open_file
        return open_file(target)
    return File(target)


def _files(f) -> list:
    """The single files behind ``f``: itself, or each shard of a sharded save."""
    return [f.shard(s) for s in f.shards] if hasattr(f, "shards") else [f]


def _file_bytes(f) -> int:
    return getattr(f, "file_bytes", None) or len(f.container.buf)


def _rule_text(init: dict) -> str:
    from .rules import Rule
    r = Rule.from_dict(init)
    text = f"{r.label or r.dist} seed={r.seed}"
    return text + (f" prune={r.prune_rate:.3g}" if r.prune else "")


def _json_default(value):
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    return str(value)


def _tensor_rows(f, fast: bool) -> tuple[list[dict], dict]:
    """One dict per tensor (numbers as numbers) and the totals."""
    rows = []
    tot = {"weights": 0, "bits": 0, "fp32_bits": 0, "permuted_weights": 0, "limit_bits": None if fast else 0.0}
    for sf in _files(f):
        for name, e in sf.entries.items():
            row = {"name": name, "shape": list(e["shape"]), "dtype": e["dtype"], "kind": e["kind"]}
            rows.append(row)
            if e["kind"] == "alias":
                row["target"] = e["target"]
                continue
            n = math.prod(e["shape"])
            bits = sf.header["sections"][e["section"]]["length"] * 8
            tot["weights"] += n
            tot["bits"] += bits
            tot["fp32_bits"] += 32 * n
            row.update(codec=e["codec"]["name"] if e["kind"] == "permuted" else e["encoding"],
                       bits_per_weight=bits / max(n, 1), vs_fp32=32 * n / max(bits, 1))
            if e["kind"] == "permuted":
                row["rule"] = e["init"]
                tot["permuted_weights"] += n
                if not fast:
                    from . import tensors as T  # regenerates values: the codecs are not needed for --fast
                    from .perm import info_bits
                    limit = info_bits(T.initial_rows(e))
                    row["limit_bits_per_weight"] = limit / n
                    tot["limit_bits"] += limit
    return rows, tot


def _info(args) -> int:
    with _open(args.path) as f:
        rows, tot = _tensor_rows(f, args.fast)
        size, meta = _file_bytes(f), f.metadata
    if args.json:
        out = {"tensors": rows, "totals": tot, "file_bytes": size, "metadata": meta,
               "rules": {r["name"]: r["rule"] for r in rows if "rule" in r}}
        print(json.dumps(out, indent=1, default=_json_default))
        return 0
    head = ("tensor", "shape", "dtype", "kind", "codec", "bits/w", "limit", "vs fp32", "rule")
    table = [head]
    for r in rows:
        if r["kind"] == "alias":
            table.append((r["name"], str(r["shape"]), r["dtype"], f"alias of {r['target']}", "", "", "", "", ""))
            continue
        limit = r.get("limit_bits_per_weight")
        table.append((r["name"], str(r["shape"]), r["dtype"], r["kind"], r["codec"], f"{r['bits_per_weight']:.3f}",
                      "" if limit is None else f"{limit:.3f}", f"{r['vs_fp32']:.1f}x",
                      _rule_text(r["rule"]) if "rule" in r else ""))
    widths = [max(len(str(r[i])) for r in table) for i in range(len(head))]
    for r in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    ratio = tot["fp32_bits"] / 8 / size
    than = f"{ratio:.2f}x larger" if ratio >= 1 else f"{1 / ratio:.2f}x smaller: headers dominate tiny files"
    print(f"\n{tot['weights']:,} elements, {size:,} bytes on disk = {8 * size / max(tot['weights'], 1):.3f} "
          f"bits/element; fp32 would be {tot['fp32_bits'] // 8:,} bytes ({than})")
    if tot["permuted_weights"] and tot["limit_bits"] is not None:
        print(f"permuted: information limit {tot['limit_bits'] / tot['permuted_weights']:.3f} bits/weight")
    if meta:
        print("metadata: " + json.dumps(meta, default=_json_default, sort_keys=True))
    return 0


def _consolidate(args) -> int:
    from .dcp import consolidate_command
    return consolidate_command(args)


def _verify(args) -> int:
    from .reader import check
    with _open(args.path) as f:
        tensors, weights, permuted = check(f)
    print(f"OK {args.path}: {tensors} tensors ({permuted} permuted), {weights:,} elements, every digest matches")
    return 0


def _diff_tensor(fa, fb, name) -> str | None:
    """None when ``name`` decodes to the same bits in both files, else what differs."""
    ea, eb = fa.entry(name), fb.entry(name)
    if (ea["dtype"], list(ea["shape"])) != (eb["dtype"], list(eb["shape"])):
        return f"{ea['dtype']} {list(ea['shape'])} vs {eb['dtype']} {list(eb['shape'])}"
    notes = []
    if ea.get("init") != eb.get("init"):
        notes.append("different rules")
    codec_a, codec_b = (e["codec"]["name"] if e["kind"] == "permuted" else f"raw/{e['encoding']}" for e in (ea, eb))
    if codec_a != codec_b:
        notes.append(f"codec {codec_a} vs {codec_b}")
    a, b = fa.get_numpy(name), fb.get_numpy(name)
    rows = a.reshape(a.shape[0], -1) if a.ndim else a.reshape(1, 1)
    other = b.reshape(rows.shape)
    differing = sum(rows[i].tobytes() != other[i].tobytes() for i in range(rows.shape[0]))
    if not differing:
        return f"equal ({', '.join(notes)})" if notes else None
    unit = "rows" if a.ndim > 1 else "elements"
    return f"{differing} of {rows.shape[0]} {unit} differ" + (f" ({', '.join(notes)})" if notes else "")


def _diff(args) -> int:
    with _open(args.a) as fa, _open(args.b) as fb:
        names_a, names_b = list(fa.keys()), set(fb.keys())
        same = set(names_a) == names_b
        for name in names_a:
            if name not in names_b:
                print(f"{name}: only in {args.a}")
                continue
            what = _diff_tensor(fa, fb, name)
            if what is not None and not what.startswith("equal"):
                same = False
            print(f"{name}: {what or 'equal'}")
        for name in sorted(names_b - set(names_a)):
            print(f"{name}: only in {args.b}")
    print("same tensors" if same else "the files differ")
    return 0 if same else 1


def _export(args) -> int:
    from safetensors.torch import load_file
    from . import api
    state = load_file(args.checkpoint)
    with open(args.rules) as fh:
        rules = json.load(fh)  # full or short rules: api.export takes both (rulespec.py)
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
    meta = {"permcodec_metadata": json.dumps(api.read_header(args.path).get("metadata", {}), default=_json_default)}
    save_file(out, args.output, metadata=meta)
    print(f"wrote {args.output}: {os.path.getsize(args.output):,} bytes")
    return 0


CODECS = ("auto", "packed", "uniform", "model", "plain")
SAVED = "a .perm file, or a sharded save (its .index.json, or the path it was saved to)"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="permcodec", description="Inspect, verify, compare and convert permcodec files.")
    p.add_argument("--version", action="version", version=f"permcodec {__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    s = sub.add_parser("info", help="per-tensor shapes, codecs, bits per weight, rules and metadata")
    s.add_argument("path", help=SAVED)
    s.add_argument("--json", action="store_true", help="machine-readable output (numbers as numbers)")
    s.add_argument("--fast", action="store_true", help="skip the information limit (no value regeneration)")
    s.set_defaults(fn=_info)
    s = sub.add_parser("verify", help="decode everything and check every digest")
    s.add_argument("path", help=SAVED)
    s.set_defaults(fn=_verify)
    s = sub.add_parser("diff", help="compare two saves tensor by tensor (exit 0 when they decode the same)")
    s.add_argument("a", help="the first save: " + SAVED)
    s.add_argument("b", help="the second save")
    s.set_defaults(fn=_diff)
    s = sub.add_parser("export", help="a .safetensors checkpoint + rules JSON -> .perm")
    s.add_argument("checkpoint", help="the .safetensors file holding the trained weights")
    s.add_argument("output", help="the .perm file to write")
    s.add_argument("--rules", required=True,
                   help='JSON map {tensor name: rule}: a full rule (Rule.to_dict()) or a short one, '
                        'e.g. {"0.weight": {"rule": "he_uniform", "seed": 0, "prune": 0.5}}')
    s.add_argument("--codec", default="auto", choices=CODECS, help="codec of the permuted tensors (default: auto)")
    s.set_defaults(fn=_export)
    s = sub.add_parser("consolidate", help="a torch.distributed.checkpoint folder (PermcodecWriter) -> one .perm")
    s.add_argument("path", help="the DCP checkpoint folder written with permcodec.dcp.PermcodecWriter")
    s.add_argument("output", help="the .perm file (or sharded save) to write")
    s.add_argument("--prefix", default="", help="keep only tensors under this prefix, stripped (e.g. 'model.')")
    s.add_argument("--codec", default="auto", choices=CODECS, help="codec of the permuted tensors (default: auto)")
    s.add_argument("--max-shard-size", default=None, help="write hub-style shards past this size (e.g. 2GB)")
    s.set_defaults(fn=_consolidate)
    s = sub.add_parser("to-safetensors", help="rebuild the weights and write them as .safetensors")
    s.add_argument("path", help=SAVED)
    s.add_argument("output", help="the .safetensors file to write")
    s.set_defaults(fn=_to_safetensors)
    return p


def _quiet_closed_pipe() -> int:
    """``permcodec info x | head``: stop writing without a traceback (and none at exit either)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 0


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.cmd is None:
        p.print_help()
        return 0
    try:
        code = args.fn(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _quiet_closed_pipe()
    except FormatError as e:
        print(f"permcodec: {getattr(args, 'path', '')}: {e}", file=sys.stderr)
        return 1
    except (PermcodecError, OSError, ValueError) as e:
        print(f"permcodec: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
