"""Initial values from a rule: Philox words -> binary64 -> the tensor's dtype, bit for bit.

This is the reference implementation of formats/SPEC.md §4. Only integer arithmetic and
correctly rounded IEEE-754 binary64 operations (+, -, *, /, sqrt) appear on the value path, each
in the order written here; the logarithm needed by the normal tails is our own fixed polynomial,
never libm's. The compiled path (``permcodec._core``, csrc/values.cpp) repeats the same
operations in the same order and is tested equal to this one.

Element ``j`` (flat C-order index into the tensor) takes two words ``(a, b)`` of the rule's value
domain: words 0, 1 of block ``j >> 1`` for even ``j``, words 2, 3 for odd ``j``; and, when the rule
prunes, one word ``m``: word ``j & 3`` of block ``j >> 2`` of the mask domain (philox.block_words).

* ``k = (a >> 5) * 2**26 + (b >> 6)`` is a 53-bit integer;
* uniform: ``t = (2k + 1 - 2**53) * 2**-53`` (exact, in (-1, 1)), value ``scale * t``;
* normal: ``s = 2k + 1 - 2**53`` (odd, nonzero), ``p = (2**53 - |s|) * 2**-54`` (exact, in (0, 1/2)),
  ``z = ppnd16(p)``, value ``scale * z`` if ``s < 0`` else ``scale * -z`` (the upper half by symmetry,
  so that p is never rounded and never reaches 1);
* constant: value ``scale``;
* pruned (``m < prune``): value ``+0.0``.
"""
from __future__ import annotations

import numpy as np

from .errors import RuleError

# Wichura's AS241 (PPND16) coefficients, highest degree first (Horner order).
A = (2.5090809287301226727e+3, 3.3430575583588128105e+4, 6.7265770927008700853e+4,
     4.5921953931549871457e+4, 1.3731693765509461125e+4, 1.9715909503065514427e+3,
     1.3314166789178437745e+2, 3.3871328727963666080e+0)
B = (5.2264952788528545610e+3, 2.8729085735721942674e+4, 3.9307895800092710610e+4,
     2.1213794301586595867e+4, 5.3941960214247511077e+3, 6.8718700749205790830e+2,
     4.2313330701600911252e+1, 1.0)
C = (7.74545014278341407640e-4, 2.27238449892691845833e-2, 2.41780725177450611770e-1,
     1.27045825245236838258e+0, 3.64784832476320460504e+0, 5.76949722146069140550e+0,
     4.63033784615654529590e+0, 1.42343711074968357734e+0)
D = (1.05075007164441684324e-9, 5.47593808499534494600e-4, 1.51986665636164571966e-2,
     1.48103976427480074590e-1, 6.89767334985100004550e-1, 1.67638483018380384940e+0,
     2.05319162663775882187e+0, 1.0)
E = (2.01033439929228813265e-7, 2.71155556874348757815e-5, 1.24266094738807843860e-3,
     2.65321895265761230930e-2, 2.96560571828504891230e-1, 1.78482653991729133580e+0,
     5.46378491116411436990e+0, 6.65790464350110377720e+0)
F = (2.04426310338993978564e-15, 1.42151175831644588870e-7, 1.84631831751005468180e-5,
     7.86869131145613259100e-4, 1.48753612908506148525e-2, 1.36929880922735805310e-1,
     5.99832206555887937690e-1, 1.0)
# log(m) = 2 s (1 + s^2/3 + s^4/5 + ... + s^22/23), s = (m - 1) / (m + 1); highest first.
LOG_C = tuple(1.0 / (2 * i + 1) for i in range(11, -1, -1))
LN2 = 0.6931471805599453
SQRT2 = 1.4142135623730951
TWO_M53 = 2.0 ** -53
TWO_M54 = 2.0 ** -54
TWO_53 = 2.0 ** 53

DTYPES = ("float64", "float32", "float16", "bfloat16")


def _horner(coeffs, x):
    acc = np.full_like(x, coeffs[0])
    for c in coeffs[1:]:
        acc = acc * x + c
    return acc


