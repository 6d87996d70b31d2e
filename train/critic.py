"""Fit a learned critic of a model's metric on its zoo and store it in the model's export.

    python train/critic.py --model runs/cartpole-ppo-tiny --zoo data/cartpole-ppo.h5
    python train/critic.py --model runs/X --zoo data/Z.h5 --probes 256 --epochs 20 --out runs/X-critic

The critic predicts the model's conditioning metric from a network's outputs on fixed probe inputs
(``gpt_params/critic.py``), fitted on the zoo's train-split runs and scored on its val-split runs. With
it, ``opt.step(..., num_samples=k, combine="critic")`` and ``eval/prompting.py --samples k`` keep the
candidate update whose predicted metric is nearest the prompt, without rollouts or data. Rewrites the
export in place (or writes a copy to ``--out``); prints the fit's report as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from gpt_params.config import add_arguments, from_args, opt
from gpt_params.critic import CriticConfig, fit_critic
from gpt_params.errors import GptParamsError
from gpt_params.export import export_task, load_export, save_export
from gpt_params.zoo_reader import Zoo


@dataclass
class CriticScriptConfig(CriticConfig):
    model: str = opt("", "export directory of the model the critic serves (required)")
    zoo: str = opt("", "zoo the model was trained on (required)")
    out: str = opt("", "write the export with its critic here instead of rewriting --model")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, CriticScriptConfig)
    try:
        cfg = from_args(CriticScriptConfig, parser.parse_args())
    except ValueError as e:
        sys.exit(f"critic.py: error: {e}")
    if not cfg.model or not cfg.zoo:
        sys.exit("critic.py: error: --model and --zoo are required")
    try:
        exp = load_export(cfg.model)
        zoo = Zoo(cfg.zoo)
        task = zoo.make_task()
        zoo.require_task(export_task(exp.meta))
    except GptParamsError as e:
        sys.exit(f"critic.py: error: {e}")
    metric = exp.meta["metric"]
    bar = tqdm(total=cfg.epochs, desc="critic", unit="epoch")

    def progress(epoch: int, stats: dict) -> None:
        bar.update(1)
        bar.set_postfix(val_r2=f"{stats['val_r2']:.4f}", val_rms=f"{stats['val_rms']:.4g}")

    try:
        critic, report = fit_critic(zoo, task, metric, cfg, progress)
    except (ValueError, NotImplementedError) as e:
        sys.exit(f"critic.py: error: {e}")
    bar.close()
    out = Path(cfg.out or cfg.model)
    dtype = getattr(torch, exp.meta.get("weights_dtype", "float32"))
    save_export(out, exp.model, exp.normalizer, exp.clamp, exp.diffusion, exp.meta, dtype, critic)
    print(json.dumps({**report, "export": str(out)}))


if __name__ == "__main__":
    main()
