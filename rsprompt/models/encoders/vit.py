"""Plain ViTs from timm (incl. DINOv2) as staged frozen encoders.

Stages are groups of consecutive blocks ending at the *taps* (0-based block indices; default: four
groups of equal depth, e.g. ``[5, 11, 17, 23]`` for ViT-L). The stem is the patch embedding; the
state is the token sequence (prefix tokens + patch tokens) with the position embedding added
(bicubically interpolated to the input grid: ``dynamic_img_size=True``). Taps pass the frozen final
norm (read-out only). All taps have width ``D`` and stride ``patch_size``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rsprompt.models.encoders._timm import create_timm_model, timm_norm_stats
from rsprompt.models.encoders.base import EncoderState, FrozenEncoder, check_taps, default_taps


class TimmViTEncoder(FrozenEncoder):
    """A timm ``VisionTransformer`` (ViT, DeiT, DINOv2, MAE, …) behind the staged interface.

    Args:
        name: timm model name, e.g. ``"vit_large_patch14_dinov2"``.
        weights: ``None`` (random init), a local file, or a hub alias (see
            :func:`~rsprompt.models.encoders.build_encoder`).
        taps: Block index ending each stage (default: four equal groups).
        img_size: Size the position embedding is built for (default: timm's, 518 for DINOv2).
        device: ``"meta"`` to build without memory (parameter counting), else a device.
        encoder_seed: Seed of the random init when ``weights`` is ``None``.
        drop_path_rate: Stochastic depth of the frozen blocks (active only when
            :attr:`stochastic_depth` is set).
        **kwargs: Passed to ``timm.create_model`` (e.g. ``depth=2, embed_dim=64`` for tests).
    """

    family = "vit"

    def __init__(
        self,
        name: str,
        weights: str | Path | None = None,
        *,
        taps: Sequence[int] | None = None,
        img_size: int | None = None,
        device: str | torch.device | None = None,
        encoder_seed: int | None = 0,
        drop_path_rate: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        kw: dict[str, Any] = {"num_classes": 0, "dynamic_img_size": True, **kwargs}
        if img_size is not None:
            kw["img_size"] = img_size
        if drop_path_rate is not None:
            kw["drop_path_rate"] = drop_path_rate
        model, desc, sha = create_timm_model(
            name, weights, device=device, encoder_seed=encoder_seed, **kw
        )
        from timm.models.vision_transformer import VisionTransformer

        if not isinstance(model, VisionTransformer):
            raise TypeError(f"{name!r} is not a timm VisionTransformer ({type(model).__name__})")
        self.model = model
        self.name, self.library = name, "timm"
        self.weights, self.weights_sha256 = desc, sha
        self.encoder_seed = encoder_seed if weights is None else None
        depth = len(model.blocks)
        self.taps = check_taps(taps, depth) if taps is not None else default_taps(depth)
        self.depth = depth
        self.embed_dim = int(model.embed_dim)
        self.patch_size = int(model.patch_embed.patch_size[0])
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self.in_chans = int(model.patch_embed.proj.in_channels)
        n = len(self.taps)
        self.widths = (self.embed_dim,) * n
        self.in_widths = (self.embed_dim,) * n
        self.strides = (self.patch_size,) * n
        self.pad_multiple = self.patch_size
        self.mean, self.std = timm_norm_stats(model)
        self._finish()

    def _extra_description(self) -> dict[str, Any]:
        return {"taps": list(self.taps), "img_size": list(self.model.patch_embed.img_size)}

    @property
    def stem(self) -> nn.Module:  # noqa: D102
        return self.model.patch_embed

    @property
    def blocks(self) -> nn.Sequential:
        """All frozen blocks (also those after the last tap, which never run)."""
        return self.model.blocks

    @property
    def final_norm(self) -> nn.Module:
        """The frozen final norm applied at every tap read-out."""
        return self.model.norm

    def stage_block_indices(self, index: int) -> range:
        """Block indices of stage ``index``."""
        start = 0 if index == 0 else self.taps[index - 1] + 1
        return range(start, self.taps[index] + 1)

    def stage_modules(self, index: int) -> list[nn.Module]:  # noqa: D102
        return [self.model.blocks[i] for i in self.stage_block_indices(index)]

    def begin(self, embedded: Tensor) -> EncoderState:
        """Prefix tokens + position embedding (interpolated to the grid) on a ``B×H×W×D`` embed."""
        if embedded.ndim != 4:
            raise ValueError(
                f"expected a B×H×W×D patch embedding, got shape {tuple(embedded.shape)}"
            )
        hw = (int(embedded.shape[1]), int(embedded.shape[2]))
        m = self.model
        x = m.norm_pre(m.patch_drop(m._pos_embed(embedded)))
        return EncoderState(x, hw)

    def run_stage(self, index: int, state: EncoderState) -> EncoderState:  # noqa: D102
        x = state.x
        for blk in self.stage_modules(index):
            x = blk(x)
        return EncoderState(x, state.hw)

    def stage_map(self, state: EncoderState) -> Tensor:  # noqa: D102
        return self._tokens_to_map(state.x[:, self.num_prefix_tokens :], state.hw)

    def with_stage_map(self, state: EncoderState, fmap: Tensor) -> EncoderState:  # noqa: D102
        tokens = fmap.flatten(2).transpose(1, 2)
        x = torch.cat([state.x[:, : self.num_prefix_tokens], tokens], dim=1)
        return EncoderState(x, state.hw)

    def patch_tokens(self, state: EncoderState) -> Tensor:
        """The patch tokens ``B×N×D`` of ``state`` (prefix tokens excluded)."""
        return state.x[:, self.num_prefix_tokens :]

    def with_patch_tokens(self, state: EncoderState, tokens: Tensor) -> EncoderState:
        """``state`` with its patch tokens replaced (prefix tokens untouched)."""
        x = torch.cat([state.x[:, : self.num_prefix_tokens], tokens], dim=1)
        return EncoderState(x, state.hw)

    def readout(self, index: int, state: EncoderState) -> Tensor:
        """Tap: the frozen final norm on the patch tokens, as a ``B×D×H×W`` map."""
        tokens = self.model.norm(state.x[:, self.num_prefix_tokens :])
        return self._tokens_to_map(tokens, state.hw)

    @staticmethod
    def _tokens_to_map(tokens: Tensor, hw: tuple[int, int]) -> Tensor:
        b, _n, c = tokens.shape
        return tokens.transpose(1, 2).reshape(b, c, hw[0], hw[1])
