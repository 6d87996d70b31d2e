"""LearnedOptimizer: input kinds, batching, determinism and every documented bad input."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from gpt_params import LearnedOptimizer
from gpt_params.errors import GptParamsError, LayoutError
from gpt_params.tasks import get_task

from .conftest import tiny_export


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return tiny_export(tmp_path_factory.mktemp("export"), "digits-mlp", "val_loss", [0.1, 2.5], 0.2, std=0.05)


@pytest.fixture(scope="module")
def opt(export_dir):
    return LearnedOptimizer.from_pretrained(export_dir)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_describes_the_model(opt):
    assert opt.metric == "loss" and opt.metric_name == "val_loss"
    assert opt.metric_range == (0.1, 2.5) and opt.best_prompt == 0.2
    assert opt.task.name == "digits-mlp"


def test_module_state_dict_and_vector_round_trip_and_input_untouched(opt):
    net = opt.task.build(1)
    before = opt.task.flatten(net).clone()
    new_net = opt.step(net, 0.5, generator=gen())
    assert isinstance(new_net, type(net)) and new_net is not net
    assert torch.equal(opt.task.flatten(net), before)  # input untouched
    theta_new = opt.task.flatten(new_net)
    assert not torch.equal(theta_new, before)

    state = net.state_dict()
    new_state = opt.step(state, 0.5, generator=gen())
    assert set(new_state) == set(state)
    assert torch.equal(opt.task.layout.flatten(new_state), theta_new)
    assert torch.equal(opt.task.flatten(net), before)

    vec = opt.step(before, 0.5, generator=gen())
    assert vec.shape == before.shape and torch.equal(vec, theta_new)


def test_batch_and_single_calls_agree(opt):
    theta = torch.stack([opt.task.flatten(opt.task.build(s)) for s in range(3)])
    prompts = [0.4, 0.6, 0.8]
    batch = opt.step(theta, prompts, current_loss=[2.3, 2.3, 2.3], generator=gen(4))
    listed = opt.step(list(theta), prompts, current_loss=2.3, generator=gen(4))
    assert batch.shape == theta.shape and isinstance(listed, list) and len(listed) == 3
    torch.testing.assert_close(torch.stack(listed), batch)
    # the first network of a batch draws the same noise as that network alone
    single = opt.step(theta[0], prompts[0], current_loss=2.3, generator=gen(4))
    assert single.shape == theta[0].shape
    torch.testing.assert_close(single, batch[0], rtol=1e-4, atol=1e-5)


def test_seeded_generator_is_deterministic_and_seeds_differ(opt):
    net = opt.task.build(2)
    a = opt.task.flatten(opt.step(net, 0.5, generator=gen(7)))
    b = opt.task.flatten(opt.step(net, 0.5, generator=gen(7)))
    c = opt.task.flatten(opt.step(net, 0.5, generator=gen(8)))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_current_loss_is_measured_on_validation_when_omitted(opt):
    net = opt.task.build(3)
    measured = float(opt.measure(net)[0])
    expected = float(opt.task.evaluate(opt.task.flatten(net)[None], splits=("val",))["val_loss"][0])
    assert measured == pytest.approx(expected)
    a = opt.step(net, 0.5, generator=gen(1))
    b = opt.step(net, 0.5, current_loss=measured, generator=gen(1))
    assert torch.equal(opt.task.flatten(a), opt.task.flatten(b))
    assert opt.last_report.measure_seconds == 0.0


def test_best_of_k_keeps_the_best_candidate_and_reports_cost(opt):
    net = opt.task.build(4)
    out = opt.step(net, 0.2, num_samples=4, generator=gen(2))
    report = opt.last_report
    assert report.num_samples == 4 and len(report.candidate_metrics[0]) == 4
    assert float(opt.measure(out)[0]) == pytest.approx(min(report.candidate_metrics[0]), rel=1e-5)
    assert report.select_seconds > 0 and report.seconds >= report.sample_seconds


def test_nearest_of_k_keeps_the_candidate_whose_metric_is_closest_to_the_prompt(opt):
    net = opt.task.build(4)
    for target in (0.2, 2.5):
        out = opt.step(net, target, num_samples=6, combine="nearest", generator=gen(3))
        cands = np.asarray(opt.last_report.candidate_metrics[0])  # (6,) val metric of each candidate
        assert opt.last_report.combine == "nearest"
        assert float(opt.measure(out)[0]) == pytest.approx(cands[np.abs(cands - target).argmin()], rel=1e-5)
    assert np.abs(cands - 2.5).argmin() != cands.argmin()  # a far-from-best prompt picks another one


def test_mean_of_k_averages_the_candidates_best_of_k_would_choose_from(opt):
    net = opt.task.build(4)
    theta = opt.task.flatten(net)
    cands = opt.step(theta.expand(4, -1), 0.2, current_loss=1.0, generator=gen(2))  # (4, D)
    mean = opt.step(theta, 0.2, current_loss=1.0, num_samples=4, combine="mean", generator=gen(2))
    torch.testing.assert_close(mean, cands.mean(0))
    assert not torch.allclose(cands[0], cands[1])  # distinct candidates: the mean is not a copy of one
    report = opt.last_report
    assert report.combine == "mean" and report.candidate_metrics is None
    with pytest.raises(GptParamsError, match="combine must be one of .*'median'"):
        opt.step(theta, 0.2, num_samples=2, combine="median")


def test_recursive_prompting_applies_several_steps(opt):
    net = opt.task.build(5)
    one = opt.optimize(net, 0.5, steps=1, generator=gen(3))
    direct = opt.step(net, 0.5, generator=gen(3))
    assert torch.equal(opt.task.flatten(one), opt.task.flatten(direct))
    two = opt.optimize(net, 0.5, steps=2, generator=gen(3))
    assert not torch.equal(opt.task.flatten(two), opt.task.flatten(one))
    # a given current_loss feeds the first step only (and is what measuring would give)
    given = opt.optimize(net, 0.5, steps=2, current_loss=float(opt.measure(net)[0]), generator=gen(3))
    assert torch.equal(opt.task.flatten(given), opt.task.flatten(two))
    other = opt.optimize(net, 0.5, steps=1, current_loss=0.4, generator=gen(3))
    assert not torch.equal(opt.task.flatten(other), opt.task.flatten(one))


def test_aliases(opt):
    net = opt.task.build(6)
    with pytest.raises(GptParamsError, match="target_return does not apply"):
        opt.step(net, target_return=400.0)
    with pytest.raises(GptParamsError, match="exactly one prompt"):
        opt.step(net)
    with pytest.raises(GptParamsError, match="exactly one prompt"):
        opt.step(net, 0.5, target_error=0.1)


@pytest.mark.parametrize(
    "params, match",
    [
        (torch.zeros(17), "expected \\(\\d+,\\) or \\(batch"),
        (torch.zeros(2, 3, 4), "expected"),
        (
            torch.nn.Linear(3, 2),
            r"expected the digits-mlp network \(fc1.weight \(16, 64\), .*got weight \(2, 3\)",
        ),
        ({"fc1.weight": torch.zeros(1)}, r"got fc1.weight \(1,\)$"),
        ("net.pt", "not understood"),
        ([], "empty list"),
    ],
)
def test_wrong_architecture_or_kind_is_a_clear_error(opt, params, match):
    with pytest.raises(GptParamsError, match=match):
        opt.step(params, 0.5)


def test_non_finite_inputs_are_rejected(opt):
    theta = opt.task.flatten(opt.task.build(0))
    bad = theta.clone()
    bad[3] = float("nan")
    with pytest.raises(GptParamsError, match="NaN or Inf"):
        opt.step(bad, 0.5)
    with pytest.raises(GptParamsError, match="target_loss contains NaN"):
        opt.step(theta, float("inf"))
    with pytest.raises(GptParamsError, match="2 values for 1 networks"):
        opt.step(theta, [0.5, 0.6])


def test_a_prompt_beyond_reach_is_clamped_to_the_reachable_end_with_a_warning(opt):
    theta = opt.task.flatten(opt.task.build(0))
    best = opt.step(theta, opt.best_prompt, current_loss=2.3, generator=gen(5))
    with pytest.warns(
        UserWarning, match=r"target_loss -3.0 lies beyond what the model can reach .*clamped to 0.2"
    ):
        clamped = opt.step(theta, -3.0, current_loss=2.3, generator=gen(5))
    torch.testing.assert_close(clamped, best, rtol=0, atol=0)
    assert opt.last_report.prompts == [pytest.approx(0.2)]
    with pytest.warns(UserWarning, match="kept as given"):
        raw = opt.step(theta, -3.0, current_loss=2.3, generator=gen(5), clamp_prompt=False)
    assert not torch.equal(raw, best)
    with pytest.warns(UserWarning, match="clamped to 2.5"):  # the worst end of the trained range
        opt.step(theta, 9.0, current_loss=2.3, generator=gen(5))
    assert opt.last_report.prompts == [pytest.approx(2.5)]


def test_a_return_prompt_is_clamped_at_the_top(tmp_path):
    exp = tiny_export(tmp_path, "cartpole", "return_mean", [9.0, 500.0], 480.0)
    cart = LearnedOptimizer.from_pretrained(exp)
    theta = cart.task.unseen_inits(1)
    with pytest.warns(UserWarning, match="clamped to 480"):
        cart.step(theta, 700.0, current_loss=20.0)
    with pytest.warns(UserWarning, match="clamped to 9"):
        cart.step(theta, 1.0, current_loss=20.0)
    assert cart.last_report.prompts == [9.0]


def test_a_prompt_within_reach_is_not_touched(opt, recwarn):
    theta = opt.task.flatten(opt.task.build(0))
    opt.step(theta, 0.7, current_loss=2.3)
    assert opt.last_report.prompts == [pytest.approx(0.7)] and not recwarn.list


def test_device_problems_are_one_line_errors(export_dir):
    with pytest.raises(GptParamsError, match=r"unknown device 'gpu7'; expected cpu, cuda"):
        LearnedOptimizer.from_pretrained(export_dir, device="gpu7")
    if not torch.cuda.is_available():
        with pytest.raises(GptParamsError, match="CUDA is not available on this machine"):
            LearnedOptimizer.from_pretrained(export_dir, device="cuda")
    else:
        with pytest.raises(GptParamsError, match="CUDA device"):
            LearnedOptimizer.from_pretrained(export_dir, device=f"cuda:{torch.cuda.device_count()}")


def test_unknown_model_missing_or_corrupt_weights(tmp_path, export_dir):
    with pytest.raises(GptParamsError, match="unknown model 'no-such-model'"):
        LearnedOptimizer.from_pretrained("no-such-model")
    with pytest.raises(GptParamsError, match="lacks model.safetensors"):
        (tmp_path / "config.json").write_text((export_dir / "config.json").read_text())
        LearnedOptimizer.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(GptParamsError, match="not a readable safetensors"):
        LearnedOptimizer.from_pretrained(tmp_path)


def test_layout_error_is_a_gpt_params_error():
    assert issubclass(LayoutError, GptParamsError)


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "gpt_params.cli", "optimize", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_optimize_writes_a_loadable_network(tmp_path, export_dir, capsys):
    out = tmp_path / "net.safetensors"
    args = ["--task", "digits-mlp", "--target", "0.5", "--seed", "3", "--out", str(out)]
    assert cli_code(["optimize", "--model", str(export_dir), *args]) == 0
    printed = capsys.readouterr().out
    assert "val_loss" in printed and "test error" in printed
    state = load_file(str(out))
    task = get_task("digits-mlp")
    assert task.layout.flatten(state).shape == (task.layout.numel,)
    # starting from that file works too, and from a state dict of the same shapes under other names
    seq = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10)
    )
    save_file({k: v.contiguous() for k, v in seq.state_dict().items()}, str(tmp_path / "init.safetensors"))
    assert (
        cli_code(["optimize", "--model", str(export_dir), "--init", str(tmp_path / "init.safetensors")]) == 0
    )
    before = float(capsys.readouterr().out.split("val_loss ")[1].split(" ")[0])
    expected = LearnedOptimizer.from_pretrained(export_dir).measure(seq)[0]
    assert before == pytest.approx(float(f"{expected:.4g}"))


@pytest.mark.parametrize(
    "args, match",
    [
        (["--task", "cartpole"], "does not match model"),
        (["--out", "x.pt"], "must end in .safetensors"),
        (["--init", "missing.safetensors"], "does not exist"),
        (["--steps", "0"], "steps must be a positive integer"),
        (["--device", "cuda:99"], "device 'cuda:99'"),
        (["--combine", "median"], "invalid choice: 'median'"),  # argparse's own errors: one line too
    ],
)
def test_cli_optimize_bad_input_is_one_line(export_dir, args, match, capsys):
    assert cli_code(["optimize", "--model", str(export_dir), *args]) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1, err


def test_cli_unknown_model_is_one_line(capsys):
    assert cli_code(["optimize", "--model", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "unknown model" in err and len(err.strip().splitlines()) == 1


def test_cli_out_of_range_prompt_warns_in_one_line(export_dir, capsys):
    assert cli_code(["optimize", "--model", str(export_dir), "--target", "99", "--seed", "1"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("gpt-params: warning: target_loss 99.0 lies beyond what the model can reach"), err
    assert "clamped to 2.5" in err and len(err.strip().splitlines()) == 1


def cli_code(argv) -> int:
    """The CLI in-process: its exit code (argparse's usage errors exit through SystemExit)."""
    import warnings

    from gpt_params.cli import main

    with warnings.catch_warnings():
        try:
            return main(argv)
        except SystemExit as e:
            return e.code
