"""benchmarks/cnn_gpu.sh end to end on the CPU with tiny settings (it is meant for GPU machines)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import cifar_jpegs, repo_root


@pytest.mark.slow
def test_cnn_gpu_script_runs_both_tasks_end_to_end_on_cpu(tmp_path):
    cifar = cifar_jpegs(tmp_path / "cifar", "00[0-1]?.jpg", "000?.jpg")
    env = {
        **os.environ,
        "DEVICE": "cpu", "GPUS": "1", "RUNS": "8", "MNIST_EPOCHS": "1", "CIFAR_EPOCHS": "2", "CKPTS": "3",
        "PRESET": "tiny", "MINUTES": "0.05", "NETS": "1", "ADAM_STEPS": "20", "CIFAR_DIR": str(cifar),
        "OUT": str(tmp_path / "out"), "DATA": str(tmp_path / "data"), "PYTHON": sys.executable,
        "GPT_PARAMS_CACHE": str(tmp_path / "cache"), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }  # fmt: skip
    res = subprocess.run(
        ["bash", str(repo_root() / "benchmarks" / "cnn_gpu.sh")],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    for task in ("mnist-cnn", "cifar10-cnn"):
        assert summary[task]["config"]["train_steps"] >= 1
        assert summary[task]["prompting"]["results"] and summary[task]["vs_gradient"]["gpt"]
    harvest_cfg = json.loads(
        subprocess.run(
            [shutil.which("gpt-params") or "gpt-params", "zoo", "info", str(tmp_path / "data" / "cifar10-cnn-gpt-e2.h5"), "--json"],
            capture_output=True, text=True, env=env, check=True,
        ).stdout
    )["harvest_config"]  # fmt: skip
    assert harvest_cfg["augment"] is True and harvest_cfg["data_dir"] == str(cifar)
