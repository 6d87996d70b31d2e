"""HDF5 checkpoint zoos: crash-safe writing, reading, merging (schema in ``data/README.md``).

A harvest writes each finished cohort of runs to its own part file under ``<zoo>.parts/`` (written
to a temporary name, fsynced, then renamed: a part is either whole or absent), and after every part
rebuilds the small index file ``<zoo>`` the same way. The index holds every per-run and
per-checkpoint array itself and maps ``params`` onto the parts with an HDF5 virtual dataset, so a
reader opening ``<zoo>`` with h5py alone sees exactly the committed runs. ``merge`` copies zoos
(or shards of one harvest) into one self-contained file, or indexes them virtually.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from gpt_params import __version__
from gpt_params.errors import ZooError
from gpt_params.layout import ParamLayout

SCHEMA_VERSION = 1
MIXED = "mixed"  # root attribute ``architectures`` of a zoo holding several members of a family
SPLIT_NAMES = ("train", "val", "test")
PART_RE = re.compile(r"^cohort-(\d{6})\.h5$")
_STR = h5py.string_dtype()


@dataclass
class Cohort:
    """Finished runs of one cohort. R runs (diverged ones excluded), K checkpoints, D parameters."""

    cohort_id: int
    run_id: np.ndarray  # (R,) int64
    seed: np.ndarray  # (R,) int64
    split: np.ndarray  # (R,) uint8, index into SPLIT_NAMES
    hparams: list[str]  # R JSON strings
    step: np.ndarray  # (R, K) int64
    params: np.ndarray  # (R, K, D) float32
    metrics: dict[str, np.ndarray]  # name -> (R, K) float32
    diverged: list[dict] = field(default_factory=list)  # {"run_id", "seed", "split", "hparams", "reason"}


def member_attrs(layout: ParamLayout, task_options: dict) -> dict:
    """A mixed zoo's part (or member group) attributes: which family member its runs are."""
    return {"layout": layout.to_json(), "task_options": json.dumps(task_options, sort_keys=True)}


# -- writing -------------------------------------------------------------------------------------


