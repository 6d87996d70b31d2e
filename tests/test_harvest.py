import json
from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch

from gpt_params.errors import GptParamsError, ZooError
from gpt_params.harvest import HarvestConfig, checkpoint_steps, harvest, run_seed, run_split
from gpt_params.tasks import get_task
from gpt_params.zoo import SCHEMA_VERSION, merge, relabel
from gpt_params.zoo_reader import Zoo, summarise

from .conftest import part_stamps


def tiny(tmp_path, name="z.h5", **kw):
    base = dict(
        task="digits-mlp", runs=10, ckpts_per_run=6, cohort_size=4, epochs=2, out=str(tmp_path / name)
    )
    base.update(kw)
    return HarvestConfig(**base)


@pytest.mark.parametrize("total,k", [(700, 50), (54, 50), (49, 50), (10_000, 50), (3, 2)])
def test_checkpoint_steps_cover_init_final_and_dense_early(total, k):
    s = checkpoint_steps(total, k)
    assert len(s) == k and s[0] == 0 and s[-1] == total
    assert np.all(np.diff(s) > 0)
    if total >= 10 * k:  # log spacing: a quarter of the checkpoints within the first 2% of training
        assert s[k // 4] <= 0.02 * total


@pytest.mark.parametrize("total,k", [(157, 50), (49, 50), (50, 50), (1_000, 7), (3, 2), (10_001, 50)])
def test_linear_checkpoint_steps_are_even(total, k):
    s = checkpoint_steps(total, k, "linear")
    assert len(s) == k and s[0] == 0 and s[-1] == total
    gaps = np.diff(s)
    assert gaps.min() >= 1 and gaps.max() - gaps.min() <= 1


def test_default_spacing_is_left_out_of_the_stored_config(tmp_path):
    # zoos harvested before --spacing existed stored no such key: a default rerun must still resume them
    assert "spacing" not in tiny(tmp_path).stored()
    assert tiny(tmp_path, spacing="linear").stored()["spacing"] == "linear"
    with pytest.raises(GptParamsError, match="--spacing must be one of .*'cubic'"):
        tiny(tmp_path, spacing="cubic")


def test_checkpoint_steps_refuse_runs_too_short():
    with pytest.raises(GptParamsError, match="cannot hold 50"):
        checkpoint_steps(40, 50)


def test_run_split_depends_on_run_id_only():
    splits = np.array([run_split(r, 0.1, 0.1) for r in range(5000)])
    assert np.array_equal(splits, [run_split(r, 0.1, 0.1) for r in range(5000)])
    frac = np.bincount(splits, minlength=3) / 5000
    np.testing.assert_allclose(frac, [0.8, 0.1, 0.1], atol=0.02)


def test_tiny_harvest_writes_the_documented_schema(tmp_path):
    cfg = tiny(tmp_path)
    harvest(cfg)
    task = get_task("digits-mlp")
    with h5py.File(cfg.out, "r") as f:  # h5py alone, as data/README.md documents
        assert f.attrs["schema_version"] == SCHEMA_VERSION
        assert f.attrs["task"] == "digits-mlp"
        assert json.loads(f.attrs["layout"])["names"] == list(task.layout.names)
        assert json.loads(f.attrs["harvest_config"])["runs"] == 10
        assert "package_version" in f.attrs
        assert f["params"].shape == (10, 6, task.layout.numel) and f["params"].dtype == np.float32
        assert f["step"].shape == (10, 6)
        assert sorted(f["metrics"]) == sorted(task.metric_names)
        for m in f["metrics"]:
            assert f["metrics"][m].shape == (10, 6) and np.isfinite(f["metrics"][m][()]).all()
        assert sorted(f["runs/run_id"][()]) == list(range(10))
        assert set(f["runs/split"][()]) <= {0, 1, 2}
        hp = [json.loads(h) for h in f["runs/hparams"][()]]
        assert all({"optimizer", "lr", "batch_size", "epochs"} <= set(h) for h in hp)
        steps = f["step"][0]
        assert steps[0] == 0 and np.all(np.diff(steps) > 0)
        # checkpoint 0 is the run's own seeded init
        seed = int(f["runs/seed"][3])
        np.testing.assert_array_equal(f["params"][3, 0], task.flatten(task.build(seed)).numpy())
    assert seed == run_seed(0, int(Zoo(cfg.out).run_id[3]))


def test_recorded_metrics_are_full_split_evaluations(tmp_path):
    cfg = tiny(tmp_path)
    harvest(cfg)
    zoo = Zoo(cfg.out)
    task = get_task("digits-mlp")
    m = task.evaluate(torch.from_numpy(zoo.params(2)))
    for name in task.metric_names:
        np.testing.assert_allclose(zoo.metrics[name][2], m[name], rtol=1e-5)
    assert zoo.metrics["val_loss"][:, -1].mean() < zoo.metrics["val_loss"][:, 0].mean()  # training helped


def test_train_metrics_on_a_subset_are_scored_on_the_first_images_and_recorded(tmp_path):
    cfg = tiny(tmp_path, runs=4, train_metric_images=100)
    harvest(cfg)
    zoo = Zoo(cfg.out)
    task = get_task("digits-mlp")
    theta = torch.from_numpy(zoo.params(1))
    subset = task.evaluate(theta, splits=("train",), train_examples=100)
    whole = task.evaluate(theta, splits=("train", "val"))
    np.testing.assert_allclose(zoo.metrics["train_loss"][1], subset["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(zoo.metrics["val_loss"][1], whole["val_loss"], rtol=1e-5)
    assert not np.allclose(subset["train_loss"], whole["train_loss"])
    with h5py.File(cfg.out) as f:
        assert json.loads(f.attrs["harvest_config"])["train_metric_images"] == 100
    with pytest.raises(GptParamsError, match="--train-metric-images must be a positive integer, got 0"):
        tiny(tmp_path, train_metric_images=0)


def test_runs_can_train_on_a_subset_of_the_train_images_and_the_zoo_records_it(tmp_path):
    cfg = tiny(tmp_path, runs=4, train_images=64, preset="gpt", ckpts_per_run=3)
    harvest(cfg)
    zoo = Zoo(cfg.out)
    # G.pt's batch 128 shrinks to the 64 images: one step per epoch, against 9 on all 1,257
    assert zoo.step[:, -1].tolist() == [2] * 4 and zoo.hparams[0]["batch_size"] == 64
    assert zoo.harvest_config["train_images"] == 64
    assert zoo.metrics["val_loss"][:, -1].mean() < zoo.metrics["val_loss"][:, 0].mean()
    with pytest.raises(GptParamsError, match="--train-images must be a positive integer, got 0"):
        tiny(tmp_path, train_images=0)


def test_harvest_device_errors_are_one_line_and_touch_nothing(tmp_path):
    if not torch.cuda.is_available():
        with pytest.raises(GptParamsError, match="CUDA is not available"):
            harvest(tiny(tmp_path, device="cuda"))
    with pytest.raises(GptParamsError, match="cartpole harvests on cpu only"):
        harvest(tiny(tmp_path, task="cartpole", preset="ppo", device="cuda"))
    assert not (tmp_path / "z.h5").exists()


@pytest.mark.gpu
def test_cnn_cohort_on_cuda_matches_the_cpu(tmp_path):
    cpu = get_task("mnist-cnn").train_cohort(
        tiny(tmp_path, task="mnist-cnn", preset="gpt", epochs=1), 0, np.arange(4)
    )
    gpu = get_task("mnist-cnn").train_cohort(
        tiny(tmp_path, task="mnist-cnn", preset="gpt", epochs=1, device="cuda"), 0, np.arange(4)
    )
    np.testing.assert_allclose(gpu.params[:, 0], cpu.params[:, 0])  # the same inits
    np.testing.assert_allclose(gpu.metrics["val_loss"], cpu.metrics["val_loss"], rtol=0.05, atol=0.02)


@pytest.mark.parametrize("preset,optimizer,lr", [("gpt", "sgd", 0.1), ("adam", "adam", 1e-3)])
def test_fixed_presets_train_every_run_with_one_recipe(tmp_path, preset, optimizer, lr):
    cfg = tiny(tmp_path, preset=preset, runs=4, epochs=4)
    harvest(cfg)
    zoo = Zoo(cfg.out)
    assert {(h["optimizer"], h["lr"], h["schedule"], h["batch_size"]) for h in zoo.hparams} == {
        (optimizer, lr, "cosine", 128)
    }
    assert len(set(zoo.seed.tolist())) == zoo.n_runs  # runs differ by seed only
    val = zoo.metrics["val_loss"]
    assert (val[:, -1] < val[:, 0]).all() and (val[:, -1] < val[:, 1]).all()  # every run trains


def test_unseen_runs_come_from_the_test_or_the_val_split_only(tmp_path):
    cfg = tiny(tmp_path, runs=40, epochs=1, ckpts_per_run=2)
    harvest(cfg)
    zoo = Zoo(cfg.out)
    with pytest.raises(ZooError, match="not 'train'"):
        zoo.unseen_runs(2, "train")
    for code, split in ((1, "val"), (2, "test")):
        if len(zoo.runs(split)):
            rows = zoo.unseen_runs(3, split)
            assert len(rows) == min(3, len(zoo.runs(split))) and set(zoo.split[rows]) == {code}
        else:
            with pytest.raises(ZooError, match=f"0 {split}-split runs"):
                zoo.unseen_runs(3, split)
    assert list(zoo.first_runs(2, "train")) == list(zoo.runs("train")[:2])
    with pytest.raises(ZooError, match="asked for 0"):
        zoo.first_runs(0, "train")
    zoo.require_task(zoo.make_task())
    with pytest.raises(ZooError, match=f"is a {zoo.task!r} zoo; the model is for 'cartpole'"):
        zoo.require_task(get_task("cartpole"))


class Interrupted(Exception):
    pass


def trained_cohorts(cfg) -> list[int]:
    """Harvest ``cfg``; the cohorts it trained (those whose commit came after training steps)."""
    events = []  # None for a training step, the cohort id for a commit (or a skipped cohort)
    harvest(cfg, on_step=lambda done, total: events.append(None), on_cohort=lambda n, c: events.append(c))
    trained, stepped = [], False
    for e in events:
        if e is not None and stepped:
            trained.append(e)
        stepped = e is None
    return trained


def test_harvest_is_deterministic_and_rerun_resumes_without_duplicates(tmp_path):
    a, b = tiny(tmp_path, "a.h5"), tiny(tmp_path, "b.h5")  # 10 runs in cohorts of 4, 4, 2
    harvest(b)

    def stop_after_first(n, cohort):
        raise Interrupted  # killed right after cohort 0 landed

    with pytest.raises(Interrupted):
        harvest(a, on_cohort=stop_after_first)
    finished = part_stamps(a.out)
    assert list(finished) == ["cohort-000000.h5"]
    assert trained_cohorts(a) == [1, 2]  # the resume trains only the missing cohorts...
    after = part_stamps(a.out)
    assert {k: after[k] for k in finished} == finished  # ...and leaves the finished part untouched
    assert trained_cohorts(a) == []  # all cohorts done: nothing retrains
    assert part_stamps(a.out) == after
    za, zb = Zoo(a.out), Zoo(b.out)
    assert za.n_runs == 10 and np.array_equal(za.run_id, zb.run_id)
    for r in range(10):
        np.testing.assert_array_equal(za.params(r), zb.params(r))


def test_resume_with_another_config_is_refused_and_nothing_is_lost(tmp_path):
    cfg = tiny(tmp_path)
    harvest(cfg)
    before = Zoo(cfg.out).params(0)
    with pytest.raises(ZooError, match="different config.*epochs"):
        harvest(replace(cfg, epochs=3))
    with pytest.raises(ZooError, match="holds task 'digits-mlp'"):
        harvest(replace(cfg, task="mnist-mlp"))
    np.testing.assert_array_equal(Zoo(cfg.out).params(0), before)


def test_a_larger_runs_grows_a_zoo_of_whole_cohorts_to_the_zoo_harvested_at_once(tmp_path):
    small, grown, whole = (
        tiny(tmp_path, "g.h5", runs=8),
        tiny(tmp_path, "g.h5", runs=14),
        tiny(tmp_path, "w.h5", runs=14),
    )
    harvest(small)
    kept = part_stamps(small.out)
    harvest(grown)  # cohorts 2 and 3 (4 + 2 runs) are added; cohorts 0 and 1 are not rewritten
    after = part_stamps(grown.out)
    assert {k: after[k] for k in kept} == kept and len(after) == 4
    harvest(whole)
    zg, zw = Zoo(grown.out), Zoo(whole.out)
    assert zg.n_runs == 14 and zg.harvest_config["runs"] == 14 and np.array_equal(zg.run_id, zw.run_id)
    np.testing.assert_array_equal(zg.split, zw.split)
    for r in range(14):
        np.testing.assert_array_equal(zg.params(r), zw.params(r))
    with pytest.raises(ZooError, match="--runs 14; --runs 12 would shrink it"):
        harvest(replace(grown, runs=12))
    with pytest.raises(ZooError, match="cannot grow from --runs 14: its last cohort holds 2 of 4"):
        harvest(replace(grown, runs=20))
    assert part_stamps(grown.out) == after and Zoo(grown.out).n_runs == 14


def test_diverged_runs_are_recorded_but_never_served(tmp_path, monkeypatch):
    import gpt_params.tasks.batched as h  # where supervised cohorts draw their recipes
    from gpt_params.recipes import RunRecipe

    real = h.run_recipe
    calls = iter(range(10_000))

    def explosive(preset, rng):
        r = real(preset, rng)
        return RunRecipe("sgd", 1e6, 0.0, "constant") if next(calls) % 3 == 0 else r

    monkeypatch.setattr(h, "run_recipe", explosive)
    cfg = tiny(tmp_path)
    harvest(cfg)
    zoo = Zoo(cfg.out)
    assert len(zoo.diverged) >= 3 and zoo.n_runs == 10 - len(zoo.diverged)
    assert {d["run_id"] for d in zoo.diverged}.isdisjoint(zoo.run_id.tolist())
    assert all(d["hparams"]["lr"] == 1e6 for d in zoo.diverged)
    for r in range(zoo.n_runs):
        assert np.isfinite(zoo.params(r)).all()


def test_sharded_harvest_merges_into_the_single_process_zoo(tmp_path):
    full = tiny(tmp_path, "full.h5")
    harvest(full)
    shards = [tiny(tmp_path, f"s{i}.h5", shard_index=i, num_shards=2) for i in range(2)]
    for s in shards:
        harvest(s)
    for virtual in (False, True):
        out = tmp_path / f"merged-{virtual}.h5"
        assert merge([s.out for s in shards], out, virtual=virtual) == 10
        zm, zf = Zoo(out), Zoo(full.out)
        order = np.argsort(zm.run_id)
        assert np.array_equal(zm.run_id[order], zf.run_id)
        for i, r in enumerate(order):
            np.testing.assert_array_equal(zm.params(int(r)), zf.params(i))
            assert zm.metrics["val_loss"][r].tolist() == zf.metrics["val_loss"][i].tolist()
        assert "shard_index" not in zm.harvest_config


def test_harvest_never_overwrites_a_merged_zoo(tmp_path):
    cfg = tiny(tmp_path)
    harvest(cfg)
    single = tmp_path / "single.h5"
    merge([cfg.out], single)
    before = single.read_bytes()
    with pytest.raises(ZooError, match="self-contained"):
        harvest(replace(cfg, out=str(single)))
    assert single.read_bytes() == before


def test_a_shard_with_no_cohorts_is_an_empty_zoo_that_merges(tmp_path):
    shards = [
        tiny(tmp_path, f"s{i}.h5", runs=3, cohort_size=3, shard_index=i, num_shards=2) for i in range(2)
    ]
    for s in shards:
        harvest(s)
    assert Zoo(shards[1].out).n_runs == 0
    assert merge([s.out for s in shards], tmp_path / "m.h5") == 3


def test_merge_refuses_duplicates_and_mismatches(tmp_path):
    a = tiny(tmp_path, "a.h5")
    harvest(a)
    with pytest.raises(ZooError, match="more than once"):
        merge([a.out, a.out], tmp_path / "m.h5")
    b = tiny(tmp_path, "b.h5", epochs=3)
    harvest(b)
    with pytest.raises(ZooError, match="different config"):
        merge([a.out, b.out], tmp_path / "m.h5")
    assert not (tmp_path / "m.h5").exists()


def test_summary_reports_splits_quantiles_and_param_std(tmp_path):
    cfg = tiny(tmp_path)
    harvest(cfg)
    s = summarise(Zoo(cfg.out))
    assert sum(s["runs"].values()) == 10
    q = s["metrics"]["train"]["val_loss"]["final"]
    assert q["q00"] <= q["q50"] <= q["q100"]
    assert s["params"]["std"] > 0 and set(s["params"]["per_tensor"]) == set(
        get_task("digits-mlp").layout.names
    )


@pytest.mark.parametrize("spacing,updates", [("log", [0, 1, 2, 4]), ("linear", [0, 1, 3, 4])])
def test_tiny_cartpole_harvest_records_returns(tmp_path, spacing, updates):
    cfg = HarvestConfig(
        spacing=spacing,
        task="cartpole",
        runs=2,
        ckpts_per_run=4,
        cohort_size=2,
        timesteps=1024,
        preset="ppo",
        out=str(tmp_path / "cp.h5"),
    )
    harvest(cfg)
    zoo = Zoo(cfg.out)
    assert zoo.n_runs == 2 and zoo.n_ckpts == 4
    assert zoo.step[0].tolist() == [256 * u for u in updates]  # 8 envs x 32 steps per PPO update
    for m in ("return_mean", "return_std", "return_sampled", "train_return"):
        assert np.isfinite(zoo.metrics[m]).all()
    task = get_task("cartpole")
    np.testing.assert_allclose(
        zoo.metrics["return_mean"][1], task.evaluate(torch.from_numpy(zoo.params(1)))["return_mean"]
    )


def test_relabel_adds_missing_metrics_part_by_part_and_a_killed_one_resumes(tmp_path):
    cfg = tiny(tmp_path)
    harvest(cfg)
    task = get_task("digits-mlp")
    names = [*Zoo(cfg.out).metric_names, "double_val_loss"]
    calls, asked = [], set()

    def evaluate(x, wanted):  # (N, D) float32, names -> {name: (N,)}
        calls.append(len(x))
        asked.add(tuple(wanted))
        if len(calls) == 2 and crash:
            raise KeyboardInterrupt  # killed while scoring the second part
        return {"double_val_loss": 2 * task.evaluate(torch.from_numpy(x))["val_loss"]}

    crash = True
    with pytest.raises(KeyboardInterrupt):
        relabel(cfg.out, names, evaluate)
    zoo = Zoo(cfg.out)  # the index is untouched: whole, and still without the metric
    assert "double_val_loss" not in zoo.metrics and zoo.n_runs == 10
    crash, calls = False, []
    assert relabel(cfg.out, names, evaluate, chunk=7) == ["double_val_loss"]
    assert sum(calls) == 4 * 6 + 2 * 6 and max(calls) <= 7  # parts of 4, 4, 2 runs: the first not again
    assert asked == {("double_val_loss",)}  # only the missing metric is asked for
    zoo = Zoo(cfg.out)
    assert list(zoo.metric_names) == names
    np.testing.assert_allclose(zoo.metrics["double_val_loss"], 2 * zoo.metrics["val_loss"], rtol=1e-6)
    assert relabel(cfg.out, names, evaluate) == []  # nothing left to add
    with pytest.raises(ZooError, match="cannot be recomputed"):
        relabel(cfg.out, [*names, "train_only"], evaluate)


def test_a_pinned_family_member_is_harvested_recorded_and_rebuilt(tmp_path):
    cfg = tiny(tmp_path, runs=4, ckpts_per_run=3, epochs=1, hidden="8,4", preset="gpt")
    harvest(cfg)
    zoo = Zoo(cfg.out)
    member = get_task("digits-mlp", hidden=(8, 4))
    assert zoo.task_options == {"hidden": [8, 4]} and zoo.layout == member.layout
    assert zoo.params(0).shape == (3, member.layout.numel)
    assert zoo.make_task().layout == member.layout
    zoo.require_task(member)
    with pytest.raises(ZooError, match=r"'digits-mlp hidden=\[8,4\]' zoo; the model is for 'digits-mlp'"):
        zoo.require_task(get_task("digits-mlp"))
    with pytest.raises(
        GptParamsError, match=r"holds task_options .*\[8, 4\].*expected .*\[8, 5\]"
    ):  # resume: same member
        harvest(replace(cfg, hidden="8,5"))


@pytest.mark.parametrize(
    "hidden,message",
    [("8,x", r"--hidden '8,x': expected hidden widths separated by commas"), ("8,8,8", "not a member")],
)
def test_bad_members_are_refused_before_any_file_is_written(tmp_path, hidden, message):
    with pytest.raises(GptParamsError, match=message):
        harvest(tiny(tmp_path, hidden=hidden))
    assert not (tmp_path / "z.h5").exists()
