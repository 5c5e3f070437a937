"""Codec versions (SPEC §10.3): absent means 1; a reader rejects a version it does not read,
naming the codec, the version and the fix, and still reads the file's other tensors."""
import hashlib
import pathlib

import numpy as np
import pytest

import permcodec
from permcodec import format as fmt
from permcodec.errors import FormatError, VersionError

VECTORS = pathlib.Path(__file__).resolve().parents[1] / "formats" / "vectors"


def with_codec_version(src, dst, name, version):
    """A copy of golden file ``src`` whose tensor ``name`` has ``version`` in its codec map."""
    c = fmt.Container(src.read_bytes())
    header = {k: v for k, v in c.header.items() if k != "sections"}
    header["tensors"] = [dict(t, codec={**t["codec"], "version": version}) if t["name"] == name else t
                         for t in header["tensors"]]
    dst.write_bytes(fmt.pack(header, [bytes(c.section(i)) for i in range(len(c.header["sections"]))]))
    return dst


@pytest.mark.parametrize("fname,name", [("codec_model_near.perm", "fc1.weight"),
                                        ("codec_uniform_dense.perm", "fc1.weight"),
                                        ("codec_packed_dense.perm", "fc2.weight"), ("tiny.perm", "w")])
def test_explicit_version_1_reads_as_absent(fname, name, tmp_path):
    path = with_codec_version(VECTORS / fname, tmp_path / fname, name, 1)
    with permcodec.open(VECTORS / fname) as a, permcodec.open(path) as b:
        assert a.get_numpy(name, check_digest=True).tobytes() == b.get_numpy(name, check_digest=True).tobytes()


def test_unknown_version_is_rejected_by_name(tmp_path):
    path = with_codec_version(VECTORS / "codec_model_near.perm", tmp_path / "v2.perm", "fc1.weight", 2)
    with permcodec.open(path) as f:
        with pytest.raises(VersionError, match=r"codec 'model' version 2 is not readable by permcodec \S+, which "
                                               r"reads 'model' versions 1 to 1: install a permcodec release"):
            f.get_numpy("fc1.weight")
        other = f.get_numpy("fc2.weight", check_digest=True)   # the file's other tensors still read
        assert hashlib.sha256(np.ascontiguousarray(other).tobytes()).digest() == f.entry("fc2.weight")["digest"]


@pytest.mark.parametrize("bad", [0, -1, "1", True, 1.0, None])
def test_malformed_version_is_rejected(bad, tmp_path):
    path = with_codec_version(VECTORS / "codec_uniform_tiny.perm", tmp_path / "bad.perm", "w", bad)
    with permcodec.open(path) as f, pytest.raises(FormatError, match="codec version must be an integer"):
        f.get_numpy("w")


@pytest.mark.parametrize("codec", ["plain", "packed", "uniform", "model"])
def test_writers_omit_version_1(codec, tmp_path):
    """Version-1 codec maps are written without the key: files keep their pre-version bytes."""
    torch = pytest.importorskip("torch")
    rule = permcodec.Rule.from_dict({"dist": "uniform", "scale": 1.0, "seed": 1, "stream": 2})
    w = torch.from_numpy(rule.values((3, 8), "float32")[:, ::-1].copy())
    permcodec.save({"w": w}, tmp_path / "a.perm", rules={"w": rule}, codec=codec)
    assert "version" not in permcodec.read_header(tmp_path / "a.perm")["tensors"][0]["codec"]


def test_a_codec_past_version_1_writes_and_reads_its_version(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from permcodec.codecs import uniform
    monkeypatch.setattr(uniform, "VERSION", 2, raising=False)
    rule = permcodec.Rule.from_dict({"dist": "uniform", "scale": 1.0, "seed": 1, "stream": 2})
    w = torch.from_numpy(rule.values((3, 8), "float32")[:, ::-1].copy())
    permcodec.save({"w": w}, tmp_path / "a.perm", rules={"w": rule}, codec="uniform")
    assert permcodec.read_header(tmp_path / "a.perm")["tensors"][0]["codec"]["version"] == 2
    assert torch.equal(permcodec.load(tmp_path / "a.perm")["w"], w)
    monkeypatch.setattr(uniform, "VERSION", 1)
    with pytest.raises(VersionError, match="'uniform' version 2"):
        permcodec.load(tmp_path / "a.perm")
