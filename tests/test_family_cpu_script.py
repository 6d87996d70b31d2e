"""benchmarks/family_cpu.sh end to end with tiny settings: harvest, timing, training, per-member eval."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import repo_root


@pytest.mark.slow
@pytest.mark.parametrize("task", ["mnist-mlp", "digits-mlp"])
def test_family_script_harvests_times_trains_and_scores_members(tmp_path, task):
    env = {
        "TASK": task,
        **os.environ,
        "RUNS": "32", "COHORT": "8", "EPOCHS": "1", "CKPTS": "3", "HARVEST_MINUTES": "5", "PRESET": "tiny", "MINUTES": "0.05",
        "TIMING_STEPS": "2", "NETS": "1", "ADAM_STEPS": "20", "WIDTHS": "4 10", "SHAPES": "8,4",
        "OUTPUT_WEIGHT": "1", "EVAL_EVERY": "1", "WIDTH": "48", "DEPTH": "1",
        "OUT": str(tmp_path / "out"), "DATA": str(tmp_path / "data"), "PYTHON": sys.executable,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }  # fmt: skip
    res = subprocess.run(
        ["bash", str(repo_root() / "benchmarks" / "family_cpu.sh")], env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    for zoo in (f"{task}-family", f"{task}-h64"):
        assert summary["timing"][zoo]["params_per_s"] > 0
    assert summary["model"]["train_steps"] >= 1
    assert (tmp_path / "data" / f"{task}-family.h5").exists()
    assert summary["family"]["specialist"] == f"{task}-loss"
    model_cfg = json.loads((tmp_path / "out" / "model" / "config.json").read_text())["model"]
    assert (model_cfg["width"], model_cfg["depth"]) == (48, 1)  # WIDTH / DEPTH reach the trainer
    train_cfg = json.loads((tmp_path / "out" / "model" / "config.json").read_text())["train"]
    assert train_cfg["mixed_precision"] in ("bf16", "no") and train_cfg["edge_messages"]  # auto, resolved
    members = {tuple(r["hidden"]) for r in summary["family"]["rows"] if r["model"] == "family"}
    assert members == {(4,), (10,), (8, 4)}
    # per-member validation during training: R^2 of the narrowest, middle and widest member with val runs
    log = (tmp_path / "out" / "train.log").read_text()
    assert "val prompt alignment R^2" in log and "hidden=" in log
