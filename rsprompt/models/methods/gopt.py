"""GoPT: grouping prompt tuning on a frozen plain ViT (AAAI 2024) — rsprompt's reconstruction.

No code was released with the paper. This module implements the design written down in
``docs/methods/gopt.md``, reconstructed from the paper's description (abstract and summaries):

* A frozen plain ViT (timm ``VisionTransformer``; the paper configuration is MAE ViT-B/16,
  ``vit_base_patch16_224``) processes the optical image unchanged.
* The aux modality (DSM, SAR, …) gets its own trainable patch embedding ``aux_patch_embed``
  (patch size of the encoder, ``A → D``) plus the encoder's frozen position embedding. The aux
  stream never passes through a frozen layer: it is a prompt stream updated only by the prompters.
* A :class:`GroupingPrompter` sits between every pair of consecutive frozen layers. In a narrow
  bottleneck of width ``d`` (default 8, as in ViPT):

  - CUP (class-aware uni-modal prompter): ``K`` class tokens are concatenated with the aux tokens
    and passed through one single-head self-attention; every aux token is then assigned to one
    class by a straight-through hard Gumbel-softmax (plain argmax in eval mode), and the class
    tokens are updated with the mean of their tokens' values: ``G = C + Linear(A·V / (A·1 + 1))``.
  - ACP (alignment-induced cross-modal prompter): tokens of both streams attend to the ``K``
    class-aware prompts ``G``. ONE :class:`CrossModalPrompter` is shared by all layers and both
    modalities.
  - Residual injection: ``F_o += Linear_o(ACP(o + a))`` before the next frozen layer and
    ``F_a += Linear_a(ACP(a))``; both output linears are zero-initialised, so at step 0 the model
    computes exactly the frozen encoder's features. ``G`` becomes the next prompter's class tokens.

Choices made by rsprompt (not in the paper's text):

* The optical stream's ACP query is ``o + a`` (both modalities' bottleneck tokens at the same
  location, as ViPT fuses them), not ``o`` alone (the literal ``ACP(o)`` form). With
  ``o`` alone the optical tokens receive only image-level, class-grouped aux information (the
  attention weights depend on the optical token only), so a class told apart by the DSM alone
  (roof vs. road of the same colour) cannot be learnt: on the synthetic task of
  ``tests/test_gopt.py`` (tiny ViT, 100 steps) the literal form reached mIoU 0.53 with or without
  the DSM, the fused query 0.81 with it and 0.50 without. ``acp_query="optical"`` keeps the
  literal form. The parameter count is the same.
* Prompts are added to the patch tokens only; prefix tokens (class/register) pass unchanged.
* The initial class tokens ``C_0`` (``K×d``) are learnt; later ones are the previous ``G``.
* The last prompter has no ``Linear_a``: the aux stream is not read after it.
* Missing aux (``aux=None``): the aux stream starts from the position embedding alone (as if the
  aux image were absent: zero tokens). A partial ``aux_valid`` mask zeroes invalid aux pixels and
  scales each aux token by its valid fraction, so ``aux_valid`` all ones equals the normal path and
  all zeros equals ``aux=None``.
* A 1-channel aux is replicated to the model's ``aux_channels`` (e.g. a DSM into a 3-channel embed).
* Decoder: a multi-level head on 4 taps (default block indices ``[2, 5, 8, 11]`` on 12 layers,
  evenly spaced otherwise), read after their prompt injection. Each tap gets a LayerNorm and is
  rescaled ViTDet/mmseg-style (×4, ×2, ×1, ×½: a "simple pyramid", one tap per level) to strides
  ``p/4 … 2p``, then fed to the 64-channel UPerNet of :mod:`rsprompt.models.decoders`.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsprompt.data.labels import IGNORE_INDEX
from rsprompt.models.base import SegmentationModel
from rsprompt.models.decoders import UPerNet
from rsprompt.models.encoders import FrozenEncoder, build_encoder
from rsprompt.models.registry import register_method

__all__ = [
    "CrossModalPrompter",
    "GoPT",
    "GoPTDecoder",
    "GroupingPrompter",
    "SimplePyramid",
    "build_gopt",
    "default_tap_indices",
    "hard_assignment",
]


#: Query of the optical stream's ACP (see :class:`GroupingPrompter`).
ACP_QUERIES = ("fused", "optical")


def default_tap_indices(depth: int) -> list[int]:
    """Four evenly spaced block indices ending at the last block (``[2, 5, 8, 11]`` for 12)."""
    if depth < 4:
        raise ValueError(f"GoPT needs a ViT with at least 4 blocks, got {depth}")
    return [round((i + 1) * depth / 4) - 1 for i in range(4)]


def hard_assignment(logits: Tensor, tau: float = 1.0, training: bool = True) -> Tensor:
    """One-hot assignment of tokens to classes along dim 1 (``B×K×N`` logits).

    In training a straight-through hard Gumbel-softmax (forward one-hot, backward through the
    soft sample); in eval the plain argmax of the logits, without noise.

    Args:
        logits: Class-token/token affinities ``B×K×N``.
        tau: Gumbel temperature (> 0).
        training: Gumbel sampling when True, argmax when False.

    Returns:
        ``B×K×N`` tensor whose every column ``[:, :, n]`` is one-hot.
    """
    if training:
        return F.gumbel_softmax(logits, tau=tau, hard=True, dim=1)
    index = logits.argmax(dim=1)  # B×N
    return F.one_hot(index, logits.shape[1]).transpose(1, 2).to(logits.dtype)


class CrossModalPrompter(nn.Module):
    """ACP: tokens (width ``d``) attend to ``K`` class-aware prompts; shared everywhere.

    Args:
        dim: Bottleneck width ``d``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)

    def forward(self, x: Tensor, prompts: Tensor) -> Tensor:
        """``softmax(q(x)·k(G)ᵀ/√d)·v(G)`` for tokens ``x`` (``B×N×d``), prompts ``B×K×d``."""
        return F.scaled_dot_product_attention(self.q(x), self.k(prompts), self.v(prompts))


