"""Exported models: ``model.safetensors`` (EMA weights, parameter normaliser, clamp range) plus
``config.json`` (everything needed to rebuild and sample the model without the zoo or training code)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save

from gpt_params.critic import MetricCritic
from gpt_params.diffusion import DiffusionConfig
from gpt_params.errors import GptParamsError
from gpt_params.layout import ParamLayout, RolePlan, role_plan
from gpt_params.model import ModelConfig, ParamDiffusionTransformer
from gpt_params.normalize import ParamNormalizer, RoleNormalizer
from gpt_params.tasks import get_task
from gpt_params.tasks.base import Task

EXPORT_VERSION = 1
WEIGHTS, CONFIG = "model.safetensors", "config.json"
# what ``num_samples > 1`` candidates become: the best one, their average, the one nearest the prompt,
# or the one the model's learned critic predicts nearest the prompt (nothing measured)
COMBINE = ("best", "mean", "nearest", "critic")
# the metadata the optimizer depends on; :func:`export_meta` builds it, :func:`load_export` checks it
REQUIRED_META = (
    "task",
    "layout",
    "metric",
    "metric_range",
    "best_prompt",
)  # a family's: "family", not "layout"


def export_meta(
    task: Task,
    metric: str,
    final_metric: np.ndarray,
    all_metric: np.ndarray,
    family: bool = False,
    members: list[tuple[Task, np.ndarray]] | None = None,
    **extra,
) -> dict:
    """The export's contract with :class:`~gpt_params.optimizer.LearnedOptimizer`: the task and its
    layout, the conditioning ``metric``, the range of it the model was trained on (``all_metric``,
    every checkpoint of the training runs) and its best prompt: the value the best 5% of training
    runs end at (``final_metric`` ``(R,)``, where each run ends), reachable unlike the zoo's single best
    value. ``extra`` (zoo and training summaries) is stored alongside. A ``family`` model serves every
    member of ``task``'s family: its meta names the family's roles (``family``) instead of a layout,
    and ``members`` (each member task the zoo held with its runs' final metric) gives each member's own
    best prompt (``member_best_prompts``; see :func:`best_prompt_for`)."""
    if metric not in task.metric_names:
        raise GptParamsError(f"metric {metric!r} is not one of task {task.name!r}'s {task.metric_names}")
    finite = np.isfinite(all_metric)
    if not finite.any():
        raise GptParamsError(f"no finite {metric} value to train on")
    higher = task.higher_is_better(metric)
    if family and task.family is None:
        raise GptParamsError(f"{task.name} is one architecture, not a family")
    where = {"family": list(task.family)} if family else {
        **({"task_options": task.options} if task.options else {}),
        "layout": task.layout.to_json(),
    }  # fmt: skip
    q = 0.95 if higher else 0.05
    per_member = [
        {"task_options": t.options, "tensors": len(t.layout.names), "params": t.layout.numel,
         "best_prompt": float(np.nanquantile(f, q))}
        for t, f in (members or []) if np.isfinite(f).any()
    ]  # fmt: skip
    return {
        "task": task.name,
        **where,
        "metric": metric,
        "metric_range": [float(all_metric[finite].min()), float(all_metric[finite].max())],
        "best_prompt": float(np.nanquantile(final_metric, q)),
        **({"member_best_prompts": per_member} if family and per_member else {}),
        **extra,
    }


def best_prompt_for(meta: dict, task: Task) -> float:
    """The best prompt of an export for networks of ``task``. A family model's members differ in what
    they can reach (a width-4 MLP cannot reach a width-64 one's loss): the member's own entry where
    its zoo held it, else that of the held member with the same number of layers nearest in
    log-widths (an MLP's hidden widths; parameter count where a member has none), else the export's
    overall best prompt. Widths, not parameter count: 784-69-4-10 has as many parameters as
    784-64-64-10 but, through its 4-unit bottleneck, reaches a far worse loss."""
    entries = meta.get("member_best_prompts") if "family" in meta else None
    if not entries:
        return float(meta["best_prompt"])
    for e in entries:
        if e["task_options"] == task.options:
            return float(e["best_prompt"])
    n, d, hidden = len(task.layout.names), task.layout.numel, task.options.get("hidden")

    def distance(e: dict) -> float:
        theirs = e["task_options"].get("hidden")
        if hidden is None or theirs is None or len(theirs) != len(hidden):
            return abs(math.log(e["params"] / d))
        return math.dist([math.log(h) for h in hidden], [math.log(h) for h in theirs])

    e = min(entries, key=lambda e: (e["tensors"] != n, distance(e), e["params"]))
    return float(e["best_prompt"])


@dataclass
class Exported:
    """A loaded export: the denoiser, how to (de)normalise, and the metadata it was trained with.

    A family model (``model.family`` set) holds a :class:`RoleNormalizer` and a clamp range per role;
    :meth:`member` expands them for one member."""

    model: ParamDiffusionTransformer
    normalizer: ParamNormalizer | RoleNormalizer
    clamp: (
        tuple[torch.Tensor, torch.Tensor] | None
    )  # normalised (low, high) per coordinate (family: per role)
    diffusion: DiffusionConfig
    meta: dict  # task, metric, metric_range, best_prompt, zoo and training summaries
    critic: MetricCritic | None = None  # a learned metric predictor (train/critic.py), if fitted
    _members: dict = field(default_factory=dict, repr=False)  # task label -> member(): built once

    def member(self, task: Task) -> tuple[ParamNormalizer, tuple | None, RolePlan | None]:
        """The normaliser, clamp range ``(D,)`` and plan (None for a single-layout model) with which
        the model samples networks of ``task``, a member of its family."""
        if self.model.family is None:
            return self.normalizer, self.clamp, None
        if task.label not in self._members:
            self._members[task.label] = self._expand(task)
        return self._members[task.label]

    def _expand(self, task: Task) -> tuple[ParamNormalizer, tuple | None, RolePlan]:
        if (
            task.name != self.meta["task"]
            or task.family is None
            or list(task.family) != list(self.model.family)
        ):
            raise GptParamsError(
                f"{task.label} is not a member of the family this model serves ({self.meta['task']})"
            )
        device = self.model.sqrt_abar.device
        plan = role_plan(task.layout, task.symmetries, task.roles, self.model.family).to(device)
        norm = self.normalizer.for_member(task.layout, task.roles, task.fan_in)
        clamp = None if self.clamp is None else (self.clamp[0][plan.role_id], self.clamp[1][plan.role_id])
        return ParamNormalizer(norm.mean.to(device), norm.std.to(device)), clamp, plan


def save_export(
    out_dir: str | Path,
    model: ParamDiffusionTransformer,
    normalizer: ParamNormalizer,
    clamp: tuple[torch.Tensor, torch.Tensor] | None,
    diffusion: DiffusionConfig,
    meta: dict,
    weights_dtype: torch.dtype | None = None,
    critic: MetricCritic | None = None,
) -> Path:
    """Write an export to ``out_dir``. ``weights_dtype`` (e.g. ``torch.float16``, to ship a model at
    half the size) applies to the learned parameters of the network and of the ``critic`` only;
    buffers (the noise schedule, the critic's probes), the normaliser and the clamp range stay
    float32. Loading casts everything back to float32."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = _module_tensors("model", model, weights_dtype)
    if critic is not None:
        tensors.update(_module_tensors("critic", critic, weights_dtype))
    tensors.update({k: v.cpu().contiguous() for k, v in normalizer.state().items()})
    if clamp is not None:
        tensors["clamp.low"], tensors["clamp.high"] = clamp[0].cpu().contiguous(), clamp[1].cpu().contiguous()
    save_tensors(tensors, out / WEIGHTS)
    config = {
        "export_version": EXPORT_VERSION,
        "model": model.config.to_dict(),
        "diffusion": diffusion.to_dict(),
        **{k: v for k, v in meta.items() if k != "critic"},
        "weights_dtype": str(weights_dtype or torch.float32).removeprefix("torch."),
    }
    if critic is not None:
        config["critic"] = critic.config()
    tmp = out / f".{CONFIG}.tmp"
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True))
    tmp.replace(out / CONFIG)
    return out


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Write a safetensors file atomically (a temporary beside it, then a rename), with the
    umask's permissions: safetensors' ``save_file`` creates files owner-only (0600)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(save(tensors))
    tmp.replace(path)


def _module_tensors(prefix: str, module: torch.nn.Module, weights_dtype: torch.dtype | None) -> dict:
    """``module``'s state as ``{prefix.name: tensor}``, learned parameters cast to ``weights_dtype``."""
    learned = {name for name, _ in module.named_parameters()}
    return {
        f"{prefix}.{k}": (v.to(weights_dtype) if weights_dtype is not None and k in learned else v)
        .detach()
        .cpu()
        .contiguous()
        for k, v in module.state_dict().items()
    }


def _load_module(module: torch.nn.Module, prefix: str, tensors: dict, weights: Path) -> None:
    state = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise GptParamsError(
            f"{str(weights)!r} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def export_task(meta: dict, **options) -> Task:
    """The task (family member) an export's ``meta`` was trained for; ``options`` (``data_dir``, ...) go
    to :func:`~gpt_params.tasks.get_task` with it."""
    return get_task(meta["task"], **meta.get("task_options", {}), **options)


def load_export(path: str | Path, device: str | torch.device | None = None) -> Exported:
    """Load an export directory; raises :class:`GptParamsError` naming what is missing or wrong."""
    path = Path(path)
    cfg_file, weights = path / CONFIG, path / WEIGHTS
    for f in (cfg_file, weights):
        if not f.is_file():
            raise GptParamsError(
                f"model export {str(path)!r} lacks {f.name}; expected {CONFIG} and {WEIGHTS}"
            )
    try:
        meta = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise GptParamsError(f"{str(cfg_file)!r} is not valid JSON ({e})") from None
    if meta.get("export_version") != EXPORT_VERSION:
        raise GptParamsError(
            f"{str(path)!r} has export version {meta.get('export_version')}, expected {EXPORT_VERSION}"
        )
    required = [("family" if k == "layout" and "family" in meta else k) for k in REQUIRED_META]
    missing = [k for k in required if k not in meta]
    if missing:
        raise GptParamsError(f"{str(cfg_file)!r} lacks {missing}; expected the keys {required}")
    try:
        tensors = load_file(str(weights), device="cpu")
        tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    except Exception as e:  # safetensors raises its own error types for corrupt headers/data
        raise GptParamsError(f"{str(weights)!r} is not a readable safetensors file ({e})") from None
    task = export_task(meta)
    diffusion = DiffusionConfig(**meta["diffusion"])
    if "family" in meta:
        if task.family is None or list(task.family) != meta["family"]:
            raise GptParamsError(f"{str(path)!r} serves a {meta['task']} family with roles {meta['family']}; "
                                 f"the task has {list(task.family or [])}")  # fmt: skip
        model = ParamDiffusionTransformer(
            None, (), ModelConfig(**meta["model"]), diffusion, family=task.family
        )
        normalizer = RoleNormalizer.from_state(tuple(task.family), tensors)
    else:
        layout = ParamLayout.from_json(meta["layout"])
        if layout != task.layout:
            raise GptParamsError(
                f"{str(path)!r} was trained for layout {layout.describe()}, task has {task.layout.describe()}"
            )
        model = ParamDiffusionTransformer(layout, task.symmetries, ModelConfig(**meta["model"]), diffusion)
        normalizer = ParamNormalizer.from_state(tensors)
    _load_module(model, "model", tensors, weights)
    model.eval().to(device or "cpu")
    critic = None
    if "critic" in meta:
        try:
            critic = MetricCritic.from_config(task, meta["critic"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise GptParamsError(f"{str(cfg_file)!r} has an unreadable critic entry ({e!r})") from None
        _load_module(critic, "critic", tensors, weights)
        critic.eval().to(device or "cpu")
    clamp = (
        (tensors["clamp.low"].to(device or "cpu"), tensors["clamp.high"].to(device or "cpu"))
        if "clamp.low" in tensors
        else None
    )
    meta_only = {k: v for k, v in meta.items() if k not in ("model", "diffusion", "export_version")}
    return Exported(model, normalizer, clamp, diffusion, meta_only, critic)


def convert_export(
    src: str | Path,
    dst: str | Path,
    weights_dtype: torch.dtype = torch.float16,
    default_guidance: float | None = None,
    default_samples: int | None = None,
    default_combine: str | None = None,
    demo_members: Sequence[Sequence[int]] | None = None,
) -> Path:
    """Copy the export ``src`` to ``dst`` with its learned weights stored as ``weights_dtype``
    (how shipped models are made: ``gpt-params export runs/X --out gpt_params/pretrained/NAME``).
    ``default_guidance`` sets the classifier-free guidance scale the model samples with when a call
    names none (stored in the config; 1 when absent); ``default_samples`` and ``default_combine`` the
    candidates per update and how one is kept (1 and "best" when absent; "critic" needs a critic).
    ``demo_members`` (a family model's only) sets the members ``gpt-params demo`` shows it on, each a
    tuple of hidden widths; every one is checked to be a member of the family."""
    exp = load_export(src)
    meta = dict(exp.meta)
    if demo_members is not None:
        if "family" not in meta:
            raise GptParamsError(f"demo members are for family models; {str(src)!r} serves one architecture")
        task = get_task(meta["task"])
        if not demo_members:
            raise GptParamsError("demo members: expected at least one member's hidden widths, got none")
        for h in demo_members:
            task.member(tuple(h))  # a TaskError naming the family for a non-member
        meta["demo_members"] = [[int(w) for w in h] for h in demo_members]
    if default_guidance is not None:
        if not math.isfinite(default_guidance) or default_guidance <= 0:
            raise GptParamsError(f"default guidance must be a finite number > 0, got {default_guidance!r}")
        meta["default_guidance"] = float(default_guidance)
    if default_samples is not None:
        if not isinstance(default_samples, int) or default_samples < 1:
            raise GptParamsError(f"default samples must be a positive integer, got {default_samples!r}")
        meta["default_samples"] = default_samples
    if default_combine is not None:
        if default_combine not in COMBINE:
            raise GptParamsError(f"default combine must be one of {COMBINE}, got {default_combine!r}")
        if default_combine == "critic" and exp.critic is None:
            raise GptParamsError(f"default combine 'critic' needs a critic and {str(src)!r} has none")
        meta["default_combine"] = default_combine
    return save_export(
        dst, exp.model, exp.normalizer, exp.clamp, exp.diffusion, meta, weights_dtype, exp.critic
    )
