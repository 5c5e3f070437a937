"""The torch adapter: save, load, load_into, open, read_header, export, verify.

Thin on purpose: it turns tensors into numpy arrays and back, handles files (atomic writes,
mmap) and names (tied weights, wrapper prefixes). Bytes are decided in tensors.py and format.py;
reading without torch in reader.py; folders in paths.py; load_into in into.py; short rules in
rulespec.py; the safetensors-style verbs in safe.py.
"""
from __future__ import annotations

import errno
import io
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from . import __version__, dtypes, format as fmt, paths, progress as _progress, reader, rulespec, tensors as T
from .errors import IntegrityError, NotAPermutationError, PermcodecError, RuleError
from .init import canonical_name, remember, rule_of, rules_of as _model_rules
from .rules import Rule

TORCH_NAMES = {
    torch.float64: "float64", torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
    torch.complex128: "complex128", torch.complex64: "complex64",
    torch.int64: "int64", torch.int32: "int32", torch.int16: "int16", torch.int8: "int8", torch.uint8: "uint8",
    torch.bool: "bool",
}
for _n in ("float8_e4m3fn", "float8_e5m2", "uint16", "uint32", "uint64"):
    if hasattr(torch, _n):
        TORCH_NAMES[getattr(torch, _n)] = _n
FROM_NAME = {v: k for k, v in TORCH_NAMES.items()}


# ---- tensors <-> numpy ----------------------------------------------------------------------
def tensor_problem(t: torch.Tensor) -> str | None:
    """What keeps ``t`` from being stored bit for bit, with the fix, or None."""
    if t.dtype not in TORCH_NAMES:
        return f"dtype {t.dtype} is not supported: convert the tensor to one of {', '.join(FROM_NAME)}"
    if t.is_nested:
        return "is a nested tensor: store its components (t.unbind()) as separate tensors"
    if t.layout != torch.strided:
        return f"has layout {t.layout}: convert it with .to_dense()"
    if t.device.type == "meta":
        return "is on the meta device and has no values: materialize the model (e.g. to_empty + load) first"
    return None


def to_numpy(t: torch.Tensor) -> tuple[np.ndarray, str]:
    name = TORCH_NAMES.get(t.dtype)
    if name is None:
        raise PermcodecError(f"dtype {t.dtype} is not supported: convert the tensor to one of {', '.join(FROM_NAME)}")
    t = t.detach().cpu().resolve_conj().resolve_neg().contiguous()
    storage = dtypes.storage(name)
    if name in ("bfloat16", "float8_e4m3fn", "float8_e5m2", "uint16", "uint32", "uint64"):
        signed = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[storage.itemsize]
        return t.view(signed).numpy().view(storage), name
    return t.numpy(), name


def to_torch(arr: np.ndarray, dtype_name: str, device=None) -> torch.Tensor:
    storage = dtypes.storage(dtype_name)
    if not (arr.flags.c_contiguous and arr.flags.writeable):
        arr = arr.copy(order="C")
    if dtype_name in ("bfloat16", "float8_e4m3fn", "float8_e5m2", "uint16", "uint32", "uint64"):
        signed = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}[storage.itemsize]
        t = torch.from_numpy(arr.view(signed)).view(FROM_NAME[dtype_name])
    else:
        t = torch.from_numpy(arr)
    return t if device is None else t.to(device)


