"""A learned critic: predicts a network's metric from what it outputs on fixed probe inputs.

A network is described by its outputs on ``S`` probe inputs (states a CartPole policy visits,
train-split images of a classifier), centred over the outputs (softmax cannot see a shift) and
squashed, so the description is invariant to every weight symmetry by construction. A small MLP
maps it to the metric. Fitted on the train-split runs of a zoo, it ranks a model's candidate
updates without rollouts or data: ``LearnedOptimizer.step(..., num_samples=k, combine="critic")``
keeps the candidate whose predicted metric is nearest the prompt.

    critic, report = fit_critic(zoo, task, "return_sampled", CriticConfig())
    critic.predict(theta)  # (B,) in the metric's own units
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import nn

from gpt_params.config import opt
from gpt_params.tasks.base import Task
from gpt_params.zoo_reader import Zoo

BANK_SIZE = 64  # train-split checkpoints whose rollouts give an RL task's probe states
NO_CRITIC = "this model has no learned critic; fit one with `python train/critic.py --model DIR --zoo ZOO`"


@dataclass
class CriticConfig:
    probes: int = opt(512, "probe inputs whose outputs describe a network")
    hidden: int = opt(256, "width of the critic's hidden layers")
    depth: int = opt(2, "hidden layers")
    squash: float = opt(4.0, "outputs enter as tanh(centred output / squash)")
    epochs: int = opt(30, "passes over the train-split checkpoints")
    batch_size: int = opt(256, "checkpoints per optimiser step")
    lr: float = opt(1e-3, "AdamW learning rate")
    weight_decay: float = opt(1e-4, "AdamW weight decay")
    max_runs: int = opt(0, "train-split runs fitted on (0: all)")
    seed: int = opt(0, "seed of the probe inputs, initialisation and batch order")

    def __post_init__(self) -> None:
        for name in ("probes", "hidden", "depth", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"critic {name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("squash", "lr"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) <= 0:
                raise ValueError(f"critic {name} must be a finite number > 0, got {getattr(self, name)!r}")
        if self.max_runs < 0:
            raise ValueError(f"critic max_runs must be >= 0 (0: all), got {self.max_runs!r}")


class MetricCritic(nn.Module):
    """Probe outputs ``(B, S, O)`` -> predicted metric ``(B,)``; the probes travel with the weights."""

    def __init__(
        self,
        task: Task,
        metric: str,
        probes: torch.Tensor,
        n_out: int,
        hidden: int,
        depth: int,
        squash: float,
    ) -> None:
        super().__init__()
        self.task, self.metric, self.squash = task, metric, squash
        self.hidden, self.depth, self.n_out = hidden, depth, n_out
        self.fit_report: dict | None = None  # what fit_critic measured (stored with an export)
        self.register_buffer("probes", probes.float().clone())  # (S, ...)
        self.register_buffer("y_mean", torch.zeros(()))  # of the normalised metric, train split
        self.register_buffer("y_std", torch.ones(()))
        layers: list[nn.Module] = []
        width = len(probes) * n_out
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.GELU()]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, 1))

    def features(self, theta: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` raw parameters -> ``(B, S * O)`` symmetry-invariant description."""
        out = self.task.probe_outputs(theta, self.probes)  # (B, S, O)
        out = out - out.mean(-1, keepdim=True)
        return torch.tanh(out / self.squash).flatten(1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """Standardised normalised-metric prediction ``(B,)`` from :meth:`features`."""
        return self.net(feats)[:, 0]

    @torch.no_grad()
    def predict(self, theta: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """Predicted metric ``(B,)`` of raw parameters ``theta`` ``(B, D)``, in the metric's units."""
        theta = theta.reshape(-1, self.task.layout.numel).to(self.probes.device)
        feats = torch.cat([self.features(theta[i : i + chunk]) for i in range(0, len(theta), chunk)])
        return _predict_features(self, feats).cpu()

    def config(self) -> dict:
        return {
            "metric": self.metric,
            "probe_shape": list(self.probes.shape),
            "n_out": self.n_out,
            "hidden": self.hidden,
            "depth": self.depth,
            "squash": self.squash,
            "fit": self.fit_report,
        }

    @classmethod
    def from_config(cls, task: Task, cfg: dict) -> MetricCritic:
        probes = torch.zeros(cfg["probe_shape"])
        critic = cls(task, cfg["metric"], probes, cfg["n_out"], cfg["hidden"], cfg["depth"], cfg["squash"])
        critic.fit_report = cfg.get("fit")
        return critic


def _zoo_features(
    critic: MetricCritic, zoo: Zoo, rows: np.ndarray, metric: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``(N, F)`` (float16, to hold large zoos) and normalised metrics ``(N,)`` of every finite
    checkpoint of ``rows``, read run by run."""
    feats, ys = [], []
    for r in rows:
        y = critic.task.normalize_metric(torch.as_tensor(zoo.metrics[metric][r], dtype=torch.float32), metric)
        keep = torch.isfinite(y)
        theta = torch.from_numpy(zoo.params(int(r)))[keep]  # (K', D)
        if len(theta):
            feats.append(critic.features(theta).half())
            ys.append(y[keep])
    return torch.cat(feats), torch.cat(ys)


@torch.no_grad()
def _predict_features(critic: MetricCritic, feats: torch.Tensor) -> torch.Tensor:
    """Predicted metric ``(N,)`` in its own units from precomputed features ``(N, F)``."""
    critic.eval()
    z = torch.cat([critic(feats[i : i + 8192].float()) for i in range(0, len(feats), 8192)])
    return critic.task.denormalize_metric(z * critic.y_std + critic.y_mean, critic.metric)


def _r2_rms(pred: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    rms = float(((pred - y) ** 2).mean().sqrt())
    return 1.0 - float(((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum().clamp_min(1e-12)), rms


def fit_critic(
    zoo: Zoo,
    task: Task,
    metric: str,
    cfg: CriticConfig,
    progress: Callable[[int, dict], None] | None = None,
) -> tuple[MetricCritic, dict]:
    """Fit a critic of ``metric`` on ``zoo``'s train-split runs and score it on its val-split runs.

    Returns the critic (at the epoch of lowest validation error) and a report: validation R^2 and
    RMS error in the metric's own units, sizes and seconds. ``progress(epoch, stats)`` is called after
    each epoch."""
    if metric not in zoo.metrics:
        raise ValueError(f"zoo {str(zoo.path)!r} records no metric {metric!r}; it has {sorted(zoo.metrics)}")
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    train, val = zoo.runs("train"), zoo.runs("val")
    if cfg.max_runs:
        train = train[: cfg.max_runs]
    if len(train) == 0 or len(val) == 0:
        raise ValueError(
            f"zoo {str(zoo.path)!r} has {len(train)} train and {len(val)} val runs; a critic needs both"
        )
    bank = torch.from_numpy(zoo.sample_checkpoints(train, BANK_SIZE, rng))  # (n, D)
    probes = task.probe_inputs(bank, cfg.probes, cfg.seed)
    n_out = task.probe_outputs(bank[:1], probes).shape[-1]
    critic = MetricCritic(task, metric, probes, n_out, cfg.hidden, cfg.depth, cfg.squash)
    x_tr, y_tr = _zoo_features(critic, zoo, train, metric)
    x_va, y_va = _zoo_features(critic, zoo, val, metric)
    critic.y_mean.fill_(float(y_tr.mean()))
    critic.y_std.fill_(float(y_tr.std().clamp_min(1e-8)))
    t_tr = (y_tr - critic.y_mean) / critic.y_std
    optim = torch.optim.AdamW(critic.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, cfg.epochs)
    gen = torch.Generator().manual_seed(cfg.seed)
    best: tuple[float, int, dict] = (math.inf, -1, {})
    raw_va = task.denormalize_metric(y_va, metric)
    for epoch in range(cfg.epochs):
        critic.train()
        perm = torch.randperm(len(x_tr), generator=gen)
        for i in range(0, len(perm), cfg.batch_size):
            b = perm[i : i + cfg.batch_size]
            loss = ((critic(x_tr[b].float()) - t_tr[b]) ** 2).mean()
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
        sched.step()
        r2, rms = _r2_rms(_predict_features(critic, x_va), raw_va)
        stats = {"val_r2": r2, "val_rms": rms, "train_loss_last_batch": float(loss.detach())}
        if rms < best[0]:
            best = (rms, epoch, {k: v.clone() for k, v in critic.state_dict().items()})
        if progress is not None:
            progress(epoch, stats)
    critic.load_state_dict(best[2])
    r2, rms = _r2_rms(_predict_features(critic, x_va), raw_va)
    report = {
        "metric": metric,
        "zoo": str(zoo.path),
        "train_runs": len(train),
        "val_runs": len(val),
        "train_checkpoints": len(x_tr),
        "val_checkpoints": len(x_va),
        "best_epoch": best[1] + 1,
        "val_r2": r2,
        "val_rms": rms,
        "seconds": time.perf_counter() - t0,
        "config": {f.name: getattr(cfg, f.name) for f in fields(CriticConfig)},
    }
    critic.fit_report = report
    return critic, report
