"""The quickstart measurement behind ``gpt-params demo`` / ``make demo``: every shipped model applied
to unseen random-init networks of its task, one G.pt step prompted for the model's best metric,
compared with gradient descent from the same inits.

Supervised tasks are scored on the test split (the models were conditioned on validation metrics)
and matched by Adam (lr 1e-3, batch 128); CartPole policies are scored by deterministic rollouts on
held-out episode seeds and matched by stable-baselines3 PPO (Adam inside) started from the same actor.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from gpt_params.baselines import ppo_adam_steps_per_update, ppo_steps_to_reach, steps_to_reach, train_curves
from gpt_params.evaluate import achieved_metric, prompt_alignment
from gpt_params.harvest_rl import n_updates
from gpt_params.optimizer import LearnedOptimizer
from gpt_params.recipes import PPORecipe
from gpt_params.tasks.cartpole import fresh_initial_states


@dataclass
class DemoConfig:
    nets: int = 16  # unseen random inits per supervised model
    rl_nets: int = 8  # unseen random inits per RL model (each PPO baseline run costs seconds)
    prompts: int = 10  # prompts per net in the desired-vs-observed sweep
    sampler_steps: int = 5
    seed: int = 0
    adam_lr: float = 1e-3
    adam_max_steps: int = 3000
    adam_eval_every: int = 10
    ppo_max_timesteps: int = 40_000
    episodes: int = 20  # held-out rollout episodes per policy


@dataclass
class DemoResult:
    """One shipped model's quickstart numbers (medians over ``nets``)."""

    model: str
    task: str
    metric: str  # what is reported: test_loss, test_error or return_mean (held-out episodes)
    nets: int
    start: float
    prompt: float
    achieved: float
    baseline: str
    baseline_steps: float  # median gradient (Adam) steps to match each net's achieved metric; inf if not
    baseline_matched: float  # fraction of nets the baseline matched within its budget
    baseline_max_steps: int
    step_seconds: float  # one G.pt step per net, measuring the current metric included
    alignment: dict = field(repr=False)
    curves: dict = field(repr=False)  # label -> (steps (E,), metric (E,)) for the one-step-vs-gradient plot


def run_model(name: str, cfg: DemoConfig) -> DemoResult:
    opt = LearnedOptimizer.from_pretrained(name)
    task = opt.task
    rl = task.kind == "rl"
    theta0 = opt.task.unseen_inits(cfg.rl_nets if rl else cfg.nets)  # (N, D)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt.step(theta0[:1], opt.best_prompt, num_inference_steps=cfg.sampler_steps, generator=gen)  # warm-up
    t0 = time.perf_counter()
    new = opt.step(
        theta0,
        opt.best_prompt,
        num_inference_steps=cfg.sampler_steps,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    seconds = (time.perf_counter() - t0) / len(theta0)
    if rl:
        metric = "return_mean"
        states = fresh_initial_states(cfg.episodes)
        start = task.episode_returns(theta0, states).mean(1)  # (N,)
        achieved = task.episode_returns(new, states).mean(1)
        steps, histories = ppo_steps_to_reach(
            task, theta0, achieved, states, cfg.ppo_max_timesteps, seed=cfg.seed
        )
        recipe = PPORecipe(total_timesteps=cfg.ppo_max_timesteps)
        per_update = ppo_adam_steps_per_update(recipe)
        curves = {
            f"PPO from the same init (net {i})": (np.arange(len(h)) * per_update, h)
            for i, h in enumerate(histories)
        }
        baseline = "PPO (Adam lr 1e-3), rl-zoo CartPole settings"
        budget = n_updates(recipe) * per_update
    else:
        metric = achieved_metric(opt.metric_name, task.kind)
        start = task.evaluate(theta0, splits=("test",))[metric]
        achieved = task.evaluate(new, splits=("test",))[metric]
        curve = train_curves(
            task, theta0, "adam", cfg.adam_lr, cfg.adam_max_steps, cfg.adam_eval_every, seed=cfg.seed,
            stop_at=(metric, achieved),
        )  # fmt: skip
        steps = steps_to_reach(curve, metric, achieved)
        curves = {f"Adam, lr {cfg.adam_lr:g}": (curve.steps, np.median(curve.metrics[metric], 1))}
        baseline, budget = f"Adam lr {cfg.adam_lr:g}, batch 128", cfg.adam_max_steps
    align = prompt_alignment(
        opt.exported,
        task,
        theta0,
        n_prompts=cfg.prompts,
        achieved_metric=None if rl else metric,
        num_inference_steps=cfg.sampler_steps,
        guidance_scale=opt.default_guidance,
        # the alignment sweep can choose among candidates only by the critic
        num_samples=opt.default_samples if opt.default_combine == "critic" else 1,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    return DemoResult(
        model=str(name),
        task=task.name,
        metric=metric,
        nets=len(theta0),
        start=float(np.median(start)),
        prompt=opt.best_prompt,
        achieved=float(np.median(achieved)),
        baseline=baseline,
        baseline_steps=float(np.median(steps)),
        baseline_matched=float(np.isfinite(steps).mean()),
        baseline_max_steps=int(budget),
        step_seconds=seconds,
        alignment=align,
        curves=curves,
    )


def figures(results: list[DemoResult]):
    """(desired-vs-observed figure, one-step-vs-gradient figure), one panel per model."""
    from gpt_params.plots import draw_alignment, draw_vs_gradient, panel_grid

    fig_a, axes = panel_grid(len(results))
    for ax, r in zip(axes, results, strict=True):
        draw_alignment(ax, r.alignment, f"{r.model}: one step")
    fig_b, axes = panel_grid(len(results))
    for ax, r in zip(axes, results, strict=True):
        draw_vs_gradient(
            ax,
            r.curves,
            r.achieved,
            f"one G.pt step ({r.step_seconds * 1e3:.0f} ms/net)",
            r.metric,
            xlabel="Adam steps inside PPO" if r.task == "cartpole" else "Adam steps (batch 128)",
        )
        ax.set_title(f"{r.model}: {r.nets} unseen inits", fontsize=10)
    return fig_a, fig_b
