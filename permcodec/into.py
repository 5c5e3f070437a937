"""``load_into``: a permcodec file into a model, as ``Module.load_state_dict`` does it.

Names are matched after removing wrapper prefixes (torch.compile's ``_orig_mod.``, DDP's
``module.``). ``strict=False`` loads the overlap and returns torch's ``_IncompatibleKeys``; a dtype
difference is refused unless ``cast=True``; a model on the meta device (or ``assign=True``) takes
the file's tensors in place of its own instead of copying into them, which on meta would silently
do nothing. Permuted tensors loaded exactly keep their rule, so ``save(model)`` stores them again.
"""
from __future__ import annotations

import torch
from torch.nn.modules.module import _IncompatibleKeys

from .errors import PermcodecError
from .init import _LOADED, ATTR, _unwrap, canonical_name, remember


def _owner(model: torch.nn.Module, key: str):
    *path, attr = key.split(".")
    return model.get_submodule(".".join(path)), attr


def _put(model, key, target, t, made: dict):
    """Replace ``model``'s tensor ``key`` by ``t`` (tied names keep sharing one parameter)."""
    module, attr = _owner(model, key)
    if isinstance(target, torch.nn.Parameter):
        new = made.get(id(t))
        if new is None:
            new = made[id(t)] = torch.nn.Parameter(t, requires_grad=target.requires_grad)
        setattr(module, attr, new)
        return new
    module._buffers[attr] = t
    return t


def _forget(t: torch.Tensor) -> None:
    """Drop the rule recorded on ``t`` by permcodec.init or for it by permcodec.load."""
    _LOADED.pop(id(t), None)
    if getattr(t, "_permcodec_rule", None) is not None:
        del t._permcodec_rule


def _checked(canon, t, target, cast: bool, path) -> torch.Tensor:
    if tuple(target.shape) != tuple(t.shape):
        raise PermcodecError(f"{canon!r}: {path} has shape {list(t.shape)}, the model {list(target.shape)}")
    if target.dtype != t.dtype:
        if not cast:
            raise PermcodecError(f"{canon!r}: {path} holds {t.dtype}, the model {target.dtype}: pass cast=True to "
                                 f"convert (the model's values are then no longer the file's bits), or convert "
                                 f"the model with model.to({t.dtype})")
        t = t.to(target.dtype)
    return t


def load_into(model: torch.nn.Module, path, *, strict: bool = True, cast: bool = False,
              assign: bool = False) -> _IncompatibleKeys:
    """Copy (or, for meta tensors and with ``assign``, put) the tensors of ``path`` into ``model``;
    returns (missing_keys, unexpected_keys) as load_state_dict does."""
    from .api import load
    state, file_rules = load(path, rules=True)
    own = model.state_dict(keep_vars=True)
    by_canon = {canonical_name(k): k for k in own}
    missing = sorted(k for c, k in by_canon.items() if c not in state)
    unexpected = sorted(set(state) - set(by_canon))
    if strict and (missing or unexpected):
        raise PermcodecError(f"{path}: state does not match the model: missing {missing[:10]}, unexpected "
                             f"{unexpected[:10]} (pass strict=False to load the overlap)")
    made: dict = {}
    inner = _unwrap(model)
    recorded = dict(getattr(inner, ATTR, None) or {})
    with torch.no_grad():
        for canon, t in state.items():
            key = by_canon.get(canon)
            if key is None:
                continue
            target = own[key]
            value = _checked(canon, t, target, cast, path)
            if assign or target.device.type == "meta":
                target = _put(model, key, target, value, made)
            else:
                target.copy_(value)
            _forget(target)  # whatever rule it had: it now holds the file's values
            recorded.pop(canon, None)
            if canon in file_rules and value is t:  # a cast tensor is no longer its rule's arrangement
                remember(target, file_rules[canon])
                recorded[canon] = file_rules[canon]
    object.__setattr__(inner, ATTR, recorded)
    return _IncompatibleKeys(missing, unexpected)
