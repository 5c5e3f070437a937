"""The torch adapter: save, load, load_into, open, read_header, export, verify.

Thin on purpose: it turns tensors into numpy arrays and back, handles files (atomic writes,
mmap) and names (tied weights, wrapper prefixes). Bytes are decided in tensors.py and format.py.
"""
from __future__ import annotations

import errno
import mmap
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from . import __version__, dtypes, format as fmt, tensors as T
from .errors import IntegrityError, PermcodecError, RuleError
from .init import ATTR, canonical_name, rule_of, rules_of as _model_rules
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
        raise IsADirectoryError(errno.EISDIR, "is a folder: give a file path to save to", path)
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


def save(obj, path, *, rules: dict | None = None, codec: str = "auto", fast: bool = False,
         metadata: dict | None = None, zstd_level: int = 3, on_mismatch: str = "raise",
         max_shard_size=None) -> int:
    """Write ``obj`` (a model or a state dict) to ``path`` atomically; returns the file size.

    Tensors with a rule (recorded on the model by permcodec.init, or passed as ``rules``) are
    stored as permutations of their seeded initial values; everything else raw and compressed.
    ``codec``: "auto" (smallest), or a codec name; ``fast=True`` picks the fixed-layout codec.
    ``on_mismatch``: "raise" (default) or "raw" to store a non-rearranged tensor raw.
    ``max_shard_size`` (bytes, or "2GB"): split into shards + ``path.index.json`` (see shards.py).
    One tensor's encoding at a time is held in memory.
    """
    if max_shard_size is not None:
        from . import shards
        return shards.save(obj, path, max_shard_size, rules=rules, codec=codec, fast=fast, metadata=metadata,
                           zstd_level=zstd_level, on_mismatch=on_mismatch)
    tensors, aliases, rules, codec, meta = _prepare(obj, rules, codec, fast, metadata, on_mismatch, zstd_level)

    def write(f):
        w = fmt.Writer(f)
        entries = []
        for name, t in tensors.items():
            entry, payload = _encode_tensor(name, t, rules.get(name), codec, on_mismatch, zstd_level)
            entry["section"] = w.add_section(payload)
            entries.append(entry)
            del payload
        for name, target in aliases.items():
            t = next(e for e in entries if e["name"] == target)
            entries.append({"name": name, "shape": t["shape"], "dtype": t["dtype"], "kind": "alias",
                            "target": target, "digest": t["digest"]})
        return w.finish({"format": "permcodec", "created_by": f"permcodec {__version__}",
                         "metadata": meta, "tensors": entries})

    size = _atomic_write(path, write)
    from .shards import retire_other_layout
    retire_other_layout(path, [])
    return size


def _prepare(obj, rules, codec, fast, metadata, on_mismatch, zstd_level):
    """(tensors, aliases, rules by canonical name, codec, metadata) for save, arguments checked."""
    tensors, aliases, found = _collect(obj)
    rules = {**found, **{canonical_name(k): v for k, v in _check_rules(rules).items()}}
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


def _check_rules(rules) -> dict:
    """``rules`` as {name: Rule}: a dict of Rule objects or their dicts."""
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
            v = Rule.from_dict(v)
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
        raise RuleError("export needs rules: {tensor name: Rule}; see permcodec.init.rules_of(model)")
    return save(state_dict, path, rules=rules, **kw)


# ---- reading ---------------------------------------------------------------------------------
class File:
    """A permcodec file opened for lazy reading (mmap): one tensor is decoded at a time.

        with permcodec.open("model.perm") as f:
            w = f.get_tensor("fc1.weight")
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        with open(self.path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                raise fmt.FormatError(f"{self.path} is empty: not a permcodec file")
            self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self.container = fmt.Container(self._mm)
        except BaseException:
            self.close()
            raise
        self.header = self.container.header
        self.entries = {t["name"]: t for t in self.header["tensors"]}

    @property
    def metadata(self) -> dict:
        return self.header.get("metadata", {})

    def keys(self):
        return list(self.entries)

    def __contains__(self, name):
        return name in self.entries

    def entry(self, name) -> dict:
        try:
            e = self.entries[name]
        except KeyError:
            raise PermcodecError(f"no tensor {name!r} in {self.path}") from None
        return self.entries[e["target"]] if e["kind"] == "alias" else e

    def get_numpy(self, name, check_digest: bool = False) -> np.ndarray:
        e = self.entry(name)
        arr = T.decode(e, self.container.section(e["section"]))
        if check_digest and T.digest(arr) != e["digest"]:
            raise IntegrityError(f"tensor {name!r} does not rebuild to its recorded digest "
                                 f"(decoder or generator mismatch): report this with the file")
        return arr

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

    def close(self):
        mm, self._mm = getattr(self, "_mm", None), None
        self.container = None
        if mm is not None:
            try:
                mm.close()
            except BufferError:  # a view is still alive; the map closes when it is collected
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def rules_in(f) -> dict[str, Rule]:
    """{name: Rule} of the permuted tensors (aliases included) of an open File or ShardedFile, from
    the headers alone."""
    return {n: Rule.from_dict(f.entry(n)["init"]) for n in f.keys() if f.entry(n)["kind"] == "permuted"}


def _tag(t: torch.Tensor, entry: dict) -> torch.Tensor:
    """Record a permuted tensor's rule on it (as permcodec.init does), so that saving it keeps it."""
    if entry["kind"] == "permuted":
        t._permcodec_rule = Rule.from_dict(entry["init"])
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
    """A File, or a shards.ShardedFile when ``path`` is a shard index (or a model saved in shards)."""
    from . import shards
    return shards.ShardedFile(path) if shards.is_index(path) else File(path)


