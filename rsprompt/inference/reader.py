"""Reading a scene and its aux raster window by window, on the scene's grid.

The optical scene defines the output grid (CRS, transform, size). The aux raster (DSM or SAR) may
have another CRS, resolution or extent: it is warped onto the scene's grid on the fly with a
rasterio :class:`~rasterio.vrt.WarpedVRT`, so only the windows being predicted are ever read. An
aux raster at least twice as coarse as the scene is warped onto a coarser scene-aligned grid and
upsampled bilinearly (much less warping work; see :class:`SceneReader`).

Validity (one rule, :mod:`rsprompt.data.validity`): a band value is valid when it is finite and
differs from the file's nodata value (a nodata value the file's data type cannot represent is
ignored, with a warning); the file's internal mask is honoured. A scene pixel is valid when at least
one band is; an alpha band is *not* treated as a mask (a 4-band uint8 image is usually RGB + NIR,
see docs/datasets.md, ISPRS Potsdam). An aux pixel is valid when every band is, inside the aux's extent; the same
rule holds for the reads on the scene's grid, the warped reads and the scene-wide statistics.

Scenes and aux rasters may be north-up or south-up (positive pixel height); rotated geotransforms
are refused.

Every problem with an input (missing, corrupt, not georeferenced, no overlap, wrong band count)
raises :class:`PredictError` naming the file, before any output is created; a block that cannot
be read later in the run (a corrupt tile in the middle of a file) raises :class:`PredictError`
naming the file too.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError, RasterioIOError
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window as RioWindow

from rsprompt.data.validity import band_valid, representable, usable_nodata, valid_pixels
from rsprompt.tiling import Window

#: ``(image, valid, aux, aux_valid, (row, col))`` → the same four arrays, for a whole strip.
StripFn = Callable[
    [np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, tuple[int, int]],
    tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None],
]

#: Largest upsampling factor of a coarse aux raster (see :class:`SceneReader`).
MAX_AUX_FACTOR = 16


class PredictError(ValueError):
    """A problem with the inputs or outputs of a prediction (message names the file)."""


class AuxSource(type(Path())):  # type: ignore[misc]
    """An aux raster path that also says which of its bands to read (1-based).

    :class:`SceneReader` reads only ``bands`` of such a path (as its ``aux_bands``); everything
    that takes a path takes it unchanged, so a band choice travels with the file name through
    code that only passes the path on.

    Example:
        >>> src = AuxSource("sar.tif", bands=[2])
        >>> str(src), src.bands
        ('sar.tif', [2])
    """

    def __init__(self, *parts: str | Path, bands: Sequence[int] | None = None) -> None:
        super().__init__(*parts)
        self.bands = None if bands is None else [int(b) for b in bands]

    def with_segments(self, *parts: str | Path) -> Path:
        """Derived paths (parent, siblings) are plain paths."""
        return Path(*parts)


@dataclass
class AuxStats:
    """Per-band statistics of the valid aux pixels over the whole scene.

    Attributes:
        min: Per-band minimum.
        max: Per-band maximum.
        mean: Per-band mean.
        std: Per-band standard deviation.
        count: Number of valid pixels.
        cell: Side (pixels) of the cells of ``cell_min`` (``None`` if not computed).
        cell_min: Minimum of band 1 over each ``cell × cell`` block of the scene grid (NaN where
            no valid pixel), for ground estimation (nDSM); ``None`` if not computed.
    """

    min: list[float] = field(default_factory=list)
    max: list[float] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    count: int = 0
    cell: int | None = None
    cell_min: np.ndarray | None = None

    def as_dict(self) -> dict[str, object]:
        """Plain-dict form (JSON-serialisable)."""
        return {
            "min": self.min,
            "max": self.max,
            "mean": self.mean,
            "std": self.std,
            "count": self.count,
        }


def _open(path: Path, role: str) -> rasterio.io.DatasetReader:
    if not path.exists():
        raise PredictError(f"{role} {path}: file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(path)
    except RasterioIOError as exc:
        raise PredictError(f"{role} {path}: not a readable raster ({exc})") from None
    return src


def _check_georeferenced(src: rasterio.io.DatasetReader, path: Path, role: str) -> None:
    if src.crs is None or src.transform == Affine.identity():
        src.close()
        raise PredictError(
            f"{role} {path} is not georeferenced (no CRS or geotransform): the output map needs "
            "a CRS and transform; assign them first (e.g. gdal_translate -a_srs/-a_ullr or a "
            "world file plus a CRS)"
        )
    if src.transform.b != 0 or src.transform.d != 0:
        src.close()
        raise PredictError(f"{role} {path} has a rotated geotransform; warp it north-up first")


@contextmanager
def _read_errors(path: Path | None, role: str) -> Iterator[None]:
    """Turn a read error of ``path`` (a corrupt block, a vanished file) into :class:`PredictError`."""
    try:
        yield
    except (RasterioError, CPLE_BaseError) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise PredictError(
            f"cannot read pixels of {role} {path}: the file is corrupt ({detail})"
        ) from None


def _probe(src: rasterio.io.DatasetReader, path: Path, role: str) -> None:
    """Read one small block so a truncated/corrupt file fails now, not halfway through."""
    try:
        with _read_errors(path, role):
            h, w = min(src.height, 64), min(src.width, 64)
            src.read(1, window=RioWindow(0, 0, w, h))
            src.read(1, window=RioWindow(src.width - w, src.height - h, w, h))
    except PredictError:
        src.close()
        raise


def _usable_nodata(src: rasterio.io.DatasetReader, path: Path, role: str) -> float | None:
    """The file's nodata value, or ``None`` (with a warning) when its data type cannot hold it."""
    nodata = src.nodata
    if nodata is not None and not representable(nodata, src.dtypes[0]):
        warnings.warn(
            f"{role} {path}: its nodata value {nodata!r} cannot be represented in its data type "
            f"{src.dtypes[0]}; it is ignored (no pixel is taken as nodata)",
            UserWarning,
            stacklevel=3,
        )
    return usable_nodata(nodata, src.dtypes[0])


def _internal_mask(src: rasterio.io.DatasetReader) -> bool:
    """Whether the file has an internal (per-dataset) mask; an alpha band is not one."""
    flags = src.mask_flag_enums[0]
    return MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags


def _extent(bounds: Sequence[float]) -> tuple[float, float, float, float]:
    """``(xmin, ymin, xmax, ymax)`` of rasterio bounds (south-up rasters have bottom > top)."""
    left, bottom, right, top = bounds
    return min(left, right), min(bottom, top), max(left, right), max(bottom, top)


def _resolution_ratio(aux: rasterio.io.DatasetReader, scene: rasterio.io.DatasetReader) -> float:
    """Aux pixel size over scene pixel size (in the scene's CRS; 0 if it cannot be worked out)."""
    from rasterio.warp import calculate_default_transform

    try:
        tr, _, _ = calculate_default_transform(
            aux.crs, scene.crs, aux.width, aux.height, *_extent(aux.bounds)
        )
    except (RasterioError, CPLE_BaseError, ValueError):
        return 0.0
    return min(abs(tr.a) / abs(scene.transform.a), abs(tr.e) / abs(scene.transform.e))


def _upsampling_factor(ratio: float) -> int:
    """Whole number of scene pixels per aux pixel (1 if the aux is not at least 2× coarser)."""
    return int(max(1, min(MAX_AUX_FACTOR, math.floor(ratio + 1e-6))))


def _grid_offset(
    aux: rasterio.io.DatasetReader, scene: rasterio.io.DatasetReader
) -> tuple[int, int] | None:
    """``(rows, cols)`` from the scene's grid to the aux's if both share one pixel grid, else None.

    Same CRS, same pixel size and an origin a whole number of pixels away (to 1/1000 pixel).
    """
    if aux.crs != scene.crs:
        return None
    a, s = aux.transform, scene.transform
    if not (math.isclose(a.a, s.a, rel_tol=1e-9) and math.isclose(a.e, s.e, rel_tol=1e-9)):
        return None
    if a.b != 0 or a.d != 0:
        return None
    d_col, d_row = (s.c - a.c) / a.a, (s.f - a.f) / a.e
    if abs(d_col - round(d_col)) > 1e-3 or abs(d_row - round(d_row)) > 1e-3:
        return None
    return round(d_row), round(d_col)


def _upsample_bilinear(
    coarse: np.ndarray, cvalid: np.ndarray, f: int, rows: slice, cols: slice
) -> tuple[np.ndarray, np.ndarray]:
    """Upsample a coarse grid by ``f`` (pixel-centre aligned bilinear) and crop ``rows, cols``.

    Invalid coarse pixels carry no weight: a fine pixel is valid when the coarse pixel it lies
    in is (a nearest-neighbour footprint), and its value is the bilinear interpolation
    renormalised over the valid coarse pixels around it (as GDAL's warper does next to nodata).
    Values of invalid coarse pixels never leak in.
    """
    import torch
    import torch.nn.functional as F

    weight = cvalid[None].astype(np.float32)
    stacked = torch.from_numpy(np.concatenate([coarse * weight, weight]))
    up = F.interpolate(stacked[None], scale_factor=f, mode="bilinear", align_corners=False)[0]
    up = up[:, rows, cols]
    w = up[-1].numpy()
    valid = np.repeat(np.repeat(cvalid, f, axis=0), f, axis=1)[rows, cols]
    aux = np.ascontiguousarray(up[:-1].numpy())
    np.divide(aux, w[None], out=aux, where=valid[None])
    aux[:, ~valid] = 0.0
    return aux, valid


class _RunningStats:
    """Per-band min, max, mean and standard deviation, streamed over chunks of float32 values.

    Chunks are combined with Chan et al.'s pairwise update of the centred sums of squares, so no
    float64 copy of the data is made and the variance does not cancel out when std ≪ mean.
    """

    def __init__(self, bands: int) -> None:
        self.min = np.full(bands, np.inf)
        self.max = np.full(bands, -np.inf)
        self.mean = np.zeros(bands)
        self.m2 = np.zeros(bands)
        self.count = 0

    def add(self, values: np.ndarray) -> None:
        """Add ``bands × n`` values."""
        n = values.shape[1]
        if n == 0:
            return
        self.min = np.minimum(self.min, values.min(axis=1))
        self.max = np.maximum(self.max, values.max(axis=1))
        mean = values.mean(axis=1, dtype=np.float64)
        centred = values - mean.astype(np.float32)[:, None]
        m2 = np.einsum("bn,bn->b", centred, centred, dtype=np.float64)
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta * delta * (self.count * n / total)
        self.count = total

    def result(self, **extra: object) -> AuxStats:
        """The statistics as :class:`AuxStats` (``extra``: further fields)."""
        std = np.sqrt(np.maximum(self.m2 / max(self.count, 1), 0.0))
        return AuxStats(
            min=self.min.tolist(),
            max=self.max.tolist(),
            mean=self.mean.tolist(),
            std=std.tolist(),
            count=self.count,
            **extra,  # type: ignore[arg-type]
        )


