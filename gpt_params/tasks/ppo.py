"""stable-baselines3 PPO on CartPole: harvesting policy checkpoints (a callback saves the actor, then
all checkpoints of a cohort are scored together in one vectorised rollout) and the PPO baseline
one-step updates are compared with."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from gpt_params.layout import ParamLayout
from gpt_params.recipes import PPORecipe, checkpoint_steps, ppo_recipe, run_seed
from gpt_params.tasks.base import Task, TrainedCohort


def make_ppo(recipe: PPORecipe, seed: int, hidden: int = 32):
    """An SB3 PPO on ``CartPole-v1`` whose actor is the cartpole task's architecture."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.logger import Logger

    env = make_vec_env("CartPole-v1", n_envs=recipe.n_envs, seed=seed)
    model = PPO(
        "MlpPolicy",
        env,
        learning_rate=recipe.learning_rate,
        n_steps=recipe.n_steps,
        batch_size=recipe.batch_size,
        n_epochs=recipe.n_epochs,
        gamma=recipe.gamma,
        gae_lambda=recipe.gae_lambda,
        clip_range=recipe.clip_range,
        ent_coef=recipe.ent_coef,
        policy_kwargs={
            "net_arch": {"pi": [hidden, hidden], "vf": [hidden, hidden]},
            "activation_fn": nn.Tanh,
        },
        seed=seed,
        device="cpu",
        verbose=0,
    )
    # SB3's default logger makes an empty tempdir/SB3-<time> folder on every learn(): one per run
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


def n_updates(recipe: PPORecipe) -> int:
    """PPO iterations SB3 runs for ``total_timesteps`` (it stops once the count is reached)."""
    per = recipe.n_steps * recipe.n_envs
    return -(-recipe.total_timesteps // per)


def train_ppo_run(
    seed: int, recipe: PPORecipe, n_ckpts: int, layout_json: str, spacing: str = "log"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train one PPO run; returns actor checkpoints ``(K, D)``, their env timesteps ``(K,)`` and the
    training return (mean of SB3's last <= 100 training episodes) at each ``(K,)``.

    Checkpoint u holds the actor after u PPO updates: taken at the end of rollout u (before the
    update), whose episodes it produced, and once more after the last update.
    """
    from stable_baselines3.common.callbacks import BaseCallback

    torch.set_num_threads(1)
    layout = ParamLayout.from_json(layout_json)
    total = n_updates(recipe)
    keep = set(checkpoint_steps(total, n_ckpts, spacing).tolist())
    model = make_ppo(recipe, seed)
    saved: dict[int, tuple[np.ndarray, float]] = {}

    def snapshot() -> tuple[np.ndarray, float]:
        buf = model.ep_info_buffer
        ret = float(np.mean([e["r"] for e in buf])) if buf else float("nan")
        return layout.flatten(model.policy.state_dict()).numpy().copy(), ret

    class Checkpointer(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.rollouts = 0

        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            if self.rollouts in keep:
                saved[self.rollouts] = snapshot()
            self.rollouts += 1

    model.learn(total_timesteps=recipe.total_timesteps, callback=Checkpointer())
    saved[total] = snapshot()
    updates = sorted(keep)
    params = np.stack([saved[u][0] for u in updates])
    train_return = np.array([saved[u][1] for u in updates], np.float32)
    timesteps = np.array(updates, np.int64) * recipe.n_steps * recipe.n_envs
    return params, timesteps, train_return


def _train_star(args: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return train_ppo_run(*args)


def train_cohort(
    task: Task,
    cfg: Any,
    cohort_id: int,
    run_ids: np.ndarray,
    on_step: Callable[[int, int], None] | None = None,
) -> TrainedCohort:
    """Train a cohort of PPO runs (``cfg.workers`` processes) and score every checkpoint."""
    recipes = [
        ppo_recipe(cfg.preset, np.random.default_rng([cfg.seed, 0xA1, int(r)]), cfg.timesteps)
        for r in run_ids
    ]
    jobs = [
        (run_seed(cfg.seed, int(r)), rec, cfg.ckpts_per_run, task.layout.to_json(), cfg.spacing)
        for r, rec in zip(run_ids, recipes, strict=True)
    ]
    results = []
    if cfg.workers > 1:
        with mp.get_context("spawn").Pool(cfg.workers) as pool:
            for i, res in enumerate(pool.imap(_train_star, jobs)):
                results.append(res)
                if on_step is not None:
                    on_step(i + 1, len(jobs))
    else:
        for i, job in enumerate(jobs):
            results.append(train_ppo_run(*job))
            if on_step is not None:
                on_step(i + 1, len(jobs))
    params = np.stack([r[0] for r in results])  # (R, K, D)
    steps = np.stack([r[1] for r in results])  # (R, K)
    R, K, D = params.shape
    scores = task.evaluate(torch.from_numpy(params.reshape(R * K, D)))
    metrics = {m: v.reshape(R, K).astype(np.float32) for m, v in scores.items()}
    metrics["train_return"] = np.stack([r[2] for r in results])
    return TrainedCohort([r.to_dict() for r in recipes], steps, params, metrics)


def ppo_steps_to_reach(
    task,
    theta0: torch.Tensor,
    target: np.ndarray,
    initial_states: np.ndarray,
    max_timesteps: int = 40_000,
    seed: int = 0,
    workers: int = 1,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The RL counterpart of :func:`steps_to_reach`: for each CartPole actor in ``theta0`` ``(N, D)``,
    stable-baselines3 PPO with rl-zoo's tuned CartPole hyperparameters (Adam, lr 1e-3) starting from
    that actor, scored after every PPO update by deterministic rollouts from ``initial_states`` and
    stopped once its mean return reaches ``target[i]``. With ``workers`` > 1 the actors train in that
    many processes side by side, one thread each (every actor keeps its own seed, ``seed + i``).

    Returns the Adam steps taken by then per network ``(N,)`` (updates x epochs x minibatches; inf
    when ``max_timesteps`` ran out first) and each network's mean return after every update."""
    recipe = PPORecipe(total_timesteps=max_timesteps)
    adam_per_update = ppo_adam_steps_per_update(recipe)
    jobs = [
        (task, theta, float(target[i]), initial_states, recipe, seed + i)
        for i, theta in enumerate(theta0.float())
    ]
    if workers > 1 and len(jobs) > 1:
        # one thread each: SB3's small networks gain nothing from more, and the workers share the cores
        ctx = mp.get_context("spawn")
        with ctx.Pool(min(workers, len(jobs)), initializer=torch.set_num_threads, initargs=(1,)) as pool:
            histories = pool.map(_ppo_until_star, jobs, chunksize=1)
    else:
        histories = [_ppo_until_star(job) for job in jobs]
    steps = []
    for i, history in enumerate(histories):
        reached = np.flatnonzero(history >= target[i])
        steps.append(float(reached[0] * adam_per_update) if len(reached) else np.inf)
    return np.asarray(steps), histories


def _ppo_until_star(args: tuple) -> np.ndarray:
    return _ppo_until(*args)


def ppo_adam_steps_per_update(recipe) -> int:
    """Adam steps in one PPO update: epochs x minibatches of the rollout buffer."""
    return recipe.n_epochs * max(1, recipe.n_steps * recipe.n_envs // recipe.batch_size)


def _ppo_until(task, theta: torch.Tensor, target: float, states: np.ndarray, recipe, seed: int) -> np.ndarray:
    """Mean return of one actor before and after each PPO update, until it reaches ``target``."""
    from stable_baselines3.common.callbacks import BaseCallback

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
