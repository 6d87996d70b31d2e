"""``LearnedOptimizer``: one G.pt update of a network, from Python.

    >>> opt = LearnedOptimizer.from_pretrained("mnist-mlp-loss")
    >>> net = opt.task.build(seed=123)                      # an unseen random init
    >>> better = opt.step(net, target_loss=opt.best_prompt)  # a new nn.Module; ``net`` is untouched

``params`` may be any ``nn.Module`` or ``state_dict`` whose parameter tensors have the task's shapes in
the task's order (the task's own module, an ``nn.Sequential``, a class of the user's with other names,
an SB3 policy), a flat ``(D,)`` tensor, a ``(B, D)`` batch, or a list of any of those; the result has
the same kind, names and device. This class is the only code that computes a G.pt update: the
evaluation scripts, ``gpt-params demo`` and validation during training all call :meth:`step`.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gpt_params.critic import NO_CRITIC
from gpt_params.devices import resolve_device
from gpt_params.diffusion import SAMPLERS, sample
from gpt_params.errors import GptParamsError
from gpt_params.export import COMBINE, Exported, best_prompt_for, export_task, load_export
from gpt_params.networks import as_batch
from gpt_params.tasks.base import Task

PRETRAINED_DIR = Path(__file__).parent / "pretrained"


def pretrained_names() -> tuple[str, ...]:
    """Names of the models shipped inside the package."""
    if not PRETRAINED_DIR.is_dir():
        return ()
    return tuple(sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / "config.json").is_file()))


@dataclass
class StepReport:
    """What the last :meth:`LearnedOptimizer.step` cost and measured."""

    networks: int
    num_samples: int  # candidates drawn per network (best-of-k or their mean when > 1)
    combine: str  # "best", "mean", "nearest" or "critic"
    sample_seconds: float  # diffusion sampling, all candidates
    select_seconds: float  # scoring candidates (validation split, rollouts or critic; 0 for one sample)
    measure_seconds: float  # measuring ``current_loss`` when it was not given
    # (networks, num_samples) validation metric of each candidate; the critic's prediction with "critic"
    candidate_metrics: list[list[float]] | None
    prompts: list[float]  # the prompt of each network after clamping to what the model can reach

    @property
    def seconds(self) -> float:
        return self.sample_seconds + self.select_seconds + self.measure_seconds


class LearnedOptimizer:
    """A pretrained G.pt model that updates networks of one task toward a prompted metric."""

    def __init__(self, exported: Exported, task: Task | None = None) -> None:
        self.exported = exported
        self.task = task if task is not None else export_task(exported.meta)
        self.metric_name: str = exported.meta["metric"]  # e.g. "val_loss" or "return_mean"
        self.metric: str = self.task.metric_kind(self.metric_name)  # "loss", "error" or "return"
        self.higher_is_better: bool = self.task.higher_is_better(self.metric_name)
        lo, hi = exported.meta["metric_range"]
        self.metric_range: tuple[float, float] = (float(lo), float(hi))
        # the metric the best 5% of the zoo's runs end at; a family model's is the member's own
        self.best_prompt: float = best_prompt_for(exported.meta, self.task)
        # guidance used when a call names none: 1 unless the export sets one (``gpt-params export
        # --default-guidance``), e.g. 4 for CartPole, where it pulls returns up to the prompt
        self.default_guidance: float = float(exported.meta.get("default_guidance", 1.0))
        # candidates per update and how one is kept when a call names none (``gpt-params export
        # --default-samples 8 --default-combine critic``): 1 and "best" unless the export sets them
        self.default_samples: int = int(exported.meta.get("default_samples", 1))
        self.default_combine: str = str(exported.meta.get("default_combine", "best"))
        self.last_report: StepReport | None = None

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, device: str | torch.device | None = None, **task_options
    ) -> LearnedOptimizer:
        """Load a shipped model by name (see :func:`pretrained_names`) or an export directory, onto
        ``device`` (default CPU; an unknown or absent device is a :class:`GptParamsError`).

        ``task_options`` go to :func:`gpt_params.tasks.get_task` (e.g. ``data_dir`` for full MNIST).
        """
        dev = resolve_device(device)
        path = Path(name_or_path)
        # a shipped name wins over a same-named local directory that is not an export
        if not (path / "config.json").exists():
            if str(name_or_path) in pretrained_names():
                path = PRETRAINED_DIR / str(name_or_path)
            elif not path.exists():
                shipped = ", ".join(pretrained_names()) or "none installed"
                raise GptParamsError(
                    f"unknown model {str(name_or_path)!r}: not a directory and not a shipped model "
                    f"(shipped: {shipped})"
                )
        exported = load_export(path, device=dev)
        task = export_task(exported.meta, **task_options) if task_options else None
        return cls(exported, task)

    @property
    def device(self) -> torch.device:
        return next(self.exported.model.parameters()).device

    @property
    def has_critic(self) -> bool:
        """Whether the model carries a learned critic (``combine="critic"``; ``train/critic.py``)."""
        return self.exported.critic is not None

    def predict(self, params) -> np.ndarray:
        """The model's metric of each network in ``params`` as its learned critic predicts it, ``(B,)``:
        no data or rollouts (compare :meth:`measure`)."""
        if not self.has_critic:
            raise GptParamsError(NO_CRITIC)
        theta, _, _ = self._to_batch(params)
        return self.exported.critic.predict(theta).numpy()

    # -- public API ------------------------------------------------------------------------------

    def step(
        self,
        params,
        target_loss: float | Sequence[float] | torch.Tensor | None = None,
        *,
        current_loss: float | Sequence[float] | torch.Tensor | None = None,
        num_inference_steps: int = 5,
        guidance_scale: float | None = None,
        num_samples: int | None = None,
        combine: str | None = None,
        sampler: str = "ddim",
        generator: torch.Generator | None = None,
        clamp_prompt: bool = True,
        target_error: float | Sequence[float] | torch.Tensor | None = None,
        target_return: float | Sequence[float] | torch.Tensor | None = None,
        hidden: int | Sequence[int] | None = None,
    ):
        """One G.pt update of ``params`` toward the prompted metric; returns the same kind as ``params``.

        ``target_loss`` is the prompt in the model's own metric (:attr:`metric`); ``target_error`` and
        ``target_return`` are aliases accepted when the model's metric is an error or a return. A
        prompt beyond what the model can reach (better than :attr:`best_prompt`, or worse than the
        worst metric it was trained on) is clamped to the reachable end with a warning;
        ``clamp_prompt=False`` keeps it as given.
        ``current_loss`` (the model's metric of ``params``) is measured on the validation split
        (or by seeded rollouts) when omitted. ``num_samples > 1`` draws that many candidates per network
        and, with ``combine="best"``, keeps the one with the best validation metric, with
        ``combine="nearest"`` the one whose validation metric is nearest the prompt (a precise prompt
        rather than a best step), with ``combine="critic"`` the one whose metric the model's learned
        critic predicts nearest the prompt (no data or rollouts; needs a model with a critic, see
        :attr:`has_critic`), or with ``combine="mean"`` returns their average (the sampler's estimate
        of the mean update, which measures nothing); :attr:`last_report` holds the costs.
        ``guidance_scale``, ``num_samples`` and ``combine`` default to the model's
        :attr:`default_guidance`, :attr:`default_samples` and :attr:`default_combine`; ``sampler`` is
        ``"ddim"`` or ``"ddpm"`` with ``num_inference_steps`` steps.

        A model of an architecture family (:attr:`family`) takes any member: a module or state dict
        is read for its widths; a flat vector needs them named, ``hidden=(64, 32)``.
        """
        theta, rebuild, task = self._to_batch(params, hidden)  # (B, D)
        prompt = self._prompt(target_loss, target_error, target_return, len(theta), clamp_prompt, task)
        kw = self._sampling(num_inference_steps, guidance_scale, num_samples, combine, sampler)
        return rebuild(self._step(theta, prompt, current_loss, generator, task, **kw))

    def optimize(
        self,
        params,
        target_loss: float | Sequence[float] | torch.Tensor | None = None,
        steps: int = 2,
        *,
        current_loss: float | Sequence[float] | torch.Tensor | None = None,
        num_inference_steps: int = 5,
        guidance_scale: float | None = None,
        num_samples: int | None = None,
        combine: str | None = None,
        sampler: str = "ddim",
        generator: torch.Generator | None = None,
        clamp_prompt: bool = True,
        target_error: float | Sequence[float] | torch.Tensor | None = None,
        target_return: float | Sequence[float] | torch.Tensor | None = None,
        hidden: int | Sequence[int] | None = None,
    ):
        """Recursive prompting: ``steps`` updates, each fed the previous output and its measured metric
        (``current_loss``, when given, is the metric of ``params`` and saves measuring it once)."""
        if not isinstance(steps, int) or steps < 1:
            raise GptParamsError(f"steps must be a positive integer, got {steps!r}")
        theta, rebuild, task = self._to_batch(params, hidden)
        prompt = self._prompt(target_loss, target_error, target_return, len(theta), clamp_prompt, task)
        kw = self._sampling(num_inference_steps, guidance_scale, num_samples, combine, sampler)
        for i in range(steps):
            theta = self._step(theta, prompt, current_loss if i == 0 else None, generator, task, **kw)
        return rebuild(theta)

    def vectors(self, params, hidden: int | Sequence[int] | None = None) -> torch.Tensor:
        """The flat parameter vectors ``(B, D)`` of ``params`` in the task's layout, matched as
        :meth:`step` matches them (by name, else by position)."""
        return self._to_batch(params, hidden)[0]

    def measure(self, params, hidden: int | Sequence[int] | None = None) -> np.ndarray:
        """The model's metric (:attr:`metric_name`) of each network in ``params``, shape ``(B,)``."""
        theta, _, task = self._to_batch(params, hidden)
        return self._measure(theta, task)

    # -- internals -------------------------------------------------------------------------------

    def _measure(self, theta: torch.Tensor, task: Task) -> np.ndarray:
        """Tasks score on the CPU, where their data and environments live."""
        return np.asarray(task.evaluate_only(theta.cpu(), (self.metric_name,))[self.metric_name])

    def _sampling(self, num_inference_steps, guidance_scale, num_samples, combine, sampler) -> dict:
        """The sampling settings of a call, the model's defaults filled in, each checked."""
        guidance_scale = self.default_guidance if guidance_scale is None else guidance_scale
        num_samples = self.default_samples if num_samples is None else num_samples
        combine = self.default_combine if combine is None else combine
        if not isinstance(num_samples, int) or num_samples < 1:
            raise GptParamsError(f"num_samples must be a positive integer, got {num_samples!r}")
        if combine not in COMBINE:
            raise GptParamsError(f"combine must be one of {COMBINE}, got {combine!r}")
        if combine == "critic" and num_samples > 1 and not self.has_critic:
            raise GptParamsError(f'combine="critic": {NO_CRITIC}')
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise GptParamsError(
                f"num_inference_steps must be a positive integer, got {num_inference_steps!r}"
            )
        try:
            guidance = float(guidance_scale)
        except (TypeError, ValueError):
            guidance = math.nan
        if not math.isfinite(guidance):
            raise GptParamsError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
        if sampler not in SAMPLERS:
            raise GptParamsError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        return {
            "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance,
            "num_samples": num_samples,
            "combine": combine,
            "sampler": sampler,
        }

    def _sample(
        self,
        theta: torch.Tensor,
        start_metric: torch.Tensor,
        prompt: torch.Tensor,
        num_inference_steps: int,
        guidance_scale: float,
        sampler: str,
        generator: torch.Generator | None,
        task: Task,
    ) -> torch.Tensor:
        """One draw of raw parameters ``(B, D)`` per row of raw ``theta`` ``(B, D)`` (networks of
        ``task``), raw metrics ``(B,)`` and prompts ``(B,)``, on the model's device."""
        exp, metric = self.exported, self.metric_name
        device = self.device
        normalizer, clamp, plan = exp.member(task)
        z = normalizer.normalize(theta.to(device, torch.float32))
        n_probes = exp.model.config.grad_probes
        extra = (
            {"theta_grad": task.probe_gradient(theta.to(device, torch.float32), n_probes)}
            if n_probes
            else None
        )
        out = sample(
            exp.model if plan is None else functools.partial(exp.model, plan=plan),
            exp.diffusion,
            z,
            task.normalize_metric(start_metric.to(device, torch.float32), metric),
            task.normalize_metric(prompt.to(device, torch.float32), metric),
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            sampler=sampler,
            generator=generator,
            clamp=clamp,
            extra=extra,
        )
        return normalizer.denormalize(out)

    def _pick(self, candidates: torch.Tensor, prompt: torch.Tensor, combine: str, task: Task):
        """One network ``(B, D)`` of ``candidates`` ``(B, k, D)`` as ``combine`` says, and the metric
        ``(B, k)`` it chose by (measured, or the critic's prediction; None for ``"mean"``)."""
        b, k, d = candidates.shape
        if combine == "mean":
            return candidates.mean(1), None
        if combine == "critic":
            metrics = self.exported.critic.predict(candidates.reshape(b * k, d)).reshape(b, k).numpy()
        else:
            metrics = self._measure(candidates.reshape(b * k, d), task).reshape(b, k)
        if combine in ("critic", "nearest"):
            pick = np.abs(metrics - prompt.cpu().numpy()[:, None]).argmin(-1)  # (B,)
        else:
            pick = metrics.argmax(-1) if self.higher_is_better else metrics.argmin(-1)
        rows = torch.arange(b, device=candidates.device)
        return candidates[rows, torch.as_tensor(pick, device=candidates.device)], metrics

    def _step(
        self,
        theta: torch.Tensor,
        prompt: torch.Tensor,
        current_loss,
        generator: torch.Generator | None,
        task: Task,
        num_inference_steps: int,
        guidance_scale: float,
        num_samples: int,
        combine: str,
        sampler: str,
    ) -> torch.Tensor:
        """One update of ``theta`` ``(B, D)``, networks of ``task``; returns ``(B, D)`` on the model's device."""
        b, k = len(theta), num_samples
        t0 = time.perf_counter()
        if current_loss is None:
            start = torch.as_tensor(self._measure(theta, task), dtype=torch.float32)
        else:
            start = self._per_network(current_loss, b, "current_loss")
        t1 = time.perf_counter()
        out = self._sample(
            theta.repeat_interleave(k, 0),
            start.repeat_interleave(k),
            prompt.repeat_interleave(k),
            num_inference_steps,
            guidance_scale,
            sampler,
            generator,
            task,
        ).reshape(b, k, -1)  # (B, k, D)
        t2 = time.perf_counter()
        metrics = None
        if k > 1:
            out, metrics = self._pick(out, prompt, combine, task)
        else:
            out = out[:, 0]
        self.last_report = StepReport(
            networks=b,
            num_samples=k,
            combine=combine,
            sample_seconds=t2 - t1,
            select_seconds=time.perf_counter() - t2,
            measure_seconds=t1 - t0 if current_loss is None else 0.0,
            candidate_metrics=metrics.tolist() if metrics is not None else None,
            prompts=prompt.tolist(),
        )
        return out

    def _per_network(self, value, b: int, what: str) -> torch.Tensor:
        v = torch.as_tensor(value, dtype=torch.float32).reshape(-1)
        if v.numel() == 1:
            v = v.expand(b)
        if v.numel() != b:
            raise GptParamsError(
                f"{what} has {v.numel()} values for {b} networks; give one or one per network"
            )
        if not torch.isfinite(v).all():
            raise GptParamsError(f"{what} contains NaN or Inf: {v.tolist()}")
        return v.clone()

    def _prompt(
        self, target_loss, target_error, target_return, b: int, clamp: bool, task: Task
    ) -> torch.Tensor:
        """The prompt per network ``(b,)``, clamped to what the model can reach for ``task``."""
        given = {
            k: v
            for k, v in (
                ("target_loss", target_loss),
                ("target_error", target_error),
                ("target_return", target_return),
            )
            if v is not None
        }
        if len(given) != 1:
            raise GptParamsError(
                f"give exactly one prompt (target_loss, or the alias target_{self.metric}); got {sorted(given) or 'none'}"
            )
        ((name, value),) = given.items()
        if name != "target_loss" and name != f"target_{self.metric}":
            raise GptParamsError(
                f"{name} does not apply: this model is conditioned on {self.metric_name!r}; "
                f"use target_loss or target_{self.metric}"
            )
        prompt = self._per_network(value, b, name)
        lo, hi = self._reachable(task)
        outside = (prompt < lo) | (prompt > hi)
        if outside.any():
            asked = sorted(set(prompt[outside].tolist()))
            what = f"{name} {asked[0] if len(asked) == 1 else asked} lies beyond what the model can reach"
            span = f"[{lo:.4g}, {hi:.4g}] in {self.metric_name}"
            if clamp:
                prompt = prompt.clamp(lo, hi)
                to = sorted(set(prompt[outside].tolist()))
                msg = f"{what} ({span}); clamped to {to[0] if len(to) == 1 else to} (clamp_prompt=False keeps it)"
            else:
                msg = f"{what} ({span}); kept as given (clamp_prompt=False)"
            warnings.warn(msg, stacklevel=3)
        return prompt

    @property
    def reachable(self) -> tuple[float, float]:
        """Prompts the model can reach: from the worst metric it was trained on to :attr:`best_prompt`
        (the value the best 5% of its training runs end at), as ``(low, high)``."""
        return self._reachable(self.task)

    def _reachable(self, task: Task) -> tuple[float, float]:
        """:attr:`reachable` for networks of ``task`` (a family member's best prompt is its own)."""
        best = self.best_prompt if task is self.task else best_prompt_for(self.exported.meta, task)
        lo, hi = self.metric_range
        return (lo, best) if self.higher_is_better else (best, hi)

    @property
    def family(self) -> bool:
        """Whether the model serves a whole architecture family (any member of :attr:`task`'s)."""
        return self.exported.model.family is not None

    def _to_batch(self, params, hidden=None):
        """``params`` -> ``(B, D)`` float tensor on the input's device, a function turning a result
        back into the input's kind, names, dtype and device (:func:`gpt_params.networks.as_batch`),
        and the task (family member) the networks are."""
        if hidden is not None and not self.family:
            raise GptParamsError(f"hidden={hidden!r}: this model serves one architecture, {self.task.label}")
        if not self.family or (hidden is None and _flat(params)):
            task = self.task  # a flat vector is a network of the bound member (``task``)
            if self.family and _numel(params) != task.layout.numel:
                raise GptParamsError(
                    f"a flat vector of {_numel(params)} values is not a {task.label} network "
                    f"({task.layout.numel}); name its member of {task.name} with hidden=(...)"
                )
        else:
            task = self.task.member(hidden) if hidden is not None else self.task.member_of(params)
        theta, rebuild = as_batch(params, task.layout, task.describe_network())
        return theta, rebuild, task


def _flat(params) -> bool:
    """Whether ``params`` are flat vectors (a tensor, or a list of them) rather than modules or state dicts."""
    if isinstance(params, (list, tuple)):
        return bool(params) and all(torch.is_tensor(p) for p in params)
    return torch.is_tensor(params)


def _numel(params) -> int:
    first = params[0] if isinstance(params, (list, tuple)) else params
    return int(first.shape[-1])
