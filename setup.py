"""Build of permcodec's compiled core (permcodec._core); everything else is in pyproject.toml.

The value path must be bit-exact on every machine: no fast-math, no fused multiply-add
(-ffp-contract=off), SSE2 doubles on x86-64 (never x87), and no -march=native (SIMD paths are
chosen at run time). PERMCODEC_SANITIZE=1 builds with AddressSanitizer + UBSan (CI's sanitizer job);
PERMCODEC_OPT overrides the optimization level (the tests pass at -O2 and -O3).
"""
import os
import platform
from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

opt = os.environ.get("PERMCODEC_OPT", "-O2")
cflags = [opt, "-ffp-contract=off", "-fno-fast-math", "-fno-strict-aliasing", "-fvisibility=hidden", "-pthread"]
lflags = ["-pthread"]
if platform.machine().lower() in ("x86_64", "amd64"):
    cflags += ["-msse2", "-mfpmath=sse"]
if os.environ.get("PERMCODEC_SANITIZE"):
    san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g"]
    cflags += san
    lflags += san

ext = Pybind11Extension(
    "permcodec._core",
    sorted(glob("csrc/*.cpp")),
    include_dirs=["csrc"],
    depends=sorted(glob("csrc/*.h")),
    cxx_std=17,
    extra_compile_args=cflags,
    extra_link_args=lflags,
)

setup(ext_modules=[ext], cmdclass={"build_ext": build_ext})
