"""torch.distributed.checkpoint (DCP) storage in permcodec files, and offline consolidation.

    dcp.save(state, storage_writer=PermcodecWriter(path, rules=rules_for(model, "model.")))
    dcp.load(state, storage_reader=PermcodecReader(path))
    consolidate(path, "model.perm", prefix="model.")   # one ordinary permcodec file

A checkpoint directory holds ``rank{r}-{save}.perm``, one ordinary permcodec container per rank
with every piece that rank holds, and ``metadata.perm``: DCP's Metadata (each tensor's size, dtype and
chunks, and which file and entry holds each piece) as msgpack in a permcodec header, so reading a
checkpoint never unpickles anything of ours. A piece of a tensor with a rule that is whole rows
[a, b) is stored as the permutations of those rows: the generator is counter-based, so their
initial values are the rule's elements [a*n, b*n) and regenerate without the other rows. A piece
that starts past row 0 says so in a wrapper codec (``{"name": "dcp-rows", "row_start": a,
"inner": {...}}``): a plain permcodec reader rejects it as an unknown codec instead of decoding
the wrong values. Everything else (other pieces, optimizer moments, DCP's pickled objects) is raw.
Each save names its rank files anew and replaces ``metadata.perm`` last (atomically), then removes
the previous save's rank files: a save that fails midway leaves the previous checkpoint whole.
"""
from __future__ import annotations

import dataclasses
import io
import math
import os
import re
import uuid

import numpy as np
import torch
from torch.distributed.checkpoint.metadata import (BytesStorageMetadata, ChunkStorageMetadata, Metadata,
                                                   MetadataIndex, StorageMeta, TensorProperties,
                                                   TensorStorageMetadata)
from torch.distributed.checkpoint.planner import LoadItemType, WriteItemType
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult
from torch.futures import Future

from . import __version__, api, format as fmt, perm, tensors as T
from .errors import FormatError, IntegrityError, PermcodecError, RuleError
from .init import canonical_name, rules_of
from .rules import Rule
from .values import generate

METADATA = "metadata.perm"
SLICE_CODEC = "dcp-rows"
_RANK_FILE = re.compile(r"rank\d{1,6}-[0-9a-f]{12}\.perm")
_MAX_ROW = 1 << 48


def rank_files(path) -> list[str]:
    """The rank files in checkpoint directory ``path``, by rank (what the last save wrote, once it finished)."""
    names = [n for n in os.listdir(path) if _RANK_FILE.fullmatch(n)]
    return sorted(names, key=lambda n: int(n[4:n.index("-")]))


def rules_for(model: torch.nn.Module, prefix: str = "") -> dict[str, Rule]:
    """The model's rules keyed as DCP names them: ``prefix`` + parameter name (e.g. "model.")."""
    return {prefix + name: rule for name, rule in rules_of(model).items()}


@dataclasses.dataclass(frozen=True)
class _RowsFrom(Rule):
    """A rule whose values start at element ``start``: rows [a, b) of a tensor, a * n = start."""
    start: int = 0

    def values(self, shape, dtype: str = "float32") -> np.ndarray:
        return generate(self, math.prod(shape), dtype, self.start).reshape(shape)


def _header(metadata: dict, entries: list) -> dict:
    return {"format": "permcodec", "created_by": f"permcodec {__version__}", "metadata": metadata,
            "tensors": entries}


# ---- writing ---------------------------------------------------------------------------------
def _row_start(item) -> int | None:
    """``a`` when the piece of ``item`` is whole weight vectors (rows [a, b)), else None."""
    size, chunk = list(item.tensor_data.size), item.tensor_data.chunk
    offsets, sizes = list(chunk.offsets), list(chunk.sizes)
    if offsets == [0] * len(size) and sizes == size:
        return 0
    if len(size) < 2 or offsets[1:] != [0] * (len(size) - 1) or sizes[1:] != size[1:]:
        return None
    return offsets[0]


def _piece_name(index: MetadataIndex) -> str:
    if index.offset is None or not any(index.offset):
        return index.fqn
    return f"{index.fqn}@{','.join(map(str, index.offset))}"


