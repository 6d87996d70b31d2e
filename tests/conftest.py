import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "2")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def write_idx(path: Path, arr: np.ndarray) -> None:
    """Write a uint8 array in MNIST's IDX format (magic: 0, 0, dtype 0x08, ndim; big-endian dims)."""
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 0x08, arr.ndim))
        f.write(struct.pack(f">{arr.ndim}I", *arr.shape))
        f.write(arr.astype(np.uint8).tobytes())


@pytest.fixture
def mnist_dir(tmp_path: Path) -> Path:
    """A tiny MNIST in torchvision's raw layout: 240 train and 60 test random digits."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 240), ("t10k", 60)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    return tmp_path


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def accelerate_launch(*flags: str) -> list[str]:
    """``accelerate launch`` with every default it would otherwise warn about set explicitly."""
    import shutil

    exe = shutil.which("accelerate") or str(repo_root() / ".venv" / "bin" / "accelerate")
    return [exe, "launch", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *flags]


def tiny_export(out, task_name, metric, metric_range, best, std=0.02):
    """A tiny-preset model export whose zero-initialised decoders got random weights, so it changes its input."""
    from gpt_params.diffusion import DiffusionConfig
    from gpt_params.export import save_export
    from gpt_params.model import PRESETS, ParamDiffusionTransformer
    from gpt_params.normalize import ParamNormalizer
    from gpt_params.tasks import get_task

    task = get_task(task_name)
    torch.manual_seed(0)
    model = ParamDiffusionTransformer(task.layout, task.symmetries, PRESETS["tiny"])
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(std=std)
    theta = torch.stack([task.flatten(task.build(s)) for s in range(8)])
    norm = ParamNormalizer(theta.mean(0), theta.std(0).clamp(min=1e-3))
    meta = {
        "task": task_name,
        "layout": task.layout.to_json(),
        "metric": metric,
        "best_prompt": best,
        "metric_range": metric_range,
    }
    save_export(out, model, norm, None, DiffusionConfig(), meta)
    return out


def tiny_denoiser(task_name, std=0.02):
    """``(model, D)``: a tiny-preset denoiser for ``task_name`` whose zero-initialised weights got
    random values, so its prediction depends on every input."""
    from gpt_params.model import PRESETS, ParamDiffusionTransformer
    from gpt_params.tasks import get_task

    task = get_task(task_name)
    torch.manual_seed(0)
    model = ParamDiffusionTransformer(task.layout, task.symmetries, PRESETS["tiny"]).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(std=std)
    return model, task.layout.numel


def part_stamps(zoo_path) -> dict[str, tuple[int, int, str]]:
    """``{part name: (inode, mtime_ns, sha256)}`` of every committed part of a harvest's zoo
    (``<zoo>.parts/cohort-*.h5``): what retraining and rewriting a finished cohort changes."""
    import hashlib

    parts = Path(str(zoo_path) + ".parts")
    out = {}
    for p in sorted(parts.glob("cohort-*.h5")):
        st = p.stat()
        out[p.name] = (st.st_ino, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def run_script(path, *args):
    """A script of ``eval/``, ``train/`` or ``benchmarks/`` run in this process, as ``subprocess.run``
    would report it (``returncode``, ``stdout``, ``stderr``): for error paths, where a fresh interpreter
    adds nothing but seconds of importing torch. ``sys.exit("message")`` counts as the interpreter
    would: the message on stderr, status 1."""
    import contextlib
    import io
    import runpy
    import sys
    from types import SimpleNamespace

    out, err, argv, code = io.StringIO(), io.StringIO(), sys.argv, 0
    sys.argv = [str(path), *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(str(path), run_name="__main__")
    except SystemExit as e:
        if isinstance(e.code, str):
            err.write(e.code + "\n")
            code = 1
        else:
            code = e.code or 0
    finally:
        sys.argv = argv
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


CIFAR_ARCHIVE = repo_root().parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


def cifar_jpegs(root: Path, train_glob: str, test_glob: str) -> Path:
    """``root`` holding the real CIFAR-10 JPEGs matching ``train/*/<train_glob>`` and ``test/*/<test_glob>``,
    extracted from the archive beside the checkout; skips the test where the archive is absent."""
    if not CIFAR_ARCHIVE.is_file():
        pytest.skip(f"{CIFAR_ARCHIVE} is not on this machine")
    root.mkdir()
    cmd = ["tar", "-xzf", str(CIFAR_ARCHIVE), "-C", str(root), "--wildcards"]
    subprocess.run([*cmd, f"train/*/{train_glob}", f"test/*/{test_glob}"], check=True)
    return root


def harvest_mixed(path, runs: int, ckpts_per_run: int, cohort_size: int, preset: str = "gpt", **kw):
    """A tiny ``--architectures mixed`` digits-mlp zoo at ``path`` (one-epoch runs of G.pt's recipe unless
    ``preset`` says otherwise, one member per cohort); returns ``path``."""
    from gpt_params.harvest import HarvestConfig, harvest

    cfg = HarvestConfig(
        task="digits-mlp", runs=runs, ckpts_per_run=ckpts_per_run, cohort_size=cohort_size, epochs=1,
        preset=preset, architectures="mixed", out=str(path), **kw,
    )  # fmt: skip
    harvest(cfg)
    return path
