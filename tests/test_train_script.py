"""Smoke runs of train/diffuse.py: plain python, under accelerate launch, and save/resume."""

import json
import re
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from gpt_params.harvest import HarvestConfig, harvest

from .conftest import accelerate_launch, harvest_mixed, repo_root, run_script

SCRIPT = str(repo_root() / "train" / "diffuse.py")
TINY = [
    "--preset",
    "tiny",
    "--batch-size",
    "16",
    "--num-workers",
    "0",
    "--buffer-runs",
    "8",
    "--refresh-runs",
    "2",
    "--eval-every",
    "0",
    "--warmup-steps",
    "2",
]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo") / "digits.h5"
    harvest(HarvestConfig(task="digits-mlp", runs=16, ckpts_per_run=6, cohort_size=8, epochs=2, out=str(out)))
    return out


def run(args, launcher=None):
    cmd = (launcher or [sys.executable]) + [SCRIPT, *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.mark.slow
def test_two_steps_export_a_loadable_model(zoo, tmp_path):
    from gpt_params.export import load_export

    out = tmp_path / "run"
    run(
        [
            "--zoo",
            str(zoo),
            "--out",
            str(out),
            "--max-steps",
            "2",
            "--save-every",
            "1",
            "--eval-every",
            "2",
            "--width",
            "48",
            "--depth",
            "3",
            "--heads",
            "3",
            "--edge-width",
            "8",
            *TINY[:-4],
        ]
    )
    exp = load_export(out)
    assert exp.meta["task"] == "digits-mlp" and exp.meta["metric"] == "val_loss"
    # the architecture overrides replace the preset's and travel with the export
    cfg = exp.model.config
    assert (cfg.width, cfg.depth, cfg.heads, cfg.edge_width) == (48, 3, 3, 8)
    assert exp.meta["metric_range"][0] < exp.meta["metric_range"][1]
    assert (out / "state" / "step-2").is_dir()


@pytest.mark.slow
def test_accelerate_launch_runs_the_same_script(zoo, tmp_path):
    launcher = accelerate_launch("--num_processes", "1", "--cpu")
    run(["--zoo", str(zoo), "--out", str(tmp_path / "acc"), "--max-steps", "2", *TINY], launcher=launcher)
    assert (tmp_path / "acc" / "model.safetensors").is_file()


def stamps(folder):
    """(inode, mtime_ns, size) of every file under ``folder``: what rewriting any of them changes."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {p.relative_to(folder): (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in files}


@pytest.mark.slow
def test_resume_continues_to_the_uninterrupted_result(zoo, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run(["--zoo", str(zoo), "--out", str(a), "--max-steps", "4", "--save-every", "2", *TINY])
    run(["--zoo", str(zoo), "--out", str(b), "--max-steps", "4", "--save-every", "2", *TINY])
    shutil.rmtree(b / "state" / "step-4")
    (b / "model.safetensors").unlink()
    saved = stamps(b / "state" / "step-2")
    res = run(
        ["--zoo", str(zoo), "--out", str(b), "--max-steps", "4", "--save-every", "2", "--resume", *TINY]
    )
    # it continued at step 2 rather than retraining from step 0 (which would reach the same weights):
    # the progress bar starts at 2/4, step 2's checkpoint is not written again, step 4's is
    shown = [int(n) for n in re.findall(r"\| *(\d+)/4 \[", res.stderr)]
    assert shown and shown[0] == 2 and min(shown) == 2, res.stderr[-2000:]
    assert stamps(b / "state" / "step-2") == saved
    assert (b / "state" / "step-4").is_dir()
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert (wa[k] - wb[k]).abs().max() <= 1e-6, k
    assert json.loads((b / "config.json").read_text())["train_steps"] == 4


def test_function_space_term_trains_and_is_recorded(zoo, tmp_path):
    from gpt_params.export import load_export

    out = tmp_path / "out"
    res = run(
        ["--zoo", str(zoo), "--out", str(out), "--max-steps", "2", "--output-weight", "0.5",
         "--output-probes", "32", *TINY]
    )  # fmt: skip
    assert "out=" in res.stderr  # the progress bar shows the term
    train = load_export(out).meta["train"]
    assert train["output_weight"] == 0.5 and train["output_probes"] == 32


def test_bad_zoo_is_a_one_line_error(tmp_path):
    res = run_script(SCRIPT, "--zoo", tmp_path / "none.h5")
    assert res.returncode != 0 and "none.h5" in res.stderr and res.stderr.strip().count("\n") == 0


def test_bad_pair_option_is_a_one_line_error(zoo, tmp_path):
    res = run_script(SCRIPT, "--zoo", zoo, "--out", tmp_path / "m", "--late-bias", "-1", *TINY)
    assert res.returncode != 0 and res.stderr.strip().count("\n") == 0
    assert "--late-bias must be positive" in res.stderr and "-1" in res.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--width", "50", "--heads", "4"], "width 50 is not divisible by 4 heads"),
        (["--depth", "-2"], "--depth -2; expected a positive integer"),
        (["--edge-width", "-1"], "--edge-width -1; expected a positive integer"),
        (["--tokenizer", "pixel"], "--tokenizer 'pixel'; expected neuron, chunk or role"),
        (["--output-weight", "-1"], "--output-weight -1.0 / --output-probes 256; expected a weight >= 0"),
        (["--t-power", "0"], "--t-power 0.0; expected a positive power"),
        (["--output-schedule", "late"], "--output-schedule 'late'; expected signal or flat"),
        (["--message-norm", "max"], "--message-norm 'max'; expected mean or sqrt"),
        (["--edge-rank", "-1"], "--edge-rank -1; expected 0"),
        (["--batch-units", "-1"], "--batch-units -1; expected caps >= 0"),
        (["--member-power", "nan"], "--member-power nan; expected a finite power"),
        (["--mixed-precision", "fp8"], "--mixed-precision 'fp8'; expected no, fp16, bf16 or auto"),
        (
            ["--step-log", "/nonexistent-dir/steps.jsonl"],
            "--step-log /nonexistent-dir/steps.jsonl: no directory",
        ),
        (
            ["--output-weight", "1", "--output-probes", "100000"],
            "--output-probes 100000: 100000 probe inputs",
        ),
    ],
)
def test_bad_model_or_loss_option_is_a_one_line_error(zoo, tmp_path, flags, message):
    res = run_script(SCRIPT, "--zoo", zoo, "--out", tmp_path / "m", *TINY, *flags)
    assert res.returncode != 0 and res.stderr.strip().count("\n") == 0
    assert message in res.stderr
    assert not (tmp_path / "m").exists()


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_trains_on_cuda_and_samples_there(zoo, tmp_path, precision):
    import torch

    from gpt_params.optimizer import LearnedOptimizer

    out = tmp_path / "run"
    res = run(
        ["--zoo", str(zoo), "--out", str(out), "--max-steps", "3", "--mixed-precision", precision, *TINY]
    )
    assert "cuda" in run_device_probe(), res.stdout
    opt = LearnedOptimizer.from_pretrained(out, device="cuda")
    assert opt.device.type == "cuda"
    theta = torch.stack([opt.task.flatten(opt.task.build(s)) for s in range(2)])
    new = opt.step(theta, opt.best_prompt, current_loss=2.3, generator=torch.Generator().manual_seed(0))
    assert new.device == theta.device and torch.isfinite(new).all()


def run_device_probe() -> str:
    res = subprocess.run(
        [sys.executable, "-c", "from accelerate import Accelerator; print(Accelerator().device)"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return res.stdout


def test_a_family_member_zoo_trains_exports_and_steps_that_member(tmp_path):
    import torch

    from gpt_params.optimizer import LearnedOptimizer
    from gpt_params.tasks import get_task

    zoo = tmp_path / "member.h5"
    cfg = HarvestConfig(
        task="digits-mlp", runs=8, ckpts_per_run=4, cohort_size=8, epochs=1, hidden="8,4", out=str(zoo)
    )
    harvest(cfg)
    out = tmp_path / "run"
    run(["--zoo", str(zoo), "--out", str(out), "--max-steps", "1", *TINY])
    opt = LearnedOptimizer.from_pretrained(out)
    member = get_task("digits-mlp", hidden=(8, 4))
    assert opt.exported.meta["task_options"] == {"hidden": [8, 4]}
    assert opt.task.label == member.label and opt.task.layout == member.layout
    net = member.build(0)
    stepped = opt.step(net, opt.best_prompt, generator=torch.Generator().manual_seed(0))
    assert [p.shape for p in stepped.parameters()] == [p.shape for p in net.parameters()]


def test_a_probe_gradient_family_model_trains_and_steps_members_with_and_without_guidance(tmp_path):
    import torch

    from gpt_params.export import load_export
    from gpt_params.optimizer import LearnedOptimizer
    from gpt_params.tasks import get_task

    zoo = harvest_mixed(tmp_path / "mixed.h5", runs=8, ckpts_per_run=3, cohort_size=4)
    out = tmp_path / "run"
    run(["--zoo", str(zoo), "--out", str(out), "--max-steps", "2", "--grad-probes", "16", *TINY[:-4]])
    exp = load_export(out)
    assert exp.model.config.grad_probes == 16
    member = get_task("digits-mlp", hidden=(3, 4))
    net = member.build(0)
    for guidance in (1.0, 2.0):  # guidance doubles the batch the gradient goes with
        opt = LearnedOptimizer(exp, member)
        stepped = opt.step(
            net, opt.best_prompt, guidance_scale=guidance, generator=torch.Generator().manual_seed(0)
        )
        assert [p.shape for p in stepped.parameters()] == [p.shape for p in net.parameters()]
    for flag, message in [("-1", "expected 0 (none)"), ("100000", "probe examples asked for")]:
        bad = run_script(
            SCRIPT, "--zoo", zoo, "--out", tmp_path / "x", "--grad-probes", flag, "--max-steps", "1"
        )
        assert bad.returncode == 1 and message in bad.stderr, bad.stderr


def test_a_mixed_zoo_trains_one_family_model_that_steps_any_member(tmp_path):
    import torch

    from gpt_params.export import load_export
    from gpt_params.optimizer import LearnedOptimizer
    from gpt_params.tasks import get_task
    from gpt_params.zoo_reader import Zoo

    zoo = harvest_mixed(tmp_path / "mixed.h5", runs=12, ckpts_per_run=4, cohort_size=4)
    out = tmp_path / "run"
    res = run(
        ["--zoo", str(zoo), "--out", str(out), "--max-steps", "2", "--eval-every", "2", "--output-weight", "1",
         "--output-probes", "8", "--step-log", str(tmp_path / "steps.jsonl"), *TINY[:-4]]
    )  # fmt: skip
    assert "out=" in res.stderr  # the function-space term, per batch's member
    steps = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    members = {tuple(o["hidden"]) for o in Zoo(zoo).member_options}
    assert len(steps) == 2 and all(tuple(s["hidden"]) in members and s["pairs"] >= 1 for s in steps)
    assert all(0 <= s["data_s"] <= s["step_s"] for s in steps)
    exp = load_export(out)
    assert exp.model.family is not None and exp.meta["family"][0] == "in_weight" and "layout" not in exp.meta
    z = Zoo(zoo)
    held = [e["task_options"] for e in exp.meta["member_best_prompts"]]  # a best prompt per member held
    assert held == [o for m, o in enumerate(z.member_options) if len(z.runs_of_member(m, "train"))]
    for hidden in [(3,), (7, 5)]:
        member = get_task("digits-mlp", hidden=hidden)
        net = member.build(0)
        stepped = LearnedOptimizer(exp, member).step(
            net, exp.meta["best_prompt"], generator=torch.Generator()
        )
        assert [p.shape for p in stepped.parameters()] == [p.shape for p in net.parameters()]
    bad = run_script(
        SCRIPT, "--zoo", zoo, "--out", tmp_path / "x", "--tokenizer", "neuron", "--max-steps", "1"
    )
    assert bad.returncode == 1 and "uses the role tokenizer" in bad.stderr