def _encode_item(item, data, rule, codec, zstd_level) -> tuple[dict, bytes]:
    """(header entry without its section, payload) of one DCP write item."""
    name = _piece_name(item.index)
    if item.type == WriteItemType.BYTE_IO:
        t = torch.from_numpy(np.frombuffer(data.getvalue(), np.uint8).copy())
        return api._encode_tensor(name, t, None, codec, "raise", zstd_level)
    t = data.detach().cpu()
    start = _row_start(item)
    if rule is None or start is None or t.numel() == 0:
        return api._encode_tensor(name, t, None, codec, "raise", zstd_level)
    n = perm.as_rows(list(item.tensor_data.size))[1]
    entry, payload = api._encode_tensor(name, t, _RowsFrom(**_fields(rule), start=start * n), codec, "raise",
                                        zstd_level)
    if entry["kind"] == "permuted" and start:
        entry["codec"] = {"name": SLICE_CODEC, "row_start": start, "inner": entry["codec"]}
    return entry, payload


def _fields(rule: Rule) -> dict:
    return {f.name: getattr(rule, f.name) for f in dataclasses.fields(Rule)}


class PermcodecWriter(StorageWriter):
    """DCP StorageWriter: each rank writes ``rank{r}-{save}.perm``; the coordinator ``metadata.perm``.

    ``rules``: {DCP name: Rule} of the tensors stored as permutations (see :func:`rules_for`);
    a piece of such a tensor that is not a rearrangement raises NotAPermutationError (sync
    LaPerm first). ``codec``/``zstd_level`` as in permcodec.save. An existing checkpoint in
    ``path`` is replaced only with ``overwrite=True``.
    """

    def __init__(self, path, *, rules: dict | None = None, codec: str = "auto", zstd_level: int = 3,
                 overwrite: bool = False):
        super().__init__()
        self.path = os.fspath(path)
        self.rules = {canonical_name(k): (Rule.from_dict(v) if isinstance(v, dict) else v)
                      for k, v in (rules or {}).items()}
        self.codec, self.zstd_level, self.overwrite = codec, zstd_level, overwrite
        self.is_coordinator = False

    def reset(self, checkpoint_id=None) -> None:
        if checkpoint_id:
            self.path = os.fspath(checkpoint_id)

    def set_up_storage_writer(self, is_coordinator: bool, *args, **kwargs) -> None:
        self.is_coordinator = is_coordinator

    def prepare_local_plan(self, plan):
        os.makedirs(self.path, exist_ok=True)
        if not self.overwrite and os.path.exists(os.path.join(self.path, METADATA)):
            raise PermcodecError(f"{self.path} already holds a checkpoint: pass overwrite=True to replace it, "
                                 f"or save into another directory")
        return plan

    def prepare_global_plan(self, plans):
        names = {canonical_name(item.index.fqn) for p in plans for item in p.items}
        unknown = sorted(set(self.rules) - names)
        if unknown:
            raise RuleError(f"rules name tensors that are not in the state dict: {', '.join(unknown[:5])} (DCP names "
                            f"a tensor by its state-dict key, e.g. 'model.' + the parameter's name: use "
                            f"rules_for(model, prefix='model.'))")
        save = uuid.uuid4().hex[:12]
        return [dataclasses.replace(p, storage_data=f"rank{i}-{save}.perm") for i, p in enumerate(plans)]

    def write_data(self, plan, planner) -> Future:
        fname, results = plan.storage_data, []

        def write(f):
            w = fmt.Writer(f)
            entries, names = [], set()
            for item in plan.items:
                rule = self.rules.get(canonical_name(item.index.fqn))
                entry, payload = _encode_item(item, planner.resolve_data(item), rule, self.codec,
                                              self.zstd_level)
                if entry["name"] in names:
                    raise PermcodecError(f"two pieces are both named {entry['name']!r} (a state-dict key with '@'?): "
                                         f"rename the key")
                names.add(entry["name"])
                entry["section"] = w.add_section(payload)
                entries.append(entry)
                results.append(WriteResult(index=item.index, size_in_bytes=len(payload),
                                           storage_data=(fname, entry["name"])))
                del payload
            return w.finish(_header({}, entries))

        target = os.path.join(self.path, fname)
        api._atomic_write(target, write, check=lambda tmp: _read_back(tmp, target))
        fut: Future = Future()
        fut.set_result(results)
        return fut

    def finish(self, metadata: Metadata, results) -> None:
        where = {wr.index: wr.storage_data for rank_results in results for wr in rank_results}
        body = _encode_metadata(metadata, where)
        api._atomic_write(os.path.join(self.path, METADATA), lambda f: fmt.Writer(f).finish(_header({"dcp": body}, [])))
        used = {fname for fname, _ in where.values()}
        for name in rank_files(self.path):  # the previous save's, no longer referenced
            if name not in used:
                os.unlink(os.path.join(self.path, name))

    def storage_meta(self) -> StorageMeta:
        return StorageMeta(checkpoint_id=self.path)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id) -> bool:
        return isinstance(checkpoint_id, (str, os.PathLike))


