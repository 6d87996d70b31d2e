"""The task interface: a network family, its data or environment, and how to score it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from gpt_params.errors import TaskError
from gpt_params.layout import ParamLayout, PermGroup, Role

# first seed of the random inits that evaluations start from (``Task.unseen_inits``). Harvest run
# seeds are 31-bit hashes of (harvest seed, run id), so a 5,000-run zoo shares one of these seeds with
# chance ~2e-6 per init.
INIT_SEED = 7_000_000


def task_label(name: str, options: dict[str, Any]) -> str:
    """``name`` and a family member's options as one word each: ``mnist-mlp hidden=[64,32]``."""
    return " ".join([name, *(f"{k}={v}".replace(" ", "") for k, v in sorted(options.items()))])


@dataclass
class TrainedCohort:
    """One cohort of training runs as a task's trainer returns it (before divergence screening)."""

    hparams: list[dict]  # (R,) each run's recipe, stored as JSON
    steps: np.ndarray  # (R, K) optimizer steps or environment timesteps of each checkpoint
    params: np.ndarray  # (R, K, D) float32
    metrics: dict[str, np.ndarray]  # name -> (R, K)


@dataclass
class BaselineConfig:
    """Budgets of the gradient baselines a one-step update is compared with (each task reads its own)."""

    nets: int = 16  # unseen inits compared where the baseline is cheap (batched Adam)
    rl_nets: int = 8  # unseen inits compared where it is not (PPO trains policy by policy)
    cnn_nets: int = (
        4  # unseen inits compared for CNNs (a test-set pass of a CNN costs far more than an MLP one)
    )
    adam_lr: float = 1e-3  # supervised: Adam learning rate, batch 128
    adam_steps: int = 3000  # supervised: Adam steps at most
    eval_every: int = 10  # supervised: resolution of the Adam steps to match
    coarse_every: int = 50  # supervised: steps between evaluations of all nets (a multiple of eval_every)
    rl_workers: int = 2  # RL: processes training baseline policies side by side
    ppo_timesteps: int = 40_000  # RL: PPO environment timesteps at most
    episodes: int = 20  # RL: held-out episodes per policy
    seed: int = 0


@dataclass
class Baseline:
    """Gradient steps a baseline needed to match a one-step update, per network."""

    name: str  # e.g. "Adam lr 0.001, batch 128"
    steps: np.ndarray  # (N,) gradient (Adam) steps to match; inf where the budget ran out
    budget: int  # the most gradient steps it was allowed
    xlabel: str  # what the steps count, for plots
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # label -> (steps, metric)