def read_header(path) -> dict:
    """The validated header (tensors, metadata, codecs, sections) without decoding any payload."""
    from . import shards
    if shards.is_index(path):
        return shards.read_header(path)
    with File(path) as f:
        h = dict(f.header)
        h["version"] = [f.container.major, f.container.minor]
        return h


def load(path, device="cpu", *, check_digests: bool = False, rules: bool = False):
    """Every tensor of ``path``, bit for bit, on ``device``; tied names share one tensor. Permuted
    tensors carry their rule, so ``save(load(p), q)`` stores them as permutations again; with
    ``rules=True`` returns (state, {name: Rule})."""
    out = {}
    check_device(device)
    with open_file(path) as f:
        for name, e in f.entries.items():
            if e["kind"] != "alias":
                out[name] = f.get_tensor(name, device, check_digests)
        for name, e in f.entries.items():
            if e["kind"] == "alias":
                out[name] = out[e["target"]]
        found = f.rules() if rules else None
    return (out, found) if rules else out


def rules_of(source) -> dict[str, Rule]:
    """{tensor name: Rule}: of a file or sharded model at a path (header only), or recorded on a
    model (permcodec.init.rules_of)."""
    if isinstance(source, torch.nn.Module):
        return _model_rules(source)
    with open_file(source) as f:
        return f.rules()


def load_into(model: torch.nn.Module, path, *, strict: bool = True) -> torch.nn.Module:
    """Copy the file's tensors into ``model`` (prefixes like ``_orig_mod.`` are matched) and record
    the file's rules on it, as permcodec.init does, so that ``save(model)`` keeps them."""
    state, file_rules = load(path, rules=True)
    own = model.state_dict(keep_vars=True)
    by_canon = {canonical_name(k): k for k in own}
    missing = sorted(set(by_canon) - set(state))
    unexpected = sorted(set(state) - set(by_canon))
    if strict and (missing or unexpected):
        raise PermcodecError(f"{path}: state does not match the model: missing {missing[:10]}, "
                             f"unexpected {unexpected[:10]} (pass strict=False to load the overlap)")
    with torch.no_grad():
        for canon, t in state.items():
            if canon in by_canon:
                target = own[by_canon[canon]]
                if target.shape != t.shape or target.dtype != t.dtype:
                    raise PermcodecError(f"{canon!r}: file has {t.dtype} {list(t.shape)}, model has "
                                         f"{target.dtype} {list(target.shape)}")
                target.copy_(t)
                if canon in file_rules:
                    target._permcodec_rule = file_rules[canon]
    from .init import _unwrap
    inner = _unwrap(model)
    recorded = {k: r for k, r in (getattr(inner, ATTR, None) or {}).items() if k not in state or k in file_rules}
    recorded.update({k: r for k, r in file_rules.items() if k in by_canon})
    object.__setattr__(inner, ATTR, recorded)
    return model


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
        rep = Report(path=os.fspath(path), file_bytes=getattr(f, "file_bytes", None) or os.path.getsize(path))
        decoded = {}
        for name, e in f.entries.items():
            arr = f.get_numpy(name, check_digest=True)
            rep.tensors += 1
            rep.weights += arr.size if e["kind"] != "alias" else 0
            rep.permuted += e["kind"] == "permuted"
            if model is not None:
                decoded[name] = to_torch(arr, f.entry(name)["dtype"])
    if model is not None:
        tensors, aliases, _ = _collect(model)
        names = set(tensors) | set(aliases)
        if names != set(decoded):
            raise IntegrityError(f"model and file hold different tensors: only in model "
                                 f"{sorted(names - set(decoded))[:10]}, only in file {sorted(set(decoded) - names)[:10]}")
        for name, t in {**tensors, **{a: tensors[b] for a, b in aliases.items()}}.items():
            d = decoded[name]
            if t.dtype != d.dtype or t.shape != d.shape or not torch.equal(_bits(t), _bits(d)):
                raise IntegrityError(f"{name!r} differs between the model and {path}")
        rep.model_checked = True
    return rep
