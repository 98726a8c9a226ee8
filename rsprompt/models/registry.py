"""Registry of methods: ``build_model(method, encoder, num_classes, aux_channels, …)``.

Each method module registers a builder with :func:`register_method`. Method modules are imported
lazily (only the one that is built), listed in :data:`METHOD_MODULES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from rsprompt.models.base import SegmentationModel

#: method name -> module that registers it.
METHOD_MODULES: dict[str, str] = {
    "mobanet": "rsprompt.models.methods.mobanet",
    "rpn": "rsprompt.models.methods.rpn",
    "gopt": "rsprompt.models.methods.gopt",
    "spm": "rsprompt.models.methods.spm",
    "dplnet": "rsprompt.models.methods.dplnet",
}

#: Aux channels each method builds with when none are given (its paper configuration).
DEFAULT_AUX_CHANNELS: dict[str, int] = {"mobanet": 1, "dplnet": 1, "gopt": 3, "spm": 1, "rpn": 0}

Builder = Callable[..., SegmentationModel]
_BUILDERS: dict[str, Builder] = {}


def register_method(name: str) -> Callable[[Builder], Builder]:
    """Register ``builder(encoder, num_classes, aux_channels, weights=None, **kwargs)`` as ``name``."""

    def wrap(builder: Builder) -> Builder:
        _BUILDERS[name] = builder
        return builder

    return wrap


def available_methods() -> list[str]:
    """Names of all methods that can be built."""
    return sorted(METHOD_MODULES)


def default_aux_channels(method: str) -> int:
    """The aux channels of ``method``'s paper configuration."""
    _check(method)
    return DEFAULT_AUX_CHANNELS[method]


def _check(method: str) -> None:
    if method not in METHOD_MODULES:
        raise ValueError(
            f"unknown method {method!r}; available: {', '.join(available_methods()) or 'none'}"
        )


def get_builder(method: str) -> Builder:
    """Import the module of ``method`` and return its builder."""
    _check(method)
    if method not in _BUILDERS:
        importlib.import_module(METHOD_MODULES[method])
    return _BUILDERS[method]


def build_model(
    method: str,
    encoder: str,
    num_classes: int,
    aux_channels: int | None = None,
    weights: str | None = None,
    **kwargs: Any,
) -> SegmentationModel:
    """Build a registered method on a frozen encoder.

    Args:
        method: Method name (see :func:`available_methods`).
        encoder: Encoder name (timm name, ``mit_b0``…``mit_b5``, or an open_clip model name).
        num_classes: Number of classes ``K``.
        aux_channels: Channels of the aux modality; ``None`` = the method's paper default,
            0 = no aux modality.
        weights: Path of a local weights file for the encoder; ``None`` = random init.
        **kwargs: Method-specific options (documented by each method).

    Returns:
        The model, with its encoder frozen.

    Example:
        >>> model = build_model("mobanet", "resnet18", num_classes=6)  # doctest: +SKIP
    """
    builder = get_builder(method)
    if aux_channels is None:
        aux_channels = DEFAULT_AUX_CHANNELS[method]
    return builder(encoder, num_classes, aux_channels, weights=weights, **kwargs)
