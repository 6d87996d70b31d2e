"""Numbers about one-step updates: sampling in raw parameter space and G.pt's prompt alignment."""

from __future__ import annotations

import numpy as np
import torch

from gpt_params.critic import NO_CRITIC
from gpt_params.diffusion import sample
from gpt_params.errors import GptParamsError
from gpt_params.export import Exported
from gpt_params.normalize import normalize_metric
from gpt_params.tasks.base import Task


def one_step(
    exp: Exported,
    theta: torch.Tensor,
    start_metric: torch.Tensor,
    prompt: torch.Tensor,
    num_inference_steps: int = 5,
    guidance_scale: float = 1.0,
    sampler: str = "ddim",
    generator: torch.Generator | None = None,
    clamp: bool = True,
) -> torch.Tensor:
    """One G.pt update of raw parameters ``theta`` ``(B, D)`` given raw metrics ``(B,)``; returns ``(B, D)``."""
    metric, task = exp.meta["metric"], exp.meta["task"]
    device = next(exp.model.parameters()).device
    z = exp.normalizer.normalize(theta.to(device).float())
    out = sample(
        exp.model,
        exp.diffusion,
        z,
        normalize_metric(start_metric.to(device).float(), metric, task),
        normalize_metric(prompt.to(device).float(), metric, task),
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        sampler=sampler,
        generator=generator,
        clamp=exp.clamp if clamp else None,
    )
    return exp.normalizer.denormalize(out).cpu()


def critic_select(
    exp: Exported, candidates: torch.Tensor, prompt: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Of ``candidates`` ``(B, k, D)`` (raw), the one per network whose metric as the export's critic
    predicts it is nearest ``prompt`` ``(B,)``: returns it ``(B, D)`` and the predictions ``(B, k)``.
    Nothing is evaluated: no data, no rollouts."""
    if exp.critic is None:
        raise GptParamsError(NO_CRITIC)
    b, k, d = candidates.shape
    pred = exp.critic.predict(candidates.reshape(b * k, d)).reshape(b, k)
    pick = (pred - prompt.reshape(b, 1).to(pred)).abs().argmin(-1)  # (B,)
    return candidates[torch.arange(b), pick], pred


def one_step_critic(
    exp: Exported,
    theta: torch.Tensor,
    start_metric: torch.Tensor,
    prompt: torch.Tensor,
    num_samples: int = 1,
    **sample_kw,
) -> torch.Tensor:
    """:func:`one_step` with ``num_samples`` candidates per network, the critic's choice kept
    (:func:`critic_select`); plain :func:`one_step` when ``num_samples`` is 1."""
    if num_samples == 1:
        return one_step(exp, theta, start_metric, prompt, **sample_kw)
    b = len(theta)
    out = one_step(
        exp,
        theta.repeat_interleave(num_samples, 0),
        start_metric.repeat_interleave(num_samples),
        prompt.repeat_interleave(num_samples),
        **sample_kw,
    ).reshape(b, num_samples, -1)  # (B, k, D)
    return critic_select(exp, out, prompt)[0]


def achieved_metric(metric: str, kind: str) -> str:
    """What outputs of a model conditioned on ``metric`` are scored by: the test split's version of it for
    supervised tasks (``val_loss`` -> ``test_loss``), the metric itself (a return) for RL tasks."""
    if kind != "supervised":
        return metric
    return "test_" + metric.split("_", 1)[1]


def r_squared(prompted: np.ndarray, achieved: np.ndarray) -> float:
    """G.pt's prompt alignment score: 1 - sum((achieved - prompted)^2) / sum((prompted - mean)^2).

    The prompts are the targets and the achieved metrics the predictions, so the denominator is the
    spread of the prompts: 1 is perfect, 0 is as good as always reaching the mean prompt."""
    ss_res = float(((achieved - prompted) ** 2).sum())
    ss_tot = float(((prompted - prompted.mean()) ** 2).sum())
    return 1.0 - ss_res / max(ss_tot, 1e-12)


def prompt_alignment(
    exp: Exported,
    task: Task,
    theta: torch.Tensor,
    n_prompts: int = 20,
    achieved_metric: str | None = None,
    best_prompt: float | None = None,
    num_samples: int = 1,
    **sample_kw,
) -> dict:
    """G.pt's prompt alignment: for each network in ``theta`` ``(N, D)``, ``n_prompts`` prompts evenly
    spaced between the best prompt and its starting metric; R^2 of achieved vs prompted per network,
    averaged. Achieved values are ``achieved_metric`` (default: the conditioning metric) of the outputs.
    ``num_samples`` > 1 draws that many candidates per prompt and keeps the critic's choice."""
    metric = exp.meta["metric"]
    achieved_metric = achieved_metric or metric
    start = torch.as_tensor(task.evaluate(theta)[metric])  # (N,)
    best = exp.meta["best_prompt"] if best_prompt is None else best_prompt
    frac = torch.linspace(0, 1, n_prompts)
    prompts = best + frac[None] * (start[:, None] - best)  # (N, P)
    n = len(theta)
    flat = one_step_critic(
        exp,
        theta.repeat_interleave(n_prompts, 0),
        start.repeat_interleave(n_prompts),
        prompts.reshape(-1),
        num_samples,
        **sample_kw,
    )
    achieved = task.evaluate(flat)[achieved_metric].reshape(n, n_prompts)
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
