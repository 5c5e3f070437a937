"""Files on disk for large models: shards + an index, and the temporary files a save leaves.

Sharding follows the convention model hubs use for safetensors::

    permcodec.save(model, "model.perm", max_shard_size="2GB")
    # model-00001-of-00003.perm ... model-00003-of-00003.perm, and model.perm.index.json:
    # {"metadata": {"total_size": ..., "permcodec": {...}}, "weight_map": {tensor name: shard file}}
    state = permcodec.load("model.perm.index.json")      # or load("model.perm"): the index is found
    with permcodec.open("model.perm.index.json") as f:   # one shard is mapped, the others not read
        w = f.get_tensor("fc1.weight")

Each shard is an ordinary permcodec file. The save streams: one tensor is encoded at a time and
its section written before the next is encoded, and a shard is closed when the next encoding would
push it over ``max_shard_size`` (a shard exceeds it only when one tensor's encoding alone does).
Shards are written to temporary files, renamed once all are complete, and the index is written
last, atomically. The index records each shard's size and trailer digest (which covers its header
and so every section's SHA-256); a reader refuses a shard that does not match, so an interrupted
save over an older sharded save of the same shard count cannot mix shards silently.

Every shard's header carries ``shard``: {``save_id``: 16 random bytes shared by all shards of one
save, ``number``: its one-based position, ``last``: true on the last}. A reader checks them across
the shards it opens, so shards of different saves never mix, whatever the index says (SPEC §16).

One name holds one layout: a single-file save removes the index and shards of an earlier sharded
save under that name, and a sharded save removes the earlier single file and orphan shards, each
once the new files are durable.

A save killed mid-way leaves ``.permcodec-*.tmp`` files beside the target; permcodec never reads
them, and a later successful save into the same folder removes those older than STALE_SECONDS whose
writer (pid and boot id in the name) is no longer alive.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import threading
import time

import msgpack

from . import format as fmt, tensors as T
from .errors import FormatError, IntegrityError, PermcodecError

INDEX_SUFFIX = ".index.json"
TEMP_PREFIX, TEMP_SUFFIX = ".permcodec-", ".tmp"
STALE_SECONDS = 3600
UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size) -> int:
    """Bytes in ``size``: an int, or a string like "2GB" (10^9) or "500MiB" (2^20), as the hubs write it."""
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", str(size), re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise PermcodecError(f"max_shard_size must be a positive number of bytes or a string like '2GB' or "
                             f"'500MiB', not {size!r}")
    return int(float(m.group(1)) * UNITS[(m.group(2) or "").upper()])


def shard_names(path, count: int) -> list[str]:
    """``model.perm`` -> model-00001-of-00003.perm ...: file names beside ``path``."""
    stem, ext = os.path.splitext(os.path.basename(os.fspath(path)))
    return [f"{stem}-{i:05d}-of-{count:05d}{ext}" for i in range(1, count + 1)]


def index_path(path) -> str:
    """The index file of a model saved to ``path`` (which may already be the index)."""
    path = os.fspath(path)
    return path if path.endswith(INDEX_SUFFIX) else path + INDEX_SUFFIX


def is_index(path) -> bool:
    """Whether ``path`` names a shard index: an ``*.index.json``, or a model whose index exists and is
    newer than a single file of the same name (left only if a save died while changing the layout)."""
    path = os.fspath(path)
    if path.endswith(INDEX_SUFFIX):
        return True
    try:
        index_time = os.stat(path + INDEX_SUFFIX).st_mtime_ns
    except OSError:
        return False
    try:
        return index_time > os.stat(path).st_mtime_ns
    except OSError:
        return True


# ---- temporary files ------------------------------------------------------------------------
OWNER = re.compile(re.escape(TEMP_PREFIX) + r"(\d+)-([0-9a-f]{8})-")


def _boot_id() -> str:
    """8 hex digits naming this boot of this machine: a pid means a process only within one boot."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip()
    except OSError:
        boot = f"{os.uname().nodename}-{int(time.time() - time.monotonic())}"
    import hashlib
    return hashlib.sha256(boot.encode()).hexdigest()[:8]


