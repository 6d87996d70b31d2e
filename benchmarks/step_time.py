"""Training-step time of a family model per member: the attention path, the edge width and the batch.

    python benchmarks/step_time.py --hidden 4 10 64 256 32,16 128,128 227,198 \\
        --attention explicit fused --edge-width 64 16 --batch-params 8388608 2097152

For each member, attention path, edge width and batch size in parameters: a ``--preset`` model
(``--width``/``--depth`` overrides as ``train/diffuse.py`` takes them) on the ``--task`` family (``mnist-mlp``,
or ``digits-mlp``: 64 inputs instead of 784), one
optimiser step as ``train/diffuse.py`` takes it (bf16 autocast, role-balanced loss, ``--t-power``
timesteps; random pairs, no function-space term) on a batch of
``min(batch_size, max(16, min(batch_params // D, batch_units // units)))`` pairs, as ``train/diffuse.py
--batch-size/--batch-params/--batch-units`` size it, with the family recipe's edge messages in the tokens and after every block
(``--no-edge-messages`` / ``--no-block-messages``: without). ``explicit`` is the
model's CPU attention (timm's q @ k^T path), ``fused`` forces PyTorch's fused
scaled-dot-product attention. Prints one JSON line per case: seconds per step (mean of ``--steps`` after
one warm-up), parameters and pairs per second. Run it alone on the machine.

    python benchmarks/step_time.py --hidden 4 10 24 64 256 32,16 128,128 227,198 --attention explicit \
        --mixed-precision no --mix 3

``--single`` also times, on each member, the one-architecture model ``train/diffuse.py`` trains on a zoo of that
member alone (the preset's ``neuron`` tokenizer, plain MSE) with the same batch: rows with ``"model": "single"``
beside the family model's ``"model": "family"``, so the two models' step costs compare per parameter.

    python benchmarks/step_time.py --task digits-mlp --hidden 4 64 --attention explicit --mixed-precision bf16 \
        --batch-units 0 --steps 5 --single

``--mix ROUNDS`` asks instead what mixing architectures costs: one model takes the members' steps round-robin,
a new shape every step as on a mixed zoo, and the same steps member by member, back to back; one JSON line with
seconds per step in each order and their ratio.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Callable

import torch

from gpt_params.diffusion import DiffusionConfig, diffusion_loss, role_balance, train_scheduler
from gpt_params.errors import GptParamsError
from gpt_params.layout import role_plan
from gpt_params.model import PRESETS, Block, ModelConfig, ParamDiffusionTransformer, preset_config
from gpt_params.pairs import pairs_per_batch
from gpt_params.scripting import fail, hidden_or_exit
from gpt_params.tasks import get_task

BATCH_PARAMS = 2_097_152  # train/diffuse.py's --batch-params default


def step_fn(
    model: ParamDiffusionTransformer,
    opt: torch.optim.Optimizer,
    hidden: tuple[int, ...],
    t_power: float,
    seed: int,
    batch_params: int = BATCH_PARAMS,
    batch_size: int = 256,
    mixed_precision: str = "bf16",
    batch_units: int = 0,
    task_name: str = "mnist-mlp",
) -> tuple[Callable[[], None], int, int]:
    """One optimiser step of ``model`` (a family model, or a one-architecture model of member ``hidden``) on
    a random batch of member ``hidden``, as ``train/diffuse.py`` takes it; returns the step, the pairs per
    batch and the member's parameters."""
    task = get_task(task_name, hidden=hidden)
    d = task.layout.numel
    b = pairs_per_batch(d, sum(hidden), batch_size, batch_params, batch_units)
    g = torch.Generator().manual_seed(seed)
    start, future = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)  # (B, D)
    metric, prompt = torch.randn(b, generator=g), torch.randn(b, generator=g)  # (B,)
    sched, denoiser, weight = train_scheduler(DiffusionConfig()), model, None  # one architecture: plain MSE
    if model.family is not None:  # the member's plan; each tensor role weighs the same
        plan = role_plan(task.layout, task.symmetries, task.roles, task.family)
        denoiser, weight = functools.partial(model, plan=plan), role_balance(plan.role_id)

    def one_step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed_precision == "bf16"):
            loss, _ = diffusion_loss(
                denoiser, sched, start, future, metric, prompt, 0.1, g, None, 0.0, weight, t_power
            )
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return one_step, b, d


