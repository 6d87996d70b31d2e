"""Novelty audit: are one-step outputs real updates of their input, or memorised training checkpoints?

    python eval/audit.py --model runs/mnist-mlp-loss --zoo data/mnist-mlp-gpt5k.h5 --nets 32
    python eval/audit.py --model runs/mnist-mlp-family --zoo data/mnist-mlp-family.h5 --hidden 32

A family model is audited one member at a time (``--hidden``), against the bank of that member's
training checkpoints; a member the zoo never held has no checkpoints to memorise, so it is refused.

For ``--nets`` test-split initialisations: one G.pt step prompted for the best metric. Each output is
compared, after aligning hidden units (Hungarian matching), with a bank of ``--bank`` training
checkpoints past their init: one from each of ``--bank`` train-split runs, or, for a member with fewer
runs (a mixed zoo), up to ``--bank`` of all its runs' checkpoints. Three references put the distances in scale:
the same init trained for real by the zoo's recipe (a genuinely new network: how near does *it* come
to the bank?), pairs of independent training runs, and a retrieval baseline, the bank checkpoint
whose validation metric is nearest the prompt, scored like the outputs. With ``--prompts P``, G.pt's
prompt alignment (R^2) of the one step on the same inits, beside what their real training offers:
for each prompt, that run's own checkpoint whose validation metric is nearest it. Writes JSON and a PNG.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from gpt_params.align import aligned_distances, nearest
from gpt_params.evaluate import held_rows, prompt_alignment, trajectory_alignment
from gpt_params.scripting import add_unseen_arguments, fail, report_path, unseen_or_exit, utc_now


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_unseen_arguments(p, "unseen networks (first runs of --split) audited", report="audit.json")
    p.add_argument("--bank", type=int, default=2000, help="training checkpoints searched for the nearest")
    p.add_argument("--prompt", type=float, default=None, help="prompted metric (default: the best prompt)")
    p.add_argument("--sampler-steps", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompts", type=int, default=10, help="prompts per net for the alignment R^2 (0: none)")
    a = p.parse_args()

    if a.prompts == 1 or a.prompts < 0:
        raise fail(f"--prompts {a.prompts}: need 0 (no alignment) or at least 2")
    opt, zoo, test_rows, _ = unseen_or_exit(a)
    if len(test_rows) == 0:
        raise fail(
            f"{zoo.label} never held {opt.task.label}: no training checkpoints of it to audit against "
            "(and no real training of its inits)"
        )
    task, layout, groups = opt.task, opt.task.layout, opt.task.symmetries
    rng = np.random.default_rng(a.seed)
    runs = [zoo.params(int(r)) for r in test_rows]  # each (K, D)
    theta0 = torch.stack([torch.from_numpy(r[0]) for r in runs])  # (N, D)
    real = torch.stack([torch.from_numpy(r[-1]) for r in runs])  # the same inits, trained by the recipe
    prompt = opt.best_prompt if a.prompt is None else a.prompt
    out = opt.step(
        theta0, prompt, num_inference_steps=a.sampler_steps, generator=torch.Generator().manual_seed(a.seed)
    )

    train_rows = held_rows(zoo, task, "train")  # the member's own training runs
    if len(train_rows) < 2:
        raise fail(f"{zoo.label} has {len(train_rows)} train-split runs of {task.label}; the audit needs 2")
    if len(train_rows) >= a.bank:  # one checkpoint (past the init) of each of --bank runs
        pick_runs = rng.choice(train_rows, size=a.bank, replace=False)
        pick_ckpt = rng.integers(1, zoo.n_ckpts, size=len(pick_runs))
    else:  # a member with few runs (a mixed zoo): up to --bank of all its runs' checkpoints
        pairs = rng.permutation(len(train_rows) * (zoo.n_ckpts - 1))[: a.bank]
        pick_runs, pick_ckpt = train_rows[pairs // (zoo.n_ckpts - 1)], 1 + pairs % (zoo.n_ckpts - 1)
    bank = torch.stack(
        [torch.from_numpy(zoo.checkpoint(int(r), int(k))) for r, k in zip(pick_runs, pick_ckpt, strict=True)]
    )
    metric = opt.metric_name
    bank_metric = np.array(
        [zoo.metrics[metric][int(r), int(k)] for r, k in zip(pick_runs, pick_ckpt, strict=True)]
    )

    d_out, _ = nearest(out, bank, layout, groups)
    d_real, _ = nearest(real, bank, layout, groups)
    d_input = (out - theta0).norm(dim=1).numpy()
    d_real_input = (real - theta0).norm(dim=1).numpy()
    d_out_real = np.array(
        [aligned_distances(r, o[None], layout, groups)[0] for r, o in zip(real, out, strict=True)]
    )
    finals = torch.stack(
        [
            torch.from_numpy(zoo.checkpoint(int(r), zoo.n_ckpts - 1))
            for r in rng.permutation(train_rows)[: 2 * a.nets]
        ]
    )
    d_indep = np.array(
        [
            aligned_distances(finals[2 * i], finals[2 * i + 1][None], layout, groups)[0]
            for i in range(len(finals) // 2)
        ]
    )
    # retrieval: the bank checkpoints whose validation metric is nearest the prompt, one per net
    near_metric = np.argsort(np.abs(bank_metric - prompt))[: len(theta0)]
    retrieved = bank[near_metric]
    d_retr_input = np.array(
        [aligned_distances(t, r[None], layout, groups)[0] for t, r in zip(theta0, retrieved, strict=True)]
    )
    scored = task.held_out_metric(metric)

    alignment = {}
    if a.prompts:  # the one step's R^2 on these inits, and what their real training offers
        step_r2 = prompt_alignment(
            opt,
            theta0,
            n_prompts=a.prompts,
            achieved_metric=scored,
            num_inference_steps=a.sampler_steps,
            generator=torch.Generator().manual_seed(a.seed),
        )
        rows = np.asarray(test_rows)
        # a zoo without the held-out metric scores real training by the conditioning one
        held = zoo.metrics.get(scored, zoo.metrics[metric])
        real_r2 = trajectory_alignment(zoo.metrics[metric][rows], held[rows], opt.best_prompt, a.prompts)
        alignment = {
            "prompts": a.prompts,
            "one_step_r2": step_r2["r2"],
            "real_training_trajectory_r2": real_r2["r2"],
            "per_net": {"one_step": step_r2["r2_per_net"], "real_training": real_r2["r2_per_run"]},
        }

    def med(x) -> float:
        return float(np.median(x))

    report = {
        "model": str(a.model),
        "zoo": a.zoo,
        "architecture": task.label,
        "nets": len(test_rows),
        "bank": len(bank),
        "prompt": prompt,
        "date": utc_now(),
        "scored_by": scored,
        "output": {
            scored: med(task.evaluate(out)[scored]),
            "dist_to_input": med(d_input),
            "dist_to_nearest_train_ckpt": med(d_out),
            "dist_to_real_training_of_same_init": med(d_out_real),
        },
        "real_training_of_same_init": {
            scored: med(task.evaluate(real)[scored]),
            "dist_to_input": med(d_real_input),
            "dist_to_nearest_train_ckpt": med(d_real),
        },
        "independent_runs_dist": med(d_indep),
        "retrieval": {scored: med(task.evaluate(retrieved)[scored]), "dist_to_input": med(d_retr_input)},
        **({"alignment": alignment} if alignment else {}),
        "per_net": {
            "output_nearest": d_out.tolist(),
            "real_nearest": d_real.tolist(),
            "output_input": d_input.tolist(),
        },
    }
    name = "audit.json" if a.hidden is None else f"audit-h{a.hidden.replace(',', '-')}.json"
    path = report_path(a.model, a.out, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    figure(d_out, d_real, d_indep, d_input).savefig(path.with_suffix(".png"), dpi=120)
    print(json.dumps({k: v for k, v in report.items() if k != "per_net"}, indent=1))
    print(f"report: {path}\nplot: {path.with_suffix('.png')}")


def figure(d_out, d_real, d_indep, d_input):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, max(map(np.max, (d_out, d_real, d_indep, d_input))) * 1.05, 40)
    ax.hist(d_out, bins, alpha=0.6, label="G.pt output -> nearest training ckpt")
    ax.hist(d_real, bins, alpha=0.6, label="real training of same init -> nearest training ckpt")
    ax.hist(d_input, bins, alpha=0.4, label="G.pt output -> its input")
    ax.hist(d_indep, bins, alpha=0.4, label="independent runs (aligned)")
    ax.set_xlabel("L2 distance after aligning hidden units")
    ax.set_ylabel("networks")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
