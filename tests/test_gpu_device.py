"""The device matrix of issue 16 (run by bench/gpu_check.sh with ``-m gpu``): on CUDA every codec,
dtype, pruning rate and rule rebuilds bit-equal to the CPU decoder, and 10^6 values of every dtype
equal the numpy reference (CUDA's double sqrt and division rounding). Skipped without CUDA; the
same code paths run on CPU tensors in tests/test_gpu.py and tests/test_gpu_uniform.py."""
import numpy as np
import pytest
import torch

import permcodec
from permcodec import gpu
from permcodec.codecs import uniform
from permcodec.rules import make
from tests.helpers import bit_equal
from tests.test_gpu import CASES, entry_for

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
RULES = CASES + [("he_uniform", "float32", 0.0), ("he_normal", "float64", 0.9)]


@pytest.mark.parametrize("family, dtype, prune", RULES)
@pytest.mark.parametrize("codec, backend", [("packed", "torch"), ("packed", "triton"), ("plain", "torch"),
                                            ("plain", "triton")])
def test_device_codecs_equal_cpu(family, dtype, prune, codec, backend):
    e, payload, w = entry_for(family, dtype, prune, (64, 8, 9), codec)
    out = gpu.decode(e, payload, "cuda", check_digest=True, backend=backend)
    assert bit_equal(out.cpu(), permcodec.api.to_torch(w, dtype))


@pytest.mark.parametrize("family, dtype, prune", RULES)
def test_device_uniform_equals_reference(family, dtype, prune):
    from permcodec import _gpu_uniform as G
    e, payload, w = entry_for(family, dtype, prune, (64, 72), "uniform")
    rule = make(family, (64, 72), seed=0, name="w", prune=prune, **({"value": 0.08} if family == "constant" else {}))
    v = rule.values((64, 72), dtype)
    k = uniform.keys_of(v)
    keys = torch.from_numpy(k.view(np.int64) if k.itemsize == 8 else k.astype(np.int64)).cuda()
    got = G.decode(e["codec"], payload, keys).cpu().numpy()
    assert got.tobytes() == uniform.decode_reference(e["codec"], payload, v).tobytes()


@pytest.mark.parametrize("codec", ["auto", "packed", "plain", "uniform", "model"])
def test_device_load_every_codec(tmp_path, codec):
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    permcodec.init.apply_(model, seed=0)
    from tests.helpers import trained_like
    trained_like(model)
    path = tmp_path / "m.perm"
    permcodec.save(model, path, codec=codec)
    cpu = permcodec.load(path)
    dev = permcodec.load(path, device="cuda", check_digests=True)
    for key in cpu:
        assert bit_equal(cpu[key], dev[key].cpu())


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16", "float16"])
@pytest.mark.parametrize("family", ["he_normal", "he_uniform"])
def test_device_million_values(dtype, family):
    rule = make(family, (1000, 1000), seed=5, name="v", prune=0.1)
    ref = permcodec.api.to_torch(rule.values((10 ** 6,), dtype), dtype)
    for backend in ("torch", "triton"):
        assert bit_equal(gpu.generate(rule, 10 ** 6, dtype, "cuda", backend=backend).cpu(), ref)
