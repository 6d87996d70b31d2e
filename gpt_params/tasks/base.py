"""The task interface: a network family, its data or environment, and how to score it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from functools import cached_property

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from gpt_params.layout import ParamLayout, PermGroup

# first seed of the random inits that evaluations start from (``Task.unseen_inits``). Harvest run
# seeds are 31-bit hashes of (harvest seed, run id), so a 5,000-run zoo shares one of these seeds with
# chance ~2e-6 per init.
INIT_SEED = 7_000_000


class Task(ABC):
    """A network architecture plus what it is trained and scored on.

    Subclasses define :meth:`build`, :attr:`symmetries`, :attr:`metric_names` and :meth:`evaluate`.
    ``metric_names`` lists every metric recorded per checkpoint; :attr:`objective` is the one that
    conditions models by default and :meth:`higher_is_better` says which way each one improves.
    """

    name: str
    kind: str  # "supervised" or "rl"
    objective: str

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
