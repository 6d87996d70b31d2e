"""Per-role errors of a family model: which tensor roles (first-layer weights, output bias, ...) it gets wrong.

    python benchmarks/role_errors.py --model runs/mnist-mlp-family/model --zoo data/mnist-mlp-family.h5 \\
        --hidden 4 72 234

For each member (held by the zoo), its first ``--nets`` val-split runs, which training never saw:

* the denoiser: RMS error of the x0-prediction per role, in the model's normalised units, for the pair
  (init, last checkpoint) noised to each of ``--timesteps``, conditioned on the init's and the last
  checkpoint's metric; beside it ``init_rms``, the error of predicting no change (the init itself),
  the bar a prediction at high noise, which sees little but the init, has to beat;
* the step: one plain sample from the init prompted for the member's best metric, its RMS error per role
  against the run's last checkpoint and its spread (std) beside the checkpoint's, and the test loss of
  the init, the last checkpoint and the step; with ``--inference-steps 1 5 20`` also the step's test loss
  at each number of DDIM steps (``step_ddimN``; the first is the step above).

With ``--reruns``, the floor those errors stand on: each init trained twice more with the zoo's recipe
(Adam, its learning rate and cosine schedule, batch and epochs), each time in another data order, and per role
the RMS difference of the two results over sqrt(2) (``rerun_rms``): the error of the best prediction the init
alone allows, the part of a run that its data order, not its init, decides. ``rerun_test_loss`` checks that the
reruns land where the zoo's runs do.

Prints one JSON line per member.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from gpt_params.errors import GptParamsError
from gpt_params.evaluate import bind_member, held_rows
from gpt_params.optimizer import LearnedOptimizer
from gpt_params.scripting import fail, hidden_or_exit
from gpt_params.tasks.batched import minibatch_steps
from gpt_params.zoo_reader import Zoo


def by_role(x: torch.Tensor, role_id: torch.Tensor, names: list[str], stat) -> dict[str, float]:
    """``stat`` of ``x`` ``(N, D)`` over each role's coordinates."""
    return {names[r]: float(stat(x[:, role_id == r])) for r in role_id.unique().tolist()}


def rms(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).mean().sqrt()


def retrain(task, theta0: torch.Tensor, hp: dict, seed: int) -> torch.Tensor:
    """``theta0`` ``(N, D)`` trained with a zoo run's recipe ``hp`` in data order ``seed``: the final ``(N, D)``."""
    if hp.get("optimizer") != "adam" or hp.get("weight_decay", 0.0) != 0.0:
        raise fail(f"--reruns retrains the adam preset's recipe; this zoo's runs use {hp}")
    steps = hp["epochs"] * (task.data.sizes()["train"] // hp["batch_size"])  # as the harvest counts them
    for step, flat in minibatch_steps(
        task, theta0, "adam", hp["lr"], steps, hp["batch_size"], seed, hp["schedule"]
    ):  # fmt: skip
        if step == steps:
            return flat()
    raise AssertionError("unreachable")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a family model: export directory or shipped name")
    p.add_argument("--zoo", required=True, help="the mixed zoo it trained on")
    p.add_argument("--hidden", nargs="+", required=True, help="members the zoo holds, e.g. 4 72 53,37")
    p.add_argument("--nets", type=int, default=8, help="first val-split runs of each member")
    p.add_argument("--timesteps", type=int, nargs="+", default=[50, 300, 700, 950])
    p.add_argument("--inference-steps", type=int, nargs="+", default=[5], help="DDIM steps of the step")
    p.add_argument(
        "--reruns", action="store_true", help="also the floor: each init retrained in 2 data orders"
    )
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    members = [hidden_or_exit(h) for h in a.hidden]
    if min(a.inference_steps) < 1:
        raise fail(f"--inference-steps {a.inference_steps}: expected positive step counts")
    try:
        zoo = Zoo(a.zoo)
        fam = LearnedOptimizer.from_pretrained(a.model)
        if not fam.family:
            raise GptParamsError(f"{a.model!r} serves one architecture ({fam.task.label}), not a family")
        bound = [bind_member(fam, zoo, h) for h in members]
        rows = [held_rows(zoo, opt.task, "val") for opt in bound]
        for opt, r in zip(bound, rows, strict=True):
            if r is None or len(r) == 0:
                raise GptParamsError(f"{zoo.label} holds no val-split runs of {opt.task.label}")
    except GptParamsError as e:
        raise fail(str(e)) from None
    net, metric = fam.exported.model, fam.metric_name
    names = list(fam.task.family)
    for opt, r in zip(bound, rows, strict=True):
        task, r = opt.task, r[: a.nets]
        norm, _, plan = fam.exported.member(task)
        runs = [zoo.params(int(i)) for i in r]  # each (K, D)
        theta0 = torch.stack([torch.from_numpy(x[0]) for x in runs])  # (N, D)
        last = torch.stack([torch.from_numpy(x[-1]) for x in runs])  # (N, D)
        z0, z1 = norm.normalize(theta0), norm.normalize(last)
        m = np.stack([zoo.metrics[metric][int(i)] for i in r])  # (N, K)
        start = task.normalize_metric(torch.tensor(m[:, 0], dtype=torch.float32), metric)
        target = task.normalize_metric(torch.tensor(m[:, -1], dtype=torch.float32), metric)
        g = torch.Generator().manual_seed(a.seed)
        denoiser = {}
        for t in a.timesteps:
            abar = float(net.sqrt_abar[t]) ** 2
            noisy = abar**0.5 * z1 + (1 - abar) ** 0.5 * torch.randn(z1.shape, generator=g)
            with torch.no_grad():
                pred = net(noisy, torch.full((len(r),), t), z0, start, target, plan=plan)
            denoiser[str(t)] = by_role(pred - z1, plan.role_id, names, rms)
        steps = {
            n: opt.step(
                theta0,
                opt.best_prompt,
                num_inference_steps=n,
                generator=torch.Generator().manual_seed(a.seed),
            )
            for n in a.inference_steps
        }
        step = steps[a.inference_steps[0]]  # the first count is the step
        zs = norm.normalize(step)
        held_out = task.held_out_metric(metric)
        scored = {"init": theta0, "last": last} | {f"step_ddim{n}": v for n, v in steps.items()}
        loss = {k: float(np.median(task.evaluate(v)[held_out])) for k, v in scored.items()}
        first = f"step_ddim{a.inference_steps[0]}"  # the step itself; step_ddimN kept with several counts
        loss["step"] = loss[first] if len(steps) > 1 else loss.pop(first)
        report = {
            "member": task.label,
            "nets": len(r),
            "prompt": opt.best_prompt,
            held_out: loss,
            "denoiser_rms": denoiser,
            "init_rms": by_role(z0 - z1, plan.role_id, names, rms),
            "step_rms": by_role(zs - z1, plan.role_id, names, rms),
            "step_std": by_role(zs, plan.role_id, names, torch.std),
            "last_std": by_role(z1, plan.role_id, names, torch.std),
        }
        if a.reruns:
            reruns = [retrain(task, theta0, zoo.hparams[int(r[0])], seed) for seed in (1, 2)]  # (N, D) each
            za, zb = (norm.normalize(x) for x in reruns)
            report["rerun_rms"] = by_role((za - zb) / 2**0.5, plan.role_id, names, rms)
            report["rerun_test_loss"] = [float(np.median(task.evaluate(x)[held_out])) for x in reruns]
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
