"""CartPole-v1 policies: SB3 PPO's actor (4 -> 32 -> 32 -> 2, tanh), scored by rollouts in gymnasium's
vectorised CartPole: deterministic (argmax) ones, and ones whose actions are sampled from the policy."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cached_property

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from gpt_params.errors import TaskError
from gpt_params.layout import PermGroup
from gpt_params.recipes import RL_PRESETS, PPORecipe
from gpt_params.tasks.base import Baseline, BaselineConfig, Task, TrainedCohort

MAX_RETURN = 500.0  # CartPole-v1's episode cap
EVAL_SEED = 10_000  # evaluation episodes use seeds EVAL_SEED, EVAL_SEED + 1, ...
ROLLOUT_SEED = 50_000  # held-out episodes (evaluation scripts, demo): never used by harvests
SAMPLE_SEED = 20_000  # the uniform draws behind sampled actions, shared by every policy scored
HELD_OUT_SAMPLE_SEED = 60_000  # the uniform draws of held-out sampled-action episodes (``held_out``)
PROBE_SEED = 90_000  # episodes whose visited states become a critic's probe inputs
PROBE_STEPS = 300  # steps each probe episode runs (reset when it ends)


def fresh_initial_states(episodes: int, first_seed: int = ROLLOUT_SEED) -> np.ndarray:
    """Exact float64 initial states ``(episodes, 4)`` of gymnasium's CartPole reset with seeds
    ``first_seed, first_seed + 1, ...``: episodes disjoint from the zoo's conditioning rollouts."""
    env = gym.make("CartPole-v1")
    states = []
    for i in range(episodes):
        env.reset(seed=first_seed + i)
        states.append(np.array(env.unwrapped.state, dtype=np.float64))  # not the float32 observation
    env.close()
    return np.stack(states)


class CartPoleActor(nn.Module):
    """SB3's ``ActorCriticPolicy`` actor path with the same parameter names: observations -> logits."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.mlp_extractor = nn.Module()
        self.mlp_extractor.policy_net = nn.Sequential(
            nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.action_net = nn.Linear(hidden, 2)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.action_net(self.mlp_extractor.policy_net(obs))


def batched_logits(params: dict[str, torch.Tensor], obs: torch.Tensor) -> torch.Tensor:
    """Logits ``(B, E, 2)`` of ``B`` actors (``params``: :class:`CartPoleActor` names to ``(B, *shape)``)
    on their own observations ``obs`` ``(B, E, 4)``: the actor's forward as batched matmuls, several times
    faster than ``vmap(functional_call)`` in a rollout's per-step loop."""
    h = obs
    for name in ("mlp_extractor.policy_net.0", "mlp_extractor.policy_net.2"):
        h = torch.tanh(torch.baddbmm(params[f"{name}.bias"][:, None], h, params[f"{name}.weight"].mT))
    return torch.baddbmm(params["action_net.bias"][:, None], h, params["action_net.weight"].mT)


def sb3_init(actor: CartPoleActor) -> CartPoleActor:
    """SB3's ``ortho_init``: orthogonal weights (gain sqrt(2) in the MLP, 0.01 in the action head), zero biases."""
    for module, gain in ((actor.mlp_extractor, math.sqrt(2)), (actor.action_net, 0.01)):
        for m in module.modules():
            if isinstance(m, nn.Linear):
                nn.init.orthogonal_(m.weight, gain=gain)
                nn.init.zeros_(m.bias)
    return actor


