"""Normalisation of parameters, fitted on train-split runs and stored with the model. (Metrics are
normalised by their task: ``Task.normalize_metric``.)"""

from __future__ import annotations

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
