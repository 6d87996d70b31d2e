"""Prompt alignment and best one-step results of an exported model on test-split runs it never saw.

    python benchmarks/prompt_alignment.py --model runs/mnist-mlp-loss --zoo data/mnist-mlp.h5 --nets 32
    python benchmarks/prompt_alignment.py --model runs/mnist-mlp-loss --zoo data/mnist-mlp.h5 --guidance 1 3 --steps 10

For each of ``--nets`` random initialisations of test-split runs: G.pt's prompt alignment (20
prompts evenly between the model's best prompt and the net's starting metric, R^2 of achieved vs
prompted, averaged over nets), and one step prompted for the best metric, with each guidance scale.
Supervised achieved values are measured on the test images; the model was conditioned on validation
loss. Writes a JSON report next to the model (``<model>/alignment.json``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from gpt_params.evaluate import one_step, prompt_alignment
from gpt_params.export import load_export
from gpt_params.tasks import get_task
from gpt_params.zoo_reader import Zoo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="export directory")
    p.add_argument("--zoo", required=True, help="zoo whose test-split runs give the unseen inits")
    p.add_argument("--nets", type=int, default=32)
    p.add_argument("--prompts", type=int, default=20)
    p.add_argument("--steps", type=int, default=10, help="sampler steps")
    p.add_argument("--sampler", default="ddim", choices=["ddim", "ddpm"])
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON report (default: <model>/alignment.json)")
    a = p.parse_args()

    torch.manual_seed(a.seed)
    exp = load_export(a.model)
    zoo = Zoo(a.zoo)
    task = get_task(exp.meta["task"])
    rows = zoo.runs("test")[: a.nets]
    theta0 = torch.stack([torch.from_numpy(zoo.checkpoint(int(r), 0)) for r in rows])  # (N, D) unseen inits
    achieved = (
        "test_loss" if exp.meta["metric"].endswith("loss") else exp.meta["metric"].replace("val_", "test_")
    )
    if task.kind == "rl":
        achieved = exp.meta["metric"]
    report = {
        "model": a.model,
        "zoo": a.zoo,
        "nets": len(rows),
        "steps": a.steps,
        "sampler": a.sampler,
        "results": [],
    }
    for g in a.guidance:
        t0 = time.perf_counter()
        align = prompt_alignment(
            exp,
            task,
            theta0,
            n_prompts=a.prompts,
            achieved_metric=achieved,
            num_inference_steps=a.steps,
            guidance_scale=g,
            sampler=a.sampler,
            generator=torch.Generator().manual_seed(a.seed),
        )
        t_align = time.perf_counter() - t0
        start = torch.as_tensor(task.evaluate(theta0)[exp.meta["metric"]])
        t0 = time.perf_counter()
        best = one_step(
            exp,
            theta0,
            start,
            torch.full((len(rows),), exp.meta["best_prompt"]),
            num_inference_steps=a.steps,
            guidance_scale=g,
            sampler=a.sampler,
            generator=torch.Generator().manual_seed(a.seed + 1),
        )
        t_step = time.perf_counter() - t0
        m = task.evaluate(best)
        row = {
            "guidance": g,
            "r2": align["r2"],
            "alignment_seconds": t_align,
            "step_seconds": t_step,
            "best_prompt": exp.meta["best_prompt"],
        }
        for k, v in m.items():
            row[f"one_step_{k}_median"] = float(np.median(v))
        report["results"].append(row)
        print(json.dumps(row))
    out = Path(a.out or Path(a.model) / "alignment.json")
    out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
