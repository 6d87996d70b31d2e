"""Gradient-descent baselines for one-step updates: Adam and SGD from the same initialisations.

Many networks train at once as one batched program (every optimizer used is elementwise, so
stacking the networks' tensors is exactly training each on its own), all on the same minibatch
sequence; their validation and test metrics are recorded every ``eval_every`` steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gpt_params.errors import GptParamsError
from gpt_params.tasks.supervised import SupervisedTask

OPTIMIZERS = {
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
}


@dataclass
class Curve:
    """Metrics ``{name: (E, N)}`` of N networks at evaluation steps ``steps`` ``(E,)``."""

    optimizer: str
    lr: float
    steps: np.ndarray
    metrics: dict[str, np.ndarray]


def train_curves(
    task: SupervisedTask,
    theta0: torch.Tensor,
    optimizer: str,
    lr: float,
    max_steps: int,
    eval_every: int = 5,
    batch_size: int = 128,
    seed: int = 0,
) -> Curve:
    """Train every network in ``theta0`` ``(N, D)`` for ``max_steps`` minibatch steps."""
    if task.kind != "supervised":
        raise GptParamsError(f"gradient baselines need a supervised task, got {task.name!r} ({task.kind})")
    if optimizer not in OPTIMIZERS:
        raise GptParamsError(f"unknown optimizer {optimizer!r}; expected one of {sorted(OPTIMIZERS)}")
    params = {k: v.clone().requires_grad_(True) for k, v in task.layout.unflatten(theta0.float()).items()}
    opt = OPTIMIZERS[optimizer](list(params.values()), lr)
    x, y = task.data.x["train"], task.data.y["train"]
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=g)
    pos, n = 0, len(theta0)
    steps, records = [], []

    def record(step: int) -> None:
        with torch.no_grad():
            theta = torch.cat([params[k].reshape(n, -1) for k in task.layout.names], 1)
            records.append(task.evaluate(theta, splits=("val", "test")))
        steps.append(step)

    record(0)
    for step in range(1, max_steps + 1):
        if pos + batch_size > len(y):
            order, pos = torch.randperm(len(y), generator=g), 0
        idx = order[pos : pos + batch_size]
        pos += batch_size
        logits = task.logits(params, x[idx], shared=True)  # (N, C, b)
        loss = F.cross_entropy(logits, y[idx].expand(n, -1), reduction="none").mean(1).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % eval_every == 0 or step == max_steps:
            record(step)
    metrics = {k: np.stack([r[k] for r in records]) for k in records[0]}
    return Curve(optimizer, lr, np.array(steps), metrics)


def steps_to_reach(curve: Curve, metric: str, target: np.ndarray) -> np.ndarray:
    """Per network, the first recorded step whose ``metric`` is at or below ``target`` ``(N,)``; inf if none."""
    hit = curve.metrics[metric] <= target[None]  # (E, N)
    first = np.where(hit.any(0), hit.argmax(0), -1)
    return np.where(first >= 0, curve.steps[np.maximum(first, 0)], np.inf).astype(float)


def seconds_per_step(
    task: SupervisedTask, optimizer: str, lr: float, batch_size: int = 128, steps: int = 200
) -> float:
    """Wall time of one step of the standard one-network loop (``nn.Module``, ``torch.optim``, in-memory data)."""
    net = task.build(0)
    opt = OPTIMIZERS[optimizer](net.parameters(), lr)
    x, y = task.data.x["train"], task.data.y["train"]
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, len(y), (batch_size,), generator=g) for _ in range(steps)]
    for i, idx in enumerate([*batches[:10], *batches]):
        if i == 10:
            t0 = time.perf_counter()
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps
