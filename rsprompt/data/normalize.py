"""Per-modality normalisation of optical, DSM and SAR rasters.

Each normaliser separates *fitting* statistics from *applying* them, so that statistics a method
takes per tile (MoBaNet's DSM min–max) are computed once over a whole tile or scene and then applied
window by window without seams. Normalisers are serialisable (:meth:`Normalization.to_dict` /
:meth:`Normalization.from_dict`): a checkpoint records them and scene prediction re-applies them
exactly. They work on numpy arrays and torch tensors (``C×H×W`` or ``H×W``).

Contract: nothing returned contains NaN. Invalid aux pixels (NaN, nodata, outside the raster)
become 0 in the normalised space and 0 in the returned validity mask; a missing aux modality is an
all-zero tensor with an all-zero validity mask (:func:`missing_aux`).

Example:
    >>> import numpy as np
    >>> norm = Normalization(OpticalNormalizer(), DSMNormalizer(mode="minmax"))
    >>> dsm = np.array([[240.0, 250.0], [np.nan, 260.0]], dtype=np.float32)
    >>> stats = norm.aux.fit(dsm)
    >>> aux, valid = norm.aux.apply(dsm, stats)
    >>> aux.round(2).tolist(), valid.tolist()
    ([[[0.0, 0.5], [0.0, 1.0]]], [[[1.0, 1.0], [0.0, 1.0]]])
    >>> Normalization.from_dict(norm.to_dict()) == norm
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from rsprompt.data.validity import band_valid, usable_nodata

Array = np.ndarray | torch.Tensor

#: ImageNet statistics (timm's default for ViT/DINOv2/MiT), on values scaled to [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _is_torch(x: Array) -> bool:
    return isinstance(x, torch.Tensor)


def _as_chw(x: Array) -> Array:
    """Return ``x`` as a float32 ``C×H×W`` array/tensor (``H×W`` gains a channel axis)."""
    if _is_torch(x):
        x = x.to(torch.float32)
        return x[None] if x.ndim == 2 else x
    x = np.asarray(x, dtype=np.float32)
    return x[None] if x.ndim == 2 else x


def _valid_of(x: Array, valid: Array | None, nodata: float | None) -> Array:
    """Validity (bool, same shape as the float32 ``x``): finite, not nodata and inside ``valid``.

    The rule of :func:`rsprompt.data.validity.band_valid` (used as is for numpy arrays; a tensor
    applies the same rule on its own device).
    """
    if _is_torch(x):
        ok = torch.isfinite(x)
        nd = usable_nodata(nodata, np.float32)
        if nd is not None:
            ok &= x != nd
        if valid is not None:
            v = torch.as_tensor(valid, device=x.device).to(torch.bool)
            ok &= v if v.ndim == x.ndim else v[None]
        return ok
    ok = band_valid(x, nodata)
    if valid is not None:
        v = np.asarray(valid).astype(bool, copy=False)
        ok &= v if v.ndim == x.ndim else v[None]
    return ok


def _where(cond: Array, a: Array, b: float) -> Array:
    if _is_torch(a):
        return torch.where(cond, a, torch.as_tensor(b, dtype=a.dtype, device=a.device))
    return np.where(cond, a, np.float32(b)).astype(np.float32, copy=False)


def _finish(x: Array, ok: Array) -> tuple[Array, Array]:
    """Zero invalid pixels (and any non-finite result) and return (values, float validity)."""
    if _is_torch(x):
        ok = ok & torch.isfinite(x)
        return torch.where(ok, x, torch.zeros((), dtype=x.dtype, device=x.device)), ok.to(
            torch.float32
        )
    ok = ok & np.isfinite(x)
    return np.where(ok, x, np.float32(0)).astype(np.float32, copy=False), ok.astype(np.float32)


def _valid_values(x: Array, ok: Array) -> np.ndarray:
    if _is_torch(x):
        return x[ok].detach().cpu().numpy().astype(np.float64)
    return np.asarray(x)[np.asarray(ok)].astype(np.float64)


def missing_aux(
    shape: tuple[int, int], channels: int = 1, like: Array | None = None
) -> tuple[Array, Array]:
    """Return a missing aux modality: zeros (``channels×H×W``) and an all-zero validity mask.

    Args:
        shape: ``(H, W)``.
        channels: Number of aux channels.
        like: Return torch tensors on this tensor's device when it is a tensor, else numpy.

    Returns:
        ``(aux, aux_valid)``, both float32, ``channels×H×W`` and ``1×H×W``.

    Example:
        >>> aux, valid = missing_aux((2, 3), channels=2)
        >>> aux.shape, valid.shape, float(aux.sum()), float(valid.sum())
        ((2, 2, 3), (1, 2, 3), 0.0, 0.0)
    """
    if like is not None and _is_torch(like):
        return (
            torch.zeros((channels, *shape), device=like.device),
            torch.zeros((1, *shape), device=like.device),
        )
    return np.zeros((channels, *shape), np.float32), np.zeros((1, *shape), np.float32)


@dataclass(frozen=True)
class OpticalNormalizer:
    """Scale the optical bands and standardise them with the encoder's statistics.

    Args:
        mean: Per-band mean of the encoder's pretraining data, on values divided by ``scale``.
            One value is broadcast to every band.
        std: Per-band standard deviation (same convention).
        bands: 0-based indices of the bands to keep, in order (``None``: all bands). WHU-OPT-SAR's
            optical is R, G, B, NIR: ``(0, 1, 2)`` feeds a 3-channel encoder, ``None`` all four.
        scale: Divisor turning raw values into [0, 1] (255 for 8-bit imagery).
        fitted: How the statistics were obtained. ``None`` (the default, every benchmark
            checkpoint): preset statistics (ImageNet's on values divided by ``scale``).
            ``"meanstd"``: per-band mean and standard deviation of the training pixels
            (``scale`` 1). ``"percentile"``: a per-band stretch of ``[low, high]`` (the 2nd and
            98th percentiles of the training pixels) to ``[0, 1]``, values clipped to that range,
            then ImageNet's standardisation, folded into ``mean``/``std`` (``scale`` 1).
        low: Per-band 2nd percentile of the training pixels (raw values), when fitted.
        high: Per-band 98th percentile of the training pixels, when fitted.
        dtype: Data type of the training images, when fitted (for the value-range warning).
    """

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    bands: tuple[int, ...] | None = None
    scale: float = 255.0
    fitted: Literal["meanstd", "percentile"] | None = None
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None
    dtype: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.bands is not None:
            object.__setattr__(self, "bands", tuple(int(b) for b in self.bands))
        if any(s <= 0 for s in self.std) or self.scale <= 0:
            raise ValueError(
                f"std and scale must be positive, got std={self.std}, scale={self.scale}"
            )
        if self.bands is not None and len(self.mean) not in (1, len(self.bands)):
            raise ValueError(
                f"{len(self.mean)} mean values for {len(self.bands)} selected bands {self.bands}"
            )
        if self.fitted not in (None, "meanstd", "percentile"):
            raise ValueError(f"unknown fitted scaling {self.fitted!r} (meanstd or percentile)")
        for name in ("low", "high"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(float(v) for v in value))
        if self.fitted is not None and (self.low is None or self.high is None):
            raise ValueError(f"a fitted ({self.fitted}) optical scaling needs low and high")
        if self.low is not None and self.high is not None and len(self.low) != len(self.high):
            raise ValueError(f"{len(self.low)} low but {len(self.high)} high values")

    @property
    def num_channels(self) -> int | None:
        """Channels this normaliser outputs (``None`` when all bands are kept)."""
        return None if self.bands is None else len(self.bands)

    def select(self, x: Array) -> Array:
        """Keep the configured bands of a ``C×H×W`` array.

        Raises:
            ValueError: If a selected band does not exist.
        """
        if self.bands is None:
            return x
        if max(self.bands) >= x.shape[0]:
            raise ValueError(f"band selection {self.bands} needs more than {x.shape[0]} bands")
        return x[list(self.bands)]

    def apply(self, image: Array, selected: bool = False) -> Array:
        """Normalise a raw ``C×H×W`` optical array (NaN → 0 after normalisation).

        Args:
            image: Raw optical values, all bands of the file.
            selected: ``image`` already holds only the selected bands (in order).

        Raises:
            ValueError: If the number of mean/std values does not match the bands.
        """
        x = _as_chw(image) if selected else self.select(_as_chw(image))
        c = x.shape[0]
        if len(self.mean) not in (1, c) or len(self.std) not in (1, c):
            raise ValueError(f"{len(self.mean)} mean / {len(self.std)} std values for {c} bands")
        if self.fitted == "percentile":
            x = self._clip(x)
        mean = np.array(np.broadcast_to(np.asarray(self.mean, np.float32), (c,))).reshape(c, 1, 1)
        std = np.array(np.broadcast_to(np.asarray(self.std, np.float32), (c,))).reshape(c, 1, 1)
        if _is_torch(x):
            gain = torch.as_tensor(1.0 / (self.scale * std), device=x.device)
            out = x * gain - torch.as_tensor(mean / std, device=x.device)
            return torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
        # (x / scale - mean) / std as one multiply-add; non-finite results (NaN input) become 0.
        out = x * (1.0 / (self.scale * std))
        out -= mean / std
        if not np.isfinite(out).all():
            out[~np.isfinite(out)] = 0.0
        return out

    def _clip(self, x: Array) -> Array:
        """Clip each band to its recorded ``[low, high]`` (NaN stays NaN)."""
        assert self.low is not None and self.high is not None
        c = x.shape[0]
        lo = np.array(np.broadcast_to(np.asarray(self.low, np.float32), (c,))).reshape(c, 1, 1)
        hi = np.array(np.broadcast_to(np.asarray(self.high, np.float32), (c,))).reshape(c, 1, 1)
        if _is_torch(x):
            return torch.clamp(
                x, torch.as_tensor(lo, device=x.device), torch.as_tensor(hi, device=x.device)
            )
        return np.clip(x, lo, hi)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable description.

        The fitted-scaling fields (``fitted``, ``low``, ``high``, ``dtype``) appear only when
        fitted, so preset records are exactly those of earlier versions.
        """
        d = asdict(self)
        d["bands"] = None if self.bands is None else list(self.bands)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if self.fitted is None:
            for key in ("fitted", "low", "high", "dtype"):
                if d[key] is None:
                    del d[key]
        for key in ("low", "high"):
            if d.get(key) is not None:
                d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OpticalNormalizer:
        """Inverse of :meth:`to_dict` (records without the fitted fields are preset ones)."""
        bands = d.get("bands")
        low, high = d.get("low"), d.get("high")
        return cls(
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            bands=None if bands is None else tuple(bands),
            scale=float(d.get("scale", 255.0)),
            fitted=d.get("fitted"),
            low=None if low is None else tuple(low),
            high=None if high is None else tuple(high),
            dtype=None if d.get("dtype") is None else str(d["dtype"]),
        )

    @classmethod
    def fit(
        cls,
        samples: np.ndarray,
        mode: Literal["meanstd", "percentile"],
        *,
        bands: Sequence[int] | None = None,
        dtype: str | None = None,
        percentiles: tuple[float, float] = (2.0, 98.0),
    ) -> OpticalNormalizer:
        """Fit a per-band scaling on raw training values.

        Args:
            samples: ``C×N`` raw values of valid pixels (NaN entries are left out per band).
            mode: ``meanstd`` (standardise each band with its mean and std) or ``percentile``
                (stretch ``[p_low, p_high]`` to ``[0, 1]``, clip, then ImageNet's mean/std).
            bands: 0-based band selection to record (``None``: all bands).
            dtype: Data type of the training images, recorded for the value-range warning.
            percentiles: The stretch's percentiles.

        Raises:
            ValueError: If a band has no valid value.

        Example:
            >>> x = np.array([[0.0, 10.0, 20.0, 30.0]])
            >>> n = OpticalNormalizer.fit(x, "meanstd")
            >>> [round(float(v), 3) for v in n.apply(x[:, None, :]).ravel()]  # (x - 15) / √125
            [-1.342, -0.447, 0.447, 1.342]
        """
        x = np.asarray(samples, np.float64)
        if x.ndim != 2:
            raise ValueError(f"samples must be C×N, got shape {x.shape}")
        lows, highs, means, stds = [], [], [], []
        for b, row in enumerate(x):
            v = row[np.isfinite(row)]
            if v.size == 0:
                raise ValueError(f"band {b + 1}: no valid value to fit the scaling on")
            lo, hi = (float(q) for q in np.percentile(v, percentiles))
            lows.append(lo)
            highs.append(hi)
            means.append(float(v.mean()))
            stds.append(float(v.std()) or 1.0)
        if mode == "meanstd":
            mean, std = means, stds
        elif mode == "percentile":
            c = len(lows)
            im_mean = np.resize(np.asarray(IMAGENET_MEAN), c)
            im_std = np.resize(np.asarray(IMAGENET_STD), c)
            span = [max(h - lo, 1e-6 * max(abs(h), 1.0)) for lo, h in zip(lows, highs, strict=True)]
            mean = [lo + m * s for lo, m, s in zip(lows, im_mean, span, strict=True)]
            std = [sd * s for sd, s in zip(im_std, span, strict=True)]
        else:
            raise ValueError(f"unknown scaling mode {mode!r}; expected meanstd or percentile")
        return cls(
            mean=tuple(mean),
            std=tuple(std),
            bands=None if bands is None else tuple(bands),
            scale=1.0,
            fitted=mode,
            low=tuple(lows),
            high=tuple(highs),
            dtype=dtype,
        )


class AuxNormalizer:
    """Base class of aux (DSM/SAR) normalisers: ``fit`` statistics, then ``apply`` them."""

    kind: ClassVar[str] = ""
    nodata: float | None

    @property
    def needs_fit(self) -> bool:
        """True when :meth:`apply` needs statistics from :meth:`fit`."""
        return False

    def fit(self, values: Array, valid: Array | None = None, res: float = 1.0) -> dict[str, Any]:
        """Compute the statistics ``apply`` needs from a whole tile or scene.

        Args:
            values: Raw aux values, ``H×W`` or ``1×H×W``.
            valid: Optional validity mask (nonzero = valid) besides NaN/nodata.
            res: Pixel size in metres (used by ground filters).

        Returns:
            A JSON-serialisable dict of statistics (empty when none are needed).
        """
        return {}

    def apply(
        self,
        values: Array,
        stats: dict[str, Any] | None = None,
        valid: Array | None = None,
        offset: tuple[int, int] = (0, 0),
    ) -> tuple[Array, Array]:
        """Normalise raw aux values with statistics from :meth:`fit`.

        Args:
            values: Raw aux values, ``H×W`` or ``C×H×W``.
            stats: Output of :meth:`fit` on the whole tile/scene this window comes from.
            valid: Optional validity mask (nonzero = valid) besides NaN/nodata.
            offset: ``(row, col)`` of the window's top-left pixel in the fitted scene.

        Returns:
            ``(aux, aux_valid)``: float32 ``C×H×W`` without NaN, and ``1×H×W`` validity (0/1).
        """
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable description (``kind`` names the class)."""
        return {"kind": self.kind, **asdict(self)}  # type: ignore[call-overload]


def _validity_1hw(ok: Array) -> Array:
    """Collapse a ``C×H×W`` validity to ``1×H×W`` (valid where every channel is)."""
    if _is_torch(ok):
        return ok.all(dim=0, keepdim=True)
    return ok.all(axis=0, keepdims=True)


def _block_min(x: np.ndarray, cell: int) -> np.ndarray:
    """Minimum over ``cell×cell`` blocks (the last partial blocks included); NaN = +inf."""
    h, w = x.shape
    gh, gw = -(-h // cell), -(-w // cell)
    padded = np.full((gh * cell, gw * cell), np.inf, np.float64)
    padded[:h, :w] = np.where(np.isfinite(x), x, np.inf)
    return padded.reshape(gh, cell, gw, cell).min(axis=(1, 3))


def _filter(x: np.ndarray, radius: int, op: Any) -> np.ndarray:
    """Square min/max filter of ``radius`` cells, edges replicated.

    Separable: the extreme over a square is the extreme over the rows of the extremes over its
    columns, so each pixel costs ``2·(2r+1)`` comparisons instead of ``(2r+1)²``.
    """
    if radius <= 0:
        return x
    k = 2 * radius + 1
    p = np.pad(x, radius, mode="edge")
    cols = op(np.lib.stride_tricks.sliding_window_view(p, k, axis=0), axis=-1)
    return op(np.lib.stride_tricks.sliding_window_view(cols, k, axis=1), axis=-1)


def _interp_axis(n_out: int, start: int, cell: int, n_grid: int) -> tuple[np.ndarray, ...]:
    """Linear interpolation indices/weights of pixel centres on a coarse grid of cell centres."""
    pos = (np.arange(start, start + n_out) + 0.5) / cell - 0.5
    pos = np.clip(pos, 0, n_grid - 1)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_grid - 1)
    return i0, i1, (pos - i0).astype(np.float32)


def ground_estimate(
    dsm: np.ndarray, valid: np.ndarray | None, res: float, cell_m: float, window_m: float
) -> tuple[np.ndarray, int]:
    """Estimate the bare ground under a DSM as a coarse grid (morphological opening of minima).

    The DSM is reduced to the minimum of each ``cell_m`` cell, opened (minimum then maximum
    filter) with a ``window_m`` square, and cells without data take the lowest ground value.

    Args:
        dsm: ``H×W`` heights.
        valid: Optional validity mask.
        res: Pixel size in metres.
        cell_m: Coarse cell size in metres.
        window_m: Opening window in metres (larger than the widest building).

    Returns:
        ``(grid, cell)``: the coarse ground grid and its cell size in pixels.
    """
    x = np.asarray(dsm, np.float64)
    if valid is not None:
        x = np.where(np.asarray(valid).astype(bool), x, np.nan)
    cell = max(1, round(cell_m / res))
    grid = _block_min(x, cell)
    finite = np.isfinite(grid)
    if not finite.any():
        return np.zeros_like(grid), cell
    fill = grid[finite].min()
    grid = np.where(finite, grid, fill)
    radius = max(0, round(window_m / (2 * cell * res)))
    grid = _filter(_filter(grid, radius, np.min), radius, np.max)
    return grid, cell


@dataclass(frozen=True)
class DSMNormalizer(AuxNormalizer):
    """Normalise a DSM.

    Modes:
        ``minmax``: per-tile (or per-scene) min–max of the valid pixels to [0, 1], as MoBaNet;
            a constant tile becomes zeros.
        ``ndsm``: height above a local ground estimate (:func:`ground_estimate`), clipped to
            ``[0, max_height_m]`` and divided by ``max_height_m``.
        ``global``: ``(h - mean) / std`` with dataset-wide statistics (see :meth:`fit_global`).

    Args:
        mode: One of ``minmax``, ``ndsm``, ``global``.
        mean: Global mean height (``global`` mode).
        std: Global height standard deviation (``global`` mode).
        cell_m: Ground grid cell size in metres (``ndsm``).
        window_m: Ground opening window in metres (``ndsm``).
        max_height_m: Heights above ground are clipped to this and scaled to [0, 1] (``ndsm``).
        nodata: Raw value marking missing heights (besides NaN).
    """

    kind: ClassVar[str] = "dsm"
    mode: Literal["minmax", "ndsm", "global"] = "minmax"
    mean: float = 0.0
    std: float = 1.0
    cell_m: float = 1.0
    window_m: float = 30.0
    max_height_m: float = 40.0
    nodata: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("minmax", "ndsm", "global"):
            raise ValueError(f"unknown DSM normalisation mode {self.mode!r}")
        if self.std <= 0 or self.max_height_m <= 0 or self.cell_m <= 0:
            raise ValueError("std, cell_m and max_height_m must be positive")

    @property
    def needs_fit(self) -> bool:
        """True for ``minmax`` and ``ndsm`` (per-tile statistics)."""
        return self.mode != "global"

    def fit(self, values: Array, valid: Array | None = None, res: float = 1.0) -> dict[str, Any]:
        """Per-tile statistics: min/max (``minmax``), ground grid (``ndsm``), none (``global``)."""
        x = _as_chw(values)
        ok = _valid_of(x, valid, self.nodata)
        if self.mode == "minmax":
            v = _valid_values(x, ok)
            if v.size == 0:
                return {"min": 0.0, "max": 0.0}
            return {"min": float(v.min()), "max": float(v.max())}
        if self.mode == "ndsm":
            arr = x[0].detach().cpu().numpy() if _is_torch(x) else x[0]
            okk = ok[0].detach().cpu().numpy() if _is_torch(ok) else ok[0]
            grid, cell = ground_estimate(arr, okk, res, self.cell_m, self.window_m)
            return {"ground": grid.astype(np.float32).tolist(), "cell": cell}
        return {}

    def fit_global(self, arrays: list[Array]) -> DSMNormalizer:
        """Return a ``global``-mode copy with mean/std over the valid pixels of ``arrays``."""
        total, total2, n = 0.0, 0.0, 0
        for a in arrays:
            x = _as_chw(a)
            v = _valid_values(x, _valid_of(x, None, self.nodata))
            total, total2, n = total + v.sum(), total2 + (v**2).sum(), n + v.size
        if n == 0:
            raise ValueError("no valid DSM pixel to compute global statistics from")
        mean = total / n
        std = math.sqrt(max(total2 / n - mean**2, 0.0)) or 1.0
        return DSMNormalizer(**{**asdict(self), "mode": "global", "mean": mean, "std": std})

    def apply(
        self,
        values: Array,
        stats: dict[str, Any] | None = None,
        valid: Array | None = None,
        offset: tuple[int, int] = (0, 0),
    ) -> tuple[Array, Array]:
        """Normalise a DSM window with the statistics of its tile (see :meth:`fit`).

        Raises:
            ValueError: If the statistics the mode needs are missing.
        """
        x = _as_chw(values)
        if self.mode == "ndsm":
            height, ok = self.height_above_ground(x, stats, valid, offset)
            return _finish(self.scale_height(height), ok)
        ok = _validity_1hw(_valid_of(x, valid, self.nodata))
        safe = _where(ok, x, 0.0)
        if self.mode == "minmax":
            if not stats or "min" not in stats:
                raise ValueError("DSM min–max normalisation needs stats from fit() (min, max)")
            lo, hi = float(stats["min"]), float(stats["max"])
            out = (safe - lo) / (hi - lo) if hi > lo else safe * 0.0
        else:
            out = (safe - self.mean) / self.std
        return _finish(out, ok)

    def height_above_ground(
        self,
        values: Array,
        stats: dict[str, Any] | None,
        valid: Array | None = None,
        offset: tuple[int, int] = (0, 0),
    ) -> tuple[Array, Array]:
        """Height above the fitted ground in metres (``ndsm``), before clipping and scaling.

        ``apply`` in ``ndsm`` mode is ``scale_height`` of this. The ground at a pixel depends
        only on the pixel's position in the fitted scene (``offset`` + its place in the window),
        so any window of the scene gives the same heights.

        Args:
            values: Raw DSM window, ``H×W`` or ``C×H×W``.
            stats: ``fit`` output on the scene (``ground`` grid and its ``cell`` in pixels).
            valid: Optional validity mask (nonzero = valid) besides NaN/nodata.
            offset: ``(row, col)`` of the window's top-left pixel in the fitted scene.

        Returns:
            ``(height, valid)``: float32 ``C×H×W`` (a pixel that is not valid holds ``-ground``)
            and bool ``1×H×W``.

        Raises:
            ValueError: Without a ground grid in ``stats``.
        """
        if not stats or "ground" not in stats:
            raise ValueError("nDSM normalisation needs stats from fit() (ground grid)")
        x = _as_chw(values)
        ok = _validity_1hw(_valid_of(x, valid, self.nodata))
        safe = _where(ok, x, 0.0)
        grid = np.asarray(stats["ground"], np.float32)
        cell = int(stats["cell"])
        h, w = x.shape[-2:]
        r0, r1, wr = _interp_axis(h, offset[0], cell, grid.shape[0])
        c0, c1, wc = _interp_axis(w, offset[1], cell, grid.shape[1])
        top = grid[r0][:, c0] * (1 - wc) + grid[r0][:, c1] * wc
        bot = grid[r1][:, c0] * (1 - wc) + grid[r1][:, c1] * wc
        ground = (top * (1 - wr[:, None]) + bot * wr[:, None])[None]
        if _is_torch(safe):
            return safe - torch.as_tensor(ground, device=safe.device), ok
        return safe - ground, ok

    def scale_height(self, height: Array) -> Array:
        """Heights above ground clipped to ``[0, max_height_m]`` and divided by ``max_height_m``."""
        if _is_torch(height):
            return torch.clamp(height, 0, self.max_height_m) / self.max_height_m
        return np.clip(height, 0, self.max_height_m) / self.max_height_m

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DSMNormalizer:
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: v for k, v in d.items() if k != "kind"})


@dataclass(frozen=True)
class SARNormalizer(AuxNormalizer):
    """Normalise SAR backscatter to [0, 1].

    Modes:
        ``uint8``: 8-bit SAR as distributed (WHU-OPT-SAR): divide by 255.
        ``db``: backscatter in dB: clip to ``[db_min, db_max]`` and scale to [0, 1].
        ``linear``: linear intensity: convert to dB (``10·log10``), then as ``db``.

    Args:
        mode: One of ``uint8``, ``db``, ``linear``.
        db_min: Lower clip in dB.
        db_max: Upper clip in dB.
        nodata: Raw value marking missing pixels (besides NaN).
    """

    kind: ClassVar[str] = "sar"
    mode: Literal["uint8", "db", "linear"] = "uint8"
    db_min: float = -25.0
    db_max: float = 5.0
    nodata: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("uint8", "db", "linear"):
            raise ValueError(f"unknown SAR normalisation mode {self.mode!r}")
        if self.db_max <= self.db_min:
            raise ValueError(f"db_max ({self.db_max}) must exceed db_min ({self.db_min})")

    def apply(
        self,
        values: Array,
        stats: dict[str, Any] | None = None,
        valid: Array | None = None,
        offset: tuple[int, int] = (0, 0),
    ) -> tuple[Array, Array]:
        """Normalise SAR values (no statistics needed)."""
        x = _as_chw(values)
        ok = _valid_of(x, valid, self.nodata)
        if self.mode == "linear":
            ok = ok & (x > 0)
        ok = _validity_1hw(ok)
        safe = _where(ok, x, 1.0 if self.mode == "linear" else 0.0)
        if self.mode == "uint8":
            out = safe / 255.0
        else:
            if self.mode == "linear":
                safe = 10.0 * (torch.log10(safe) if _is_torch(safe) else np.log10(safe))
            span = self.db_max - self.db_min
            if _is_torch(safe):
                out = (torch.clamp(safe, self.db_min, self.db_max) - self.db_min) / span
            else:
                out = (np.clip(safe, self.db_min, self.db_max) - self.db_min) / span
        return _finish(out, ok)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SARNormalizer:
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: v for k, v in d.items() if k != "kind"})


_AUX_KINDS: dict[str, type[AuxNormalizer]] = {"dsm": DSMNormalizer, "sar": SARNormalizer}


@dataclass(frozen=True)
class Normalization:
    """The normalisation of one dataset/model: optical and (optionally) aux.

    Args:
        optical: Optical normaliser.
        aux: DSM or SAR normaliser (``None``: no aux modality).
    """

    optical: OpticalNormalizer = field(default_factory=OpticalNormalizer)
    aux: DSMNormalizer | SARNormalizer | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable description (stored in checkpoints)."""
        return {
            "optical": self.optical.to_dict(),
            "aux": None if self.aux is None else self.aux.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalization:
        """Inverse of :meth:`to_dict`; checks the record (it may come from a foreign checkpoint).

        Raises:
            ValueError: If the record is malformed (not a mapping, missing or unknown fields,
                wrong value types, an unknown aux kind); the message says which part.
        """
        if not isinstance(d, dict):
            raise ValueError(f"malformed normalization record: expected a mapping, got {d!r:.80}")
        optical, aux = d.get("optical"), d.get("aux")
        if not isinstance(optical, dict):
            raise ValueError(f"malformed normalization record: optical is {optical!r:.80}")
        try:
            optical = OpticalNormalizer.from_dict(optical)
        except KeyError as e:
            raise ValueError(f"malformed optical normalization {optical!r:.120}: no {e}") from None
        except (TypeError, ValueError) as e:
            raise ValueError(f"malformed optical normalization {optical!r:.120}: {e}") from None
        if aux is not None:
            kind = aux.get("kind") if isinstance(aux, dict) else None
            if kind not in _AUX_KINDS:
                raise ValueError(f"unknown aux normaliser kind {kind!r} in {aux!r:.80}")
            try:
                aux = _AUX_KINDS[kind].from_dict(aux)  # type: ignore[attr-defined]
            except (TypeError, ValueError) as e:
                raise ValueError(f"malformed {kind} normalization {aux!r:.120}: {e}") from None
        return cls(optical=optical, aux=aux)
