"""Numbers about one-step updates, every one measured through :meth:`LearnedOptimizer.step`: G.pt's
prompt alignment, and one step against the task's gradient baseline from the same inits.
Returns numbers, never plots (``gpt_params.plots`` draws them)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from gpt_params.errors import GptParamsError, ZooError
from gpt_params.optimizer import LearnedOptimizer
from gpt_params.tasks.base import Baseline, BaselineConfig, Task
from gpt_params.zoo_reader import Zoo


def r_squared(prompted: np.ndarray, achieved: np.ndarray) -> float:
    """G.pt's prompt alignment score: 1 - sum((achieved - prompted)^2) / sum((prompted - mean)^2).

    The prompts are the targets and the achieved metrics the predictions, so the denominator is the
    spread of the prompts: 1 is perfect, 0 is as good as always reaching the mean prompt."""
    ss_res = float(((achieved - prompted) ** 2).sum())
    ss_tot = float(((prompted - prompted.mean()) ** 2).sum())
    return 1.0 - ss_res / max(ss_tot, 1e-12)


def prompt_alignment(
    opt: LearnedOptimizer,
    theta: torch.Tensor,
    n_prompts: int = 20,
    achieved_metric: str | None = None,
    task: Task | None = None,
    **step_kw,
) -> dict:
    """G.pt's prompt alignment: for each network in ``theta`` ``(N, D)``, ``n_prompts`` prompts evenly
    spaced between the model's best prompt and the network's starting metric; one
    :meth:`LearnedOptimizer.step` per prompt (``step_kw``: sampler, guidance, samples, generator...);
    R^2 of achieved vs prompted per network, averaged. ``task`` scores the starts and the outputs
    (default: the model's; e.g. ``task.held_out(n)`` for held-out episodes); achieved values are its
    ``achieved_metric`` (default: the conditioning metric) of the outputs."""
    task = task or opt.task
    metric = opt.metric_name
    achieved_metric = achieved_metric or metric
    start = torch.as_tensor(task.evaluate_only(theta, (metric,))[metric], dtype=torch.float32)  # (N,)
    best = opt.best_prompt
    frac = torch.linspace(0, 1, n_prompts)
    prompts = best + frac[None] * (start[:, None] - best)  # (N, P)
    n = len(theta)
    flat = opt.step(
        theta.repeat_interleave(n_prompts, 0),
        prompts.reshape(-1),
        current_loss=start.repeat_interleave(n_prompts),
        **step_kw,
    )  # (N * P, D)
    achieved = task.evaluate_only(flat.cpu(), (achieved_metric,))[achieved_metric].reshape(n, n_prompts)
    p = prompts.numpy()
    # a net that already starts at the best prompt has no prompt range to align over (a lucky
    # CartPole init that already balances for 500 steps, say): it is left out and counted
    degenerate = (start - best).abs().numpy() <= 1e-3 * max(abs(best), 1e-6)
    r2 = np.array([np.nan if degenerate[i] else r_squared(p[i], achieved[i]) for i in range(n)])
    return {
        "r2": float(np.nanmean(r2)) if (~degenerate).any() else float("nan"),
        "r2_per_net": r2.tolist(),
        "nets_excluded": int(degenerate.sum()),
        "prompted": p.tolist(),
        "achieved": achieved.tolist(),
        "start": start.tolist(),
        "metric": metric,
        "achieved_metric": achieved_metric,
    }


def trajectory_alignment(
    conditioning: np.ndarray, achieved: np.ndarray, best: float, n_prompts: int = 10
) -> dict:
    """Prompt alignment that real training of the same inits offers: for each run, ``n_prompts``
    prompts evenly spaced from ``best`` to its first checkpoint's ``conditioning`` metric (as
    :func:`prompt_alignment` spaces them), the run's checkpoint whose ``conditioning`` metric is
    nearest each prompt, and R^2 of those checkpoints' ``achieved`` metric against the prompts,
    averaged over runs. ``conditioning`` and ``achieved`` are ``(N, K)``: N runs' K checkpoints,
    the first their init. A one-step model bound to what training from an init reaches would score
    this; prompts past where a run ends (a narrow net whose init trains badly) pull it below 1."""
    cond, ach = np.asarray(conditioning, float), np.asarray(achieved, float)
    if cond.ndim != 2 or cond.shape != ach.shape or cond.shape[1] < 2 or n_prompts < 2:
        raise GptParamsError(
            f"need (runs, checkpoints) metrics of one shape with >= 2 checkpoints and n_prompts >= 2 "
            f"(got {cond.shape} and {ach.shape}, n_prompts={n_prompts})"
        )
    frac = np.linspace(0, 1, n_prompts)
    prompts = best + frac[None] * (cond[:, :1] - best)  # (N, P)
    k = np.abs(np.nan_to_num(cond, nan=np.inf)[:, None, :] - prompts[:, :, None]).argmin(2)  # (N, P)
    got = np.take_along_axis(ach, k, axis=1)  # (N, P)
    degenerate = np.abs(cond[:, 0] - best) <= 1e-3 * max(abs(best), 1e-6)  # no prompt range (as above)
    r2 = np.array(
        [np.nan if d else r_squared(p, g) for p, g, d in zip(prompts, got, degenerate, strict=True)]
    )
    return {
        "r2": float(np.nanmean(r2)) if (~degenerate).any() else float("nan"),
        "r2_per_run": r2.tolist(),
        "runs_excluded": int(degenerate.sum()),
    }


@dataclass
class OneStepResult:
    """One model's one step from unseen inits against its task's gradient baseline (medians over nets)."""

    model: str
    task: str
    metric: str  # what is reported: test_loss, test_error or return_mean (held-out episodes)
    nets: int
    start: float
    prompt: float
    achieved: float
    baseline: Baseline = field(repr=False)
    step_seconds: float  # one G.pt step per net, measuring the current metric included
    alignment: dict = field(repr=False)

    @property
    def baseline_steps(self) -> float:
        """Median gradient steps to match each net's one-step score (inf when most never did)."""
        return float(np.median(self.baseline.steps))

    @property
    def baseline_matched(self) -> float:
        return float(np.isfinite(self.baseline.steps).mean())


