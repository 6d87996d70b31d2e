"""Gradient-descent baselines for one-step updates: Adam and SGD from the same initialisations.

Many networks train at once as one batched program (every optimizer used is elementwise, so
stacking the networks' tensors is exactly training each on its own), all on the same minibatch
sequence; their validation and test metrics are recorded every ``eval_every`` steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gpt_params.errors import GptParamsError
from gpt_params.tasks.supervised import SupervisedTask

OPTIMIZERS = {
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
}


@dataclass
class Curve:
    """Metrics ``{name: (E, N)}`` of N networks at evaluation steps ``steps`` ``(E,)``."""

    optimizer: str
    lr: float
    steps: np.ndarray
    metrics: dict[str, np.ndarray]


def train_curves(
    task: SupervisedTask,
    theta0: torch.Tensor,
    optimizer: str,
    lr: float,
    max_steps: int,
    eval_every: int = 5,
    batch_size: int = 128,
    seed: int = 0,
    stop_at: tuple[str, np.ndarray] | None = None,
) -> Curve:
    """Train every network in ``theta0`` ``(N, D)`` for ``max_steps`` minibatch steps, or, with
    ``stop_at=(metric, target (N,))``, until every network has been recorded at or below its target."""
    if task.kind != "supervised":
        raise GptParamsError(f"gradient baselines need a supervised task, got {task.name!r} ({task.kind})")
    if optimizer not in OPTIMIZERS:
        raise GptParamsError(f"unknown optimizer {optimizer!r}; expected one of {sorted(OPTIMIZERS)}")
    params = {k: v.clone().requires_grad_(True) for k, v in task.layout.unflatten(theta0.float()).items()}
    opt = OPTIMIZERS[optimizer](list(params.values()), lr)
    x, y = task.data.x["train"], task.data.y["train"]
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=g)
    pos, n = 0, len(theta0)
    steps, records = [], []

    def record(step: int) -> None:
        with torch.no_grad():
            theta = torch.cat([params[k].reshape(n, -1) for k in task.layout.names], 1)
            records.append(task.evaluate(theta, splits=("val", "test")))
        steps.append(step)

    record(0)
    for step in range(1, max_steps + 1):
        if pos + batch_size > len(y):
            order, pos = torch.randperm(len(y), generator=g), 0
        idx = order[pos : pos + batch_size]
        pos += batch_size
        logits = task.logits(params, x[idx], shared=True)  # (N, C, b)
        loss = F.cross_entropy(logits, y[idx].expand(n, -1), reduction="none").mean(1).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % eval_every == 0 or step == max_steps:
            record(step)
            if stop_at is not None:
                hit = np.stack([r[stop_at[0]] for r in records]) <= stop_at[1][None]  # (E, N)
                if hit.any(0).all():
                    break
    metrics = {k: np.stack([r[k] for r in records]) for k in records[0]}
    return Curve(optimizer, lr, np.array(steps), metrics)


def steps_to_reach(curve: Curve, metric: str, target: np.ndarray) -> np.ndarray:
    """Per network, the first recorded step whose ``metric`` is at or below ``target`` ``(N,)``; inf if none."""
    hit = curve.metrics[metric] <= target[None]  # (E, N)
    first = np.where(hit.any(0), hit.argmax(0), -1)
    return np.where(first >= 0, curve.steps[np.maximum(first, 0)], np.inf).astype(float)


def seconds_per_step(
    task: SupervisedTask, optimizer: str, lr: float, batch_size: int = 128, steps: int = 200
) -> float:
    """Wall time of one step of the standard one-network loop (``nn.Module``, ``torch.optim``, in-memory data)."""
    net = task.build(0)
    opt = OPTIMIZERS[optimizer](net.parameters(), lr)
    x, y = task.data.x["train"], task.data.y["train"]
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, len(y), (batch_size,), generator=g) for _ in range(steps)]
    for i, idx in enumerate([*batches[:10], *batches]):
        if i == 10:
            t0 = time.perf_counter()
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


def ppo_steps_to_reach(
    task,
    theta0: torch.Tensor,
    target: np.ndarray,
    initial_states: np.ndarray,
    max_timesteps: int = 40_000,
    seed: int = 0,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The RL counterpart of :func:`steps_to_reach`: for each CartPole actor in ``theta0`` ``(N, D)``,
    stable-baselines3 PPO with rl-zoo's tuned CartPole hyperparameters (Adam, lr 1e-3) starting from
    that actor, scored after every PPO update by deterministic rollouts from ``initial_states`` and
    stopped once its mean return reaches ``target[i]``.

    Returns the Adam steps taken by then per network ``(N,)`` (updates x epochs x minibatches; inf
    when ``max_timesteps`` ran out first) and each network's mean return after every update."""
    from gpt_params.recipes import PPORecipe

    if task.kind != "rl":
        raise GptParamsError(f"PPO baselines need an RL task, got {task.name!r} ({task.kind})")
    recipe = PPORecipe(total_timesteps=max_timesteps)
    adam_per_update = ppo_adam_steps_per_update(recipe)
    steps, histories = [], []
    for i, theta in enumerate(theta0.float()):
        history = _ppo_until(task, theta, float(target[i]), initial_states, recipe, seed + i)
        reached = np.flatnonzero(history >= target[i])
        steps.append(float(reached[0] * adam_per_update) if len(reached) else np.inf)
        histories.append(history)
    return np.asarray(steps), histories


def ppo_adam_steps_per_update(recipe) -> int:
    """Adam steps in one PPO update: epochs x minibatches of the rollout buffer."""
    return recipe.n_epochs * max(1, recipe.n_steps * recipe.n_envs // recipe.batch_size)


def _ppo_until(task, theta: torch.Tensor, target: float, states: np.ndarray, recipe, seed: int) -> np.ndarray:
    """Mean return of one actor before and after each PPO update, until it reaches ``target``."""
    from stable_baselines3.common.callbacks import BaseCallback

    from gpt_params.harvest_rl import make_ppo

    model = make_ppo(recipe, seed)
    task.layout.load_into(model.policy, theta)

    def score() -> float:
        vec = task.layout.flatten(model.policy.state_dict())[None]  # (1, D)
        return float(task.episode_returns(vec, states).mean())

    history = [score()]

    class Stop(BaseCallback):
        reached = history[0] >= target

        def _on_step(self) -> bool:
            return not self.reached  # False ends learn()

        def _on_rollout_start(self) -> None:  # after each update (and once before the first)
            if self.num_timesteps > 0:
                history.append(score())
            self.reached = history[-1] >= target

    if history[0] < target:
        model.learn(total_timesteps=recipe.total_timesteps, callback=Stop())
        if history[-1] < target:
            history.append(score())  # the policy after the last update
    return np.asarray(history)
