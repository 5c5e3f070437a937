"""accelerate: write a synced ``model.perm`` beside every ``Accelerator.save_state`` checkpoint.

    accelerator = Accelerator()
    model, opt = accelerator.prepare(model, LaPerm(model, k=20))
    permcodec.integrations.accelerate.register(accelerator, opt)
    accelerator.save_state("ckpt/")        # accelerate's own files + ckpt/model.perm

accelerate's files still hold the exact training state (the inner weights between syncs); the
``.perm`` file holds the synced weights, the ones a LaPerm model is deployed with.
"""
from __future__ import annotations

import os

from . import find_laperm, save_synced


def register(accelerator, optimizer=None, **save_kwargs):
    """Register the save-state hook on ``accelerator``; returns its handle (``handle.remove()``).

    The weights are synced by ``optimizer``, or by the first of the accelerator's optimizers that
    has ``synced_view`` (a LaPerm). Model ``i > 0`` is written as ``model_{i}.perm``."""

    def hook(models, weights, output_dir):
        if not accelerator.is_main_process:
            return
        opt = optimizer if optimizer is not None else find_laperm(accelerator._optimizers)
        for i, model in enumerate(models):
            name = "model.perm" if i == 0 else f"model_{i}.perm"
            save_synced(accelerator.unwrap_model(model), os.path.join(output_dir, name), opt, **save_kwargs)

    return accelerator.register_save_state_pre_hook(hook)