@contextmanager
def _atomic_h5(path: Path) -> Iterator[h5py.File]:
    """An h5py file written under a temporary name, fsynced and renamed into place (or removed on error)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    f = h5py.File(tmp, "w")
    try:
        yield f
    except BaseException:
        f.close()
        tmp.unlink(missing_ok=True)
        raise
    f.close()
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_attrs(f: h5py.File, attrs: dict) -> None:
    for k, v in attrs.items():
        f.attrs[k] = v


def _write_cohort(f: h5py.File, c: Cohort, attrs: dict) -> None:
    _write_attrs(f, attrs)
    f.attrs["cohort_id"] = c.cohort_id
    f.create_dataset(
        "params", data=c.params.astype(np.float32), dtype=np.float32
    )  # contiguous: a run is one read
    f.create_dataset("step", data=c.step.astype(np.int64))
    g = f.create_group("metrics")
    for name, arr in c.metrics.items():
        g.create_dataset(name, data=arr.astype(np.float32))
    runs = f.create_group("runs")
    runs.create_dataset("run_id", data=c.run_id.astype(np.int64))
    runs.create_dataset("seed", data=c.seed.astype(np.int64))
    runs.create_dataset("split", data=c.split.astype(np.uint8))
    runs.create_dataset("hparams", data=np.array(c.hparams, dtype=object), dtype=_STR)
    d = f.create_group("diverged")
    d.create_dataset("record", data=np.array([json.dumps(r) for r in c.diverged], dtype=object), dtype=_STR)


def zoo_attrs(
    task: str,
    layout: ParamLayout | None,
    metric_names: Sequence[str],
    harvest_config: dict,
    task_options: dict | None = None,
) -> dict:
    """The root attributes every zoo file carries; ``task_options`` (``Task.options``: which member of
    an architecture family the zoo holds) only where it is not the family's default. ``layout=None``
    makes a zoo of several members of the task's family (``architectures = "mixed"``): each part then
    carries its own ``layout`` and ``task_options`` (:func:`member_attrs`)."""
    return {
        **({"task_options": json.dumps(task_options, sort_keys=True)} if task_options else {}),
        **({"layout": layout.to_json()} if layout is not None else {"architectures": MIXED}),
        "schema_version": SCHEMA_VERSION,
        "task": task,
        "metric_names": json.dumps(list(metric_names)),
        "harvest_config": json.dumps(harvest_config, sort_keys=True),
        "split_names": json.dumps(list(SPLIT_NAMES)),
        "package_version": __version__,
    }


class ZooWriter:
    """Commits cohorts to ``path`` (index) and ``path.parts/`` (data), resuming what is already there."""

    def __init__(self, path: str | Path, attrs: dict) -> None:
        self.path = Path(path)
        self.parts = self.path.with_name(self.path.name + ".parts")
        self.attrs = attrs
        self._summaries: dict[Path, tuple[tuple[int, int], _Source]] = {}  # part -> ((mtime, size), summary)
        if not self.path.parent.is_dir():
            raise ZooError(f"output directory {str(self.path.parent)!r} does not exist")
        if self.path.exists():
            read_attrs(self.path)  # a gpt-params zoo of this schema, or a clear error
            with h5py.File(self.path, "r") as f:
                standalone = "params" in f and not f["params"].is_virtual and f["params"].shape[0] > 0
            if standalone:
                raise ZooError(
                    f"{str(self.path)!r} is a self-contained zoo (e.g. written by zoo merge), not a harvest "
                    f"index; harvest into another --out and merge the two"
                )
            check_resumable(self.path, attrs)
        elif self.parts.exists() and any(self.parts.iterdir()):
            for part in self._part_files():
                check_resumable(part, attrs)
        self.parts.mkdir(exist_ok=True)
        for stale in self.parts.glob(".*.tmp"):  # a killed writer's unfinished part
            stale.unlink()

    def _part_files(self) -> list[Path]:
        return sorted(p for p in self.parts.iterdir() if PART_RE.match(p.name))

    def done_cohorts(self) -> set[int]:
        return {int(PART_RE.match(p.name).group(1)) for p in self._part_files()}

    def commit(self, cohort: Cohort, member: dict | None = None) -> None:
        """Write one cohort's part atomically, then the index atomically. A mixed zoo's cohort names
        its family ``member`` (:func:`member_attrs`)."""
        if (member is None) != (self.attrs.get("architectures") != MIXED):
            raise ZooError("a mixed zoo's cohorts name their member (member_attrs); other zoos' do not")
        part = self.parts / f"cohort-{cohort.cohort_id:06d}.h5"
        if part.exists():
            raise ZooError(
                f"cohort {cohort.cohort_id} is already in {str(self.parts)!r}; refusing to duplicate it"
            )
        with _atomic_h5(part) as f:
            _write_cohort(f, cohort, {**self.attrs, **(member or {})})
        self.rebuild_index()

    def rebuild_index(self) -> None:
        """Rewrite the index over every part. Each part is read once per writer (its summary is kept
        while its size and mtime stay), so a commit costs one new part's read, not all of them."""
        summaries = []
        for part in self._part_files():
            st = part.stat()
            stamp = (st.st_mtime_ns, st.st_size)
            cached = self._summaries.get(part)
            if cached is None or cached[0] != stamp:
                cached = (stamp, _summarize(part, self.attrs))
                self._summaries[part] = cached
            summaries.append(cached[1])
        write_index(self.path, summaries, self.attrs, rel_to=self.path.parent)


