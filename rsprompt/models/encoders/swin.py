"""Swin Transformers from timm as staged frozen encoders.

The stem is the patch embedding (``B×H×W×C``, channels last as timm keeps it); stage ``i`` is
timm's ``layers[i]`` (patch merging, then the blocks), so a stage input has the width of the
previous stage's output. Taps are the stage outputs as ``B×C×H×W`` maps (no norm: Swin has only a
final one). Built with ``strict_img_size=False`` so crops other than ``img_size`` run (sides a
multiple of 32 avoid internal padding).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rsprompt.models.encoders._timm import create_timm_model, timm_norm_stats
from rsprompt.models.encoders.base import EncoderState, FrozenEncoder


class TimmSwinEncoder(FrozenEncoder):
    """A timm ``SwinTransformer`` behind the staged interface.

    Args:
        name: timm model name, e.g. ``"swin_tiny_patch4_window7_224"``.
        weights: ``None`` (random init), a local file, or a hub alias.
        img_size: Crop size the model (window masks, relative positions) is built for.
        device: ``"meta"`` to build without memory, else a device.
        encoder_seed: Seed of the random init when ``weights`` is ``None``.
        drop_path_rate: Stochastic depth (active only when :attr:`stochastic_depth` is set).
        **kwargs: Passed to ``timm.create_model`` (e.g. ``depths=(1, 1, 1, 1)`` for tests).
    """

    family = "swin"

    def __init__(
        self,
        name: str,
        weights: str | Path | None = None,
        *,
        img_size: int | None = None,
        device: str | torch.device | None = None,
        encoder_seed: int | None = 0,
        drop_path_rate: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        kw: dict[str, Any] = {"num_classes": 0, "strict_img_size": False, **kwargs}
        if img_size is not None:
            kw["img_size"] = img_size
        if drop_path_rate is not None:
            kw["drop_path_rate"] = drop_path_rate
        model, desc, sha = create_timm_model(
            name, weights, device=device, encoder_seed=encoder_seed, **kw
        )
        from timm.models.swin_transformer import SwinTransformer

        if not isinstance(model, SwinTransformer):
            raise TypeError(f"{name!r} is not a timm SwinTransformer ({type(model).__name__})")
        self.model = model
        self.name, self.library = name, "timm"
        self.weights, self.weights_sha256 = desc, sha
        self.encoder_seed = encoder_seed if weights is None else None
        info = list(model.feature_info)
        self.widths = tuple(int(t["num_chs"]) for t in info)
        self.strides = tuple(int(t["reduction"]) for t in info)
        self.in_widths = (int(model.embed_dim), *self.widths[:-1])
        self.pad_multiple = max(self.strides)
        self.in_chans = int(model.patch_embed.proj.in_channels)
        self.mean, self.std = timm_norm_stats(model)
        self._finish()

    def _extra_description(self) -> dict[str, Any]:
        return {"img_size": list(self.model.patch_embed.img_size)}

    @property
    def stem(self) -> nn.Module:  # noqa: D102
        return self.model.patch_embed

    def stage_modules(self, index: int) -> list[nn.Module]:
        """Patch merging (Identity in stage 0) followed by the blocks of stage ``index``."""
        layer = self.model.layers[index]
        return [layer.downsample, *layer.blocks]

    def begin(self, embedded: Tensor) -> EncoderState:  # noqa: D102
        return EncoderState(embedded, (int(embedded.shape[1]), int(embedded.shape[2])))

    def run_stage(self, index: int, state: EncoderState) -> EncoderState:  # noqa: D102
        x = self.model.layers[index](state.x)
        return EncoderState(x, (int(x.shape[1]), int(x.shape[2])))

    def stage_map(self, state: EncoderState) -> Tensor:  # noqa: D102
        return state.x.permute(0, 3, 1, 2)

    def with_stage_map(self, state: EncoderState, fmap: Tensor) -> EncoderState:  # noqa: D102
        return EncoderState(fmap.permute(0, 2, 3, 1), state.hw)