# ---- what to save ----------------------------------------------------------------------------
def _collect(obj) -> tuple[dict[str, torch.Tensor], dict[str, str], dict[str, Rule]]:
    """(tensors, aliases {name: target}, rules found on the model) from a model or state dict."""
    if isinstance(obj, torch.nn.Module):
        rules = _model_rules(obj)
        state = obj.state_dict(keep_vars=True)
    elif isinstance(obj, dict):
        rules, state = {}, obj
    else:
        raise PermcodecError(f"save() takes a torch.nn.Module or a dict of tensors, not {type(obj).__name__}")
    tensors, aliases, seen = {}, {}, {}
    for raw_name, t in state.items():
        problem = fmt.name_problem(raw_name)
        if problem:
            raise PermcodecError(f"{problem}: name every tensor with a non-empty str")
        if not isinstance(t, torch.Tensor):
            raise PermcodecError(f"state entry {raw_name!r} is a {type(t).__name__}, not a tensor: "
                                 f"put non-tensor data into metadata=")
        problem = tensor_problem(t)
        if problem:
            raise PermcodecError(f"tensor {raw_name!r} {problem}")
        name = canonical_name(raw_name)
        if not name:
            raise PermcodecError(f"tensor {raw_name!r} has no name left after removing wrapper prefixes "
                                 f"(_orig_mod., module.): rename it")
        if name in tensors or name in aliases:
            raise PermcodecError(f"two entries map to the name {name!r} after removing wrapper prefixes")
        if rule_of(t) is not None:  # recorded by permcodec.init or by load (rules survive load -> save)
            rules.setdefault(name, rule_of(t))
        key = None
        if t.numel() and t.device.type != "meta":
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if key is not None and key in seen:
            aliases[name] = seen[key]
        else:
            if key is not None:
                seen[key] = name
            tensors[name] = t
    return tensors, aliases, rules


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (threads may be saving)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_target(path) -> str:
    """The folder a save to ``path`` writes into; OS errors name the user's path, not a temp file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "is a folder: give a file path to save to, or end the path with "
                                              "'/' to save model.perm into the folder", path)
    if not os.path.isdir(folder):
        raise FileNotFoundError(errno.ENOENT, "the folder to save into does not exist: create it first", folder)
    return folder


SELF_CHECK_DECODE_BYTES = 16 << 20  # a save decodes its own file before the rename up to this size


def check_written(tmp: str, path) -> None:
    """Read back a file a save wrote to ``tmp`` (its header, and every tensor if it is small), so
    no save replaces ``path`` with a file the reader refuses."""
    try:
        with File(tmp) as f:
            if sum(T.nbytes(e) for e in f.entries.values() if e["kind"] != "alias") <= SELF_CHECK_DECODE_BYTES:
                for name, e in f.entries.items():
                    if e["kind"] != "alias":
                        f.get_numpy(name, check_digest=True)
    except PermcodecError as e:
        raise type(e)(f"{os.fspath(path)} was not written: the file this save produced does not read back "
                      f"({e}); the previous file is unchanged. Report this with the model") from None


def _atomic_write(path, write, check=None) -> int:
    """Write through ``write(f)`` to a temp file, check it (``check(tmp)``, by default
    check_written), then rename it over ``path``."""
    from .shards import _fsync_dir, remove_stale_temps, temp_file
    path = os.fspath(path)
    folder = check_target(path)
    try:
        fd, tmp = temp_file(folder)
    except OSError as e:
        raise type(e)(e.errno, e.strerror, folder) from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a saved file gets the usual mode
        with os.fdopen(fd, "wb") as f:
            size = write(f)
            f.flush()
            os.fsync(f.fileno())
        (check or (lambda t: check_written(t, path)))(tmp)
        try:
            os.replace(tmp, path)
        except OSError as e:
            raise type(e)(e.errno, e.strerror, path) from None
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(folder)
    remove_stale_temps(folder)  # left by saves killed long ago; never read
    return size


def save(obj, path=None, *, rules: dict | None = None, codec: str = "auto", fast: bool = False,
         metadata: dict | None = None, zstd_level: int = 3, on_mismatch: str = "raise",
         max_shard_size=None, progress: bool | None = None):
    """Write ``obj`` (a model or a state dict) to ``path`` atomically; returns the file size, or
    the file's bytes when ``path`` is None. A path ending in '/' is a folder: ``path/model.perm``.

    Tensors with a rule (recorded on the model by permcodec.init, or passed as ``rules``) are
    stored as permutations of their seeded initial values; everything else raw and compressed.
    ``codec``: "auto" (smallest), or a codec name; ``fast=True`` picks the fixed-layout codec.
    ``on_mismatch``: "raise" (default) or "raw" to store a non-rearranged tensor raw.
    ``max_shard_size`` (bytes, or "2GB"): split into shards + ``path.index.json`` (see shards.py).
    ``progress``: a bar on stderr for saves over a second (None: only on a terminal; progress.py).
    One tensor's encoding at a time is held in memory.
    """
    if path is not None:
        path = paths.save_target(path)
    if max_shard_size is not None:
        if path is None:
            raise PermcodecError("max_shard_size needs a path: shards are files beside it")
        from . import shards
        return shards.save(obj, path, max_shard_size, rules=rules, codec=codec, fast=fast, metadata=metadata,
                           zstd_level=zstd_level, on_mismatch=on_mismatch)
    tensors, aliases, rules, codec, meta = _prepare(obj, rules, codec, fast, metadata, on_mismatch, zstd_level)

    def write(f):
        w = fmt.Writer(f)
        entries = []
        with _progress.bar(sum(t.numel() for t in tensors.values()), "permcodec save", progress) as bar:
            for name, t in tensors.items():
                entry, payload = _encode_tensor(name, t, rules.get(name), codec, on_mismatch, zstd_level)
                entry["section"] = w.add_section(payload)
                entries.append(entry)
                del payload
                bar.update(t.numel())
        for name, target in aliases.items():
            t = next(e for e in entries if e["name"] == target)
            entries.append({"name": name, "shape": t["shape"], "dtype": t["dtype"], "kind": "alias",
                            "target": target, "digest": t["digest"]})
        return w.finish({"format": "permcodec", "created_by": f"permcodec {__version__}",
                         "metadata": meta, "tensors": entries})

    if path is None:
        buf = io.BytesIO()
        write(buf)
        return buf.getvalue()
    size = _atomic_write(path, write)
    from .shards import retire_other_layout
    retire_other_layout(path, [])
    return size


def _prepare(obj, rules, codec, fast, metadata, on_mismatch, zstd_level):
    """(tensors, aliases, rules by canonical name, codec, metadata) for save, arguments checked."""
    tensors, aliases, found = _collect(obj)
    rules = {**found, **{canonical_name(k): v for k, v in _check_rules(rules, tensors).items()}}
    unknown = sorted(set(rules) - set(tensors) - set(aliases))
    if unknown:
        raise RuleError(f"rules name tensors that are not in the model: {', '.join(unknown[:5])}")
    if on_mismatch not in ("raise", "raw"):
        raise PermcodecError(f"on_mismatch must be 'raise' or 'raw', not {on_mismatch!r}")
    if not isinstance(zstd_level, int) or isinstance(zstd_level, bool) or not -7 <= zstd_level <= 22:
        raise PermcodecError(f"zstd_level must be an integer in [-7, 22] (3 is the default), not {zstd_level!r}")
    meta = {} if metadata is None else metadata
    problem = fmt.metadata_problem(meta)
    if problem:
        raise PermcodecError(f"{problem} (metadata must read back exactly as saved)")
    return tensors, aliases, rules, "packed" if fast else codec, meta


def _check_rules(rules, tensors: dict) -> dict:
    """``rules`` as {name: Rule}: Rule objects, their dicts, or short rules (rulespec.py), which
    take the shape of the tensor of that name in ``tensors``."""
    if rules is None:
        return {}
    if not isinstance(rules, dict):
        raise RuleError(f"rules must be a dict {{tensor name: Rule}}, not a {type(rules).__name__} "
                        f"(see permcodec.init.rules_of(model))")
    out = {}
    for k, v in rules.items():
        if fmt.name_problem(k):
            raise RuleError(f"rules: {fmt.name_problem(k)}")
        if isinstance(v, dict):
            t = tensors.get(canonical_name(k))
            v = rulespec.from_dict(v, name=canonical_name(k), shape=None if t is None else t.shape)
        if not isinstance(v, Rule):
            raise RuleError(f"rule for {k!r} is {v!r}: give a permcodec.Rule (e.g. permcodec.rules.make("
                            f"'he_uniform', shape, seed=0, name={k!r})) or its dict")
        out[k] = v
    return out


def _encode_tensor(name, t, rule, codec, on_mismatch, zstd_level) -> tuple[dict, bytes]:
    """(header entry without its section, payload) of one tensor."""
    arr, dt = to_numpy(t)
    entry = {"name": name, "shape": list(arr.shape), "dtype": dt, "digest": T.digest(arr)}
    if rule is not None and dt in dtypes.PERMUTABLE and arr.ndim >= 1 and arr.size:
        try:
            params, payload = T.encode_permuted(arr, rule, dt, name, codec)
            entry.update(kind="permuted", layout="rows", init=rule.to_dict(), codec=params)
            return entry, payload
        except NotAPermutationError as e:
            if on_mismatch == "raise":
                raise NotAPermutationError(f"{e} Saving a LaPerm model between two syncs? Save its synced "
                                           f"weights: with opt.synced_view(): permcodec.save(model, path)") from None
        except PermcodecError:
            if on_mismatch == "raise":
                raise
    elif rule is not None and on_mismatch == "raise":
        raise RuleError(f"{name!r} has a rule but is a {dt} tensor of shape {list(arr.shape)}: "
                        f"only non-empty float tensors can be stored as permutations")
    enc, payload = T.encode_raw(arr, zstd_level)
    entry.update(kind="raw", encoding=enc)
    return entry, payload


def export(state_dict, rules, path, **kw) -> int:
    """Write an ordinary checkpoint as a permcodec file: ``rules`` say which tensors are
    rearrangements of which seeded initial values. A tensor that is not raises
    NotAPermutationError naming it, the row, and how many values differ."""
    if not rules:
        raise RuleError("export needs rules: {tensor name: Rule, its dict, or a short rule like "
                        "{'rule': 'he_uniform', 'seed': 0}}; see permcodec.init.rules_of(model)")
    return save(state_dict, path, rules=rules, **kw)


# ---- reading ---------------------------------------------------------------------------------
class File(reader.File):
    """A permcodec file opened for lazy reading (mmap of a path, or bytes, or a file object): one
    tensor is decoded at a time.

        with permcodec.open("model.perm") as f:
            w = f.get_tensor("fc1.weight")
    """

    def get_tensor(self, name, device="cpu", check_digest: bool = False) -> torch.Tensor:
        """The tensor ``name`` on ``device``, carrying its rule (see rule_of) if it is permuted."""
        e = self.entry(name)
        device = check_device(device)
        t = None
        if device.type != "cpu":
            from . import gpu
            if gpu.supports(e):
                t = gpu.decode(e, self.container.section(e["section"]), device, check_digest=check_digest)
        if t is None:
            t = to_torch(self.get_numpy(name, check_digest), e["dtype"], device)
        return _tag(t, e)

    def rules(self) -> dict[str, Rule]:
        return rules_in(self)


def rules_in(f) -> dict[str, Rule]:
    """{name: Rule} of the permuted tensors (aliases included) of an open File or ShardedFile, from
    the headers alone."""
    return {n: Rule.from_dict(f.entry(n)["init"]) for n in f.keys() if f.entry(n)["kind"] == "permuted"}


def _tag(t: torch.Tensor, entry: dict) -> torch.Tensor:
    """Record a permuted tensor's rule on it (as permcodec.init does), so that saving it keeps it."""
    if entry["kind"] == "permuted":
        remember(t, Rule.from_dict(entry["init"]))
    return t


