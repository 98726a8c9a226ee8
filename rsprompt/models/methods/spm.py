"""SPM: prompt-matched semantic segmentation (arXiv 2208.10159) — rsprompt's reconstruction.

No code was released with the paper. This module implements the design written down in
``docs/methods/spm.md``, reconstructed from the paper's description: the frozen encoder is split
into stages (any :class:`~rsprompt.models.encoders.FrozenEncoder`: CNN, MiT, Swin, ViT with taps)
whose modules are kept EXACTLY as they are — nothing inside them is edited or hooked; SPM only acts
on the features *between* stages, through the encoder's public staged interface
(``run_stage`` / ``stage_map`` / ``with_stage_map`` / ``readout``).

After every stage ``s`` but the last (frozen output ``F_s``, ``C_s`` channels), a semantic-aware
prompt matcher computes, with a shared width ``m`` (default 64):

* an interim semantic map ``M_s = softmax(Conv1×1(C_s→K)(F_s))``, deep-supervised with
  cross-entropy against the (nearest-)downsampled target, weight 0.4 per map;
* ``K`` class prototypes ``π_s`` (``M_s``-weighted average pooling of ``F_s``) and the semantic
  re-projection ``R_s = Σ_k M_s[k]·π_s[k]``;
* ``u_s = [φ_s(F_s) + α_s(aux_s); ψ_s(R_s)]`` with per-stage 1×1 adapters ``φ_s, ψ_s: C_s→m``;
* a recurrent update shared across stages (GRU-like, ``h_0 = 0``; ``ĥ`` = the previous state
  resized bilinearly to ``H_s×W_s``): ``z = σ(W_z·[u_s; ĥ])``, ``h̃ = tanh(W_h·[u_s; ĥ])``,
  ``h_s = (1−z)⊙ĥ + z⊙h̃``, with ``W_z, W_h`` 1×1 convs ``3m→m`` SHARED by all stages;
* the prompt ``Δ_s = Conv1×1(m→C_s)(h_s)`` (zero-initialised) is added at the stage boundary:
  ``F_s ← F_s + Δ_s``, the input of the next frozen stage; the decoder reads the prompted maps.

Choices made by rsprompt (not in the paper's text):

* Multimodal extension: the aux image (``A`` channels, default 1 = DSM) is average-pooled to each
  stage's grid and a per-stage 3×3 conv ``α_s(A→m)`` adds it to ``φ_s(F_s)``. Missing aux
  (``aux=None``, or ``aux_channels=0``): the ``α_s`` term is dropped. ``aux_valid`` zeroes invalid
  aux pixels and multiplies ``α_s``'s output by the pooled validity, so an all-ones mask equals
  the normal path and an all-zeros mask equals ``aux=None``. A 1-channel aux is replicated to
  ``A`` channels.
* The matcher reads the encoder's read-out of each stage (``readout``: the stage map itself for
  CNN/MiT/Swin; the frozen final norm applied to the tokens for a ViT) and adds ``Δ_s`` to the
  running features (``stage_map``; ViT prefix tokens untouched).
* Decoder: the 64-channel UPerNet of :mod:`rsprompt.models.decoders` (as MoBaNet) on the last 4
  levels: the prompted outputs of stages ``S−4…S−2`` and the last stage's output.
* Inputs whose sides are not multiples of the encoder's ``pad_multiple`` are zero-padded and the
  logits cropped back.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsprompt.data.labels import IGNORE_INDEX
from rsprompt.models.base import SegmentationModel, count_parameters
from rsprompt.models.decoders import UPerNet
from rsprompt.models.encoders import FrozenEncoder, build_encoder
from rsprompt.models.registry import register_method

__all__ = ["SPM", "PromptMatcher", "RecurrentCell", "build_spm", "class_prototypes"]


def class_prototypes(features: Tensor, probs: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Class prototypes and the semantic re-projection.

    Args:
        features: ``B×C×H×W`` features.
        probs: ``B×K×H×W`` class probabilities (softmax over ``K``).
        eps: Guards the division for classes absent from the map.

    Returns:
        ``(prototypes, reprojection)``: ``B×K×C`` probability-weighted means of the features and
        ``B×C×H×W`` maps ``Σ_k probs[k]·prototypes[k]``.
    """
    weights = probs.flatten(2)  # B×K×N
    protos = weights @ features.flatten(2).transpose(1, 2)  # B×K×C
    protos = protos / (weights.sum(dim=2, keepdim=True) + eps)
    reproj = torch.einsum("bkc,bkhw->bchw", protos, probs)
    return protos, reproj