def temp_file(folder: str):
    """(fd, path) of a new temporary file in ``folder``, named ``.permcodec-PID-BOOT-*.tmp`` so that
    cleanup can find it and tell whether its writer is still alive."""
    return tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-{_boot_id()}-", suffix=TEMP_SUFFIX, dir=folder)


def _owner_alive(name: str) -> bool:
    """Whether the process that made temp file ``name`` may still be writing it."""
    m = OWNER.match(name)
    if m is None or m.group(2) != _boot_id():
        return False  # an older permcodec's name, or a writer of an earlier boot (or another machine)
    try:
        os.kill(int(m.group(1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale_temps(folder: str, older_than: float = STALE_SECONDS) -> list[str]:
    """Remove ``.permcodec-*.tmp`` files in ``folder`` last written more than ``older_than``
    seconds ago (left by killed saves) whose writer is not alive; returns their names."""
    removed, now = [], time.time()
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX):
            p = os.path.join(folder, name)
            try:
                if now - os.stat(p).st_mtime > older_than and not _owner_alive(name):
                    os.unlink(p)
                    removed.append(name)
            except OSError:
                pass
    return removed


def retire_other_layout(path, kept: list[str]) -> None:
    """After a durable save to ``path``, remove what an earlier save under that name left in the
    other layout: the index (first, so no reader follows it) and shards not in ``kept`` (file
    names), or the single file when ``kept`` are shards. Only files named as this writer names
    shards of ``path`` are removed, whatever an old index lists."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    stem, ext = os.path.splitext(os.path.basename(path))
    pattern = re.compile(re.escape(stem) + r"-\d{5}-of-\d{5}" + re.escape(ext))
    _unlink(index_path(path) if not kept else path)
    try:
        old = {n for n in os.listdir(folder) if pattern.fullmatch(n)}
    except OSError:
        old = set()
    for name in sorted(old - set(kept) - {os.path.basename(path)}):
        _unlink(os.path.join(folder, name))
    _fsync_dir(folder)


def _unlink(p: str) -> None:
    try:
        if not os.path.isdir(p):
            os.unlink(p)
    except FileNotFoundError:
        pass


def _fsync_close(f) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


# ---- saving -------------------------------------------------------------------------------------
class _Shard:
    """One shard being written to a temporary file."""

    def __init__(self, folder: str, number: int):
        from .api import _umask
        fd, self.tmp = temp_file(folder)
        os.chmod(self.tmp, 0o666 & ~_umask())  # as a single-file save: the usual mode, not mkstemp's 0600
        self.f = os.fdopen(fd, "wb")
        self.w = fmt.Writer(self.f)
        self.number = number
        self.entries, self.header_bytes = [], 256

    def fits(self, payload_len: int, entry: dict, limit: int) -> bool:
        need = self.w.pos + fmt.ALIGN + payload_len + self.header_bytes + len(msgpack.packb(entry)) + 128
        return not self.entries or need + fmt.TRAILER.size <= limit

    def add(self, entry: dict, payload) -> None:
        entry["section"] = self.w.add_section(payload)
        self.entries.append(entry)
        self.header_bytes += len(msgpack.packb(entry)) + 64

    def finish(self, header: dict, path: str) -> tuple[int, bytes]:
        size = self.w.finish(dict(header, tensors=self.entries))
        _fsync_close(self.f)
        from . import api
        api.check_written(self.tmp, path)
        with open(self.tmp, "rb") as fh:
            fh.seek(size - fmt.TRAILER.size)
            digest = fmt.TRAILER.unpack(fh.read(fmt.TRAILER.size))[2]
        return size, digest


def save(obj, path, max_shard_size, *, rules=None, codec="auto", fast=False, metadata=None, zstd_level=3,
         on_mismatch="raise") -> int:
    """Save ``obj`` to ``path`` in shards of at most ``max_shard_size`` bytes (arguments as
    permcodec.save); returns the bytes written. If everything fits in one shard, it is written
    to ``path`` itself, as an unsharded save would, and no index is written."""
    from . import api
    limit = parse_size(max_shard_size)
    tensors, aliases, rules, codec, meta = api._prepare(obj, rules, codec, fast, metadata, on_mismatch, zstd_level)
    path = os.fspath(path)
    folder = api.check_target(path)
    header = {"format": "permcodec", "created_by": f"permcodec {api.__version__}", "metadata": meta}
    save_id = os.urandom(16)
    by_target: dict[str, list[str]] = {}
    for name, target in aliases.items():
        by_target.setdefault(target, []).append(name)
    shards, done, total_size = [], [], 0
    try:
        for name, t in tensors.items():
            entry, payload = api._encode_tensor(name, t, rules.get(name), codec, on_mismatch, zstd_level)
            total_size += T.nbytes(entry)
            if not shards or not shards[-1].fits(len(payload), entry, limit):
                if shards:
                    done.append(_close(shards[-1], header, by_target, save_id, False, path))
                shards.append(_Shard(folder, len(shards) + 1))
            shards[-1].add(entry, payload)
            del payload
        if not shards:
            shards.append(_Shard(folder, 1))
        if len(shards) == 1:  # everything fits in one file: an ordinary file, without the shard map
            done.append(_close(shards[0], header, by_target, None, True, path))
            os.replace(shards[0].tmp, path)
            _fsync_dir(folder)
            retire_other_layout(path, [])
            remove_stale_temps(folder)
            return done[0][0]
        done.append(_close(shards[-1], header, by_target, save_id, True, path))
        names = shard_names(path, len(shards))
        index = {"metadata": {"total_size": total_size,
                              "permcodec": {"format_version": f"{fmt.MAJOR}.{fmt.MINOR}", "shards": {
                                  n: {"bytes": size, "trailer_sha256": digest.hex()}
                                  for n, (size, digest) in zip(names, done)}}},
                 "weight_map": {e["name"]: n for n, s in zip(names, shards) for e in s.entries}}
        for n, s in zip(names, shards):
            os.replace(s.tmp, os.path.join(folder, n))
        _fsync_dir(folder)
        body = json.dumps(index, indent=2, sort_keys=True).encode() + b"\n"
        api._atomic_write(index_path(path), lambda f: f.write(body), check=lambda tmp: read_index(tmp))
        retire_other_layout(path, names)
        remove_stale_temps(folder)
        return sum(size for size, _ in done) + len(body)
    except BaseException:
        for s in shards:
            try:
                s.f.close()
                os.unlink(s.tmp)
            except OSError:
                pass
        raise


def _close(shard: _Shard, header: dict, by_target: dict, save_id, last: bool, path: str) -> tuple[int, bytes]:
    """Finish ``shard``: its aliases, and (``save_id`` given) the shard map of SPEC §16."""
    if save_id is not None:
        header = dict(header, shard={"save_id": save_id, "number": shard.number, "last": last})
    for e in list(shard.entries):
        for alias in by_target.get(e["name"], ()):
            shard.entries.append({"name": alias, "shape": e["shape"], "dtype": e["dtype"], "kind": "alias",
                                  "target": e["name"], "digest": e["digest"]})
    return shard.finish(header, path)


# ---- reading ------------------------------------------------------------------------------------
def read_index(path) -> dict:
    """The validated index: a map whose ``weight_map`` sends every tensor name to a plain file name
    beside it; ``metadata.permcodec.shards``, when present, lists exactly those shards. Returns the
    index with ``metadata`` defaulted to {}."""
    path = os.fspath(path)
    if not path.endswith(INDEX_SUFFIX) and not path.endswith(TEMP_SUFFIX):
        path = index_path(path)
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > fmt.MAX_HEADER:
                raise FormatError(f"{path} is larger than {fmt.MAX_HEADER} bytes: not a shard index")
            raw = fh.read(size + 1) if size else fh.read(fmt.MAX_HEADER + 1)  # size 0: a pipe or /proc
    except IsADirectoryError:
        raise FormatError(f"{path} is a folder, not a shard index: give the model's file or its .index.json") from None
    if len(raw) > fmt.MAX_HEADER:
        raise FormatError(f"{path} is larger than {fmt.MAX_HEADER} bytes: not a shard index")
    try:
        index = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise FormatError(f"{path} is not a valid shard index (JSON): {str(e)[:200]}") from None
    wm = index.get("weight_map") if isinstance(index, dict) else None
    meta = index.get("metadata", {}) if isinstance(index, dict) else None
    if not isinstance(wm, dict) or not isinstance(meta, dict):
        raise FormatError(f"{path}: a shard index is a map with 'weight_map' and 'metadata'")
    for name, shard in wm.items():
        problem = fmt.name_problem(name)
        if problem:
            raise FormatError(f"{path}: {problem}")
        if not isinstance(shard, str) or os.path.basename(shard) != shard or shard in ("", ".", ".."):
            raise FormatError(f"{path}: tensor {name!r} maps to {shard!r}, which is not a file name beside the index")
    block = meta.get("permcodec")
    listed = block.get("shards") if isinstance(block, dict) else None
    if block is not None and not isinstance(block, dict) or listed is not None and not (
            isinstance(listed, dict) and all(isinstance(v, dict) for v in listed.values())):
        raise FormatError(f"{path}: 'metadata.permcodec' must be a map whose 'shards' maps file names to maps")
    if listed is not None and set(listed) != set(wm.values()):
        raise FormatError(f"{path}: 'metadata.permcodec.shards' lists {sorted(set(listed) ^ set(wm.values()))[:5]} "
                          f"differently from the weight map (an entry was lost or edited): save the model again")
    return dict(index, metadata=meta)


class ShardedFile:
    """A sharded model opened for lazy reading: a shard is mapped when one of its tensors is asked
    for, and checked against the index and the shards opened before it. Same reading methods as
    :class:`permcodec.File`."""

    def __init__(self, path):
        from . import api
        self._api = api
        self.path = index_path(path)
        self.folder = os.path.dirname(os.path.abspath(self.path))
        self.index = read_index(self.path)
        self.weight_map = self.index["weight_map"]
        self.shards = sorted(set(self.weight_map.values()))
        block = self.index["metadata"].get("permcodec")
        self._listed = (block or {}).get("shards") or {}
        self._files: dict = {}
        self._save = None  # (save id, {number: shard file}) of the shards opened so far
        self._entries = None
        self._lock = threading.Lock()

    def shard(self, file_name: str):
        """The opened shard ``file_name`` (a permcodec.File), checked against the index."""
        with self._lock:
            f = self._files.get(file_name)
            if f is None:
                p = os.path.join(self.folder, file_name)
                try:
                    f = self._api.File(p)
                except FileNotFoundError:
                    raise FormatError(f"shard {file_name} named by {self.path} is missing") from None
                except IsADirectoryError:
                    raise FormatError(f"shard {file_name} named by {self.path} is a folder, not a file") from None
                except PermissionError:
                    raise
                except OSError as e:  # a name too long, a path through a file, ...
                    raise FormatError(f"shard {file_name[:80]!r} named by {self.path} cannot be opened "
                                      f"({e.strerror}): not a shard of this model") from None
                try:
                    self._check(file_name, f)
                except BaseException:
                    f.close()
                    raise
                self._files[file_name] = f
            return f

    def _check(self, file_name: str, f) -> None:
        want = self._listed.get(file_name)
        buf = f.container.buf
        digest = fmt.TRAILER.unpack_from(buf, len(buf) - fmt.TRAILER.size)[2]
        if want is not None and (want.get("bytes") != len(buf) or want.get("trailer_sha256") != digest.hex()):
            raise IntegrityError(f"shard {file_name} does not match {self.path} (a save was interrupted or a shard "
                                 f"was replaced): save the model again")
        mapped = {n for n, s in self.weight_map.items() if s == file_name}
        if set(f.entries) != mapped:
            raise IntegrityError(f"shard {file_name} holds {sorted(set(f.entries) ^ mapped)[:5]} differently from "
                                 f"the weight map of {self.path}: save the model again")
        self._check_save(file_name, f.header.get("shard"), pinned=want is not None)

    def _check_save(self, file_name: str, mark, pinned: bool) -> None:
        """Shards prove they are one save: one save id, distinct numbers 1..K, the K-th marked last."""
        if mark is None and pinned:
            return  # written before shard maps existed; the index pins its bytes
        count = len(self.shards)
        if not isinstance(mark, dict):
            raise FormatError(f"shard {file_name} does not say which save it belongs to (no 'shard' map) and "
                              f"{self.path} does not pin it: save the model again with this permcodec")
        save_id, number, last = mark.get("save_id"), mark.get("number"), mark.get("last", False)
        if not (isinstance(save_id, bytes) and len(save_id) == 16 and isinstance(number, int)
                and not isinstance(number, bool) and isinstance(last, bool)):
            raise FormatError(f"shard {file_name}: malformed 'shard' map {mark!r}")
        if self._save is None:
            self._save = (save_id, {})
        first_id, numbers = self._save
        problem = None
        if save_id != first_id:
            problem = f"belongs to a different save than {sorted(numbers.values())[:1]}"
        elif not 1 <= number <= count or last != (number == count):
            problem = (f"is shard {number}{' (the last)' if last else ''} of its save, but {self.path} lists "
                       f"{count} shards (a shard was dropped from or added to the index)")
        elif numbers.get(number, file_name) != file_name:
            problem = f"has the same number {number} as {numbers[number]}"
        if problem:
            raise IntegrityError(f"shard {file_name} {problem}: save the model again")
        numbers[number] = file_name

    @property
    def entries(self) -> dict:
        if self._entries is None:
            self._entries = {n: e for s in self.shards for n, e in self.shard(s).entries.items()}
        return self._entries

    @property
    def metadata(self) -> dict:
        return self.shard(self.shards[0]).metadata if self.shards else {}

    @property
    def file_bytes(self) -> int:
        return sum(len(self.shard(s).container.buf) for s in self.shards) + os.path.getsize(self.path)

    def keys(self):
        return list(self.weight_map)

    def __contains__(self, name):
        return name in self.weight_map

    def _file_of(self, name):
        try:
            return self.shard(self.weight_map[name])
        except KeyError:
            raise PermcodecError(f"no tensor {name!r} in {self.path}") from None

    def entry(self, name) -> dict:
        return self._file_of(name).entry(name)

    def get_numpy(self, name, check_digest: bool = False):
        return self._file_of(name).get_numpy(name, check_digest)

    def get_tensor(self, name, device="cpu", check_digest: bool = False):
        return self._file_of(name).get_tensor(name, device, check_digest)

    def get_rows(self, name, start: int, stop: int):
        return self._file_of(name).get_rows(name, start, stop)

    def rules(self) -> dict:
        return self._api.rules_in(self)

    def close(self):
        with self._lock:
            files, self._files = self._files, {}
        for f in files.values():
            f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_header(path) -> dict:
    """All shards' headers as one: tensors (each with its ``shard``), metadata, and the index."""
    with ShardedFile(path) as f:
        tensors = [dict(e, shard=f.weight_map[n]) for n, e in f.entries.items()]
        first = f.shard(f.shards[0]).container if f.shards else None
        return {"tensors": tensors, "metadata": f.metadata, "index": f.index,
                "version": [first.major, first.minor] if first else [fmt.MAJOR, fmt.MINOR]}
