"""A harvest killed at any moment (SIGKILL included) loses at most the cohort in flight; a rerun
completes it to exactly the uninterrupted result, and readers never see a half-written run."""

import random
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from gpt_params.harvest import HarvestConfig, harvest
from gpt_params.zoo_reader import Zoo

from .conftest import part_stamps

ARGS = dict(task="digits-mlp", runs=12, ckpts_per_run=6, cohort_size=3, epochs=3)  # 4 cohorts: 4-5 launches


def _cli(out):
    flags = []
    for k, v in ARGS.items():
        flags += [f"--{k.replace('_', '-')}", str(v)]
    return [sys.executable, "-m", "gpt_params.cli", "harvest", *flags, "--out", str(out)]


def _n_parts(out) -> int:
    return len(list(out.with_name(out.name + ".parts").glob("cohort-*.h5")))


def _check_consistent(out):
    """Whatever is on disk is a valid zoo whose every visible run is whole."""
    if not out.exists():
        return 0
    zoo = Zoo(out)
    parts = sorted(out.with_name(out.name + ".parts").glob("cohort-*.h5"))
    in_index = zoo.n_runs
    assert in_index <= sum(h5py.File(p, "r")["runs/run_id"].shape[0] for p in parts)
    assert len(set(zoo.run_id.tolist())) == in_index
    for r in range(in_index):
        assert np.isfinite(zoo.params(r)).all()  # a missing source would read as NaN fill
    return in_index


def _assert_untouched(out, before):
    """A rerun resumes: the parts finished before it are neither retrained nor rewritten."""
    now = part_stamps(out)
    assert {k: now.get(k) for k in before} == before, f"a rerun rewrote finished parts: {sorted(before)}"


@pytest.mark.slow
def test_sigkilled_harvest_resumes_to_the_uninterrupted_result(tmp_path):
    ref = tmp_path / "ref.h5"
    harvest(HarvestConfig(**ARGS, out=str(ref)))
    out = tmp_path / "killed.h5"
    rng = random.Random(0)
    kills, finished = 0, False
    for _ in range(12):
        finished_parts = part_stamps(out)
        proc = subprocess.Popen(_cli(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # kill 0-50 ms after the next cohort lands (in the index rebuild, the next cohort's training
        # or its part write): driven by progress on disk, not by a guess of the start-up time, so
        # kills happen however fast or loaded the machine is
        landed = _n_parts(out)
        give_up = time.monotonic() + 120
        while proc.poll() is None and _n_parts(out) == landed and time.monotonic() < give_up:
            time.sleep(0.02)
        if proc.poll() is None:
            time.sleep(rng.uniform(0.0, 0.05))
        if proc.poll() is not None:
            assert proc.returncode == 0
            finished = True
        else:
            proc.kill()
            proc.wait()
            kills += 1
            _check_consistent(out)
        _assert_untouched(out, finished_parts)
        if finished:
            break
    if not finished:
        finished_parts = part_stamps(out)
        assert subprocess.run(_cli(out), capture_output=True).returncode == 0
        _assert_untouched(out, finished_parts)
    assert kills >= 2
    assert _check_consistent(out) == ARGS["runs"]
    zk, zr = Zoo(out), Zoo(ref)
    assert np.array_equal(zk.run_id, zr.run_id)
    for r in range(ARGS["runs"]):
        np.testing.assert_array_equal(zk.params(r), zr.params(r))
    for m in zr.metrics:
        np.testing.assert_array_equal(zk.metrics[m], zr.metrics[m])
    assert not list(out.with_name(out.name + ".parts").glob(".*.tmp"))


def test_a_crash_inside_a_part_write_leaves_the_zoo_intact(tmp_path, monkeypatch):
    import gpt_params.zoo as zoo_mod

    cfg = HarvestConfig(**{**ARGS, "runs": 9}, out=str(tmp_path / "z.h5"))
    real = zoo_mod._write_cohort
    calls = {"n": 0}

    def dying(f, cohort, attrs):
        calls["n"] += 1
        if calls["n"] == 2:
            f.create_dataset("params", data=cohort.params)  # half a part...
            raise RuntimeError("simulated crash mid-write")
        real(f, cohort, attrs)

    monkeypatch.setattr(zoo_mod, "_write_cohort", dying)
    with pytest.raises(RuntimeError, match="simulated"):
        harvest(cfg)
    zoo = Zoo(cfg.out)
    assert zoo.n_runs == 3  # the first cohort only; the broken part never became visible
    monkeypatch.setattr(zoo_mod, "_write_cohort", real)
    harvest(cfg)
    assert Zoo(cfg.out).n_runs == 9
