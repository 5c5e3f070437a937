"""The training loop: seeded init, LaPerm (or plain Adam), checkpoints at syncs, DDP, and the end
of a run (sync, save the .perm file, reload, verify, re-measure).

Everything random is a pure function of ``(seed, step, rank)`` -- the epoch's sample order, the
augmentation and the dropout masks -- so a run resumed from a checkpoint is bit-identical to one
that never stopped, and a checkpoint needs no RNG state.

>>> cfg = Config(epochs=1, limit_train=200, limit_test=100, k=2, out=None, progress=False)
>>> result = train(cfg, log=lambda *a: None)
>>> result["steps"], result["syncs"]
(4, 2)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from . import data as data_mod
from . import models
from .instruments import RankingDistance
from .laperm import LaPerm, default_permuted

try:
    from tqdm import tqdm as _tqdm
except ImportError:  # progress bars are optional (pip install permcodec[train])
    _tqdm = None

__all__ = ["Config", "train", "build_model", "evaluate", "save_checkpoint", "load_checkpoint"]


@dataclass
class Config:
    """A training run. Every field is JSON-safe and goes into the checkpoint and the .perm file.

    The defaults are the README's main job: the 784-100-100-10 MLP of the paper's section 3 with
    its learning-rate steps (halved at epoch 10, divided by 5 at epoch 20), LaPerm with k = 20,
    on the embedded MNIST digits.
    """

    model: str = "mlp"
    data: str = "embedded"
    data_dir: str | None = None
    verify_data: bool = True           # check pinned SHA-256 digests (Fashion-MNIST's files)
    normalize: str | None = None
    augment: bool = False
    limit_train: int | None = None
    limit_test: int | None = None
    epochs: int = 30
    batch: int = 50
    optimizer: str = "laperm"          # "laperm" or "adam" (the baseline, same init)
    lr: float = 1e-3
    lr_decay: float = 1.0              # lr *= lr_decay every lr_decay_every epochs
    lr_decay_every: int = 1
    lr_steps: dict = field(default_factory=lambda: {"10": 0.5, "20": 0.2})  # {epoch: factor}
    weight_decay: float = 0.0          # Adam's (coupled) L2: Keras l2(a) is weight_decay = 2a
    decay: str | None = None           # what weight_decay applies to (DECAY); None: the paper's
    k: int = 20
    k_schedule: list | None = None     # [[from_step, k], ...]
    init: str = "he_uniform"
    prune: float | dict = 0.0
    input_prune_cap: float = 0.2
    shared_value: float | None = None
    permute_bias: bool | None = None   # None: the paper's choice per model (F1, F2, Conv7)
    gamma_beta_reset: bool = False
    seed: int = 0
    rank_every: int | None = None      # ranking distance period in steps (None: k; 0: off)
    out: str | None = "runs/mlp"
    device: str = "cpu"                # "cuda" trains on the GPU (under DDP: cuda:LOCAL_RANK)
    progress: bool = True


def _seed(*parts: int) -> int:
    return zlib.crc32(json.dumps(parts).encode()) & 0x7FFFFFFF


def build_model(cfg: Config) -> torch.nn.Module:
    """The model with PyTorch's default init under ``seed``, then permcodec's seeded rules."""
    from permcodec import init as pinit
    torch.manual_seed(cfg.seed)
    model = models.build(cfg.model)
    bias = models.PERMUTE_BIAS.get(cfg.model, False) if cfg.permute_bias is None else cfg.permute_bias
    pinit.apply_(model, seed=cfg.seed, rule=cfg.init, prune=cfg.prune, bias=bias,
                 shared_value=cfg.shared_value, input_prune_cap=cfg.input_prune_cap)
    return model


#: What ``Config.decay`` names. The paper's L2 is a Keras kernel regularizer: it decays the
#: weights (conv kernels, dense matrices) and never biases or BatchNorm's gamma/beta; F2 decays
#: its hidden layers only. "all" is the earlier behaviour of this trainer.
DECAY = ("weights", "hidden", "all")


def decayed(model: torch.nn.Module, decay: str) -> list[str]:
    """Names of the parameters ``weight_decay`` applies to under the policy ``decay``."""
    if decay not in DECAY:
        raise ValueError(f"decay must be one of {', '.join(DECAY)}, got {decay!r}")
    names = [n for n, p in model.named_parameters()]
    if decay == "all":
        return names
    weights = [n for n, p in model.named_parameters() if p.dim() > 1]
    return weights[:-1] if decay == "hidden" else weights  # the output layer is the last weight


def build_optimizer(cfg: Config, model: torch.nn.Module):
    policy = cfg.decay or models.DECAY.get(cfg.model, "weights")
    chosen = set(decayed(model, policy)) if cfg.weight_decay else set()
    params = list(model.named_parameters())
    groups = [{"params": [p for n, p in params if n in chosen], "weight_decay": cfg.weight_decay},
              {"params": [p for n, p in params if n not in chosen], "weight_decay": 0.0}]
    base = torch.optim.Adam([g for g in groups if g["params"]], lr=cfg.lr)
    if cfg.optimizer == "adam":
        return base
    if cfg.optimizer != "laperm":
        raise ValueError(f"optimizer must be 'laperm' or 'adam', got {cfg.optimizer!r}")
    return LaPerm(model, base, k=cfg.k, k_schedule=cfg.k_schedule,
                  gamma_beta_reset=cfg.gamma_beta_reset)


def lr_at(cfg: Config, epoch: int) -> float:
    lr = cfg.lr * cfg.lr_decay ** (epoch // cfg.lr_decay_every)
    for e, factor in cfg.lr_steps.items():
        lr *= factor if epoch >= int(e) else 1.0
    return lr


@torch.no_grad()
def evaluate(model, x, y, *, rank=0, world=1, batch=1000) -> tuple[int, int]:
    """(correct, total) on ``x, y``; with ``world > 1`` each rank takes a shard and counts are summed."""
    was = model.training
    model.eval()
    lo, hi = len(y) * rank // world, len(y) * (rank + 1) // world
    correct, device = 0, next(model.parameters()).device
    for i in range(lo, hi, batch):
        j = min(i + batch, hi)
        correct += int((model(x[i:j].to(device)).argmax(1).cpu() == y[i:j]).sum())
    model.train(was)
    counts = torch.tensor([correct, hi - lo], dtype=torch.int64)
    if world > 1 and dist.get_backend() == "nccl":
        counts = counts.cuda()
    if world > 1:
        dist.all_reduce(counts)
    return int(counts[0]), int(counts[1])


def _digest(model) -> int:
    crc = 0
    for t in model.state_dict().values():
        crc = zlib.crc32(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes(), crc)
    return crc


def check_replicas(model, world: int) -> list[int]:
    """All ranks' model digests; raises if any replica differs from rank 0's."""
    if world == 1:
        return [_digest(model)]
    digests = [None] * world
    dist.all_gather_object(digests, _digest(model))
    if len(set(digests)) != 1:
        raise RuntimeError(f"replicas diverged: model digests per rank {digests}")
    return digests


def save_checkpoint(path, cfg, model, opt, step, log, tally=(0.0, 0)) -> None:
    """Write the whole training state (atomically); only ever called right after a sync."""
    tmp = Path(f"{path}.tmp")
    torch.save({"config": dataclasses.asdict(cfg), "step": step, "model": model.state_dict(),
                "optimizer": opt.state_dict(), "log": log, "tally": list(tally)}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _fp32_bytes(model) -> int:
    return sum(t.numel() * 4 for t in model.state_dict().values())


def train(cfg: Config, *, resume: str | None = None, epochs: int | None = None, log=print) -> dict:
    """Train; returns the result record (also written to ``<out>/log.json`` with the epochs).

    With ``resume``, the checkpoint's configuration is used; only ``cfg.out`` and ``cfg.progress``
    are taken from ``cfg``, and ``epochs`` (if given) extends the run.
    """
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if cfg.batch % world:
        raise ValueError(f"batch {cfg.batch} must be divisible by the number of processes {world}")
    say = log if rank == 0 else (lambda *a, **k: None)
    ckpt = load_checkpoint(resume) if resume else None
    if ckpt:
        cfg = Config(**{**ckpt["config"], "out": cfg.out, "progress": cfg.progress,
                        "epochs": epochs or ckpt["config"]["epochs"]})
    out = Path(cfg.out) if cfg.out else None
    if out and rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    ds = data_mod.load(cfg.data, root=cfg.data_dir, normalize=cfg.normalize,
                       limit_train=cfg.limit_train, limit_test=cfg.limit_test,
                       verify=cfg.verify_data)
    device = torch.device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    model = build_model(cfg).to(device)  # seeded init on the CPU, then moved
    opt = build_optimizer(cfg, model)
    laperm = isinstance(opt, LaPerm)
    records = {"config": dataclasses.asdict(cfg), "dataset": ds.identity, "world_size": world,
               "epochs": [], "ranking_distance": [], "replicas": []}
    step, tally = 0, [0.0, 0]  # tally: the epoch's loss sum and step count so far
    if ckpt:
        model.load_state_dict(ckpt["model"])  # (onto the model's device)
        opt.load_state_dict(ckpt["optimizer"])
        step, records, tally = ckpt["step"], ckpt["log"], ckpt["tally"]
        say(f"resumed from {resume} at step {step}")
    net = model
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    every = cfg.k if cfg.rank_every is None else cfg.rank_every
    watched = dict(opt.permuted()) if laperm else {
        n: p for n, p in model.named_parameters() if n in default_permuted(model)}
    ranker = RankingDistance(watched) if every else None
    n, spe = len(ds.y_train), len(ds.y_train) // cfg.batch
    if spe == 0:
        raise ValueError(f"batch {cfg.batch} is larger than the training set ({n})")
    shard = cfg.batch // world
    t0, ckpt_due = time.perf_counter(), False

    def checkpoint_if_due():
        nonlocal ckpt_due
        if ckpt_due and out and (not laperm or opt.is_synced):
            if rank == 0:
                save_checkpoint(out / "checkpoint.pt", cfg, model, opt, step, records, tally)
            ckpt_due = False

    for epoch in range(step // spe, cfg.epochs):
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, epoch)
        order = data_mod.batch_order(n, epoch, cfg.seed)
        bar = range(step % spe, spe)
        if cfg.progress and rank == 0 and _tqdm is not None:
            bar = _tqdm(bar, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, unit="step")
        for i in bar:
            idx = order[i * cfg.batch + rank * shard: i * cfg.batch + (rank + 1) * shard]
            x, y = ds.x_train[idx], ds.y_train[idx]
            if cfg.augment:
                g = torch.Generator().manual_seed(_seed(cfg.seed, step, rank, 1))
                x = data_mod.augment(x, ds.augment_kind, g)
            torch.manual_seed(_seed(cfg.seed, step, rank, 2))  # dropout masks
            loss = F.cross_entropy(net(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            tally = [tally[0] + loss.item(), tally[1] + 1]
            if ranker and step % every == 0:
                records["ranking_distance"].append({"step": step, **ranker.update()})
            if laperm and world > 1 and opt.is_synced:
                records["replicas"].append({"step": step, "digests": check_replicas(model, world)})
            checkpoint_if_due()
        with opt.synced_view() if laperm else contextlib.nullcontext():
            correct, total = evaluate(model, ds.x_test, ds.y_test, rank=rank, world=world)
        rec = {"epoch": epoch + 1, "step": step, "loss": tally[0] / max(tally[1], 1),
               "test_acc": correct / total, "lr": lr_at(cfg, epoch),
               "syncs": opt.param_groups[0].get("laperm_syncs", 0),
               "seconds": round(time.perf_counter() - t0, 3)}
        records["epochs"].append(rec)
        tally = [0.0, 0]
        say(f"epoch {rec['epoch']:3d}/{cfg.epochs}  loss {rec['loss']:.4f}  "
            f"test {100 * rec['test_acc']:.2f}%  lr {rec['lr']:.2e}  syncs {rec['syncs']}  "
            f"{rec['seconds']:.1f}s")
        if out and rank == 0:
            (out / "log.json").write_text(json.dumps(records, indent=1))
        ckpt_due = True
        checkpoint_if_due()
    train_seconds = time.perf_counter() - t0
    if laperm and not opt.is_synced:
        opt.sync()
        if world > 1:
            records["replicas"].append({"step": step, "digests": check_replicas(model, world)})
    correct, total = evaluate(model, ds.x_test, ds.y_test, rank=rank, world=world)
    result = {"model": cfg.model, "data": cfg.data, "optimizer": cfg.optimizer, "steps": step,
              "syncs": opt.param_groups[0].get("laperm_syncs", 0), "test_correct": correct,
              "test_total": total, "test_acc": correct / total, "fp32_bytes": _fp32_bytes(model),
              "train_seconds": round(train_seconds, 3), "sync_seconds": round(getattr(opt, "sync_seconds", 0.0), 4)}
    if laperm and out and rank == 0:
        result.update(finish(cfg, model, out / "model.perm", ds, records, correct, total, say))
    if world > 1:
        dist.barrier()
    records["result"] = result
    if out and rank == 0:
        (out / "log.json").write_text(json.dumps(records, indent=1))
    return result


def finish(cfg, model, path, ds, records, correct, total, say) -> dict:
    """Save the synced model, reload it into a fresh model, verify it, re-measure its accuracy."""
    import permcodec
    meta = {"trainer": "trainers (LaPerm)", "config": dataclasses.asdict(cfg),
            "dataset": ds.identity, "test_correct": correct, "test_total": total,
            "test_accuracy": correct / total, "steps": records["epochs"][-1]["step"] if
            records["epochs"] else 0, "syncs": records["epochs"][-1]["syncs"] if
            records["epochs"] else 0}
    permcodec.save(model, path, metadata=meta)
    fresh = models.build(cfg.model)
    permcodec.load_into(fresh, path)
    permcodec.verify(path, model=fresh)
    fresh.to(next(model.parameters()).device)  # measure where the trained model was measured
    again, _ = evaluate(fresh, ds.x_test, ds.y_test)
    if again != correct:
        raise RuntimeError(f"{path}: rebuilt model scores {again}/{total}, trained one {correct}")
    size, fp32 = path.stat().st_size, _fp32_bytes(model)
    say(f"saved {path}: {size:,} bytes vs {fp32:,} bytes as fp32 ({fp32 / size:.2f}x smaller); "
        f"verified; rebuilt weights score {again}/{total} = {100 * again / total:.2f}% (identical)")
    return {"perm_file": str(path), "perm_bytes": size, "fp32_bytes": fp32,
            "verified": True, "rebuilt_test_correct": again}


def run_distributed(rank: int, world: int, port: int, cfg_dict: dict, resume=None, epochs=None):
    """Entry point of one process of a local multi-process run (see ``--nproc``)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    backend = "nccl" if cfg_dict.get("device", "cpu").startswith("cuda") else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        train(Config(**cfg_dict), resume=resume, epochs=epochs)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(cfg: Config, nproc: int, resume=None, epochs=None) -> None:
    """Train with ``nproc`` local processes (gloo, localhost), without torchrun."""
    import torch.multiprocessing as mp
    mp.spawn(run_distributed, args=(nproc, _free_port(), dataclasses.asdict(cfg), resume, epochs),
             nprocs=nproc, join=True)

