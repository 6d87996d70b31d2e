"""The networks an evaluation script runs on: the model/zoo/split flags and loading the unseen inits."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from gpt_params.errors import GptParamsError
from gpt_params.optimizer import LearnedOptimizer
from gpt_params.zoo_reader import Zoo


def add_unseen_arguments(p: argparse.ArgumentParser, nets_help: str) -> None:
    """``--model``, ``--zoo``, ``--split`` and ``--nets``: which model and which networks it never saw."""
    p.add_argument("--model", required=True, help="export directory or shipped model name")
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


def load_unseen(
    a: argparse.Namespace, device: str | None = None
) -> tuple[LearnedOptimizer, Zoo, np.ndarray, torch.Tensor]:
    """The model, the zoo, the ``--nets`` unseen ``--split`` rows and their inits ``(N, D)``.

    Bad input (a missing model, a zoo of another task, too few runs) exits with a one-line error."""
    prog = Path(sys.argv[0]).name
    try:
        opt = LearnedOptimizer.from_pretrained(a.model, device=device)
        zoo = Zoo(a.zoo)
        zoo.require_task(opt.task.name)
        rows = zoo.unseen_runs(a.nets, a.split)
    except GptParamsError as e:
        raise SystemExit(f"{prog}: error: {e}") from None
    theta0 = torch.stack([torch.from_numpy(zoo.checkpoint(int(r), 0)) for r in rows])  # (N, D)
    return opt, zoo, rows, theta0
