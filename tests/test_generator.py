"""The portable generator: Philox known answers, value path determinism, reference == fast.

The compiled core (csrc/values.cpp) is compared bit for bit with the numpy reference on both of
its SIMD paths and at several thread counts; neither may change a bit.
"""
import hashlib
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, strategies as st

from permcodec import philox, values, Rule
from permcodec._native import core
from permcodec.errors import PermcodecError, RuleError
from permcodec.rules import make, stream_of

SIMD = core().simd_paths()  # "portable", and "avx2" where the CPU has it


@pytest.mark.parametrize("ctr,key,expected", philox.KAT)
def test_philox_known_answers(ctr, key, expected):
    out = philox.philox4x32(*[np.array([c], np.uint64) for c in ctr], *key)
    assert tuple(int(o[0]) for o in out) == expected


rules = st.builds(
    Rule,
    dist=st.sampled_from(["uniform", "normal", "constant"]),
    scale=st.floats(1e-6, 10.0),
    seed=st.integers(0, 2**64 - 1),
    stream=st.integers(0, 2**62 - 1),
    prune=st.sampled_from([0, 1, 2**31, 2**32 - 1, 2**32]),
)


@given(rule=rules, start=st.integers(0, 2**40), count=st.integers(0, 300),
       dtype=st.sampled_from(values.DTYPES), simd=st.sampled_from(SIMD))
def test_fast_path_equals_reference(rule, start, count, dtype, simd):
    a = values.generate_reference(rule, count, dtype, start)
    b = values.generate(rule, count, dtype, start, simd=simd)
    assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("simd", SIMD)
@pytest.mark.parametrize("start", [2**33 - 77, 2**62 - 300, 0])
def test_block_counter_carries_into_its_high_word(start, simd):
    """Philox block indices crossing 2**32 (and the largest starts): the counter's second word."""
    r = Rule("normal", 1.0, seed=2**64 - 1, stream=2**62 - 1, prune=2**31)
    for dtype in values.DTYPES:
        a = values.generate_reference(r, 299, dtype, start)
        assert a.tobytes() == values.generate(r, 299, dtype, start, simd=simd).tobytes()


# scales from subnormal float16/bfloat16 results to float32 overflow: the fused cast's corners
wide_rules = st.builds(
    Rule,
    dist=st.sampled_from(["uniform", "normal", "constant"]),
    scale=st.one_of(st.floats(-1e39, 1e39, allow_nan=False, allow_infinity=False),
                    st.sampled_from([6.0e-8, 3.0e-8, 1e-5, 6.1e-5, 65504.0, 65519.0, 65520.0, 3.4e38, 1e-45])),
    seed=st.integers(0, 2**64 - 1),
    stream=st.integers(0, 2**62 - 1),
    prune=st.sampled_from([0, 2**30, 2**32]),
)


@given(rule=wide_rules, start=st.integers(0, 2**20), count=st.integers(0, 2000),
       dtype=st.sampled_from(values.DTYPES))
def test_fused_cast_equals_reference_cast(rule, start, count, dtype):
    a = values.generate_reference(rule, count, dtype, start)
    for simd in SIMD:
        b = values.generate(rule, count, dtype, start, simd=simd)
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dist", ["uniform", "normal", "constant"])
@pytest.mark.parametrize("dtype", values.DTYPES)
def test_parallel_path_equals_reference(dist, dtype, monkeypatch):
    """Counts above the serial cut-off split their tiles among 1, 2 or 4 threads (and both SIMD
    paths): never a bit of difference."""
    r = Rule(dist, 0.7, seed=5, stream=11, prune=2**30)
    count = (1 << 17) + 77
    a = values.generate_reference(r, count, dtype, start=3).tobytes()
    for threads in ("1", "2", "4"):
        monkeypatch.setenv("PERMCODEC_NUM_THREADS", threads)
        for simd in SIMD:
            assert values.generate(r, count, dtype, start=3, simd=simd).tobytes() == a