def check_device(device) -> torch.device:
    """``device`` as a torch.device that this process can allocate on."""
    try:
        dev = torch.device(device)
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError, TypeError, ValueError) as e:
        raise PermcodecError(f"cannot load onto device {device!r} ({str(e).strip() or type(e).__name__}): "
                             f"pick a device this machine has, e.g. 'cpu'") from None
    return dev


def open_file(path):
    """A File, or a shards.ShardedFile when ``path`` is a shard index (or a model saved in shards);
    ``path`` may be a folder holding either (paths.py), bytes or a binary file object."""
    from . import shards
    if reader.in_memory(path):
        return File(path)
    path = paths.load_target(path)
    return shards.ShardedFile(path) if shards.is_index(path) else File(path)


def read_header(path) -> dict:
    """The validated header (tensors, metadata, codecs, sections) without decoding any payload."""
    from . import shards
    if not reader.in_memory(path):
        path = paths.load_target(path)
        if shards.is_index(path):
            return shards.read_header(path)
    with File(path) as f:
        h = dict(f.header)
        h["version"] = [f.container.major, f.container.minor]
        return h


def load(path, device="cpu", *, check_digests: bool = False, rules: bool = False, progress: bool | None = None):
    """Every tensor of ``path`` (a file, a sharded save, a folder, bytes or a binary file object),
    bit for bit, on ``device``; tied names share one tensor. Permuted tensors carry their rule, so
    ``save(load(p), q)`` stores them as permutations again; with ``rules=True`` returns (state,
    {name: Rule}). ``progress``: a bar on stderr for loads over a second (see progress.py)."""
    if _is_chunk_stream(path):
        from .stream import load_stream
        return load_stream(path, device, check_digests=check_digests, rules=rules)
    out = {}
    check_device(device)
    with open_file(path) as f:
        own = {n: e for n, e in f.entries.items() if e["kind"] != "alias"}
        with _progress.bar(sum(math.prod(e["shape"]) for e in own.values()), "permcodec load", progress) as bar:
            for name, e in own.items():
                out[name] = f.get_tensor(name, device, check_digests)
                bar.update(out[name].numel())
        for name, e in f.entries.items():
            if e["kind"] == "alias":
                out[name] = out[e["target"]]
        found = f.rules() if rules else None
    return (out, found) if rules else out


