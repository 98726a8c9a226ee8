"""Joint augmentation of image, aux, aux validity and mask with kornia.

kornia's ``AugmentationSequential`` in dict mode silently passes through keys it does not know
(an ``aux`` key stays unflipped). :class:`JointAugmentation` therefore calls it positionally with
explicit ``data_keys`` (``input`` for image, aux and aux validity, ``mask`` for the labels), so
one set of random parameters moves all four together.

Masks are geometrically transformed as ``mask + 1`` in float, so that pixels a transform pads
(value 0) become :data:`~rsprompt.data.labels.IGNORE_INDEX` instead of class 0; aux validity pads
with 0 (invalid).

Example:
    >>> import torch
    >>> aug = JointAugmentation(hflip=1.0, vflip=0.0, rotate90=False)
    >>> batch = {"image": torch.arange(4.0).view(1, 1, 2, 2), "mask": torch.tensor([[[0, 1], [2, 3]]])}
    >>> aug(batch)["mask"].tolist()
    [[[1, 0], [3, 2]]]
"""

from __future__ import annotations

from typing import Any

import kornia.augmentation as K
import torch
from torch import nn

from rsprompt.data.labels import IGNORE_INDEX


class JointAugmentation(nn.Module):
    """Random flips, 90° rotations and optional scaling applied identically to every modality.

    Args:
        hflip: Probability of a horizontal flip.
        vflip: Probability of a vertical flip.
        rotate90: Also rotate by a random multiple of 90° (probability 0.5).
        scale: ``(min, max)`` random scale of an affine zoom (``None``: no scaling), e.g.
            ``(0.5, 2.0)``; scaling pads with ignore/invalid pixels when zooming out.
        keys: Float keys transformed as images (missing keys are skipped).
    """

    def __init__(
        self,
        hflip: float = 0.5,
        vflip: float = 0.5,
        rotate90: bool = True,
        scale: tuple[float, float] | None = None,
        keys: tuple[str, ...] = ("image", "aux", "aux_valid"),
    ) -> None:
        super().__init__()
        ops: list[nn.Module] = []
        if hflip > 0:
            ops.append(K.RandomHorizontalFlip(p=hflip))
        if vflip > 0:
            ops.append(K.RandomVerticalFlip(p=vflip))
        if rotate90:
            ops.append(K.RandomRotation90(times=(0, 3), p=0.5))
        if scale is not None:
            ops.append(K.RandomAffine(degrees=0.0, scale=scale, p=1.0, padding_mode="zeros"))
        self.keys = keys
        self.config = {"hflip": hflip, "vflip": vflip, "rotate90": rotate90, "scale": scale}
        self.ops = ops

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Augment a batch ``{"image": B×C×H×W, "aux": …, "aux_valid": …, "mask": B×H×W}``.

        Returns:
            A new dict with the transformed tensors (other keys untouched).
        """
        if not self.ops:
            return batch
        keys = [k for k in self.keys if k in batch]
        tensors = [batch[k] for k in keys]
        data_keys = ["input"] * len(keys)
        mask = batch.get("mask")
        if mask is not None:
            m = mask.unsqueeze(1) if mask.ndim == 3 else mask
            shifted = torch.where(m == IGNORE_INDEX, torch.zeros_like(m), m + 1).float()
            tensors.append(shifted)
            data_keys.append("mask")
        seq = K.AugmentationSequential(*self.ops, data_keys=data_keys)
        out = seq(*tensors)
        if not isinstance(out, list | tuple):
            out = [out]
        result = dict(batch)
        for k, t in zip(keys, out[: len(keys)]):
            result[k] = t
        if "aux_valid" in result and "aux_valid" in keys:
            result["aux_valid"] = (result["aux_valid"] > 0.5).to(batch["aux_valid"].dtype)
        if mask is not None:
            m = torch.round(out[len(keys)]).long()
            m = torch.where(m <= 0, torch.full_like(m, IGNORE_INDEX), m - 1)
            result["mask"] = m.squeeze(1) if mask.ndim == 3 else m
            result["mask"] = result["mask"].to(mask.dtype)
        return result

    def extra_repr(self) -> str:
        """Show the configuration."""
        return ", ".join(f"{k}={v}" for k, v in self.config.items())
