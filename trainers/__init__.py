"""LaPerm training for permcodec: the optimizer wrapper, the paper's models, data and trainer.

    python -m trainers            # train, save, reload and verify a .perm file

``trainers.laperm.LaPerm`` is usable on its own around any torch optimizer.
"""
from .laperm import LaPerm

__all__ = ["LaPerm"]
