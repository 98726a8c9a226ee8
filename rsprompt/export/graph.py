"""The exported graph: raw stacked values in, softmax probabilities out.

:class:`RawInputModel` wraps a :class:`~rsprompt.models.base.SegmentationModel` so that one
``N×(C+A)×H×W`` tensor of *raw* values (the checkpoint's optical bands, then the aux band(s))
goes in and ``N×K×H×W`` probabilities come out. Everything rsprompt's prediction does between
reading a window and the model runs inside the graph, with the same arithmetic as
:mod:`rsprompt.data.normalize`:

- optical: non-finite values become 0 (as the scene reader does), a fitted percentile scaling
  clips each band to its recorded range, then ``x / scale`` is standardised with the recorded
  mean and std (one multiply-add);
- aux: a pixel is valid where every aux band is finite (and differs from the normaliser's own
  nodata value); invalid pixels are 0 in the normalised space and 0 in the validity mask given to
  the model. DSM ``minmax`` uses *fixed* statistics (the export's ``--aux-stats``/``--aux-range``)
  instead of the per-scene ones; DSM ``ndsm`` takes heights above ground (``height_input``: the
  layer ``rsprompt stack --ndsm`` writes, with the scene-wide ground of ``rsprompt predict``) and
  only clips and scales them, or else estimates the ground per input tile with the same
  algorithm as :func:`rsprompt.data.normalize.ground_estimate`; ``global`` and every SAR mode need
  no statistics; a checkpoint without an aux normaliser takes the raw aux (0 where invalid);
- output: ``softmax`` over the classes of whatever the model returns in eval mode (logits; RPN's
  calibrated scores), as ``rsprompt predict`` does before blending.

Example:
    >>> import torch
    >>> from rsprompt.data.normalize import DSMNormalizer, OpticalNormalizer
    >>> class Head(torch.nn.Module):  # any model(image, aux, aux_valid) -> logits
    ...     def forward(self, image, aux=None, aux_valid=None):
    ...         return torch.cat([image[:, :1], aux], 1)
    >>> net = RawInputModel(
    ...     Head(), OpticalNormalizer(), DSMNormalizer("minmax"), n_optical=3, aux_channels=1,
    ...     aux_stats={"min": 0.0, "max": 10.0},
    ... )
    >>> x = torch.zeros(1, 4, 2, 2)
    >>> x[:, 3] = 5.0  # raw height 5 of [0, 10] → 0.5
    >>> p = net(x)
    >>> tuple(p.shape), bool(torch.allclose(p.sum(1), torch.ones(1, 2, 2)))
    ((1, 2, 2, 2), True)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsprompt.data.normalize import DSMNormalizer, OpticalNormalizer, SARNormalizer


def _per_band(values: tuple[float, ...], c: int) -> Tensor:
    """``values`` (one, or one per band) as a ``1×c×1×1`` float32 tensor."""
    return torch.as_tensor(np.broadcast_to(np.asarray(values, np.float32), (c,)).copy()).view(
        1, c, 1, 1
    )


class OpticalStep(nn.Module):
    """:meth:`OpticalNormalizer.apply` on already-selected bands, for ``N×C×H×W`` tensors."""

    def __init__(self, norm: OpticalNormalizer, channels: int) -> None:
        super().__init__()
        std = _per_band(norm.std, channels)
        mean = _per_band(norm.mean, channels)
        # Same float32 constants as the numpy path: gain = 1 / (scale · std), offset = mean / std.
        self.register_buffer("gain", torch.as_tensor(1.0 / (norm.scale * std.numpy())))
        self.register_buffer("offset", mean / std)
        self.clip = norm.fitted == "percentile"
        if self.clip:
            assert norm.low is not None and norm.high is not None
            self.register_buffer("low", _per_band(norm.low, channels))
            self.register_buffer("high", _per_band(norm.high, channels))

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x = torch.where(torch.isfinite(x), x, torch.zeros_like(x))
        if self.clip:
            x = torch.minimum(torch.maximum(x, self.low), self.high)
        out = x * self.gain - self.offset
        return torch.where(torch.isfinite(out), out, torch.zeros_like(out))


def _interp_weights(n: int, cell: int, n_grid: int) -> tuple[Tensor, Tensor, Tensor]:
    """Indices and weights of :func:`rsprompt.data.normalize._interp_axis` for a whole axis."""
    pos = np.clip((np.arange(n) + 0.5) / cell - 0.5, 0, n_grid - 1)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_grid - 1)
    return torch.from_numpy(i0), torch.from_numpy(i1), torch.from_numpy((pos - i0).astype("f4"))


class GroundStep(nn.Module):
    """Per-tile ground estimate of a DSM (``N×1×H×W``, +inf where invalid), on the tile's pixels.

    Block minima on ``cell × cell`` cells, cells without data filled with the lowest cell, an
    opening (minimum then maximum filter, edges replicated) of ``radius`` cells, then bilinear
    interpolation at the pixel centres: :func:`rsprompt.data.normalize.ground_estimate` and
    :meth:`DSMNormalizer.apply` on a tile of ``size`` pixels.
    """

    def __init__(self, size: tuple[int, int], res: float, cell_m: float, window_m: float) -> None:
        super().__init__()
        self.cell = max(1, round(cell_m / res))
        self.radius = max(0, round(window_m / (2 * self.cell * res)))
        h, w = self.size = (int(size[0]), int(size[1]))
        self.grid = (-(-h // self.cell), -(-w // self.cell))
        r0, r1, wr = _interp_weights(h, self.cell, self.grid[0])
        c0, c1, wc = _interp_weights(w, self.cell, self.grid[1])
        for name, t in {"r0": r0, "r1": r1, "wr": wr, "c0": c0, "c1": c1, "wc": wc}.items():
            self.register_buffer(name, t)

    def _filter(self, g: Tensor, take_max: bool) -> Tensor:
        r = self.radius
        if r == 0:
            return g
        p = F.pad(g, (r, r, r, r), mode="replicate")
        k = 2 * r + 1
        return F.max_pool2d(p, k, 1) if take_max else -F.max_pool2d(-p, k, 1)

    def forward(self, dsm: Tensor) -> Tensor:
        """Ground height ``N×1×H×W`` under ``dsm`` (invalid pixels +inf)."""
        h, w = self.size  # fixed: the traced graph holds the padding as constants
        gh, gw = self.grid
        c = self.cell
        x = F.pad(dsm, (0, gw * c - w, 0, gh * c - h), value=math.inf)
        grid = -F.max_pool2d(-x, c, c)  # block minima (+inf: no valid pixel in the cell)
        finite = torch.isfinite(grid)
        lowest = torch.where(finite, grid, torch.full_like(grid, math.inf))
        lowest = lowest.amin(dim=(2, 3), keepdim=True)
        grid = torch.where(finite, grid, lowest)
        grid = torch.where(torch.isfinite(lowest), grid, torch.zeros_like(grid))
        grid = self._filter(self._filter(grid, take_max=False), take_max=True)
        top = grid[:, :, self.r0]
        bot = grid[:, :, self.r1]
        wc = self.wc.view(1, 1, 1, -1)
        top = top[..., self.c0] * (1 - wc) + top[..., self.c1] * wc
        bot = bot[..., self.c0] * (1 - wc) + bot[..., self.c1] * wc
        wr = self.wr.view(1, 1, -1, 1)
        return top * (1 - wr) + bot * wr


class AuxStep(nn.Module):
    """Raw aux ``N×A×H×W`` → ``(normalised aux, validity N×1×H×W)`` as rsprompt predicts.

    Args:
        norm: The checkpoint's aux normaliser (``None``: the raw aux, 0 where invalid).
        stats: Fixed ``{"min", "max"}`` for a DSM ``minmax`` normaliser.
        size: Tile size ``(H, W)`` (DSM ``ndsm`` on raw heights).
        res: Tile pixel size in metres (DSM ``ndsm`` on raw heights).
        height_input: DSM ``ndsm`` only: the input holds heights above ground in metres (NaN =
            no data), which are clipped and scaled; no ground is estimated in the graph and
            the normaliser's raw nodata value does not apply (0 m is a valid height).
    """

    def __init__(
        self,
        norm: DSMNormalizer | SARNormalizer | None,
        stats: dict[str, float] | None = None,
        size: tuple[int, int] | None = None,
        res: float | None = None,
        height_input: bool = False,
    ) -> None:
        super().__init__()
        self.norm = norm
        self.kind = None if norm is None else f"{norm.kind}:{norm.mode}"
        if height_input and self.kind != "dsm:ndsm":
            raise ValueError(f"heights above ground fit a DSM ndsm normaliser, not {self.kind}")
        self.height_input = bool(height_input)
        nodata = None if height_input else getattr(norm, "nodata", None)
        self.nodata = float(nodata) if nodata is not None and math.isfinite(nodata) else None
        self.lo = self.hi = 0.0
        if self.kind == "dsm:minmax":
            if not stats or "min" not in stats or "max" not in stats:
                raise ValueError("a DSM min–max normalisation needs fixed statistics (min, max)")
            self.lo, self.hi = float(stats["min"]), float(stats["max"])
        self.ground = None
        if self.kind == "dsm:ndsm" and not height_input:
            assert isinstance(norm, DSMNormalizer) and size is not None and res is not None
            self.ground = GroundStep(size, res, norm.cell_m, norm.window_m)

    def _valid(self, a: Tensor) -> Tensor:
        ok = torch.isfinite(a)
        if self.nodata is not None:
            ok = ok & (a != self.nodata)
        if self.kind == "sar:linear":
            ok = ok & (a > 0)
        return ok.all(dim=1, keepdim=True)

    def forward(self, a: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        ok = self._valid(a)
        zero = torch.zeros_like(a)
        safe = torch.where(ok, a, zero)
        norm = self.norm
        if norm is None:
            out = safe
        elif self.kind == "dsm:minmax":
            out = (safe - self.lo) / (self.hi - self.lo) if self.hi > self.lo else safe * 0.0
        elif self.kind == "dsm:global":
            out = (safe - norm.mean) / norm.std
        elif self.kind == "dsm:ndsm":
            assert isinstance(norm, DSMNormalizer)
            if self.ground is not None:
                inf = torch.full_like(a[:, :1], math.inf)
                safe = safe - self.ground(torch.where(ok, a[:, :1], inf))
            out = torch.clamp(safe, 0.0, norm.max_height_m) / norm.max_height_m
        elif self.kind == "sar:uint8":
            out = safe / 255.0
        else:
            assert isinstance(norm, SARNormalizer)
            if self.kind == "sar:linear":
                safe = 10.0 * torch.log10(torch.where(ok, a, torch.ones_like(a)))
            out = (torch.clamp(safe, norm.db_min, norm.db_max) - norm.db_min) / (
                norm.db_max - norm.db_min
            )
        ok = ok & torch.isfinite(out)
        return torch.where(ok, out, zero), ok.to(a.dtype)


class RawInputModel(nn.Module):
    """``model`` behind rsprompt's normalisation: raw ``N×(C+A)×H×W`` → probabilities ``N×K×H×W``.

    Args:
        model: The segmentation model in eval mode (``model(image, aux=, aux_valid=)``).
        optical: The checkpoint's optical normaliser (its band selection is already applied: the
            input holds only the selected bands, in order).
        aux: The checkpoint's aux normaliser, or ``None`` (raw aux or no aux modality).
        n_optical: Optical channels ``C``.
        aux_channels: Aux channels ``A`` (0: optical only).
        aux_stats: Fixed min/max of a DSM ``minmax`` normaliser.
        size: Tile size ``(H, W)`` (DSM ``ndsm`` on raw heights).
        res: Tile pixel size in metres (DSM ``ndsm`` on raw heights).
        height_input: The aux input holds heights above ground (DSM ``ndsm``; see
            :class:`AuxStep`).
    """

    def __init__(
        self,
        model: Any,
        optical: OpticalNormalizer,
        aux: DSMNormalizer | SARNormalizer | None,
        *,
        n_optical: int,
        aux_channels: int = 0,
        aux_stats: dict[str, float] | None = None,
        size: tuple[int, int] | None = None,
        res: float | None = None,
        height_input: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.n_optical = int(n_optical)
        self.aux_channels = int(aux_channels)
        self.optical = OpticalStep(optical, self.n_optical)
        self.aux = AuxStep(aux, aux_stats, size, res, height_input) if self.aux_channels else None

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        image = self.optical(x[:, : self.n_optical])
        if self.aux is None:
            out = self.model(image)
        else:
            aux, valid = self.aux(x[:, self.n_optical : self.n_optical + self.aux_channels])
            out = self.model(image, aux=aux, aux_valid=valid)
        if isinstance(out, dict):
            out = out["logits"]
        return torch.softmax(out.float(), dim=1)
