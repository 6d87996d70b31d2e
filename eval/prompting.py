"""G.pt's prompting evaluation of an exported model on test-split runs it never saw.

    python eval/prompting.py --model runs/mnist-mlp-loss --zoo data/mnist-mlp-gpt5k.h5
    python eval/prompting.py --model runs/mnist-mlp-loss --zoo data/mnist-mlp-gpt5k.h5 \\
        --samplers ddim:5 ddim:10 ddim:20 ddim:50 ddpm:1000 --guidance 1 2 3 --recursive 3

For each of ``--nets`` random initialisations of test-split runs and each sampler and guidance scale:
G.pt's prompt alignment (``--prompts`` prompts evenly between the model's best prompt and the net's
starting metric; R^2 of achieved vs prompted per net, averaged), and one step (then ``--recursive``
steps, each fed its own output and measured metric) prompted for the best metric. ``--samples K``
draws K candidates per prompt and keeps the one the model's learned critic predicts nearest the
prompt (``train/critic.py``; no rollouts or data). Supervised
results are measured on the test images although the model was conditioned on validation loss.
``--fresh-episodes N`` (RL) scores returns on N held-out episodes instead of the zoo's own.
``--init-scale 2`` (say) scales those inits, an out-of-distribution test of inits the zoo never had.
``--split val`` takes the inits from val-split runs instead: choose settings there, score on test.
Writes a JSON report and a desired-vs-observed plot (PNG) next to the model unless told otherwise.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

from gpt_params.diffusion import SAMPLERS
from gpt_params.errors import GptParamsError
from gpt_params.evaluate import prompt_alignment
from gpt_params.plots import desired_vs_observed
from gpt_params.scripting import add_unseen_arguments, fail, report_path, unseen_or_exit, utc_now


def parse_sampler(spec: str) -> tuple[str, int]:
    name, _, steps = spec.partition(":")
    if name not in SAMPLERS or not steps.isdigit() or int(steps) < 1:
        raise fail(f"--samplers {spec!r}; expected ddim:N or ddpm:N, e.g. ddim:10")
    return name, int(steps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_unseen_arguments(p, "unseen networks (G.pt: at least 32)", report="prompting.json")
    p.add_argument("--prompts", type=int, default=20, help="prompts per network")
    p.add_argument("--samplers", nargs="+", default=["ddim:5"], help="sampler:steps, e.g. ddim:5 ddpm:1000")
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0], help="classifier-free guidance scales")
    p.add_argument(
        "--samples",
        type=int,
        nargs="+",
        default=[1],
        help="candidates per prompt; above 1 the model's critic keeps the one it predicts nearest the prompt",
    )
    p.add_argument(
        "--fresh-episodes",
        type=int,
        default=0,
        help="RL: score every return on this many held-out sampled-action episodes instead of the zoo's own",
    )
    p.add_argument("--recursive", type=int, default=1, help="recursive steps of the best-prompt update")
    p.add_argument(
        "--init-scale",
        type=float,
        default=1.0,
        help="multiply the unseen inits by this (out-of-distribution inits when != 1)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="torch device for the model (default: cpu)")
    p.add_argument(
        "--achieved-on",
        choices=["test", "val"],
        default="test",
        help="split whose metric counts as achieved (supervised; default test, the honest one; val is the conditioning split)",
    )
    p.add_argument("--plot", default=None, help="PNG plot (default: next to the report)")
    a = p.parse_args()
    samplers = [parse_sampler(s) for s in a.samplers]
    if min(a.samples) < 1:
        raise fail(f"--samples {min(a.samples)}; expected positive integers")
    if a.fresh_episodes < 0:
        raise fail(f"--fresh-episodes {a.fresh_episodes}; expected a positive number of episodes")

    opt, zoo, rows, theta0 = unseen_or_exit(a, device=a.device)
    task, metric = opt.task, opt.metric_name
    if a.fresh_episodes:
        try:
            task = task.held_out(a.fresh_episodes)
        except GptParamsError as e:
            raise fail(f"--fresh-episodes {a.fresh_episodes}: {e}") from None
    if max(a.samples) > 1 and not opt.has_critic:
        raise fail(
            f"--samples {max(a.samples)} needs a critic and {a.model} has none; fit one with train/critic.py"
        )
    theta0 = theta0 * a.init_scale
    achieved = metric if a.achieved_on == "val" else task.held_out_metric(metric)
    start = torch.as_tensor(task.evaluate_only(theta0, (metric,))[metric], dtype=torch.float32)  # (N,)
    report = {
        "model": str(a.model),
        "zoo": a.zoo,
        "nets": len(theta0),
        "split": a.split,
        "prompts": a.prompts,
        "metric": metric,
        "achieved_metric": achieved,
        "best_prompt": opt.best_prompt,
        "date": utc_now(),
        "device": str(opt.device),
        "start_median": float(start.median()),
        "init_scale": a.init_scale,
        "fresh_episodes": a.fresh_episodes,
        "results": [],
    }
    curves = None
    for (sampler, steps), g, k in itertools.product(samplers, a.guidance, a.samples):
        # above one sample, the model's critic keeps a candidate: neither data nor rollouts are used
        kw = {"num_inference_steps": steps, "guidance_scale": g, "sampler": sampler, "num_samples": k}
        kw["combine"] = "critic"
        t0 = time.perf_counter()
        align = prompt_alignment(
            opt, theta0, n_prompts=a.prompts, achieved_metric=achieved, task=task,
            generator=torch.Generator().manual_seed(a.seed), **kw,
        )  # fmt: skip
        t_align = time.perf_counter() - t0
        if curves is None:
            curves = (
                align,
                f"{sampler}:{steps}, guidance {g}" + (f", critic's pick of {k}" if k > 1 else ""),
            )
        row = {
            "sampler": sampler,
            "steps": steps,
            "guidance": g,
            "samples": k,
            "r2": align["r2"],
            "nets_excluded": align["nets_excluded"],
            "alignment_seconds": t_align,
        }
        for r in range(1, a.recursive + 1):  # LearnedOptimizer.optimize's r steps, from the same draws
            t0 = time.perf_counter()
            theta = opt.optimize(
                theta0, opt.best_prompt, steps=r, current_loss=start,
                generator=torch.Generator().manual_seed(a.seed + 1), **kw,
            )  # fmt: skip
            seconds = time.perf_counter() - t0
            m = task.evaluate(theta.cpu())
            key = "one_step" if r == 1 else f"step_{r}"
            row[f"{key}_seconds_per_net"] = seconds / len(theta0)
            for name, v in m.items():
                row[f"{key}_{name}_median"] = float(np.median(v))
        row["r2_per_net"] = align["r2_per_net"]
        report["results"].append(row)
        print(json.dumps({k_: v for k_, v in row.items() if k_ != "r2_per_net"}))
    out = report_path(a.model, a.out, "prompting.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    plot = Path(a.plot or out.with_suffix(".png"))
    fig = desired_vs_observed(curves[0], f"one step, {curves[1]}")
    fig.savefig(plot, dpi=120)
    print(f"report: {out}\nplot: {plot}")


if __name__ == "__main__":
    main()
