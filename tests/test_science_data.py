"""Fashion-MNIST found where Debian installs it, its files checked against pinned SHA-256 digests,
and a missing dataset explained (issue 15, item 1)."""
import gzip
import hashlib

import numpy as np
import pytest
import torch

from trainers import data

STEMS = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
         "t10k-labels-idx1-ubyte"]


def _idx_bytes(arr: np.ndarray) -> bytes:
    head = bytes([0, 0, 8, arr.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in arr.shape)
    return head + arr.astype(np.uint8).tobytes()


def _write(folder, gz=True, seed=0):
    """Four tiny IDX files in ``folder``; returns the arrays and their uncompressed digests."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 256, (20, 28, 28)), np.arange(20) % 10,
              rng.integers(0, 256, (10, 28, 28)), np.arange(10)]
    digests = {}
    for stem, arr in zip(STEMS, arrays):
        raw = _idx_bytes(arr)
        digests[stem] = hashlib.sha256(raw).hexdigest()
        if gz:
            with gzip.open(folder / f"{stem}.gz", "wb") as f:
                f.write(raw)
        else:
            (folder / stem).write_bytes(raw)
    return arrays, digests


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """No dataset anywhere: an empty $PERMCODEC_DATA and an empty system folder."""
    monkeypatch.setenv("PERMCODEC_DATA", str(tmp_path / "user"))
    monkeypatch.setattr(data, "SYSTEM_ROOT", tmp_path / "system")
    return tmp_path


@pytest.mark.parametrize("gz", [True, False])
def test_reader_and_pinned_digests(nowhere, monkeypatch, gz):
    arrays, digests = _write(nowhere / "user" / "fashion-mnist", gz)
    monkeypatch.setitem(data.PINNED, "fashion-mnist", digests)
    d = data.load("fashion-mnist")
    assert d.identity["verified"] is True
    assert torch.equal(d.x_train[:, 0] * 255, torch.from_numpy(arrays[0]).float())
    assert torch.equal(d.y_train, torch.from_numpy(arrays[1]).long())
    assert torch.equal(d.x_test[:, 0] * 255, torch.from_numpy(arrays[2]).float())
    assert d.y_test.tolist() == list(range(10))
    # one pixel changed in the test images: same size and header, different digest
    path = nowhere / "user" / "fashion-mnist" / ("t10k-images-idx3-ubyte" + (".gz" if gz else ""))
    raw = bytearray(gzip.decompress(path.read_bytes()) if gz else path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(gzip.compress(bytes(raw)) if gz else bytes(raw))
    with pytest.raises(data.DataError) as e:
        data.load("fashion-mnist")
    msg = str(e.value)
    assert "t10k-images-idx3-ubyte" in msg and digests["t10k-images-idx3-ubyte"] in msg
    assert "--no-verify-data" in msg
    assert data.load("fashion-mnist", verify=False).identity["verified"] is False


def test_the_real_pinned_digests_refuse_other_files(nowhere):
    _write(nowhere / "user" / "fashion-mnist")
    with pytest.raises(data.DataError, match="SHA-256 .* is not the official"):
        data.load("fashion-mnist")


def test_corrupt_gzip_is_a_data_error(nowhere):
    _write(nowhere / "user" / "fashion-mnist")
    (nowhere / "user" / "fashion-mnist" / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b junk")
    with pytest.raises(data.DataError, match="cannot be read"):
        data.load("fashion-mnist", verify=False)


def test_system_folder_is_searched_after_the_user_root(nowhere, monkeypatch):
    sys_arrays, sys_digests = _write(nowhere / "system" / "fashion-mnist", seed=1)
    monkeypatch.setitem(data.PINNED, "fashion-mnist", sys_digests)
    d = data.load("fashion-mnist")
    assert d.identity["source"] == str(nowhere / "system" / "fashion-mnist")
    assert torch.equal(d.y_train, torch.from_numpy(sys_arrays[1]).long())
    _write(nowhere / "user" / "fashion-mnist", seed=2)  # the user's root wins when complete
    assert data.load("fashion-mnist", verify=False).identity["source"] == str(
        nowhere / "user" / "fashion-mnist")


def test_missing_says_how_to_install_and_where(nowhere):
    with pytest.raises(data.DataError) as e:
        data.load("fashion-mnist")
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert str(nowhere / "user" / "fashion-mnist") in msg
    assert str(nowhere / "system" / "fashion-mnist") in msg
    assert "train-images-idx3-ubyte" in msg
    with pytest.raises(data.DataError) as e:
        data.load("mnist")
    assert "apt-get" not in str(e.value)  # no Debian package is claimed for MNIST


def test_trainer_passes_verify_data_through(nowhere):
    from trainers.cli import config_from, train_parser
    _write(nowhere / "user" / "fashion-mnist")
    args = train_parser().parse_args(["--data", "fashion-mnist", "--no-verify-data", "--batch", "10", "--epochs",
                                      "1", "--optimizer", "adam", "--no-progress"])
    cfg = config_from(args)
    assert cfg.verify_data is False
    cfg.out = None
    from trainers.train import train
    assert train(cfg, log=lambda *a: None)["test_total"] == 10
    cfg.verify_data = True
    with pytest.raises(data.DataError, match="not the official"):
        train(cfg, log=lambda *a: None)


@pytest.mark.skipif(not (data.SYSTEM_ROOT / "fashion-mnist").is_dir(),
                    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_from_the_system_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("PERMCODEC_DATA", str(tmp_path))
    d = data.load("fashion-mnist")
    assert d.identity["verified"] is True
    assert d.identity["source"] == str(data.SYSTEM_ROOT / "fashion-mnist")
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert d.y_train.bincount().tolist() == [6000] * 10
    assert d.y_test.bincount().tolist() == [1000] * 10
