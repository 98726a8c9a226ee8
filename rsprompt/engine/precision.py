"""Numeric precision: detect what the hardware runs natively and resolve ``auto``.

One rule for every command. ``auto`` picks bfloat16 where the hardware computes it natively — a
CPU with AVX-512 BF16 or AMX (detected, never guessed from the vendor), a CUDA device with bf16
support — and float32 elsewhere. Only the model's forward pass runs in reduced precision (autocast);
blending, argmax, metrics and everything written to disk stay float32/uint8.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

__all__ = [
    "PRECISIONS",
    "PrecisionError",
    "autocast",
    "cpu_has_native_bf16",
    "cuda_has_bf16",
    "resolve_precision",
    "trainer_precision",
]

#: Values accepted by ``--precision``.
PRECISIONS = ("auto", "32", "bf16", "16")

#: Methods or encoders for which ``auto`` keeps float32 (the accuracy guard,
#: ``scripts/check_precision.py``, missed its goals for them). Empty: none has missed so far.
FP32_ONLY: frozenset[str] = frozenset()

_DTYPES = {"bf16": torch.bfloat16, "16": torch.float16}


class PrecisionError(ValueError):
    """A precision that is unknown or cannot run on the chosen device."""


def _cpuinfo_flags(path: str = "/proc/cpuinfo") -> set[str]:
    try:
        text = Path(path).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX-BF16).

    Asks PyTorch's own CPU feature probe (what its kernels dispatch on), then the kernel's
    ``/proc/cpuinfo`` flags.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    for name in probes:
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except RuntimeError:
            continue
    return bool({"avx512_bf16", "amx_bf16"} & _cpuinfo_flags())


def cuda_has_bf16(device: torch.device) -> bool:
    """Whether the CUDA ``device`` computes bfloat16 natively (compute capability ≥ 8.0)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_capability(index) >= (8, 0)


def _normalise(precision: str | int | None) -> str:
    text = "auto" if precision is None else str(precision).strip().lower()
    aliases = {
        "32": "32", "fp32": "32", "float32": "32", "32-true": "32",
        "bf16": "bf16", "bfloat16": "bf16", "bf16-mixed": "bf16",
        "16": "16", "fp16": "16", "float16": "16", "16-mixed": "16",
        "auto": "auto",
    }  # fmt: skip
    if text not in aliases:
        raise PrecisionError(f"unknown precision {precision!r}: use {', '.join(PRECISIONS)}")
    return aliases[text]


def resolve_precision(
    precision: str | int | None, device: torch.device | str, model_key: str | None = None
) -> str:
    """Resolve a precision for inference on ``device``: ``"32"``, ``"bf16"`` or ``"16"``.

    Args:
        precision: ``auto`` (or ``None``), ``32``, ``bf16`` or ``16`` (aliases such as ``fp32``
            or ``bf16-mixed`` are accepted).
        device: The device the model runs on.
        model_key: Method or encoder name, checked against :data:`FP32_ONLY` by ``auto``.

    Returns:
        The precision to run.

    Raises:
        PrecisionError: Unknown precision, or float16 on a CPU (use bf16 or 32 there).

    Example:
        >>> resolve_precision("32", "cpu")
        '32'
        >>> resolve_precision("fp16", "cpu")
        Traceback (most recent call last):
        ...
        rsprompt.engine.precision.PrecisionError: float16 runs only on a GPU; use --precision bf16 or 32 on the CPU
    """
    device = torch.device(device)
    choice = _normalise(precision)
    if choice == "auto":
        if model_key is not None and model_key in FP32_ONLY:
            return "32"
        if device.type == "cuda":
            return "bf16" if cuda_has_bf16(device) else "32"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "32"
    if choice == "16" and device.type == "cpu":
        raise PrecisionError("float16 runs only on a GPU; use --precision bf16 or 32 on the CPU")
    if choice == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(
            "this CPU has no native bfloat16 (AVX-512 BF16 or AMX): bf16 is emulated and "
            "usually slower than --precision 32",
            stacklevel=2,
        )
    return choice


def trainer_precision(precision: str | int | None, accelerator: str | None = "auto") -> str:
    """Lightning's ``trainer.precision`` for a requested precision (``auto`` resolved here).

    ``auto``: ``bf16-mixed`` on a CPU with native bf16 or a GPU with bf16, ``16-mixed`` on older
    GPUs, ``32-true`` elsewhere. Explicit values map to Lightning's names.
    """
    acc = str(accelerator or "auto").lower()
    gpu = acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available())
    choice = _normalise(precision)
    if choice == "auto":
        if gpu:
            return "bf16-mixed" if cuda_has_bf16(torch.device("cuda")) else "16-mixed"
        return "bf16-mixed" if cpu_has_native_bf16() else "32-true"
    return {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}[choice]


@contextlib.contextmanager
def autocast(device: torch.device | str, precision: str) -> Iterator[None]:
    """Autocast the enclosed forward pass to ``precision`` (no-op for ``"32"``)."""
    device = torch.device(device)
    if precision == "32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=_DTYPES[precision]):
        yield
