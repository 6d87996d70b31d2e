"""Many supervised networks trained at once as one batched program: harvest cohorts (each run with its
own init, data order and recipe) and the Adam / SGD baselines one-step updates are compared with.

Every optimizer used is elementwise, so stacking the networks' tensors is exactly training each on
its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from gpt_params.errors import GptParamsError
from gpt_params.recipes import checkpoint_steps, cohort_shape, lr_factor, make_optimizer, run_recipe, run_seed
from gpt_params.tasks.base import TrainedCohort

if TYPE_CHECKING:
    from gpt_params.tasks.supervised import SupervisedTask


def train_cohort(
    task: SupervisedTask,
    cfg: Any,
    cohort_id: int,
    run_ids: np.ndarray,
    on_step: Callable[[int, int], None] | None = None,
) -> TrainedCohort:
    """Train one cohort of supervised runs as one batched program and checkpoint them.

    Each run has its own initialisation, data order and recipe; real ``torch.optim`` / timm
    optimizers update it (one param group per distinct recipe, so per-run learning rates and weight
    decays hold exactly); one batched forward pass serves all runs.
    """
    shape = cohort_shape(cfg.preset, np.random.default_rng([cfg.seed, 0xC0, cohort_id]))
    epochs = cfg.epochs or shape.epochs
    recipes = [run_recipe(cfg.preset, np.random.default_rng([cfg.seed, 0xA1, int(r)])) for r in run_ids]
    seeds = [run_seed(cfg.seed, int(r)) for r in run_ids]

    device = torch.device(cfg.device)
    data = task.data_on(device)
    subset = slice(
        cfg.train_images
    )  # the first N train images (a random subset: splits are shuffled), or all
    x, y = data.x["train"][subset], data.y["train"][subset]
    n_train = len(y)
    batch = min(shape.batch_size, n_train)
    per_epoch = n_train // batch
    total = epochs * per_epoch
    ckpt = checkpoint_steps(total, cfg.ckpts_per_run, cfg.spacing)

    # Runs with identical recipes share batched leaf tensors (n_runs, *shape) and one param group:
    # every optimizer used here is elementwise, so that is exactly per-run training, minus the
    # per-group overhead. ``order`` lists cohort-local run indices in that grouped order.
    names = task.layout.names
    by_recipe: dict = {}
    for i, r in enumerate(recipes):
        by_recipe.setdefault(r, []).append(i)
    order = np.concatenate([np.array(m) for m in by_recipe.values()])
    inverse = np.argsort(order)
    nets = [list(task.build(s).parameters()) for s in seeds]
    leaves = [
        [
            torch.stack([nets[i][j].detach() for i in members]).to(device).requires_grad_(True)
            for j in range(len(names))
        ]
        for members in by_recipe.values()
    ]  # group -> tensor -> (n_g, *shape)
    group_recipes = list(by_recipe)
    optimizers = []
    for opt_name in sorted({r.optimizer for r in group_recipes}):
        gs = [g for g, r in enumerate(group_recipes) if r.optimizer == opt_name]
        param_groups = [
            {"params": leaves[g], "lr": group_recipes[g].lr, "weight_decay": group_recipes[g].weight_decay}
            for g in gs
        ]
        optimizers.append((make_optimizer(opt_name, param_groups), gs))

    def stacked() -> dict[str, torch.Tensor]:  # name -> (R, *shape), grouped order
        if len(leaves) == 1:
            return dict(zip(names, leaves[0], strict=True))
        return {n: torch.cat([lv[j] for lv in leaves]) for j, n in enumerate(names)}

    R, K, D = len(run_ids), len(ckpt), task.layout.numel
    params = np.empty((R, K, D), np.float32)
    metrics = {m: np.empty((R, K), np.float32) for m in task.metric_names}

    def record(k: int) -> None:
        with torch.no_grad():
            theta = torch.cat([t.reshape(R, -1) for t in stacked().values()], 1)[inverse]  # (R, D), run order
        params[:, k] = theta.cpu().numpy()
        for m, v in task.evaluate(theta, train_examples=cfg.train_metric_images).items():
            metrics[m][:, k] = v

    gen = torch.Generator().manual_seed(
        int(np.random.SeedSequence([cfg.seed, 0xD47A, cohort_id]).generate_state(1)[0])
    )
    # reused: a fresh minibatch tensor per step costs more than the matmuls
    xb = torch.empty(R * batch, *x.shape[1:], device=device)
    record(0)
    next_k, step = 1, 0
    for _ in range(epochs):
        # (R, N): each run's own order, drawn on the CPU (the same runs on every device)
        shuffles = torch.argsort(torch.rand(R, n_train, generator=gen), dim=1)[order].to(device)
        for b in range(per_epoch):
            idx = shuffles[:, b * batch : (b + 1) * batch].reshape(-1)  # (R * B,)
            torch.index_select(x, 0, idx, out=xb)
            xs = task.augment(xb, gen) if cfg.augment else xb  # (R * B, ...)
            logits = task.logits(stacked(), xs.view(R, batch, *x.shape[1:]), shared=False)  # (R, C, B)
            loss = F.cross_entropy(logits, y[idx].view(R, batch), reduction="sum") / batch
            for optimizer, _ in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()  # runs are independent: d(sum of run losses)/d(run r) = d(loss r)/d(run r)
            for optimizer, gs in optimizers:
                for pg, g in zip(optimizer.param_groups, gs, strict=True):
                    pg["lr"] = group_recipes[g].lr * lr_factor(group_recipes[g].schedule, step, total)
                optimizer.step()
            step += 1
            if next_k < K and step == ckpt[next_k]:
                record(next_k)
                next_k += 1
            if on_step is not None:
                on_step(step, total)
    steps = np.broadcast_to(ckpt, (R, K)).copy()
    hp = [{**r.to_dict(), "batch_size": batch, "epochs": epochs} for r in recipes]
    return TrainedCohort(hp, steps, params, metrics)


# -- gradient baselines ----------------------------------------------------------------------

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


def minibatch_steps(
    task: SupervisedTask,
    theta0: torch.Tensor,
    optimizer: str,
    lr: float,
    max_steps: int,
    batch_size: int = 128,
    seed: int = 0,
    schedule: str = "constant",
) -> Iterator[tuple[int, Callable[[], torch.Tensor]]]:
    """Trains every network in ``theta0`` ``(N, D)`` at once for ``max_steps`` minibatch steps (one
    shared data order), yielding ``(step, flat)`` at step 0 and after each step, where ``flat()`` gives
    the current parameters ``(N, D)`` (a detached copy, built only when asked for). ``schedule``
    ``"cosine"`` decays the learning rate to 0 at ``max_steps``, as the harvest's recipes do."""
    if optimizer not in OPTIMIZERS:
        raise GptParamsError(f"unknown optimizer {optimizer!r}; expected one of {sorted(OPTIMIZERS)}")
    params = {k: v.clone().requires_grad_(True) for k, v in task.layout.unflatten(theta0.float()).items()}
    opt = OPTIMIZERS[optimizer](list(params.values()), lr)
    x, y = task.data.x["train"], task.data.y["train"]
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=g)
    pos, n = 0, len(theta0)

    def flat() -> torch.Tensor:
        return torch.cat([params[k].detach().reshape(n, -1) for k in task.layout.names], 1)  # (N, D)

    yield 0, flat
    for step in range(1, max_steps + 1):
        if pos + batch_size > len(y):
            order, pos = torch.randperm(len(y), generator=g), 0
        idx = order[pos : pos + batch_size]
        pos += batch_size
        logits = task.logits(params, x[idx], shared=True)  # (N, C, b)
        loss = F.cross_entropy(logits, y[idx].expand(n, -1), reduction="none").mean(1).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for group in opt.param_groups:
            group["lr"] = lr * lr_factor(schedule, step - 1, max_steps)
        opt.step()
        yield step, flat


