"""Normalisation of parameters (fitted on train-split runs, stored with the model) and of metrics
(a fixed transform per metric kind, so prompts are comparable across zoos)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gpt_params.layout import ParamLayout

RETURN_SCALE = {"cartpole": 500.0}  # max return of each RL task


def metric_kind(metric: str) -> str:
    """'loss', 'error' or 'return' from a metric name such as 'val_loss' or 'return_mean'."""
    for kind in ("loss", "error", "return"):
        if kind in metric:
            return kind
    raise ValueError(f"metric {metric!r} is not a loss, error or return")


def normalize_metric(values: torch.Tensor, metric: str, task: str) -> torch.Tensor:
    """log-loss for losses, the rate itself for errors, return / max return for returns."""
    kind = metric_kind(metric)
    if kind == "loss":
        return torch.log(values.clamp(min=1e-6))
    if kind == "error":
        return values
    return values / RETURN_SCALE.get(task, 1.0)


def denormalize_metric(values: torch.Tensor, metric: str, task: str) -> torch.Tensor:
    kind = metric_kind(metric)
    if kind == "loss":
        return torch.exp(values)
    if kind == "error":
        return values
    return values * RETURN_SCALE.get(task, 1.0)


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
