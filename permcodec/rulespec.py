"""Rules as people write them: ``{"rule": "he_uniform", "seed": 0, "prune": 0.5}``.

A short rule names an initializer family and a seed; the scale, stream and pruning threshold are
derived from the tensor's name and shape by ``rules.make``, exactly as ``permcodec.init.apply_``
derives them, so a rules file for ``export`` or ``permcodec export`` needs no 62-bit stream
numbers. A full rule (``Rule.to_dict()``, with "dist") is taken as it is.
"""
from __future__ import annotations

from . import rules as _rules
from .errors import RuleError

SHORT_KEYS = {"rule", "seed", "prune", "stream", "gain", "mode", "value"}


def from_dict(d: dict, *, name: str, shape) -> _rules.Rule:
    """The Rule that ``d`` (full or short) describes for tensor ``name`` of ``shape``."""
    if "rule" not in d:
        return _rules.Rule.from_dict(d)
    unknown = set(d) - SHORT_KEYS
    if unknown:
        raise RuleError(f"rule for {name!r} has unknown fields {sorted(map(str, unknown))}: a short rule takes "
                        f"{', '.join(sorted(SHORT_KEYS))}")
    if "seed" not in d:
        raise RuleError(f"rule for {name!r} needs a seed, e.g. {{\"rule\": {d['rule']!r}, \"seed\": 0}}")
    if shape is None:
        raise RuleError(f"short rule for {name!r}: no tensor of that name to take the shape from")
    kw = {k: d[k] for k in ("stream", "gain", "mode", "value") if k in d}
    try:
        return _rules.make(d["rule"], tuple(shape), seed=d["seed"], name=name, prune=d.get("prune", 0.0), **kw)
    except TypeError as e:
        raise RuleError(f"malformed rule for {name!r}: {d!r} ({e})") from None
