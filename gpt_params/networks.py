"""Users' networks as flat parameter vectors and back: modules and state dicts of any names whose
tensors have a layout's shapes in its order, flat ``(D,)`` vectors, ``(B, D)`` batches, lists of those."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn

from gpt_params.errors import GptParamsError, LayoutError
from gpt_params.layout import ParamLayout


def as_batch(
    params, layout: ParamLayout, expected: str
) -> tuple[torch.Tensor, Callable[[torch.Tensor], object]]:
    """``params`` -> ``(B, D)`` float tensor on the input's device, and a function turning a result
    ``(B, D)`` back into the input's kind, names, dtype and device (the input itself is never changed).

    Modules and state dicts are matched by :meth:`ParamLayout.match`: by name, else by position;
    ``expected`` describes the layout in the error for a network that matches neither."""
    if isinstance(params, (list, tuple)):
        if not params:
            raise GptParamsError("params is an empty list; expected networks to update")
        parts = [as_batch(p, layout, expected) for p in params]
        theta = torch.cat([t.to(parts[0][0].device) for t, _ in parts])
        offsets = np.cumsum([0, *(len(t) for t, _ in parts)])

        def rebuild_list(out: torch.Tensor):
            return type(params)(
                r(out[a:z]) for (_, r), a, z in zip(parts, offsets[:-1], offsets[1:], strict=True)
            )

        return theta, rebuild_list
    if isinstance(params, nn.Module):
        named = list(params.named_parameters())
        names = layout.match(named, expected)
        own = dict(named)
        theta = _finite(torch.cat([own[n].detach().reshape(-1) for n in names])[None].float())  # (1, D)

        def rebuild_module(out: torch.Tensor) -> nn.Module:
            new = copy.deepcopy(params)
            mine = dict(new.named_parameters())
            with torch.no_grad():
                for n, t in zip(names, layout.unflatten(out[0]).values(), strict=True):
                    mine[n].copy_(t)
            return new

        return theta, rebuild_module
    if isinstance(params, Mapping):
        names = layout.match([(k, v) for k, v in params.items() if torch.is_tensor(v)], expected)
        theta = _finite(torch.cat([params[n].detach().reshape(-1) for n in names])[None].float())  # (1, D)

        def rebuild_state(out: torch.Tensor) -> dict:
            new = {
                k: v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v) for k, v in params.items()
            }
            for n, t in zip(names, layout.unflatten(out[0]).values(), strict=True):
                new[n] = t.to(dtype=params[n].dtype, device=params[n].device).clone()
            return new

        return theta, rebuild_state
    if torch.is_tensor(params):
        if params.dim() not in (1, 2) or params.shape[-1] != layout.numel:
            raise LayoutError(
                f"parameter tensor has shape {tuple(params.shape)}; expected ({layout.numel},) or "
                f"(batch, {layout.numel}) for {expected}"
            )
        theta = _finite(params.detach().reshape(-1, layout.numel).float())
        single, dtype, device = params.dim() == 1, params.dtype, params.device

        def rebuild_tensor(out: torch.Tensor) -> torch.Tensor:
            out = out.to(dtype=dtype, device=device)
            return out[0] if single else out

        return theta, rebuild_tensor
    raise GptParamsError(
        f"params of type {type(params).__name__} not understood; expected an nn.Module, a state_dict, "
        "a flat or (batch, D) tensor, or a list of those"
    )


def _finite(theta: torch.Tensor) -> torch.Tensor:
    bad = (~torch.isfinite(theta)).sum().item()
    if bad:
        raise GptParamsError(f"params contain {bad} NaN or Inf values; expected finite parameters")
    return theta
