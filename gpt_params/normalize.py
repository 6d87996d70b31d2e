"""Normalisation of parameters, fitted on train-split runs and stored with the model. (Metrics are
normalised by their task: ``Task.normalize_metric``.)"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from gpt_params.layout import ParamLayout


@dataclass
class ParamNormalizer:
    """theta -> (theta - mean) / std with one (mean, std) per tensor, or one overall (``per_tensor=False``)."""

    mean: torch.Tensor  # (D,)
    std: torch.Tensor  # (D,)

    @classmethod
    def fit(cls, theta: np.ndarray, layout: ParamLayout, per_tensor: bool = True) -> ParamNormalizer:
        """Fit on sample checkpoints ``theta`` ``(N, D)`` (train-split runs only)."""
        theta = np.asarray(theta, dtype=np.float64)
        mean = np.empty(layout.numel)
        std = np.empty(layout.numel)
        if per_tensor:
            for name in layout.names:
                s = layout.slice_of(name)
                mean[s] = theta[:, s].mean()
                std[s] = max(theta[:, s].std(), 1e-8)
        else:
            mean[:] = theta.mean()
            std[:] = max(theta.std(), 1e-8)
        return cls(torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32))

    def normalize(self, theta: torch.Tensor) -> torch.Tensor:
        return (theta - self.mean.to(theta.device)) / self.std.to(theta.device)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std.to(z.device) + self.mean.to(z.device)

    def state(self) -> dict[str, torch.Tensor]:
        return {"normalizer.mean": self.mean, "normalizer.std": self.std}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> ParamNormalizer:
        return cls(state["normalizer.mean"].float(), state["normalizer.std"].float())


def _member_scale(layout: ParamLayout, roles: dict[str, str], fan_in: dict[str, int], names: tuple[str, ...]):
    """Per coordinate ``(D,)``: its role's index in ``names`` and ``sqrt(fan_in)`` of its tensor."""
    role_id = torch.empty(layout.numel, dtype=torch.long)
    scale = torch.empty(layout.numel)
    for name in layout.names:
        s = layout.slice_of(name)
        role_id[s] = names.index(roles[name])
        scale[s] = math.sqrt(fan_in.get(name, 1))
    return role_id, scale


@dataclass
class RoleNormalizer:
    """Normalisation for an architecture family: ``theta * sqrt(fan_in)`` has one (mean, std) per
    tensor *role* (first-layer weights, output bias, ...), whatever the member's widths.

    Default initialisations scale a layer's weights and biases by ``1 / sqrt(fan_in)`` and trained
    networks keep roughly that scale, so a width-4 and a width-256 member come out alike.
    :meth:`for_member` expands it into the :class:`ParamNormalizer` of one member.
    """

    roles: tuple[str, ...]
    mean: torch.Tensor  # (R,) per role
    std: torch.Tensor  # (R,)

    @classmethod
    def fit(cls, roles: tuple[str, ...], members) -> RoleNormalizer:
        """Fit on ``members``: ``(theta (N, D), layout, roles, fan_in)`` samples of train-split checkpoints."""
        total = np.zeros(len(roles))
        sq = np.zeros(len(roles))
        count = np.zeros(len(roles))
        for theta, layout, member_roles, fan_in in members:
            role_id, scale = _member_scale(layout, member_roles, fan_in, roles)
            v = np.asarray(theta, dtype=np.float64) * scale.numpy()  # (N, D)
            ids = np.broadcast_to(role_id.numpy(), v.shape).reshape(-1)
            total += np.bincount(ids, v.reshape(-1), len(roles))
            sq += np.bincount(ids, (v * v).reshape(-1), len(roles))
            count += np.bincount(ids, minlength=len(roles))
        seen = count > 0
        mean = np.where(seen, total / np.maximum(count, 1), 0.0)
        std = np.sqrt(np.maximum(np.where(seen, sq / np.maximum(count, 1), 1.0) - mean**2, 1e-16))
        return cls(
            tuple(roles), torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        )

    def for_member(
        self, layout: ParamLayout, roles: dict[str, str], fan_in: dict[str, int]
    ) -> ParamNormalizer:
        role_id, scale = _member_scale(layout, roles, fan_in, self.roles)
        return ParamNormalizer(self.mean[role_id] / scale, self.std[role_id] / scale)

    def state(self) -> dict[str, torch.Tensor]:
        return {"role_normalizer.mean": self.mean, "role_normalizer.std": self.std}

    @classmethod
    def from_state(cls, roles: tuple[str, ...], state: dict[str, torch.Tensor]) -> RoleNormalizer:
        return cls(tuple(roles), state["role_normalizer.mean"].float(), state["role_normalizer.std"].float())
