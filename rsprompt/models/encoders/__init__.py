"""Frozen pretrained encoders behind one staged interface.

``build_encoder(name, weights=None, **kw)`` builds any supported family (timm ViT/DINOv2, timm Swin,
smp MiT, timm CNNs); see :mod:`rsprompt.models.encoders.base` for the interface the methods use.
"""

from rsprompt.models.encoders.base import EncoderState, FrozenEncoder, default_taps
from rsprompt.models.encoders.factory import build_encoder, encoder_family, register_encoder_family

__all__ = [
    "EncoderState",
    "FrozenEncoder",
    "build_encoder",
    "default_taps",
    "encoder_family",
    "register_encoder_family",
]
