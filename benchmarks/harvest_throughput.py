"""Harvest throughput: checkpoints per second and net-images per second of training, batched vs
one network at a time, same recipe.

All sides train the task with the same preset (default: G.pt's `gpt` recipe, 25 epochs), record
the same log-spaced checkpoints and evaluate each on the full train/val/test splits. Two
one-network-at-a-time baselines:

* ``standard``: the usual PyTorch loop, ``DataLoader(TensorDataset, shuffle=True)`` for training
  and a ``DataLoader`` pass over each split per checkpoint (how G.pt harvested);
* ``tuned``: the same loop on in-memory tensors, manual minibatches, whole-split evaluation in one
  call: the fastest one-network loop we know how to write.

Training phase alone (net-images per second, ``--training-steps`` minibatch steps of each):

* ``harvest``: ``Task.train_cohort`` with two checkpoints (init, final), timed from its first to its
  last step, so no checkpoint scoring falls inside;
* ``plain_batched``: the loop a user would write for many nets at once, ``torch.func.vmap`` over the
  module's ``functional_call``, all nets in one call, one SGD optimizer;
* ``one_at_a_time``: one network at a time, ``DataLoader(TensorDataset, shuffle=True)``.

    python benchmarks/harvest_throughput.py --task mnist-mlp --batched-runs 250 --sequential-runs 4
    python benchmarks/harvest_throughput.py --task mnist-cnn --batched-runs 64 --sequential-runs 2 --epochs 12
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gpt_params.harvest import HarvestConfig, cohort_runs
from gpt_params.recipes import checkpoint_steps, cohort_shape, lr_factor, make_optimizer, run_recipe, run_seed
from gpt_params.tasks import get_task


def new_run(task, cfg: HarvestConfig, r: int):
    """Run ``r``'s recipe, freshly initialised network and optimizer, as the harvester draws them."""
    recipe = run_recipe(cfg.preset, np.random.default_rng([cfg.seed, 0xA1, r]))
    net = task.build(run_seed(cfg.seed, r))
    group = {"params": list(net.parameters()), "lr": recipe.lr, "weight_decay": recipe.weight_decay}
    return recipe, net, make_optimizer(recipe.optimizer, [group])


