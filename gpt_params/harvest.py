"""Harvesting checkpoint zoos: which runs, which checkpoints, and batched supervised training.

Runs are numbered ``0 .. runs-1`` and grouped into cohorts of ``cohort_size`` consecutive ids.
A cohort is the unit of work and of commit: its runs train together (supervised: as one batched
program) and land in the zoo together, so a killed harvest loses at most the cohort in flight and a
rerun resumes at the first missing cohort. Everything a run does is a function of
``(config.seed, run_id)``, so a resumed harvest writes exactly what an uninterrupted one would.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from gpt_params.config import opt
from gpt_params.errors import GptParamsError
from gpt_params.recipes import (
    RL_PRESETS,
    SUPERVISED_PRESETS,
    cohort_shape,
    lr_factor,
    make_optimizer,
    run_recipe,
)
from gpt_params.tasks import get_task
from gpt_params.tasks.base import Task
from gpt_params.zoo import SPLIT_NAMES, Cohort, ZooWriter, zoo_attrs

SPACINGS = ("log", "linear")  # how a run's checkpoints spread over its steps (``checkpoint_steps``)
DIVERGED_ABS = 1e3  # a checkpoint with any |weight| above this counts as diverged


@dataclass
class HarvestConfig:
    """What to harvest. Every field but ``out`` and ``workers`` is stored in the zoo and must match on resume."""

    task: str = field(metadata={"help": "task name from gpt_params.tasks.TASKS"})
    runs: int = field(metadata={"help": "number of training runs"})
    ckpts_per_run: int = opt(
        50, "checkpoints kept per run: step 0, the final step and --spacing steps between"
    )
    spacing: str = opt(
        "log",
        "checkpoint steps: log (dense early, where a supervised loss falls fastest) or linear "
        "(even, for PPO, whose return rises late in the run)",
    )
    preset: str = opt(
        "varied", "supervised: gpt, adam or varied; cartpole: ppo or varied (see gpt_params.recipes)"
    )
    seed: int = opt(0, "harvest seed; run r's seed and hyperparameters derive from (seed, r)")
    cohort_size: int = opt(250, "runs trained and committed together (a crash loses at most one cohort)")
    epochs: int | None = opt(None, "supervised: override the preset's epochs")
    timesteps: int | None = opt(None, "cartpole: override the preset's PPO timesteps")
    data_dir: str | None = opt(
        None, "supervised: torchvision data directory (default: offline MNIST-5k / digits)"
    )
    val_frac: float = opt(0.1, "fraction of runs assigned to the val split")
    test_frac: float = opt(0.1, "fraction of runs assigned to the test split")
    shard_index: int = opt(0, "this process's shard (multi-process harvests)")
    num_shards: int = opt(1, "processes sharing the harvest; shard i does cohorts i, i + n, ...")
    out: str = opt("", "output zoo path (not stored)")
    workers: int = opt(1, "cartpole: parallel training processes (not stored)")

    def __post_init__(self) -> None:
        for name in ("runs", "ckpts_per_run", "cohort_size", "num_shards", "workers"):
            if getattr(self, name) < 1:
                raise GptParamsError(
                    f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}"
                )
        if self.ckpts_per_run < 2:
            raise GptParamsError(
                f"--ckpts-per-run must be at least 2 (init and final), got {self.ckpts_per_run}"
            )
        for name in ("epochs", "timesteps"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise GptParamsError(f"--{name} must be a positive integer, got {v}")
        if self.spacing not in SPACINGS:
            raise GptParamsError(f"--spacing must be one of {SPACINGS}, got {self.spacing!r}")
        if not 0 <= self.shard_index < self.num_shards:
            raise GptParamsError(f"shard index {self.shard_index} outside 0..{self.num_shards - 1}")
        if not (0 <= self.val_frac and 0 <= self.test_frac and self.val_frac + self.test_frac < 1):
            raise GptParamsError(
                f"val/test fractions {self.val_frac}/{self.test_frac} must be >= 0 and sum below 1"
            )

    def stored(self) -> dict:
        d = asdict(self)
        d.pop("out")
        d.pop("workers")
        if d["spacing"] == "log":  # zoos harvested before --spacing existed stay resumable
            d.pop("spacing")
        return d


def run_split(run_id: int, val_frac: float, test_frac: float) -> int:
    """Split index of a run, a fixed function of its id alone (runs never cross splits)."""
    u = np.random.default_rng([0x5EED, run_id]).random()
    return 2 if u < test_frac else 1 if u < test_frac + val_frac else 0


def run_seed(seed: int, run_id: int) -> int:
    return int(np.random.SeedSequence([seed, run_id]).generate_state(1)[0] & 0x7FFFFFFF)


def checkpoint_steps(total: int, k: int, spacing: str = "log") -> np.ndarray:
    """``k`` distinct steps in ``[0, total]``: 0, ``total`` and ones between, log-spaced (so the fast
    early fall of the loss is densely sampled; steps 1, 2, 3, ... fill in where log spacing collides)
    or evenly spaced (``spacing="linear"``)."""
    if total < k - 1:
        raise GptParamsError(
            f"a run of {total} steps cannot hold {k} distinct checkpoints; lower --ckpts-per-run"
        )
    n = k - 1
    if n == 1:
        return np.array([0, total], dtype=np.int64)
    if spacing == "linear":  # n distinct values: consecutive rounded points differ by >= 1 step
        return np.concatenate([[0], np.round(np.linspace(total / n, total, n)).astype(np.int64)])
    steps: np.ndarray = np.unique(np.round(np.geomspace(1, total, n)).astype(np.int64))
    while len(steps) < n:  # collisions at small steps: widen until n distinct values
        extra = np.setdiff1d(np.arange(1, total + 1), steps)[: n - len(steps)]
        steps = np.unique(np.concatenate([steps, extra]))
    return np.concatenate([[0], steps])


def cohort_runs(cfg: HarvestConfig, cohort_id: int) -> np.ndarray:
    return np.arange(cohort_id * cfg.cohort_size, min((cohort_id + 1) * cfg.cohort_size, cfg.runs))


def diverged_reason(params: np.ndarray, metrics: dict[str, np.ndarray]) -> str | None:
    """Why a run's checkpoints ``(K, D)`` and metrics ``{name: (K,)}`` are unusable, or None."""
    if not np.isfinite(params).all():
        return "non-finite parameters"
    if np.abs(params).max() > DIVERGED_ABS:
        return f"parameters exploded (|w| > {DIVERGED_ABS:g})"
    for name, v in metrics.items():
        if name != "train_return" and not np.isfinite(v).all():
            return f"non-finite {name}"
    return None


