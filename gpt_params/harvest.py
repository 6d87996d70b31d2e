"""Harvesting checkpoint zoos: which runs go in which cohort and split, screening diverged runs, and
committing cohorts to the zoo. How a task's runs train is the task's own (``Task.train_cohort``).

Runs are numbered ``0 .. runs-1`` and grouped into cohorts of ``cohort_size`` consecutive ids.
A cohort is the unit of work and of commit: its runs train together (supervised: as one batched
program) and land in the zoo together, so a killed harvest loses at most the cohort in flight and a
rerun resumes at the first missing cohort. Everything a run does is a function of
``(config.seed, run_id)``, so a resumed harvest writes exactly what an uninterrupted one would.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from gpt_params.config import opt
from gpt_params.devices import process_device
from gpt_params.errors import GptParamsError
from gpt_params.recipes import SPACINGS, checkpoint_steps, run_seed  # noqa: F401 (checkpoint_steps: API)
from gpt_params.tasks import get_task
from gpt_params.tasks.base import Task, TrainedCohort
from gpt_params.tasks.supervised import parse_hidden
from gpt_params.zoo import SPLIT_NAMES, Cohort, ZooWriter, member_attrs, zoo_attrs

DIVERGED_ABS = 1e3  # a checkpoint with any |weight| above this counts as diverged


@dataclass
class HarvestConfig:
    """What to harvest. Every field but ``out`` and ``workers`` is stored in the zoo and must match on resume
    (``runs`` may grow: :func:`gpt_params.zoo.check_resumable`)."""

    task: str = field(metadata={"help": "task name from gpt_params.tasks.TASKS"})
    runs: int = field(
        metadata={
            "help": "number of training runs (rerun with more to grow a zoo whose cohorts are all whole)"
        }
    )
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
    augment: bool = opt(
        False,
        "supervised: augment training images as the task defines (cifar10-cnn: G.pt's random flips and "
        "4-pixel crops)",
    )
    train_images: int | None = opt(
        None,
        "supervised: train every run on the first N images of the train split (a random subset: splits are "
        "shuffled once), e.g. a CPU-sized CIFAR-10 zoo; validation and test stay whole (default: all)",
    )
    train_metric_images: int | None = opt(
        None,
        "supervised: score train_loss / train_error on the first N images of the train split "
        "(default: all of it; a subset keeps checkpoint scoring cheap on large datasets)",
    )
    hidden: str | None = opt(
        None,
        "MLP families (mnist-mlp, digits-mlp): the member to harvest, its hidden widths as 32 or 64,32 "
        "(default: the family's default member)",
    )
    architectures: str | None = opt(
        None,
        "MLP families: mixed draws each cohort's member (its hidden widths) from the family's documented "
        "distribution, leaving some widths out (gpt_params.tasks.supervised.draw_mlp_member); default: one member",
    )
    width_power: float = opt(
        1.0,
        "--architectures mixed: hidden widths drawn with density proportional to width^-P on the family's "
        "range; 1 is log-uniform, above 1 draws narrow members (cheap cohorts) more often",
    )
    val_frac: float = opt(0.1, "fraction of runs assigned to the val split")
    test_frac: float = opt(0.1, "fraction of runs assigned to the test split")
    shard_index: int = opt(0, "this process's shard (multi-process harvests)")
    num_shards: int = opt(1, "processes sharing the harvest; shard i does cohorts i, i + n, ...")
    out: str = opt("", "output zoo path (not stored)")
    workers: int = opt(1, "cartpole: parallel training processes (not stored)")
    device: str = opt(
        "cpu",
        "supervised: torch device that trains and scores the cohorts (cpu, cuda, cuda:1; not stored); under "
        "`accelerate launch`, cuda means each process's own GPU",
    )

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
        for name in ("epochs", "timesteps", "train_images", "train_metric_images"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise GptParamsError(f"--{name.replace('_', '-')} must be a positive integer, got {v}")
        if self.architectures not in (None, "mixed"):
            raise GptParamsError(f"--architectures must be 'mixed' (or left out), got {self.architectures!r}")
        if self.architectures and self.hidden is not None:
            raise GptParamsError("--hidden pins one member; --architectures mixed draws them: choose one")
        if not 0 <= self.width_power <= 4:
            raise GptParamsError(f"--width-power must lie in [0, 4], got {self.width_power}")
        if self.width_power != 1 and not self.architectures:
            raise GptParamsError(
                f"--width-power {self.width_power} shapes --architectures mixed draws; a one-member harvest has none"
            )
        if self.spacing not in SPACINGS:
            raise GptParamsError(f"--spacing must be one of {SPACINGS}, got {self.spacing!r}")
        if not 0 <= self.shard_index < self.num_shards:
            raise GptParamsError(f"shard index {self.shard_index} outside 0..{self.num_shards - 1}")
        if not (0 <= self.val_frac and 0 <= self.test_frac and self.val_frac + self.test_frac < 1):
            raise GptParamsError(
                f"val/test fractions {self.val_frac}/{self.test_frac} must be >= 0 and sum below 1"
            )

    def task_options(self) -> dict:
        """What :func:`~gpt_params.tasks.get_task` takes to build this harvest's task (data and member)."""
        options: dict = {"data_dir": self.data_dir} if self.data_dir else {}
        if self.hidden is not None:
            options["hidden"] = parse_hidden(self.hidden)
        return options

    def stored(self) -> dict:
        d = asdict(self)
        d.pop("out")
        d.pop("workers")
        d.pop("device")
        for name in (
            "train_images",
            "train_metric_images",
            "augment",
            "hidden",
            "architectures",
        ):  # older zoos stay resumable
            if not d[name]:
                d.pop(name)
        if d["spacing"] == "log":  # zoos harvested before --spacing existed stay resumable
            d.pop("spacing")
        if d["width_power"] == 1:  # and those before --width-power
            d.pop("width_power")
        return d