def new_model(
    cfg: ModelConfig, seed: int, task_name: str = "mnist-mlp", single: tuple[int, ...] | None = None
) -> tuple[ParamDiffusionTransformer, torch.optim.Optimizer]:
    """The family model of ``cfg``, or with ``single`` (a member's hidden widths) the one-architecture model
    of the same sizes that a zoo of that member alone trains (the ``neuron`` tokenizer)."""
    torch.manual_seed(seed)
    if single is None:
        model = ParamDiffusionTransformer(None, (), cfg, DiffusionConfig(), family=get_task(task_name).family)
    else:
        task = get_task(task_name, hidden=single)
        one = ModelConfig(**{**cfg.to_dict(), "tokenizer": "neuron"})  # family-only fields go unused
        model = ParamDiffusionTransformer(task.layout, task.symmetries, one, DiffusionConfig())
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def step_time(
    hidden: tuple[int, ...],
    cfg: ModelConfig,
    attention: str,
    steps: int,
    t_power: float,
    seed: int,
    batch_params: int = BATCH_PARAMS,
    batch_size: int = 256,
    mixed_precision: str = "bf16",
    batch_units: int = 0,
    task_name: str = "mnist-mlp",
    single: bool = False,
) -> dict:
    model = new_model(cfg, seed, task_name, hidden if single else None)
    one_step, b, d = step_fn(
        *model, hidden, t_power, seed, batch_params, batch_size, mixed_precision, batch_units, task_name
    )
    Block.fused_on_cpu = attention == "fused"
    try:
        one_step()  # warm-up
        t0 = time.perf_counter()
        for _ in range(steps):
            one_step()
        dt = (time.perf_counter() - t0) / steps
    finally:
        Block.fused_on_cpu = False
    return {
        "task": task_name, "model": "single" if single else "family", "hidden": list(hidden),
        "attention": attention, "edge_width": cfg.edge_width,
        "edge_messages": cfg.edge_messages, "block_messages": cfg.block_messages, "edge_rank": cfg.edge_rank,
        "mixed_precision": mixed_precision, "params": d,
        "batch_params": batch_params, "batch_units": batch_units, "pairs": b,
        "s_per_step": round(dt, 3), "params_per_s": round(b * d / dt), "pairs_per_s": round(b / dt, 1),
    }  # fmt: skip