# ---- DCP metadata <-> msgpack ------------------------------------------------------------------
def _encode_metadata(md: Metadata, where: dict) -> dict:
    tensors, blobs = {}, []
    for fqn, m in md.state_dict_metadata.items():
        if isinstance(m, BytesStorageMetadata):
            blobs.append(fqn)
            continue
        dt = api.TORCH_NAMES.get(m.properties.dtype)
        if dt is None:
            raise PermcodecError(f"{fqn!r}: dtype {m.properties.dtype} is not supported: convert it to one of "
                                 f"{', '.join(api.FROM_NAME)}")
        tensors[fqn] = {"dtype": dt, "requires_grad": bool(m.properties.requires_grad), "size": list(m.size),
                        "chunks": [[list(c.offsets), list(c.sizes)] for c in m.chunks]}
    planner = md.planner_data
    if planner is not None:
        if not isinstance(planner, dict) or not all(isinstance(p, tuple) and all(isinstance(k, (str, int)) for k in p)
                                                    for p in planner.values()):
            raise PermcodecError("PermcodecWriter stores the default planner's data only ({name: key path}); "
                                 "use DefaultSavePlanner or FileSystemWriter")
        planner = {k: list(v) for k, v in planner.items()}
    pieces = [[i.fqn, None if i.offset is None else list(i.offset), f, n] for i, (f, n) in where.items()]
    return {"version": md.version, "tensors": tensors, "bytes": blobs, "planner_data": planner, "pieces": pieces}


def _decode_metadata(body) -> tuple[Metadata, dict]:
    """(DCP Metadata, {MetadataIndex: (file, entry name)}) from :func:`_encode_metadata`'s map."""
    try:
        sd = {fqn: BytesStorageMetadata() for fqn in body["bytes"]}
        for fqn, t in body["tensors"].items():
            sd[fqn] = TensorStorageMetadata(
                properties=TensorProperties(dtype=api.FROM_NAME[t["dtype"]], requires_grad=bool(t["requires_grad"])),
                size=torch.Size(t["size"]),
                chunks=[ChunkStorageMetadata(torch.Size(o), torch.Size(s)) for o, s in t["chunks"]])
        where = {}
        for fqn, offset, fname, name in body["pieces"]:
            if not isinstance(fname, str) or not _RANK_FILE.fullmatch(fname) or not isinstance(name, str):
                raise FormatError(f"piece of {fqn!r} points at {fname!r}, not a rank file of the checkpoint")
            where[MetadataIndex(fqn, None if offset is None else torch.Size(offset))] = (fname, name)
        planner = body["planner_data"]
        planner = None if planner is None else {k: tuple(v) for k, v in planner.items()}
        return Metadata(state_dict_metadata=sd, planner_data=planner, storage_data=where,
                        version=body["version"]), where
    except PermcodecError:
        raise
    except Exception as e:
        raise FormatError(f"DCP metadata is malformed ({e!r}): the checkpoint is corrupt or was not written "
                          f"by PermcodecWriter") from None


def read_metadata(path) -> Metadata:
    """The DCP Metadata of checkpoint directory ``path``."""
    file = os.path.join(os.fspath(path), METADATA)
    if not os.path.exists(file):
        raise PermcodecError(f"{path} holds no permcodec DCP checkpoint ({METADATA} is missing): was it saved "
                             f"with PermcodecWriter, and did the save finish?")
    with api.File(file) as f:
        return _decode_metadata(f.metadata.get("dcp"))[0]


