"""The shipped models: present, small enough, loadable by name, and each improves an unseen init."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from gpt_params.errors import GptParamsError
from gpt_params.export import WEIGHTS, convert_export, load_export
from gpt_params.optimizer import PRETRAINED_DIR, LearnedOptimizer, pretrained_names

from .conftest import tiny_export

EXPECTED = ("cartpole-return", "digits-mlp-loss", "mnist-cnn-loss", "mnist-mlp-error", "mnist-mlp-loss")
MiB = 2**20


def test_every_promised_model_is_shipped_within_the_size_budget():
    assert set(EXPECTED) <= set(pretrained_names())
    sizes = {n: (PRETRAINED_DIR / n / WEIGHTS).stat().st_size for n in pretrained_names()}
    assert all(s <= 20 * MiB for s in sizes.values()), sizes
    assert sum(sizes.values()) <= 60 * MiB, sizes


@pytest.mark.parametrize("name", EXPECTED)
def test_shipped_model_improves_an_unseen_random_init_in_one_step(name):
    opt = LearnedOptimizer.from_pretrained(name)
    assert opt.exported.meta["task"] == opt.task.name
    theta0 = opt.task.unseen_inits(4)  # (4, D), seeds no harvest uses
    new = opt.step(theta0, opt.best_prompt, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(new).all()
    before, after = opt.measure(theta0), opt.measure(new)
    if opt.metric == "return":
        assert np.median(after) > np.median(before) + 50, (before, after)
    else:
        # the weakest shipped model (mnist-cnn-loss, from a 4-epoch zoo) gains ~6%; the others far more
        assert np.median(after) < 0.97 * np.median(before), (before, after)
        test = opt.task.evaluate(new, splits=("test",))
        start = opt.task.evaluate(theta0, splits=("test",))
        assert np.median(test["test_loss"]) < np.median(start["test_loss"])


def test_half_precision_export_loads_as_float32_and_samples_like_the_original(tmp_path):
    src = tiny_export(tmp_path / "fp32", "digits-mlp", "val_loss", (0.1, 2.4), 0.2)
    dst = convert_export(src, tmp_path / "fp16", torch.float16)
    assert (dst / WEIGHTS).stat().st_size < 0.7 * (src / WEIGHTS).stat().st_size
    a, b = load_export(src), load_export(dst)
    assert all(p.dtype == torch.float32 for p in b.model.parameters())
    assert b.meta["weights_dtype"] == "float16"
    learned = {n for n, _ in a.model.named_parameters()}
    buffers_a = {k: v for k, v in a.model.state_dict().items() if k not in learned}
    buffers_b = {k: v for k, v in b.model.state_dict().items() if k not in learned}
    torch.testing.assert_close(buffers_b, buffers_a, rtol=0, atol=0)  # kept at full precision
    torch.testing.assert_close(b.normalizer.state(), a.normalizer.state(), rtol=0, atol=0)
    theta = LearnedOptimizer(a).task.unseen_inits(3)
    outs = [
        LearnedOptimizer(e).step(
            theta, 0.3, current_loss=[2.3] * 3, generator=torch.Generator().manual_seed(1)
        )
        for e in (a, b)
    ]
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=5e-3)


def test_default_guidance_is_stored_by_export_and_used_when_a_call_names_none(tmp_path):
    src = tiny_export(tmp_path / "src", "digits-mlp", "val_loss", (0.1, 2.4), 0.2, std=0.05)
    dst = convert_export(src, tmp_path / "g2", torch.float32, default_guidance=2.0)
    plain, guided = LearnedOptimizer.from_pretrained(src), LearnedOptimizer.from_pretrained(dst)
    assert plain.default_guidance == 1.0 and guided.default_guidance == 2.0
    theta = plain.task.unseen_inits(2)

    def step(opt, **kw):
        return opt.step(theta, 0.3, current_loss=[2.3, 2.3], generator=torch.Generator().manual_seed(0), **kw)

    torch.testing.assert_close(step(guided), step(plain, guidance_scale=2.0), rtol=0, atol=0)
    torch.testing.assert_close(step(guided, guidance_scale=1.0), step(plain), rtol=0, atol=0)
    assert not torch.equal(step(guided), step(plain))
    with pytest.raises(GptParamsError, match="default guidance must be a finite number > 0, got -1"):
        convert_export(src, tmp_path / "bad", torch.float32, default_guidance=-1.0)
    assert not (tmp_path / "bad").exists()


def test_export_cli_sets_dtype_and_default_guidance_and_rejects_bad_values_in_one_line(tmp_path):
    src = tiny_export(tmp_path / "src", "digits-mlp", "val_loss", (0.1, 2.4), 0.2)

    def cli(*args):
        cmd = [sys.executable, "-m", "gpt_params.cli", "export", str(src), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    ok = cli("--out", str(tmp_path / "g2"), "--default-guidance", "2")
    assert ok.returncode == 0, ok.stderr
    meta = json.loads((tmp_path / "g2" / "config.json").read_text())
    assert meta["default_guidance"] == 2.0 and meta["weights_dtype"] == "float16"
    bad = cli("--out", str(tmp_path / "nan"), "--default-guidance", "nan")
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "got nan" in bad.stderr


def test_shipped_cartpole_model_picks_by_its_critic_and_follows_prompts():
    opt = LearnedOptimizer.from_pretrained("cartpole-return")
    assert opt.has_critic and (opt.default_samples, opt.default_combine) == (8, "critic")
    theta0 = opt.task.unseen_inits(4)
    returns = {}
    for prompt in (150.0, 450.0):
        new = opt.step(theta0, prompt, generator=torch.Generator().manual_seed(0))
        assert opt.last_report.num_samples == 8 and opt.last_report.combine == "critic"
        returns[prompt] = opt.measure(new)  # (4,) the return it is conditioned on, by rollouts
        predicted = opt.predict(new)  # the critic's estimate of the same, no rollouts
        assert np.median(np.abs(predicted - returns[prompt])) < 60, (predicted, returns[prompt])
    assert np.mean(returns[450.0]) > np.mean(returns[150.0]) + 150, returns