def test_float16_rounding_of_every_kind_of_float32():
    """The compiled binary32 -> binary16 rounding against numpy's, on random and corner patterns."""
    rng = np.random.default_rng(0)
    corners = np.array([0x33000000, 0x33000001, 0x337FFFFF, 0x33800000, 0x38800000, 0x387FFFFF, 0x387FE000,
                        0x387FF000, 0x477FE000, 0x477FEFFF, 0x477FF000, 0x7F7FFFFF, 0x7F800000, 0, 1], np.uint32)
    u = np.concatenate([corners, corners | 0x80000000, rng.integers(0, 2**32, 1 << 20, dtype=np.uint32),
                        (np.arange(0x33000000, 0x47800000, 997, dtype=np.uint32))])
    f = u.view(np.float32)
    u = u[~np.isnan(f)]
    with np.errstate(over="ignore"):
        expected = u.view(np.float32).astype(np.float16).view(np.uint16)
    for simd in SIMD:
        assert np.array_equal(core().f16_bits(u, simd), expected)


def test_bad_arguments_are_named():
    r = Rule("uniform", 1.0, seed=1, stream=2)
    with pytest.raises(RuleError, match="dtype 'int8'"):
        values.generate(r, 4, "int8")
    with pytest.raises(ValueError, match="simd"):
        values.generate(r, 4, "float32", simd="neon")


def test_missing_extension_says_how_to_build_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "permcodec._core", None)  # makes the import fail
    with pytest.raises(PermcodecError, match="pip install -e ."):
        values.generate(Rule("uniform", 1.0, seed=1, stream=2), 4, "float32")


def test_values_are_a_window_of_one_stream():
    r = make("he_normal", (64, 100), seed=7, name="w", prune=0.3)
    whole = values.generate(r, 1000, "float32")
    assert whole[123:456].tobytes() == values.generate(r, 333, "float32", start=123).tobytes()


def test_value_path_pinned():
    """Golden digests of the value path: these bytes are the format's promise; never change them."""
    got = {}
    for fam in ("he_uniform", "he_normal", "glorot_uniform"):
        r = make(fam, (100, 784), seed=1234, name="fc1.weight", prune=0.5)
        got[fam] = hashlib.sha256(r.values((100, 784), "float32").tobytes()).hexdigest()[:16]
    import json
    import pathlib
    golden = pathlib.Path(__file__).parent / "data" / "value_digests.json"
    if not golden.exists():
        pytest.fail(f"missing {golden}: expected {json.dumps(got)}")
    assert got == json.loads(golden.read_text())


def test_distribution_moments():
    n = 200_000
    u = make("uniform", (n,), seed=1, name="u", value=1.0).values((n,), "float64")
    z = make("normal", (n,), seed=1, name="z", value=1.0).values((n,), "float64")
    assert abs(u.mean()) < 0.01 and abs(u.var() - 1 / 3) < 0.01 and np.abs(u).max() < 1
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    p = make("he_uniform", (1000, 100), seed=1, name="p", prune=0.25).values((1000, 100), "float32")
    assert abs((p == 0).mean() - 0.25) < 0.01


def test_streams_differ_by_name():
    assert stream_of("a.weight") != stream_of("b.weight")
    a = make("he_uniform", (10, 10), seed=0, name="a").values((10, 10))
    b = make("he_uniform", (10, 10), seed=0, name="b").values((10, 10))
    assert not np.array_equal(a, b)


SCRIPT = """
import hashlib, os, sys
import torch
torch.set_num_threads(int(sys.argv[1]))
from permcodec.rules import make
h = hashlib.sha256()
for fam, dt in [("he_uniform", "float32"), ("he_normal", "bfloat16"), ("glorot_normal", "float64"),
                ("lecun_uniform", "float16")]:
    r = make(fam, (300, 1000), seed=99, name=fam, prune=0.1)
    h.update(r.values((300, 1000), dt).tobytes())
print(h.hexdigest())
"""


def test_same_bytes_in_other_processes_and_thread_counts():
    import os
    outs = set()
    for threads, simd in (("1", "auto"), ("2", "auto"), ("4", "portable")):
        env = dict(os.environ, PERMCODEC_NUM_THREADS=threads, OMP_NUM_THREADS=threads, PERMCODEC_SIMD=simd)
        out = subprocess.run([sys.executable, "-c", SCRIPT, threads], capture_output=True, text=True, env=env,
                             check=True)
        outs.add(out.stdout.strip())
    assert len(outs) == 1