def write_index(
    path: Path, sources: Sequence[Path | _Source], attrs: dict, rel_to: Path | None = None
) -> int:
    """Atomically (re)write a zoo file whose ``params`` is a virtual dataset over ``sources``' params.

    Every other array is copied in, so the index alone answers metric queries. Source paths are
    stored relative to ``rel_to`` (HDF5 then resolves them against the index file's directory).
    A source may be given as its :func:`_summarize` summary, so that one already read is not read again.
    """
    summaries = [s if isinstance(s, _Source) else _summarize(s, attrs) for s in sources]
    per_run, per_ckpt, metrics, diverged = _gather_small(summaries)
    n_runs = len(per_run["run_id"])
    groups = _member_groups(summaries, attrs)
    with _atomic_h5(path) as f:
        _write_attrs(f, attrs)
        for dest, member, srcs, shape in groups:
            layout = h5py.VirtualLayout(shape=shape, dtype=np.float32)
            row = 0
            for src, r in srcs:
                name = os.path.relpath(src, rel_to) if rel_to is not None else str(src)
                layout[row : row + r] = h5py.VirtualSource(name, "params", shape=(r, *shape[1:]))
                row += r
            f.create_virtual_dataset(dest, layout, fillvalue=np.nan)
            f[dest].attrs.update(member)
        _write_small(f, per_run, per_ckpt, metrics, diverged)
        _write_members(f, summaries, attrs, groups)
    return n_runs


@dataclass
class _Source:
    """What an index needs of one source file (a part or a zoo), read once: its runs' small arrays,
    its params' shape and, in a mixed zoo, its member."""

    path: Path
    shape: tuple  # params: (R, K, D)
    per_run: dict[str, np.ndarray]  # run_id, seed, split, hparams: (R,)
    step: np.ndarray  # (R, K)
    metrics: dict[str, np.ndarray]  # name -> (R, K)
    diverged: list
    member: dict  # member_attrs of a mixed zoo's part; {} otherwise


def _summarize(path: Path, attrs: dict) -> _Source:
    mixed = attrs.get("architectures") == MIXED
    with h5py.File(path, "r") as f:
        return _Source(
            path=path,
            shape=tuple(f["params"].shape),
            per_run={key: f["runs"][key][()] for key in ("run_id", "seed", "split", "hparams")},
            step=f["step"][()] if "step" in f else np.zeros((0, 0), np.int64),  # an empty index has none
            metrics={name: f["metrics"][name][()] for name in f["metrics"]},
            diverged=list(f["diverged"]["record"][()]),
            member=member_of(f.attrs) if mixed else {},
        )


def _member_groups(sources: Sequence[_Source], attrs: dict) -> list[tuple[str, dict, list, tuple]]:
    """``(dataset, member attrs, [(source, runs)], (runs, K, D))`` per params dataset of a zoo over
    ``sources``: one ``params`` for a single-architecture zoo, ``members/<i>/params`` per member of a
    mixed one, in order of first appearance."""
    mixed = attrs.get("architectures") == MIXED
    order: list[str] = []
    found: dict[str, tuple[dict, list]] = {}
    for src in sources:
        r, shape, member = src.shape[0], src.shape[1:], src.member
        key = json.dumps(member, sort_keys=True)
        if r == 0 and not mixed:
            continue
        if key not in found:
            order.append(key)
            found[key] = (member, [])
        found[key][1].append((src.path, r, shape))
    out = []
    for i, key in enumerate(order):
        member, srcs = found[key]
        shapes = {s for _, r, s in srcs if r}
        if len(shapes) > 1:
            raise ZooError(f"zoo parts disagree on (checkpoints, parameters): {sorted(shapes)}")
        shape = shapes.pop() if shapes else srcs[0][2]
        n = sum(r for _, r, _ in srcs)
        out.append(
            (
                f"members/{i}/params" if mixed else "params",
                member,
                [(s, r) for s, r, _ in srcs if r],
                (n, *shape),
            )
        )
    if not mixed and not out:
        out.append(("params", {}, [], (0, 0, 0)))
    return out


def member_of(attrs) -> dict:
    """The member attributes (``layout``, ``task_options``) of a mixed zoo's part or member group."""
    get = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
    try:
        return {"layout": get["layout"], "task_options": get["task_options"]}
    except KeyError:
        raise ZooError(
            "a part of a mixed-architecture zoo lacks its member's layout and task_options"
        ) from None


