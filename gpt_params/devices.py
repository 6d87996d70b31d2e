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


def bf16_is_fast(device_type: str) -> bool:
    """Whether bf16 autocast speeds up training on this machine's ``device_type`` (``cpu`` or ``cuda``): a
    CUDA GPU with bf16, or a CPU with the instructions oneDNN computes bf16 with (AVX-512, AMX). On other
    CPUs (AVX2 only) bf16 matrix products are emulated and run many times slower than fp32."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        try:  # a private op of PyTorch's oneDNN build: absent, assume emulated bf16 (fp32 is then the safe pick)
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def resolve_mixed_precision(precision: str, device_type: str) -> tuple[str, str | None]:
    """``precision`` (``no``, ``fp16``, ``bf16`` or ``auto``) as accelerate takes it, and a warning where
    the choice is slow here: ``auto`` is ``bf16`` where :func:`bf16_is_fast`, else ``no``."""
    if precision not in ("no", "fp16", "bf16", "auto"):
        raise GptParamsError(f"mixed precision {precision!r}; expected no, fp16, bf16 or auto")
    fast = bf16_is_fast(device_type)
    if precision == "auto":
        return ("bf16" if fast else "no"), None
    if precision == "bf16" and not fast:
        return precision, (
            f"bf16 on this {device_type.upper()} ({torch.backends.cpu.get_cpu_capability()}) is emulated and "
            "runs many times slower than fp32; 'auto' or 'no' trains in fp32 here"
            if device_type == "cpu"
            else f"bf16 is not supported on this {device_type} device"
        )
    return precision, None