def train_step(net, opt, recipe, xb: torch.Tensor, yb: torch.Tensor, step: int, total: int) -> None:
    """One plain minibatch update with the recipe's scheduled learning rate."""
    loss = F.cross_entropy(net(xb), yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    for g in opt.param_groups:
        g["lr"] = recipe.lr * lr_factor(recipe.schedule, step, total)
    opt.step()


def standard(task, cfg: HarvestConfig, runs: int) -> tuple[float, int]:
    """Seconds and checkpoints for ``runs`` runs of the usual DataLoader loop, one after another."""
    from torch.utils.data import DataLoader, TensorDataset

    shape = cohort_shape(cfg.preset, np.random.default_rng(0))
    epochs = cfg.epochs or shape.epochs
    train = TensorDataset(task.data.x["train"], task.data.y["train"])
    evals = {
        s: DataLoader(TensorDataset(task.data.x[s], task.data.y[s]), batch_size=1000)
        for s in ("train", "val", "test")
    }
    per_epoch = len(train) // shape.batch_size
    total = epochs * per_epoch
    ckpt = set(checkpoint_steps(total, cfg.ckpts_per_run).tolist())

    @torch.no_grad()
    def evaluate(net) -> dict[str, float]:
        out = {}
        for split, loader in evals.items():
            loss = wrong = 0.0
            for xb, yb in loader:
                logits = net(xb)
                loss += F.cross_entropy(logits, yb, reduction="sum").item()
                wrong += (logits.argmax(1) != yb).sum().item()
            out[f"{split}_loss"], out[f"{split}_error"] = (
                loss / len(loader.dataset),
                wrong / len(loader.dataset),
            )
        return out

    start, n_ckpts = time.perf_counter(), 0
    for r in range(runs):
        recipe, net, opt = new_run(task, cfg, r)
        loader = DataLoader(
            train,
            batch_size=shape.batch_size,
            shuffle=True,
            drop_last=True,
            generator=torch.Generator().manual_seed(r),
        )
        evaluate(net)
        n_ckpts += 1
        step = 0
        for _ in range(epochs):
            for xb, yb in loader:
                train_step(net, opt, recipe, xb, yb, step, total)
                step += 1
                if step in ckpt:
                    evaluate(net)
                    n_ckpts += 1
    return time.perf_counter() - start, n_ckpts


def tuned(task, cfg: HarvestConfig, runs: int) -> tuple[float, int]:
    """Seconds and checkpoints for ``runs`` runs of the in-memory loop, one after another."""
    shape = cohort_shape(cfg.preset, np.random.default_rng(0))
    epochs = cfg.epochs or shape.epochs
    x, y = task.data.x["train"], task.data.y["train"]
    batch = shape.batch_size
    per_epoch = len(y) // batch
    total = epochs * per_epoch
    ckpt = set(checkpoint_steps(total, cfg.ckpts_per_run).tolist())
    start, n_ckpts = time.perf_counter(), 0
    for r in range(runs):
        recipe, net, opt = new_run(task, cfg, r)
        gen = torch.Generator().manual_seed(r)
        task.evaluate(task.flatten(net)[None])
        n_ckpts += 1
        step = 0
        for _ in range(epochs):
            order = torch.randperm(len(y), generator=gen)
            for b in range(per_epoch):
                idx = order[b * batch : (b + 1) * batch]
                train_step(net, opt, recipe, x[idx], y[idx], step, total)
                step += 1
                if step in ckpt:
                    task.evaluate(task.flatten(net)[None])
                    n_ckpts += 1
    return time.perf_counter() - start, n_ckpts


def training_rates(task, cfg: HarvestConfig, runs: int, steps: int) -> dict[str, float]:
    """Net-images per second of the three training loops (module docstring), ``steps`` steps each."""
    shape = cohort_shape(cfg.preset, np.random.default_rng(0))
    batch = shape.batch_size
    x, y = task.data.x["train"], task.data.y["train"]
    per_epoch = len(y) // batch
    short = replace(cfg, ckpts_per_run=2, epochs=-(-steps // per_epoch), runs=runs, cohort_size=runs)
    marks: dict[int, float] = {}
    task.train_cohort(
        short, 0, np.arange(runs), lambda done, total: marks.setdefault(done, time.perf_counter())
    )
    last = max(marks)
    rates = {"harvest": runs * batch * (last - 1 - 1) / (marks[last - 1] - marks[1])}

    theta = torch.stack([task.flatten(task.build(run_seed(cfg.seed, r))) for r in range(runs)])
    params = {k: v.clone().requires_grad_(True) for k, v in task.layout.unflatten(theta).items()}
    opt = torch.optim.SGD(params.values(), lr=0.01, momentum=0.9, nesterov=True)
    f = task.functional(in_dims_x=0)
    g = torch.Generator().manual_seed(0)
    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()
        idx = torch.randint(0, len(y), (runs, batch), generator=g)
        logits = f(params, x[idx])  # (R, B, C)
        loss = F.cross_entropy(logits.flatten(0, 1), y[idx].flatten(), reduction="sum") / batch
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    rates["plain_batched"] = runs * batch * steps / (time.perf_counter() - start)

    from torch.utils.data import DataLoader, TensorDataset

    recipe, net, opt = new_run(task, cfg, 0)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True, drop_last=True)
    done, start = -2, 0.0
    while done < steps:
        for xb, yb in loader:
            if done == 0:
                start = time.perf_counter()
            train_step(net, opt, recipe, xb, yb, 0, 1)
            done += 1
            if done == steps:
                break
    rates["one_at_a_time"] = batch * steps / (time.perf_counter() - start)
    return rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="mnist-mlp")
    p.add_argument("--preset", default="gpt")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    p.add_argument("--ckpts-per-run", type=int, default=50)
    p.add_argument("--batched-runs", type=int, default=250)
    p.add_argument("--sequential-runs", type=int, default=4)
    p.add_argument("--training-steps", type=int, default=50, help="steps of each training-phase loop")
    p.add_argument("--out", default="data/benchmarks/harvest_throughput.json")
    a = p.parse_args()
    task = get_task(a.task)
    _ = task.data
    cfg = HarvestConfig(
        task=a.task,
        runs=a.batched_runs,
        cohort_size=a.batched_runs,
        preset=a.preset,
        epochs=a.epochs,
        ckpts_per_run=a.ckpts_per_run,
    )
    t_std, n_std = standard(task, cfg, a.sequential_runs)
    t_seq, n_seq = tuned(task, cfg, a.sequential_runs)
    start = time.perf_counter()
    cohort = task.train_cohort(cfg, 0, cohort_runs(cfg, 0), None)
    t_bat = time.perf_counter() - start
    n_bat = cohort.params.shape[0] * cohort.params.shape[1]
    rates = training_rates(task, cfg, a.batched_runs, a.training_steps)
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "task": a.task,
        "preset": a.preset,
        "epochs": a.epochs or cohort_shape(a.preset, np.random.default_rng(0)).epochs,
        "sequential_standard": {"runs": a.sequential_runs, "seconds": t_std, "ckpts_per_s": n_std / t_std},
        "sequential_tuned": {"runs": a.sequential_runs, "seconds": t_seq, "ckpts_per_s": n_seq / t_seq},
        "batched": {"runs": a.batched_runs, "seconds": t_bat, "ckpts_per_s": n_bat / t_bat},
        "speedup_vs_standard": (n_bat / t_bat) / (n_std / t_std),
        "speedup_vs_tuned": (n_bat / t_bat) / (n_seq / t_seq),
        "training_net_images_per_s": rates,
        "training_vs_plain_batched": rates["harvest"] / rates["plain_batched"],
        "training_vs_one_at_a_time": rates["harvest"] / rates["one_at_a_time"],
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
