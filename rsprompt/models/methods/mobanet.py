"""MoBaNet — modality-balanced symmetric fusion over a shared frozen encoder.

Specification, shapes and parameter counts: ``docs/methods/mobanet.md``.

Both modalities run through the SAME frozen encoder (two passes with shared weights, batched
together). The aux modality (DSM, replicated to the stem's channels) enters through a trainable
copy of the encoder's patch/stem embedding. The streams meet only in

- **CPIA** (cross-modal prompt-injected adapter) at every stage input: one shared linear prompt
  from both streams, with per-stream channel scale/shift, added to each stream;
- **DGFM** (difference-guided gated fusion) at every stage output: a gate ``G`` (0.5 at the start:
  its last convolution is zero-initialised) mixes ``G·f_opt + (1−G)·f_aux``, then LayerNorm.

Each fused tap goes through a bias-free 1×1 projection to 256 channels and the 64-channel UPerNet
decoder. In training, **MCRM** (modality-conditional random masking) zeroes one rectangle of the
optical input of some samples and of the aux input of others (never both modalities of a sample),
and two auxiliary heads on the stage-1 optical-only and aux-only projections are trained with
cross-entropy on the *hard* pixels (those the main head gets wrong), weighted 0.01.

Paper configuration: DINOv2 ViT-L/14 built at img_size 518, taps ``[5, 11, 17, 23]``, crops
256 zero-padded to 266 → 8,981,376 trainable parameters at K = 6 (7,797,632 at inference). The same
method runs on hierarchical encoders (MiT, Swin) and CNNs: CPIA on the stage input maps (sized by
their width), DGFM on the stage outputs, a trainable copy of the stem as the aux embedding.

Inputs:
    ``image``: optical ``B×3×H×W`` normalised with the encoder's statistics
    (``encoder.mean/std``). ``aux``: ``B×A×H×W`` scaled to [0, 1] (DSM: min–max over the valid
    pixels of the tile or, at prediction time, of the whole scene). Sides that are not a multiple
    of the encoder's ``pad_multiple`` (14 for ViT/14) are zero-padded; logits are cropped back.

Missing or partial aux modality (``aux=None``, or ``aux_valid`` 0 where the aux raster had nodata):
    the aux input is zeroed where it is invalid — exactly the corruption MCRM applies to the aux
    input in training, so the aux stream (and the CPIA prompts it feeds) sees what the model was
    trained to tolerate — and at every DGFM the gate is forced towards the optical stream by the
    aux-valid fraction ``v`` of each feature cell: ``G' = v·G + (1 − v)``, so a cell without valid
    aux takes its fused features from the optical stream alone (``LN(f_opt)``). ``aux=None`` is the
    same as ``aux_valid`` all zero; ``aux_valid`` all one is exactly the normal path. Padding added
    by the model counts as valid (both modalities are zero there, as in training).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsprompt.models.base import SegmentationModel
from rsprompt.models.decoders import ConvBNAct, UPerNet
from rsprompt.models.encoders import FrozenEncoder, build_encoder
from rsprompt.models.registry import register_method

log = logging.getLogger(__name__)

IGNORE_INDEX = 255
MCRM_VARIANTS = ("rectangle", "patches", "modality")


# --------------------------------------------------------------------------- modules
class CPIA(nn.Module):
    """Cross-modal prompt-injected adapter (purely linear; on channels-last features).

    ``a = W_o x_opt``, ``c = W_a x_aux`` (``D→b``), ``p = W_up W_f [a, c]`` (``2b→b→D``);
    ``x_opt += p + (p⊙γ_opt + β_opt)``, ``x_aux += p + (p⊙γ_aux + β_aux)``.

    Args:
        dim: Channels ``D`` of the stage input.
        ratio: Bottleneck ratio (``b = int(D·ratio)``, 0.25).
    """

    def __init__(self, dim: int, ratio: float = 0.25) -> None:
        super().__init__()
        b = max(1, int(dim * ratio))
        self.down_opt = nn.Linear(dim, b)
        self.down_aux = nn.Linear(dim, b)
        self.fuse = nn.Linear(2 * b, b)
        self.up = nn.Linear(b, dim)
        self.gamma_opt = nn.Parameter(torch.empty(dim))
        self.beta_opt = nn.Parameter(torch.empty(dim))
        self.gamma_aux = nn.Parameter(torch.empty(dim))
        self.beta_aux = nn.Parameter(torch.empty(dim))
        self.reset_scale_shift()

    def reset_scale_shift(self) -> None:
        """γ ~ N(1, 0.02), β ~ N(0, 0.02)."""
        if self.gamma_opt.is_meta:
            return
        with torch.no_grad():
            for g in (self.gamma_opt, self.gamma_aux):
                g.normal_(1.0, 0.02)
            for b in (self.beta_opt, self.beta_aux):
                b.normal_(0.0, 0.02)

    def forward(self, x_opt: Tensor, x_aux: Tensor) -> tuple[Tensor, Tensor]:
        """Prompted ``(x_opt, x_aux)``; inputs and outputs are ``…×D`` (channels last)."""
        p = self.up(self.fuse(torch.cat([self.down_opt(x_opt), self.down_aux(x_aux)], dim=-1)))
        return (
            x_opt + p + (p * self.gamma_opt + self.beta_opt),
            x_aux + p + (p * self.gamma_aux + self.beta_aux),
        )


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a ``B×C×H×W`` map."""

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class DGFM(nn.Module):
    """Difference-guided gated fusion of two ``B×D×H×W`` maps.

    ``r = W_r f_opt``, ``d = W_d f_aux`` (1×1, ``D→h``, no bias), ``δ = |r − d|``;
    ``G = σ(W_g GELU(GN(W_m [r, d, δ])))`` (``3h→h`` no bias, GroupNorm(1, h), ``h→D`` with bias,
    zero-initialised → ``G = 0.5``); ``fused = LN(G⊙f_opt + (1−G)⊙f_aux)``.

    Args:
        dim: Channels ``D``.
        hidden: Hidden width ``h`` (default ``max(32, D // 8)``).
    """

    def __init__(self, dim: int, hidden: int | None = None) -> None:
        super().__init__()
        h = hidden if hidden is not None else dgfm_hidden(dim)
        self.reduce_opt = nn.Conv2d(dim, h, 1, bias=False)
        self.reduce_aux = nn.Conv2d(dim, h, 1, bias=False)
        self.mix = nn.Conv2d(3 * h, h, 1, bias=False)
        self.norm = nn.GroupNorm(1, h)
        self.act = nn.GELU()
        self.gate = nn.Conv2d(h, dim, 1)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)
        self.out_norm = ChannelLayerNorm(dim)

    def gate_map(self, f_opt: Tensor, f_aux: Tensor) -> Tensor:
        """The gate ``G`` (``B×D×H×W``, in (0, 1))."""
        r, d = self.reduce_opt(f_opt), self.reduce_aux(f_aux)
        z = self.act(self.norm(self.mix(torch.cat([r, d, (r - d).abs()], dim=1))))
        return torch.sigmoid(self.gate(z))

    def forward(self, f_opt: Tensor, f_aux: Tensor, aux_valid: Tensor | None = None) -> Tensor:
        """Fused map; ``aux_valid`` (``B×1×H×W`` in [0, 1]) pulls the gate to 1 where aux is invalid."""
        g = self.gate_map(f_opt, f_aux)
        if aux_valid is not None:
            g = 1.0 - aux_valid * (1.0 - g)
        return self.out_norm(g * f_opt + (1.0 - g) * f_aux)


