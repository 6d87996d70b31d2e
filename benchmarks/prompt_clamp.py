"""What a prompt beyond the model's reach does, with and without clamping it to the reachable end.

    python benchmarks/prompt_clamp.py --model mnist-mlp-loss --nets 32

For ``--nets`` unseen random inits (``Task.unseen_inits``) and each prompt of ``--prompts``: one
:meth:`LearnedOptimizer.step` with ``clamp_prompt=False`` (the prompt as given) and with the
default ``clamp_prompt=True``, the same sampler draws for both; the median held-out metric of the
outputs (test split for supervised models). Prints a Markdown table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from gpt_params.errors import GptParamsError
from gpt_params.optimizer import LearnedOptimizer
from gpt_params.scripting import fail, utc_now
from gpt_params.tasks.base import BaselineConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mnist-mlp-loss", help="export directory or shipped model name")
    p.add_argument("--nets", type=int, default=32, help="unseen random inits")
    p.add_argument(
        "--prompts", type=float, nargs="+", default=[1.5, 1.0, 0.7, 0.5, 0.4, 0.3, 0.2, 0.0, -1.0, -3.0]
    )
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--out", default="data/benchmarks/prompt_clamp.json")
    a = p.parse_args()
    if a.nets < 1:
        raise fail(f"--nets {a.nets}; expected a positive number")
    try:
        opt = LearnedOptimizer.from_pretrained(a.model)
    except GptParamsError as e:
        raise fail(str(e)) from None
    theta0 = opt.task.unseen_inits(a.nets)  # (N, D)
    current = torch.as_tensor(opt.measure(theta0))
    rows = []
    for prompt in a.prompts:
        row = {"prompt": prompt}
        for clamp in (False, True):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the warning is the point of the change, not news here
                new = opt.step(
                    theta0, prompt, current_loss=current, clamp_prompt=clamp,
                    generator=torch.Generator().manual_seed(a.seed),
                )  # fmt: skip
            name, score = opt.task.score_held_out(new, opt.metric_name, BaselineConfig())
            row["metric"] = name
            row["clamped" if clamp else "as_given"] = float(np.median(score))
            row["sampled_prompt" if clamp else "prompt"] = opt.last_report.prompts[0]
        rows.append(row)
    report = {
        "model": a.model,
        "nets": a.nets,
        "best_prompt": opt.best_prompt,
        "reachable": list(opt.reachable),
        "date": utc_now(),
        "rows": rows,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"{a.model}: best prompt {opt.best_prompt:.4g}, {a.nets} unseen inits, median {rows[0]['metric']}")
    print("| prompt | as given (clamp_prompt=False) | clamped (default) |")
    print("|---:|---:|---:|")
    for r in rows:
        print(f"| {r['prompt']:g} | {r['as_given']:.4f} | {r['clamped']:.4f} |")


if __name__ == "__main__":
    main()