class RecurrentCell(nn.Module):
    """GRU-like update shared across stages: ``h = (1−z)⊙ĥ + z⊙tanh(W_h·[u; ĥ])``.

    Args:
        dim: State width ``m`` (input ``u`` has ``2m`` channels).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gate = nn.Conv2d(3 * dim, dim, 1)  # W_z
        self.candidate = nn.Conv2d(3 * dim, dim, 1)  # W_h

    def forward(self, u: Tensor, h: Tensor) -> Tensor:
        """New state from the stage input ``u`` (``B×2m×H×W``) and previous state ``h``."""
        uh = torch.cat([u, h], dim=1)
        z = torch.sigmoid(self.gate(uh))
        return (1 - z) * h + z * torch.tanh(self.candidate(uh))


class PromptMatcher(nn.Module):
    """The per-stage part of SPM's matcher (the recurrent cell is shared and passed in).

    Args:
        channels: Stage width ``C_s``.
        num_classes: Classes ``K``.
        dim: Shared width ``m``.
        aux_channels: Aux channels ``A`` (0 = no ``α_s``).
    """

    def __init__(self, channels: int, num_classes: int, dim: int, aux_channels: int) -> None:
        super().__init__()
        self.seg = nn.Conv2d(channels, num_classes, 1)
        self.phi = nn.Conv2d(channels, dim, 1)
        self.psi = nn.Conv2d(channels, dim, 1)
        self.alpha = nn.Conv2d(aux_channels, dim, 3, padding=1) if aux_channels > 0 else None
        self.prompt = nn.Conv2d(dim, channels, 1)
        nn.init.zeros_(self.prompt.weight)
        nn.init.zeros_(self.prompt.bias)

    def forward(
        self,
        features: Tensor,
        h_prev: Tensor,
        cell: RecurrentCell,
        aux: Tensor | None = None,
        aux_valid: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Match one stage.

        Args:
            features: ``F_s`` (``B×C_s×H_s×W_s``).
            h_prev: The previous recurrent state ``ĥ`` already resized to ``H_s×W_s``.
            cell: The shared recurrent cell.
            aux: The aux image pooled to ``H_s×W_s`` (or None: ``α_s`` dropped).
            aux_valid: Pooled validity ``B×1×H_s×W_s`` (or None = all valid).

        Returns:
            ``(delta, h, seg_logits)``: the prompt ``Δ_s``, the new state ``h_s`` and the interim
            semantic logits ``B×K×H_s×W_s``.
        """
        seg_logits = self.seg(features)
        _, reproj = class_prototypes(features, seg_logits.softmax(dim=1))
        local = self.phi(features)
        if aux is not None and self.alpha is not None:
            a = self.alpha(aux)
            local = local + (a if aux_valid is None else a * aux_valid)
        h = cell(torch.cat([local, self.psi(reproj)], dim=1), h_prev)
        return self.prompt(h), h, seg_logits