def _is_chunk_stream(source) -> bool:
    """An iterator of byte chunks (e.g. an HTTP response's iter_content), not a path, bytes or file."""
    return hasattr(source, "__next__") and not hasattr(source, "read")


def rules_of(source) -> dict[str, Rule]:
    """{tensor name: Rule}: of a file or sharded model at a path (header only), or recorded on a
    model (permcodec.init.rules_of)."""
    if isinstance(source, torch.nn.Module):
        return _model_rules(source)
    with open_file(source) as f:
        return f.rules()


def load_into(model: torch.nn.Module, path, *, strict: bool = True, cast: bool = False, assign: bool = False):
    """Load ``path`` into ``model`` as ``load_state_dict`` does; see into.py."""
    from .into import load_into as _load_into
    return _load_into(model, path, strict=strict, cast=cast, assign=assign)


@dataclass
class Report:
    """What verify() checked."""
    path: str
    tensors: int = 0
    weights: int = 0
    permuted: int = 0
    file_bytes: int = 0
    model_checked: bool = False
    details: list = field(default_factory=list)


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().cpu().contiguous()
    size = t.element_size()
    if t.dtype == torch.bool:
        return t.view(torch.uint8)
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64, 16: torch.int64}[size])


def verify(path, model=None) -> Report:
    """Decode every tensor and check each against its recorded SHA-256 digest; with ``model``
    (a module or state dict), also check each of its tensors is bit-equal to the file's."""
    with open_file(path) as f:
        rep = Report(path=f.path if reader.in_memory(path) else os.fspath(path),
                     file_bytes=getattr(f, "file_bytes", None) or len(f.container.buf))
        decoded = {}

        def keep(name, arr):
            if model is not None:
                decoded[name] = to_torch(arr, f.entry(name)["dtype"])
        rep.tensors, rep.weights, rep.permuted = reader.check(f, keep)
    if model is not None:
        tensors, aliases, _ = _collect(model)
        names = set(tensors) | set(aliases)
        if names != set(decoded):
            raise IntegrityError(f"model and file hold different tensors: only in model "
                                 f"{sorted(names - set(decoded))[:10]}, "
                                 f"only in file {sorted(set(decoded) - names)[:10]}")
        for name, t in {**tensors, **{a: tensors[b] for a, b in aliases.items()}}.items():
            d = decoded[name]
            if t.dtype != d.dtype or t.shape != d.shape or not torch.equal(_bits(t), _bits(d)):
                raise IntegrityError(f"{name!r} differs between the model and {path}")
        rep.model_checked = True
    return rep