class Task(ABC):
    """A network architecture plus what it is trained and scored on.

    Subclasses define :meth:`build`, :attr:`symmetries`, :attr:`metric_names` and :meth:`evaluate`.
    ``metric_names`` lists every metric recorded per checkpoint; :attr:`objective` is the one that
    conditions models by default and :meth:`higher_is_better` says which way each one improves.
    """

    name: str
    kind: str  # "supervised" or "rl": descriptive only; behaviour comes from the methods below
    objective: str  # the metric models condition on unless told otherwise
    harvest_presets: tuple[str, ...] = ()  # training recipes ``gpt-params harvest --preset`` accepts
    harvest_unit: str = "step"  # what a cohort's progress counts (``on_step``)
    test_metrics: tuple[str, ...] = ()  # metrics on data no model conditions on (reported by the CLI)
    return_scale: float = 1.0  # returns are divided by this when normalised (the task's best return)
    may_be_nan: tuple[str, ...] = ()  # metrics a healthy checkpoint may lack (NaN); others mark divergence
    harvest_devices: tuple[str, ...] = ("cpu",)  # device types ``gpt-params harvest --device`` accepts
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None  # ``harvest --augment``
    # which member of the task's family of architectures this is, as ``get_task(name, **options)``
    # takes it (``{"hidden": [32]}``); empty for the family's default member. Zoos and exports store it.
    options: dict[str, Any] = {}
    # architecture families (the MLPs): the roles their tensors play, whatever the member's widths
    # (``Role``: first-layer weights, output bias, ...), which role each of this member's tensors plays,
    # and each tensor's fan-in (inputs per unit of its layer, what its scale follows). None elsewhere.
    family: dict[str, Role] | None = None
    roles: dict[str, str] = {}
    fan_in: dict[str, int] = {}

    def member_of(self, params) -> Task:
        """The member of this task's architecture family that ``params`` is: the task itself unless it
        is a family (:class:`~gpt_params.tasks.supervised.SupervisedTask` MLPs)."""
        return self

    @property
    def label(self) -> str:
        """The name, with the member options where they are not the default: ``mnist-mlp hidden=[32]``."""
        return task_label(self.name, self.options)

    @abstractmethod
    def build(self, seed: int) -> nn.Module:
        """A freshly initialised network; equal seeds give equal weights."""

    @property
    @abstractmethod
    def symmetries(self) -> tuple[PermGroup, ...]:
        """Hidden-unit permutation groups that leave the network's function unchanged."""

    @property
    @abstractmethod
    def metric_names(self) -> tuple[str, ...]:
        """Per-checkpoint metrics the harvester records, in storage order."""

    @abstractmethod
    def higher_is_better(self, metric: str) -> bool:
        """Direction of improvement of ``metric``."""

    @abstractmethod
    def evaluate(self, theta: torch.Tensor) -> dict[str, np.ndarray]:
        """Score a batch of flat parameter vectors ``(B, D)``; returns ``{metric: (B,)}``."""

    @abstractmethod
    def metric_kind(self, metric: str) -> str:
        """``"loss"``, ``"error"`` or ``"return"``: how ``metric`` is normalised and which way it improves."""

    def normalize_metric(self, values: torch.Tensor, metric: str) -> torch.Tensor:
        """The scale models see a metric on: log of a loss, an error rate as is, a return over
        :attr:`return_scale` (so prompts are comparable across zoos of one task)."""
        kind = self.metric_kind(metric)
        if kind == "loss":
            return torch.log(values.clamp(min=1e-6))
        if kind == "error":
            return values
        return values / self.return_scale

    def denormalize_metric(self, values: torch.Tensor, metric: str) -> torch.Tensor:
        """Inverse of :meth:`normalize_metric`."""
        kind = self.metric_kind(metric)
        if kind == "loss":
            return torch.exp(values)
        if kind == "error":
            return values
        return values * self.return_scale

    def held_out_metric(self, metric: str) -> str:
        """What outputs of a model conditioned on ``metric`` are scored by in reports: a metric of data
        no model conditioned on where the task has such data (``val_loss`` -> ``test_loss``)."""
        return metric

    def held_out(self, episodes: int) -> Task:
        """This task scored on ``episodes`` held-out episodes (RL tasks only)."""
        raise TaskError(f"task {self.name!r} has no episodes; held-out episodes apply to RL tasks")

    def check_data(self) -> None:
        """Load and validate the task's data now (before a harvest touches any file); a no-op without data."""
        return None

    @abstractmethod
    def train_cohort(
        self, cfg: Any, cohort_id: int, run_ids: np.ndarray, on_step: Callable[[int, int], None] | None
    ) -> TrainedCohort:
        """Train the runs ``run_ids`` (R,) of one harvest cohort as ``cfg`` (a
        :class:`~gpt_params.harvest.HarvestConfig`) says and checkpoint every run ``cfg.ckpts_per_run``
        times; ``on_step(done, total)`` reports progress in :attr:`harvest_unit`."""

    @abstractmethod
    def gradient_baseline(
        self, theta0: torch.Tensor, metric: str, achieved: np.ndarray, cfg: BaselineConfig
    ) -> Baseline:
        """The task's gradient-descent baseline from the inits ``theta0`` ``(N, D)``: the steps it needs
        until each network's held-out ``metric`` (as :meth:`score_held_out` names it) reaches
        ``achieved`` ``(N,)``."""

    def baseline_nets(self, cfg: BaselineConfig) -> int:
        """How many inits :meth:`gradient_baseline` is run from: ``cfg.nets`` unless it is costly."""
        return cfg.nets

    @abstractmethod
    def score_held_out(self, theta: torch.Tensor, metric: str, cfg: BaselineConfig) -> tuple[str, np.ndarray]:
        """(name, values ``(B,)``) of the held-out score of networks ``theta`` ``(B, D)`` that a model
        conditioned on ``metric`` produced: what :meth:`gradient_baseline` is matched on."""

    def evaluate_only(self, theta: torch.Tensor, names: Sequence[str]) -> dict[str, np.ndarray]:
        """The metrics of ``names`` that :meth:`evaluate` gives, ``{metric: (B,)}``; tasks that can skip
        the work of the others (rollouts, data splits) override this."""
        out = self.evaluate(theta)
        return {m: out[m] for m in names if m in out}

    def probe_inputs(self, bank: torch.Tensor, n: int, seed: int) -> torch.Tensor:
        """``n`` inputs ``(n, ...)`` on which networks' outputs describe them to a learned critic
        (:mod:`gpt_params.critic`); ``bank`` ``(B, D)`` holds sample networks of the zoo, for tasks
        whose inputs depend on the policy (states an RL policy visits)."""
        raise NotImplementedError(f"task {self.name!r} defines no probe inputs for a critic")

    def probe_gradient(self, theta: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
        """The gradient ``(B, D)`` of the training loss of each network ``theta`` ``(B, D)`` on ``n`` fixed
        training examples drawn with ``seed``: what a family model with ``grad_probes`` sees of the data."""
        raise NotImplementedError(f"task {self.name!r} defines no training-loss gradient on probe examples")

    def outputs(self, theta: torch.Tensor, probes: torch.Tensor) -> torch.Tensor:
        """Outputs ``(B, S, O)`` of the networks ``theta`` ``(B, D)`` on the inputs ``(S, ...)``,
        differentiable in ``theta`` (the function-space training term uses the gradient)."""
        return self.functional()(self.layout.unflatten(theta), probes)

    @torch.no_grad()
    def probe_outputs(self, theta: torch.Tensor, probes: torch.Tensor) -> torch.Tensor:
        """Outputs ``(B, S, O)`` of the networks ``theta`` ``(B, D)`` on the probe inputs ``(S, ...)``."""
        return self.outputs(theta.float(), probes)

    @cached_property
    def template(self) -> nn.Module:
        """A module of the task's architecture, used for layouts and functional calls."""
        return self.build(0)

    @cached_property
    def layout(self) -> ParamLayout:
        return ParamLayout.from_module(self.template)

    def unseen_inits(self, n: int) -> torch.Tensor:
        """``(n, D)`` random inits from seeds ``INIT_SEED + i`` (see ``INIT_SEED``)."""
        return torch.stack([self.flatten(self.build(INIT_SEED + i)) for i in range(n)])

    def flatten(self, module: nn.Module) -> torch.Tensor:
        return self.layout.flatten(module)

    def to_module(self, theta: torch.Tensor) -> nn.Module:
        """A new module holding the flat vector ``theta`` ``(D,)``."""
        return self.layout.load_into(self.build(0), theta)

    def functional(self, in_dims_x: int | None = None) -> Callable:
        """``f(params, x)`` vmapped over a leading batch of parameter dicts.

        ``params`` maps names to ``(B, *shape)`` tensors; ``x`` is shared (``in_dims_x=None``) or
        carries its own leading ``B`` (``in_dims_x=0``).
        """
        module = self.template

        def call(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return functional_call(module, params, (x,))

        return torch.vmap(call, in_dims=(0, in_dims_x))

    def describe(self) -> str:
        return f"{self.name}: {self.kind}, {self.layout.numel} parameters ({self.layout.describe()})"

    def describe_network(self) -> str:
        """``"the mnist-mlp network (fc1.weight (10, 784), ...)"``: for error messages."""
        return f"the {self.name} network ({self.layout.describe_shapes()})"