# ---- reading ---------------------------------------------------------------------------------
def _decode_piece(f: api.File, name: str) -> np.ndarray:
    """One piece of a rank file, checked against its recorded digest."""
    e = f.entry(name)
    payload = f.container.section(e["section"])
    codec = e.get("codec") or {}
    if e["kind"] == "permuted" and codec.get("name") == SLICE_CODEC:
        start, inner = codec.get("row_start"), codec.get("inner")
        if not isinstance(start, int) or isinstance(start, bool) or not 0 < start < _MAX_ROW \
                or not isinstance(inner, dict) or not isinstance(inner.get("name"), str) or len(codec) != 3:
            raise FormatError(f"piece {name!r}: malformed {SLICE_CODEC} codec {codec!r}")
        rows, n = perm.as_rows(e["shape"])
        rule = _RowsFrom(**_fields(Rule.from_dict(e["init"])), start=start * n)
        arr = T.decode_permuted(dict(e, codec=inner), payload, rule.values((rows, n), e["dtype"]))
    else:
        arr = T.decode(e, payload)
    if T.digest(arr) != e["digest"]:
        raise IntegrityError(f"piece {name!r} of {f.path} does not rebuild to its recorded digest: the file is "
                             f"corrupt, or was not written by PermcodecWriter")
    return arr


def _read_back(tmp: str, path: str) -> None:
    """api.check_written for a rank file, whose pieces past row 0 only this module decodes: the
    header always, every piece when the file declares at most api.SELF_CHECK_DECODE_BYTES."""
    try:
        with api.File(tmp) as f:
            if sum(T.nbytes(e) for e in f.entries.values()) <= api.SELF_CHECK_DECODE_BYTES:
                for name in f.entries:
                    _decode_piece(f, name)
    except PermcodecError as e:
        raise type(e)(f"{path} was not written: the file this save produced does not read back ({e}); "
                      f"report this with the model") from None


class _Pieces:
    """Open rank files and the last decoded piece (a piece read by several requests decodes once)."""

    def __init__(self, folder):
        self.folder, self.files, self.last = folder, {}, (None, None)

    def entry(self, fname: str, name: str) -> dict:
        """A piece's header entry (shape, dtype, kind), read without decoding anything."""
        f = self.files.get(fname)
        if f is None:
            f = self.files[fname] = api.File(os.path.join(self.folder, fname))
        return f.entry(name)

    def get(self, fname: str, name: str) -> tuple[np.ndarray, str]:
        if self.last[0] != (fname, name):
            dtype = self.entry(fname, name)["dtype"]
            self.last = ((fname, name), (_decode_piece(self.files[fname], name), dtype))
        return self.last[1]

    def close(self):
        self.last = (None, None)
        for f in self.files.values():
            f.close()


class PermcodecReader(StorageReader):
    """DCP StorageReader of a directory written by :class:`PermcodecWriter` (any number of ranks)."""

    def __init__(self, path):
        super().__init__()
        self.path = os.fspath(path)
        self.where: dict = {}

    def reset(self, checkpoint_id=None) -> None:
        if checkpoint_id:
            self.path = os.fspath(checkpoint_id)
        self.where = {}

    def read_metadata(self, *args, **kwargs) -> Metadata:
        md = read_metadata(self.path)
        md.storage_meta = StorageMeta(checkpoint_id=self.path)
        return md

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args, **kwargs) -> None:
        self.where = metadata.storage_data

    def prepare_local_plan(self, plan):
        return plan

    def prepare_global_plan(self, plans):
        return plans

    def read_data(self, plan, planner) -> Future:
        from torch.distributed._shard._utils import narrow_tensor_by_index
        pieces = _Pieces(self.path)
        try:
            missing = [r.storage_index.fqn for r in plan.items if r.storage_index not in self.where]
            if missing:
                raise FormatError(f"the checkpoint's metadata places no piece for {missing[:5]}: corrupt metadata")
            for req in sorted(plan.items, key=lambda r: self.where[r.storage_index]):
                arr, dtype = pieces.get(*self.where[req.storage_index])
                if req.type == LoadItemType.BYTE_IO:
                    planner.load_bytes(req, io.BytesIO(arr.tobytes()))
                    continue
                piece = narrow_tensor_by_index(api.to_torch(arr, dtype), req.storage_offsets, req.lengths)
                target = planner.resolve_tensor(req).detach()
                if target.size() != piece.size():
                    raise FormatError(f"{req.storage_index.fqn!r}: stored piece gives {list(piece.size())}, "
                                      f"the request wants {list(target.size())}: corrupt metadata")
                target.copy_(piece)
                planner.commit_tensor(req, target)
        finally:
            pieces.close()
        fut: Future = Future()
        fut.set_result(None)
        return fut

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id) -> bool:
        return isinstance(checkpoint_id, (str, os.PathLike))


