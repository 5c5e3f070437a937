"""LaPerm: train by reconnection, as a wrapper around any torch optimizer.

Algorithm 1 of "Train-by-Reconnect" (Qiu & Suda, NeurIPS 2020). The inner optimizer (Adam by
default) updates the weights as usual; every k steps each *weight vector* -- the fan-in of one
output unit, ``w.reshape(out, -1)``; a 1-D tensor is one vector -- takes back its initial values,
placed in the rank order of the inner weights::

    order = argsort(row, stable=True)      # equal weights: the lower index gets the lower rank
    row[order[j]] = theta_sorted_row[j]     # i.e. row = theta_sorted_row[rank]

so right after a sync every row is an exact rearrangement of its initial values, which is what a
permcodec file stores. Adam's moments are kept across syncs, as in the reference.

All of the wrapper's own state lives in the base optimizer's param groups under ``laperm_*`` keys
(integers, lists and strings only), so ``state_dict()`` / ``load_state_dict()`` need no special
code and nothing is ever written into ``base.state[p]``. The sorted initial values are *not*
stored: they are taken from the parameters when the wrapper is built, i.e. build the model with
its seeded initializer, wrap it, then load the checkpoint. A CRC of the sorted values is stored so
that loading a checkpoint into a wrapper built from different initial values fails loudly.

Parameters sharded by rows (DTensor ``Shard(0)``, FSDP2's ``fully_shard``) work as they are: each
process syncs the rows it holds, with no communication, and the result is the single-process
run's bit for bit (trainers/sharded.py saves and loads such runs through DCP).

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
>>> opt = LaPerm(net, k=2)
>>> before = net[0].weight.detach().sort(dim=1).values.clone()
>>> for _ in range(4):
...     opt.zero_grad(); net(torch.randn(8, 4)).pow(2).mean().backward(); opt.step()
>>> torch.equal(net[0].weight.detach().sort(dim=1).values, before)
True
"""

from __future__ import annotations

import contextlib
import time
import zlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

__all__ = ["LaPerm", "rows_of", "sync_rows", "sync_rows_reference", "default_permuted"]

PERMUTE, ONE, ZERO, FREE = "permute", "reset_one", "reset_zero", "free"
_KEYS = ("laperm_step", "laperm_last_sync", "laperm_syncs", "laperm_k_schedule",
         "laperm_roles", "laperm_digests")


def rows_of(t: torch.Tensor) -> torch.Tensor:
    """The weight vectors of ``t`` as rows: ``(out, fan_in)``; a 1-D tensor is one row (a view)."""
    return t.reshape(1, -1) if t.dim() <= 1 else t.reshape(t.shape[0], -1)


# -- row-sharded parameters (DTensor Shard(0), FSDP2's fully_shard) -----------------------------
# A sync touches each row alone, so on a parameter sharded by rows every rank syncs the rows it
# holds, with no communication; only the wrapper's digests (built once) gather the full tensor.
def _local(t: torch.Tensor) -> torch.Tensor:
    """The rows this process holds: a DTensor's local shard (a view), any other tensor itself."""
    return t.to_local() if _is_dtensor(t) else t


def _is_dtensor(t) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return False
    return isinstance(t, DTensor)


def _check_row_sharded(name: str, p: torch.Tensor) -> None:
    if _is_dtensor(p) and any(not (pl.is_replicate() or (pl.is_shard() and pl.dim == 0)) for pl in p.placements):
        raise ValueError(f"parameter {name!r} is a DTensor placed as {p.placements}: LaPerm syncs weight vectors "
                         "(rows), so it needs Shard(0) or Replicate placements (shard by rows, e.g. fully_shard)")


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if _is_dtensor(t) else t


def sync_rows(rows: torch.Tensor, sorted_rows: torch.Tensor) -> torch.Tensor:
    """Each row of ``sorted_rows`` rearranged into the rank order of the same row of ``rows``.

    Ties are broken by index (stable sort), so the result is a pure function of its inputs.
    """
    order = torch.argsort(rows, dim=1, stable=True)
    return torch.empty_like(sorted_rows).scatter_(1, order, sorted_rows)


def sync_rows_reference(rows: torch.Tensor, sorted_rows: torch.Tensor) -> torch.Tensor:
    """Slow, obviously correct version of :func:`sync_rows` (one Python sort per row)."""
    out = torch.empty_like(sorted_rows)
    for i, row in enumerate(rows.tolist()):
        order = sorted(range(len(row)), key=lambda j: (row[j], j))
        for rank, j in enumerate(order):
            out[i, j] = sorted_rows[i, rank]
    return out


def default_permuted(model: nn.Module, *, bias: bool = False) -> list[str]:
    """Names of the tensors LaPerm permutes by default.

    The tensors that carry a permcodec rule (``model._permcodec_rules``) if the model has any;
    otherwise every conv/linear weight, and with ``bias=True`` their biases too (each as one
    vector). Normalization layers are never permuted by default.
    """
    rules = getattr(model, "_permcodec_rules", None)
    if rules:
        return list(rules)
    names = []
    for mname, mod in model.named_modules():
        if isinstance(mod, (nn.Linear, nn.modules.conv._ConvNd)):
            prefix = f"{mname}." if mname else ""
            names.append(prefix + "weight")
            if bias and mod.bias is not None:
                names.append(prefix + "bias")
    return names


