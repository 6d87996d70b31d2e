"""Normalisation of parameters, fitted on train-split runs and stored with the model. (Metrics are
normalised by their task: ``Task.normalize_metric``.)"""

from __future__ import annotations

import functools
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
    """Per coordinate ``(D,)``: its role's index in ``names`` and ``sqrt(fan_in)`` of its tensor; and
    per coordinate ``(D, 2)`` the log fan-in and log fan-out (rows) of its tensor."""
    role_id = torch.empty(layout.numel, dtype=torch.long)
    scale = torch.empty(layout.numel)
    log_fan = torch.empty(layout.numel, 2)
    for name, shape in zip(layout.names, layout.shapes, strict=True):
        s = layout.slice_of(name)
        role_id[s] = names.index(roles[name])
        scale[s] = math.sqrt(fan_in.get(name, 1))
        log_fan[s] = torch.tensor([math.log(fan_in.get(name, 1)), math.log(shape[0])])
    return role_id, scale, log_fan


@dataclass
class RoleNormalizer:
    """Normalisation for an architecture family: ``theta * sqrt(fan_in)`` has one (mean, std) per
    tensor *role* (first-layer weights, output bias, ...), whatever the member's widths.

    Default initialisations scale a layer's weights and biases by ``1 / sqrt(fan_in)``, so at
    initialisation a width-4 and a width-256 member come out alike. Training does not keep that scale
    (a width-4 MLP's first-layer weights end about twice as large as a width-256 one's), so with
    ``width_law`` the std of a role also follows a power law of the tensor's fan-in and fan-out,
    ``std * exp(exponent . (log_fan - log_fan_ref))``, fitted per role by least squares on the members'
    log stds. :meth:`for_member` expands it into the :class:`ParamNormalizer` of one member.
    """

    roles: tuple[str, ...]
    mean: torch.Tensor  # (R,) per role
    std: torch.Tensor  # (R,) at the reference fans
    exponent: torch.Tensor | None = None  # (R, 2) power of fan-in and fan-out; None: no width law
    log_fan_ref: torch.Tensor | None = None  # (R, 2) the reference log fans (the fitted members' mean)

    @classmethod
    def fit(cls, roles: tuple[str, ...], members, width_law: bool = False) -> RoleNormalizer:
        """Fit on ``members``: ``(theta (N, D), layout, roles, fan_in)`` samples of train-split checkpoints."""
        n_roles = len(roles)
        total, sq, count = np.zeros(n_roles), np.zeros(n_roles), np.zeros(n_roles)
        tensors = []
        for theta, layout, member_roles, fan_in in members:
            role_id, scale, log_fan = _member_scale(layout, member_roles, fan_in, roles)
            v = np.asarray(theta, dtype=np.float64) * scale.numpy()  # (N, D)
            ids = np.broadcast_to(role_id.numpy(), v.shape).reshape(-1)
            total += np.bincount(ids, v.reshape(-1), n_roles)
            sq += np.bincount(ids, (v * v).reshape(-1), n_roles)
            count += np.bincount(ids, minlength=n_roles)
            for name in layout.names:  # each tensor: its role, log fans and values (N, size)
                t = layout.slice_of(name)
                tensors.append((int(role_id[t.start]), log_fan[t.start].numpy(), v[:, t]))
        seen = count > 0
        mean = np.where(seen, total / np.maximum(count, 1), 0.0)
        std = np.sqrt(np.maximum(np.where(seen, sq / np.maximum(count, 1), 1.0) - mean**2, 1e-16))
        as_t = functools.partial(torch.tensor, dtype=torch.float32)
        if not width_law:
            return cls(tuple(roles), as_t(mean), as_t(std))
        exponent, ref = np.zeros((n_roles, 2)), np.zeros((n_roles, 2))
        for r in np.flatnonzero(seen):
            # one point per (sample, tensor of role r): its log fans and log rms about the role's mean
            mine = [(f, v) for i, f, v in tensors if i == r]
            x = np.stack([f for f, _ in mine])  # (P, 2)
            y = np.log([max(np.sqrt(np.mean((v - mean[r]) ** 2)), 1e-8) for _, v in mine])  # (P,)
            ref[r] = x.mean(0)
            xc = x - ref[r]
            varied = xc.std(0) > 1e-6  # a fan every member shares (784 inputs, 10 outputs) has no slope
            if varied.any():
                coef, *_ = np.linalg.lstsq(xc[:, varied], y - y.mean(), rcond=None)
                exponent[r, varied] = coef
            # the std at the reference fans that leaves the role's pooled normalised variance 1, as without the law
            sq_r = sum(np.sum(((v - mean[r]) * math.exp(-(f - ref[r]) @ exponent[r])) ** 2) for f, v in mine)
            std[r] = math.sqrt(max(sq_r / count[r], 1e-16))
        return cls(tuple(roles), as_t(mean), as_t(std), as_t(exponent), as_t(ref))

    def for_member(
        self, layout: ParamLayout, roles: dict[str, str], fan_in: dict[str, int]
    ) -> ParamNormalizer:
        role_id, scale, log_fan = _member_scale(layout, roles, fan_in, self.roles)
        std = self.std[role_id]
        if self.exponent is not None:
            std = std * torch.exp(((log_fan - self.log_fan_ref[role_id]) * self.exponent[role_id]).sum(-1))
        return ParamNormalizer(self.mean[role_id] / scale, std / scale)

    def state(self) -> dict[str, torch.Tensor]:
        out = {"role_normalizer.mean": self.mean, "role_normalizer.std": self.std}
        if self.exponent is not None:
            out |= {
                "role_normalizer.exponent": self.exponent,
                "role_normalizer.log_fan_ref": self.log_fan_ref,
            }
        return out

    @classmethod
    def from_state(cls, roles: tuple[str, ...], state: dict[str, torch.Tensor]) -> RoleNormalizer:
        law = "role_normalizer.exponent" in state  # exports from before the width law have none
        return cls(
            tuple(roles),
            state["role_normalizer.mean"].float(),
            state["role_normalizer.std"].float(),
            state["role_normalizer.exponent"].float() if law else None,
            state["role_normalizer.log_fan_ref"].float() if law else None,
        )
