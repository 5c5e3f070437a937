"""Shared helpers for tests: models whose permuted tensors are rearranged at random."""
import torch

import permcodec


def shuffle_rows_(t: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Rearrange every weight vector (row of t.reshape(out, -1)) of ``t`` in place."""
    g = torch.Generator().manual_seed(seed)
    rows = t.data.reshape(t.shape[0], -1) if t.dim() > 1 else t.data.reshape(1, -1)
    idx = torch.argsort(torch.rand(rows.shape, generator=g), dim=1)
    rows.copy_(torch.gather(rows, 1, idx))
    return t


def bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(permcodec.api._bits(a), permcodec.api._bits(b))


def trained_like(model, seed=0):
    """A model whose rule'd tensors are random rearrangements of their initial values."""
    for i, (name, p) in enumerate(model.named_parameters()):
        if permcodec.init.rule_of(p) is not None:
            shuffle_rows_(p, seed + i)
    return model
