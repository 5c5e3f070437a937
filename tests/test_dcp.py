"""DCP storage in permcodec files: 2 gloo processes on CPU, resharding 2->1 and 1->2, row-sharded
LaPerm (FSDP2) equal to single-process training, consolidation equal to a single-process save."""
import argparse
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_model_state_dict
import torch.multiprocessing as mp

import permcodec
import permcodec.dcp
from helpers import bit_equal
from permcodec.dcp import PermcodecReader, PermcodecWriter, consolidate, rank_files, rules_for
from trainers.laperm import LaPerm
from trainers.sharded import load_checkpoint, save_checkpoint, shard_rows

WORLD = 2
STEPS, K = 7, 3


def _model() -> torch.nn.Module:
    """Weights from seeded rules; biases from torch's default init, seeded the same in every process."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 6), torch.nn.ReLU(), torch.nn.Linear(6, 4),
                                torch.nn.ReLU(), torch.nn.Linear(4, 3))  # 3 rows: 2 + 1
    permcodec.init.apply_(model, seed=3)
    return model


def _batches():
    g = torch.Generator().manual_seed(11)
    return [(torch.randn(16, 10, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(STEPS)]


def _train(model, opt):
    for x, y in _batches():  # every rank sees the whole batch: the same data order as one process
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    opt.sync()


def _laperm(model):
    return LaPerm(model, torch.optim.Adam(model.parameters(), lr=1e-2), k=K)


def _single_process():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank: a matmul's rounding may depend on how it is split
    try:
        model = _model()
        opt = _laperm(model)
        _train(model, opt)
    finally:
        torch.set_num_threads(threads)
    return model, opt


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, port, fn, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()


def _spawn(fn, *args):
    mp.spawn(_entry, args=(_free_port(), fn, args), nprocs=WORLD, join=True)


# ---- the rank bodies ------------------------------------------------------------------------
def _train_and_save(rank, folder):
    model = _model()
    rules = rules_for(model, "model.")
    shard_rows(model)
    opt = _laperm(model)
    _train(model, opt)
    save_checkpoint(folder, model, opt, rules)
    # DDP-replicated state: the same tensors on every rank are written once, weights as permutations
    ddp = torch.nn.parallel.DistributedDataParallel(_model())
    dcp.save({"model": get_model_state_dict(ddp), "replicated": torch.arange(6.0)},
             storage_writer=PermcodecWriter(os.path.join(folder, "ddp"), rules=rules_for(ddp, "model.")))


def _load_and_compare(rank, folder, expected_path):
    expected = torch.load(expected_path, weights_only=True)
    model = _model()
    shard_rows(model)
    opt = _laperm(model)
    load_checkpoint(folder, model, opt)
    bad = [n for n, p in model.named_parameters() if not bit_equal(p.full_tensor(), expected["model"][n])]
    for n, p in model.named_parameters():
        for key, v in opt.base.state[p].items():
            full = v.full_tensor() if hasattr(v, "full_tensor") else v
            if not bit_equal(full, expected["state"][n][key]):
                bad.append(f"{n}.{key}")
    if opt.step_count != STEPS or opt.last_sync != STEPS:
        bad.append("laperm counters")
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh
    cols = torch.nn.Parameter(distribute_tensor(torch.zeros(4, 6), init_device_mesh("cpu", (WORLD,)), [Shard(1)]))
    try:  # a sync needs whole rows: sharding by columns is refused
        LaPerm([("cols", cols)], torch.optim.Adam([cols]), permute=["cols"])
        bad.append("Shard(1) accepted")
    except ValueError as e:
        if "Shard(0)" not in str(e):
            bad.append(str(e))
    torch.save(bad, os.path.join(folder, f"bad{rank}.pt"))


# ---- tests ----------------------------------------------------------------------------------
def test_two_ranks_fsdp2_laperm_loads_into_one_equal_to_single_process(tmp_path):
    folder = str(tmp_path / "ckpt")
    _spawn(_train_and_save, folder)
    ref_model, ref_opt = _single_process()

    # every rank wrote its own file; weights are stored as permutations of the rows each holds
    ranks = [os.path.join(folder, n) for n in rank_files(folder)]
    assert len(ranks) == WORLD and len(os.listdir(folder)) == WORLD + 2  # + metadata.perm, ddp/
    h1 = permcodec.read_header(ranks[1])
    w = {t["name"]: t for t in h1["tensors"]}
    assert w["model.0.weight@3,0"]["kind"] == "permuted" and w["model.0.weight@3,0"]["shape"] == [3, 10]
    assert w["model.0.weight@3,0"]["codec"]["name"] == "dcp-rows"
    with pytest.raises(permcodec.FormatError, match="unknown codec 'dcp-rows'"):
        permcodec.load(ranks[1])  # a plain reader refuses, never mis-decodes

    # 2 -> 1: the row-sharded run equals the single-process run, bit for bit, moments included
    model = _model()
    opt = _laperm(model)
    load_checkpoint(folder, model, opt)
    for (n, p), q in zip(model.named_parameters(), ref_model.parameters()):
        assert bit_equal(p, q), n
        for key, v in ref_opt.base.state[q].items():
            assert bit_equal(opt.base.state[p][key], v), (n, key)
    assert opt.step_count == STEPS and opt.k_schedule == ref_opt.k_schedule
    ddp = os.path.join(folder, "ddp")
    rep = {"replicated": torch.zeros(6)}
    dcp.load(rep, storage_reader=PermcodecReader(ddp))
    assert bit_equal(rep["replicated"], torch.arange(6.0))
    written = [t for n in rank_files(ddp) for t in permcodec.read_header(os.path.join(ddp, n))["tensors"]]
    assert len(written) == 7 and sum(t["kind"] == "permuted" for t in written) == 3  # each once
    consolidate(ddp, tmp_path / "ddp.perm", prefix="model.")
    permcodec.save(_model(), tmp_path / "init.perm")
    assert (tmp_path / "ddp.perm").read_bytes() == (tmp_path / "init.perm").read_bytes()

    # offline consolidation: the very bytes of a single-process save
    consolidate(folder, tmp_path / "c.perm", prefix="model.")
    permcodec.save(ref_model, tmp_path / "s.perm")
    assert (tmp_path / "c.perm").read_bytes() == (tmp_path / "s.perm").read_bytes()


def test_one_rank_checkpoint_loads_into_two(tmp_path):
    folder = str(tmp_path / "ckpt")
    model, opt = _single_process()
    save_checkpoint(folder, model, opt, rules_for(model, "model."))
    expected = {"model": {n: p.detach().clone() for n, p in model.named_parameters()},
                "state": {n: {k: v.clone() for k, v in opt.base.state[p].items()} for n, p in model.named_parameters()}}
    torch.save(expected, tmp_path / "expected.pt")
    assert permcodec.load(os.path.join(folder, rank_files(folder)[0]))["model.0.weight"].equal(model[0].weight)
    _spawn(_load_and_compare, folder, str(tmp_path / "expected.pt"))
    assert [torch.load(os.path.join(folder, f"bad{r}.pt")) for r in range(WORLD)] == [[], []]


def test_refuses_to_overwrite_and_missing_checkpoint(tmp_path):
    model = _model()
    dcp.save(model.state_dict(), storage_writer=PermcodecWriter(tmp_path, rules=rules_for(model)))
    with pytest.raises(CheckpointException) as e:  # DCP wraps each rank's error
        dcp.save(model.state_dict(), storage_writer=PermcodecWriter(tmp_path, rules=rules_for(model)))
    error = e.value.failures[0][0]
    assert isinstance(error, permcodec.PermcodecError) and "overwrite=True" in str(error)
    first = rank_files(tmp_path)
    dcp.save(model.state_dict(), storage_writer=PermcodecWriter(tmp_path, rules=rules_for(model), overwrite=True))
    assert len(rank_files(tmp_path)) == 1 and rank_files(tmp_path) != first  # the old one is gone
    model[0].weight.data[0, 0] = 5.0  # not a rearrangement: the save fails ...
    with pytest.raises(CheckpointException):
        dcp.save(model.state_dict(), storage_writer=PermcodecWriter(tmp_path, rules=rules_for(model), overwrite=True))
    state = _model().state_dict()  # ... and the previous checkpoint is whole
    dcp.load(state, storage_reader=PermcodecReader(tmp_path))
    assert all(bit_equal(state[k], v) for k, v in _model().state_dict().items())
    with pytest.raises(CheckpointException) as e:
        dcp.save(model.state_dict(), storage_writer=PermcodecWriter(tmp_path / "b", rules=rules_for(model, "model.")))
    assert isinstance(e.value.failures[0][0], permcodec.RuleError) and "model.0.weight" in str(e.value.failures[0][0])
    with pytest.raises(permcodec.PermcodecError, match="metadata.perm is missing"):
        consolidate(tmp_path / "nothing", tmp_path / "x.perm")


def test_consolidate_command_and_hub_style_shards(tmp_path, capsys):
    model = _model()
    dcp.save(model.state_dict(), storage_writer=PermcodecWriter(tmp_path / "ckpt", rules=rules_for(model)))
    args = argparse.Namespace(path=tmp_path / "ckpt", output=tmp_path / "c.perm", prefix="", codec="auto",
                              max_shard_size=None)
    assert permcodec.dcp.consolidate_command(args) == 0 and "wrote" in capsys.readouterr().out
    permcodec.save(model, tmp_path / "s.perm")
    assert (tmp_path / "c.perm").read_bytes() == (tmp_path / "s.perm").read_bytes()
    (tmp_path / "hub").mkdir()
    consolidate(tmp_path / "ckpt", tmp_path / "hub" / "model.perm", max_shard_size=400)
    assert len(list((tmp_path / "hub").glob("*.perm"))) > 1
    loaded = permcodec.load(tmp_path / "hub" / "model.perm")
    assert loaded.keys() == model.state_dict().keys()
    assert all(bit_equal(loaded[k], v) for k, v in model.state_dict().items())