def _cell_minima(values: np.ndarray, valid: np.ndarray, cell: int) -> np.ndarray:
    """Minimum over ``cell × cell`` blocks of an ``h×w`` array (NaN where no valid pixel)."""
    h, w = values.shape
    gh, gw = -(-h // cell), -(-w // cell)
    padded = np.full((gh * cell, gw * cell), np.inf, np.float32)
    padded[:h, :w] = np.where(valid, values, np.inf)
    out = padded.reshape(gh, cell, gw, cell).min(axis=(1, 3))
    return np.where(np.isfinite(out), out, np.nan).astype(np.float32)


class SceneReader:
    """Reads windows of a scene (and its aux raster warped onto the scene's grid).

    Args:
        scene: Path of the optical scene (defines the output grid).
        aux: Path of the aux raster (DSM/SAR) or ``None``.
        bands: 1-based scene band indexes to read (``None`` = all bands).
        expected_bands: Number of optical bands the model takes (checked), or ``None``.
        aux_channels: Number of aux bands the model takes (checked when ``aux`` is given).
        aux_bands: 1-based aux bands to read (``None``: those of an :class:`AuxSource`, else
            all bands).
        aux_resampling: Resampling used to warp the aux raster.
        upsample_coarse_aux: With bilinear resampling, warp an aux raster at least twice as
            coarse as the scene onto a scene-aligned grid ``f`` times coarser (``f`` = whole
            ratio of the pixel sizes, at most :data:`MAX_AUX_FACTOR`) and upsample that grid
            bilinearly: ``1/f²`` of GDAL's warping work for the same surface where the aux is
            smooth (a plane comes out exact); across height steps such as walls the transition
            is up to one coarse pixel wider. ``False`` warps straight onto the scene's grid.

    Raises:
        PredictError: If a file is missing, corrupt or not georeferenced, a band count does not
            match, or the aux raster does not overlap the scene.
    """

    def __init__(
        self,
        scene: str | Path,
        aux: str | Path | None = None,
        *,
        bands: Sequence[int] | None = None,
        expected_bands: int | None = None,
        aux_channels: int | None = None,
        aux_bands: Sequence[int] | None = None,
        aux_resampling: Resampling = Resampling.bilinear,
        upsample_coarse_aux: bool = True,
    ) -> None:
        self.scene_path = Path(scene)
        self.aux_path = Path(aux) if aux is not None else None
        if aux_bands is None:
            aux_bands = getattr(aux, "bands", None)
        self.aux_bands: list[int] | None = (
            None if aux_bands is None else [int(b) for b in aux_bands]
        )
        self.src = _open(self.scene_path, "scene")
        self._aux_src: rasterio.io.DatasetReader | None = None
        self.vrt: WarpedVRT | None = None
        self.aux_factor = 1
        self._aligned: tuple[int, int] | None = None
        self._src_nodata: float | None = None
        self._aux_mask = False
        try:
            _check_georeferenced(self.src, self.scene_path, "scene")
            _probe(self.src, self.scene_path, "scene")
            self.bands = self._select_bands(bands, expected_bands)
            self.nodata = _usable_nodata(self.src, self.scene_path, "scene")
            self._mask_band = None
            if self.nodata is None:
                flags = self.src.mask_flag_enums[self.bands[0] - 1]
                if MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags:
                    self._mask_band = self.bands[0]
            if self.aux_path is not None:
                self._open_aux(aux_channels, aux_resampling, upsample_coarse_aux)
            elif aux_channels:
                pass  # the model runs with the aux missing everywhere
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ set-up
    def _select_bands(self, bands: Sequence[int] | None, expected: int | None) -> list[int]:
        count = self.src.count
        if bands is None:
            if expected is not None and count != expected:
                raise PredictError(
                    f"scene {self.scene_path} has {count} band(s) but the model takes "
                    f"{expected}; select bands with the checkpoint's `bands` or convert the file"
                )
            return list(range(1, count + 1))
        chosen = [int(b) for b in bands]
        bad = [b for b in chosen if not 1 <= b <= count]
        if bad:
            raise PredictError(
                f"scene {self.scene_path} has {count} band(s); the model reads bands {chosen} "
                f"(1-based) and {bad} do not exist"
            )
        if expected is not None and len(chosen) != expected:
            raise PredictError(
                f"scene {self.scene_path}: {len(chosen)} band(s) selected but the model takes "
                f"{expected}"
            )
        return chosen

    def _open_aux(
        self, aux_channels: int | None, resampling: Resampling, upsample_coarse_aux: bool
    ) -> None:
        assert self.aux_path is not None
        if aux_channels == 0:
            raise PredictError(
                f"aux raster {self.aux_path} was given but the model was trained without an aux "
                "modality (aux_channels = 0)"
            )
        src = _open(self.aux_path, "aux raster")
        self._aux_src = src
        _check_georeferenced(src, self.aux_path, "aux raster")
        _probe(src, self.aux_path, "aux raster")
        if self.aux_bands is not None:
            bad = [b for b in self.aux_bands if not 1 <= b <= src.count]
            if bad or not self.aux_bands:
                raise PredictError(
                    f"aux raster {self.aux_path} has {src.count} band(s); aux bands "
                    f"{self.aux_bands} (1-based) were asked for and {bad or 'none'} do not exist"
                )
        chosen = self.aux_bands is not None
        if self.aux_bands is None:
            self.aux_bands = list(range(1, src.count + 1))
        if aux_channels is not None and len(self.aux_bands) != aux_channels:
            what = f": bands {self.aux_bands} chosen" if chosen else f" has {src.count} band(s)"
            raise PredictError(
                f"aux raster {self.aux_path}{what} but the model takes {aux_channels}; choose "
                "the band(s) the model was trained on (aux bands, e.g. --aux-bands 1)"
            )
        # Overlap test in the aux's CRS (densified edges); either raster may be south-up.
        try:
            sb = transform_bounds(self.src.crs, src.crs, *_extent(self.src.bounds), densify_pts=21)
        except (RasterioError, CPLE_BaseError, ValueError) as exc:
            raise PredictError(
                f"aux raster {self.aux_path}: cannot transform the scene's extent to its CRS "
                f"({exc})"
            ) from None
        ab = _extent(src.bounds)
        if not (sb[0] < ab[2] and sb[2] > ab[0] and sb[1] < ab[3] and sb[3] > ab[1]):
            raise PredictError(
                f"aux raster {self.aux_path} does not overlap scene {self.scene_path} "
                f"(scene extent in the aux CRS {tuple(round(v, 3) for v in sb)}, aux extent "
                f"{tuple(round(v, 3) for v in ab)})"
            )
        src_nodata = _usable_nodata(src, self.aux_path, "aux raster")
        warp_nodata = src.nodata if representable(src.nodata, src.dtypes[0]) else None
        # An aux raster f× coarser than the scene is warped onto a scene-aligned grid f× coarser
        # (1/f² of GDAL's warping work) and upsampled bilinearly in read_aux.
        bilinear = resampling == Resampling.bilinear
        ratio = _resolution_ratio(src, self.src)
        f = _upsampling_factor(ratio) if upsample_coarse_aux and bilinear else 1
        self.aux_factor = f
        pad = 1 if f > 1 else 0
        # Not coarser than the aux: a plain interpolation kernel. Left to itself GDAL derives the
        # kernel's scale per read from the window sizes and may widen it a little for a ~1:1
        # warp, so that the same pixel came out differently from different windows.
        scale_opts = {"XSCALE": 1, "YSCALE": 1} if ratio >= f - 1e-6 and ratio > 0 else {}
        self.vrt = WarpedVRT(
            src,
            crs=self.src.crs,
            # One coarse cell of margin around the scene: its edge pixels interpolate too.
            transform=self.src.transform @ Affine.scale(f) @ Affine.translation(-pad, -pad),
            width=-(-self.src.width // f) + 2 * pad,
            height=-(-self.src.height // f) + 2 * pad,
            resampling=resampling,
            # GDAL's warper leaves a NaN nodata out of its kernels: pass it on as it is.
            src_nodata=warp_nodata,
            nodata=warp_nodata if warp_nodata is not None else -3.4e38,
            dtype="float32",
            add_alpha=False,
            **scale_opts,
        )
        self._aux_nodata = self.vrt.nodata
        # An aux raster on the scene's pixel grid (same CRS and pixel size, origin a whole number
        # of pixels away) is read as it is: no warping at all.
        self._aligned = _grid_offset(src, self.src)
        self._src_nodata = src_nodata
        self._aux_mask = _internal_mask(src)

    # ------------------------------------------------------------------ properties
    @property
    def height(self) -> int:
        """Scene rows."""
        return self.src.height

    @property
    def width(self) -> int:
        """Scene columns."""
        return self.src.width

    @property
    def crs(self) -> CRS:
        """Scene CRS (the output's)."""
        return self.src.crs

    @property
    def transform(self) -> Affine:
        """Scene transform (the output's)."""
        return self.src.transform

    @property
    def has_aux(self) -> bool:
        """Whether an aux raster is read."""
        return self.vrt is not None

    # ------------------------------------------------------------------ reading
    def read_scene(self, win: Window) -> tuple[np.ndarray, np.ndarray]:
        """Optical window as float32 ``C×h×w`` plus its validity (bool ``h×w``).

        Non-finite values (NaN, ±inf) become 0; a pixel whose bands are all invalid is invalid.
        """
        rw = RioWindow(win.col, win.row, win.width, win.height)
        with _read_errors(self.scene_path, "scene"):
            raw = self.src.read(self.bands, window=rw)
            mask = None
            if self._mask_band is not None:
                mask = self.src.read_masks(self._mask_band, window=rw)
        valid = valid_pixels(raw, self.nodata, mask=mask, every_band=False)
        image = raw.astype(np.float32, copy=False)
        if np.issubdtype(raw.dtype, np.floating):
            image = np.nan_to_num(image, nan=0.0, posinf=0.0, neginf=0.0)
        return image, valid

    def read_aux(self, win: Window) -> tuple[np.ndarray, np.ndarray]:
        """Warped aux window as float32 ``A×h×w`` (0 where invalid) plus its validity."""
        assert self.vrt is not None
        if self._aligned is not None:
            return self._read_aligned(win, *self._aligned)
        f = self.aux_factor
        if f == 1:
            return self._read_warped(RioWindow(win.col, win.row, win.width, win.height))
        # Coarse cell c covers scene pixels [(c - 1)·f, c·f) (one cell of margin, see
        # _open_aux); read the cells under the window plus one on each side.
        g_r0, g_c0 = win.row // f, win.col // f
        g_r1 = min(self.vrt.height, -(-win.row_end // f) + 2)
        g_c1 = min(self.vrt.width, -(-win.col_end // f) + 2)
        coarse, cvalid = self._read_warped(RioWindow(g_c0, g_r0, g_c1 - g_c0, g_r1 - g_r0))
        r0, c0 = win.row - (g_r0 - 1) * f, win.col - (g_c0 - 1) * f
        rs, cs = slice(r0, r0 + win.height), slice(c0, c0 + win.width)
        return _upsample_bilinear(coarse, cvalid, f, rs, cs)

    def _read_aligned(self, win: Window, d_row: int, d_col: int) -> tuple[np.ndarray, np.ndarray]:
        """``read_aux`` for an aux raster on the scene's grid (row/col offset ``d_row, d_col``)."""
        src = self._aux_src
        assert src is not None
        aux = np.zeros((len(self.aux_bands or []), win.height, win.width), np.float32)
        valid = np.zeros((win.height, win.width), bool)
        r0, c0 = max(win.row + d_row, 0), max(win.col + d_col, 0)
        r1, c1 = min(win.row_end + d_row, src.height), min(win.col_end + d_col, src.width)
        if r1 <= r0 or c1 <= c0:
            return aux, valid
        data, ok = self._read_source(RioWindow(c0, r0, c1 - c0, r1 - r0))
        rs = slice(r0 - d_row - win.row, r1 - d_row - win.row)
        cs = slice(c0 - d_col - win.col, c1 - d_col - win.col)
        aux[:, rs, cs] = data
        valid[rs, cs] = ok
        return aux, valid

    def _read_source(self, rw: RioWindow) -> tuple[np.ndarray, np.ndarray]:
        """A window of the aux raster's own pixels as float32 (0 where invalid) plus validity."""
        src = self._aux_src
        assert src is not None
        with _read_errors(self.aux_path, "aux raster"):
            raw = src.read(self.aux_bands, window=rw)
            mask = src.read_masks(1, window=rw) if self._aux_mask else None
        ok = valid_pixels(raw, self._src_nodata, mask=mask)
        data = raw.astype(np.float32, copy=False)
        data[:, ~ok] = 0.0
        return data, ok

    def _read_warped(self, rw: RioWindow) -> tuple[np.ndarray, np.ndarray]:
        """A window of the warped aux grid (0 where invalid) plus its validity."""
        assert self.vrt is not None
        with _read_errors(self.aux_path, "aux raster"):
            aux = self.vrt.read(self.aux_bands, window=rw)
        valid = valid_pixels(aux, self._aux_nodata)
        aux[:, ~valid] = 0.0
        return aux, valid

    def sample_values(self, per_axis: int = 3, side: int = 128) -> np.ndarray:
        """Values of the selected bands at the valid pixels of a few windows over the scene.

        ``per_axis × per_axis`` windows of ``side`` pixels, spread evenly (a cheap look at the
        scene's value range; the whole scene when it is small).

        Returns:
            1-D float64 array of the sampled valid values (every selected band).
        """
        h, w = min(side, self.height), min(side, self.width)
        rows = np.linspace(0, self.height - h, per_axis).round().astype(int)
        cols = np.linspace(0, self.width - w, per_axis).round().astype(int)
        values = []
        for r in np.unique(rows):
            for c in np.unique(cols):
                win = Window(int(r), int(c), h, w)
                rw = RioWindow(win.col, win.row, w, h)
                with _read_errors(self.scene_path, "scene"):
                    raw = self.src.read(self.bands, window=rw)
                    mask = None
                    if self._mask_band is not None:
                        mask = self.src.read_masks(self._mask_band, window=rw)
                sel = raw[:, valid_pixels(raw, self.nodata, mask=mask, every_band=False)]
                values.append(sel[band_valid(sel, self.nodata)].astype(np.float64))
        return np.concatenate(values) if values else np.zeros(0)

    def row_reader(self, prepare: StripFn | None = None) -> RowStripReader:
        """A reader of windows that reads (and warps) each row of windows once.

        Args:
            prepare: Applied to each strip once after reading (see :class:`RowStripReader`).
        """
        return RowStripReader(self, prepare)

    def aux_statistics(self, block_rows: int = 512, ground_cell: int | None = None) -> AuxStats:
        """Per-band min/max/mean/std over the valid aux pixels of the whole scene grid.

        A streaming pre-pass over row strips (memory: one strip). When every scene pixel holds
        data (an integer scene without nodata or mask) and no ground grid is asked for, the aux
        raster's own pixels inside the scene's footprint are read (no warping: fast, and bilinear
        warping never leaves their range); otherwise the warped aux is read on the scene's grid
        and only pixels valid in both count. Both routes honour the aux's nodata value, NaN/±inf
        and its internal mask.

        Args:
            block_rows: Rows per strip.
            ground_cell: Also compute the per-cell minima of band 1 on cells of this many pixels.

        Raises:
            PredictError: If the scene has no valid pixel, or the aux raster has no valid pixel
                where the scene has data.
        """
        assert self.vrt is not None
        scene_may_lack_data = (
            self.nodata is not None
            or self._mask_band is not None
            or np.issubdtype(np.dtype(self.src.dtypes[self.bands[0] - 1]), np.floating)
        )
        if not ground_cell and not scene_may_lack_data:
            return self._aux_statistics_source()
        stats = _RunningStats(len(self.aux_bands or []))
        minima: list[np.ndarray] = []
        scene_pixels = 0
        if ground_cell:
            block_rows = max(1, -(-block_rows // ground_cell)) * ground_cell
        for row in range(0, self.height, block_rows):
            h = min(block_rows, self.height - row)
            win = Window(row, 0, h, self.width)
            _, svalid = self.read_scene(win)
            scene_pixels += int(svalid.sum())
            aux, valid = self.read_aux(win)
            valid &= svalid
            if ground_cell:
                minima.append(_cell_minima(aux[0], valid, ground_cell))
            stats.add(aux[:, valid])
        if scene_pixels == 0:
            raise PredictError(
                f"scene {self.scene_path} has no valid pixel (every pixel is nodata, NaN or "
                "masked): there is nothing to predict"
            )
        if stats.count == 0:
            raise PredictError(
                f"aux raster {self.aux_path} has no valid pixel where scene {self.scene_path} "
                "has data"
            )
        return stats.result(
            cell=ground_cell or None,
            cell_min=np.concatenate(minima, axis=0) if minima else None,
        )

    def _source_window(self, geom_bounds: Sequence[float]) -> RioWindow | None:
        """The aux raster's pixels covering ``geom_bounds`` (aux CRS), or ``None`` if none."""
        src = self._aux_src
        assert src is not None
        x0, y0, x1, y1 = geom_bounds
        inv = ~src.transform
        cols, rows = zip(*(inv @ (x, y) for x in (x0, x1) for y in (y0, y1)), strict=True)
        c0, c1 = max(0, math.floor(min(cols))), min(src.width, math.ceil(max(cols)))
        r0, r1 = max(0, math.floor(min(rows))), min(src.height, math.ceil(max(rows)))
        if c1 <= c0 or r1 <= r0:
            return None
        return RioWindow(c0, r0, c1 - c0, r1 - r0)

    def _aux_statistics_source(self, block_rows: int = 1024) -> AuxStats:
        """:meth:`aux_statistics` over the aux raster's own pixels inside the scene's footprint."""
        from rasterio.features import geometry_mask
        from rasterio.warp import transform_geom
        from shapely.geometry import box, mapping, shape

        src = self._aux_src
        assert src is not None
        x0, y0, x1, y1 = _extent(self.src.bounds)
        footprint = box(x0, y0, x1, y1).segmentize(max(x1 - x0, y1 - y0) / 64)
        geom = shape(transform_geom(self.src.crs, src.crs, mapping(footprint)))
        win = self._source_window(geom.bounds)
        stats = _RunningStats(len(self.aux_bands or []))
        # In the scene's CRS the footprint is the window itself (edge pixels count, as with
        # all_touched): no polygon mask needed.
        needs_mask = src.crs != self.src.crs
        if win is not None:
            for r in range(win.row_off, win.row_off + win.height, block_rows):
                h = min(block_rows, win.row_off + win.height - r)
                strip = RioWindow(win.col_off, r, win.width, h)
                data, valid = self._read_source(strip)
                if needs_mask:
                    valid &= geometry_mask(
                        [mapping(geom)],
                        out_shape=(h, win.width),
                        transform=src.window_transform(strip),
                        invert=True,
                        all_touched=True,
                    )
                stats.add(data[:, valid])
        if stats.count == 0:
            raise PredictError(
                f"aux raster {self.aux_path} has no valid pixel inside scene {self.scene_path}"
            )
        return stats.result()

    def close(self) -> None:
        """Close the files."""
        if self.vrt is not None:
            self.vrt.close()
            self.vrt = None
        if self._aux_src is not None:
            self._aux_src.close()
            self._aux_src = None
        if not self.src.closed:
            self.src.close()

    def __enter__(self) -> SceneReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RowStripReader:
    """Reads windows of one scene row band at a time from a cached strip.

    Overlapping windows of the same row would read (and warp) their shared columns twice; this
    reads the strip ``rows × [col0, col1)`` covering a window row once, on the first window of that
    row, and cuts the windows from it. Windows must come in row-major order per column band; the
    strip is replaced when a window of another row or column band arrives. Memory: one strip of
    the scene's and the aux's bands as float32.

    Args:
        reader: The scene reader.
        prepare: ``prepare(image, valid, aux, aux_valid, (row, col0))`` → the same four arrays,
            applied to each strip once after reading (e.g. a pixelwise normalisation). Windows
            are then views of the prepared strip; without it they are copies (a per-window
            normaliser may work in place, and neighbouring windows share columns).
    """

    def __init__(self, reader: SceneReader, prepare: StripFn | None = None) -> None:
        self.reader = reader
        self.prepare = prepare
        self._key: tuple[int, int, int, int] | None = None
        self._strip: tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None] | None = (
            None
        )

    def _load(self, row: int, height: int, col0: int, col1: int) -> None:
        strip = Window(row, col0, height, col1 - col0)
        image, valid = self.reader.read_scene(strip)
        aux, aux_valid = self.reader.read_aux(strip) if self.reader.has_aux else (None, None)
        if self.prepare is not None:
            image, valid, aux, aux_valid = self.prepare(image, valid, aux, aux_valid, (row, col0))
        self._strip = (image, valid, aux, aux_valid)
        self._key = (row, height, col0, col1)

    def read(
        self, win: Window, col0: int, col1: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """``(image C×h×w, valid h×w, aux A×h×w | None, aux_valid h×w | None)`` of ``win``.

        Args:
            win: The window (inside ``[col0, col1)``).
            col0: First column of the strip (the window row's first window).
            col1: End column of the strip (the window row's last window end).
        """
        key = (win.row, win.height, col0, col1)
        if key != self._key:
            self._load(*key)
        assert self._strip is not None
        cs = slice(win.col - col0, win.col - col0 + win.width)
        cut = [None if a is None else a[..., cs] for a in self._strip]
        if self.prepare is None:
            cut = [None if a is None else a.copy() for a in cut]
        image, valid, aux, aux_valid = cut
        return image, valid, aux, aux_valid