def _bn_reset_roles(model: nn.Module) -> dict[str, str]:
    roles = {}
    for mname, mod in model.named_modules():
        if isinstance(mod, nn.modules.batchnorm._NormBase) and mod.affine:
            prefix = f"{mname}." if mname else ""
            roles[prefix + "weight"], roles[prefix + "bias"] = ONE, ZERO
    return roles


def _digest(t: torch.Tensor) -> int:
    return zlib.crc32(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())


def _schedule(k: int | None, k_schedule) -> list[list[int]]:
    sched = [[0, k]] if k_schedule is None else [[int(s), int(v)] for s, v in k_schedule]
    if not sched or sched[0][0] != 0:
        raise ValueError(f"k_schedule must start at step 0, got {k_schedule!r}")
    for (s0, _), (s1, _) in zip(sched, sched[1:]):
        if s1 <= s0:
            raise ValueError(f"k_schedule steps must increase, got {k_schedule!r}")
    for _, v in sched:
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"sync period k must be an integer >= 1, got {v!r}")
    return sched


class LaPerm(torch.optim.Optimizer):
    """Lookahead Permutation around ``base_optimizer`` (Adam(lr) over all parameters if None).

    Args:
        model: an ``nn.Module`` or an iterable of ``(name, parameter)`` pairs.
        base_optimizer: the inner optimizer; it must hold every permuted parameter.
        k: the sync period in steps (a sync follows the base step when ``k`` steps have passed
            since the last sync; with a constant k, exactly when k divides the step).
        k_schedule: ``[(from_step, k), ...]`` starting at step 0, instead of a constant ``k``; a
            period that begins (at a sync) at or after ``from_step`` lasts ``k`` steps.
        permute: names (or a predicate ``(name, param) -> bool``) of the tensors to permute;
            default :func:`default_permuted`.
        bias: with the default ``permute``, also permute conv/linear biases, each as one vector.
        gamma_beta_reset: reset every affine BatchNorm's scale to 1 and shift to 0 at each sync
            (the paper's "γβ reset", appendix A.5.6).
        lr: learning rate of the default Adam.
    """

    def __init__(self, model, base_optimizer: torch.optim.Optimizer | None = None, *,
                 k: int = 20, k_schedule=None, permute=None, bias: bool = False,
                 gamma_beta_reset: bool = False, lr: float = 1e-3):
        named = list(model.named_parameters() if isinstance(model, nn.Module) else model)
        if permute is None:
            if not isinstance(model, nn.Module):
                permute = [n for n, p in named if p.dim() >= 2]
            else:
                permute = default_permuted(model, bias=bias)
        wanted = ({n for n, p in named if permute(n, p)} if callable(permute) else set(permute))
        unknown = wanted - {n for n, _ in named}
        if unknown:
            raise ValueError(f"permute names {sorted(unknown)} are not parameters of the model")
        roles = _bn_reset_roles(model) if gamma_beta_reset and isinstance(model, nn.Module) else {}
        if gamma_beta_reset and not isinstance(model, nn.Module):
            raise ValueError("gamma_beta_reset=True needs the model (an nn.Module), not named params")
        if base_optimizer is None:
            base_optimizer = torch.optim.Adam([p for _, p in named], lr=lr)
        self.base = base_optimizer
        self.names = {p: n for n, p in named}
        self._sorted: dict[torch.Tensor, torch.Tensor] = {}
        in_base = {p for g in base_optimizer.param_groups for p in g["params"]}
        for n, p in named:
            if n in wanted:
                if p.dim() == 0:
                    raise ValueError(f"parameter {n!r} is a scalar: nothing to permute")
                if p not in in_base:
                    raise ValueError(f"parameter {n!r} is permuted but not in the base optimizer")
                _check_row_sharded(n, p)
                self._sorted[p] = rows_of(_local(p.detach())).sort(dim=1, stable=True).values.clone()
                roles[n] = PERMUTE
        sched = _schedule(k, k_schedule)
        for g in base_optimizer.param_groups:
            g.update(laperm_step=0, laperm_last_sync=0, laperm_syncs=0, laperm_k_schedule=sched)
            g["laperm_roles"] = [roles.get(self.names.get(p, ""), FREE) for p in g["params"]]
            g["laperm_digests"] = [_digest(rows_of(_full(p.detach())).sort(dim=1, stable=True).values)
                                   if p in self._sorted else 0 for p in g["params"]]
        # registered as defaults (as timm's Lookahead does), so a group added later gets every key
        base_optimizer.defaults.update(laperm_step=0, laperm_last_sync=0, laperm_syncs=0,
                                       laperm_k_schedule=sched, laperm_roles=[], laperm_digests=[])
        self.sync_seconds = 0.0  # wall time spent in sync() by this object (not saved)
        self._link()

    def add_param_group(self, param_group: dict) -> None:
        """Add a group to the base optimizer; its parameters are trained freely (not permuted),
        and it joins the wrapper's step counters where they stand."""
        self.base.add_param_group(param_group)
        g, first = self.base.param_groups[-1], self.base.param_groups[0]
        for key in ("laperm_step", "laperm_last_sync", "laperm_syncs"):
            g[key] = first[key]
        g["laperm_k_schedule"] = [list(x) for x in first["laperm_k_schedule"]]
        g["laperm_roles"] = [FREE] * len(g["params"])
        g["laperm_digests"] = [0] * len(g["params"])

    # -- plumbing: share everything with the base optimizer (as timm's Lookahead does) --------
    def _link(self):
        self.param_groups = self.base.param_groups
        self.defaults = self.base.defaults

    @property
    def state(self):  # the base optimizer's per-parameter state
        return self.base.state

    def __getstate__(self):
        return {"base": self.base, "names": self.names, "_sorted": self._sorted,
                "sync_seconds": self.sync_seconds}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._link()

    def __repr__(self):
        return f"LaPerm(k_schedule={self.k_schedule}, base={self.base.__class__.__name__})"

    def zero_grad(self, set_to_none: bool = True):
        self.base.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return self.base.state_dict()

    def load_state_dict(self, state_dict):
        groups = state_dict["param_groups"]
        missing = [key for key in _KEYS if any(key not in g for g in groups)]
        if missing:
            raise ValueError(f"not a LaPerm state dict: param groups lack {missing}")
        for i, (mine, theirs) in enumerate(zip(self.base.param_groups, groups)):
            for key in ("laperm_roles", "laperm_digests"):
                if list(mine[key]) != list(theirs[key]):
                    raise ValueError(
                        f"param group {i}: saved {key} differ from this model's: the checkpoint "
                        "was made from other initial values or another set of permuted tensors "
                        "(rebuild the model with the same seed and init rules, then wrap it)")
        self.base.load_state_dict(state_dict)
        self._link()

    # -- LaPerm proper ---------------------------------------------------------------------------
    @property
    def step_count(self) -> int:
        return self.param_groups[0]["laperm_step"]

    @property
    def last_sync(self) -> int:
        return self.param_groups[0]["laperm_last_sync"]

    @property
    def k_schedule(self) -> list[list[int]]:
        return self.param_groups[0]["laperm_k_schedule"]

    @property
    def k(self) -> int:
        """The current sync period: the schedule's k for the period that began at the last sync."""
        return [v for s, v in self.k_schedule if s <= self.last_sync][-1]

    @property
    def is_synced(self) -> bool:
        """True when no optimizer step was taken since the last sync (or since the start)."""
        return self.step_count == self.last_sync

    def permuted(self) -> dict[str, torch.Tensor]:
        """Name -> parameter of every permuted tensor."""
        return {self.names[p]: p for p in self._sorted}

    def sorted_initial(self, p: torch.Tensor) -> torch.Tensor:
        """The sorted initial rows (θ_sorted) of permuted parameter ``p``."""
        return self._sorted[p]

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = self.base.step(closure)
        for g in self.param_groups:
            g["laperm_step"] += 1
        if self.step_count - self.last_sync >= self.k:
            self.sync()
        return loss

    def _synced_values(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for g in self.param_groups:
            for p, role in zip(g["params"], g["laperm_roles"]):
                if role == PERMUTE:
                    local = _local(p.detach())
                    yield local, sync_rows(rows_of(local), self._sorted[p]).view_as(local)
                elif role in (ONE, ZERO):
                    yield _local(p.detach()), torch.full_like(_local(p.detach()), 1.0 if role == ONE else 0.0)

    @torch.no_grad()
    def sync(self):
        """Put every permuted row into the rank order of its inner weights (and reset γ/β)."""
        t0 = time.perf_counter()
        for p, value in list(self._synced_values()):
            p.copy_(value)
        for g in self.param_groups:
            g["laperm_last_sync"] = g["laperm_step"]
            g["laperm_syncs"] += 1
        self.sync_seconds += time.perf_counter() - t0

    @contextlib.contextmanager
    def synced_view(self):
        """Temporarily give the parameters their synced values (to evaluate), then restore them.

        Training is unaffected: the step counter and the inner weights are unchanged afterwards.
        """
        with torch.no_grad():
            saved = [(p, p.detach().clone()) for p, _ in self._synced_values()]
            for p, value in list(self._synced_values()):
                p.copy_(value)
        try:
            yield self
        finally:
            with torch.no_grad():
                for p, value in saved:
                    p.copy_(value)

    def check_synced(self):
        """Raise ``ValueError`` naming the first parameter and row that is not a permutation."""
        for p, s in self._sorted.items():
            bad = (rows_of(_local(p.detach())).sort(dim=1).values != s).any(dim=1).nonzero()
            if len(bad):
                raise ValueError(
                    f"parameter {self.names[p]!r} row {int(bad[0])} is not a rearrangement of its "
                    "initial values (the weights changed since the last sync: call LaPerm.sync())")
