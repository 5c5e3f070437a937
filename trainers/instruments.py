"""The paper's instruments: ranking distance (§3), weight profiles (Figs 1, 11), permutation
cycles (Fig 14). Plots use matplotlib's Agg backend and are written to PNG files.

>>> import torch
>>> w = torch.nn.Parameter(torch.tensor([[0.3, 0.1, 0.2]]))
>>> rd = RankingDistance({"w": w})
>>> with torch.no_grad(): _ = w.copy_(torch.tensor([[0.1, 0.3, 0.2]]))
>>> rd.update()["w"]["mean"]  # ranks went (2, 0, 1) -> (0, 2, 1): distances 2, 2, 0
1.3333333333333333
>>> cycles([2, 0, 1], [0, 2, 1])  # rank 2 -> 0 and 0 -> 2 swap; rank 1 stays
[[0, 2], [1]]
"""

from __future__ import annotations

from pathlib import Path

import torch

from .laperm import rows_of

__all__ = ["ranks", "RankingDistance", "cycles", "plot_profiles", "plot_cycles", "plot_ranking",
           "profiles_figure", "cycles_figure", "ranking_figure", "load_state", "initial_state"]


def ranks(t: torch.Tensor) -> torch.Tensor:
    """Each row's ranking R (stable: equal values ranked by index), as int64 ``(rows, n)``."""
    rows = rows_of(t.detach())
    order = torch.argsort(rows, dim=1, stable=True)
    pos = torch.arange(rows.shape[1], device=rows.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, pos)


class RankingDistance:
    """Mean and SD of ``|R_t - R_{t-1}|`` over each tensor's entries, between successive calls."""

    def __init__(self, params: dict[str, torch.Tensor]):
        self.params = params
        self.prev = {n: ranks(p) for n, p in params.items()}

    def update(self) -> dict[str, dict]:
        out = {}
        for n, p in self.params.items():
            r = ranks(p)
            d = (r - self.prev[n]).abs().double()
            out[n] = {"mean": float(d.mean()), "sd": float(d.std(correction=0)), "n": r.shape[1]}
            self.prev[n] = r
        return out


def cycles(rank_from, rank_to) -> list[list[int]]:
    """Disjoint cycles of σ with σ(rank_from[j]) = rank_to[j] (ranks as sorted positions)."""
    sigma = {int(a): int(b) for a, b in zip(rank_from, rank_to)}
    seen, out = set(), []
    for start in sorted(sigma):
        if start in seen:
            continue
        cyc, v = [], start
        while v not in seen:
            seen.add(v)
            cyc.append(v)
            v = sigma[v]
        out.append(cyc)
    return out


def load_state(path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state dict, training config or None) of a .perm file or a trainer checkpoint."""
    path = Path(path)
    if path.suffix == ".perm":
        import permcodec
        meta = permcodec.read_header(path).get("metadata") or {}
        return permcodec.load(path), meta.get("config")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if "model" in ckpt and "config" in ckpt:
        return ckpt["model"], ckpt["config"]
    return ckpt, None


def initial_state(config: dict) -> dict[str, torch.Tensor]:
    """The seeded initial weights of the run described by ``config`` (rebuilt, not stored)."""
    from .train import Config, build_model
    return build_model(Config(**config)).state_dict()


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path) -> Path:
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return Path(path)


def profiles_figure(tensors: dict[str, torch.Tensor], *, source: str = "", max_rows: int = 256):
    """Weight profiles: every row sorted ascending and overlaid, one panel per tensor."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(tensors), figsize=(4 * len(tensors), 3.4), squeeze=False)
    for ax, (name, t) in zip(axes[0], tensors.items()):
        rows = rows_of(t.detach().float()).sort(dim=1).values[:max_rows]
        x = torch.arange(rows.shape[1])
        for row in rows:
            ax.plot(x, row, ".", ms=1, alpha=0.3)
        ax.set_title(f"{name} {tuple(t.shape)}", fontsize=8)
        ax.set_xlabel("position after sorting")
    axes[0][0].set_ylabel("weight")
    fig.suptitle(f"weight profiles of {source}" if source else "weight profiles", fontsize=9)
    fig.tight_layout()
    return fig


