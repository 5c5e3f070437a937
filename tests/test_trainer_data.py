"""Datasets (embedded, IDX, CIFAR-10 binary and python) and the models of Table 1."""
import gzip
import pickle

import numpy as np
import pytest
import torch

from trainers import data, models


def test_embedded_split_is_fixed_and_balanced():
    d = data.load()
    assert d.x_train.shape == (4000, 1, 28, 28) and d.x_test.shape == (1000, 1, 28, 28)
    assert d.y_train.bincount().tolist() == [400] * 10 and d.y_test.bincount().tolist() == [100] * 10
    assert d.y_train[:20].tolist() == list(range(10)) * 2
    assert 0.0 <= float(d.x_train.min()) and float(d.x_train.max()) <= 1.0
    assert torch.equal(data.load().x_test, d.x_test)
    assert len(d.identity["sha256"]) == 64


def _idx(path, arr, gz):
    head = bytes([0, 0, 8, arr.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in arr.shape)
    (gzip.open if gz else open)(path, "wb").write(head + arr.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name,gz", [("mnist", True), ("fashion-mnist", False)])
def test_idx_files(tmp_path, name, gz):
    folder = tmp_path / name
    folder.mkdir()
    rng = np.random.default_rng(0)
    x, xt = rng.integers(0, 256, (30, 28, 28)), rng.integers(0, 256, (10, 28, 28))
    y, yt = np.arange(30) % 10, np.arange(10)
    suffix = ".gz" if gz else ""
    for stem, arr in [("train-images-idx3-ubyte", x), ("train-labels-idx1-ubyte", y),
                      ("t10k-images-idx3-ubyte", xt), ("t10k-labels-idx1-ubyte", yt)]:
        _idx(folder / (stem + suffix), arr, gz)
    d = data.load(name, root=tmp_path, normalize="zscore", verify=False)  # not the official files
    assert d.x_train.shape == (30, 1, 28, 28) and d.y_test.tolist() == list(range(10))
    assert abs(float(d.x_train.mean())) < 1e-4
    raw = data.load(name, root=tmp_path, verify=False)
    assert torch.equal(raw.x_train[:, 0] * 255, torch.from_numpy(x).float())
    _idx(folder / f"t10k-labels-idx1-ubyte{suffix}", np.arange(5), gz)
    with open(folder / f"t10k-labels-idx1-ubyte{suffix}", "ab") as f:
        f.write(b"x")  # a trailing byte: the header no longer matches the size
    with pytest.raises(data.DataError, match="cannot be read" if gz else "header says"):
        data.load(name, root=tmp_path, verify=False)


def test_missing_data_names_what_to_download_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("PERMCODEC_DATA", str(tmp_path))
    with pytest.raises(data.DataError) as e:
        data.load("mnist")
    msg = str(e.value)
    assert str(tmp_path / "mnist") in msg and "train-images-idx3-ubyte" in msg and "https://" in msg
    with pytest.raises(data.DataError, match="cifar-10-binary.tar.gz"):
        data.load("cifar10")


def _cifar_arrays(n):
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), np.arange(n) % 10


def test_cifar_binary_and_python_batches_agree(tmp_path):
    b, p = tmp_path / "bin", tmp_path / "py"
    (b / "cifar-10-batches-bin").mkdir(parents=True)
    (p / "cifar-10-batches-py").mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, n in enumerate(names):
        x, y = _cifar_arrays(4 + i)
        rec = np.concatenate([y[:, None].astype(np.uint8), x], axis=1)
        rec.tofile(b / "cifar-10-batches-bin" / f"{n}.bin")
        with open(p / "cifar-10-batches-py" / n, "wb") as f:
            pickle.dump({b"data": x, b"labels": y.tolist()}, f)
    db, dp = data.load("cifar10", root=b), data.load("cifar10", root=p)
    assert db.x_train.shape == (4 + 5 + 6 + 7 + 8, 3, 32, 32) and db.x_test.shape == (9, 3, 32, 32)
    assert torch.equal(db.x_train, dp.x_train) and torch.equal(db.y_test, dp.y_test)
    assert abs(float(db.x_train.mean())) < 1e-4  # the paper's z-score is the default for CIFAR


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar_python_batches_admit_numpy_only(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / n, "wb") as f:
            pickle.dump({b"data": _Evil(), b"labels": [0]}, f)
    with pytest.raises(data.DataError, match="refusing to unpickle builtins.print"):
        data.load("cifar10", root=tmp_path)


def test_augment_is_seeded_and_keeps_shape():
    x = data.load(limit_train=8).x_train
    a = data.augment(x, "mnist", torch.Generator().manual_seed(1))
    b = data.augment(x, "mnist", torch.Generator().manual_seed(1))
    c = data.augment(torch.rand(4, 3, 32, 32), "cifar", torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    assert c.shape == (4, 3, 32, 32)


# parameter counts of Table 1 (all / conv weights) and the section 3 / 5.5 networks
@pytest.mark.parametrize("name,total,conv", [
    ("f1", 7_840, 0), ("f2", 109_376, 0), ("mlp", 89_610, 0), ("conv7", 325_578, 323_872),
    ("conv2", 4_302_922, 38_592), ("conv4", 2_427_722, 259_776),
    ("conv13", 14_991_946, 14_710_464), ("resnet20", 273_066, 270_256),
    ("resnet50", 760_266, 754_096)])
def test_models_match_table_1(name, total, conv):
    m = models.build(name).eval()
    assert sum(p.numel() for p in m.parameters()) == total
    assert sum(c.weight.numel() for c in m.modules() if isinstance(c, torch.nn.Conv2d)) == conv
    if total < 1_000_000:
        assert m(torch.zeros(2, *models.INPUT[name])).shape == (2, 10)
