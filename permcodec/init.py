"""Initialize torch tensors and models with permcodec's portable seeded rules.

    >>> import torch, permcodec
    >>> layer = torch.nn.Linear(784, 100)
    >>> w = permcodec.init.he_uniform_(layer.weight, seed=0, name="fc1.weight")
    >>> permcodec.init.rule_of(layer.weight).dist
    'uniform'

``apply_`` initializes every conv/linear weight of a model and records the rules on the model, so
``permcodec.save(model, path)`` needs no further arguments.
"""
from __future__ import annotations

import weakref

import torch

from . import rules as _rules
from .errors import RuleError
from .rules import Rule

ATTR = "_permcodec_rules"
TORCH_DTYPE = {torch.float64: "float64", torch.float32: "float32", torch.float16: "float16",
               torch.bfloat16: "bfloat16"}


def values_tensor(rule: Rule, shape, dtype: torch.dtype) -> torch.Tensor:
    """The rule's initial values as a CPU tensor of ``shape`` and ``dtype``."""
    name = TORCH_DTYPE.get(dtype)
    if name is None:
        raise RuleError(f"rules make floating-point tensors only, not {dtype}")
    arr = rule.values(tuple(shape), name)
    t = torch.from_numpy(arr)
    return t.view(torch.bfloat16) if name == "bfloat16" else t


@torch.no_grad()
def fill_(tensor: torch.Tensor, rule: Rule) -> torch.Tensor:
    """Overwrite ``tensor`` with ``rule``'s values and remember the rule on it."""
    tensor.copy_(values_tensor(rule, tensor.shape, tensor.dtype))
    tensor._permcodec_rule = rule
    return tensor


def _family(family):
    def init_(tensor: torch.Tensor, *, seed: int, name: str | None = None, stream: int | None = None,
              prune: float = 0.0, **kw) -> torch.Tensor:
        return fill_(tensor, _rules.make(family, tuple(tensor.shape), seed=seed, name=name, stream=stream,
                                         prune=prune, **kw))
    init_.__name__ = family + "_"
    init_.__doc__ = f"Fill ``tensor`` in place by the seeded rule {family!r} (see permcodec.rules.make)."
    return init_


he_uniform_ = _family("he_uniform")
he_normal_ = _family("he_normal")
glorot_uniform_ = _family("glorot_uniform")
glorot_normal_ = _family("glorot_normal")
lecun_uniform_ = _family("lecun_uniform")
lecun_normal_ = _family("lecun_normal")
uniform_ = _family("uniform")
normal_ = _family("normal")
constant_ = _family("constant")


# Rules of tensors returned by permcodec.load, by identity: an attribute on the tensor would be
# pickled by torch.save, and torch.load(weights_only=True) refuses to unpickle a Rule.
_LOADED: dict[int, tuple] = {}


def remember(tensor: torch.Tensor, rule: Rule) -> torch.Tensor:
    """Record ``rule`` for ``tensor`` (while it lives) without touching the tensor itself."""
    key = id(tensor)
    _LOADED[key] = (weakref.ref(tensor, lambda _, key=key: _LOADED.pop(key, None)), rule)
    return tensor


def rule_of(tensor: torch.Tensor) -> Rule | None:
    """The rule recorded on ``tensor`` (by a filler or apply_) or for it (by permcodec.load)."""
    rule = getattr(tensor, "_permcodec_rule", None)
    if rule is None:
        ref, found = _LOADED.get(id(tensor), (None, None))
        rule = found if ref is not None and ref() is tensor else None
    return rule


def canonical_name(name: str) -> str:
    """Strip wrappers' prefixes: torch.compile's ``_orig_mod.`` and DDP's ``module.``."""
    parts = [p for p in name.split(".") if p != "_orig_mod"]
    while parts and parts[0] == "module" and len(parts) > 1:
        parts = parts[1:]
    return ".".join(parts)


def _unwrap(model):
    while True:
        ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
        inner = getattr(model, "_orig_mod", None) or (getattr(model, "module", None) if ddp else None)
        if inner is None:
            return model
        model = inner


def rules_of(model: torch.nn.Module) -> dict[str, Rule]:
    """The rules recorded on ``model`` (by apply_) or on its parameters (by the ``*_`` fillers)."""
    model = _unwrap(model)
    found = dict(getattr(model, ATTR, {}) or {})
    for name, p in model.named_parameters(remove_duplicate=False):
        r = rule_of(p)
        if r is not None:
            found.setdefault(canonical_name(name), r)
    return found


PERMUTED_LAYERS = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


def apply_(model: torch.nn.Module, *, seed: int, rule: str = "he_uniform", prune=0.0,
           shared_value: float | None = None, bias: bool = False, include=None,
           input_prune_cap: float = 0.2) -> dict[str, Rule]:
    """Initialize every conv/linear weight of ``model`` (and each bias, if ``bias``) in place.

    ``prune``: one rate, or {parameter name: rate}; the first layer's rate is capped at
    ``input_prune_cap`` (LaPerm keeps at least 80% of the input layer). ``shared_value``: every
    kept weight takes this one value (weight-agnostic nets). ``include(name, module, param)``
    overrides which parameters are covered. Returns and records {name: Rule}.
    """
    model_ = _unwrap(model)
    chosen = []
    for mname, module in model_.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            full = canonical_name(f"{mname}.{pname}" if mname else pname)
            default = isinstance(module, PERMUTED_LAYERS) and (pname == "weight" or (bias and pname == "bias"))
            if (include(full, module, p) if include is not None else default) and p.numel() > 0:
                chosen.append((full, p, pname))
    recorded = {}
    first_weight = next((n for n, _, pn in chosen if pn == "weight"), None)
    for full, p, pname in chosen:
        rate = (prune.get(full, 0.0) if isinstance(prune, dict)
                else float(prune) if pname == "weight" and p.dim() > 1 else 0.0)
        if full == first_weight:
            rate = min(rate, input_prune_cap)
        if shared_value is not None:
            r = _rules.make("constant", tuple(p.shape), seed=seed, name=full, prune=rate, value=shared_value)
        elif pname == "bias":
            # a bias vector is initialized from its layer's fan-in, as PyTorch does
            fan_in = _rules.fans(tuple(getattr(_module_of(model_, full), "weight").shape))[0]
            bound = 1.0 / fan_in ** 0.5
            r = _rules.make("uniform", tuple(p.shape), seed=seed, name=full, prune=rate, value=bound)
        else:
            r = _rules.make(rule, tuple(p.shape), seed=seed, name=full, prune=rate)
        fill_(p.data, r)
        p._permcodec_rule = r
        recorded[full] = r
    existing = dict(getattr(model_, ATTR, {}) or {})
    existing.update(recorded)
    object.__setattr__(model_, ATTR, existing)
    return recorded


def _module_of(model, param_name):
    mod = model
    for part in param_name.split(".")[:-1]:
        mod = getattr(mod, part)
    return mod
