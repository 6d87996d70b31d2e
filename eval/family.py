"""One family model across its members: one step from fresh inits on each width and shape, against Adam.

    python eval/family.py --model runs/mnist-mlp-family --zoo data/mnist-mlp-family.h5 \\
        --widths 4 6 8 10 12 16 24 32 48 64 96 128 192 256 --shapes 32,16 64,64 128,32 --specialist mnist-mlp-loss

Each member gets the demo's protocol (``gpt-params demo``, :func:`gpt_params.evaluate.one_step_vs_gradient`):
``--nets`` fresh inits no harvest used, one step prompted for the model's best metric, test loss on
held-out images, the Adam steps (lr 1e-3, batch 128) needed to match it, and G.pt's prompt alignment.
``--zoo`` marks the members the training zoo held. ``--specialist`` adds, for one-hidden-layer widths,
a single-architecture model applied unchanged (its tokenizer rebuilt for the width, its per-tensor
normaliser and clamp reused): the zero-shot baseline a family model has to beat. Writes JSON and a PNG
of test loss and Adam steps against width.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace

import torch

from gpt_params.errors import GptParamsError
from gpt_params.evaluate import one_step_vs_gradient
from gpt_params.export import Exported
from gpt_params.model import ParamDiffusionTransformer
from gpt_params.normalize import ParamNormalizer
from gpt_params.optimizer import LearnedOptimizer
from gpt_params.plots import family_figure
from gpt_params.scripting import add_out_argument, fail, hidden_or_exit, report_path, utc_now
from gpt_params.tasks.base import BaselineConfig, Task
from gpt_params.zoo_reader import Zoo


def transplant(spec: LearnedOptimizer, task: Task) -> Exported:
    """A single-architecture model's export rebuilt for ``task``'s layout, its weights unchanged: only
    possible where the two layouts have the same tensors (a neuron-token model's weights do not depend
    on how many units a layer has). Per-tensor normaliser and clamp statistics spread to the new sizes."""
    exported, old = spec.exported, spec.task.layout
    if spec.family or old.names != task.layout.names:
        raise GptParamsError(f"a model for {spec.task.label} cannot be applied to {task.label}")
    model = ParamDiffusionTransformer(task.layout, task.symmetries, exported.model.config, exported.diffusion)
    model.load_state_dict(exported.model.state_dict())
    model.eval().to(exported.model.sqrt_abar.device)
    mean, std = torch.empty(task.layout.numel), torch.empty(task.layout.numel)
    low, high = torch.empty(task.layout.numel), torch.empty(task.layout.numel)
    for name in task.layout.names:
        src, dst = old.slice_of(name), task.layout.slice_of(name)
        mean[dst], std[dst] = exported.normalizer.mean[src].mean(), exported.normalizer.std[src].mean()
        if exported.clamp is not None:
            low[dst], high[dst] = exported.clamp[0][src].min(), exported.clamp[1][src].max()
    clamp = None if exported.clamp is None else (low, high)
    return replace(exported, model=model, normalizer=ParamNormalizer(mean, std), clamp=clamp, _members={})


def row(label: str, kind: str, hidden: tuple[int, ...], held: bool | None, r) -> dict:
    return {
        "member": label,
        "model": kind,
        "hidden": list(hidden),
        "held_by_zoo": held,
        "nets": r.nets,
        "start_test_loss": r.start,
        "prompt": r.prompt,
        "test_loss": r.achieved,
        "adam_steps": r.baseline_steps if math.isfinite(r.baseline_steps) else None,
        "adam_matched": r.baseline_matched,
        "adam_max_steps": r.baseline.budget,
        "r2": r.alignment["r2"],
        "step_seconds": r.step_seconds,
    }


def markdown(rows: list[dict]) -> str:
    """The report as a Markdown table, one line per member, the zero-shot specialist beside it."""

    def steps(r: dict) -> str:
        if r["adam_steps"] is None:
            return f"> {r['adam_max_steps']:,}"
        partial = f" ({r['adam_matched']:.0%} matched)" if r["adam_matched"] < 1 else ""
        return f"{r['adam_steps']:,.0f}{partial}"

    held = {True: "yes", False: "**no**", None: "?"}
    zero = {r["member"]: r for r in rows if r["model"] != "family"}
    lines = [
        "| member | zoo held it | start | prompt | one step | R^2 | Adam steps to match | zero-shot specialist: one step, R^2, Adam steps |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in (r for r in rows if r["model"] == "family"):
        z = zero.get(r["member"])
        spec = "" if z is None else f"{z['test_loss']:.3f}, {z['r2']:.2f}, {steps(z)}"
        lines.append(
            f"| {'-'.join(map(str, r['hidden']))} | {held[r['held_by_zoo']]} | {r['start_test_loss']:.3f} | "
            f"{r['prompt']:.3f} | {r['test_loss']:.3f} | {r['r2']:.3f} | {steps(r)} | {spec} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="family model: export directory or shipped name")
    p.add_argument("--zoo", default=None, help="the family zoo it trained on (marks held members)")
    p.add_argument("--widths", type=int, nargs="*", default=[4, 8, 10, 16, 24, 32, 64, 128, 256])
    p.add_argument("--shapes", nargs="*", default=["32,16", "64,64"], help="two-layer members, e.g. 64,32")
    p.add_argument("--specialist", default=None, help="single-architecture model applied zero-shot")
    p.add_argument("--nets", type=int, default=16, help="fresh inits per member")
    p.add_argument("--prompts", type=int, default=10, help="prompts per net for the alignment R^2")
    p.add_argument("--adam-steps", type=int, default=3000, help="Adam steps at most")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    p.add_argument("--sampler-steps", type=int, default=5, help="DDIM steps per one-step update")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="the task's data directory (default: its default)")
    add_out_argument(p, "family.json")
    a = p.parse_args()
    members = [(w,) for w in a.widths] + [hidden_or_exit(s) for s in a.shapes]
    if not members or a.nets < 1 or a.prompts < 2 or a.sampler_steps < 1:
        raise fail(
            "need members, --nets >= 1, --prompts >= 2 and --sampler-steps >= 1 "
            f"(got {len(members)}, {a.nets}, {a.prompts}, {a.sampler_steps})"
        )
    if a.guidance is not None and not math.isfinite(a.guidance):
        raise fail(f"--guidance must be a finite number, got {a.guidance}")
    opts = {} if a.data_dir is None else {"data_dir": a.data_dir}
    try:
        fam = LearnedOptimizer.from_pretrained(a.model, **opts)
        if not fam.family:
            raise GptParamsError(f"{a.model!r} serves one architecture ({fam.task.label}), not a family")
        tasks = [fam.task.member(h) for h in members]  # non-members fail here, before any work
        spec = None if a.specialist is None else LearnedOptimizer.from_pretrained(a.specialist, **opts)
        held = None if a.zoo is None else Zoo(a.zoo).member_options
    except GptParamsError as e:
        raise fail(str(e)) from None
    cfg = BaselineConfig(nets=a.nets, adam_steps=a.adam_steps, seed=a.seed)
    guidance = fam.default_guidance if a.guidance is None else a.guidance  # the specialist keeps its own

    def scored(opt: LearnedOptimizer, theta0: torch.Tensor):
        return one_step_vs_gradient(opt.task.label, opt, theta0, cfg, a.prompts, a.sampler_steps)

    rows, t0 = [], time.perf_counter()
    for hidden, task in zip(members, tasks, strict=True):
        in_zoo = None if held is None else task.options in held
        theta0 = task.unseen_inits(a.nets)  # (N, D): seeds no harvest uses
        member = LearnedOptimizer(fam.exported, task)
        member.default_guidance = guidance
        r = scored(member, theta0)
        rows.append(row(task.label, "family", hidden, in_zoo, r))
        print(json.dumps(rows[-1]), flush=True)
        if spec is not None and spec.task.layout.names == task.layout.names:
            zero = LearnedOptimizer(transplant(spec, task), task)
            r = scored(zero, theta0)
            rows.append(row(task.label, f"zero-shot {a.specialist}", hidden, None, r))
            print(json.dumps(rows[-1]), flush=True)
    report = {
        "model": str(a.model),
        "specialist": a.specialist,
        "zoo": a.zoo,
        "date": utc_now(),
        "seconds": time.perf_counter() - t0,
        "protocol": f"{a.nets} fresh inits per member, Adam lr {cfg.adam_lr} batch 128 up to {a.adam_steps} steps",
        "guidance": guidance,
        "sampler_steps": a.sampler_steps,
        "rows": rows,
    }
    out = report_path(a.model, a.out, "family.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    family_figure(rows).savefig(out.with_suffix(".png"), dpi=120)
    print(markdown(rows))
    print(f"report: {out}\nplot: {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
