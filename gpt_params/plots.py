"""Matplotlib figures from zoo and evaluation numbers (figures are returned, never shown)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from gpt_params.zoo import SPLIT_NAMES
from gpt_params.zoo_reader import Zoo

_COLORS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}


def zoo_figure(zoo: Zoo, metric: str | None = None, max_curves: int = 40, seed: int = 0) -> Figure:
    """Left: ``metric`` against training step for up to ``max_curves`` runs per split, with the
    per-checkpoint median; right: histogram of each split's final ``metric``."""
    names = list(zoo.metrics)
    metric = metric or ("val_loss" if "val_loss" in names else names[0])
    if metric not in zoo.metrics:
        raise KeyError(f"zoo has no metric {metric!r}; it has {names}")
    values = zoo.metrics[metric]  # (R, K)
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_curve, ax_hist = fig.subplots(1, 2)
    rng = np.random.default_rng(seed)
    finals = values[:, -1][np.isfinite(values[:, -1])]
    spread = len(finals) > 0 and finals.max() > finals.min()
    bins = np.linspace(finals.min(), finals.max(), 41) if spread else 40  # shared, so splits compare
    for split in SPLIT_NAMES:
        rows = zoo.runs(split)
        if len(rows) == 0:
            continue
        color = _COLORS[split]
        for r in rng.choice(rows, size=min(max_curves, len(rows)), replace=False):
            ax_curve.plot(zoo.step[r] + 1, values[r], color=color, alpha=0.15, lw=0.8)
        ax_curve.plot(
            np.median(zoo.step[rows], 0) + 1,
            np.median(values[rows], 0),
            color=color,
            lw=2,
            label=f"{split} median ({len(rows)} runs)",
        )
        ax_hist.hist(values[rows, -1], bins=bins, alpha=0.5, color=color, label=split, density=True)
    ax_curve.set_xscale("log")
    ax_curve.set_xlabel("training step + 1 (log)")
    ax_curve.set_ylabel(metric)
    ax_curve.set_title(f"{zoo.task}: {metric} along training")
    ax_curve.legend(fontsize=8)
    ax_hist.set_xlabel(f"final {metric}")
    ax_hist.set_ylabel("density")
    ax_hist.set_title("final checkpoints per run split")
    ax_hist.legend(fontsize=8)
    return fig
