"""Training recipes the harvester samples runs from.

Supervised presets:

* ``gpt``: G.pt's fixed recipe. SGD with Nesterov momentum 0.9, lr 0.1 with cosine decay to 0,
  weight decay 5e-4, batch 128, 25 epochs. Runs differ only by seed (init and data order).
* ``adam``: one fixed Adam recipe, the optimizer G.pt's updates are compared with: lr 1e-3 with
  cosine decay to 0, no weight decay, batch 128, 25 epochs. Runs differ only by seed.
* ``varied``: each run draws its optimizer and hyperparameters; each cohort (the runs trained
  together) draws one batch size and length, since runs trained in one batched program share those.

  ============  =====================  ===========================================
  optimizer     lr (log-uniform)       other
  ============  =====================  ===========================================
  sgd           [0.01, 0.3]            Nesterov momentum 0.9
  adam          [3e-4, 1e-2]           torch.optim.Adam
  adamw         [3e-4, 1e-2]           decoupled weight decay log-uniform [1e-4, 0.1]
  rmsprop       [1e-4, 3e-3]           torch.optim.RMSprop, alpha 0.99
  lion          [3e-5, 1e-3]           timm.optim.Lion, weight decay x10
  ============  =====================  ===========================================

  Optimizer drawn uniformly. Weight decay (all but adamw): 0 with probability 0.3, else log-uniform
  [1e-5, 1e-3]. Schedule: cosine to 0 or constant, equally likely. Batch size uniform over
  {64, 128, 256}; epochs uniform over {5, 10, 15, 20, 25}.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from gpt_params.errors import GptParamsError, TaskError

SPACINGS = ("log", "linear")  # how a run's checkpoints spread over its steps (``checkpoint_steps``)

SUPERVISED_PRESETS = ("gpt", "adam", "varied")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "lion")
_LR_RANGE = {
    "sgd": (0.01, 0.3),
    "adam": (3e-4, 1e-2),
    "adamw": (3e-4, 1e-2),
    "rmsprop": (1e-4, 3e-3),
    "lion": (3e-5, 1e-3),
}


@dataclass(frozen=True)
class RunRecipe:
    """Per-run optimisation hyperparameters."""

    optimizer: str
    lr: float
    weight_decay: float
    schedule: str  # "cosine" (to 0 over the run) or "constant"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CohortShape:
    """What all runs of one cohort share."""

    batch_size: int
    epochs: int


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def run_recipe(preset: str, rng: np.random.Generator) -> RunRecipe:
    if preset == "gpt":
        return RunRecipe("sgd", 0.1, 5e-4, "cosine")
    if preset == "adam":
        return RunRecipe("adam", 1e-3, 0.0, "cosine")
    if preset == "varied":
        opt = OPTIMIZERS[rng.integers(len(OPTIMIZERS))]
        lr = _log_uniform(rng, *_LR_RANGE[opt])
        if opt == "adamw":
            wd = _log_uniform(rng, 1e-4, 0.1)
        else:
            wd = 0.0 if rng.random() < 0.3 else _log_uniform(rng, 1e-5, 1e-3)
            wd *= 10.0 if opt == "lion" else 1.0
        return RunRecipe(opt, lr, wd, "cosine" if rng.random() < 0.5 else "constant")
    raise TaskError(f"unknown supervised preset {preset!r}; expected one of {SUPERVISED_PRESETS}")


def cohort_shape(preset: str, rng: np.random.Generator) -> CohortShape:
    if preset in ("gpt", "adam"):
        return CohortShape(128, 25)
    if preset == "varied":
        return CohortShape(int(rng.choice([64, 128, 256])), int(rng.choice([5, 10, 15, 20, 25])))
    raise TaskError(f"unknown supervised preset {preset!r}; expected one of {SUPERVISED_PRESETS}")


def make_optimizer(name: str, groups: list[dict]) -> torch.optim.Optimizer:
    """One optimizer over ``groups`` (one param group per run, each with its own lr and weight decay)."""
    if name == "sgd":
        return torch.optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=True, foreach=True)
    if name == "adam":
        return torch.optim.Adam(groups, foreach=True)
    if name == "adamw":
        return torch.optim.AdamW(groups, foreach=True)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, alpha=0.99, foreach=True)
    if name == "lion":
        from timm.optim import Lion

        return Lion(groups, foreach=True)
    raise TaskError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}")


def lr_factor(schedule: str, step: int, total: int) -> float:
    """Multiplier of the base learning rate after ``step`` of ``total`` updates."""
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * step / total))
    return 1.0


# -- reinforcement learning (stable-baselines3 PPO on CartPole) ------------------------------------

RL_PRESETS = ("ppo", "varied")


@dataclass(frozen=True)
class PPORecipe:
    """SB3 PPO hyperparameters of one CartPole run (rl-zoo's tuned CartPole values for ``ppo``)."""

    learning_rate: float = 1e-3
    n_envs: int = 8
    n_steps: int = 32
    batch_size: int = 256
    n_epochs: int = 20
    gamma: float = 0.98
    gae_lambda: float = 0.8
    clip_range: float = 0.2
    ent_coef: float = 0.0
    total_timesteps: int = 40_000

    def to_dict(self) -> dict:
        return asdict(self)


def ppo_recipe(preset: str, rng: np.random.Generator, total_timesteps: int | None = None) -> PPORecipe:
    """``ppo``: fixed rl-zoo hyperparameters. ``varied``: learning rate log-uniform [3e-4, 3e-3],
    n_epochs in {5, 10, 20}, gamma in {0.98, 0.99}, ent_coef 0 or log-uniform [1e-4, 1e-2]."""
    if preset == "ppo":
        r = PPORecipe()
    elif preset == "varied":
        r = PPORecipe(
            learning_rate=_log_uniform(rng, 3e-4, 3e-3),
            n_epochs=int(rng.choice([5, 10, 20])),
            gamma=float(rng.choice([0.98, 0.99])),
            ent_coef=0.0 if rng.random() < 0.5 else _log_uniform(rng, 1e-4, 1e-2),
        )
    else:
        raise TaskError(f"unknown RL preset {preset!r}; expected one of {RL_PRESETS}")
    if total_timesteps is not None:
        r = PPORecipe(**{**r.to_dict(), "total_timesteps": int(total_timesteps)})
    return r


# -- runs and checkpoints -----------------------------------------------------------------------


def run_seed(seed: int, run_id: int) -> int:
    return int(np.random.SeedSequence([seed, run_id]).generate_state(1)[0] & 0x7FFFFFFF)


def checkpoint_steps(total: int, k: int, spacing: str = "log") -> np.ndarray:
    """``k`` distinct steps in ``[0, total]``: 0, ``total`` and ones between, log-spaced (so the fast
    early fall of the loss is densely sampled; steps 1, 2, 3, ... fill in where log spacing collides)
    or evenly spaced (``spacing="linear"``)."""
    if total < k - 1:
        raise GptParamsError(
            f"a run of {total} steps cannot hold {k} distinct checkpoints; lower --ckpts-per-run"
        )
    n = k - 1
    if n == 1:
        return np.array([0, total], dtype=np.int64)
    if spacing == "linear":  # n distinct values: consecutive rounded points differ by >= 1 step
        return np.concatenate([[0], np.round(np.linspace(total / n, total, n)).astype(np.int64)])
    steps: np.ndarray = np.unique(np.round(np.geomspace(1, total, n)).astype(np.int64))
    while len(steps) < n:  # collisions at small steps: widen until n distinct values
        extra = np.setdiff1d(np.arange(1, total + 1), steps)[: n - len(steps)]
        steps = np.unique(np.concatenate([steps, extra]))
    return np.concatenate([[0], steps])
