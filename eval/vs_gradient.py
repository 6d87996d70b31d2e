"""One G.pt step from random init against Adam and SGD from the same inits.

    python eval/vs_gradient.py --model runs/mnist-mlp-loss --zoo data/mnist-mlp-gpt5k.h5 --nets 32

For ``--nets`` test-split initialisations the model never saw (``--split val``: val-split ones, to
choose sampler settings before scoring them on test): one G.pt step prompted for the
model's best metric (``--prompt`` overrides), then Adam and SGD (momentum 0.9) from the same inits,
batch 128, each learning rate of a small grid. The learning rate kept per optimizer is the one that
reaches the G.pt step's *validation* loss in the fewest steps (median over nets); the report gives,
for it, the gradient steps and the wall time (standard one-network PyTorch loop) needed to match the
G.pt step's *test* loss, and the G.pt step's own wall time. Adam at lr 1e-3 is reported as well.
Steps to match are resolved to ``--resolution`` steps while whole curves are evaluated every
``--eval-every`` (:func:`gpt_params.tasks.batched.steps_to_match`). Writes a JSON report and a
loss-vs-steps plot (PNG).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from gpt_params.export import COMBINE
from gpt_params.plots import draw_vs_gradient
from gpt_params.scripting import add_unseen_arguments, fail, report_path, unseen_or_exit, utc_now
from gpt_params.tasks.batched import seconds_per_step, steps_to_match


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_unseen_arguments(p, "unseen networks", report="vs_gradient.json")
    p.add_argument(
        "--prompt", type=float, default=None, help="prompted metric (default: the model's best prompt)"
    )
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--sampler-steps", type=int, default=5)
    p.add_argument("--samples", type=int, default=1, help="candidates per net (see --combine)")
    p.add_argument(
        "--combine",
        choices=COMBINE,
        default="best",
        help="best-of-k on validation, their mean, the one nearest the prompt on validation, "
        "or the one the model's critic predicts nearest the prompt (no data)",
    )
    p.add_argument("--max-steps", type=int, default=3000, help="gradient steps per baseline run")
    p.add_argument("--eval-every", type=int, default=50, help="steps between evaluations of the curves")
    p.add_argument("--resolution", type=int, default=5, help="resolution of the steps to match")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--adam-lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    p.add_argument("--sgd-lrs", type=float, nargs="+", default=[0.01, 0.03, 0.1])
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    opt, zoo, rows, theta0 = unseen_or_exit(a)
    task = opt.task
    if opt.metric_name != "val_loss":
        raise fail(f"needs a model conditioned on val_loss, got {task.name!r} / {opt.metric_name!r}")
    prompt = opt.best_prompt if a.prompt is None else a.prompt
    gen = torch.Generator().manual_seed(a.seed)
    opt.step(theta0[:1], prompt, num_inference_steps=a.sampler_steps, generator=gen)  # warm-up
    t0 = time.perf_counter()
    new = opt.step(
        theta0, prompt, num_inference_steps=a.sampler_steps, guidance_scale=a.guidance,
        num_samples=a.samples, combine=a.combine, generator=torch.Generator().manual_seed(a.seed),
    )  # fmt: skip
    gpt_seconds = (time.perf_counter() - t0) / len(theta0)
    gpt = task.evaluate(new, splits=("val", "test"))
    start = task.evaluate(theta0, splits=("test",))
    report = {
        "model": str(a.model),
        "zoo": a.zoo,
        "nets": len(theta0),
        "split": a.split,
        "prompt": prompt,
        "date": utc_now(),
        "gpt": {
            "seconds_per_net": gpt_seconds,
            "seconds_per_net_includes": "measuring the start loss on validation, sampling, best-of-k selection",
            "samples": a.samples,
            "combine": a.combine,
            "start_test_loss_median": float(np.median(start["test_loss"])),
            **{f"{k}_median": float(np.median(v)) for k, v in gpt.items()},
        },
        "baselines": {},
    }
    if a.eval_every % a.resolution:
        raise fail(f"--eval-every {a.eval_every} must be a multiple of --resolution {a.resolution}")
    targets = {m: gpt[m] for m in ("val_loss", "test_loss")}
    curves, matched = {}, {}

    def run(name: str, lr: float) -> None:
        matched[(name, lr)], curves[(name, lr)] = steps_to_match(
            task, theta0, name, lr, a.max_steps, targets, a.resolution, a.eval_every, a.batch_size,
            a.seed, stop=False,
        )  # fmt: skip

    for name, lrs in (("adam", a.adam_lrs), ("sgd", a.sgd_lrs)):
        trials = []
        for lr in lrs:
            run(name, lr)
            val_steps = np.median(matched[(name, lr)]["val_loss"])
            trials.append((val_steps, float(np.median(curves[(name, lr)].metrics["val_loss"][-1])), lr))
        val_steps, _, lr = min(trials)
        report["baselines"][name] = summarise(task, curves[(name, lr)], matched[(name, lr)], a.batch_size)
        report["baselines"][name]["lr_grid"] = lrs
        report["baselines"][name]["val_steps_to_match_median"] = float(val_steps)
    if ("adam", 1e-3) not in curves:
        run("adam", 1e-3)
    report["baselines"]["adam_lr1e-3"] = summarise(
        task, curves[("adam", 1e-3)], matched[("adam", 1e-3)], a.batch_size
    )
    out = report_path(a.model, a.out, "vs_gradient.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    plot = out.with_suffix(".png")
    figure(report, curves).savefig(plot, dpi=120)
    print(
        json.dumps(
            {
                "gpt": report["gpt"],
                **{
                    k: {kk: v[kk] for kk in ("lr", "test_steps_to_match_median", "seconds_to_match_median")}
                    for k, v in report["baselines"].items()
                },
            },
            indent=1,
        )
    )
    print(f"report: {out}\nplot: {plot}")


def summarise(task, c, matched: dict[str, np.ndarray], batch_size: int) -> dict:
    steps = matched["test_loss"]
    sec = seconds_per_step(task, c.optimizer, c.lr, batch_size)
    med = float(np.median(steps))
    return {
        "lr": c.lr,
        "test_steps_to_match_median": med,
        "matched_fraction": float(np.isfinite(steps).mean()),
        "max_steps": int(c.steps[-1]),
        "seconds_per_step": sec,
        "seconds_to_match_median": med * sec,
        "final_test_loss_median": float(np.median(c.metrics["test_loss"][-1])),
        "final_test_error_median": float(np.median(c.metrics["test_error"][-1])),
    }


def figure(report: dict, curves: dict):
    from matplotlib.figure import Figure

    shown = {(k if k != "adam_lr1e-3" else "adam", v["lr"]) for k, v in report["baselines"].items()}
    lines = {
        f"{name}, lr {lr:g}": (c.steps, np.median(c.metrics["test_loss"], 1))
        for (name, lr), c in sorted(curves.items())
        if (name, lr) in shown
    }
    g = report["gpt"]
    fig = Figure(figsize=(6, 4.2), layout="constrained")
    ax = fig.subplots()
    label = f"one G.pt step ({g['seconds_per_net'] * 1e3:.0f} ms/net)"
    draw_vs_gradient(ax, lines, g["test_loss_median"], label, "median test loss")
    ax.set_title(f"{report['nets']} unseen inits: one step vs gradient descent", fontsize=10)
    return fig


if __name__ == "__main__":
    main()
