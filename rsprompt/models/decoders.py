"""Decoders shared by the methods.

:class:`UPerNet` is the pyramid-pooling + FPN decoder MoBaNet (and SPM) use, in the exact layout of
MoBaNet's released code (64 channels, ReLU6, BatchNorm, bias-free convolutions; 669,568 parameters
on four 256-channel inputs at K = 6). The SegFormer all-MLP head lives with DPLNet.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvBNAct(nn.Sequential):
    """``Conv2d`` (no bias, "same" padding) + ``BatchNorm2d`` + optional activation.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Square kernel size (odd).
        act_layer: Activation class, or ``None`` for none.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        act_layer: type[nn.Module] | None = nn.ReLU6,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if act_layer is not None:
            layers.append(act_layer())
        super().__init__(*layers)


def resize(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize (``align_corners=False``); a no-op when the size already matches."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class PPM(nn.Module):
    """Pyramid pooling: adaptive average pools → 1×1 conv + BN + act each, upsampled back."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        act_layer: type[nn.Module] = nn.ReLU6,
    ) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvBNAct(in_channels, channels, 1, act_layer))
            for s in pool_scales
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        """Return the pooled maps, each upsampled to ``x``'s size."""
        return [resize(stage(x), x.shape[-2:]) for stage in self.stages]


class UPerNet(nn.Module):
    """UPerNet decoder on ``S`` feature levels (finest first).

    Layout (``c = channels``): PPM on the last level (each pool → 1×1 ``C_S→c``), concat with that
    level itself → 3×3 ``(C_S + len(pools)·c) → c``; 1×1 laterals (no activation) on the other
    levels; top-down: each lateral plus the upsampled coarser map; 3×3 ``c→c`` FPN convs on all but
    the last level; everything upsampled to the finest level, concatenated (``S·c``) → 3×3 → c;
    ``Dropout2d``; bias-free 1×1 classifier; bilinear upsampling to ``output_size``. Every
    convolution is bias-free and followed by BatchNorm (ReLU6 where activated).

    Args:
        in_channels: Channels of each input level (finest first), e.g. ``[256] * 4``.
        num_classes: Output classes ``K``.
        channels: Width of the decoder (64 in MoBaNet).
        pool_scales: PPM output sizes.
        dropout: ``Dropout2d`` probability before the classifier.
        act_layer: Activation class (``nn.ReLU6`` in MoBaNet).

    Example:
        >>> dec = UPerNet([256] * 4, num_classes=6)
        >>> sum(p.numel() for p in dec.parameters())
        669568
        >>> feats = [torch.randn(2, 256, 19, 19) for _ in range(4)]
        >>> dec(feats, output_size=(266, 266)).shape
        torch.Size([2, 6, 266, 266])
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 64,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        act_layer: type[nn.Module] = nn.ReLU6,
    ) -> None:
        super().__init__()
        in_channels = [int(c) for c in in_channels]
        if len(in_channels) < 1:
            raise ValueError("UPerNet needs at least one feature level")
        self.in_channels = in_channels
        self.channels = channels
        self.num_classes = num_classes
        top = in_channels[-1]
        self.ppm = PPM(top, channels, pool_scales, act_layer)
        self.bottleneck = ConvBNAct(top + len(pool_scales) * channels, channels, 3, act_layer)
        self.lateral_convs = nn.ModuleList(
            ConvBNAct(c, channels, 1, act_layer=None) for c in in_channels[:-1]
        )
        self.fpn_convs = nn.ModuleList(
            ConvBNAct(channels, channels, 3, act_layer) for _ in in_channels[:-1]
        )
        self.fuse = ConvBNAct(len(in_channels) * channels, channels, 3, act_layer)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1, bias=False)

    def forward_features(self, features: Sequence[Tensor]) -> Tensor:
        """The fused ``B×channels×H₁×W₁`` map (before dropout and classifier)."""
        if len(features) != len(self.in_channels):
            raise ValueError(
                f"expected {len(self.in_channels)} feature levels, got {len(features)}"
            )
        top = features[-1]
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features[:-1])]
        laterals.append(self.bottleneck(torch.cat([top, *self.ppm(top)], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals[:-1])]
        outs.append(laterals[-1])
        size = outs[0].shape[-2:]
        return self.fuse(torch.cat([resize(o, size) for o in outs], dim=1))

    def forward(
        self, features: Sequence[Tensor], output_size: Sequence[int] | None = None
    ) -> Tensor:
        """Logits ``B×K×H×W`` at ``output_size`` (default: the finest level's size)."""
        logits = self.classifier(self.dropout(self.forward_features(features)))
        if output_size is not None:
            logits = resize(logits, output_size)
        return logits