def dgfm_hidden(dim: int) -> int:
    """DGFM hidden width: ``max(32, floor(D·min(0.25, 0.125)))``."""
    return max(32, math.floor(dim * min(0.25, 0.125)))


class AuxHead(nn.Sequential):
    """Training-only head: 3×3 conv + BN + ReLU6, Dropout(0.1), bias-free 1×1 classifier."""

    def __init__(self, channels: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__(
            ConvBNAct(channels, channels, 3, nn.ReLU6),
            nn.Dropout(dropout),
            nn.Conv2d(channels, num_classes, 1, bias=False),
        )


# --------------------------------------------------------------------------- MCRM
def mcrm_counts(batch: int, ratio: float = 0.25) -> tuple[int, int, bool]:
    """How many samples get their optical / aux input masked in a batch of ``batch``.

    The paper's rule is ``n = int(B·ratio)``, the first ``floor(n/2)`` optical and the rest aux,
    which masks nothing when ``B < 4``. rsprompt masks at least one sample per modality when
    ``B ≥ 2`` (and one modality of the single sample when ``B = 1``).

    Returns:
        ``(n_opt, n_aux, adjusted)``; ``adjusted`` tells whether the paper's rule was overridden.
    """
    n = int(batch * ratio)
    n_opt, n_aux = n // 2, n - n // 2
    paper = (n_opt, n_aux)
    if batch >= 2:
        n_opt, n_aux = max(1, n_opt), max(1, n_aux)
    elif batch == 1 and n == 0:
        n_opt, n_aux = 0, 1  # one modality of the single sample; which one is drawn in mcrm_mask
    return n_opt, n_aux, (n_opt, n_aux) != paper


def _rectangle(
    h: int, w: int, area: tuple[float, float], aspect: tuple[float, float], gen: torch.Generator
) -> tuple[int, int, int, int] | None:
    """A random rectangle ``(top, left, height, width)`` of the given area fraction and aspect.

    The aspect ratio is width / height, as in the released MoBaNet code: for an area ``A`` and a
    ratio ``ar``, ``height = sqrt(A / ar)`` and ``width = sqrt(A · ar)``.
    """
    for _ in range(10):
        frac = area[0] + (area[1] - area[0]) * float(torch.rand((), generator=gen))
        ratio = aspect[0] + (aspect[1] - aspect[0]) * float(torch.rand((), generator=gen))
        rh = round(math.sqrt(frac * h * w / ratio))
        rw = round(math.sqrt(frac * h * w * ratio))
        if 1 <= rh <= h and 1 <= rw <= w:
            top = int(torch.randint(0, h - rh + 1, (), generator=gen))
            left = int(torch.randint(0, w - rw + 1, (), generator=gen))
            return top, left, rh, rw
    return None


def mcrm_mask(
    optical: Tensor,
    aux: Tensor,
    *,
    ratio: float = 0.25,
    area: tuple[float, float] = (0.1, 0.3),
    aspect: tuple[float, float] = (0.5, 2.0),
    variant: str = "rectangle",
    cell: int = 14,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Modality-conditional random masking (MCRM) of a normalised, padded batch.

    Picks ``n_opt + n_aux`` distinct samples (see :func:`mcrm_counts`); the first ``n_opt`` lose a
    region of their optical input, the others of their aux input (zeroed; a sample never loses
    both). ``variant``: ``"rectangle"`` (paper: one rectangle of area U(area) of the crop, aspect
    U(aspect), placed uniformly, up to 10 tries), ``"patches"`` (the paper figure: ``cell``-sized
    holes on the patch grid covering a U(area) fraction) or ``"modality"`` (rsprompt option: the
    whole modality of the sample).

    Returns:
        ``(optical, aux, info)`` with new tensors and ``info = {"optical": [indices], "aux":
        [indices], "adjusted": bool, "masks": B×1×H×W float (1 = zeroed)}``.
    """
    if variant not in MCRM_VARIANTS:
        raise ValueError(f"unknown MCRM variant {variant!r}; choose one of {MCRM_VARIANTS}")
    b, _, h, w = optical.shape
    gen = generator if generator is not None else _default_generator()
    n_opt, n_aux, adjusted = mcrm_counts(b, ratio)
    order = torch.randperm(b, generator=gen).tolist()
    if b == 1 and n_opt + n_aux == 1 and float(torch.rand((), generator=gen)) < 0.5:
        n_opt, n_aux = 1, 0
    opt_idx, aux_idx = order[:n_opt], order[n_opt : n_opt + n_aux]
    masks = torch.zeros(b, 1, h, w, dtype=optical.dtype, device=optical.device)
    for i in opt_idx + aux_idx:
        if variant == "modality":
            masks[i] = 1
        elif variant == "rectangle":
            rect = _rectangle(h, w, area, aspect, gen)
            if rect is not None:
                top, left, rh, rw = rect
                masks[i, :, top : top + rh, left : left + rw] = 1
        else:
            gh, gw = math.ceil(h / cell), math.ceil(w / cell)
            frac = area[0] + (area[1] - area[0]) * float(torch.rand((), generator=gen))
            k = max(1, round(frac * gh * gw))
            cells = torch.randperm(gh * gw, generator=gen)[:k]
            grid = torch.zeros(gh * gw, dtype=optical.dtype)
            grid[cells] = 1
            grid = grid.view(1, 1, gh, gw).repeat_interleave(cell, 2).repeat_interleave(cell, 3)
            masks[i] = grid[0, :, :h, :w].to(optical.device)
    keep_opt = torch.ones_like(masks)
    keep_aux = torch.ones_like(masks)
    if opt_idx:
        keep_opt[opt_idx] = 1 - masks[opt_idx]
    if aux_idx:
        keep_aux[aux_idx] = 1 - masks[aux_idx]
    info = {"optical": opt_idx, "aux": aux_idx, "adjusted": adjusted, "masks": masks}
    return optical * keep_opt, aux * keep_aux, info


def _default_generator() -> torch.Generator:
    """A CPU generator seeded from the global RNG (so ``torch.manual_seed`` governs MCRM)."""
    seed = int(torch.randint(0, 2**62, ()))
    return torch.Generator().manual_seed(seed)


def hard_pixel_target(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """``target`` with every pixel the main head already gets right set to ``ignore_index``."""
    hard = target.clone()
    hard[logits.detach().argmax(1) == target] = ignore_index
    return hard


def _ce(logits: Tensor, target: Tensor, ignore_index: int) -> Tensor:
    """Mean CE over non-ignored pixels; 0 (with a graph) when every pixel is ignored."""
    if not bool((target != ignore_index).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, ignore_index=ignore_index)


# --------------------------------------------------------------------------- model
class MoBaNet(SegmentationModel):
    """MoBaNet on a staged frozen encoder (see the module docstring).

    Args:
        encoder: The frozen encoder (from :func:`~rsprompt.models.encoders.build_encoder`).
        num_classes: Classes ``K``.
        aux_channels: Channels ``A ≥ 1`` of the aux modality (1 = DSM, replicated to the stem's
            channels; any other count adapts the stem copy's first convolution).
        mcrm: Train with MCRM and the hard-pixel auxiliary heads (training only).
        mcrm_ratio: Fraction of the batch that is masked (0.25).
        mcrm_area: Range of the masked area fraction (0.1, 0.3).
        mcrm_aspect: Range of the rectangle aspect ratio (0.5, 2).
        mcrm_variant: ``"rectangle"`` (paper), ``"patches"`` (paper figure), ``"modality"``.
        hard_loss_weight: Weight of each hard-pixel auxiliary loss (0.01).
        cpia_ratio: CPIA bottleneck ratio (0.25).
        proj_channels: Width of the per-stage projections (256).
        decoder_channels: UPerNet width (64).
        ignore_index: Label ignored by the losses.
    """

    frozen_modules = ("encoder",)
    decoder_modules = ("decoder",)
    training_only_modules = ("aux_heads",)

    def __init__(
        self,
        encoder: FrozenEncoder,
        num_classes: int,
        aux_channels: int = 1,
        *,
        mcrm: bool = True,
        mcrm_ratio: float = 0.25,
        mcrm_area: Sequence[float] = (0.1, 0.3),
        mcrm_aspect: Sequence[float] = (0.5, 2.0),
        mcrm_variant: str = "rectangle",
        hard_loss_weight: float = 0.01,
        cpia_ratio: float = 0.25,
        proj_channels: int = 256,
        decoder_channels: int = 64,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__("mobanet", encoder.name, num_classes, aux_channels)
        if aux_channels < 1:
            raise ValueError(
                "MoBaNet fuses two modalities and needs aux_channels >= 1 (1 = DSM); for an "
                "optical-only model use another method, or pass aux=None at inference"
            )
        if mcrm_variant not in MCRM_VARIANTS:
            raise ValueError(
                f"unknown MCRM variant {mcrm_variant!r}; choose one of {MCRM_VARIANTS}"
            )
        self.encoder = encoder
        self.aux_repeat = aux_channels == 1 and encoder.in_chans != 1
        self.aux_patch_embed = self._aux_stem(encoder, aux_channels)
        self.cpia = nn.ModuleList(CPIA(c, cpia_ratio) for c in encoder.in_widths)
        self.dgfm = nn.ModuleList(DGFM(c) for c in encoder.widths)
        self.proj = nn.ModuleList(
            nn.Conv2d(c, proj_channels, 1, bias=False) for c in encoder.widths
        )
        self.decoder = UPerNet(
            [proj_channels] * encoder.num_stages, num_classes, channels=decoder_channels
        )
        self.aux_heads = (
            nn.ModuleList(AuxHead(proj_channels, num_classes) for _ in range(2)) if mcrm else None
        )
        self.mcrm = mcrm
        self.mcrm_ratio = mcrm_ratio
        self.mcrm_area = (float(mcrm_area[0]), float(mcrm_area[1]))
        self.mcrm_aspect = (float(mcrm_aspect[0]), float(mcrm_aspect[1]))
        self.mcrm_variant = mcrm_variant
        self.hard_loss_weight = hard_loss_weight
        self.ignore_index = ignore_index
        self._mcrm_warned = False
        self.last_mcrm: dict[str, Any] | None = None
        self.freeze()

    @staticmethod
    def _aux_stem(encoder: FrozenEncoder, aux_channels: int) -> nn.Module:
        stem = encoder.stem_copy()
        if aux_channels in (1, encoder.in_chans):
            return stem
        from timm.models import adapt_input_conv

        for parent in stem.modules():
            for name, child in parent.named_children():
                if isinstance(child, nn.Conv2d):
                    conv = nn.Conv2d(
                        aux_channels,
                        child.out_channels,
                        child.kernel_size,
                        child.stride,
                        child.padding,
                        child.dilation,
                        child.groups,
                        child.bias is not None,
                        device=child.weight.device,
                    )
                    if not child.weight.is_meta:
                        with torch.no_grad():
                            conv.weight.copy_(adapt_input_conv(aux_channels, child.weight))
                            if child.bias is not None:
                                conv.bias.copy_(child.bias)
                    setattr(parent, name, conv)
                    return stem
        raise TypeError("the encoder's stem has no Conv2d to adapt to the aux channels")

    # ------------------------------------------------------------------ forward
    def _prepare(
        self, image: Tensor, aux: Tensor | None, aux_valid: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        b, _, h, w = image.shape
        if aux is None:
            aux = image.new_zeros(b, self.aux_channels, h, w)
            valid: Tensor | None = image.new_zeros(b, 1, h, w)
        else:
            if aux.shape[0] != b or aux.shape[-2:] != image.shape[-2:]:
                raise ValueError(
                    f"aux {tuple(aux.shape)} does not match the image {tuple(image.shape)}"
                )
            if aux.shape[1] != self.aux_channels:
                raise ValueError(f"expected {self.aux_channels} aux channels, got {aux.shape[1]}")
            valid = None
            if aux_valid is not None:
                valid = aux_valid.to(image.dtype)
                if valid.ndim == 3:
                    valid = valid[:, None]
                if bool((valid >= 1).all()):
                    valid = None  # all valid: exactly the normal path
                else:
                    aux = aux * valid
        if self.aux_repeat:
            aux = aux.expand(-1, self.encoder.in_chans, -1, -1)
        m = self.encoder.pad_multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            image = F.pad(image, (0, pw, 0, ph))
            aux = F.pad(aux, (0, pw, 0, ph))
            if valid is not None:
                valid = F.pad(valid, (0, pw, 0, ph), value=1.0)
        return image, aux, valid

    def _apply_mcrm(self, image: Tensor, aux: Tensor) -> tuple[Tensor, Tensor]:
        image, aux, info = mcrm_mask(
            image,
            aux,
            ratio=self.mcrm_ratio,
            area=self.mcrm_area,
            aspect=self.mcrm_aspect,
            variant=self.mcrm_variant,
            cell=self.encoder.pad_multiple,
        )
        self.last_mcrm = info
        if info["adjusted"] and not self._mcrm_warned:
            self._mcrm_warned = True
            b = image.shape[0]
            msg = (
                f"MCRM: a batch of {b} gives int({b}·{self.mcrm_ratio}) = "
                f"{int(b * self.mcrm_ratio)} masked samples under the paper's rule, which would "
                f"silently mask nothing (or no optical sample); rsprompt masks "
                f"{len(info['optical'])} optical and {len(info['aux'])} aux sample(s) per batch "
                f"of this size instead (never both modalities of a sample)."
            )
            warnings.warn(msg, stacklevel=3)
            log.warning(msg)
        return image, aux

    def forward(
        self, image: Tensor, aux: Tensor | None = None, aux_valid: Tensor | None = None
    ) -> Tensor | dict[str, Tensor]:
        """Logits ``B×K×H×W`` (eval) or ``{"logits", "aux_opt", "aux_aux"}`` (training).

        Args:
            image: Normalised optical ``B×3×H×W``.
            aux: Aux ``B×A×H×W`` scaled to [0, 1], or ``None`` when the modality is missing.
            aux_valid: ``B×1×H×W`` (1 = valid aux), or ``None`` (all valid).
        """
        h, w = image.shape[-2:]
        x_opt, x_aux, valid = self._prepare(image, aux, aux_valid)
        training = self.training
        if training and self.mcrm:
            x_opt, x_aux = self._apply_mcrm(x_opt, x_aux)
        enc = self.encoder
        s_opt = enc.begin(enc.embed(x_opt))
        s_aux = enc.begin(self.aux_patch_embed(x_aux))
        fused: list[Tensor] = []
        first_opt = first_aux = None
        for i in range(enc.num_stages):
            m_opt = enc.stage_map(s_opt).permute(0, 2, 3, 1)
            m_aux = enc.stage_map(s_aux).permute(0, 2, 3, 1)
            m_opt, m_aux = self.cpia[i](m_opt, m_aux)
            s_opt = enc.with_stage_map(s_opt, m_opt.permute(0, 3, 1, 2))
            s_aux = enc.with_stage_map(s_aux, m_aux.permute(0, 3, 1, 2))
            both = enc.run_stage(i, type(s_opt)(torch.cat([s_opt.x, s_aux.x]), s_opt.hw))
            x_o, x_a = both.x.chunk(2)
            s_opt, s_aux = type(both)(x_o, both.hw), type(both)(x_a, both.hw)
            f_opt, f_aux = enc.readout(i, s_opt), enc.readout(i, s_aux)
            v = None if valid is None else F.interpolate(valid, size=f_opt.shape[-2:], mode="area")
            fused.append(self.proj[i](self.dgfm[i](f_opt, f_aux, v)))
            if i == 0 and training and self.aux_heads is not None:
                first_opt, first_aux = self.proj[0](f_opt), self.proj[0](f_aux)
        size = x_opt.shape[-2:]
        logits = self.decoder(fused, output_size=size)[..., :h, :w]
        if not training:
            return logits
        out = {"logits": logits}
        if self.aux_heads is not None and first_opt is not None:
            out["aux_opt"] = F.interpolate(
                self.aux_heads[0](first_opt), size=size, mode="bilinear", align_corners=False
            )[..., :h, :w]
            out["aux_aux"] = F.interpolate(
                self.aux_heads[1](first_aux), size=size, mode="bilinear", align_corners=False
            )[..., :h, :w]
        return out

    def compute_loss(self, output: dict[str, Tensor] | Tensor, target: Tensor) -> dict[str, Tensor]:
        """``CE(main) + w·(CE(aux_opt, hard) + CE(aux_aux, hard))``; ``hard`` = misclassified pixels.

        Returns:
            ``{"loss", "loss_main"}`` plus ``"loss_hard_opt"``/``"loss_hard_aux"`` with aux heads.
        """
        if isinstance(output, Tensor):
            output = {"logits": output}
        logits = output["logits"]
        target = target.long()
        main = _ce(logits, target, self.ignore_index)
        terms = {"loss_main": main}
        total = main
        if "aux_opt" in output:
            hard = hard_pixel_target(logits, target, self.ignore_index)
            terms["loss_hard_opt"] = _ce(output["aux_opt"], hard, self.ignore_index)
            terms["loss_hard_aux"] = _ce(output["aux_aux"], hard, self.ignore_index)
            total = total + self.hard_loss_weight * (
                terms["loss_hard_opt"] + terms["loss_hard_aux"]
            )
        terms["loss"] = total
        return terms


# --------------------------------------------------------------------------- registry
@register_method("mobanet")
def build_mobanet(
    encoder: str,
    num_classes: int,
    aux_channels: int = 1,
    weights: str | None = None,
    *,
    device: str | torch.device | None = None,
    img_size: int | None = None,
    taps: Sequence[int] | None = None,
    encoder_seed: int | None = 0,
    encoder_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> MoBaNet:
    """Build MoBaNet on a frozen encoder.

    Args:
        encoder: Encoder name (paper: ``vit_large_patch14_dinov2``; also ViT-S/B/g, MiT, Swin, CNNs).
        num_classes: Classes ``K``.
        aux_channels: Aux channels (1 = DSM).
        weights: Encoder weights (local file, ``"package"``, ``"hub"`` or ``None`` = random).
        device: ``"meta"`` builds without memory (parameter counting; smp MiT builds on the CPU).
        img_size: Encoder build size (ViT: position-embedding grid, default the pretraining size —
            518 for DINOv2, as in the paper; Swin: the crop size).
        taps: ViT block indices ending each stage (default: four equal groups).
        encoder_seed: Seed of the random encoder init when ``weights`` is ``None``.
        encoder_kwargs: Extra options for the encoder constructor (e.g. a tiny ``depth``).
        **kwargs: :class:`MoBaNet` options (``mcrm``, ``mcrm_variant``, ``hard_loss_weight``…).
    """
    enc_kw: dict[str, Any] = dict(encoder_kwargs or {})
    if taps is not None:
        enc_kw["taps"] = list(taps)
    if img_size is not None:
        enc_kw["img_size"] = img_size
    enc_kw.setdefault("drop_path_rate", 0.0)
    meta = device is not None and torch.device(device).type == "meta"
    enc = build_encoder(encoder, weights, device=device, encoder_seed=encoder_seed, **enc_kw)
    params_meta = meta and all(p.is_meta for p in enc.parameters())
    if params_meta:
        with torch.device("meta"):
            model = MoBaNet(enc, num_classes, aux_channels, **kwargs)
    else:
        model = MoBaNet(enc, num_classes, aux_channels, **kwargs)
        if device is not None and not meta:
            model = model.to(device)
    return model
