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


def draw_alignment(ax, align: dict, title: str) -> None:
    """Desired vs observed on ``ax`` from a :func:`gpt_params.evaluate.prompt_alignment` result: one thin
    line per network, the mean over networks, and the diagonal of perfect alignment."""
    prompted, achieved = np.asarray(align["prompted"]), np.asarray(align["achieved"])  # (N, P)
    for i in range(len(prompted)):
        ax.plot(prompted[i], achieved[i], color="tab:blue", alpha=0.15, lw=1)
    order = np.argsort(prompted.mean(0))
    ax.plot(
        prompted.mean(0)[order], achieved.mean(0)[order], color="tab:blue", lw=2.5, label="mean over nets"
    )
    lo, hi = min(prompted.min(), achieved.min()), max(prompted.max(), achieved.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="perfect alignment")
    ax.set_xlabel(f"prompted {align['metric']}")
    ax.set_ylabel(f"achieved {align['achieved_metric']}")
    ax.set_title(f"{title}\nR$^2$ = {align['r2']:.3f} over {len(prompted)} unseen nets", fontsize=10)
    ax.legend(fontsize=8)


def desired_vs_observed(align: dict, title: str) -> Figure:
    fig = Figure(figsize=(5, 4.5), layout="constrained")
    draw_alignment(fig.subplots(), align, title)
    return fig


def draw_vs_gradient(
    ax,
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    gpt_value: float,
    gpt_label: str,
    metric: str,
    xlabel: str = "gradient steps (batch 128)",
) -> None:
    """``metric`` of gradient-trained networks against steps (``curves``: label -> (steps ``(E,)``,
    values ``(E,)``)) and the one-step G.pt result as a horizontal line."""
    for label, (steps, values) in curves.items():
        ax.plot(np.maximum(steps, 1), values, label=label)
    ax.axhline(gpt_value, color="k", ls="--", label=gpt_label)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.legend(fontsize=8)


def panel_grid(n: int, size: tuple[float, float] = (4.2, 3.8)) -> tuple[Figure, list]:
    """A figure with ``n`` panels in rows of at most three."""
    cols = min(3, max(1, n))
    rows = -(-n // cols)
    fig = Figure(figsize=(size[0] * cols, size[1] * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def one_step_figures(results) -> tuple[Figure, Figure]:
    """(desired-vs-observed, one-step-vs-gradient) figures of
    :class:`~gpt_params.evaluate.OneStepResult` s, one panel per model."""
    fig_a, axes = panel_grid(len(results))
    for ax, r in zip(axes, results, strict=True):
        draw_alignment(ax, r.alignment, f"{r.model}: one step")
    fig_b, axes = panel_grid(len(results))
    for ax, r in zip(axes, results, strict=True):
        label = f"one G.pt step ({r.step_seconds * 1e3:.0f} ms/net)"
        draw_vs_gradient(ax, r.baseline.curves, r.achieved, label, r.metric, xlabel=r.baseline.xlabel)
        ax.set_title(f"{r.model}: {r.nets} unseen inits", fontsize=10)
    return fig_a, fig_b


def family_figure(rows: list[dict]) -> Figure:
    """A family model across its members (``eval/family.py`` rows): one-step test loss and the Adam
    steps that match it against hidden width for one-hidden-layer members (hollow markers: widths the
    training zoo never held; dashed: other models, e.g. a specialist applied zero-shot), and both for
    the two-layer members."""
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    ax_loss, ax_steps, ax_two = fig.subplots(1, 3)
    for k, model in enumerate(dict.fromkeys(r["model"] for r in rows)):
        one = sorted(
            (r for r in rows if r["model"] == model and len(r["hidden"]) == 1), key=lambda r: r["hidden"]
        )
        if not one:
            continue
        w = np.array([r["hidden"][0] for r in one])
        style = {"color": f"C{k}", "ls": "-" if model == "family" else "--"}
        for ax, key in ((ax_loss, "test_loss"), (ax_steps, "adam_steps")):
            y = np.array([np.nan if r[key] is None else r[key] for r in one], float)
            ax.plot(w, y, label=model, **style)
            held = np.array([r["held_by_zoo"] is not False for r in one])
            ax.scatter(w[held], y[held], color=style["color"], zorder=3)
            ax.scatter(w[~held], y[~held], facecolors="white", edgecolors=style["color"], zorder=3)
    for ax, label in ((ax_loss, "test loss after one step"), (ax_steps, "Adam steps (lr 1e-3) to match")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("hidden width (one layer; hollow: never in the zoo)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    ax_steps.set_yscale("log")
    two = [r for r in rows if r["model"] == "family" and len(r["hidden"]) == 2]
    if two:
        x = np.arange(len(two))
        ax_two.bar(x - 0.2, [r["start_test_loss"] for r in two], 0.4, color="0.7", label="start")
        ax_two.bar(x + 0.2, [r["test_loss"] for r in two], 0.4, color="C0", label="one step")
        for i, r in enumerate(two):
            steps = ">max" if r["adam_steps"] is None else f"{r['adam_steps']:.0f}"
            ax_two.annotate(f"{steps} Adam", (i + 0.2, r["test_loss"]), ha="center", fontsize=7)
        ax_two.set_xticks(
            x, ["-".join(map(str, r["hidden"])) + ("" if r["held_by_zoo"] is not False else "*") for r in two]
        )
        ax_two.set_xlabel("two hidden layers (*: never in the zoo)")
        ax_two.set_ylabel("test loss")
        ax_two.legend(fontsize=8)
    return fig
