"""Lightning: a callback that writes a synced ``.perm`` file every N steps or epochs and at the end.

    trainer = lightning.Trainer(callbacks=[PermcodecCheckpoint("ckpt/", every_n_train_steps=100)])

Files are ``ckpt/step=000100.perm`` ... and ``ckpt/last.perm``, written by global rank 0 with the
weights of the LaPerm optimizer's ``synced_view()`` (any optimizer without one is saved as is),
and the step and epoch in the file's metadata.
"""
from __future__ import annotations

import os

from lightning.pytorch.callbacks import Callback

from . import find_laperm, save_synced


class PermcodecCheckpoint(Callback):
    """Save ``pl_module`` as ``dirpath/step=NNNNNN.perm`` every ``every_n_train_steps`` optimizer
    steps and/or ``dirpath/epoch=NNN.perm`` every ``every_n_epochs`` epochs, and ``dirpath/last.perm``
    when training ends (``save_last``). ``save_kwargs`` go to permcodec.save (codec, metadata, ...)."""

    def __init__(self, dirpath, *, every_n_train_steps: int | None = None, every_n_epochs: int | None = None,
                 save_last: bool = True, **save_kwargs):
        for name, n in (("every_n_train_steps", every_n_train_steps), ("every_n_epochs", every_n_epochs)):
            if n is not None and (not isinstance(n, int) or n < 1):
                raise ValueError(f"{name} must be a positive integer or None, not {n!r}")
        self.dirpath = os.fspath(dirpath)
        self.every_n_train_steps, self.every_n_epochs = every_n_train_steps, every_n_epochs
        self.save_last, self.save_kwargs = save_last, save_kwargs
        self.saved: list[str] = []  # paths written, in order

    def _save(self, trainer, pl_module, name: str) -> None:
        if not trainer.is_global_zero:
            return
        os.makedirs(self.dirpath, exist_ok=True)
        path = os.path.join(self.dirpath, name)
        meta = {**self.save_kwargs.get("metadata", {}), "global_step": trainer.global_step,
                "epoch": trainer.current_epoch}
        kwargs = {**self.save_kwargs, "metadata": meta}
        save_synced(pl_module, path, find_laperm(trainer.optimizers), **kwargs)
        self.saved.append(path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n, step = self.every_n_train_steps, trainer.global_step
        if n and step and step % n == 0 and not any(p.endswith(f"step={step:06d}.perm") for p in self.saved):
            self._save(trainer, pl_module, f"step={step:06d}.perm")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        n, epoch = self.every_n_epochs, trainer.current_epoch
        if n and (epoch + 1) % n == 0:
            self._save(trainer, pl_module, f"epoch={epoch:03d}.perm")

    def on_train_end(self, trainer, pl_module) -> None:
        if self.save_last:
            self._save(trainer, pl_module, "last.perm")