def train_curves(
    task: SupervisedTask,
    theta0: torch.Tensor,
    optimizer: str,
    lr: float,
    max_steps: int,
    eval_every: int = 5,
    batch_size: int = 128,
    seed: int = 0,
    stop_at: tuple[str, np.ndarray] | None = None,
    splits: tuple[str, ...] = ("val", "test"),
) -> Curve:
    """Train every network in ``theta0`` ``(N, D)`` for ``max_steps`` minibatch steps, or, with
    ``stop_at=(metric, target (N,))``, until every network has been recorded at or below its target;
    every ``eval_every`` steps the metrics of ``splits`` are recorded."""
    steps, records = [], []
    for step, flat in minibatch_steps(task, theta0, optimizer, lr, max_steps, batch_size, seed):
        if step % eval_every and step != max_steps:
            continue
        records.append(task.evaluate(flat(), splits=splits))  # the splits' metrics only
        steps.append(step)
        if stop_at is not None:
            hit = np.stack([r[stop_at[0]] for r in records]) <= stop_at[1][None]  # (E, N)
            if hit.any(0).all():
                break
    metrics = {k: np.stack([r[k] for r in records]) for k in records[0]}
    return Curve(optimizer, lr, np.array(steps), metrics)


def steps_to_reach(curve: Curve, metric: str, target: np.ndarray) -> np.ndarray:
    """Per network, the first recorded step whose ``metric`` is at or below ``target`` ``(N,)``; inf if none."""
    hit = curve.metrics[metric] <= target[None]  # (E, N)
    first = np.where(hit.any(0), hit.argmax(0), -1)
    return np.where(first >= 0, curve.steps[np.maximum(first, 0)], np.inf).astype(float)


