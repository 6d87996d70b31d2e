"""What the scripts in ``eval/`` and ``benchmarks/`` share: the flags that pick a model and the unseen
networks it is scored on, one-line exits, and report timestamps."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from gpt_params.errors import GptParamsError
from gpt_params.evaluate import load_unseen
from gpt_params.optimizer import LearnedOptimizer
from gpt_params.tasks.supervised import parse_hidden
from gpt_params.zoo_reader import Zoo


def fail(message: str) -> SystemExit:
    """``raise fail(...)``: exit 2 with ``<script>: error: <message>`` on one line."""
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    return SystemExit(2)


def add_out_argument(p: argparse.ArgumentParser, filename: str) -> None:
    """``--out``: where the script's JSON report goes (default: :func:`report_path`)."""
    p.add_argument(
        "--out",
        default=None,
        help=f"JSON report (default: <model>/{filename}; runs/<name>/ for a shipped model)",
    )


def report_path(model: str, out: str | None, filename: str) -> Path:
    """Where an evaluation script writes its report: ``out`` if given, else ``filename`` inside the
    export directory ``model``, or, for a shipped model named by its name, inside ``runs/<name>/``
    (never a new ``./<name>/`` directory, which would shadow the shipped model's name)."""
    if out is not None:
        return Path(out)
    if Path(model).is_dir() and (Path(model) / "config.json").exists():
        return Path(model) / filename
    return Path("runs") / Path(model).name / filename


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def add_unseen_arguments(p: argparse.ArgumentParser, nets_help: str, report: str) -> None:
    """``--model``, ``--zoo``, ``--split`` and ``--nets``: which model and which networks it never saw;
    and ``--out``, where the JSON report goes (``report`` its default file name)."""
    p.add_argument("--model", required=True, help="export directory or shipped model name")
    add_out_argument(p, report)
    p.add_argument(
        "--zoo", required=True, help="zoo whose test-split (or --split) runs give the unseen inits"
    )
    p.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="runs whose inits are used: test (scores) or val (to choose settings before scoring)",
    )
    p.add_argument("--nets", type=int, default=32, help=nets_help)
    p.add_argument(
        "--data-dir",
        default=None,
        help="the task's data directory (default: the one the zoo was harvested from)",
    )
    p.add_argument(
        "--hidden",
        default=None,
        help="a family model: the member to evaluate, hidden widths 32 or 64,32 (one a mixed zoo never "
        "held starts from fresh inits; default: the member a single-architecture zoo holds)",
    )


def hidden_or_exit(text: str | None) -> tuple[int, ...] | None:
    """:func:`parse_hidden`, exiting with one line on bad input."""
    try:
        return parse_hidden(text)
    except GptParamsError as e:
        raise fail(str(e)) from None


def unseen_or_exit(
    a: argparse.Namespace, device: str | None = None
) -> tuple[LearnedOptimizer, Zoo, np.ndarray, torch.Tensor]:
    """:func:`gpt_params.evaluate.load_unseen` for the flags of :func:`add_unseen_arguments`; bad input
    (a missing model, a zoo of another task, too few runs) exits with a one-line error."""
    hidden = hidden_or_exit(a.hidden)
    try:
        return load_unseen(a.model, a.zoo, a.nets, a.split, device, a.data_dir, hidden)
    except GptParamsError as e:
        raise fail(str(e)) from None