class GroupingPrompter(nn.Module):
    """One grouping prompter (CUP + shared ACP + zero-initialised injection) between two layers.

    Args:
        embed_dim: Token width ``D`` of the frozen ViT.
        dim: Bottleneck width ``d``.
        gumbel_tau: Gumbel-softmax temperature used in training.
        aux_output: Whether to update the aux stream (False for the last prompter).
        acp_query: ``"fused"`` (default): the optical stream's ACP query is ``o + a``, the sum of
            both modalities' bottleneck tokens at the same location; ``"optical"``: ``o`` alone,
            the literal ``ACP(o)`` form (the optical stream then receives only image-level,
            class-grouped aux information; see the module docstring).
    """

    def __init__(
        self,
        embed_dim: int,
        dim: int,
        gumbel_tau: float = 1.0,
        aux_output: bool = True,
        acp_query: str = "fused",
    ) -> None:
        super().__init__()
        if gumbel_tau <= 0:
            raise ValueError(f"gumbel_tau must be > 0, got {gumbel_tau}")
        if acp_query not in ACP_QUERIES:
            raise ValueError(f"acp_query must be one of {ACP_QUERIES}, got {acp_query!r}")
        self.acp_query = acp_query
        self.dim = dim
        self.gumbel_tau = gumbel_tau
        self.norm_a = nn.LayerNorm(embed_dim)
        self.norm_o = nn.LayerNorm(embed_dim)
        self.down_a = nn.Linear(embed_dim, dim)
        self.down_o = nn.Linear(embed_dim, dim)
        # CUP: self-attention over [aux tokens; class tokens] in width d (pre-norm, residual).
        self.attn_norm = nn.LayerNorm(dim)
        self.attn_qkv = nn.Linear(dim, 3 * dim)
        self.attn_proj = nn.Linear(dim, dim)
        # CUP: assignment and grouping.
        self.assign_q = nn.Linear(dim, dim)
        self.assign_k = nn.Linear(dim, dim)
        self.assign_v = nn.Linear(dim, dim)
        self.group_proj = nn.Linear(dim, dim)
        # Residual injection, zero-initialised: the frozen model is untouched at step 0.
        self.up_o = nn.Linear(dim, embed_dim)
        nn.init.zeros_(self.up_o.weight)
        nn.init.zeros_(self.up_o.bias)
        self.up_a: nn.Linear | None = None
        if aux_output:
            self.up_a = nn.Linear(dim, embed_dim)
            nn.init.zeros_(self.up_a.weight)
            nn.init.zeros_(self.up_a.bias)

    def _self_attention(self, x: Tensor) -> Tensor:
        q, k, v = self.attn_qkv(self.attn_norm(x)).chunk(3, dim=-1)
        return x + self.attn_proj(F.scaled_dot_product_attention(q, k, v))

    def forward(
        self, f_o: Tensor, f_a: Tensor, class_tokens: Tensor, acp: CrossModalPrompter
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Prompt the optical patch tokens and update the aux stream.

        Args:
            f_o: Optical patch tokens ``B×N×D`` (output of the frozen layer).
            f_a: Aux prompt-stream tokens ``B×N×D``.
            class_tokens: Class tokens ``C_l`` ``B×K×d``.
            acp: The shared cross-modal prompter.

        Returns:
            ``(f_o, f_a, G, assignment)``: prompted optical tokens, updated aux tokens, the
            class-aware prompts ``G`` (next prompter's class tokens) and the one-hot ``B×K×N``
            token-to-class assignment.
        """
        n = f_a.shape[1]
        a = self.down_a(self.norm_a(f_a))
        o = self.down_o(self.norm_o(f_o))
        z = self._self_attention(torch.cat([a, class_tokens], dim=1))[:, :n]
        logits = self.assign_q(class_tokens) @ self.assign_k(z).transpose(1, 2)
        assignment = hard_assignment(
            logits / math.sqrt(self.dim), tau=self.gumbel_tau, training=self.training
        )
        pooled = (assignment @ self.assign_v(z)) / (assignment.sum(dim=2, keepdim=True) + 1.0)
        prompts = class_tokens + self.group_proj(pooled)
        f_o = f_o + self.up_o(acp(o + a if self.acp_query == "fused" else o, prompts))
        if self.up_a is not None:
            f_a = f_a + self.up_a(acp(a, prompts))
        return f_o, f_a, prompts, assignment


class SimplePyramid(nn.Module):
    """Turn four same-stride ViT taps into a 4-level pyramid (×4, ×2, ×1, ×½), one tap per level.

    Each tap is layer-normalised, then: level 0 two stride-2 transposed convs (with BatchNorm and
    GELU between), level 1 one transposed conv, level 2 a 1×1 conv, level 3 a 2×2 max-pool and a
    1×1 conv (ViTDet's simple feature pyramid, applied per tap as in mmseg's multi-level neck).

    Args:
        embed_dim: Token width ``D``.
        channels: Output channels of every level.
    """

    def __init__(self, embed_dim: int, channels: int) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(embed_dim) for _ in range(4))
        self.levels = nn.ModuleList(
            [
                nn.Sequential(
                    nn.ConvTranspose2d(embed_dim, channels, 2, stride=2),
                    nn.BatchNorm2d(channels),
                    nn.GELU(),
                    nn.ConvTranspose2d(channels, channels, 2, stride=2),
                ),
                nn.ConvTranspose2d(embed_dim, channels, 2, stride=2),
                nn.Conv2d(embed_dim, channels, 1),
                nn.Sequential(nn.MaxPool2d(2, ceil_mode=True), nn.Conv2d(embed_dim, channels, 1)),
            ]
        )

    def forward(self, taps: list[Tensor], grid: tuple[int, int]) -> list[Tensor]:
        """Map 4 token tensors ``B×N×D`` on an ``h×w`` grid to 4 feature maps."""
        h, w = grid
        out = []
        for tokens, norm, level in zip(taps, self.norms, self.levels, strict=True):
            x = norm(tokens).transpose(1, 2).reshape(tokens.shape[0], -1, h, w)
            out.append(level(x))
        return out


class GoPTDecoder(nn.Module):
    """GoPT's decoder: :class:`SimplePyramid` on the 4 taps + the shared 64-channel UPerNet.

    Args:
        embed_dim: Token width ``D``.
        num_classes: Output classes ``K``.
        pyramid_channels: Channels of every pyramid level.
        channels: UPerNet width.
    """

    def __init__(
        self, embed_dim: int, num_classes: int, pyramid_channels: int = 128, channels: int = 64
    ) -> None:
        super().__init__()
        self.pyramid = SimplePyramid(embed_dim, pyramid_channels)
        self.head = UPerNet([pyramid_channels] * 4, num_classes, channels=channels)

    def forward(
        self, taps: list[Tensor], grid: tuple[int, int], output_size: tuple[int, int]
    ) -> Tensor:
        """Logits ``B×K×output_size`` from 4 token tensors on the ``grid``."""
        return self.head(self.pyramid(taps, grid), output_size=output_size)


class GoPT(SegmentationModel):
    """GoPT on a frozen timm ``VisionTransformer`` (see the module docstring).

    Args:
        encoder: A frozen ViT encoder of :mod:`rsprompt.models.encoders` (``build_encoder`` of a
            timm ``VisionTransformer``, built with ``dynamic_img_size=True``); its ``taps`` are the
            decoder taps unless ``tap_indices`` is given.
        num_classes: Number of classes ``K``.
        aux_channels: Aux channels ``A`` (0 = no aux modality: the aux stream is the position
            embedding alone).
        bottleneck_dim: Prompter width ``d``.
        gumbel_tau: Gumbel temperature in training.
        tap_indices: 4 block indices read by the decoder (default evenly spaced, ``[2, 5, 8, 11]``).
        decoder_channels: Width of the UPerNet.
        pyramid_channels: Channels of every simple-pyramid level.
        acp_query: Query of the optical stream's ACP, ``"fused"`` (``o + a``, default) or
            ``"optical"`` (``o``, the literal ``ACP(o)`` form).
    """

    frozen_modules = ("encoder",)
    decoder_modules = ("decoder",)

    def __init__(
        self,
        encoder: FrozenEncoder,
        num_classes: int,
        aux_channels: int = 3,
        bottleneck_dim: int = 8,
        gumbel_tau: float = 1.0,
        tap_indices: list[int] | None = None,
        decoder_channels: int = 64,
        pyramid_channels: int = 128,
        acp_query: str = "fused",
    ) -> None:
        vit = getattr(encoder, "model", None)
        if getattr(encoder, "family", "") != "vit" or vit is None:
            raise TypeError(
                "GoPT needs a plain ViT encoder (rsprompt.models.encoders.build_encoder of a timm "
                f"VisionTransformer), got {type(encoder).__name__}"
            )
        if not getattr(vit, "dynamic_img_size", False):
            raise ValueError("the ViT must be built with dynamic_img_size=True")
        super().__init__("gopt", encoder.name, num_classes, aux_channels)
        self.encoder = encoder
        depth = len(vit.blocks)
        self.tap_indices = sorted(set(tap_indices or getattr(encoder, "taps", None) or []))
        if not self.tap_indices:
            self.tap_indices = default_tap_indices(depth)
        if len(self.tap_indices) != 4 or not all(0 <= i < depth for i in self.tap_indices):
            raise ValueError(
                f"tap_indices must be 4 block indices in [0, {depth}), got {tap_indices}"
            )
        encoder = vit  # below: the timm VisionTransformer itself
        self.embed_dim = dim = int(encoder.embed_dim)
        patch = encoder.patch_embed.patch_size
        self.patch_size: tuple[int, int] = (int(patch[0]), int(patch[1]))
        self.bottleneck_dim = bottleneck_dim
        self.aux_patch_embed: nn.Conv2d | None = None
        if aux_channels > 0:
            self.aux_patch_embed = nn.Conv2d(
                aux_channels, dim, kernel_size=self.patch_size, stride=self.patch_size
            )
        self.class_tokens = nn.Parameter(torch.empty(1, num_classes, bottleneck_dim))
        nn.init.trunc_normal_(self.class_tokens, std=0.02)
        # Prompter i sits after block i, before block i + 1; none after the last tapped block.
        last_tap = max(self.tap_indices)
        self.prompters = nn.ModuleList(
            GroupingPrompter(
                dim, bottleneck_dim, gumbel_tau, aux_output=i < last_tap - 1, acp_query=acp_query
            )
            for i in range(last_tap)
        )
        self.acp = CrossModalPrompter(bottleneck_dim)
        self.decoder = GoPTDecoder(dim, num_classes, pyramid_channels, decoder_channels)
        #: Optical normalisation of the encoder's pretraining (mean, std per channel).
        self.normalization = {"mean": tuple(self.encoder.mean), "std": tuple(self.encoder.std)}
        self.freeze()

    @property
    def vit(self) -> nn.Module:
        """The frozen timm ``VisionTransformer`` inside :attr:`encoder`."""
        return self.encoder.model

    # ------------------------------------------------------------------ aux stream
    def _aux_pos_embed(self, grid: tuple[int, int], ref: Tensor) -> Tensor:
        """Frozen position embedding of the patch tokens on ``grid`` (``1×N×D``)."""
        from timm.layers import resample_abs_pos_embed

        enc = self.vit
        if getattr(enc, "pos_embed", None) is None:
            return ref.new_zeros(1, grid[0] * grid[1], self.embed_dim)
        prefix = 0 if enc.no_embed_class else enc.num_prefix_tokens
        pos = resample_abs_pos_embed(
            enc.pos_embed,
            new_size=grid,
            old_size=enc.patch_embed.grid_size,
            num_prefix_tokens=prefix,
        )
        return pos[:, prefix:]

    def _aux_tokens(
        self, aux: Tensor | None, aux_valid: Tensor | None, grid: tuple[int, int], ref: Tensor
    ) -> Tensor:
        b = ref.shape[0]
        f_a = self._aux_pos_embed(grid, ref).expand(b, -1, -1)
        if aux is None or self.aux_patch_embed is None:
            return f_a
        if aux.shape[1] != self.aux_channels:
            if aux.shape[1] != 1:
                raise ValueError(
                    f"aux has {aux.shape[1]} channels; this GoPT model expects "
                    f"{self.aux_channels} (or 1, replicated)"
                )
            aux = aux.expand(-1, self.aux_channels, -1, -1)
        if aux_valid is not None:
            aux = aux * aux_valid
        tokens = self.aux_patch_embed(aux).flatten(2).transpose(1, 2)
        if aux_valid is not None:
            frac = F.avg_pool2d(aux_valid.to(tokens.dtype), self.patch_size, self.patch_size)
            tokens = tokens * frac.flatten(2).transpose(1, 2)
        return f_a + tokens

    # ------------------------------------------------------------------ forward
    def _pad(self, x: Tensor) -> Tensor:
        ph = (-x.shape[-2]) % self.patch_size[0]
        pw = (-x.shape[-1]) % self.patch_size[1]
        return F.pad(x, (0, pw, 0, ph)) if ph or pw else x

    def forward_features(
        self, image: Tensor, aux: Tensor | None = None, aux_valid: Tensor | None = None
    ) -> tuple[list[Tensor], tuple[int, int], list[Tensor]]:
        """Run the prompted encoder.

        Args:
            image: Optical ``B×3×H×W`` (H, W multiples of the patch size).
            aux: Aux ``B×A×H×W`` (or ``B×1×H×W``) or None.
            aux_valid: ``B×1×H×W`` validity of the aux (1 = valid) or None.

        Returns:
            ``(taps, grid, assignments)``: the 4 tapped patch-token tensors ``B×N×D``, the token
            grid ``(h, w)`` and every prompter's one-hot ``B×K×N`` assignment.
        """
        enc = self.vit
        x = enc.patch_embed(image)
        if x.ndim == 4:  # NHWC (dynamic_img_size)
            grid = (x.shape[1], x.shape[2])
        else:
            grid = (image.shape[-2] // self.patch_size[0], image.shape[-1] // self.patch_size[1])
        x = enc.norm_pre(enc.patch_drop(enc._pos_embed(x)))
        npt = enc.num_prefix_tokens
        f_a = self._aux_tokens(aux, aux_valid, grid, x)
        c = self.class_tokens.expand(x.shape[0], -1, -1)
        taps: list[Tensor] = []
        assignments: list[Tensor] = []
        last_tap = max(self.tap_indices)
        for i, block in enumerate(enc.blocks):
            x = block(x)
            if i < last_tap:
                f_o, f_a, c, assign = self.prompters[i](x[:, npt:], f_a, c, self.acp)
                x = torch.cat([x[:, :npt], f_o], dim=1) if npt else f_o
                assignments.append(assign)
            if i in self.tap_indices:
                taps.append(x[:, npt:])
            if i >= last_tap:
                break
        return taps, grid, assignments

    def forward(
        self, image: Tensor, aux: Tensor | None = None, aux_valid: Tensor | None = None
    ) -> Tensor | dict[str, Tensor]:
        """Logits ``B×K×H×W`` in eval mode; ``{"logits": …}`` in training mode."""
        h, w = image.shape[-2:]
        image = self._pad(image)
        aux = None if aux is None else self._pad(aux)
        aux_valid = None if aux_valid is None else self._pad(aux_valid)
        taps, grid, _ = self.forward_features(image, aux, aux_valid)
        logits = self.decoder(taps, grid, output_size=tuple(image.shape[-2:]))[..., :h, :w]
        return {"logits": logits} if self.training else logits

    def compute_loss(self, output: dict[str, Tensor], target: Tensor) -> dict[str, Tensor]:
        """Cross-entropy of the logits (ignore index 255)."""
        ce = F.cross_entropy(output["logits"], target, ignore_index=IGNORE_INDEX)
        return {"loss": ce, "ce": ce}


@register_method("gopt")
def build_gopt(
    encoder: str,
    num_classes: int,
    aux_channels: int = 3,
    weights: str | None = None,
    *,
    device: str | torch.device | None = None,
    bottleneck_dim: int = 8,
    gumbel_tau: float = 1.0,
    tap_indices: list[int] | None = None,
    decoder_channels: int = 64,
    pyramid_channels: int = 128,
    acp_query: str = "fused",
    encoder_seed: int | None = 0,
    encoder_kwargs: dict[str, Any] | None = None,
) -> GoPT:
    """Build GoPT on a timm ViT.

    Args:
        encoder: timm ViT name (paper configuration ``vit_base_patch16_224``, MAE weights).
        num_classes: Number of classes ``K``.
        aux_channels: Aux channels (default 3; 0 = none).
        weights: Encoder weights for :func:`~rsprompt.models.encoders.build_encoder`: a local file
            (loaded through timm's ``pretrained_cfg_overlay``) or a hub alias; ``None`` = random.
        device: Build on this device (``"meta"`` to count parameters without memory).
        bottleneck_dim: Prompter width ``d`` (8 keeps ViT-B/16 under 1M prompt parameters).
        gumbel_tau: Gumbel-softmax temperature in training.
        tap_indices: Decoder taps (default evenly spaced, ``[2, 5, 8, 11]`` on 12 blocks).
        decoder_channels: Width of the UPerNet head.
        pyramid_channels: Channels of every simple-pyramid level.
        acp_query: Query of the optical stream's ACP: ``"fused"`` (default) or ``"optical"``.
        encoder_seed: Seed of the random encoder when ``weights`` is ``None``.
        encoder_kwargs: Extra ``build_encoder`` / ``timm.create_model`` arguments (e.g. a tiny
            ViT: ``{"depth": 4, "embed_dim": 64, "num_heads": 2, "patch_size": 8, "img_size": 64}``).

    Returns:
        The GoPT model with its encoder frozen.
    """
    kwargs = dict(encoder_kwargs or {})
    if tap_indices is not None:
        kwargs["taps"] = sorted(set(tap_indices))
    enc = build_encoder(encoder, weights, device=device, encoder_seed=encoder_seed, **kwargs)
    if enc.family != "vit":
        raise TypeError(f"GoPT needs a plain ViT encoder; {encoder!r} is a {enc.family!r} encoder")
    if enc.num_stages != 4:
        raise ValueError(f"GoPT reads 4 taps; got taps {getattr(enc, 'taps', None)}")
    is_meta = next(enc.parameters()).device.type == "meta"
    with torch.device("meta") if is_meta else contextlib.nullcontext():
        model = GoPT(
            enc,
            num_classes,
            aux_channels,
            bottleneck_dim=bottleneck_dim,
            gumbel_tau=gumbel_tau,
            tap_indices=tap_indices,
            decoder_channels=decoder_channels,
            pyramid_channels=pyramid_channels,
            acp_query=acp_query,
        )
    if device is not None and not is_meta:
        model = model.to(device)
    return model
