"""The eval/ scripts end to end on a tiny zoo and a tiny model, plus the pieces they are built from."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from gpt_params.align import align, aligned_distances, nearest
from gpt_params.errors import GptParamsError
from gpt_params.evaluate import prompt_alignment, r_squared, trajectory_alignment
from gpt_params.harvest import HarvestConfig, harvest
from gpt_params.layout import permute, random_perms
from gpt_params.tasks import get_task
from gpt_params.tasks.base import BaselineConfig
from gpt_params.tasks.batched import Curve, steps_to_reach
from gpt_params.zoo_reader import Zoo

from .conftest import repo_root, run_script, tiny_export


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    zoo = root / "digits.h5"
    harvest(
        HarvestConfig(task="digits-mlp", runs=24, ckpts_per_run=6, cohort_size=12, epochs=2, out=str(zoo))
    )
    with Zoo(zoo) as z:
        assert len(z.runs("test")) >= 1
    return zoo, tiny_export(root / "model", "digits-mlp", "val_loss", [0.1, 2.5], 0.3)


def script(name, *args, check=True):
    res = subprocess.run(
        [sys.executable, str(repo_root() / "eval" / name), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0 or not check, res.stderr[-3000:]
    return res


def test_prompting_script(digits, tmp_path):
    zoo, model = digits
    out = tmp_path / "p.json"
    script("prompting.py", "--model", model, "--zoo", zoo, "--nets", 2, "--prompts", 3, "--samplers", "ddim:2", "ddpm:3",
           "--guidance", 1, 2, "--recursive", 2, "--out", out)  # fmt: skip
    rep = json.loads(out.read_text())
    assert len(rep["results"]) == 4 and rep["achieved_metric"] == "test_loss"
    row = rep["results"][0]
    assert np.isfinite(row["r2"]) and "step_2_test_loss_median" in row and "one_step_test_error_median" in row
    assert out.with_suffix(".png").stat().st_size > 1000


def test_prompting_rejects_a_bad_sampler(digits):
    zoo, model = digits
    res = run_script(
        repo_root() / "eval" / "prompting.py", "--model", model, "--zoo", zoo, "--samplers", "euler:5"
    )
    assert res.returncode != 0 and "expected ddim:N or ddpm:N" in res.stderr


@pytest.mark.parametrize("name", ["prompting.py", "vs_gradient.py", "audit.py"])
def test_scripts_without_unseen_nets_fail_in_one_line(digits, name):
    zoo, model = digits
    res = run_script(repo_root() / "eval" / name, "--model", model, "--zoo", zoo, "--nets", 0)
    assert (
        res.returncode != 0
        and res.stderr.count("\n") == 1
        and "test-split runs of digits-mlp; asked for 0" in res.stderr
    )


@pytest.mark.parametrize("name", ["prompting.py", "vs_gradient.py"])
def test_scripts_refuse_a_zoo_of_another_task_in_one_line(digits, name):
    zoo, _ = digits
    res = run_script(repo_root() / "eval" / name, "--model", "mnist-mlp-loss", "--zoo", zoo)
    assert res.returncode != 0 and res.stderr.count("\n") == 1
    assert "is a 'digits-mlp' zoo; the model is for 'mnist-mlp'" in res.stderr


def test_vs_gradient_script(digits, tmp_path):
    zoo, model = digits
    out = tmp_path / "g.json"
    script("vs_gradient.py", "--model", model, "--zoo", zoo, "--nets", 2, "--max-steps", 20, "--eval-every", 5,
           "--adam-lrs", 1e-3, 1e-2, "--sgd-lrs", 0.1, "--out", out)  # fmt: skip
    rep = json.loads(out.read_text())
    assert set(rep["baselines"]) == {"adam", "sgd", "adam_lr1e-3"}
    assert rep["gpt"]["seconds_per_net"] > 0 and rep["baselines"]["adam"]["seconds_per_step"] > 0
    assert out.with_suffix(".png").exists()


def test_audit_script(digits, tmp_path):
    zoo, model = digits
    out = tmp_path / "a.json"
    script("audit.py", "--model", model, "--zoo", zoo, "--nets", 2, "--bank", 10, "--out", out)
    rep = json.loads(out.read_text())
    assert rep["output"]["dist_to_nearest_train_ckpt"] > 0 and rep["independent_runs_dist"] > 0
    assert "test_loss" in rep["retrieval"]
    align = rep["alignment"]  # the step's R^2 on the same inits, and what their real training offers
    assert align["prompts"] == 10 and len(align["per_net"]["real_training"]) == rep["nets"]
    assert np.isfinite(align["real_training_trajectory_r2"]) and align["real_training_trajectory_r2"] <= 1
    res = script("audit.py", "--model", model, "--zoo", zoo, "--prompts", 1, check=False)
    assert res.returncode == 2 and "--prompts 1" in res.stderr and res.stderr.count("\n") == 1


def test_rollout_script_and_sb3_agree_with_the_plain_loop(tmp_path):
    model = tiny_export(tmp_path / "cp", "cartpole", "return_mean", [9.0, 500.0], 500.0)
    out = tmp_path / "r.json"
    res = script("rollout.py", "--model", model, "--nets", 3, "--episodes", 4, "--prompts", 200, 500,
                 "--sb3-policies", 2, "--record", tmp_path / "ep.gif", "--out", out)  # fmt: skip
    rep = json.loads(out.read_text())
    assert len(rep["results"]) == 2
    for row in rep["results"]:
        assert row["ci95"][0] <= row["mean_return"] <= row["ci95"][1]
        sampled = row["mean_sampled_return"]
        assert sampled["ci_low"] <= sampled["mean"] <= sampled["ci_high"] and 1 <= sampled["mean"] <= 500
        np.testing.assert_allclose(row["sb3_check"]["plain_loop"], row["sb3_check"]["sb3_ppo"])
    # either a GIF was written or the script said what to install
    assert (tmp_path / "ep.gif").exists() or "pip install" in res.stdout


def test_r_squared_uses_the_spread_of_the_prompts():
    prompts = np.linspace(0.5, 2.0, 5)
    assert r_squared(prompts, prompts) == 1.0
    assert r_squared(prompts, np.full(5, prompts.mean())) == pytest.approx(0.0)
    assert r_squared(prompts, prompts + 1.0) < 0


def test_trajectory_alignment_picks_each_runs_own_checkpoint_nearest_the_prompt():
    dense = np.linspace(2.0, 0.5, 301)[None]  # (1, K): a run passing every prompt from its start to best
    rep = trajectory_alignment(dense, dense, best=0.5, n_prompts=10)
    assert rep["r2"] == pytest.approx(1.0, abs=1e-4) and rep["runs_excluded"] == 0
    # scored on held-out data 0.1 worse: the same checkpoints, their achieved metric off the prompts
    assert trajectory_alignment(dense, dense + 0.1, 0.5)["r2"] < 0.98
    # a run that ends at 1.4 cannot give the low prompts; one already at the best prompt is left out
    stuck = np.linspace(2.0, 1.4, 301)[None]
    runs = np.concatenate([dense, stuck, np.full((1, 301), 0.5)])  # (3, K)
    rep = trajectory_alignment(runs, runs, best=0.5, n_prompts=10)
    assert rep["r2_per_run"][0] > 0.99 and rep["r2_per_run"][1] < 0.5 and np.isnan(rep["r2_per_run"][2])
    assert rep["runs_excluded"] == 1 and rep["r2"] == pytest.approx(np.mean(rep["r2_per_run"][:2]))
    with pytest.raises(GptParamsError, match=r"\(3, 301\) and \(3, 300\)"):
        trajectory_alignment(runs, runs[:, :300], best=0.5)


def test_outputs_are_scored_by_the_held_out_version_of_the_conditioning_metric():
    digits, cart = get_task("digits-mlp"), get_task("cartpole")
    assert digits.held_out_metric("val_loss") == "test_loss"
    assert digits.held_out_metric("val_error") == "test_error"
    assert cart.held_out_metric("return_sampled") == "return_sampled"


class StubTask:
    """Scores a network by its first parameter."""

    def evaluate_only(self, theta, names):
        return {n: theta[:, 0].numpy().copy() for n in names}


class StubOptimizer:
    """A "model" whose step lands exactly on the prompt (``exact``) or always on 1.0."""

    metric_name, best_prompt, task = "val_loss", 0.2, StubTask()

    def __init__(self, exact: bool) -> None:
        self.exact, self.calls = exact, []

    def step(self, theta, prompts, current_loss, **kw):
        self.calls.append(kw)
        out = theta.clone()
        out[:, 0] = prompts if self.exact else 1.0
        return out


def test_prompt_alignment_of_a_step_that_meets_every_prompt_is_one():
    theta = torch.rand(3, 5) + torch.tensor([[2.0], [1.0], [3.0]]) * torch.eye(5)[0]  # starts 2.x, 1.x, 3.x
    exact = StubOptimizer(exact=True)
    res = prompt_alignment(exact, theta, n_prompts=4, generator="g")
    assert res["r2"] == pytest.approx(1.0) and res["r2_per_net"] == pytest.approx([1.0] * 3)
    assert np.allclose(np.array(res["prompted"])[:, 0], 0.2) and np.allclose(res["prompted"], res["achieved"])
    assert exact.calls == [{"generator": "g"}]  # the sampler settings reach the step
    flat = prompt_alignment(StubOptimizer(exact=False), theta, n_prompts=4)  # ignores the prompt
    assert flat["r2"] < 0.5


def test_an_audited_permuted_training_checkpoint_lies_at_distance_zero():
    task = get_task("mnist-mlp")
    bank = torch.stack([task.flatten(task.build(s)) for s in range(5)])  # (5, D) "training checkpoints"
    perms = random_perms(task.symmetries, 1, torch.Generator().manual_seed(3))
    query = permute(bank[3:4], task.layout, task.symmetries, perms)  # (1, D) a memorised one, relabelled
    assert (query - bank[3]).norm() > 1
    dist, index = nearest(query, bank, task.layout, task.symmetries)
    assert index[0] == 3 and dist[0] == pytest.approx(0.0, abs=1e-5)
    other, _ = nearest(task.flatten(task.build(99))[None], bank, task.layout, task.symmetries)
    assert other[0] > 1  # a network not in the bank is not


@pytest.mark.parametrize("task_name", ["mnist-mlp", "cartpole"])
def test_alignment_undoes_a_permutation(task_name):
    task = get_task(task_name)
    theta = task.flatten(task.build(0))
    shuffled = permute(
        theta.expand(3, -1),
        task.layout,
        task.symmetries,
        random_perms(task.symmetries, 3, torch.Generator().manual_seed(1)),
    )
    assert (shuffled - theta).norm(dim=1).min() > 0
    aligned = align(theta, shuffled, task.layout, task.symmetries)
    torch.testing.assert_close(aligned, theta.expand(3, -1))
    assert aligned_distances(theta, shuffled, task.layout, task.symmetries) == pytest.approx(
        np.zeros(3), abs=1e-6
    )


def test_steps_to_reach():
    c = Curve(
        "adam", 1e-3, np.array([0, 5, 10]), {"test_loss": np.array([[2.0, 2.0], [1.0, 1.9], [0.5, 1.8]])}
    )
    np.testing.assert_array_equal(steps_to_reach(c, "test_loss", np.array([1.0, 0.1])), [5.0, np.inf])


def test_ppo_baseline_counts_adam_steps_and_stops_once_matched():
    from gpt_params.tasks.cartpole import fresh_initial_states
    from gpt_params.tasks.ppo import ppo_steps_to_reach

    task = get_task("cartpole")
    theta = torch.stack([task.flatten(task.build(s)) for s in (1, 2)])
    states = fresh_initial_states(3)
    start = task.episode_returns(theta, states).mean(1)
    # net 0's target is its own start (0 steps); net 1's is out of reach in 2 PPO updates (inf)
    steps, hist = ppo_steps_to_reach(task, theta, np.array([start[0], 1e9]), states, max_timesteps=512)
    assert steps[0] == 0 and np.isinf(steps[1])
    # two worker processes train the same runs (each actor keeps its own seed)
    steps2, hist2 = ppo_steps_to_reach(
        task, theta, np.array([start[0], 1e9]), states, max_timesteps=512, workers=2
    )
    np.testing.assert_array_equal(steps2, steps)
    for a, b in zip(hist, hist2, strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(hist[0]) == 1 and hist[0][0] == pytest.approx(start[0])
    assert len(hist[1]) == 3  # the init, then after each of the 2 updates (8 envs x 32 steps each)
    assert hist[1][0] == pytest.approx(start[1])


def test_demo_cli_prints_a_table_and_writes_plots(digits, tmp_path):
    _, model = digits
    cp = tiny_export(tmp_path / "cp", "cartpole", "return_mean", [9.0, 500.0], 500.0)
    cifar = tiny_export(tmp_path / "cifar", "cifar10-cnn", "val_loss", [1.5, 2.4], 1.6)
    out = tmp_path / "demo"
    res = subprocess.run(
        [sys.executable, "-m", "gpt_params.cli", "demo", "--models", str(model), str(cp), str(cifar), "--nets", "2",
         "--rl-nets", "1", "--adam-steps", "20", "--ppo-timesteps", "256", "--out", str(out),
         "--data-dir", f"cifar10-cnn={tmp_path / 'absent.tar.gz'}"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "gradient steps to match" in res.stdout and "return_mean" in res.stdout
    # a model whose data is absent is a one-line note, not a failure
    assert [line for line in res.stdout.splitlines() if line.startswith("skipped")] == [
        f"skipped {cifar}: cifar10-cnn needs --data-dir: torchvision's CIFAR-10 files or an ImageFolder tree "
        "of its images (none ship with the package)"
    ]
    rows = json.loads((out / "demo.json").read_text())["models"]
    assert [r["metric"] for r in rows] == ["test_loss", "return_mean"]
    assert all(np.isfinite(r["achieved"]) and r["step_seconds"] > 0 for r in rows)
    assert (out / "desired_vs_observed.png").stat().st_size > 0
    assert (out / "one_step_vs_adam.png").stat().st_size > 0


def test_demo_cli_bad_input_is_one_line(tmp_path, capsys):
    from gpt_params.cli import main

    assert main(["demo", "--models", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown model" in err
    assert main(["demo", "--data-dir", "cifar10-cnn"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--data-dir 'cifar10-cnn': expected TASK=PATH" in err
    assert main(["demo", "--cnn-nets", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--cnn-nets must be a positive integer, got 0" in err


def test_demo_compares_fewer_inits_where_the_baseline_is_costly():
    cfg = BaselineConfig(nets=16, rl_nets=3, cnn_nets=5)
    counts = {
        name: get_task(name).baseline_nets(cfg)
        for name in ("mnist-mlp", "digits-mlp", "mnist-cnn", "cartpole")
    }
    assert counts == {"mnist-mlp": 16, "digits-mlp": 16, "mnist-cnn": 5, "cartpole": 3}
    assert get_task("cifar10-cnn").baseline_nets(cfg) == 5  # no data needed to say so


def test_train_curves_stops_once_every_net_reached_its_target():
    from gpt_params.tasks.batched import train_curves

    task = get_task("digits-mlp")
    theta = torch.stack([task.flatten(task.build(s)) for s in range(3)])
    full = train_curves(task, theta, "adam", 1e-2, 60, eval_every=5)
    target = full.metrics["val_loss"][4]  # (3,) reached by step 20
    early = train_curves(task, theta, "adam", 1e-2, 60, eval_every=5, stop_at=("val_loss", target))
    assert early.steps[-1] <= 20 < full.steps[-1]
    np.testing.assert_allclose(early.metrics["val_loss"], full.metrics["val_loss"][: len(early.steps)])


def benchmark(name, digits, *args):
    """Runs ``benchmarks/<name>`` on the tiny digits model and zoo in this process (see ``run_script``)."""
    zoo, model = digits
    return run_script(repo_root() / "benchmarks" / name, "--model", model, "--zoo", zoo, *args)


def test_seen_inits_benchmark_scores_train_split_inits(digits):
    res = benchmark(
        "seen_inits.py", digits, "--nets", 2, "--prompts", 3, "--sampler-steps", 2, "--guidance", 1, 2
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["guidance"] for r in rows] == [1.0, 2.0] and all(r["split"] == "train" for r in rows)
    assert all(np.isfinite(r["r2"]) and r["nets"] == 2 for r in rows)
    bad = run_script(
        repo_root() / "benchmarks" / "seen_inits.py", "--model", digits[1], "--zoo", digits[0], "--nets", 0
    )
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "asked for 0" in bad.stderr


def test_sampler_spread_benchmark_reports_the_seed_to_seed_spread(digits, tmp_path):
    out = tmp_path / "spread.json"
    res = benchmark("sampler_spread.py", digits, "--nets", 2, "--seeds", 3, "--guidance", 1, 2, "--out", out)
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads(out.read_text())
    assert [r["guidance"] for r in rep["results"]] == [1.0, 2.0] and rep["nets"] == 2
    for r in rep["results"]:
        vals = r["per_seed"]["val_loss"]
        assert len(vals) == 3 and len(set(vals)) == 3  # the sampler seed changes the step
        assert r["val_loss_mean"] == pytest.approx(np.mean(vals)) and r["val_loss_sd"] > 0
    assert "| guidance |" in res.stdout
    bad = run_script(
        repo_root() / "benchmarks" / "sampler_spread.py",
        "--model",
        digits[1],
        "--zoo",
        digits[0],
        "--seeds",
        1,
    )
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "--seeds 1" in bad.stderr


def test_prompt_clamp_benchmark_compares_the_prompt_as_given_and_clamped(digits, tmp_path):
    _, model = digits
    out = tmp_path / "clamp.json"
    script = repo_root() / "benchmarks" / "prompt_clamp.py"
    res = run_script(script, "--model", model, "--nets", 2, "--prompts", "1.0", "-3", "--out", out)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["as_given"] == rows[0]["clamped"]  # 1.0 is within reach: nothing changes
    assert (
        rows[1]["sampled_prompt"] == pytest.approx(0.3) and rows[1]["prompt"] == -3.0
    )  # -3 is clamped to the best
    assert "| -3 |" in res.stdout


def test_harvest_throughput_benchmark_reports_training_rates(tmp_path):
    out = tmp_path / "throughput.json"
    script = repo_root() / "benchmarks" / "harvest_throughput.py"
    args = ["--task", "digits-mlp", "--epochs", 1, "--ckpts-per-run", 3, "--batched-runs", 4]
    res = run_script(script, *args, "--sequential-runs", 1, "--training-steps", 6, "--out", out)
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads(out.read_text())
    rates = rep["training_net_images_per_s"]
    assert set(rates) == {"harvest", "plain_batched", "one_at_a_time"} and all(v > 0 for v in rates.values())
    assert rep["training_vs_plain_batched"] == pytest.approx(rates["harvest"] / rates["plain_batched"])


def test_steps_to_match_agrees_with_the_fine_curve_at_fewer_evaluations(monkeypatch):
    from gpt_params.tasks.batched import steps_to_match, train_curves

    task = get_task("digits-mlp")
    theta = torch.stack([task.flatten(task.build(s)) for s in range(4)])
    fine = train_curves(task, theta, "adam", 3e-3, 80, eval_every=5)
    # targets crossed at different fine steps, some between two coarse evaluations, one never
    targets = {m: fine.metrics[m][[3, 7, 11, 0]].diagonal().copy() for m in ("test_loss", "val_loss")}
    targets["test_loss"][3] = 0.0
    targets["val_loss"][:] = fine.metrics["val_loss"][[2, 5, 9, 14]].diagonal()
    want = {m: steps_to_reach(fine, m, t) for m, t in targets.items()}
    calls = []
    evaluate = task.evaluate
    monkeypatch.setattr(
        task, "evaluate", lambda theta, **kw: calls.append(len(theta)) or evaluate(theta, **kw)
    )
    got, coarse = steps_to_match(
        task, theta, "adam", 3e-3, 80, {"test_loss": targets["test_loss"]}, resolution=5, coarse=20
    )
    np.testing.assert_array_equal(got["test_loss"], want["test_loss"])
    assert np.isinf(got["test_loss"][3]) and len(set(got["test_loss"][:3])) == 3
    np.testing.assert_array_equal(coarse.steps, [0, 20, 40, 60, 80])
    np.testing.assert_allclose(coarse.metrics["test_loss"], fine.metrics["test_loss"][::4], rtol=1e-6)
    assert sum(calls) < 4 * len(fine.steps)  # fewer network evaluations than the fine curve's
    # several metrics at once, run to the end without stopping, extra splits on the coarse curve
    got, coarse = steps_to_match(
        task, theta, "adam", 3e-3, 80, targets, resolution=5, coarse=20, stop=False, splits=("train",)
    )
    for m in targets:
        np.testing.assert_array_equal(got[m], want[m])
    assert {"train_loss", "val_loss", "test_error"} <= set(coarse.metrics) and coarse.steps[-1] == 80
    with pytest.raises(GptParamsError, match="multiple of resolution"):
        steps_to_match(task, theta, "adam", 3e-3, 80, targets, resolution=3, coarse=20)


@pytest.mark.slow
def test_ablation_benchmark_trains_each_variant_and_scores_it_on_the_chosen_split(digits, tmp_path):
    zoo, _ = digits
    out = tmp_path / "abl"
    res = run_script(
        repo_root() / "benchmarks" / "ablation.py", "--zoo", zoo, "--minutes", 0.005, "--preset", "tiny",
        "--variants", "reference", "no-output", "--split", "val", "--nets", 1, "--out", out,
        "--train-args", "--output-weight 1 --output-probes 4 --max-steps 2",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "ablation.json").read_text())
    assert report["split"] == "val" and [r["variant"] for r in report["rows"]] == ["reference", "no-output"]
    # the variant's flag comes after --train-args, so it wins
    weights = [
        json.loads((out / v / "config.json").read_text())["train"]["output_weight"]
        for v in ("reference", "no-output")
    ]
    assert weights == [1.0, 0.0]
    assert all(np.isfinite(r["r2"]) and np.isfinite(r["one_step_loss"]) for r in report["rows"])
    assert "one-step val loss" in res.stdout
