"""Train G.pt's conditional diffusion transformer on a checkpoint zoo.

    python train/diffuse.py --zoo data/mnist-mlp.h5 --preset small --max-minutes 90 --out runs/mnist-mlp-loss
    accelerate launch train/diffuse.py --zoo data/mnist-mlp.h5 --preset base --out runs/base    # 1 CPU or N GPUs
    python train/diffuse.py --zoo data/mnist-mlp.h5 --out runs/mnist-mlp-loss --resume           # continue

Writes ``<out>/state/`` (accelerate checkpoints for --resume) and the export ``<out>/model.safetensors``
+ ``<out>/config.json``. Conditioning uses a metric of train-split runs only (validation, by default).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

# oneDNN, which runs the CPU's matrix products, caches 1,024 compiled kernels by default; a mixed zoo's hundred-odd
# shapes need more, and a larger cache made family steps 9-16% faster (BENCHMARKS.md). Set before torch loads it.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "65536")

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from gpt_params.config import add_arguments, from_args, opt
from gpt_params.critic import BANK_SIZE
from gpt_params.devices import resolve_mixed_precision
from gpt_params.diffusion import (
    OUTPUT_SCHEDULES,
    DiffusionConfig,
    diffusion_loss,
    role_balance,
    train_scheduler,
)
from gpt_params.errors import GptParamsError
from gpt_params.evaluate import prompt_alignment
from gpt_params.export import Exported, export_meta, save_export
from gpt_params.layout import role_plan
from gpt_params.model import PRESETS, ModelConfig, ParamDiffusionTransformer, count_parameters, preset_config
from gpt_params.normalize import ParamNormalizer, RoleNormalizer
from gpt_params.optimizer import LearnedOptimizer
from gpt_params.pairs import MemberPairStream, PairConfig, PairStream, best_index
from gpt_params.tasks.base import Task
from gpt_params.tokenizers import MESSAGE_NORMS
from gpt_params.zoo_reader import Zoo


def fail(message: str):
    sys.exit(f"diffuse.py: error: {message}")


@dataclass
class TrainConfig:
    """Training run of the diffusion model; every field is a flag (``--max-steps`` etc.)."""

    zoo: str = opt("", "zoo file to train on (train-split runs only)")
    out: str = opt("runs/diffuse", "directory for the export and the accelerate state")
    preset: str = opt("small", f"model size: {', '.join(PRESETS)}")
    tokenizer: str = opt("", "override the preset's tokenizer: neuron or chunk (a mixed zoo: role, always)")
    width: int = opt(0, "override the preset's token width (0: the preset's)")
    depth: int = opt(0, "override the preset's number of transformer blocks (0: the preset's)")
    size_embedding: bool = opt(
        True, "a mixed zoo's model: condition on each hidden layer's width (--no-size-embedding: without)"
    )
    edge_messages: bool = opt(
        True,
        "a mixed zoo's model: each hidden unit's token receives the other hidden layer's tokens weighted by "
        "the connecting weights (--no-edge-messages: the weights pooled alone)",
    )
    message_norm: str = opt(
        "sqrt",
        "a mixed zoo's model: each edge message, a sum over the other layer's n units, with the values centred "
        "and divided by sqrt(n) (sqrt: one scale across widths) or divided by n (mean, the ablation)",
    )
    block_messages: bool = opt(
        True,
        "a mixed zoo's model: after every transformer block, unit tokens exchange messages along the weights "
        "between the hidden layers (--no-block-messages: only the tokenizer's)",
    )
    edge_rank: int = opt(
        16,
        "a mixed zoo's model: rank of a bilinear term, sum_k p_k(unit a) q_k(unit b), in the decoder of the "
        "weights between the hidden layers (0: the additive head alone, the ablation)",
    )
    grad_probes: int = opt(
        0,
        "a mixed zoo's model: its tokens also read the gradient of the training loss at theta_start on this "
        "many fixed training examples (Task.probe_gradient; 0: none)",
    )
    balance_roles: bool = opt(
        True,
        "a mixed zoo: weigh each tensor role (first-layer weights, output bias, ...) equally in the loss, "
        "not by its number of coordinates (--no-balance-roles: plain MSE)",
    )
    width_law: bool = opt(
        True,
        "a mixed zoo: each role's normalising std follows a power law of its tensor's fan-in and fan-out, "
        "fitted on the zoo (--no-width-law: one std per role)",
    )
    heads: int = opt(0, "override the preset's attention heads; must divide the width (0: the preset's)")
    edge_width: int = opt(
        0,
        "override the preset's edge width, the per-weight features between two hidden layers (0: the preset's)",
    )
    metric: str = opt("", "conditioning metric (default: the task's objective: val_loss, or return_mean)")
    batch_size: int = opt(256, "pairs per optimizer step and process")
    batch_params: int = opt(
        2_097_152,
        "a mixed zoo: most pairs x member parameters per batch, so wide members get fewer pairs (at least "
        "16), shorter steps and more of them; 0 = always --batch-size",
    )
    batch_units: int = opt(
        4096,
        "a mixed zoo: most pairs x member hidden units (its tokens) per batch, so members with many units and "
        "few parameters (784-4-174-10: 23 pairs, not 256) get shorter steps and more of them (at least 16 "
        "pairs); 0 = no cap",
    )
    member_power: float = opt(
        1.0,
        "a mixed zoo: members drawn in proportion to their train runs times their hidden units to the power "
        "-MEMBER_POWER, so > 0 trains narrow (cheap) members more often; 0 = in proportion to runs",
    )
    max_steps: int = opt(20_000, "optimizer steps")
    max_minutes: float = opt(
        0.0, "wall-time budget: the cosine decay ends and training stops (and exports) there; 0 = none"
    )
    lr: float = opt(3e-4, "AdamW peak learning rate")
    weight_decay: float = opt(0.01, "AdamW weight decay")
    warmup_steps: int = opt(500, "linear warm-up steps before cosine decay")
    grad_clip: float = opt(1.0, "gradient norm clip")
    grad_accum: int = opt(1, "gradient accumulation steps")
    mixed_precision: str = opt(
        "no",
        "accelerate mixed precision: no, fp16, bf16, or auto: bf16 where this machine computes it fast "
        "(CUDA GPUs with bf16, CPUs with AVX-512 / AMX), else no",
    )
    ema_decay: float = opt(
        0.999, "EMA decay of the weights used for sampling (warmed up: min(decay, (1+n)/(10+n)))"
    )
    prompt_dropout: float = opt(0.1, "probability of dropping the prompt (classifier-free guidance)")
    init_frac: float = opt(0.25, "fraction of pairs starting at the random init")
    same_frac: float = opt(0.05, "fraction of pairs with no change (j == i)")
    late_bias: float = opt(
        1.0,
        "draw a pair's later checkpoint as i+1+floor(u^(1/late_bias)*(last-i)): 1 uniform, >1 favours late ones",
    )
    t_power: float = opt(
        1.0,
        "draw diffusion timesteps as floor(1000*u^(1/t_power)): 1 uniform, >1 favours high noise, where a "
        "one-step sample's first prediction comes from the start and prompt alone",
    )
    early_stop: bool = opt(
        False,
        "cut each training run at its best checkpoint by the conditioning metric, so the metric improves "
        "along every pair and a prompt is not reached twice (before and after overfitting)",
    )
    augment: bool | None = opt(
        None,
        "random hidden-unit permutations of each pair (default: on for the chunk tokenizer, off for neuron, "
        "which is equivariant by construction so augmentation only costs time)",
    )
    output_weight: float = opt(
        0.0,
        "weight of a function-space term: MSE between the outputs of the predicted and the true future "
        "networks on fixed probe inputs (relative to the outputs' variance), weighted over timesteps by "
        "--output-schedule; 0 = parameter MSE only",
    )
    output_schedule: str = opt(
        "signal",
        "the function-space term's weight per timestep: signal (alpha_bar_t, nothing at pure noise) or "
        "flat (the same at every timestep, a sample's first prediction from pure noise included)",
    )
    output_probes: int = opt(
        256, "probe inputs of the function-space term (train-split inputs or visited states)"
    )
    buffer_runs: int = opt(512, "runs held in memory by the pair stream")
    refresh_runs: int = opt(8, "runs re-read per step")
    normalize: str = opt("per_tensor", "parameter normalisation: per_tensor or global")
    num_workers: int = opt(1, "dataloader worker processes (0 = load in the main process)")
    seed: int = opt(0, "seed of model init and data stream")
    save_every: int = opt(1000, "steps between accelerate checkpoints")
    eval_every: int = opt(1000, "steps between validation (prompt alignment on val-split runs)")
    eval_nets: int = opt(8, "val-split networks in each validation")
    log_with: str = opt("", "accelerate tracker: tensorboard or wandb (opt-in)")
    step_log: str = opt(
        "",
        "append one JSON line per batch to this file: its member's hidden widths, its pairs, and the seconds "
        "spent waiting for it and in the whole step (step times per member on a mixed zoo)",
    )
    resume: bool = opt(False, "continue from the latest checkpoint in <out>/state")


def model_config(
    preset: str, tokenizer: str, width: int, depth: int, heads: int, edge_width: int
) -> ModelConfig:
    """The preset's architecture with the ``--tokenizer``/``--width``/``--depth``/``--heads``/``--edge-width``
    overrides; bad values exit with the flag named."""
    try:
        return preset_config(preset, tokenizer, width, depth, heads, edge_width)
    except GptParamsError as e:  # the message names the field first: name it as the flag
        field = r"\b(preset|tokenizer|width|depth|heads|edge_width)\b"
        fail(re.sub(field, lambda m: "--" + m[1].replace("_", "-"), str(e), count=1))


def lr_lambda(warmup_steps: int, max_steps: int, max_minutes: float, elapsed_minutes: Callable[[], float]):
    """Warm-up, then cosine decay to zero at ``max_steps`` or, with ``max_minutes``, at the time
    budget if that comes first (``elapsed_minutes()`` counts from this launch)."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
        if max_minutes:
            progress = max(progress, elapsed_minutes() / max_minutes)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def ema_update(decay: float):
    """EMA with warm-up, so short runs do not sample from weights dominated by the initialisation."""

    def update(ema_params: list[torch.Tensor], params: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        d = min(decay, (1.0 + float(n_averaged)) / (10.0 + float(n_averaged)))
        for e, p in zip(ema_params, params, strict=True):
            e.lerp_(p, 1.0 - d)

    return update


def fit_normalizer(zoo: Zoo, rows: np.ndarray, per_tensor: bool, seed: int) -> tuple[ParamNormalizer, tuple]:
    """The parameter normaliser of 256 train runs and the normalised range ``(low, high)`` ``(D,)``
    their checkpoints span (the sampler clamps its predictions to it)."""
    pick = np.random.default_rng(seed).choice(rows, size=min(256, len(rows)), replace=False)
    theta = np.concatenate([zoo.params(int(r)) for r in np.sort(pick)])  # (n * K, D)
    norm = ParamNormalizer.fit(theta, zoo.layout, per_tensor=per_tensor)
    z = norm.normalize(torch.from_numpy(theta))
    return norm, (z.min(0).values, z.max(0).values)


def fit_role_normalizer(zoo: Zoo, rows: np.ndarray, roles: tuple[str, ...], seed: int, width_law: bool):
    """A mixed zoo's :class:`RoleNormalizer` from 256 train runs of any members, and the normalised
    range ``(low, high)`` ``(roles,)`` of each role over their checkpoints."""
    pick = np.sort(np.random.default_rng(seed).choice(rows, size=min(256, len(rows)), replace=False))
    members = {m: zoo.make_task(member=m) for m in np.unique(zoo.member[pick]).tolist()}
    samples = [(zoo.params(int(r)), members[int(zoo.member[r])]) for r in pick]  # ((K, D_r), task)
    norm = RoleNormalizer.fit(
        roles, [(theta, t.layout, t.roles, t.fan_in) for theta, t in samples], width_law
    )
    low, high = torch.full((len(roles),), np.inf), torch.full((len(roles),), -np.inf)
    for theta, t in samples:
        z = norm.for_member(t.layout, t.roles, t.fan_in).normalize(torch.from_numpy(theta))  # (K, D_r)
        plan_ids = role_plan(t.layout, t.symmetries, t.roles, t.family).role_id
        for r in plan_ids.unique().tolist():
            vals = z[:, plan_ids == r]
            low[r], high[r] = min(low[r], vals.min()), max(high[r], vals.max())
    seen = torch.isfinite(low)
    return norm, (torch.where(seen, low, -10.0), torch.where(seen, high, 10.0))


def make_output_loss(
    zoo: Zoo,
    rows: np.ndarray,
    task: Task,
    normalizer: ParamNormalizer,
    device: torch.device,
    n_probes: int,
    seed: int,
    members: dict[int, tuple[Task, ParamNormalizer]] | None = None,
):
    """The function-space term's per-network distance ``(B,)`` between normalised parameter batches
    ``(B, D)``: mean squared difference of the two networks' outputs on ``n_probes`` fixed
    inputs, divided by the variance of zoo networks' outputs there (so it is scale-free).

    A mixed zoo passes ``members`` (member -> its task and normaliser): the term is then called as
    ``output_loss(pred, target, member)``, with one set of probe inputs and one scale for the family."""
    rng = np.random.default_rng(seed)
    if members is None:
        bank = {None: torch.from_numpy(zoo.sample_checkpoints(rows, BANK_SIZE, rng))}  # (n, D)
        members = {None: (task, normalizer)}
    else:  # BANK_SIZE checkpoints of train runs of any members, grouped by member
        picks = rng.choice(rows, size=BANK_SIZE, replace=len(rows) < BANK_SIZE)
        ks = rng.integers(zoo.n_ckpts, size=BANK_SIZE)
        bank = {}
        for r, k in zip(picks.tolist(), ks.tolist(), strict=True):
            bank.setdefault(int(zoo.member[r]), []).append(torch.from_numpy(zoo.checkpoint(r, k)))
        bank = {m: torch.stack(v) for m, v in bank.items()}  # member -> (n_m, D_m)
    try:
        probes = task.probe_inputs(next(iter(bank.values())), n_probes, seed).to(device)  # (S, ...)
    except (NotImplementedError, ValueError) as e:
        fail(f"--output-probes {n_probes}: {e}")
    with torch.no_grad():
        outs = [members[m][0].outputs(b.to(device), probes).float() for m, b in bank.items()]  # (n_m, S, O)
        scale = torch.cat(outs).var().clamp_min(1e-8)

    def output_loss(pred: torch.Tensor, target: torch.Tensor, member: int | None = None) -> torch.Tensor:
        net, norm = members[member]
        a = net.outputs(norm.denormalize(pred), probes)  # (B, S, O)
        with torch.no_grad():
            b = net.outputs(norm.denormalize(target), probes)
        return (a.float() - b.float()).pow(2).mean(dim=(1, 2)) / scale  # (B,)

    return output_loss


def latest_checkpoint(state_dir: Path) -> tuple[Path, int]:
    """The newest ``state/step-N`` accelerate checkpoint and its step N."""
    ckpts = sorted(state_dir.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    if not ckpts:
        fail(f"--resume given but {str(state_dir)!r} holds no checkpoint")
    return ckpts[-1], int(ckpts[-1].name.split("-")[1])


def make_validate(task: Task, zoo: Zoo, n_nets: int, normalizer, clamp, dcfg, meta) -> Callable:
    """``validate(model) -> {member: R^2}``: G.pt's prompt alignment of ``model`` on the first
    ``n_nets`` val-split inits, through :meth:`LearnedOptimizer.step` (5 prompts, DDIM-5, one
    sample). A single-architecture zoo reports one entry, keyed ``""``; a mixed zoo its narrowest,
    middle and widest members that have val runs, keyed by their labels. Empty without val runs."""
    if zoo.mixed:
        held = [m for m in range(len(zoo.members)) if len(zoo.runs_of_member(m, "val"))]
        held.sort(key=lambda m: zoo.make_task(member=m).layout.numel)
        picks = sorted({held[0], held[len(held) // 2], held[-1]}, key=held.index) if held else []
        groups = [(zoo.make_task(member=m), zoo.runs_of_member(m, "val")) for m in picks]
        groups = [(t.label, t, rows) for t, rows in groups]
    else:
        groups = [("", task, zoo.runs("val"))] if len(zoo.runs("val")) else []
    inits = [
        (label, t, torch.stack([torch.from_numpy(zoo.checkpoint(int(r), 0)) for r in rows[:n_nets]]))
        for label, t, rows in groups
    ]  # (label, member task, (N, D_member) inits)

    def validate(model: ParamDiffusionTransformer) -> dict[str, float]:
        res = {}
        for label, t, theta in inits:
            opt = LearnedOptimizer(Exported(model.eval(), normalizer, clamp, dcfg, meta), t)
            res[label] = prompt_alignment(
                opt, theta, n_prompts=5, num_inference_steps=5, guidance_scale=1.0, num_samples=1,
                generator=torch.Generator().manual_seed(0),
            )["r2"]  # fmt: skip
        model.train()
        return res

    return validate


def main() -> None:
    # -- setup: flags, zoo, task, accelerator ------------------------------------------------------
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, TrainConfig)
    cfg = from_args(TrainConfig, parser.parse_args())
    mcfg = model_config(
        cfg.preset, cfg.tokenizer, cfg.width, cfg.depth, cfg.heads, cfg.edge_width
    )  # before the zoo is read
    if cfg.output_weight < 0 or cfg.output_probes < 1:
        fail(
            f"--output-weight {cfg.output_weight} / --output-probes {cfg.output_probes}; "
            "expected a weight >= 0 and at least 1 probe"
        )
    if cfg.output_schedule not in OUTPUT_SCHEDULES:
        fail(f"--output-schedule {cfg.output_schedule!r}; expected {' or '.join(OUTPUT_SCHEDULES)}")
    if cfg.message_norm not in MESSAGE_NORMS:
        fail(f"--message-norm {cfg.message_norm!r}; expected {' or '.join(MESSAGE_NORMS)}")
    if cfg.grad_probes < 0:
        fail(f"--grad-probes {cfg.grad_probes}; expected 0 (none) or a number of training examples")
    if cfg.edge_rank < 0:
        fail(f"--edge-rank {cfg.edge_rank}; expected 0 (the additive head alone) or a positive rank")
    if not cfg.t_power > 0:
        fail(f"--t-power {cfg.t_power}; expected a positive power (1: uniform timesteps)")
    if not math.isfinite(cfg.member_power):
        fail(f"--member-power {cfg.member_power}; expected a finite power (0: members drawn by their runs)")
    if cfg.batch_params < 0 or cfg.batch_units < 0:
        fail(
            f"--batch-params {cfg.batch_params} / --batch-units {cfg.batch_units}; expected caps >= 0 (0: no cap)"
        )
    if cfg.step_log and not Path(cfg.step_log).parent.is_dir():
        fail(f"--step-log {cfg.step_log}: no directory {Path(cfg.step_log).parent}; expected a file in one")
    try:
        zoo = Zoo(cfg.zoo)
    except GptParamsError as e:
        fail(str(e))
    task = zoo.make_task()  # a mixed zoo: the family's default member (it knows the family)
    if zoo.mixed:
        if mcfg.tokenizer != "role":
            if cfg.tokenizer:
                fail(f"--tokenizer {cfg.tokenizer!r}: a mixed zoo's model uses the role tokenizer")
            mcfg.tokenizer = "role"
        mcfg.size_embedding, mcfg.edge_messages = cfg.size_embedding, cfg.edge_messages
        mcfg.message_norm, mcfg.block_messages = cfg.message_norm, cfg.block_messages
        mcfg.edge_rank, mcfg.grad_probes = cfg.edge_rank, cfg.grad_probes
        if cfg.grad_probes:
            try:  # the task has training examples and enough of them
                task.probe_gradient(torch.zeros(1, task.layout.numel), cfg.grad_probes)
            except (ValueError, NotImplementedError) as e:
                fail(f"--grad-probes {cfg.grad_probes}: {e}")
    elif cfg.grad_probes:
        fail(
            f"--grad-probes {cfg.grad_probes}: a mixed zoo's option (harvest --architectures mixed); this zoo holds one architecture"
        )
    elif mcfg.tokenizer == "role":
        fail(
            "--tokenizer role serves a mixed zoo (harvest --architectures mixed); this zoo holds one architecture"
        )
    metric = cfg.metric or task.objective
    if metric not in zoo.metrics or metric.startswith("test"):
        fail(f"--metric {metric!r} not usable; choose a train/val metric of {sorted(zoo.metrics)}")
    train_rows = zoo.runs("train")
    if len(train_rows) == 0:
        fail(f"{cfg.zoo!r} has no train-split runs")
    try:  # as the accelerator will place this process: a GPU where there is one
        precision, slow = resolve_mixed_precision(
            cfg.mixed_precision, "cuda" if torch.cuda.is_available() else "cpu"
        )
    except GptParamsError as e:
        fail(f"--{str(e).replace(' ', '-', 1)}")
    if slow:
        print(f"train/diffuse.py: --mixed-precision {cfg.mixed_precision}: {slow}", file=sys.stderr)
    cfg = replace(cfg, mixed_precision=precision)  # the export records the precision trained in
    out, state_dir = Path(cfg.out), Path(cfg.out) / "state"
    acc = Accelerator(
        gradient_accumulation_steps=cfg.grad_accum,
        mixed_precision=cfg.mixed_precision,
        log_with=cfg.log_with or None,
        project_dir=str(out),
    )
    set_seed(cfg.seed)

    # -- model: normaliser, denoiser, EMA, optimiser, schedule; resumed state -------------------------
    if zoo.mixed:
        normalizer, clamp = fit_role_normalizer(zoo, train_rows, tuple(task.family), cfg.seed, cfg.width_law)
    else:
        normalizer, clamp = fit_normalizer(zoo, train_rows, cfg.normalize == "per_tensor", cfg.seed)
    members = {}  # a mixed zoo: member -> (its task, its normaliser)
    if zoo.mixed:
        if cfg.output_weight or cfg.grad_probes:  # their examples: loaded once, shared by every member
            _ = task.data
        members = {m: zoo.member_options[m].get("hidden") for m in range(len(zoo.members))}
        members = {m: task if h is None else task.member(h) for m, h in members.items()}
        members = {m: (t, normalizer.for_member(t.layout, t.roles, t.fan_in)) for m, t in members.items()}
    output_loss = None
    if cfg.output_weight:
        output_loss = make_output_loss(
            zoo, train_rows, task, normalizer, acc.device, cfg.output_probes, cfg.seed, members or None
        )
    dcfg = DiffusionConfig(prompt_dropout=cfg.prompt_dropout)
    if zoo.mixed:
        model = ParamDiffusionTransformer(None, (), mcfg, dcfg, family=task.family)
    else:
        model = ParamDiffusionTransformer(task.layout, task.symmetries, mcfg, dcfg)
    ema = AveragedModel(model, multi_avg_fn=ema_update(cfg.ema_decay), use_buffers=False)
    scheduler = train_scheduler(dcfg)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99)
    )
    launched = time.time()
    elapsed = lambda: (time.time() - launched) / 60  # noqa: E731
    schedule = lr_lambda(cfg.warmup_steps, cfg.max_steps, cfg.max_minutes, elapsed)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model, optimizer, lr_sched = acc.prepare(model, optimizer, lr_sched)
    ema.to(acc.device)
    acc.register_for_checkpointing(ema)
    step = 0
    if cfg.resume:
        ckpt, step = latest_checkpoint(state_dir)
        acc.load_state(str(ckpt))

    # -- data: pairs (theta_start, theta_future) of train-split runs ---------------------------------
    metric_vals = zoo.metrics[metric][train_rows]  # (R, K)
    higher = task.higher_is_better(metric)
    # where training runs end: their final checkpoint, or their best one with --early-stop
    last = best_index(metric_vals, higher) if cfg.early_stop else np.full(len(train_rows), zoo.n_ckpts - 1)
    zoo_summary = {
        "path": str(zoo.path), "runs": int(zoo.n_runs), "train_runs": int(len(train_rows)),
        # where the zoo's runs end (all splits), the bar a one-step update is measured against
        "final_median": {m: float(np.nanmedian(zoo.metrics[m][:, -1])) for m in task.test_metrics if m in zoo.metrics},
    }  # fmt: skip
    finals = metric_vals[np.arange(len(last)), last]  # (R,) where each training run ends
    held = [(t, finals[zoo.member[train_rows] == m]) for m, (t, _) in members.items()] if zoo.mixed else None
    meta = export_meta(
        task, metric, finals, metric_vals, family=zoo.mixed, members=held,
        zoo={**zoo_summary, "harvest": zoo.harvest_config}, train=asdict(cfg),
        n_model_params=count_parameters(acc.unwrap_model(model)),
    )  # fmt: skip
    try:
        pair_cfg = PairConfig(
            metric, init_frac=cfg.init_frac, same_frac=cfg.same_frac, late_bias=cfg.late_bias,
            buffer_runs=cfg.buffer_runs, refresh_runs=cfg.refresh_runs, early_stop=cfg.early_stop,
            augment=mcfg.tokenizer == "chunk" if cfg.augment is None else cfg.augment, higher_is_better=higher,
        )  # fmt: skip
    except GptParamsError as e:
        fail(f"--{str(e).replace('_', '-')}")
    plans, balance = {}, {}
    if zoo.mixed:  # one member per batch; each member's normaliser, layout and plan
        plans = {
            m: role_plan(t.layout, t.symmetries, t.roles, t.family).to(acc.device)
            for m, (t, _) in members.items()
        }
        balance = {m: role_balance(p.role_id) for m, p in plans.items()} if cfg.balance_roles else {}
        stream = MemberPairStream(
            str(zoo.path), {m: zoo.runs_of_member(m, "train") for m in members}, cfg.batch_size, pair_cfg,
            {m: norm for m, (_, norm) in members.items()},
            {m: t.layout for m, (t, _) in members.items()}, {m: t.symmetries for m, (t, _) in members.items()},
            zoo.task, seed=cfg.seed * 1000 + acc.process_index, start_step=step * cfg.grad_accum,
            batch_params=cfg.batch_params, batch_units=cfg.batch_units, member_power=cfg.member_power,
        )  # fmt: skip
    else:
        stream = PairStream(
            str(zoo.path), train_rows, cfg.batch_size, pair_cfg, normalizer, task.layout, task.symmetries,
            zoo.task, seed=cfg.seed * 1000 + acc.process_index, start_step=step * cfg.grad_accum,
        )  # fmt: skip
    loader = DataLoader(
        stream, batch_size=None, num_workers=cfg.num_workers, prefetch_factor=4 if cfg.num_workers else None
    )
    validate = make_validate(task, zoo, cfg.eval_nets, normalizer, clamp, dcfg, meta)
    if acc.is_main_process and cfg.log_with:
        scalars = {k: v for k, v in asdict(cfg).items() if isinstance(v, (int, float, str, bool))}
        acc.init_trackers("gpt-params", config=scalars)

    def export() -> None:
        if acc.is_main_process:
            save_export(out, ema.module, normalizer, clamp, dcfg, meta)

    # -- loop: one optimiser step per batch of pairs; EMA, logs, validation, checkpoints ---------------
    t_data, t_total, seen, seen_params, seen_units = 0.0, 0.0, 0, 0, 0
    units = sum(g.size for g in task.symmetries)  # hidden units (tokens) of a pair; a mixed zoo: per member
    bar = tqdm(total=cfg.max_steps, initial=step, desc="train", disable=not acc.is_main_process)
    it = iter(loader)
    gen = torch.Generator()
    micro = step * cfg.grad_accum  # index into the data stream; noise is seeded from it too
    model.train()
    while step < cfg.max_steps:
        t0 = time.perf_counter()
        batch = {k: v.to(acc.device) for k, v in next(it).items()}
        t1 = time.perf_counter()
        gen.manual_seed(hash((cfg.seed, acc.process_index, micro)) & 0x7FFFFFFF)
        micro += 1
        denoiser, out_loss, weight = model, output_loss, None
        if plans:  # a mixed zoo: this batch's member
            member = int(batch["member"])
            grad = {}
            if mcfg.grad_probes:  # the data's pull at each start, as LearnedOptimizer.step computes it
                net, norm = members[member]
                grad["theta_grad"] = net.probe_gradient(
                    norm.denormalize(batch["theta_start"]), mcfg.grad_probes
                )
            denoiser = functools.partial(model, plan=plans[member], **grad)
            out_loss = output_loss and functools.partial(output_loss, member=member)
            weight = balance.get(member)
        with acc.accumulate(model):
            loss, parts = diffusion_loss(
                denoiser, scheduler, batch["theta_start"], batch["theta_future"], batch["start_metric"],
                batch["prompt"], cfg.prompt_dropout, gen, out_loss, cfg.output_weight, weight, cfg.t_power,
                cfg.output_schedule,
            )  # fmt: skip
            acc.backward(loss)
            if acc.sync_gradients:
                acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            lr_sched.step()
            optimizer.zero_grad(set_to_none=True)
        t_data += t1 - t0
        t_total += time.perf_counter() - t0
        if cfg.step_log and acc.is_main_process:
            with open(cfg.step_log, "a") as f:
                json.dump(
                    {
                        "hidden": list(plans[member].sizes if plans else (g.size for g in task.symmetries)),
                        "pairs": batch["theta_start"].shape[0],
                        "data_s": round(t1 - t0, 5),
                        "step_s": round(time.perf_counter() - t0, 5),
                    },
                    f,
                )
                f.write("\n")
        seen += batch["theta_start"].shape[0]
        seen_params += batch["theta_start"].numel()
        seen_units += batch["theta_start"].shape[0] * (sum(plans[member].sizes) if plans else units)
        if not acc.sync_gradients:
            continue
        ema.update_parameters(acc.unwrap_model(model))
        step += 1
        bar.update(1)
        logs = {
            "loss": loss.item(),
            **{f"loss_{k}": v for k, v in parts.items() if output_loss is not None},
            "lr": lr_sched.get_last_lr()[0],
            "samples_per_s": seen / max(t_total, 1e-9),
            "data_frac": t_data / max(t_total, 1e-9),
        }
        shown = {
            "loss": f"{logs['loss']:.4f}",
            **({"out": f"{parts['output']:.4f}"} if "output" in parts else {}),
        }
        bar.set_postfix(**shown, sps=f"{logs['samples_per_s']:.0f}", data=f"{logs['data_frac']:.1%}")
        if cfg.eval_every and step % cfg.eval_every == 0 and acc.is_main_process:
            r2 = validate(ema.module)  # {member label: R^2}; one entry, "", for one architecture
            if r2:
                logs["val_r2"] = float(np.mean(list(r2.values())))
                logs.update({"val_r2/" + re.sub(r"[^\w.-]+", "_", k): v for k, v in r2.items() if k})
                each = "".join(f", {k} {v:.3f}" for k, v in r2.items() if k)
                bar.write(
                    f"step {step}: loss {logs['loss']:.4f}, val prompt alignment R^2 {logs['val_r2']:.3f}{each}"
                )
        acc.log(logs, step=step)
        timed_out = cfg.max_minutes and time.time() - launched > 60 * cfg.max_minutes
        if (cfg.save_every and step % cfg.save_every == 0) or timed_out or step == cfg.max_steps:
            acc.wait_for_everyone()
            acc.save_state(str(state_dir / f"step-{step}"))
            export()
        if timed_out:
            break
    bar.close()

    # -- export: EMA weights and the export contract (gpt_params.export) -------------------------------
    meta["train_steps"] = step
    meta["timing"] = {
        "data_frac": t_data / max(t_total, 1e-9),
        "samples_per_s": seen / max(t_total, 1e-9),  # training pairs
        "params_per_s": seen_params / max(t_total, 1e-9),  # their parameters (pairs x D, mixed zoos: summed)
        # their hidden units, the tokens a step's cost follows
        "units_per_s": seen_units / max(t_total, 1e-9),
    }
    export()
    acc.end_training()
    if acc.is_main_process:
        print(json.dumps({"out": str(out), "steps": step, **meta["timing"]}))


if __name__ == "__main__":
    main()
