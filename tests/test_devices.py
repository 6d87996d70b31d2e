import pytest
import torch

from gpt_params import devices
from gpt_params.errors import GptParamsError


@pytest.mark.parametrize("fast", [False, True])
def test_auto_precision_is_bf16_only_where_bf16_is_fast(monkeypatch, fast):
    monkeypatch.setattr(devices, "bf16_is_fast", lambda device_type: fast)
    assert devices.resolve_mixed_precision("auto", "cpu") == ("bf16" if fast else "no", None)
    precision, warning = devices.resolve_mixed_precision("bf16", "cpu")
    assert precision == "bf16" and (warning is None) == fast
    if not fast:
        assert "slower than fp32" in warning and torch.backends.cpu.get_cpu_capability() in warning
    assert devices.resolve_mixed_precision("no", "cpu") == ("no", None)


def test_bad_precision_names_the_value():
    with pytest.raises(GptParamsError, match="mixed precision 'fp8'; expected no, fp16, bf16 or auto"):
        devices.resolve_mixed_precision("fp8", "cpu")


def test_bf16_speed_check_answers_for_every_device_type():
    assert isinstance(devices.bf16_is_fast("cpu"), bool)
    assert devices.bf16_is_fast("cuda") == (torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    assert devices.bf16_is_fast("mps") is False
