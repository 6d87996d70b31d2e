import json
import shutil
import subprocess

import h5py
import numpy as np
import pytest

from gpt_params.cli import main

from .conftest import accelerate_launch, repo_root

TINY = ["--task", "digits-mlp", "--runs", "6", "--cohort-size", "3", "--epochs", "2", "--ckpts-per-run", "5"]


def run(capsys, *argv):
    """``gpt-params argv`` in-process: (exit code, stdout, stderr); argparse's own exits included."""
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(capsys, argv, *expected):
    """The command fails with exit code 2 and its whole stderr is one error line naming ``expected``."""
    code, _, err = run(capsys, *argv)
    assert code == 2 and err.startswith("gpt-params: error") and err.count("\n") == 1, err
    assert err.endswith("\n"), err
    for e in expected:
        assert e in err, err


@pytest.fixture
def zoo(tmp_path, capsys):
    out = tmp_path / "z.h5"
    code, stdout, _ = run(capsys, "harvest", *TINY, "--out", str(out))
    assert code == 0 and "6 runs x 5 checkpoints" in stdout
    return out


def test_help_works_for_every_command():
    for argv in (
        ["--help"],
        ["harvest", "--help"],
        ["zoo", "--help"],
        ["zoo", "info", "--help"],
        ["zoo", "merge", "--help"],
        ["zoo", "relabel", "--help"],
    ):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0


def test_zoo_info_prints_summary_json_and_plot(zoo, tmp_path, capsys):
    code, out, _ = run(capsys, "zoo", "info", str(zoo))
    assert code == 0 and "digits-mlp" in out and "val_loss" in out and "std" in out
    code, out, _ = run(capsys, "zoo", "info", str(zoo), "--json", "--plot", str(tmp_path / "p.png"))
    summary = json.loads(out[: out.rindex("}") + 1])
    assert sum(summary["runs"].values()) == 6
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_zoo_relabel_adds_nothing_to_a_current_zoo_and_refuses_a_merged_one(zoo, tmp_path, capsys):
    before = (tmp_path / "z.h5.parts" / "cohort-000000.h5").stat().st_mtime_ns
    code, out, _ = run(capsys, "zoo", "relabel", str(zoo))
    assert code == 0 and "nothing to add" in out
    assert (tmp_path / "z.h5.parts" / "cohort-000000.h5").stat().st_mtime_ns == before
    assert main(["zoo", "merge", str(zoo), "--out", str(tmp_path / "m.h5")]) == 0
    one_line_error(capsys, ["zoo", "relabel", str(tmp_path / "m.h5")], "self-contained", "m.h5")


def test_bad_inputs_are_one_line_errors(tmp_path, capsys, zoo):
    one_line_error(
        capsys,
        ["harvest", "--task", "mnist-rnn", "--runs", "2", "--out", str(tmp_path / "a.h5")],
        "mnist-rnn",
        "mnist-mlp",
    )
    one_line_error(
        capsys,
        ["harvest", "--task", "digits-mlp", "--runs", "0", "--out", str(tmp_path / "a.h5")],
        "--runs",
        "got 0",
    )
    one_line_error(
        capsys,
        [
            "harvest",
            "--task",
            "digits-mlp",
            "--runs",
            "2",
            "--ckpts-per-run",
            "-3",
            "--out",
            str(tmp_path / "a.h5"),
        ],
        "got -3",
    )
    one_line_error(capsys, ["harvest", *TINY, "--out", str(tmp_path / "missing" / "a.h5")], "does not exist")
    one_line_error(
        capsys,
        [
            "harvest",
            "--task",
            "mnist-mlp",
            "--runs",
            "2",
            "--data-dir",
            str(tmp_path / "nowhere"),
            "--out",
            str(tmp_path / "a.h5"),
        ],
        "nowhere",
        "does not exist",
    )
    one_line_error(
        capsys, ["harvest", *TINY, "--preset", "ppo", "--out", str(tmp_path / "a.h5")], "'ppo'", "gpt"
    )
    one_line_error(
        capsys,
        ["harvest", *TINY, "--data-dir", str(tmp_path), "--out", str(tmp_path / "a.h5")],
        "no --data-dir",
    )
    one_line_error(capsys, ["zoo", "info", str(tmp_path / "nope.h5")], "nope.h5", "does not exist")
    (tmp_path / "junk.h5").write_text("not hdf5")
    one_line_error(capsys, ["zoo", "info", str(tmp_path / "junk.h5")], "junk.h5", "not a readable HDF5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    one_line_error(capsys, ["zoo", "info", str(tmp_path / "other.h5")], "not a gpt-params zoo")
    one_line_error(
        capsys,
        ["zoo", "info", str(zoo), "--plot", str(tmp_path / "q.png"), "--metric", "accuracy"],
        "accuracy",
    )
    assert not (tmp_path / "a.h5").exists()


def test_existing_zoo_of_another_task_or_schema_is_refused_untouched(tmp_path, capsys, zoo):
    before = zoo.read_bytes()
    one_line_error(
        capsys, ["harvest", "--task", "cartpole", "--runs", "2", "--out", str(zoo)], "holds task 'digits-mlp'"
    )
    one_line_error(
        capsys, ["harvest", *TINY[:-2], "--ckpts-per-run", "4", "--out", str(zoo)], "different config"
    )
    assert zoo.read_bytes() == before
    old = tmp_path / "old.h5"
    shutil.copy(zoo, old)
    with h5py.File(old, "a") as f:
        f.attrs["schema_version"] = 99
    one_line_error(capsys, ["zoo", "info", str(old)], "schema version 99", "expected 1")


def test_console_script_exits_nonzero_with_one_line(tmp_path):
    exe = shutil.which("gpt-params") or str(repo_root() / ".venv" / "bin" / "gpt-params")
    res = subprocess.run([exe, "zoo", "info", str(tmp_path / "none.h5")], capture_output=True, text=True)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.startswith("gpt-params: error") and res.stderr.count("\n") == 1, res.stderr
    assert "none.h5" in res.stderr


@pytest.mark.slow
def test_accelerate_launch_writes_shards_that_merge(tmp_path):
    out = tmp_path / "acc.h5"
    script = str(repo_root() / "checkpoint_zoo" / "harvest.py")
    cmd = accelerate_launch("--multi_gpu", "--num_processes", "2", script, *TINY, "--out", str(out))
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    shards = sorted(tmp_path.glob("acc.shard*of2.h5"))
    assert len(shards) == 2
    assert main(["zoo", "merge", *map(str, shards), "--out", str(out)]) == 0
    with h5py.File(out, "r") as f:
        assert sorted(f["runs/run_id"][()]) == list(range(6))