def log_(x: np.ndarray) -> np.ndarray:
    """Natural log of positive normal binary64 values, with basic operations only."""
    bits = x.view(np.int64)
    e = (bits >> 52) - 1023
    m = ((bits & 0x000FFFFFFFFFFFFF) | (1023 << 52)).view(np.float64)  # m in [1, 2)
    big = m > SQRT2
    m = np.where(big, m * 0.5, m)
    e = np.where(big, e + 1, e).astype(np.float64)
    s = (m - 1.0) / (m + 1.0)
    return e * LN2 + (s * 2.0) * _horner(LOG_C, s * s)


def ppnd16(p: np.ndarray) -> np.ndarray:
    """Standard normal quantile of p in (0, 1) (Wichura 1988, AS241), deterministic."""
    q = p - 0.5
    r = 0.180625 - q * q
    central = (_horner(A, r) * q) / _horner(B, r)
    t = np.where(q <= 0.0, p, 1.0 - p)
    t = np.sqrt(-log_(np.where(np.abs(q) <= 0.425, 0.25, t)))
    near = t - 1.6
    far = t - 5.0
    tail = np.where(t <= 5.0, _horner(C, near) / _horner(D, near),
                    _horner(E, far) / _horner(F, far))
    tail = np.where(q < 0.0, -tail, tail)
    return np.where(np.abs(q) <= 0.425, central, tail)


def from_words(a: np.ndarray, b: np.ndarray, m, dist: str, scale: float, prune: int) -> np.ndarray:
    """binary64 values from each element's value words ``a``, ``b`` and mask word ``m`` (uint32)."""
    k = ((a.astype(np.uint64) >> np.uint64(5)) << np.uint64(26)) | (b.astype(np.uint64) >> np.uint64(6))
    odd = (k.astype(np.int64) * 2 + 1)
    if dist == "uniform":
        x = scale * ((odd - (1 << 53)).astype(np.float64) * TWO_M53)
    elif dist == "normal":
        s = odd - (1 << 53)
        z = ppnd16(((1 << 53) - np.abs(s)).astype(np.float64) * TWO_M54)
        x = scale * np.where(s > 0, -z, z)
    elif dist == "constant":
        x = np.full(len(a), float(scale))
    else:
        check_dist(dist)
    if prune:
        x = np.where(m.astype(np.uint64) < np.uint64(prune), 0.0, x)
    return x


def cast(x: np.ndarray, dtype: str) -> np.ndarray:
    """Round binary64 values to ``dtype``; bfloat16 comes back as its uint16 bit patterns.

    float16 and bfloat16 round through binary32 (round to nearest even at each step); a value
    beyond the format's range becomes an infinity, as IEEE rounding says (no warning).
    """
    if dtype == "float64":
        return x
    with np.errstate(over="ignore"):
        f32 = x.astype(np.float32)
        if dtype == "float16":
            return f32.astype(np.float16)
    if dtype == "float32":
        return f32
    if dtype == "bfloat16":
        b = f32.view(np.uint32)
        return ((b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    check_dtype(dtype)


def generate_reference(rule, count: int, dtype: str, start: int = 0) -> np.ndarray:
    """Elements ``start .. start+count-1`` of ``rule`` in ``dtype`` (numpy reference path)."""
    from .philox import element_words
    a, b, m = element_words(rule.seed, rule.stream, start, count, bool(rule.prune))
    return cast(from_words(a, b, m, rule.dist, rule.scale, rule.prune), dtype)


def check_dtype(dtype: str) -> None:
    """RuleError unless initial values can be made in ``dtype``."""
    if dtype not in DTYPES:
        raise RuleError(f"initial values cannot be made in dtype {dtype!r}: use one of {', '.join(DTYPES)}")


def check_dist(dist: str) -> None:
    """RuleError unless ``dist`` is a distribution the generator knows."""
    if dist not in ("uniform", "normal", "constant"):
        raise RuleError(f"unknown distribution {dist!r}: expected 'uniform', 'normal' or 'constant'")


def generate(rule, count: int, dtype: str, start: int = 0, simd: str = "auto") -> np.ndarray:
    """Same bits as :func:`generate_reference`, from the compiled core.

    ``simd`` ("auto", "portable" or "avx2") only chooses the code path, never a bit; the
    environment variable PERMCODEC_SIMD=portable does the same for "auto".
    """
    from ._native import core
    check_dtype(dtype)
    return core().generate(rule.seed, rule.stream, start, count, rule.dist, float(rule.scale), rule.prune, dtype, simd)
