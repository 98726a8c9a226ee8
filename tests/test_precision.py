"""Precision resolution: ``auto`` follows the hardware, detected both ways by faking it."""

from __future__ import annotations

import pytest
import torch

from rsprompt.engine import precision as prec


@pytest.fixture
def native_bf16(monkeypatch):
    def fake(value: bool):
        monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: value)

    return fake


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "32")])
def test_auto_on_cpu_follows_native_bf16(native_bf16, native, expected):
    native_bf16(native)
    assert prec.resolve_precision("auto", "cpu") == expected
    assert prec.resolve_precision(None, torch.device("cpu")) == expected


@pytest.mark.parametrize("native, expected", [(True, "bf16-mixed"), (False, "32-true")])
def test_trainer_auto_on_cpu(native_bf16, monkeypatch, native, expected):
    native_bf16(native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert prec.trainer_precision("auto", "auto") == expected
    assert prec.trainer_precision("auto", "cpu") == expected


@pytest.mark.parametrize(
    "capability, infer, train", [((8, 0), "bf16", "bf16-mixed"), ((7, 0), "32", "16-mixed")]
)
def test_auto_on_cuda_follows_compute_capability(monkeypatch, capability, infer, train):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert prec.resolve_precision("auto", torch.device("cuda", 0)) == infer
    assert prec.trainer_precision("auto", "gpu") == train


def test_cpuinfo_flags_detection(tmp_path, monkeypatch):
    """The /proc/cpuinfo fallback: only the bf16 flags count, not AVX-512 alone."""
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile\n")
    assert {"avx512_bf16", "avx512f"} <= prec._cpuinfo_flags(str(info))
    monkeypatch.setattr(prec, "_cpuinfo_flags", lambda path="": {"avx2", "avx512f"})
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    prec.cpu_has_native_bf16.cache_clear()
    try:
        assert prec.cpu_has_native_bf16() is False
        monkeypatch.setattr(prec, "_cpuinfo_flags", lambda path="": {"avx2", "amx_bf16"})
        prec.cpu_has_native_bf16.cache_clear()
        assert prec.cpu_has_native_bf16() is True
    finally:
        prec.cpu_has_native_bf16.cache_clear()


def test_explicit_values_and_errors(native_bf16):
    native_bf16(False)
    assert prec.resolve_precision("fp32", "cpu") == "32"
    assert prec.trainer_precision("bf16", "cpu") == "bf16-mixed"
    with pytest.warns(UserWarning, match="emulated"):
        assert prec.resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(prec.PrecisionError, match="only on a GPU"):
        prec.resolve_precision("16", "cpu")
    with pytest.raises(prec.PrecisionError, match="unknown precision 'half'"):
        prec.resolve_precision("half", "cpu")


def test_fp32_only_guard(native_bf16, monkeypatch):
    native_bf16(True)
    monkeypatch.setattr(prec, "FP32_ONLY", frozenset({"spm"}))
    assert prec.resolve_precision("auto", "cpu", model_key="spm") == "32"
    assert prec.resolve_precision("auto", "cpu", model_key="mobanet") == "bf16"


def test_autocast_runs_the_forward_in_bf16_and_32_untouched():
    lin = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with prec.autocast("cpu", "bf16"):
        assert lin(x).dtype == torch.bfloat16
    with prec.autocast("cpu", "32"):
        assert lin(x).dtype == torch.float32


def test_cli_choices_are_the_engines():
    from rsprompt.commands._options import PRECISION_CHOICES

    assert PRECISION_CHOICES == prec.PRECISIONS
