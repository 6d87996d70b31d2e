"""Checkpoints per second: batched harvesting vs one-network-at-a-time training, same recipe.

All sides train the task with the same preset (default: G.pt's `gpt` recipe, 25 epochs), record
the same log-spaced checkpoints and evaluate each on the full train/val/test splits. Two
one-network-at-a-time baselines:

* ``standard``: the usual PyTorch loop, ``DataLoader(TensorDataset, shuffle=True)`` for training
  and a ``DataLoader`` pass over each split per checkpoint (how G.pt harvested);
* ``tuned``: the same loop on in-memory tensors, manual minibatches, whole-split evaluation in one
  call: the fastest one-network loop we know how to write.

    python benchmarks/harvest_throughput.py --task mnist-mlp --batched-runs 250 --sequential-runs 4
"""

from __future__ import annotations

import argparse
import json
import platform
import time
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="mnist-mlp")
    p.add_argument("--preset", default="gpt")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    p.add_argument("--ckpts-per-run", type=int, default=50)
    p.add_argument("--batched-runs", type=int, default=250)
    p.add_argument("--sequential-runs", type=int, default=4)
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
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
