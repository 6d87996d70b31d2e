"""The learned critic: it predicts held-out metrics, sees no weight symmetry, travels with an export,
and the optimizer, eval/prompting.py and train/critic.py use it."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from gpt_params import LearnedOptimizer
from gpt_params.critic import CriticConfig, fit_critic
from gpt_params.errors import GptParamsError
from gpt_params.export import convert_export, load_export, save_export
from gpt_params.harvest import HarvestConfig, harvest
from gpt_params.layout import permute, random_perms
from gpt_params.tasks import get_task
from gpt_params.zoo_reader import Zoo

from .conftest import repo_root, run_script, tiny_export

CFG = CriticConfig(probes=64, hidden=64, epochs=40, batch_size=64)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("critic")
    zoo_path = root / "digits.h5"
    harvest(
        HarvestConfig(
            task="digits-mlp", runs=24, ckpts_per_run=8, cohort_size=12, epochs=3, out=str(zoo_path)
        )
    )
    zoo = Zoo(zoo_path)
    task = get_task("digits-mlp")
    critic, report = fit_critic(zoo, task, "val_loss", CFG)
    model = tiny_export(root / "model", "digits-mlp", "val_loss", [0.1, 2.5], 0.3, std=0.05)
    exp = load_export(model)
    save_export(model, exp.model, exp.normalizer, exp.clamp, exp.diffusion, exp.meta, critic=critic)
    return zoo, task, critic, report, model


def test_critic_predicts_the_metric_of_held_out_runs(fitted):
    zoo, task, critic, report, _ = fitted
    assert report["val_r2"] > 0.9, report  # the metric spans 2.3 -> ~0.2 along a run
    assert report["train_runs"] == len(zoo.runs("train")) and report["val_checkpoints"] > 0
    row = int(zoo.runs("val")[0])
    pred = critic.predict(torch.from_numpy(zoo.params(row))).numpy()  # (K,)
    true = zoo.metrics["val_loss"][row]
    assert np.corrcoef(pred, true)[0, 1] > 0.9 and np.all(np.isfinite(pred))


def test_critic_is_blind_to_hidden_unit_permutations(fitted):
    zoo, task, critic, _, _ = fitted
    theta = torch.from_numpy(zoo.params(int(zoo.runs("val")[0])))[:4]
    shuffled = permute(
        theta,
        task.layout,
        task.symmetries,
        random_perms(task.symmetries, 4, torch.Generator().manual_seed(0)),
    )
    assert not torch.allclose(theta, shuffled)
    torch.testing.assert_close(critic.predict(shuffled), critic.predict(theta), rtol=1e-4, atol=1e-5)


def test_export_round_trip_and_half_precision_copy_keep_the_critic(fitted, tmp_path):
    zoo, _, critic, report, model = fitted
    theta = torch.from_numpy(zoo.params(int(zoo.runs("test")[0])))
    loaded = load_export(model)
    assert loaded.critic is not None and loaded.critic.fit_report["val_r2"] == pytest.approx(report["val_r2"])
    torch.testing.assert_close(loaded.critic.predict(theta), critic.predict(theta))
    half = load_export(convert_export(model, tmp_path / "half"))
    torch.testing.assert_close(half.critic.predict(theta), critic.predict(theta), rtol=2e-2, atol=2e-2)
    plain = tiny_export(tmp_path / "plain", "digits-mlp", "val_loss", [0.1, 2.5], 0.3)
    assert load_export(plain).critic is None


def test_optimizer_keeps_the_candidate_the_critic_predicts_nearest_the_prompt(fitted, tmp_path):
    _, task, _, _, model = fitted
    opt = LearnedOptimizer.from_pretrained(model)
    assert opt.has_critic
    net = task.build(5)
    for target in (0.3, 2.0):
        out = opt.step(net, target, current_loss=2.3, num_samples=6, combine="critic",
                       generator=torch.Generator().manual_seed(1))  # fmt: skip
        pred = np.asarray(opt.last_report.candidate_metrics[0])  # (6,) the critic's predictions
        assert opt.last_report.combine == "critic"
        assert float(opt.predict(out)[0]) == pytest.approx(pred[np.abs(pred - target).argmin()], rel=1e-4)
    plain = LearnedOptimizer.from_pretrained(
        tiny_export(tmp_path / "plain", "digits-mlp", "val_loss", [0.1, 2.5], 0.3)
    )
    assert not plain.has_critic
    with pytest.raises(GptParamsError, match="learned critic"):
        plain.step(net, 0.3, current_loss=2.3, num_samples=2, combine="critic")
    with pytest.raises(GptParamsError, match="no learned critic"):
        plain.predict(net)


def test_cartpole_probe_states_are_visited_states_and_reproducible():
    task = get_task("cartpole")
    bank = torch.stack([task.flatten(task.build(s)) for s in range(4)])
    a, b = task.probe_inputs(bank, 100, seed=3), task.probe_inputs(bank, 100, seed=3)
    assert a.shape == (100, 4) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, task.probe_inputs(bank, 100, seed=4))
    assert task.probe_outputs(bank, a).shape == (4, 100, 2)
    with pytest.raises(ValueError, match="probe states"):
        task.probe_inputs(bank, 10_000, seed=0)


def run(script, *args):
    return subprocess.run(
        [sys.executable, str(repo_root() / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_critic_script_writes_a_loadable_critic_and_prompting_uses_it(fitted, tmp_path):
    zoo, _, _, _, model = fitted
    plain = tiny_export(tmp_path / "plain", "digits-mlp", "val_loss", [0.1, 2.5], 0.3)
    res = run("train/critic.py", "--model", plain, "--zoo", zoo.path, "--probes", 32, "--epochs", 2,
              "--out", tmp_path / "with-critic")  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["config"]["probes"] == 32 and np.isfinite(report["val_rms"])
    assert load_export(tmp_path / "with-critic").critic is not None and load_export(plain).critic is None
    out = tmp_path / "p.json"
    res = run("eval/prompting.py", "--model", tmp_path / "with-critic", "--zoo", zoo.path, "--nets", 2,
              "--prompts", 3, "--samplers", "ddim:2", "--samples", 1, 3, "--out", out)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    rows = json.loads(out.read_text())["results"]
    assert [r["samples"] for r in rows] == [1, 3] and all(np.isfinite(r["r2"]) for r in rows)


@pytest.mark.parametrize(
    "args, match",
    [
        (["--probes", "0"], "probes must be a positive integer"),
        (["--zoo", "missing.h5"], "missing.h5"),
    ],
)
def test_critic_script_bad_input_is_one_line(fitted, tmp_path, args, match):
    zoo, _, _, _, model = fitted
    copy = shutil.copytree(model, tmp_path / "m")
    before = (copy / "model.safetensors").read_bytes()
    res = run_script(repo_root() / "train" / "critic.py", "--model", copy, "--zoo", zoo.path, *args)
    assert res.returncode != 0 and match in res.stderr and len(res.stderr.strip().splitlines()) == 1, (
        res.stderr
    )
    assert (copy / "model.safetensors").read_bytes() == before  # nothing on disk touched


def test_prompting_samples_need_a_critic(fitted, tmp_path):
    zoo, _, _, _, _ = fitted
    plain = tiny_export(tmp_path / "plain", "digits-mlp", "val_loss", [0.1, 2.5], 0.3)
    res = run_script(
        repo_root() / "eval" / "prompting.py",
        "--model",
        plain,
        "--zoo",
        zoo.path,
        "--nets",
        2,
        "--samples",
        4,
    )
    assert (
        res.returncode != 0 and "needs a critic" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    )


def test_export_defaults_make_the_critics_pick_the_plain_call(fitted, tmp_path):
    _, task, _, _, model = fitted
    shipped = convert_export(model, tmp_path / "ship", default_samples=4, default_combine="critic")
    opt = LearnedOptimizer.from_pretrained(shipped)
    assert (opt.default_samples, opt.default_combine) == (4, "critic")
    opt.step(task.build(6), 0.3, current_loss=2.3)
    assert (opt.last_report.num_samples, opt.last_report.combine) == (4, "critic")
    opt.step(task.build(6), 0.3, current_loss=2.3, num_samples=1)  # a call's own choice wins
    assert opt.last_report.num_samples == 1
    plain = tiny_export(tmp_path / "plain", "digits-mlp", "val_loss", [0.1, 2.5], 0.3)
    with pytest.raises(GptParamsError, match="needs a critic"):
        convert_export(plain, tmp_path / "bad", default_combine="critic")
    with pytest.raises(GptParamsError, match="default samples must be a positive integer"):
        convert_export(model, tmp_path / "bad", default_samples=0)
    assert not (tmp_path / "bad").exists()


def test_fit_critic_rejects_a_metric_the_zoo_lacks_and_bad_configs(fitted):
    zoo, task, _, _, _ = fitted
    with pytest.raises(ValueError, match="records no metric 'return_sampled'"):
        fit_critic(zoo, task, "return_sampled", CFG)
    for bad in ({"probes": 0}, {"squash": float("nan")}, {"max_runs": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            CriticConfig(**bad)


def test_a_broken_critic_entry_is_a_clear_error(fitted, tmp_path):
    _, _, _, _, model = fitted
    copy = shutil.copytree(model, tmp_path / "m")
    cfg = json.loads((copy / "config.json").read_text())
    del cfg["critic"]["probe_shape"]
    (copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GptParamsError, match="unreadable critic entry"):
        load_export(copy)
