"""Optional integrations, one small module per framework; each imports its framework only when used.

- :mod:`permcodec.integrations.hub`: ``PermcodecModelHubMixin``, a drop-in for huggingface_hub's
  ``PyTorchModelHubMixin`` whose ``save_pretrained`` writes ``model.perm`` (extra ``hub``).
- :mod:`permcodec.integrations.lightning`: ``PermcodecCheckpoint``, a Lightning callback (extra
  ``lightning``).
- :mod:`permcodec.integrations.accelerate`: ``register``, a save-state hook (extra ``accelerate``).

Models trained by LaPerm are exact rearrangements of their initial values only right after a sync,
so every writer here saves inside the optimizer's ``synced_view()`` when it has one.
"""
from __future__ import annotations

import contextlib


def _unwrap(optimizer):
    """The optimizer inside a framework's wrapper (accelerate's AcceleratedOptimizer, Lightning's
    LightningOptimizer keep it as ``.optimizer``)."""
    while not hasattr(optimizer, "synced_view") and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def synced(optimizer):
    """A context in which the model holds its synced weights: ``optimizer.synced_view()`` for a
    LaPerm optimizer (or anything with that method, wrapped or not), else nothing changes."""
    view = getattr(_unwrap(optimizer), "synced_view", None)
    return view() if view is not None else contextlib.nullcontext()


def find_laperm(optimizers):
    """The first optimizer of ``optimizers`` that has ``synced_view`` (a LaPerm, unwrapped), or None."""
    return next((o for o in map(_unwrap, optimizers) if hasattr(o, "synced_view")), None)


def save_synced(model, path, optimizer=None, **save_kwargs) -> int:
    """``permcodec.save(model, path)`` with the weights synced by ``optimizer`` (see synced())."""
    from ..api import save
    with synced(optimizer):
        return save(model, path, **save_kwargs)