def run_split(run_id: int, val_frac: float, test_frac: float) -> int:
    """Split index of a run, a fixed function of its id alone (runs never cross splits)."""
    u = np.random.default_rng([0x5EED, run_id]).random()
    return 2 if u < test_frac else 1 if u < test_frac + val_frac else 0


def cohort_runs(cfg: HarvestConfig, cohort_id: int) -> np.ndarray:
    return np.arange(cohort_id * cfg.cohort_size, min((cohort_id + 1) * cfg.cohort_size, cfg.runs))


def diverged_reason(
    params: np.ndarray, metrics: dict[str, np.ndarray], may_be_nan: tuple[str, ...] = ()
) -> str | None:
    """Why a run's checkpoints ``(K, D)`` and metrics ``{name: (K,)}`` are unusable, or None; the
    metrics of ``may_be_nan`` may be NaN (``Task.may_be_nan``)."""
    if not np.isfinite(params).all():
        return "non-finite parameters"
    if np.abs(params).max() > DIVERGED_ABS:
        return f"parameters exploded (|w| > {DIVERGED_ABS:g})"
    for name, v in metrics.items():
        if name not in may_be_nan and not np.isfinite(v).all():
            return f"non-finite {name}"
    return None


def assemble_cohort(
    cfg: HarvestConfig,
    cohort_id: int,
    run_ids: np.ndarray,
    trained: TrainedCohort,
    may_be_nan: tuple[str, ...] = (),
) -> Cohort:
    """Package a trained cohort (``params`` ``(R, K, D)``, ``steps`` ``(R, K)``, ``metrics``
    ``{name: (R, K)}``), moving diverged runs out of the data into the cohort's divergence record
    (the metrics of ``may_be_nan`` may be NaN in a healthy run)."""
    recipes, steps, params, metrics = trained.hparams, trained.steps, trained.params, trained.metrics
    seeds = np.array([run_seed(cfg.seed, int(r)) for r in run_ids])
    splits = np.array([run_split(int(r), cfg.val_frac, cfg.test_frac) for r in run_ids], dtype=np.uint8)
    keep, diverged = [], []
    for i, r in enumerate(run_ids):
        reason = diverged_reason(params[i], {m: v[i] for m, v in metrics.items()}, may_be_nan)
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


def harvest(
    cfg: HarvestConfig,
    task: Task | None = None,
    on_cohort: Callable[[int, int], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> ZooWriter:
    """Harvest ``cfg.runs`` runs into ``cfg.out``, skipping cohorts already committed there.

    ``on_cohort(runs_in_cohort, cohort_id)`` is called after each commit (skipped cohorts included,
    before any training); ``on_step(done, total)`` during a cohort's training (``task.harvest_unit``).
    """
    task = task or get_task(cfg.task, **cfg.task_options())
    if cfg.preset not in task.harvest_presets:
        raise GptParamsError(
            f"--preset {cfg.preset!r} is not a {task.name} preset; expected one of {task.harvest_presets}"
        )
    if cfg.device.split(":")[0] not in task.harvest_devices:
        raise GptParamsError(
            f"--device {cfg.device!r}: {task.name} harvests on {', '.join(task.harvest_devices)} only"
        )
    if cfg.augment and task.augment is None:
        raise GptParamsError(f"--augment: {task.name} defines no augmentation of its training data")
    mixed = cfg.architectures == "mixed"
    if mixed and task.family is None:
        raise GptParamsError(f"--architectures mixed: {task.name} is one architecture, not a family")
    cfg = replace(cfg, device=str(process_device(cfg.device)))
    if mixed:
        attrs = zoo_attrs(task.name, None, task.metric_names, cfg.stored())
    else:
        attrs = zoo_attrs(task.name, task.layout, task.metric_names, cfg.stored(), task.options)
    writer = ZooWriter(cfg.out, attrs)
    n_cohorts = -(-cfg.runs // cfg.cohort_size)
    mine = [c for c in range(n_cohorts) if c % cfg.num_shards == cfg.shard_index]
    done = writer.done_cohorts()
    for c in mine:
        if c in done and on_cohort is not None:
            on_cohort(len(cohort_runs(cfg, c)), c)
    for c in mine:
        if c in done:
            continue
        run_ids = cohort_runs(cfg, c)
        rng = np.random.default_rng([cfg.seed, 0xA7C, c])
        member = task.draw_member(rng, cfg.width_power) if mixed else task
        trained = member.train_cohort(cfg, c, run_ids, on_step)
        cohort = assemble_cohort(cfg, c, run_ids, trained, task.may_be_nan)
        writer.commit(cohort, member_attrs(member.layout, member.options) if mixed else None)
        if on_cohort is not None:
            on_cohort(len(cohort_runs(cfg, c)), c)
    writer.rebuild_index()  # a commit killed between part and index leaves the index behind; catch up
    return writer