def mixing_cost(
    members: list[tuple[int, ...]],
    cfg: ModelConfig,
    rounds: int,
    t_power: float,
    seed: int,
    task_name: str = "mnist-mlp",
    **batch,
) -> dict:
    """One model's steps over ``members``, ``rounds`` each (after one warm-up step each): round-robin, a
    new member every step as training on a mixed zoo meets them, against each member's steps back to back.
    The same steps in both orders, so the ratio is what changing shape every step costs."""
    model, opt = new_model(cfg, seed, task_name)
    steps = [step_fn(model, opt, h, t_power, seed, **batch, task_name=task_name)[0] for h in members]
    for one_step in steps:
        one_step()  # warm-up
    seconds = {}
    for order in ("back_to_back", "round_robin", "back_to_back_again"):
        t0 = time.perf_counter()
        if order == "round_robin":
            for _ in range(rounds):
                for one_step in steps:
                    one_step()
        else:
            for one_step in steps:
                for _ in range(rounds):
                    one_step()
        seconds[order] = (time.perf_counter() - t0) / (rounds * len(members))
    blocked = (seconds["back_to_back"] + seconds["back_to_back_again"]) / 2
    return {
        "members": [list(h) for h in members], "rounds": rounds,
        "s_per_step": {k: round(v, 3) for k, v in seconds.items()},
        "round_robin_over_back_to_back": round(seconds["round_robin"] / blocked, 3),
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="mnist-mlp", choices=["mnist-mlp", "digits-mlp"], help="the MLP family")
    p.add_argument("--hidden", nargs="+", default=["4", "10", "64", "256", "32,16", "128,128", "227,198"])
    p.add_argument("--attention", nargs="+", default=["explicit", "fused"], choices=["explicit", "fused"])
    p.add_argument("--edge-width", type=int, nargs="+", default=[16], help="0: the preset's")
    p.add_argument("--batch-params", type=int, nargs="+", default=[BATCH_PARAMS])
    p.add_argument(
        "--batch-size", type=int, default=256, help="most pairs per batch (train/diffuse.py's default)"
    )
    p.add_argument(
        "--batch-units",
        type=int,
        default=0,
        help="most pairs x hidden units per batch (train/diffuse.py --batch-units; 0: no cap)",
    )
    p.add_argument(
        "--edge-messages",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the family recipe's edge messages (train/diffuse.py --edge-messages)",
    )
    p.add_argument(
        "--mixed-precision",
        default="bf16",
        choices=["bf16", "no"],
        help="bf16 autocast (the recipe's; fast only where the CPU has bf16 instructions) or fp32",
    )
    p.add_argument(
        "--block-messages",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the family recipe's messages after every block too (train/diffuse.py --block-messages)",
    )
    p.add_argument(
        "--edge-rank",
        type=int,
        default=16,
        help="rank of the bilinear term in the weights-between-layers decoder (train/diffuse.py --edge-rank)",
    )
    p.add_argument(
        "--mix",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="instead: one model's steps over the members round-robin against back to back, ROUNDS each "
        "(the first --attention, --edge-width and --batch-params); one JSON line",
    )
    p.add_argument(
        "--single",
        action="store_true",
        help="also time each member's one-architecture model (neuron tokenizer) on the same batch",
    )
    p.add_argument("--preset", default="small", choices=list(PRESETS))
    p.add_argument("--width", type=int, default=128, help="0: the preset's")
    p.add_argument("--depth", type=int, default=4, help="0: the preset's")
    p.add_argument("--t-power", type=float, default=2.0)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    members = [hidden_or_exit(h) for h in a.hidden]
    try:
        for hidden in members:
            get_task(a.task, hidden=hidden)
    except GptParamsError as e:
        raise fail(str(e)) from None
    if (
        a.steps < 1
        or min(a.edge_width) < 0
        or a.width < 0
        or a.depth < 0
        or min(a.batch_params) < 1
        or a.batch_size < 1
        or a.batch_units < 0
        or a.mix < 0
    ):
        raise fail(
            f"--steps {a.steps} / --edge-width {a.edge_width} / --width {a.width} / --depth {a.depth} / "
            f"--batch-params {a.batch_params} / --batch-size {a.batch_size} / --batch-units {a.batch_units} / "
            f"--mix {a.mix}: expected at least one step, non-negative sizes, rounds and unit caps and positive "
            "batch sizes"
        )
    for ew in a.edge_width:
        try:
            cfg = preset_config(
                a.preset,
                "role",
                a.width,
                a.depth,
                edge_width=ew,
                size_embedding=True,
                edge_messages=a.edge_messages,
                message_norm="sqrt",  # the recipe's; without edge messages it has no effect
                block_messages=a.block_messages,
                edge_rank=a.edge_rank,
            )
        except GptParamsError as e:
            raise fail(str(e)) from None
        if a.mix:
            Block.fused_on_cpu = a.attention[0] == "fused"
            try:
                row = mixing_cost(
                    members, cfg, a.mix, a.t_power, a.seed, a.task, batch_params=a.batch_params[0],
                    batch_size=a.batch_size, mixed_precision=a.mixed_precision, batch_units=a.batch_units,
                )  # fmt: skip
            finally:
                Block.fused_on_cpu = False
            print(json.dumps({"attention": a.attention[0], "edge_width": ew, **row}), flush=True)
            return
        for bp in a.batch_params:
            for hidden in members:
                for attention in a.attention:
                    for single in (False, True) if a.single else (False,):
                        row = step_time(
                            hidden, cfg, attention, a.steps, a.t_power, a.seed, bp, a.batch_size,
                            a.mixed_precision, a.batch_units, a.task, single,
                        )  # fmt: skip
                        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
