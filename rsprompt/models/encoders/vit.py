"""Plain ViTs from timm (incl. DINOv2) as staged frozen encoders.

Stages are groups of consecutive blocks ending at the *taps* (0-based block indices; default: four
groups of equal depth, e.g. ``[5, 11, 17, 23]`` for ViT-L). The stem is the patch embedding; the
state is the token sequence (prefix tokens + patch tokens) with the position embedding added,
resampled to the input's patch grid. Taps pass the frozen final norm (read-out only). All taps have
width ``D`` and stride ``patch_size``.

Two rules resample the position embedding (``pos_interp``):

* ``"dinov2"`` (default for ``*dinov2*`` names): DINOv2's own rule, which its features were
  trained with and MoBaNet's released code uses: bicubic, antialias off, ``scale_factor =
  (n + 0.1) / M`` per axis (``M`` the stored grid side, ``n`` the target side), and no resampling
  when the grid already matches;
* ``"timm"`` (default otherwise): timm's ``resample_abs_pos_embed`` (bicubic to the exact size,
  antialias on).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
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
        pos_interp: Position-embedding resampling rule, ``"dinov2"`` or ``"timm"`` (module
            docstring); ``None`` = ``"dinov2"`` for names containing ``dinov2``, else ``"timm"``.
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
        pos_interp: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if pos_interp is None:
            pos_interp = "dinov2" if "dinov2" in name.lower() else "timm"
        if pos_interp not in ("dinov2", "timm"):
            raise ValueError(f"pos_interp must be 'dinov2' or 'timm', got {pos_interp!r}")
        self.pos_interp = pos_interp
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
        return {
            "taps": list(self.taps),
            "img_size": list(self.model.patch_embed.img_size),
            "pos_interp": self.pos_interp,
        }

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
        pos = (
            m._pos_embed(embedded)
            if self.pos_interp == "timm"
            else self._pos_embed_dinov2(embedded)
        )
        x = m.norm_pre(m.patch_drop(pos))
        return EncoderState(x, hw)

    def _pos_embed_dinov2(self, embedded: Tensor) -> Tensor:
        """Prefix tokens and position embedding with DINOv2's resampling rule."""
        m = self.model
        b, h, w, c = embedded.shape
        x = embedded.reshape(b, h * w, c)
        prefix = [t.expand(b, -1, -1) for t in (m.cls_token, m.reg_token) if t is not None]
        if m.pos_embed is None:
            return m.pos_drop(torch.cat([*prefix, x], dim=1))
        n_prefix = 0 if m.no_embed_class else m.num_prefix_tokens
        pos = dinov2_resample_pos_embed(m.pos_embed, (h, w), n_prefix)
        if m.no_embed_class:
            x = torch.cat([*prefix, x + pos], dim=1)
        else:
            x = torch.cat([*prefix, x], dim=1) + pos
        return m.pos_drop(x)

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


def dinov2_resample_pos_embed(
    pos_embed: Tensor, grid: tuple[int, int], num_prefix_tokens: int = 1
) -> Tensor:
    """Resample a ``1×(P + M²)×D`` position embedding to ``grid`` with DINOv2's rule.

    Bicubic interpolation without antialias and ``scale_factor = (n + 0.1) / M`` per axis (the
    0.1 offset avoids floating-point rounding of the output size); unchanged when the grid is
    already ``M×M``.

    Args:
        pos_embed: Stored embedding, ``P`` prefix entries then an ``M×M`` row-major grid.
        grid: Target patch grid ``(rows, cols)``.
        num_prefix_tokens: ``P``.

    Returns:
        ``1×(P + rows·cols)×D`` in ``pos_embed``'s dtype.

    Example:
        >>> pe = torch.zeros(1, 1 + 37 * 37, 8)
        >>> dinov2_resample_pos_embed(pe, (19, 19)).shape
        torch.Size([1, 362, 8])
    """
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n, dim = patches.shape[1], patches.shape[2]
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"position embedding grid of {n} tokens is not square")
    if tuple(grid) == (side, side):
        return pos_embed
    sq = patches.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    scale = ((grid[0] + 0.1) / side, (grid[1] + 0.1) / side)
    out = F.interpolate(sq, scale_factor=scale, mode="bicubic", antialias=False)
    if tuple(out.shape[-2:]) != tuple(grid):
        raise ValueError(f"DINOv2 resampling gave grid {tuple(out.shape[-2:])}, not {grid}")
    out = out.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim).to(pos_embed.dtype)
    return torch.cat([prefix, out], dim=1)
