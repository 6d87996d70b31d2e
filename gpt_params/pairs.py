"""Training pairs (theta_i, theta_j), j >= i, from train-split runs of a zoo.

Batches come from a buffer of whole runs held in memory: every step a few buffer slots are refilled
with fresh runs (one contiguous read each) and the batch's pairs are drawn from the buffer. Which
slots, runs and pairs are used at step ``s`` is a pure function of ``(seed, s)``, so a resumed
training sees exactly the stream an uninterrupted one would; a zoo larger than memory is fine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import cached_property, partial

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from gpt_params.errors import GptParamsError
from gpt_params.layout import ParamLayout, PermGroup, permute, random_perms
from gpt_params.normalize import ParamNormalizer
from gpt_params.tasks import get_task
from gpt_params.zoo_reader import Zoo


@dataclass
class PairConfig:
    """How training pairs are drawn."""

    metric: str = "val_loss"  # conditioning metric (validation, never test)
    init_frac: float = 0.25  # fraction of pairs that start at the random init (step 0)
    same_frac: float = 0.05  # fraction of pairs with j == i, so "stay where you are" is a prompt it knows
    # how the later end j is drawn among i+1 .. last: j = i + 1 + floor(u ** (1 / late_bias) * (last - i)),
    # u uniform; 1 is uniform, 2 makes the last tenth of a run's checkpoints about twice as frequent
    # (log-spaced checkpoints crowd the start of a run, where the loss is high)
    late_bias: float = 1.0
    buffer_runs: int = 512  # runs held in memory
    refresh_runs: int = 8  # buffer slots refilled per step
    augment: bool = True  # random hidden-unit permutation, the same for both ends of a pair
    # cut each run at its best checkpoint by the metric (early stopping): the metric then improves
    # along every pair, and a prompt names one point of a run rather than two (a validation loss that
    # falls and rises again as a run overfits is reached twice, by different networks)
    early_stop: bool = False
    higher_is_better: bool = False  # direction of ``metric`` (for ``early_stop``)

    def __post_init__(self) -> None:
        for name in ("init_frac", "same_frac"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise GptParamsError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if not self.late_bias > 0:
            raise GptParamsError(f"late_bias must be positive (1 = uniform), got {self.late_bias}")

    def to_dict(self) -> dict:
        return asdict(self)


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def best_index(metric: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Index of each run's best checkpoint, ``(R, K) -> (R,)``; non-finite values never win (an
    all-non-finite run gives its first checkpoint)."""
    m = np.where(np.isfinite(metric), metric if higher_is_better else -metric, -np.inf)
    return m.argmax(1)