def _write_members(f: h5py.File, sources: Sequence[_Source], attrs: dict, groups: list) -> None:
    """A mixed zoo's ``runs/member`` (which member group) and ``runs/member_row`` (row in its params),
    run by run in the order of ``sources``."""
    if attrs.get("architectures") != MIXED:
        return
    keys = {json.dumps(m, sort_keys=True): g for g, (_, m, _, _) in enumerate(groups)}
    member, row, seen = [], [], [0] * len(groups)
    for src in sources:
        r = len(src.per_run["run_id"])
        g = keys[json.dumps(src.member, sort_keys=True)]
        member.extend([g] * r)
        row.extend(range(seen[g], seen[g] + r))
        seen[g] += r
    f["runs"].create_dataset("member", data=np.array(member, dtype=np.int64))
    f["runs"].create_dataset("member_row", data=np.array(row, dtype=np.int64))


def _gather_small(sources: Sequence[_Source]) -> tuple[dict, dict, dict, list]:
    per_run: dict[str, list] = {"run_id": [], "seed": [], "split": [], "hparams": []}
    per_ckpt: dict[str, list] = {"step": []}
    metrics: dict[str, list] = {}
    diverged: list = []
    for src in sources:
        diverged.extend(src.diverged)
        if len(src.per_run["run_id"]) == 0:  # an empty shard or index adds no runs
            continue
        for key in per_run:
            per_run[key].append(src.per_run[key])
        per_ckpt["step"].append(src.step)
        for name, arr in src.metrics.items():
            metrics.setdefault(name, []).append(arr)
    cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in per_run.items()}
    ids = cat["run_id"]
    values, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = values[counts > 1].tolist()
        raise ZooError(
            f"run ids {dup[:10]} appear more than once across {len(sources)} inputs; refusing to duplicate runs"
        )
    return (
        cat,
        {k: np.concatenate(v) for k, v in per_ckpt.items() if v},
        {k: np.concatenate(v) for k, v in metrics.items()},
        diverged,
    )


def _write_small(f: h5py.File, per_run: dict, per_ckpt: dict, metrics: dict, diverged: list) -> None:
    if "step" in per_ckpt:
        f.create_dataset("step", data=per_ckpt["step"].astype(np.int64))
    g = f.create_group("metrics")
    for name, arr in metrics.items():
        g.create_dataset(name, data=arr.astype(np.float32))
    runs = f.create_group("runs")
    runs.create_dataset("run_id", data=per_run["run_id"].astype(np.int64))
    runs.create_dataset("seed", data=per_run["seed"].astype(np.int64))
    runs.create_dataset("split", data=per_run["split"].astype(np.uint8))
    runs.create_dataset("hparams", data=np.array(list(per_run["hparams"]), dtype=object), dtype=_STR)
    f.create_group("diverged").create_dataset(
        "record", data=np.array(list(diverged), dtype=object), dtype=_STR
    )


# -- relabelling ---------------------------------------------------------------------------------


def _read_part(path: Path) -> tuple[Cohort, dict]:
    with h5py.File(path, "r") as f:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        cohort = Cohort(
            cohort_id=int(attrs.pop("cohort_id")),
            run_id=f["runs/run_id"][()],
            seed=f["runs/seed"][()],
            split=f["runs/split"][()],
            hparams=[h.decode() if isinstance(h, bytes) else h for h in f["runs/hparams"][()]],
            step=f["step"][()],
            params=f["params"][()],
            metrics={m: f["metrics"][m][()] for m in f["metrics"]},
            diverged=[json.loads(r) for r in f["diverged/record"][()]],
        )
    return cohort, attrs