def assemble_cohort(
    cfg: HarvestConfig,
    cohort_id: int,
    run_ids: np.ndarray,
    recipes: list[dict],
    steps: np.ndarray,
    params: np.ndarray,
    metrics: dict[str, np.ndarray],
) -> Cohort:
    """Package finished runs ``params`` ``(R, K, D)``, ``steps`` ``(R, K)``, ``metrics`` ``{name: (R, K)}``,
    moving diverged runs out of the data into the cohort's divergence record."""
    seeds = np.array([run_seed(cfg.seed, int(r)) for r in run_ids])
    splits = np.array([run_split(int(r), cfg.val_frac, cfg.test_frac) for r in run_ids], dtype=np.uint8)
    keep, diverged = [], []
    for i, r in enumerate(run_ids):
        reason = diverged_reason(params[i], {m: v[i] for m, v in metrics.items()})
        if reason is None:
            keep.append(i)
        else:
            diverged.append(
                {
                    "run_id": int(r),
                    "seed": int(seeds[i]),
                    "split": SPLIT_NAMES[splits[i]],
                    "hparams": recipes[i],
                    "reason": reason,
                }
            )
    k = np.array(keep, dtype=np.int64)
    return Cohort(
        cohort_id=cohort_id,
        run_id=run_ids[k],
        seed=seeds[k],
        split=splits[k],
        hparams=[json.dumps(recipes[i], sort_keys=True) for i in keep],
        step=steps[k],
        params=params[k],
        metrics={m: v[k] for m, v in metrics.items()},
        diverged=diverged,
    )


