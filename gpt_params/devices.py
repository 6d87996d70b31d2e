"""Torch devices named by users: checked once, with one-line errors."""

from __future__ import annotations

import os

import torch

from gpt_params.errors import GptParamsError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine; a one-line :class:`GptParamsError`
    for an unknown string or an accelerator that is not there."""
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise GptParamsError(f"unknown device {device!r}; expected cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise GptParamsError(f"device {str(device)!r}: CUDA is not available on this machine; use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise GptParamsError(
                f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise GptParamsError(f"device {str(device)!r}: MPS is not available on this machine; use 'cpu'")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise GptParamsError(f"device {str(device)!r} is not supported; expected cpu, cuda, cuda:N or mps")
    return dev


def process_device(device: str | torch.device | None) -> torch.device:
    """:func:`resolve_device`, except that a bare ``cuda`` under a launcher (``accelerate launch``,
    ``torchrun``: ``LOCAL_RANK`` set) means this process's own GPU, ``cuda:LOCAL_RANK``."""
    if str(device) == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return resolve_device(device)