class CartPoleTask(Task):
    """Return-maximising CartPole-v1 policies trained by stable-baselines3 PPO."""

    kind = "rl"
    objective = "return_mean"
    name = "cartpole"
    harvest_presets = RL_PRESETS
    harvest_unit = "run"
    return_scale = MAX_RETURN
    may_be_nan = ("train_return",)  # no training episode has ended yet at the first checkpoints

    def __init__(
        self,
        hidden: int = 32,
        n_eval_episodes: int = 10,
        n_sampled_episodes: int = 32,
        sampled_seed: int = EVAL_SEED,
        uniform_seed: int = SAMPLE_SEED,
    ) -> None:
        for name, n in (("n_eval_episodes", n_eval_episodes), ("n_sampled_episodes", n_sampled_episodes)):
            if n < 1:
                raise ValueError(f"{name} must be positive, got {n}")
        self.hidden = hidden
        self.n_eval_episodes = n_eval_episodes
        self.n_sampled_episodes = n_sampled_episodes
        # ``return_sampled``'s episodes: reset seeds from ``sampled_seed``, action draws from
        # ``uniform_seed``; the defaults are what zoos record, others give held-out episodes
        self.sampled_seed = sampled_seed
        self.uniform_seed = uniform_seed

    def held_out(self, episodes: int) -> CartPoleTask:
        """This task with ``return_sampled`` scored on ``episodes`` held-out episodes instead of the
        zoo's: reset seeds from ``ROLLOUT_SEED``, action draws from ``HELD_OUT_SAMPLE_SEED``."""
        return CartPoleTask(
            self.hidden,
            self.n_eval_episodes,
            episodes,
            sampled_seed=ROLLOUT_SEED,
            uniform_seed=HELD_OUT_SAMPLE_SEED,
        )

    def build(self, seed: int) -> nn.Module:
        """The initialisation SB3 PPO gives its actor (orthogonal, not PyTorch's default)."""
        torch.manual_seed(seed)
        return sb3_init(CartPoleActor(self.hidden))

    @property
    def symmetries(self) -> tuple[PermGroup, ...]:
        net = "mlp_extractor.policy_net"
        return (
            PermGroup(self.hidden, ((f"{net}.0.weight", 0), (f"{net}.0.bias", 0), (f"{net}.2.weight", 1))),
            PermGroup(self.hidden, ((f"{net}.2.weight", 0), (f"{net}.2.bias", 0), ("action_net.weight", 1))),
        )

    @property
    def metric_names(self) -> tuple[str, ...]:
        return ("return_mean", "return_std", "return_sampled", "train_return")

    def higher_is_better(self, metric: str) -> bool:
        if metric not in self.metric_names:
            raise KeyError(f"unknown metric {metric!r}; {self.name} records {self.metric_names}")
        return metric != "return_std"

    def metric_kind(self, metric: str) -> str:
        if metric not in self.metric_names:
            raise TaskError(f"unknown metric {metric!r}; {self.name} records {self.metric_names}")
        return "return"

    def train_cohort(self, cfg, cohort_id: int, run_ids: np.ndarray, on_step=None) -> TrainedCohort:
        from gpt_params.tasks.ppo import train_cohort

        return train_cohort(self, cfg, cohort_id, run_ids, on_step)

    def score_held_out(self, theta: torch.Tensor, metric: str, cfg: BaselineConfig) -> tuple[str, np.ndarray]:
        """The deterministic (argmax) policy's mean return over ``cfg.episodes`` held-out episodes
        (reset seeds from ``ROLLOUT_SEED``), whichever return the model conditions on."""
        return "return_mean", self.episode_returns(theta, fresh_initial_states(cfg.episodes)).mean(1)

    def baseline_nets(self, cfg: BaselineConfig) -> int:
        return cfg.rl_nets  # PPO trains policy by policy

    def gradient_baseline(
        self, theta0: torch.Tensor, metric: str, achieved: np.ndarray, cfg: BaselineConfig
    ) -> Baseline:
        """SB3 PPO with rl-zoo's CartPole settings (Adam lr 1e-3 inside) from each actor in ``theta0``
        until its held-out return (:meth:`score_held_out`) reaches ``achieved``."""
        from gpt_params.tasks.ppo import n_updates, ppo_adam_steps_per_update, ppo_steps_to_reach

        states = fresh_initial_states(cfg.episodes)
        steps, histories = ppo_steps_to_reach(
            self, theta0, achieved, states, cfg.ppo_timesteps, cfg.seed, workers=cfg.rl_workers
        )
        recipe = PPORecipe(total_timesteps=cfg.ppo_timesteps)
        per_update = ppo_adam_steps_per_update(recipe)
        return Baseline(
            name="PPO (Adam lr 1e-3), rl-zoo CartPole settings",
            steps=steps,
            budget=n_updates(recipe) * per_update,
            xlabel="Adam steps inside PPO",
            curves={
                f"PPO from the same init (net {i})": (np.arange(len(h)) * per_update, h)
                for i, h in enumerate(histories)
            },
        )

    @cached_property
    def eval_states(self) -> np.ndarray:
        """Initial states ``(E, 4)`` of the fixed evaluation episodes, from gymnasium's own seeded reset."""
        env = gym.make("CartPole-v1")
        states = [env.reset(seed=EVAL_SEED + i)[0] for i in range(self.n_eval_episodes)]
        env.close()
        return np.stack(states).astype(np.float64)

    @cached_property
    def sampled_states(self) -> np.ndarray:
        """Initial states ``(n_sampled_episodes, 4)`` of the sampled-action episodes (seeds from ``sampled_seed``)."""
        return fresh_initial_states(self.n_sampled_episodes, self.sampled_seed)

    def sampled_returns(self, theta: torch.Tensor, initial_states: np.ndarray | None = None) -> np.ndarray:
        """Returns ``(B, E)`` of the policies in ``theta`` acting by sampling from their action
        distribution, as PPO trains them. The draws are common random numbers: episode ``e`` at step
        ``t`` uses the same uniform for every policy, so a policy's score depends on it alone (not on
        the batch it is scored in) and close policies get close scores."""
        states = self.sampled_states if initial_states is None else np.asarray(initial_states, np.float64)
        uniforms = np.random.default_rng(self.uniform_seed).random((int(MAX_RETURN), len(states)))
        return self.episode_returns(theta, states, uniforms)

    @torch.no_grad()
    def episode_returns(
        self,
        theta: torch.Tensor,
        initial_states: np.ndarray | None = None,
        uniforms: np.ndarray | None = None,
    ) -> np.ndarray:
        """Returns ``(B, E)`` of the policies in ``theta`` ``(B, D)``, every policy playing the same ``E``
        episodes, all ``B * E`` of them in one vectorised environment. Actions are the argmax, or with
        ``uniforms`` ``(steps, E)`` action 1 where ``uniforms[t, e]`` < the policy's probability of it."""
        self.layout.check_vector(theta)
        theta = theta.reshape(-1, self.layout.numel).float()
        states = self.eval_states if initial_states is None else np.asarray(initial_states, dtype=np.float64)
        n_pol, n_ep = len(theta), len(states)
        env = gym.make_vec("CartPole-v1", num_envs=n_pol * n_ep, vectorization_mode="vector_entry_point")
        env.reset(seed=EVAL_SEED)
        base = env.unwrapped
        base.state = np.tile(states, (n_pol, 1)).T.copy()  # (4, B*E); CartPole's observation is its state
        obs = base.state.T.astype(np.float32)
        params = self.layout.unflatten(theta)
        alive = np.ones(n_pol * n_ep, dtype=bool)
        returns = np.zeros(n_pol * n_ep)
        for t in range(int(MAX_RETURN)):
            logits = batched_logits(params, torch.from_numpy(obs).view(n_pol, n_ep, 4))  # (B, E, 2)
            if uniforms is None:
                actions = logits.argmax(-1).reshape(-1).numpy()
            else:
                p1 = torch.softmax(logits.double(), -1)[..., 1]  # (B, E)
                actions = (torch.from_numpy(uniforms[t]) < p1).long().reshape(-1).numpy()
            obs, reward, terminated, truncated, _ = env.step(actions)
            returns += reward * alive
            alive &= ~(terminated | truncated)
            if not alive.any():
                break
        env.close()
        return returns.reshape(n_pol, n_ep)

    @torch.no_grad()
    def probe_inputs(self, bank: torch.Tensor, n: int, seed: int) -> torch.Tensor:
        """``n`` states ``(n, 4)`` visited by the policies ``bank`` ``(B, D)`` acting by sampled actions
        (one episode each from seeds ``PROBE_SEED + seed * B + i``, reset when it ends), drawn with ``seed``."""
        bank = bank.reshape(-1, self.layout.numel).float()
        b = len(bank)
        env = gym.make_vec("CartPole-v1", num_envs=b, vectorization_mode="vector_entry_point")
        obs, _ = env.reset(seed=PROBE_SEED + seed * b)
        params = self.layout.unflatten(bank)
        rng = np.random.default_rng(seed)
        visited = []
        for _ in range(PROBE_STEPS):
            logits = batched_logits(params, torch.from_numpy(obs).float()[:, None])[:, 0]  # (B, 2)
            p1 = torch.softmax(logits.double(), -1)[:, 1]
            obs, *_ = env.step((rng.random(b) < p1.numpy()).astype(np.int64))  # autoreset restarts ended ones
            visited.append(obs.copy())
        env.close()
        states = np.concatenate(visited)  # (PROBE_STEPS * B, 4)
        if n > len(states):
            raise ValueError(f"{n} probe states asked for; {b} policies visited {len(states)}")
        return torch.from_numpy(states[rng.choice(len(states), n, replace=False)]).float()

    def evaluate(
        self, theta: torch.Tensor, metrics: tuple[str, ...] = ("return_mean", "return_std", "return_sampled")
    ) -> dict[str, np.ndarray]:
        """Mean and std of the deterministic policy's return over the fixed evaluation episodes, and the
        mean return with sampled actions (a smoother function of the weights) over its own episodes;
        ``metrics`` skips the rollouts of those not asked for."""
        out: dict[str, np.ndarray] = {}
        if {"return_mean", "return_std"} & set(metrics):
            r = self.episode_returns(theta)
            out.update(return_mean=r.mean(1), return_std=r.std(1))
        if "return_sampled" in metrics:
            out["return_sampled"] = self.sampled_returns(theta).mean(1)
        return out

    def evaluate_only(self, theta: torch.Tensor, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Only the rollouts ``names`` need (``train_return`` is recorded while training, never here)."""
        out = self.evaluate(theta, metrics=tuple(names))
        return {m: out[m] for m in names if m in out}