def pair_indices(
    g: np.random.Generator, metric: np.ndarray, b: int, cfg: PairConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which ``b`` pairs to draw from runs with ``metric`` ``(runs, K)``: each pair's run and its two
    checkpoints ``(slot, i, j)``, each ``(b,)``; reads no parameters."""
    k = metric.shape[1]
    slot = g.integers(0, len(metric), b)
    # last usable checkpoint of each pair's run: the final one, or the best one with early stopping
    last = best_index(metric[slot], cfg.higher_is_better) if cfg.early_stop else np.full(b, k - 1)
    i = np.where(g.random(b) < cfg.init_frac, 0, np.floor(g.random(b) * (last + 1)).astype(np.int64))
    u = g.random(b) ** (1.0 / cfg.late_bias)  # late_bias 1: uniform over i+1 .. last
    later = i + 1 + np.floor(u * (last - i)).astype(np.int64)
    j = np.where((g.random(b) < cfg.same_frac) | (i == last), i, later)
    return slot, i, j


def draw_pairs(
    g: np.random.Generator,
    params: np.ndarray | Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]],
    metric: np.ndarray,
    b: int,
    cfg: PairConfig,
    normalizer: ParamNormalizer,
    layout: ParamLayout,
    groups: tuple[PermGroup, ...],
    task,
) -> dict[str, torch.Tensor]:
    """``b`` pairs ``(theta_i, theta_j)``, ``j >= i``, of runs with ``metric`` ``(runs, K)``, normalised,
    drawn with ``g`` as ``cfg`` says; ``task`` normalises the metric. ``params`` is the runs' parameters
    ``(runs, K, D)``, or a function ``(slot, i, j) -> (start, future)`` that reads the ends of the pairs
    (run ``slot``, checkpoints ``i`` and ``j``) as ``(B, D)`` tensors: the same batch, reading less."""
    slot, i, j = pair_indices(g, metric, b, cfg)
    if callable(params):
        start, future = params(slot, i, j)
    else:
        start = torch.from_numpy(params[slot, i])  # (B, D)
        future = torch.from_numpy(params[slot, j])  # (B, D)
    if cfg.augment and groups:
        perms = random_perms(groups, b, torch.Generator().manual_seed(int(g.integers(2**62))))
        both = permute(torch.cat([start, future]), layout, groups, [torch.cat([p, p]) for p in perms])
        start, future = both.chunk(2)
    m = torch.from_numpy(metric)
    return {
        "theta_start": normalizer.normalize(start),
        "theta_future": normalizer.normalize(future),
        "start_metric": task.normalize_metric(m[slot, i], cfg.metric),
        "prompt": task.normalize_metric(m[slot, j], cfg.metric),
    }


class PairStream(IterableDataset):
    """Yields batches ``{theta_start, theta_future: (B, D); start_metric, prompt: (B,)}``, normalised,
    for steps ``start_step, start_step + 1, ...``; one HDF5 handle per worker process."""

    def __init__(
        self,
        zoo_path: str,
        rows: np.ndarray,
        batch_size: int,
        cfg: PairConfig,
        normalizer: ParamNormalizer,
        layout: ParamLayout,
        groups: tuple[PermGroup, ...],
        task: str,  # its name: a task's metric normalisation, looked up in each worker process
        seed: int = 0,
        start_step: int = 0,
    ) -> None:
        self.zoo_path = zoo_path
        self.rows = np.asarray(rows)
        if len(self.rows) == 0:
            raise ValueError("no runs to draw training pairs from")
        self.batch_size = batch_size
        self.cfg = cfg
        self.normalizer = normalizer
        self.layout = layout
        self.groups = groups
        self.task = task
        self.seed = seed
        self.start_step = start_step
        self.n_slots = min(cfg.buffer_runs, len(self.rows))

    def _refills(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(slots, runs) refilled before ``step``; step 0 fills every slot."""
        if step == 0:
            return np.arange(self.n_slots), _rng(self.seed, 1).choice(self.rows, self.n_slots, replace=False)
        g = _rng(self.seed, 2, step)
        k = min(self.cfg.refresh_runs, self.n_slots)
        return g.choice(self.n_slots, k, replace=False), g.choice(self.rows, k)

    def buffer_at(self, step: int) -> np.ndarray:
        """Which run each slot holds when ``step`` is drawn (replays the refills, reads nothing)."""
        owner = np.empty(self.n_slots, dtype=np.int64)
        for s in range(step + 1):
            slots, runs = self._refills(s)
            owner[slots] = runs
        return owner

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_task"}  # workers look the task up anew

    @cached_property
    def _task(self):
        """The task, for its metric normalisation: looked up in the process that draws batches (a task
        holds no data until first used, and this uses none)."""
        return get_task(self.task)

    def batch(self, step: int, params: np.ndarray, metric: np.ndarray) -> dict[str, torch.Tensor]:
        """Draw the pairs of ``step`` from the buffer ``params`` (slots, K, D) / ``metric`` (slots, K)."""
        g = _rng(self.seed, 3, step)
        return draw_pairs(
            g,
            params,
            metric,
            self.batch_size,
            self.cfg,
            self.normalizer,
            self.layout,
            self.groups,
            self._task,
        )

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        n_workers, worker = (info.num_workers, info.id) if info else (1, 0)
        zoo = Zoo(self.zoo_path)
        metric_all = zoo.metrics[self.cfg.metric]
        owner = self.buffer_at(self.start_step)
        params = np.stack([zoo.params(int(r)) for r in owner])  # (slots, K, D)
        metric = metric_all[owner]
        step = self.start_step
        while True:
            if step > self.start_step:
                slots, runs = self._refills(step)
                for s, r in zip(slots, runs, strict=True):
                    params[s] = zoo.params(int(r))
                metric[slots] = metric_all[runs]
            if (step - self.start_step) % n_workers == worker:
                yield self.batch(step, params, metric)
            step += 1


def pairs_per_batch(
    numel: int, units: int, batch_size: int, batch_params: int = 0, batch_units: int = 0, min_batch: int = 16
) -> int:
    """Pairs in a batch of a member with ``numel`` parameters and ``units`` hidden units: ``batch_size``,
    fewer where pairs x ``numel`` would pass ``batch_params`` or pairs x ``units`` pass ``batch_units``
    (0: no cap), never fewer than ``min_batch``."""
    fit = batch_size
    if batch_params:
        fit = min(fit, batch_params // numel)
    if batch_units:
        fit = min(fit, batch_units // max(units, 1))
    return min(batch_size, max(min_batch, fit))


def read_pair_ends(
    zoo: Zoo, runs: np.ndarray, slot: np.ndarray, i: np.ndarray, j: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two ends of pairs ``(slot, i, j)`` of the zoo rows ``runs``, ``(B, D)`` each, reading each used
    checkpoint once (``draw_pairs`` on the whole runs would pick the same values)."""
    d = zoo.layout_of(int(runs[0])).numel
    start, future = np.empty((len(slot), d), np.float32), np.empty((len(slot), d), np.float32)
    for s in np.unique(slot):
        mine = np.flatnonzero(slot == s)
        ks = np.unique(np.concatenate([i[mine], j[mine]]))  # (n,) increasing
        rows = zoo.checkpoints(int(runs[s]), ks)  # (n, D)
        start[mine] = rows[np.searchsorted(ks, i[mine])]
        future[mine] = rows[np.searchsorted(ks, j[mine])]
    return torch.from_numpy(start), torch.from_numpy(future)


class MemberPairStream(IterableDataset):
    """Batches of a mixed-architecture zoo, each from one family member (so one shape): step ``s``
    draws a member with probability proportional to its train runs (times its hidden units to the power
    ``-member_power``: 0 keeps draws proportional to runs, 0.5 gives a 784-4-10 member 8 times the draws per run
    of a 784-256-10 one, whose steps cost several times as much), reads ``runs_per_step`` of its runs (more
    for a batch of more than ``runs_per_step * pairs_per_run`` pairs: one run per ``pairs_per_run`` pairs, so
    large batches of narrow members are not drawn from a few runs) and draws the pairs from them as
    :class:`PairStream` does, reading only the checkpoints the pairs use. Yields what :class:`PairStream`
    yields plus ``member`` (the zoo's member index). Everything a step draws is a function of
    ``(seed, s)``, so a resumed training sees the stream an uninterrupted one would.

    ``batch_params`` caps a batch's pairs times its member's parameter count (``0``: no cap), so a
    784-256-256-10 member gets fewer pairs than a 784-4-10 one and no step outgrows memory;
    ``batch_units`` likewise caps pairs times the member's hidden units, the tokens a step's cost follows
    (a 784-4-174-10 member has few parameters but 178 tokens a pair). Member ``m`` gets
    ``min(batch_size, max(min_batch, min(batch_params // D_m, batch_units // U_m)))`` pairs
    (:meth:`batch_of`; a cap of 0 is none)."""

    def __init__(
        self,
        zoo_path: str,
        rows_by_member: dict[int, np.ndarray],
        batch_size: int,
        cfg: PairConfig,
        normalizers: dict[int, ParamNormalizer],
        layouts: dict[int, ParamLayout],
        groups: dict[int, tuple[PermGroup, ...]],
        task: str,
        seed: int = 0,
        start_step: int = 0,
        runs_per_step: int = 8,
        batch_params: int = 0,
        min_batch: int = 16,
        batch_units: int = 0,
        member_power: float = 0.0,
        pairs_per_run: int = 32,
    ) -> None:
        if pairs_per_run < 1:
            raise ValueError(f"pairs_per_run {pairs_per_run}; expected a positive number of pairs")
        self.members = np.array(sorted(m for m, r in rows_by_member.items() if len(r)))
        if len(self.members) == 0:
            raise ValueError("no runs to draw training pairs from")
        self.rows = {int(m): np.asarray(rows_by_member[m]) for m in self.members}
        # each member's hidden units, the tokens a pair of it makes
        self.units = {int(m): sum(g.size for g in groups[int(m)]) for m in self.members}
        weight = np.array([len(self.rows[int(m)]) for m in self.members], dtype=np.float64)
        weight *= np.maximum([self.units[int(m)] for m in self.members], 1.0) ** -member_power
        self.p = weight / weight.sum()  # (members,) each step's member draw
        self.zoo_path, self.batch_size, self.cfg, self.task = zoo_path, batch_size, cfg, task
        self.normalizers, self.layouts, self.groups = normalizers, layouts, groups
        self.seed, self.start_step, self.runs_per_step = seed, start_step, runs_per_step
        self.batch_params, self.min_batch, self.batch_units = batch_params, min_batch, batch_units
        self.pairs_per_run = pairs_per_run

    def batch_of(self, member: int) -> int:
        """Pairs in a batch of ``member``: ``batch_size``, fewer for a member too large for ``batch_params``
        or with too many hidden units for ``batch_units``."""
        return pairs_per_batch(
            self.layouts[member].numel,
            self.units[member],
            self.batch_size,
            self.batch_params,
            self.batch_units,
            self.min_batch,
        )

    def runs_of(self, member: int) -> int:
        """Runs a batch of ``member`` reads: ``runs_per_step``, or one per ``pairs_per_run`` of its pairs where
        that is more; never more than the member's train runs."""
        want = max(self.runs_per_step, -(-self.batch_of(member) // self.pairs_per_run))
        return min(want, len(self.rows[member]))

    @cached_property
    def _task(self):
        return get_task(self.task)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_task"}

    def member_at(self, step: int) -> int:
        return int(_rng(self.seed, 5, step).choice(self.members, p=self.p))

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        n_workers, worker = (info.num_workers, info.id) if info else (1, 0)
        zoo = Zoo(self.zoo_path)
        metric_all = zoo.metrics[self.cfg.metric]
        step = self.start_step
        while True:
            if (step - self.start_step) % n_workers == worker:
                m = self.member_at(step)
                g = _rng(self.seed, 6, step)
                runs = np.sort(g.choice(self.rows[m], self.runs_of(m), replace=False))
                # only the checkpoints the pairs use: a wide member's few pairs need a few of its runs' rows
                batch = draw_pairs(
                    g, partial(read_pair_ends, zoo, runs), metric_all[runs], self.batch_of(m), self.cfg,
                    self.normalizers[m], self.layouts[m], self.groups[m], self._task,
                )  # fmt: skip
                yield {**batch, "member": torch.tensor(m)}
            step += 1