def one_step_vs_gradient(
    name: str,
    opt: LearnedOptimizer,
    theta0: torch.Tensor,
    cfg: BaselineConfig,
    prompts: int = 10,
    sampler_steps: int = 5,
) -> OneStepResult:
    """One step from ``theta0`` ``(N, D)`` prompted for the model's best metric (its default guidance
    and candidates), scored on held-out data (``Task.score_held_out``), against the task's gradient
    baseline from the same inits (``Task.gradient_baseline``), with G.pt's prompt alignment
    (``prompts`` per net, scored by the held-out version of the conditioning metric)."""
    task = opt.task

    def step(theta: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(cfg.seed)
        return opt.step(theta, opt.best_prompt, num_inference_steps=sampler_steps, generator=g)

    step(theta0[:1])  # warm-up
    t0 = time.perf_counter()
    new = step(theta0)
    seconds = (time.perf_counter() - t0) / len(theta0)
    metric, start = task.score_held_out(theta0, opt.metric_name, cfg)
    _, achieved = task.score_held_out(new, opt.metric_name, cfg)
    baseline = task.gradient_baseline(theta0, metric, achieved, cfg)
    align = prompt_alignment(
        opt,
        theta0,
        n_prompts=prompts,
        achieved_metric=task.held_out_metric(opt.metric_name),
        num_inference_steps=sampler_steps,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    return OneStepResult(
        model=name,
        task=task.name,
        metric=metric,
        nets=len(theta0),
        start=float(np.median(start)),
        prompt=opt.best_prompt,
        achieved=float(np.median(achieved)),
        baseline=baseline,
        step_seconds=seconds,
        alignment=align,
    )


def held_rows(zoo: Zoo, task: Task, split: str) -> np.ndarray | None:
    """Rows of ``zoo``'s ``split`` runs whose networks are ``task``'s architecture, in zoo order; ``None``
    when ``zoo`` is a mixed zoo of the task's family that never held that member. A
    :class:`~gpt_params.errors.ZooError` when ``zoo`` holds another task or another single member."""
    if not zoo.mixed:
        zoo.require_task(task)
        return zoo.runs(split)
    if zoo.task != task.name:
        raise ZooError(f"zoo {str(zoo.path)!r} is a {zoo.label!r} zoo; the model is for {task.name!r}")
    held = [m for m, o in enumerate(zoo.member_options) if o == task.options]
    return zoo.runs_of_member(held[0], split) if held else None


def bind_member(
    opt: LearnedOptimizer, zoo: Zoo, hidden: tuple[int, ...] | None, data_dir: str | None = None
) -> LearnedOptimizer:
    """``opt`` bound to the architecture it is evaluated on: a family model to member ``hidden``, else
    to the member a single-architecture ``zoo`` holds; a one-architecture model as it is (and a
    :class:`GptParamsError` if ``hidden`` names a member all the same)."""
    if not opt.family:
        if hidden is not None:
            raise GptParamsError(f"--hidden {hidden}: the model serves one architecture, {opt.task.label}")
        return opt
    if hidden is None and zoo.mixed:
        raise GptParamsError(f"{zoo.label}: name the member to evaluate with --hidden")
    member = opt.task.member(hidden) if hidden is not None else zoo.make_task(data_dir)
    return LearnedOptimizer(opt.exported, member)


def load_unseen(
    model: str,
    zoo_path: str,
    nets: int,
    split: str = "test",
    device: str | None = None,
    data_dir: str | None = None,
    hidden: tuple[int, ...] | None = None,
) -> tuple[LearnedOptimizer, Zoo, np.ndarray, torch.Tensor]:
    """The model, the zoo, the first ``nets`` rows of ``split`` (runs no model trained on the zoo saw)
    and their inits ``(N, D)``; a :class:`~gpt_params.errors.GptParamsError` for a missing model, a
    zoo of another task or too few runs. The task reads its data from ``data_dir``, else from the
    directory the zoo was harvested from (if any).

    A family model is bound to one member: ``hidden``, else the member a single-architecture zoo
    holds. A member a mixed zoo holds gives its ``split`` runs' inits; one it never held (a held-out
    architecture) gives fresh inits (``Task.unseen_inits``) and no rows."""
    zoo = Zoo(zoo_path)
    data_dir = data_dir or zoo.harvest_config.get("data_dir")
    opt = LearnedOptimizer.from_pretrained(
        model, device=device, **({"data_dir": data_dir} if data_dir else {})
    )
    opt = bind_member(opt, zoo, hidden, data_dir)
    if split not in ("test", "val"):
        raise GptParamsError(f"unseen runs come from the 'test' or 'val' split, not {split!r}")
    rows = held_rows(zoo, opt.task, split)
    if rows is None and nets >= 1:  # an architecture the zoo never held: fresh inits
        return opt, zoo, np.zeros(0, np.int64), opt.task.unseen_inits(nets)
    if nets < 1 or len(rows) == 0:
        held = 0 if rows is None else len(rows)
        raise GptParamsError(
            f"{str(zoo.path)!r} has {held} {split}-split runs of {opt.task.label}; asked for {nets}"
        )
    rows = rows[:nets]
    theta0 = torch.stack([torch.from_numpy(zoo.checkpoint(int(r), 0)) for r in rows])  # (N, D)
    return opt, zoo, rows, theta0