def train_supervised_cohort(
    task: Task, cfg: HarvestConfig, cohort_id: int, on_step: Callable[[int, int], None] | None = None
) -> Cohort:
    """Train one cohort of supervised runs as one batched program and checkpoint them.

    Each run has its own initialisation, data order and recipe; real ``torch.optim`` / timm
    optimizers update it (one param group per distinct recipe, so per-run learning rates and weight
    decays hold exactly); one batched forward pass serves all runs.
    """
    run_ids = cohort_runs(cfg, cohort_id)
    shape = cohort_shape(cfg.preset, np.random.default_rng([cfg.seed, 0xC0, cohort_id]))
    epochs = cfg.epochs or shape.epochs
    recipes = [run_recipe(cfg.preset, np.random.default_rng([cfg.seed, 0xA1, int(r)])) for r in run_ids]
    seeds = [run_seed(cfg.seed, int(r)) for r in run_ids]

    x, y = task.data.x["train"], task.data.y["train"]
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
        [torch.stack([nets[i][j].detach() for i in members]).requires_grad_(True) for j in range(len(names))]
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
        params[:, k] = theta.numpy()
        for m, v in task.evaluate(theta).items():
            metrics[m][:, k] = v

    gen = torch.Generator().manual_seed(
        int(np.random.SeedSequence([cfg.seed, 0xD47A, cohort_id]).generate_state(1)[0])
    )
    xb = torch.empty(
        R * batch, *x.shape[1:]
    )  # reused: a fresh minibatch tensor per step costs more than the matmuls
    record(0)
    next_k, step = 1, 0
    for _ in range(epochs):
        shuffles = torch.argsort(torch.rand(R, n_train, generator=gen), dim=1)[
            order
        ]  # (R, N): each run's own order
        for b in range(per_epoch):
            idx = shuffles[:, b * batch : (b + 1) * batch].reshape(-1)  # (R * B,)
            torch.index_select(x, 0, idx, out=xb)
            logits = task.logits(stacked(), xb.view(R, batch, *x.shape[1:]), shared=False)  # (R, C, B)
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
    return assemble_cohort(cfg, cohort_id, run_ids, hp, steps, params, metrics)


def harvest(
    cfg: HarvestConfig,
    task: Task | None = None,
    on_cohort: Callable[[int, int], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> ZooWriter:
    """Harvest ``cfg.runs`` runs into ``cfg.out``, skipping cohorts already committed there.

    ``on_cohort(runs_in_cohort, cohort_id)`` is called after each commit (skipped cohorts included,
    before any training); ``on_step(step, total)`` during supervised training.
    """
    task = task or get_task(cfg.task, **({"data_dir": cfg.data_dir} if cfg.data_dir else {}))
    if task.kind == "rl":
        from gpt_params.harvest_rl import train_rl_cohort as train
    else:
        train = train_supervised_cohort
    presets = RL_PRESETS if task.kind == "rl" else SUPERVISED_PRESETS
    if cfg.preset not in presets:
        raise GptParamsError(
            f"--preset {cfg.preset!r} is not a {task.kind} preset; expected one of {presets}"
        )
    writer = ZooWriter(cfg.out, zoo_attrs(task.name, task.layout, task.metric_names, cfg.stored()))
    n_cohorts = -(-cfg.runs // cfg.cohort_size)
    mine = [c for c in range(n_cohorts) if c % cfg.num_shards == cfg.shard_index]
    done = writer.done_cohorts()
    for c in mine:
        if c in done and on_cohort is not None:
            on_cohort(len(cohort_runs(cfg, c)), c)
    for c in mine:
        if c in done:
            continue
        cohort = train(task, cfg, c, on_step=on_step)
        writer.commit(cohort)
        if on_cohort is not None:
            on_cohort(len(cohort_runs(cfg, c)), c)
    writer.rebuild_index()  # a commit killed between part and index leaves the index behind; catch up
    return writer
