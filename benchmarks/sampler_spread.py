"""How much of a difference between sampler settings is the sampler's own noise? One step from the
same unseen inits, prompted for the best metric, under several sampler seeds per setting.

    python benchmarks/sampler_spread.py --model mnist-mlp-loss --zoo data/mnist-mlp-adam5k.h5 --split val \
        --guidance 1 1.5 2 --seeds 5 --nets 64

For each (model, guidance, DDIM steps) and each of ``--seeds`` sampler seeds: the median over
``--nets`` networks of the validation and test loss and error of the one step (supervised,
loss-conditioned models). Reports per setting the mean and standard deviation of those medians over
the seeds; the validation loss is the one to choose by, the test columns are for reference. Writes a
JSON report and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from gpt_params.errors import GptParamsError
from gpt_params.optimizer import LearnedOptimizer
from gpt_params.scripting import fail, utc_now
from gpt_params.zoo_reader import Zoo

COLUMNS = ("val_loss", "test_loss", "test_error")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="+", required=True, help="export directories or shipped model names")
    p.add_argument("--zoo", required=True, help="zoo whose --split runs give the inits")
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--nets", type=int, default=64)
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    p.add_argument("--sampler-steps", type=int, nargs="+", default=[5])
    p.add_argument("--seeds", type=int, default=5, help="sampler seeds 0 .. N-1 per setting")
    p.add_argument("--out", default="data/benchmarks/sampler_spread.json")
    a = p.parse_args()
    if a.seeds < 2 or a.nets < 1:
        raise fail(f"--seeds {a.seeds} / --nets {a.nets}; expected >= 2 and >= 1")
    try:
        zoo = Zoo(a.zoo)
        rows = zoo.unseen_runs(a.nets, a.split)
        opts = {m: LearnedOptimizer.from_pretrained(m) for m in a.model}
        for opt in opts.values():
            zoo.require_task(opt.task)
    except GptParamsError as e:
        raise fail(str(e)) from None
    theta0 = torch.stack([torch.from_numpy(zoo.checkpoint(int(r), 0)) for r in rows])  # (N, D)
    results = []
    for name, opt in opts.items():
        if opt.metric_name != "val_loss":
            raise fail(f"{name!r} is conditioned on {opt.metric_name}; expected a val_loss model")
        for guidance in a.guidance:
            for steps in a.sampler_steps:
                medians = []  # (seeds, 3)
                for seed in range(a.seeds):
                    new = opt.step(
                        theta0, opt.best_prompt, num_inference_steps=steps, guidance_scale=guidance,
                        num_samples=1, generator=torch.Generator().manual_seed(seed),
                    )  # fmt: skip
                    ev = opt.task.evaluate(new, splits=("val", "test"))
                    medians.append([float(np.median(ev[c])) for c in COLUMNS])
                m = np.array(medians)
                results.append(
                    {
                        "model": name,
                        "guidance": guidance,
                        "sampler_steps": steps,
                        "per_seed": {c: m[:, i].tolist() for i, c in enumerate(COLUMNS)},
                        **{f"{c}_mean": float(m[:, i].mean()) for i, c in enumerate(COLUMNS)},
                        **{f"{c}_sd": float(m[:, i].std(ddof=1)) for i, c in enumerate(COLUMNS)},
                    }
                )
    report = {
        "zoo": a.zoo,
        "split": a.split,
        "nets": len(rows),
        "seeds": a.seeds,
        "date": utc_now(),
        "results": results,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(
        f"{len(rows)} {a.split}-split nets, {a.seeds} sampler seeds; median over nets, mean +- sd over seeds"
    )
    print("| model | guidance | DDIM steps | val loss | test loss | test error |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        cells = [f"{r[c + '_mean']:.4f} +- {r[c + '_sd']:.4f}" for c in COLUMNS[:2]]
        cells.append(f"{100 * r['test_error_mean']:.2f}% +- {100 * r['test_error_sd']:.2f}")
        print(f"| {r['model']} | {r['guidance']:g} | {r['sampler_steps']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
