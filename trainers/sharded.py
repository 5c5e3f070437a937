"""Row-sharded LaPerm: FSDP2 parameters sharded by rows, checkpoints through DCP in permcodec files.

    model = build(); permcodec.init.apply_(model, seed=0)
    rules = permcodec.dcp.rules_for(model, "model.")   # before sharding: names as the model has them
    shard_rows(model)                                   # FSDP2: every parameter a DTensor Shard(0)
    opt = LaPerm(model, torch.optim.Adam(model.parameters()))
    ... train; opt.sync() ...
    save_checkpoint("ckpt", model, opt, rules)          # every rank writes its own rows
    load_checkpoint("ckpt", model, opt)                 # any world size, sharded or not

A LaPerm sync touches each weight vector alone, so every rank syncs the rows it holds with no
communication; with the same seed and the same data the result is the single-process run's, bit
for bit. Works on CPU with the gloo backend.
"""
from __future__ import annotations

import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from permcodec.dcp import PermcodecReader, PermcodecWriter

__all__ = ["shard_rows", "save_checkpoint", "load_checkpoint"]


def shard_rows(model: nn.Module) -> nn.Module:
    """Apply FSDP2's ``fully_shard`` to every conv/linear layer and to the root (dim-0 shards)."""
    from torch.distributed.fsdp import fully_shard
    for mod in model.modules():
        if isinstance(mod, (nn.Linear, nn.modules.conv._ConvNd)):
            fully_shard(mod)
    fully_shard(model)
    return model


def _state(model, opt) -> dict:
    msd, osd = get_state_dict(model, opt.base)  # the base optimizer: DCP's state init steps it once at lr 0
    return {"model": msd, "optim": osd}


def save_checkpoint(path, model: nn.Module, opt, rules: dict, **writer_kw) -> None:
    """DCP save of the model and LaPerm's optimizer: permuted rows for the rule'd weights, the
    rest (Adam's moments, biases, buffers) raw. Call ``opt.sync()`` first."""
    dcp.save(_state(model, opt), storage_writer=PermcodecWriter(path, rules=rules, **writer_kw))


def load_checkpoint(path, model: nn.Module, opt) -> None:
    """Load a checkpoint written with any world size into ``model`` and ``opt`` (LaPerm checks that
    the checkpoint was made from the same initial values)."""
    state = _state(model, opt)
    dcp.load(state, storage_reader=PermcodecReader(path))
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