def plot_profiles(tensors: dict[str, torch.Tensor], path, *, source: str = "", max_rows: int = 256) -> Path:
    """Write :func:`profiles_figure` to ``path`` (PNG)."""
    return _save(profiles_figure(tensors, source=source, max_rows=max_rows), path)


def cycles_figure(row_from: torch.Tensor, row_to: torch.Tensor, *, title: str = "", max_chord: int = 12):
    """Fig 14, readable for long rows: the row's values on a circle in ascending order with the
    chords of each cycle of at most ``max_chord`` elements in its own colour (longer cycles would
    cover the circle), beside a histogram of all cycle lengths. Returns (figure, cycles)."""
    import math
    plt = _pyplot()
    ra, rb = ranks(row_from.reshape(1, -1))[0], ranks(row_to.reshape(1, -1))[0]
    cyc = cycles(ra.tolist(), rb.tolist())
    n = len(ra)
    xy = [(math.cos(2 * math.pi * i / n), math.sin(2 * math.pi * i / n)) for i in range(n)]
    fig, (ax, hist) = plt.subplots(1, 2, figsize=(10, 4.8), gridspec_kw={"width_ratios": [1, 1.1]})
    ax.plot(*zip(*xy), "k.", ms=1 if n > 200 else 2)
    cmap = plt.get_cmap("tab20")
    moved = [c for c in cyc if len(c) > 1]
    short = [c for c in moved if len(c) <= max_chord]
    for ci, c in enumerate(short):
        for a, b in zip(c, c[1:] + c[:1]):
            ax.annotate("", xy=xy[b], xytext=xy[a], arrowprops={"arrowstyle": "->", "color": cmap(ci % 20), "lw": 0.6})
    ax.set_title(f"chords of the {len(short)} cycles of length 2-{max_chord}", fontsize=8)
    ax.set_aspect("equal")
    ax.axis("off")
    lengths = [len(c) for c in cyc]
    hist.hist(lengths, bins=range(1, max(lengths) + 2), color="tab:blue", log=len(set(lengths)) > 1)
    hist.set_xlabel("cycle length (1 = fixed point)")
    hist.set_ylabel("number of cycles")
    hist.set_title(f"n={n}: {len(moved)} cycles, {n - sum(map(len, moved))} fixed, longest {max(lengths)}",
                   fontsize=8)
    fig.suptitle(title or "permutation cycles", fontsize=9)
    fig.tight_layout()
    return fig, cyc


def plot_cycles(row_from: torch.Tensor, row_to: torch.Tensor, path, *, title: str = "", max_chord: int = 12) -> list:
    """Write :func:`cycles_figure` to ``path`` (PNG); returns the cycles."""
    fig, cyc = cycles_figure(row_from, row_to, title=title, max_chord=max_chord)
    _save(fig, path)
    return cyc


def ranking_figure(log: dict, *, source: str = ""):
    """Fig 3/13: mean and SD of the ranking distance over training, divided by the row length."""
    plt = _pyplot()
    series = log.get("ranking_distance", [])
    names = [n for n in (series[0] if series else []) if n != "step"]
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(4 * max(len(names), 1), 3.2), squeeze=False)
    steps = [r["step"] for r in series]
    for ax, name in zip(axes[0], names):
        n = series[0][name]["n"]
        ax.plot(steps, [r[name]["mean"] / n for r in series], label="mean D / n")
        ax.plot(steps, [r[name]["sd"] / n for r in series], label="SD[D] / n")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("training step")
        ax.set_ylabel("ranking distance / row length")
        ax.legend(fontsize=7)
    fig.suptitle(f"ranking distance in {source}" if source else "ranking distance", fontsize=9)
    fig.tight_layout()
    return fig


def plot_ranking(log: dict, path, *, source: str = "") -> Path:
    """Write :func:`ranking_figure` to ``path`` (PNG)."""
    return _save(ranking_figure(log, source=source), path)