def relabel(
    path: str | Path, metric_names: Sequence[str], evaluate, chunk: int = 2048, on_part=None
) -> list[str]:
    """Score every checkpoint of the harvest at ``path`` with ``evaluate`` (``(N, D)`` float32 array and
    the names wanted -> ``{metric: (N,)}``) and add the metrics of ``metric_names`` the zoo lacks;
    returns their names.

    Each part under ``<zoo>.parts/`` is rewritten atomically with its new metrics, then the index:
    a killed relabel leaves every file whole, and rerunning it skips the parts already done.
    ``metric_names`` (the task's full list, in its order) becomes the zoo's ``metric_names``.
    ``evaluate`` sees at most ``chunk`` checkpoints at a time; ``on_part(done, total)`` follows progress."""
    path = Path(path)
    attrs = read_attrs(path)
    with h5py.File(path, "r") as f:
        if "params" in f and not f["params"].is_virtual and f["params"].shape[0] > 0:
            raise ZooError(
                f"{str(path)!r} is a self-contained zoo (e.g. written by zoo merge); relabel the "
                f"harvests it was merged from, then merge again"
            )
    have = json.loads(attrs["metric_names"])
    if not set(have) <= set(metric_names):
        raise ZooError(f"{str(path)!r} records {have}, not all among the task's metrics {list(metric_names)}")
    parts_dir = path.with_name(path.name + ".parts")
    parts = sorted(p for p in parts_dir.iterdir() if PART_RE.match(p.name)) if parts_dir.is_dir() else []
    if not parts:
        raise ZooError(f"no cohort parts found in {str(parts_dir)!r}; relabel needs a harvest's parts")
    names = json.dumps(list(metric_names))
    added: set[str] = set()
    for i, part in enumerate(parts):
        cohort, part_attrs = _read_part(part)
        missing = [m for m in metric_names if m not in cohort.metrics]
        if missing and len(cohort.run_id):
            r, k, d = cohort.params.shape
            flat = cohort.params.reshape(r * k, d)
            scores = [evaluate(flat[a : a + chunk], missing) for a in range(0, r * k, chunk)]
            absent = [m for m in missing if m not in scores[0]]
            if absent:
                raise ZooError(
                    f"{absent} cannot be recomputed from the checkpoints (recorded while training)"
                )
            cohort.metrics.update(
                {
                    m: np.concatenate([np.asarray(s[m], np.float32) for s in scores]).reshape(r, k)
                    for m in missing
                }
            )
            added.update(missing)
        if missing or part_attrs.get("metric_names") != names:
            part_attrs["metric_names"] = names
            with _atomic_h5(part) as f:
                _write_cohort(f, cohort, part_attrs)
        if on_part is not None:
            on_part(i + 1, len(parts))
    attrs["metric_names"] = names
    write_index(path, parts, attrs, rel_to=path.parent)
    return sorted(added)


# -- checks --------------------------------------------------------------------------------------


def read_attrs(path: str | Path) -> dict:
    """Root attributes of a gpt-params zoo at ``path``, after checking it is one of this schema."""
    path = Path(path)
    if not path.exists():
        raise ZooError(f"zoo file {str(path)!r} does not exist")
    try:
        with h5py.File(path, "r") as f:
            have = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    except OSError as e:
        raise ZooError(f"{str(path)!r} is not a readable HDF5 zoo file ({e})") from None
    if "schema_version" not in have:
        raise ZooError(
            f"{str(path)!r} is an HDF5 file but not a gpt-params zoo (no schema_version attribute)"
        )
    if int(have["schema_version"]) != SCHEMA_VERSION:
        raise ZooError(
            f"{str(path)!r} has zoo schema version {have['schema_version']}, expected {SCHEMA_VERSION}"
        )
    return have


def check_compatible(path: Path, attrs: dict, ignore: Iterable[str] = ()) -> None:
    """Raise unless the zoo at ``path`` has the same schema, task, layout and harvest config."""
    have = read_attrs(path)
    keys = ("task", "task_options", "layout", "metric_names")
    if attrs.get("architectures") == MIXED:  # each part holds its own member
        keys = ("task", "architectures", "metric_names")
    for key in keys:
        if have.get(key) != attrs.get(key):
            hint = " or `gpt-params zoo relabel` it to add newer metrics" if key == "metric_names" else ""
            raise ZooError(
                f"{str(path)!r} holds {key} {have.get(key)!r}, expected {attrs.get(key)!r}; use another --out{hint}"
            )
    a, b = json.loads(have["harvest_config"]), json.loads(attrs["harvest_config"])
    for key in ignore:
        a.pop(key, None)
        b.pop(key, None)
    if a != b:
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise ZooError(
            f"{str(path)!r} was harvested with a different config (differs in {diff}: "
            f"{ {k: a.get(k) for k in diff} } vs { {k: b.get(k) for k in diff} }); use another --out"
        )


