"""Seeded initializer rules: what a tensor's initial values are, as data.

A :class:`Rule` is everything needed to regenerate a tensor's initial values bit for bit on any
machine: the distribution, its scale (already computed, stored as a binary64 number), the seed, the
stream (which tensor within the model) and the pruning threshold. It travels in the file header.
The constructors below (``he_uniform`` ...) only decide the scale; decoding never re-derives it.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np

from .errors import RuleError
from .philox import STREAM_BITS
from .values import DTYPES, generate

MAX_U64 = (1 << 64) - 1
PRUNE_ALL = 1 << 32


def stream_of(name: str) -> int:
    """The default stream of a tensor: the first 8 bytes of SHA-256(name), little endian, 62 bits."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") >> (64 - STREAM_BITS)


def prune_threshold(rate: float) -> int:
    """Mask threshold for a pruning rate: an element is pruned iff its mask word < threshold."""
    if not 0.0 <= rate <= 1.0 or math.isnan(rate):
        raise RuleError(f"pruning rate {rate!r} is outside [0, 1]")
    return int(round(rate * PRUNE_ALL))


@dataclass(frozen=True)
class Rule:
    """A seeded initializer: ``dist`` in {"uniform", "normal", "constant"} with ``scale`` (the
    bound, the standard deviation, or the constant), Philox ``seed`` and ``stream``, and
    ``prune`` (mask threshold in [0, 2**32]; 0 means no pruning). ``label`` is informative."""

    dist: str
    scale: float
    seed: int
    stream: int
    prune: int = 0
    label: str = field(default="", compare=False)

    def __post_init__(self):
        if self.dist not in ("uniform", "normal", "constant"):
            raise RuleError(f"unknown distribution {self.dist!r}: expected uniform, normal or constant")
        if not isinstance(self.scale, float) or not math.isfinite(self.scale):
            raise RuleError(f"rule scale must be a finite float, got {self.scale!r}")
        for key, value, hi in (("seed", self.seed, MAX_U64), ("stream", self.stream, (1 << STREAM_BITS) - 1),
                               ("prune", self.prune, PRUNE_ALL)):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= hi:
                raise RuleError(f"rule {key} must be an integer in [0, {hi}], got {value!r}")

    @property
    def prune_rate(self) -> float:
        return self.prune / PRUNE_ALL

    def values(self, shape, dtype: str = "float32") -> np.ndarray:
        """The initial values for a tensor of ``shape`` (numpy; bfloat16 as uint16 bit patterns)."""
        if dtype not in DTYPES:
            raise RuleError(f"rules make floating-point values only, not {dtype!r} (one of {', '.join(DTYPES)})")
        count = math.prod(shape)
        return generate(self, count, dtype).reshape(shape)

    def to_dict(self) -> dict:
        d = {"dist": self.dist, "scale": self.scale, "seed": self.seed, "stream": self.stream}
        if self.prune:
            d["prune"] = self.prune
        if self.label:
            d["label"] = self.label
        return d

    @classmethod
    def from_dict(cls, d) -> "Rule":
        if not isinstance(d, dict):
            raise RuleError(f"a rule must be a map, got {type(d).__name__}")
        unknown = set(d) - {"dist", "scale", "seed", "stream", "prune", "label"}
        if unknown:  # every rule field changes the values, so one this reader does not know cannot be skipped
            raise RuleError(f"rule has fields this permcodec does not know: {sorted(map(str, unknown))} "
                            f"(upgrade permcodec to read this file)")
        if not isinstance(d.get("label", ""), str):
            raise RuleError(f"rule label must be a string, got {d['label']!r}")
        try:
            return cls(dist=d["dist"], scale=d["scale"], seed=d["seed"], stream=d["stream"],
                       prune=d.get("prune", 0), label=d.get("label", ""))
        except KeyError as e:
            raise RuleError(f"rule is missing the field {e.args[0]!r}") from None
        except TypeError as e:
            raise RuleError(f"malformed rule {d!r}: {e}") from None


def fans(shape) -> tuple[int, int]:
    """(fan_in, fan_out) in PyTorch's convention: weight (out, in, *kernel)."""
    shape = tuple(shape)
    if len(shape) == 0:
        raise RuleError("a scalar has no fan: give a tensor with at least one dimension")
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


GAINS = {"linear": 1.0, "relu": math.sqrt(2.0), "tanh": 5.0 / 3.0, "sigmoid": 1.0, "selu": 0.75}

# family -> (distribution, which fan, gain name)
FAMILIES = {
    "he_uniform": ("uniform", "fan_in", "relu"),
    "he_normal": ("normal", "fan_in", "relu"),
    "glorot_uniform": ("uniform", "fan_avg", "linear"),
    "glorot_normal": ("normal", "fan_avg", "linear"),
    "lecun_uniform": ("uniform", "fan_in", "linear"),
    "lecun_normal": ("normal", "fan_in", "linear"),
}


def make(family: str, shape, *, seed: int, name: str | None = None, stream: int | None = None,
         prune: float = 0.0, gain: float | None = None, mode: str | None = None,
         value: float | None = None) -> Rule:
    """A rule of ``family`` for a tensor of ``shape``.

    ``family`` is one of FAMILIES, or "uniform" (bound=value), "normal" (std=value), "constant"
    (value). The stream comes from ``name`` unless given. Scale formulas (binary64):
    uniform bound ``gain * sqrt(3 / fan)``, normal std ``gain / sqrt(fan)``, fan_avg = (in+out)/2.
    """
    if stream is None:
        if name is None:
            raise RuleError("give the tensor's name (or an explicit stream) so each tensor gets its own values")
        stream = stream_of(name)
    threshold = prune_threshold(prune)
    if family in ("uniform", "normal", "constant"):
        if value is None:
            raise RuleError(f"rule {family!r} needs value= (bound, standard deviation or constant)")
        return Rule(family, float(value), seed, stream, threshold, label=family)
    if family not in FAMILIES:
        known = ", ".join([*FAMILIES, "uniform", "normal", "constant"])
        raise RuleError(f"unknown initializer {family!r}: use one of {known}")
    dist, default_mode, gain_name = FAMILIES[family]
    mode = mode or default_mode
    fan_in, fan_out = fans(shape)
    fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}.get(mode)
    if fan is None:
        raise RuleError(f"unknown fan mode {mode!r}: use fan_in, fan_out or fan_avg")
    g = GAINS[gain_name] if gain is None else float(gain)
    scale = g * math.sqrt(3.0 / fan) if dist == "uniform" else g / math.sqrt(fan)
    return Rule(dist, scale, seed, stream, threshold, label=f"{family}({mode}={fan:g})")
