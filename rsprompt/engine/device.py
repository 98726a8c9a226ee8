"""One rule for turning a user's ``--device`` into a usable :class:`torch.device`."""

from __future__ import annotations

import torch

__all__ = ["DeviceError", "resolve_device"]


class DeviceError(ValueError):
    """A device that cannot be used here (unknown name, no such GPU, no driver)."""


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """Parse and check a device name before any work starts.

    Args:
        name: ``"auto"`` or ``None`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``,
            ``"cuda:N"``, ``"mps"`` or a :class:`torch.device`.

    Returns:
        The device, known to be usable on this machine.

    Raises:
        DeviceError: The name is not a device, or the device is not available here; the message
            says what is available instead.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
        >>> resolve_device("gpu0")
        Traceback (most recent call last):
        ...
        rsprompt.engine.device.DeviceError: unknown device 'gpu0': use auto, cpu, cuda, cuda:N or mps
    """
    if name is None or (isinstance(name, str) and name.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name.strip() if isinstance(name, str) else name)
    except (RuntimeError, TypeError):
        raise DeviceError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {name!r}: no CUDA GPU is available on this machine; use --device cpu "
                "(or auto)"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise DeviceError(
                f"device {name!r}: this machine has {count} CUDA GPU(s) (0..{count - 1})"
            )
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise DeviceError(f"device {name!r}: Apple MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise DeviceError(f"device {name!r}: not supported; use auto, cpu, cuda, cuda:N or mps")
    return dev
