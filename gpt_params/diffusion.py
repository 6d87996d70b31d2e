"""A thin layer over diffusers' schedulers: the training loss and the sampling loop with
classifier-free guidance. The forward process, its coefficients and every sampler step are
diffusers' (``DDPMScheduler`` / ``DDIMScheduler`` with ``prediction_type="sample"``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from torch import nn

SAMPLERS = ("ddim", "ddpm")


@dataclass
class DiffusionConfig:
    """The noising process and how the prompt is dropped in training."""

    num_train_timesteps: int = 1000  # DDPM steps of the forward process
    beta_schedule: str = "squaredcos_cap_v2"  # diffusers beta schedule name
    prompt_dropout: float = 0.1  # probability of training without the prompt (for guidance)

    def to_dict(self) -> dict:
        return asdict(self)


def train_scheduler(cfg: DiffusionConfig) -> DDPMScheduler:
    # clip_sample=False: parameters are not images in [-1, 1]; the model predicts the sample itself.
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type="sample",
        clip_sample=False,
    )


def sampling_scheduler(cfg: DiffusionConfig, sampler: str = "ddim"):
    base = train_scheduler(cfg)
    if sampler == "ddim":
        return DDIMScheduler.from_config(base.config, timestep_spacing="trailing", set_alpha_to_one=True)
    if sampler == "ddpm":
        return DDPMScheduler.from_config(base.config, timestep_spacing="trailing")
    raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")


def role_balance(role_id: torch.Tensor) -> torch.Tensor:
    """Coordinate weights ``(D,)`` (mean 1) under which each tensor role of a family member weighs the
    same in the loss, whatever its size: 10 output biases as much as 784 x 256 first-layer weights."""
    _, inverse, counts = role_id.unique(return_inverse=True, return_counts=True)
    return (len(role_id) / (len(counts) * counts.float()))[inverse]


OUTPUT_SCHEDULES = ("signal", "flat")  # the function-space term's weight over timesteps (diffusion_loss)


def diffusion_loss(
    model: nn.Module,
    scheduler: DDPMScheduler,
    theta_start: torch.Tensor,
    theta_future: torch.Tensor,
    start_metric: torch.Tensor,
    prompt: torch.Tensor,
    prompt_dropout: float,
    generator: torch.Generator | None = None,
    output_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    output_weight: float = 0.0,
    coord_weight: torch.Tensor | None = None,
    t_power: float = 1.0,
    output_schedule: str = "signal",
) -> tuple[torch.Tensor, dict[str, float]]:
    """MSE between the model's x0-prediction and ``theta_future`` ``(B, D)`` at random timesteps,
    each coordinate weighted by ``coord_weight`` ``(D,)`` (mean 1) where given. Timesteps are drawn as
    ``floor(T * u ** (1 / t_power))`` for uniform ``u``: uniform at 1, and at ``t_power`` > 1 weighted
    towards high noise (density proportional to ``t ** (t_power - 1)``), where a one-step sample's first
    x0-prediction is made from the start and the prompt alone.

    With ``output_loss`` and ``output_weight`` > 0 a function-space term is added:
    ``output_weight * mean_b(w_t[b] * output_loss(pred, theta_future)[b])``, where
    ``output_loss`` gives a per-network ``(B,)`` distance between what the predicted and the true
    networks compute. ``output_schedule`` sets ``w_t``: ``"signal"``, the signal fraction
    ``alpha_bar_t``, applies the term where the target is determined by the noisy input and not at
    pure noise, whose best x0-prediction is a posterior mean; ``"flat"`` (``w_t = 1``) applies it at
    every timestep, the first x0-prediction of a sample (at pure noise, from the start and the prompt
    alone) included, so that prediction is pulled toward what the future networks compute on average
    rather than toward their average parameters alone.
    Returns the loss and its parts (``param``, ``output``) as floats for logging.
    """
    if t_power <= 0:
        raise ValueError(f"t_power must be positive, got {t_power}")
    if output_schedule not in OUTPUT_SCHEDULES:
        raise ValueError(f"output_schedule {output_schedule!r}; expected one of {OUTPUT_SCHEDULES}")
    b = theta_future.shape[0]
    device = theta_future.device
    n_t = scheduler.config.num_train_timesteps
    if t_power == 1.0:
        t = torch.randint(0, n_t, (b,), generator=generator, device="cpu")
    else:
        u = torch.rand(b, generator=generator, device="cpu")
        t = (n_t * u.pow(1.0 / t_power)).long().clamp_(max=n_t - 1)
    t = t.to(device)
    noise = torch.randn(theta_future.shape, generator=generator, device="cpu").to(device)
    noisy = scheduler.add_noise(theta_future, noise, t)
    keep = torch.rand(b, generator=generator, device="cpu").to(device) >= prompt_dropout
    pred = model(noisy, t, theta_start, start_metric, prompt, keep)
    if coord_weight is None:
        loss = F.mse_loss(pred, theta_future)
    else:
        loss = ((pred - theta_future).pow(2) * coord_weight).mean()
    parts = {"param": loss.item()}
    if output_loss is not None and output_weight > 0:
        dist = output_loss(pred, theta_future)  # (B,)
        if output_schedule == "signal":
            dist = scheduler.alphas_cumprod.to(device)[t] * dist
        out = dist.mean()
        parts["output"] = out.item()
        loss = loss + output_weight * out
    return loss, parts


@torch.no_grad()
def sample(
    model: nn.Module,
    cfg: DiffusionConfig,
    theta_start: torch.Tensor,
    start_metric: torch.Tensor,
    prompt: torch.Tensor,
    num_inference_steps: int = 5,
    guidance_scale: float = 1.0,
    sampler: str = "ddim",
    generator: torch.Generator | None = None,
    clamp: tuple[torch.Tensor, torch.Tensor] | None = None,
    extra: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Draw ``theta_future`` ``(B, D)`` (normalised) for each start and prompt.

    ``extra``: more per-network inputs ``(B, ...)`` passed to ``model`` by keyword (a probe gradient).

    ``guidance_scale`` > 1 applies classifier-free guidance: x0 = uncond + s * (cond - uncond).
    ``clamp`` = (low, high) ``(D,)`` bounds each x0-prediction to the zoo's parameter range.
    """
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be positive, got {num_inference_steps}")
    sched = sampling_scheduler(cfg, sampler)
    sched.set_timesteps(num_inference_steps)
    b = theta_start.shape[0]
    device = theta_start.device
    # noise drawn network by network: a network's sample does not depend on the batch size after it
    x = torch.stack([torch.randn(theta_start.shape[1:], generator=generator) for _ in range(b)]).to(device)
    on = torch.ones(b, dtype=torch.bool, device=device)
    extra = extra or {}
    doubled = {k: torch.cat([v, v]) for k, v in extra.items()} if guidance_scale != 1.0 else {}
    for t in sched.timesteps:
        tt = torch.full((b,), int(t), device=device)
        if guidance_scale == 1.0:
            x0 = model(x, tt, theta_start, start_metric, prompt, on, **extra)
        else:
            both = model(
                torch.cat([x, x]),
                torch.cat([tt, tt]),
                torch.cat([theta_start, theta_start]),
                torch.cat([start_metric, start_metric]),
                torch.cat([prompt, prompt]),
                torch.cat([on, ~on]),
                **doubled,
            )
            cond, uncond = both.chunk(2)
            x0 = uncond + guidance_scale * (cond - uncond)
        if clamp is not None:
            x0 = torch.maximum(torch.minimum(x0, clamp[1]), clamp[0])
        x = sched.step(x0, t, x, generator=generator).prev_sample
    return x