class SPM(SegmentationModel):
    """SPM on a frozen staged encoder (see the module docstring).

    Args:
        encoder: A :class:`~rsprompt.models.encoders.FrozenEncoder` with at least 2 stages.
        num_classes: Number of classes ``K``.
        aux_channels: Aux channels ``A`` (0 = no aux modality).
        dim: Shared matcher width ``m``.
        aux_weight: Weight of each interim map's deep-supervision cross-entropy.
        decoder_channels: UPerNet width.
    """

    frozen_modules = ("encoder",)
    decoder_modules = ("decoder",)

    def __init__(
        self,
        encoder: FrozenEncoder,
        num_classes: int,
        aux_channels: int = 1,
        dim: int = 64,
        aux_weight: float = 0.4,
        decoder_channels: int = 64,
    ) -> None:
        super().__init__("spm", encoder.name, num_classes, aux_channels)
        if encoder.num_stages < 2:
            raise ValueError(f"SPM needs an encoder with >= 2 stages, got {encoder.num_stages}")
        self.encoder = encoder
        self.dim = dim
        self.aux_weight = aux_weight
        widths = list(encoder.widths)
        self.matchers = nn.ModuleList(
            PromptMatcher(c, num_classes, dim, aux_channels) for c in widths[:-1]
        )
        self.cell = RecurrentCell(dim)
        self.num_levels = min(4, encoder.num_stages)
        self.decoder = UPerNet(widths[-self.num_levels :], num_classes, channels=decoder_channels)
        #: Optical normalisation of the encoder's pretraining (mean, std per channel).
        self.normalization = {"mean": tuple(encoder.mean), "std": tuple(encoder.std)}
        self.freeze()

    # ------------------------------------------------------------------ helpers
    def _prepare_aux(self, aux: Tensor | None, aux_valid: Tensor | None) -> tuple[Any, Any]:
        if aux is None or self.aux_channels == 0:
            return None, None
        if aux.shape[1] != self.aux_channels:
            if aux.shape[1] != 1:
                raise ValueError(
                    f"aux has {aux.shape[1]} channels; this SPM model expects "
                    f"{self.aux_channels} (or 1, replicated)"
                )
            aux = aux.expand(-1, self.aux_channels, -1, -1)
        if aux_valid is not None:
            aux_valid = aux_valid.to(aux.dtype)
            aux = aux * aux_valid
        return aux, aux_valid

    def _pad(self, x: Tensor) -> Tensor:
        m = self.encoder.pad_multiple
        ph, pw = (-x.shape[-2]) % m, (-x.shape[-1]) % m
        return F.pad(x, (0, pw, 0, ph)) if ph or pw else x

    def forward_features(
        self, image: Tensor, aux: Tensor | None = None, aux_valid: Tensor | None = None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Run the prompted encoder.

        Args:
            image: Optical ``B×3×H×W``.
            aux: Aux ``B×A×H×W`` (or ``B×1×H×W``) or None.
            aux_valid: ``B×1×H×W`` validity of the aux (1 = valid) or None.

        Returns:
            ``(taps, interim)``: every stage's (prompted) read-out ``B×C_s×H_s×W_s`` and the
            interim semantic logits of the prompted stages.
        """
        enc = self.encoder
        aux, aux_valid = self._prepare_aux(aux, aux_valid)
        state = enc.begin(enc.embed(image))
        h: Tensor | None = None
        taps: list[Tensor] = []
        interim: list[Tensor] = []
        for s in range(enc.num_stages):
            state = enc.run_stage(s, state)
            if s < len(self.matchers):
                feats = enc.readout(s, state)
                size = feats.shape[-2:]
                if h is None:
                    h_prev = feats.new_zeros(feats.shape[0], self.dim, *size)
                elif h.shape[-2:] != size:
                    h_prev = F.interpolate(h, size=size, mode="bilinear", align_corners=False)
                else:
                    h_prev = h
                aux_s = valid_s = None
                if aux is not None:
                    aux_s = F.adaptive_avg_pool2d(aux, size)
                    if aux_valid is not None:
                        valid_s = F.adaptive_avg_pool2d(aux_valid, size)
                delta, h, seg = self.matchers[s](feats, h_prev, self.cell, aux_s, valid_s)
                state = enc.with_stage_map(state, enc.stage_map(state) + delta)
                interim.append(seg)
            taps.append(enc.readout(s, state))
        return taps, interim

    def forward(
        self, image: Tensor, aux: Tensor | None = None, aux_valid: Tensor | None = None
    ) -> Tensor | dict[str, Any]:
        """Logits ``B×K×H×W`` in eval; ``{"logits", "interim"}`` in training mode."""
        h, w = image.shape[-2:]
        image = self._pad(image)
        aux = None if aux is None else self._pad(aux)
        aux_valid = None if aux_valid is None else self._pad(aux_valid)
        taps, interim = self.forward_features(image, aux, aux_valid)
        logits = self.decoder(taps[-self.num_levels :], output_size=image.shape[-2:])[..., :h, :w]
        if self.training:
            return {"logits": logits, "interim": interim}
        return logits

    def compute_loss(self, output: dict[str, Any], target: Tensor) -> dict[str, Tensor]:
        """Cross-entropy of the logits + ``aux_weight`` × CE of every interim map.

        The target is padded like the input (with the ignore index) and downsampled (nearest) to
        each interim map's grid.
        """
        ce = F.cross_entropy(output["logits"], target, ignore_index=IGNORE_INDEX)
        losses = {"ce": ce}
        total = ce
        m = self.encoder.pad_multiple
        ph, pw = (-target.shape[-2]) % m, (-target.shape[-1]) % m
        padded = F.pad(target, (0, pw, 0, ph), value=IGNORE_INDEX) if ph or pw else target
        for i, seg in enumerate(output.get("interim", [])):
            small = F.interpolate(padded[:, None].float(), size=seg.shape[-2:], mode="nearest")
            term = F.cross_entropy(seg, small[:, 0].long(), ignore_index=IGNORE_INDEX)
            losses[f"interim_{i}"] = term
            total = total + self.aux_weight * term
        losses["loss"] = total
        return losses

    def parameter_report(self) -> dict[str, Any]:
        """The base report plus ``encoder_params`` and ``encoder_fraction`` (prompt / encoder)."""
        report = super().parameter_report()
        encoder_params = count_parameters(self.encoder.parameters())
        report["encoder_params"] = encoder_params
        report["encoder_fraction"] = report["prompt"] / encoder_params
        return report


@register_method("spm")
def build_spm(
    encoder: str,
    num_classes: int,
    aux_channels: int = 1,
    weights: str | None = None,
    *,
    device: str | torch.device | None = None,
    dim: int = 64,
    aux_weight: float = 0.4,
    decoder_channels: int = 64,
    encoder_seed: int | None = 0,
    encoder_kwargs: dict[str, Any] | None = None,
) -> SPM:
    """Build SPM on any staged encoder.

    Args:
        encoder: Encoder name for :func:`~rsprompt.models.encoders.build_encoder` (``resnet50``,
            ``mit_b2``, ``vit_base_patch16_224``, ``swin_tiny_patch4_window7_224``…).
        num_classes: Number of classes ``K``.
        aux_channels: Aux channels (default 1; 0 = none).
        weights: Encoder weights (a local file; see ``build_encoder``); ``None`` = random init.
        device: Build on this device (``"meta"`` to count parameters; smp's MiT builds on CPU).
        dim: Shared matcher width ``m``.
        aux_weight: Weight of each interim map's deep-supervision loss.
        decoder_channels: UPerNet width.
        encoder_seed: Seed of the random encoder when ``weights`` is ``None``.
        encoder_kwargs: Extra ``build_encoder`` options (``taps`` for a ViT, ``img_size``, tiny
            model sizes such as ``{"depth": 4, "embed_dim": 64}``).

    Returns:
        The SPM model with its encoder frozen.
    """
    kwargs = dict(encoder_kwargs or {})
    if device is not None:
        kwargs["device"] = device
    enc = build_encoder(encoder, weights, encoder_seed=encoder_seed, **kwargs)
    is_meta = next(enc.parameters()).device.type == "meta"
    with torch.device("meta") if is_meta else contextlib.nullcontext():
        model = SPM(enc, num_classes, aux_channels, dim, aux_weight, decoder_channels)
    if device is not None and not is_meta:
        model = model.to(device)
    return model