def check_resumable(path: Path, attrs: dict) -> None:
    """Raise unless a harvest with ``attrs`` may resume (or grow) the zoo file ``path``: the same
    config as :func:`check_compatible` asks, except that ``runs`` may grow when every cohort the zoo
    was planned with is whole (a run's cohort, split, seed and member depend on its id alone)."""
    check_compatible(path, attrs, ignore=("runs",))
    a = json.loads(read_attrs(path)["harvest_config"])
    b = json.loads(attrs["harvest_config"])
    if "runs" not in a or a["runs"] == b.get("runs"):
        return
    if b["runs"] < a["runs"]:
        raise ZooError(
            f"{str(path)!r} was harvested with --runs {a['runs']}; --runs {b['runs']} would shrink it "
            f"(use another --out, or --runs {a['runs']} or more)"
        )
    if a["runs"] % a["cohort_size"]:
        raise ZooError(
            f"{str(path)!r} cannot grow from --runs {a['runs']}: its last cohort holds "
            f"{a['runs'] % a['cohort_size']} of {a['cohort_size']} runs (use another --out)"
        )


# -- merging -------------------------------------------------------------------------------------


def merge(inputs: Sequence[str | Path], out: str | Path, virtual: bool = False) -> int:
    """Join zoos (e.g. the shards of one multi-process harvest) into ``out``; returns the run count.

    Inputs must share schema, task, layout and harvest config (shard fields aside). ``virtual=True``
    writes an index over the inputs (they must stay where they are); otherwise the parameters are
    copied into one self-contained file, run by run, so memory stays bounded.
    """
    if not inputs:
        raise ZooError("zoo merge needs at least one input file")
    paths = [Path(p) for p in inputs]
    out = Path(out)
    if out.resolve() in {p.resolve() for p in paths}:
        raise ZooError(f"output {str(out)!r} is also an input; choose another --out")
    attrs = read_attrs(paths[0])
    for p in paths[1:]:
        check_compatible(p, attrs, ignore=("shard_index", "num_shards"))
    cfg = json.loads(attrs["harvest_config"])
    cfg.pop("shard_index", None)
    cfg.pop("num_shards", None)
    attrs["harvest_config"] = json.dumps(cfg, sort_keys=True)
    attrs["package_version"] = __version__
    paths = [q for p in paths for q in _param_sources(p)]  # a mixed harvest: its parts, in run order
    if virtual:
        return write_index(out, paths, attrs, rel_to=out.parent)
    summaries = [_summarize(p, attrs) for p in paths]
    per_run, per_ckpt, metrics, diverged = _gather_small(summaries)
    n_runs = len(per_run["run_id"])
    groups = _member_groups(summaries, attrs)
    with _atomic_h5(out) as f:
        _write_attrs(f, attrs)
        for dest, member, srcs, shape in groups:
            dset = f.create_dataset(dest, shape=shape, dtype=np.float32)
            dset.attrs.update(member)
            row = 0
            for src, _ in srcs:
                with h5py.File(src, "r") as s:
                    for r in range(s["params"].shape[0]):
                        dset[row] = s["params"][r]
                        row += 1
        _write_small(f, per_run, per_ckpt, metrics, diverged)
        _write_members(f, summaries, attrs, groups)
    return n_runs


def _param_sources(path: Path) -> list[Path]:
    """Files whose ``params`` hold the runs of zoo ``path`` in its run order: the file itself, or the
    parts of a mixed-architecture harvest (whose index groups its runs by member)."""
    with h5py.File(path, "r") as f:
        if f.attrs.get("architectures") != MIXED:
            return [path]
        if any(not f[f"members/{k}/params"].is_virtual for k in f.get("members", {})):
            raise ZooError(
                f"{str(path)!r} is a self-contained mixed-architecture zoo; merge the harvests it came from"
            )
    parts = path.with_name(path.name + ".parts")
    return sorted(p for p in parts.iterdir() if PART_RE.match(p.name)) if parts.is_dir() else []
