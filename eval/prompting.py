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
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from gpt_params.evaluate import achieved_metric, one_step_critic, prompt_alignment
from gpt_params.plots import desired_vs_observed

from unseen import add_unseen_arguments, load_unseen  # eval/unseen.py


def parse_sampler(spec: str) -> tuple[str, int]:
    name, _, steps = spec.partition(":")
    if name not in ("ddim", "ddpm") or not steps.isdigit() or int(steps) < 1:
        raise SystemExit(f"prompting.py: error: --samplers {spec!r}; expected ddim:N or ddpm:N, e.g. ddim:10")
    return name, int(steps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_unseen_arguments(p, "unseen networks (G.pt: at least 32)")
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
    p.add_argument("--out", default=None, help="JSON report (default: <model>/prompting.json)")
    p.add_argument("--plot", default=None, help="PNG plot (default: next to the report)")
    a = p.parse_args()
    samplers = [parse_sampler(s) for s in a.samplers]
    if min(a.samples) < 1:
        raise SystemExit(f"prompting.py: error: --samples {min(a.samples)}; expected positive integers")

    opt, zoo, rows, theta0 = load_unseen(a, device=a.device)
    exp, task = opt.exported, opt.task
    if a.fresh_episodes:
        if not hasattr(task, "held_out") or a.fresh_episodes < 1:
            raise SystemExit(
                f"prompting.py: error: --fresh-episodes {a.fresh_episodes}; expected a positive number "
                f"of episodes for an RL model ({a.model} is {task.name!r})"
            )
        task = task.held_out(a.fresh_episodes)
    if max(a.samples) > 1 and exp.critic is None:
        raise SystemExit(
            f"prompting.py: error: --samples {max(a.samples)} needs a critic and {a.model} has none; "
            "fit one with train/critic.py"
        )
    theta0 = theta0 * a.init_scale
    achieved = achieved_metric(exp.meta["metric"], task.kind)
    if task.kind == "supervised" and a.achieved_on == "val":
        achieved = achieved.replace("test_", "val_")
    start = torch.as_tensor(task.evaluate(theta0)[exp.meta["metric"]], dtype=torch.float32)  # (N,)
    report = {
        "model": str(a.model),
        "zoo": a.zoo,
        "nets": len(rows),
        "split": a.split,
        "prompts": a.prompts,
        "metric": exp.meta["metric"],
        "achieved_metric": achieved,
        "best_prompt": opt.best_prompt,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": str(opt.device),
        "start_median": float(start.median()),
        "init_scale": a.init_scale,
        "fresh_episodes": a.fresh_episodes,
        "results": [],
    }
    curves = None
    for (sampler, steps), g, k in itertools.product(samplers, a.guidance, a.samples):
        kw = {"num_inference_steps": steps, "guidance_scale": g, "sampler": sampler}
        t0 = time.perf_counter()
        align = prompt_alignment(
            exp, task, theta0, n_prompts=a.prompts, achieved_metric=achieved, num_samples=k,
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
        theta, current = theta0, start
        gen = torch.Generator().manual_seed(a.seed + 1)
        for r in range(1, a.recursive + 1):
            t0 = time.perf_counter()
            best = torch.full((len(rows),), opt.best_prompt)
            theta = one_step_critic(exp, theta, current, best, k, generator=gen, **kw)
            seconds = time.perf_counter() - t0
            m = task.evaluate(theta)
            current = torch.as_tensor(m[exp.meta["metric"]], dtype=torch.float32)
            key = "one_step" if r == 1 else f"step_{r}"
            row[f"{key}_seconds_per_net"] = seconds / len(rows)
            for name, v in m.items():
                row[f"{key}_{name}_median"] = float(np.median(v))
        row["r2_per_net"] = align["r2_per_net"]
        report["results"].append(row)
        print(json.dumps({k_: v for k_, v in row.items() if k_ != "r2_per_net"}))
    out = Path(a.out or Path(a.model) / "prompting.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    plot = Path(a.plot or out.with_suffix(".png"))
    fig = desired_vs_observed(curves[0], f"one step, {curves[1]}")
    fig.savefig(plot, dpi=120)
    print(f"report: {out}\nplot: {plot}")


if __name__ == "__main__":
    main()