def steps_to_match(
    task: SupervisedTask,
    theta0: torch.Tensor,
    optimizer: str,
    lr: float,
    max_steps: int,
    targets: dict[str, np.ndarray],
    resolution: int = 10,
    coarse: int = 50,
    batch_size: int = 128,
    seed: int = 0,
    stop: bool = True,
    splits: tuple[str, ...] = (),
) -> tuple[dict[str, np.ndarray], Curve]:
    """Per metric of ``targets`` (name -> ``(N,)``) and network in ``theta0`` ``(N, D)``, the first
    multiple of ``resolution`` steps at which the metric is at or below its target (inf if none within
    ``max_steps``), and the curve of the metrics' splits (and ``splits``) every ``coarse`` steps, until
    every network reached every target (``stop``) or to ``max_steps``.

    Only every ``coarse`` steps are all networks evaluated; the parameters every ``resolution`` steps
    in between are kept, and a network that first reaches a target at a coarse evaluation has those
    snapshots evaluated. The answer is ``steps_to_reach`` of ``train_curves(eval_every=resolution)``
    at a fraction of its evaluations, unless a metric dips below its target and back between two
    coarse evaluations (then this finds a later crossing)."""
    if resolution < 1 or coarse % resolution:
        raise GptParamsError(f"coarse={coarse} must be a multiple of resolution={resolution} >= 1")
    needed = tuple(dict.fromkeys([*(m.split("_")[0] for m in targets), *splits]))  # ordered, unique
    found = {m: np.full(len(theta0), np.inf) for m in targets}
    snapshots: list[tuple[int, torch.Tensor]] = []  # (step, (N, D)) since the last coarse evaluation
    steps, records = [], []
    for step, flat in minibatch_steps(task, theta0, optimizer, lr, max_steps, batch_size, seed):
        if step % coarse and step != max_steps:
            if step % resolution == 0:
                snapshots.append((step, flat()))
            continue
        now = task.evaluate(flat(), splits=needed)  # name -> (N,)
        steps.append(step)
        records.append(now)
        new = {m: np.flatnonzero(np.isinf(f) & (now[m] <= targets[m])) for m, f in found.items()}
        for m, nets in new.items():
            found[m][nets] = step
        refine = np.unique(np.concatenate(list(new.values())))
        if len(refine) and snapshots:
            between = torch.cat([theta[refine] for _, theta in snapshots])  # (S * n, D)
            fine = task.evaluate(between, splits=tuple(dict.fromkeys(m.split("_")[0] for m in new)))
            at = np.array([s for s, _ in snapshots])
            for m, nets in new.items():
                cols = np.searchsorted(refine, nets)
                hit = (
                    fine[m].reshape(len(snapshots), len(refine))[:, cols] <= targets[m][nets][None]
                )  # (S, n)
                found[m][nets] = np.where(hit.any(0), at[hit.argmax(0)], step)
        snapshots = []
        if stop and all(np.isfinite(f).all() for f in found.values()):
            break
    metrics = {k: np.stack([r[k] for r in records]) for k in records[0]}
    return found, Curve(optimizer, lr, np.array(steps), metrics)


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
