"""Activation checkpointing of the FROZEN encoder only.

Prompt tuning back-propagates through the frozen encoder to reach the first prompt, so by default
autograd keeps every frozen block's activations. With checkpointing, a frozen block keeps only its
input and recomputes its inside during the backward pass: the same gradients, less memory, about
one extra forward of the frozen blocks in time. Trainable modules are never checkpointed.

A *unit* is the outermost frozen submodule that is a residual block (class names ending in
``Block``, ``Bottleneck``, ``InvertedResidual`` or ``DepthwiseSeparableConv``: timm ViT/Swin/ResNet/
EfficientNet blocks, smp MiT blocks, open_clip's ``ResidualAttentionBlock``…). A model may define
``checkpoint_units()`` to choose its own (e.g. DPLNet, which calls parts of its frozen blocks).

Frozen prefixes that no trainable module feeds need nothing: their inputs do not require
gradients, so autograd records no graph for them and checkpointing is skipped.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["checkpoint_units", "set_frozen_checkpointing"]

_BLOCK_SUFFIXES = ("Block", "Bottleneck", "InvertedResidual", "DepthwiseSeparableConv")
_CLASSES: dict[type, type] = {}


def _is_block(module: nn.Module) -> bool:
    return type(module).__name__.endswith(_BLOCK_SUFFIXES) and any(
        True for _ in module.parameters()
    )


def _outermost_blocks(root: nn.Module) -> list[nn.Module]:
    found: list[nn.Module] = []
    inside: set[int] = set()
    for module in root.modules():
        if id(module) in inside:
            continue
        if _is_block(module) or getattr(module, "_rsprompt_checkpointed", False):
            found.append(module)
            inside.update(id(m) for m in module.modules())
    return found


def checkpoint_units(model: nn.Module) -> list[nn.Module]:
    """The frozen modules that :func:`set_frozen_checkpointing` checkpoints."""
    own = getattr(model, "checkpoint_units", None)
    if callable(own):
        return list(own())
    children: Iterable[nn.Module] = getattr(model, "frozen_children", lambda: [])()
    units = [u for child in children for u in _outermost_blocks(child)]
    return [u for u in units if not any(p.requires_grad for p in u.parameters())]


def _wants_grad(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    values = (*args, *kwargs.values())
    return any(isinstance(v, Tensor) and v.requires_grad for v in values)


def _checkpointed_class(cls: type) -> type:
    if cls not in _CLASSES:
        base_forward = cls.forward

        @functools.wraps(base_forward)
        def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
            import torch

            if torch.is_grad_enabled() and _wants_grad(args, kwargs):
                return checkpoint(base_forward, self, *args, use_reentrant=False, **kwargs)
            return base_forward(self, *args, **kwargs)

        _CLASSES[cls] = type(
            cls.__name__, (cls,), {"forward": forward, "_rsprompt_checkpointed": True}
        )
    return _CLASSES[cls]


def set_frozen_checkpointing(model: nn.Module, enabled: bool = True) -> int:
    """Switch activation checkpointing of the frozen units of ``model`` on or off.

    The units keep their parameters, buffers and state-dict keys (only their class is swapped for
    a subclass whose ``forward`` recomputes in the backward pass).

    Args:
        model: A :class:`~rsprompt.models.base.SegmentationModel` (or any module with
            ``frozen_children()`` or ``checkpoint_units()``).
        enabled: On or off.

    Returns:
        The number of units switched.

    Example:
        >>> import torch
        >>> from rsprompt.models.registry import build_model
        >>> model = build_model("spm", "resnet18", 6, aux_channels=1)
        >>> set_frozen_checkpointing(model) > 0
        True
        >>> set_frozen_checkpointing(model, False) > 0
        True
    """
    count = 0
    for unit in checkpoint_units(model):
        cls = type(unit)
        is_wrapped = getattr(cls, "_rsprompt_checkpointed", False)
        if enabled and not is_wrapped:
            unit.__class__ = _checkpointed_class(cls)
            count += 1
        elif not enabled and is_wrapped:
            unit.__class__ = cls.__mro__[1]
            count += 1
    return count