# ---- offline consolidation ---------------------------------------------------------------------
def _place(fqn: str, m, index: MetadataIndex, entry: dict) -> tuple[tuple, dict]:
    """(the slices of the full tensor a piece fills, its entry), after checking that it fits."""
    offsets = [0] * len(m.size) if index.offset is None else list(index.offset)
    shape = entry["shape"]
    if entry["dtype"] != api.TORCH_NAMES.get(m.properties.dtype) or len(offsets) != len(m.size) or len(shape) != len(
            m.size) or any(o < 0 or o + s > d for o, s, d in zip(offsets, shape, m.size)):
        raise FormatError(f"piece {entry['name']!r} ({entry['dtype']} {shape} at {offsets}) does not fit {fqn!r} "
                          f"({m.properties.dtype} {list(m.size)}): corrupt metadata")
    return tuple(slice(o, o + s) for o, s in zip(offsets, shape)), entry


def _overlap(a: tuple, b: tuple) -> bool:
    return all(max(x.start, y.start) < min(x.stop, y.stop) for x, y in zip(a, b))


def consolidated_state(path, prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, Rule]]:
    """(tensors, rules) of every tensor under ``prefix`` (removed from the names), assembled from
    its pieces. DCP's pickled objects (BytesStorageMetadata) are not tensors and are left out."""
    folder = os.fspath(path)
    md = read_metadata(folder)
    by_fqn: dict[str, list] = {}
    for index, loc in md.storage_data.items():
        by_fqn.setdefault(index.fqn, []).append((index, loc))
    state, rules, pieces = {}, {}, _Pieces(folder)
    try:
        for fqn, m in md.state_dict_metadata.items():
            if isinstance(m, BytesStorageMetadata) or not fqn.startswith(prefix):
                continue
            placed = [(_place(fqn, m, index, pieces.entry(fname, name)), fname, name)
                      for index, (fname, name) in by_fqn.get(fqn, [])]
            covered = sum(math.prod(e["shape"]) for (_, e), _, _ in placed)
            boxes = [where for (where, _), _, _ in placed]
            if covered != math.prod(m.size) or any(_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[:i]):
                # checked before allocating: disjoint pieces whose files hold every element tile the tensor
                raise FormatError(f"the pieces of {fqn!r} hold {covered} elements for its {math.prod(m.size)}, or "
                                  f"overlap: a rank file or the metadata is incomplete or corrupt")
            full = torch.empty(m.size, dtype=m.properties.dtype)
            for (where, entry), fname, name in placed:
                full[where] = api.to_torch(pieces.get(fname, name)[0], entry["dtype"])
                if entry["kind"] == "permuted":
                    rules[fqn[len(prefix):]] = Rule.from_dict(entry["init"])
            state[fqn[len(prefix):]] = full
    finally:
        pieces.close()
    return state, rules


def consolidate(path, out_path, *, prefix: str = "", **save_kw) -> int:
    """Turn DCP directory ``path`` into one ordinary permcodec file ``out_path`` (returns its size).

    The file is the one ``permcodec.save`` writes for the same tensors and rules: bit for bit.
    ``prefix`` ("model.") keeps only the tensors under it, named as the model names them;
    ``save_kw`` go to permcodec.save (codec, metadata, max_shard_size for a hub-style save...).
    """
    state, rules = consolidated_state(path, prefix)
    return api.save(state, out_path, rules=rules, **save_kw)


def consolidate_command(args) -> int:
    """``permcodec consolidate PATH OUTPUT [--prefix P] [--codec C] [--max-shard-size S]`` (cli.py wires it)."""
    size = consolidate(args.path, args.output, prefix=args.prefix, codec=args.codec,
                       max_shard_size=args.max_shard_size)
    print(f"wrote {args.output}: {size:,} bytes")
    return 0
