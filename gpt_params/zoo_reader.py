"""Reading checkpoint zoos: :class:`Zoo` gives runs, metrics and parameters; :func:`summarise` the
statistics ``gpt-params zoo info`` reports."""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path

import h5py
import numpy as np

from gpt_params.errors import ZooError
from gpt_params.layout import ParamLayout
from gpt_params.tasks import get_task
from gpt_params.tasks.base import Task, task_label
from gpt_params.zoo import MIXED, SPLIT_NAMES, member_of, read_attrs

QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


class Zoo:
    """A zoo file opened for reading. Small arrays load eagerly; parameters are read on demand
    through one h5py handle per process (safe to share with forked dataloader workers).

    Shapes: ``step`` and each ``metrics[name]`` are ``(R, K)``; :meth:`params` is ``(K, D)``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        attrs = read_attrs(self.path)
        self.task: str = attrs["task"]
        self.mixed = attrs.get("architectures") == MIXED  # several members of the task's family
        self._layout = ParamLayout.from_json(attrs["layout"]) if not self.mixed else None
        self._task_options: dict = json.loads(attrs.get("task_options", "{}"))  # the family member held
        self.metric_names: tuple[str, ...] = tuple(json.loads(attrs["metric_names"]))
        self.harvest_config: dict = json.loads(attrs["harvest_config"])
        self.package_version: str = attrs.get("package_version", "?")
        with h5py.File(self.path, "r") as f:
            self.run_id = f["runs/run_id"][()]
            self.seed = f["runs/seed"][()]
            self.split = f["runs/split"][()]
            self._hparams = f["runs/hparams"][()]
            self.step = f["step"][()] if "step" in f else np.zeros((0, 0), np.int64)
            self.metrics = {m: f["metrics"][m][()] for m in f["metrics"]}
            self.diverged = [json.loads(r) for r in f["diverged/record"][()]]
            if self.mixed:  # runs grouped by member: members/<i>/params, runs/member, runs/member_row
                groups = f.get("members", {})
                self.members = [member_of(groups[str(i)]["params"].attrs) for i in range(len(groups))]
                self._datasets = [f"members/{i}/params" for i in range(len(groups))]
                self.member = f["runs/member"][()] if "member" in f["runs"] else np.zeros(0, np.int64)
                self.member_row = f["runs/member_row"][()] if "member" in f["runs"] else np.zeros(0, np.int64)
            else:
                self.members = [{"layout": attrs["layout"], "task_options": attrs.get("task_options", "{}")}]
                self._datasets = ["params"]
                self.member = np.zeros(len(self.run_id), np.int64)
                self.member_row = np.arange(len(self.run_id))
        self.member_layouts = [ParamLayout.from_json(m["layout"]) for m in self.members]
        self.member_options: list[dict] = [json.loads(m["task_options"]) for m in self.members]
        self._handle: h5py.File | None = None
        self._pid = -1

    @property
    def n_runs(self) -> int:
        return len(self.run_id)

    @property
    def n_ckpts(self) -> int:
        return self.step.shape[1] if self.step.ndim == 2 and self.step.shape[0] else 0

    @property
    def layout(self) -> ParamLayout:
        """The layout of every network in a single-architecture zoo (see :meth:`layout_of` otherwise)."""
        if self._layout is None:
            raise ZooError(
                f"zoo {str(self.path)!r} holds {len(self.members)} architectures of {self.task}; "
                f"ask for one run's (layout_of) or one member's runs (runs_of_member)"
            )
        return self._layout

    @property
    def task_options(self) -> dict:
        """The family member every network is (a single-architecture zoo); see :meth:`options_of`."""
        self.layout  # noqa: B018 (a ZooError for a mixed zoo)
        return self._task_options

    def layout_of(self, row: int) -> ParamLayout:
        return self.member_layouts[int(self.member[row])]

    def options_of(self, row: int) -> dict:
        """``get_task`` options of run ``row``'s architecture."""
        return self.member_options[int(self.member[row])]

    def runs_of_member(self, member: int, split: str | None = None) -> np.ndarray:
        """Rows of member ``member``'s runs (of ``split`` if given), in zoo order."""
        rows = np.flatnonzero(self.member == member)
        return rows if split is None else rows[self.split[rows] == SPLIT_NAMES.index(split)]

    @cached_property
    def hparams(self) -> list[dict]:
        return [json.loads(h) for h in self._hparams]

    def runs(self, split: str) -> np.ndarray:
        """Row indices of the runs in ``split`` ('train', 'val' or 'test')."""
        if split not in SPLIT_NAMES:
            raise ZooError(f"unknown split {split!r}; expected one of {SPLIT_NAMES}")
        return np.flatnonzero(self.split == SPLIT_NAMES.index(split))

    def first_runs(self, n: int, split: str) -> np.ndarray:
        """The first ``n`` rows of ``split``; a :class:`ZooError` if ``n < 1`` or the split is empty."""
        rows = self.runs(split)[:n]
        if n < 1 or len(rows) == 0:
            raise ZooError(
                f"{str(self.path)!r} has {len(self.runs(split))} {split}-split runs; asked for {n}"
            )
        return rows

    def unseen_runs(self, n: int, split: str = "test") -> np.ndarray:
        """The first ``n`` rows of ``split``: networks no model trained on this zoo has seen. ``"test"``
        for scores; ``"val"`` (runs only watched during training) to choose settings before them."""
        if split not in ("test", "val"):
            raise ZooError(f"unseen runs come from the 'test' or 'val' split, not {split!r}")
        return self.first_runs(n, split)

    def require_task(self, task: Task) -> None:
        """A :class:`ZooError` unless this zoo holds networks of ``task`` (e.g. the task of a model)."""
        if self.task != task.name or self.task_options != task.options:
            raise ZooError(f"zoo {str(self.path)!r} is a {self.label!r} zoo; the model is for {task.label!r}")

    @property
    def label(self) -> str:
        if self.mixed:
            return f"{self.task} family ({len(self.members)} architectures)"
        return task_label(self.task, self.task_options)

    def make_task(self, data_dir: str | None = None, member: int | None = None) -> Task:
        """The task of this zoo's networks (of member ``member``'s in a mixed zoo, else the family's
        default member), reading its data from ``data_dir`` or, by default, the directory the zoo was
        harvested from."""
        data_dir = data_dir or self.harvest_config.get("data_dir")
        if member is not None:
            options = self.member_options[member]
        else:  # a mixed zoo: the family's default member, which knows the family
            options = {} if self.mixed else self.task_options
        return get_task(self.task, **options, **({"data_dir": data_dir} if data_dir else {}))

    def _file(self) -> h5py.File:
        if self._handle is None or self._pid != os.getpid():
            self._handle = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._handle

    def params(self, row: int) -> np.ndarray:
        """All checkpoints of run ``row``: ``(K, D)`` float32 (D of its architecture), one contiguous read."""
        return self._file()[self._datasets[int(self.member[row])]][int(self.member_row[row])]

    def checkpoint(self, row: int, k: int) -> np.ndarray:
        """Checkpoint ``k`` of run ``row``: ``(D,)`` float32."""
        return self._file()[self._datasets[int(self.member[row])]][int(self.member_row[row]), k]

    def checkpoints(self, row: int, ks: np.ndarray) -> np.ndarray:
        """Checkpoints ``ks`` (increasing, distinct) of run ``row``: ``(len(ks), D)`` float32; the whole run
        in one read where ``ks`` is most of it."""
        ks = np.asarray(ks, dtype=np.int64)
        if 2 * len(ks) > self.n_ckpts:
            return self.params(row)[ks]
        dset = self._file()[self._datasets[int(self.member[row])]]
        return dset[int(self.member_row[row]), ks.tolist()]

    def sample_checkpoints(self, rows: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
        """Up to ``size`` checkpoints ``(n, D)`` drawn without replacement from the runs ``rows``."""
        picks = rng.choice(len(rows) * self.n_ckpts, min(size, len(rows) * self.n_ckpts), replace=False)
        return np.stack([self.checkpoint(int(rows[i // self.n_ckpts]), int(i % self.n_ckpts)) for i in picks])

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> Zoo:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _quantiles(x: np.ndarray) -> dict[str, float]:
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return {}
    return {f"q{int(q * 100):02d}": float(np.quantile(x, q)) for q in QUANTILES}


def summarise(zoo: Zoo, max_param_runs: int = 256, seed: int = 0) -> dict:
    """Runs per split, checkpoints, metric quantiles (all checkpoints and final ones) per split, and
    parameter statistics of train-split checkpoints (from up to ``max_param_runs`` random runs)."""
    out: dict = {
        "path": str(zoo.path),
        "task": zoo.label,
        "n_params": zoo.layout.numel if not zoo.mixed else None,
        "ckpts_per_run": zoo.n_ckpts,
        "runs": {s: int(len(zoo.runs(s))) for s in SPLIT_NAMES},
        "diverged_runs": len(zoo.diverged),
        "harvest_config": zoo.harvest_config,
        "metrics": {},
    }
    for s in SPLIT_NAMES:
        rows = zoo.runs(s)
        if len(rows) == 0:
            continue
        out["metrics"][s] = {
            m: {"all": _quantiles(v[rows].ravel()), "final": _quantiles(v[rows, -1])}
            for m, v in zoo.metrics.items()
        }
    if zoo.mixed:  # per member: its runs and where they end; parameter statistics are per layout
        out["architectures"] = [
            {
                "member": task_label(zoo.task, zoo.member_options[m]),
                "n_params": zoo.member_layouts[m].numel,
                "runs": {s: int(len(zoo.runs_of_member(m, s))) for s in SPLIT_NAMES},
                "final": {
                    name: float(np.nanmedian(v[zoo.runs_of_member(m), -1])) for name, v in zoo.metrics.items()
                },
            }
            for m in range(len(zoo.members))
        ]
        out["architectures"].sort(key=lambda a: (a["n_params"], a["member"]))
        return out
    train = zoo.runs("train")
    if len(train):
        pick = np.sort(
            np.random.default_rng(seed).choice(train, size=min(max_param_runs, len(train)), replace=False)
        )
        theta = np.concatenate([zoo.params(int(r)) for r in pick]).astype(np.float64)  # (runs * K, D)
        per_tensor = {}
        for name, off, size in zip(zoo.layout.names, zoo.layout.offsets, zoo.layout.sizes, strict=True):
            t = theta[:, off : off + size]
            per_tensor[name] = {"mean": float(t.mean()), "std": float(t.std())}
        out["params"] = {
            "runs_sampled": len(pick),
            "mean": float(theta.mean()),
            "std": float(theta.std()),
            "abs_max": float(np.abs(theta).max()),
            "per_tensor": per_tensor,
        }
    return out
