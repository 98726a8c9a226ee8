"""Raster reading helpers shared by the datasets: grids, georeferencing fallbacks, windowed reads.

Files are always read *without alpha semantics*: a 4-band uint8 GeoTIFF whose 4th band is flagged
as alpha (rasterio's default when writing RGBA-like files) has its NIR read as data, so a NIR of 0
never turns a pixel into "no data". Plain ``DatasetReader.read`` with a window (no ``masked``, no
``boundless``) and numpy-to-numpy :func:`rasterio.warp.reproject` guarantee that.

Aux rasters (DSM, SAR) are read with ``valid_only=True``: a pixel is valid by the one rule of
:mod:`rsprompt.data.validity` (finite, not the file's nodata value when its dtype can hold it, not
masked by an internal mask). Invalid pixels are NaN before any warping, so resampling never blends
a nodata value such as -9999 into the heights around a hole.

A file whose blocks cannot be decoded raises :class:`CorruptRasterError` naming it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyproj
import rasterio
import rasterio.warp
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.transform import Affine, array_bounds
from rasterio.windows import Window

from rsprompt.data.validity import valid_pixels

#: CRS given to rasters that carry none (ISPRS Vaihingen; world files carry no CRS either). An
#: engineering (local) CRS in metres: it claims no place on Earth.
LOCAL_CRS = pyproj.CRS.from_wkt(
    'ENGCRS["rsprompt local grid (no georeferencing)",EDATUM["unknown"],CS[Cartesian,2],'
    'AXIS["easting (E)",east,ORDER[1],LENGTHUNIT["metre",1]],'
    'AXIS["northing (N)",north,ORDER[2],LENGTHUNIT["metre",1]]]'
)


@dataclass(frozen=True)
class RasterInfo:
    """What a file says about itself.

    Attributes:
        path: File path.
        width: Columns.
        height: Rows.
        count: Bands.
        dtype: numpy dtype name of band 1.
        crs: Its CRS (``None`` when absent).
        transform: Its transform (``None`` when identity/absent, a world file counts).
        nodata: Its nodata value.
    """

    path: Path
    width: int
    height: int
    count: int
    dtype: str
    crs: pyproj.CRS | None
    transform: Affine | None
    nodata: float | None

    @property
    def georeferenced(self) -> bool:
        """True when the file has both a CRS and a non-identity transform."""
        return self.crs is not None and self.transform is not None


def raster_info(path: str | Path) -> RasterInfo:
    """Read the header of a raster (size, bands, dtype, CRS, transform, nodata).

    Raises:
        rasterio.errors.RasterioIOError: If the file cannot be opened.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            t = src.transform
            transform = None if (t is None or t.is_identity) else t
            crs = None if src.crs is None else pyproj.CRS.from_user_input(src.crs)
            return RasterInfo(
                Path(path),
                src.width,
                src.height,
                src.count,
                src.dtypes[0],
                crs,
                transform,
                src.nodata,
            )


@dataclass(frozen=True)
class Grid:
    """A pixel grid: CRS, transform and size.

    Attributes:
        crs: Coordinate reference system.
        transform: Affine transform (north-up).
        width: Columns.
        height: Rows.
    """

    crs: pyproj.CRS
    transform: Affine
    width: int
    height: int

    @property
    def res(self) -> tuple[float, float]:
        """Pixel size ``(x, y)`` in CRS units."""
        return (abs(self.transform.a), abs(self.transform.e))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(xmin, ymin, xmax, ymax)``."""
        west, south, east, north = array_bounds(self.height, self.width, self.transform)
        return (min(west, east), min(south, north), max(west, east), max(south, north))


class CorruptRasterError(ValueError):
    """A raster whose header opens but whose pixel blocks cannot be read (a damaged file).

    The message's first line is always ``cannot read PATH: the file is corrupt (...)``, also when
    PyTorch's DataLoader re-raises the error of a worker process (it rebuilds the exception from
    ``"Caught CorruptRasterError in DataLoader worker …"`` followed by the worker's traceback).
    """

    def __init__(self, message: str = "") -> None:
        marker = f"{type(self).__name__}: "
        if not message.startswith("cannot read ") and marker in message:
            ours = message.rsplit(marker, 1)[1].strip().splitlines()[0]
            message = f"{ours}\n{message}"
        super().__init__(message)


def corrupt_error(path: str | Path, exc: BaseException) -> CorruptRasterError:
    """The :class:`CorruptRasterError` for ``path``, with GDAL's own explanation when it gave one."""
    details = str(exc)
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in details:
        details = f"{details} {cause}" if "previous exception" not in details else str(cause)
    return CorruptRasterError(f"cannot read {path}: the file is corrupt ({details})")


def read_checked(src: rasterio.io.DatasetReader, indexes: list[int] | int, window: Window):
    """``src.read(indexes, window=window)``, a decoding failure raised as CorruptRasterError."""
    try:
        return src.read(indexes, window=window)
    except RasterioIOError as exc:
        raise corrupt_error(src.name, exc) from None


def has_internal_mask(src: rasterio.io.DatasetReader) -> bool:
    """Whether ``src`` has an internal (per-dataset) mask; an alpha band is not one."""
    flags = src.mask_flag_enums[0]
    return MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags


def read_valid(
    src: rasterio.io.DatasetReader, indexes: list[int], window: Window
) -> tuple[np.ndarray, np.ndarray]:
    """Raw values of a window and their validity (``H×W``, every band valid; see module doc)."""
    data = read_checked(src, indexes, window)
    mask = None
    if has_internal_mask(src):
        try:
            mask = src.read_masks(1, window=window)
        except RasterioIOError as exc:
            raise corrupt_error(src.name, exc) from None
    return data, valid_pixels(data, src.nodata, mask=mask, every_band=True)


def open_quiet(path: str | Path) -> rasterio.io.DatasetReader:
    """Open a raster without the not-georeferenced warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path)


def _aligned_offset(src: Grid, dst: Grid) -> tuple[int, int] | None:
    """``(row, col)`` of ``dst``'s origin in ``src``'s pixels when the grids align, else None."""
    if src.crs != dst.crs:
        return None
    a, b = src.transform, dst.transform
    if a.b or a.d or b.b or b.d:
        return None
    if not (math.isclose(a.a, b.a, rel_tol=1e-6) and math.isclose(a.e, b.e, rel_tol=1e-6)):
        return None
    col = (b.c - a.c) / a.a
    row = (b.f - a.f) / a.e
    rc, cc = round(row), round(col)
    if abs(row - rc) > 1e-3 or abs(col - cc) > 1e-3:
        return None
    return rc, cc


def read_on_grid(
    src: rasterio.io.DatasetReader,
    src_grid: Grid,
    dst: Grid,
    indexes: list[int] | None = None,
    resampling: Resampling = Resampling.nearest,
    fill: float = 0.0,
    *,
    valid_only: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Read ``src`` (georeferenced by ``src_grid``, whatever the file says) onto ``dst``.

    Aligned grids are read with a plain window (the fast path, no resampling); other grids are
    warped numpy-to-numpy from the covering source window.

    Args:
        src: Open raster.
        src_grid: Grid to use for ``src`` (its own, or one assigned to it).
        dst: Output grid.
        indexes: 1-based bands to read (default all).
        resampling: Resampling used when warping.
        fill: Value of output pixels outside ``src`` (and, with ``valid_only``, of invalid ones).
        valid_only: Honour the file's nodata value and internal mask (the validity rule of
            :mod:`rsprompt.data.validity`, every band): invalid source pixels never enter a
            resampled value and ``covered`` is False where no valid source pixel contributes.

    Returns:
        ``(data, covered)``: ``C×H×W`` array in the source dtype promoted to hold ``fill``, and an
        ``H×W`` bool array of the pixels the source covers (with ``valid_only``: with valid data).

    Raises:
        CorruptRasterError: If a block of ``src`` cannot be decoded.
    """
    indexes = indexes or list(range(1, src.count + 1))
    src_dtype = np.dtype(src.dtypes[indexes[0] - 1])
    if np.isnan(fill):  # float32 at least: float16 would round uint16 values
        dtype = np.result_type(src_dtype, np.float32)
    else:
        dtype = np.result_type(src_dtype, np.min_scalar_type(fill))
    out = np.full((len(indexes), dst.height, dst.width), fill, dtype=dtype)
    covered = np.zeros((dst.height, dst.width), bool)
    off = _aligned_offset(src_grid, dst)
    if off is not None:
        r0, c0 = off
        sr0, sc0 = max(0, r0), max(0, c0)
        sr1 = min(src.height, src_grid.height, r0 + dst.height)
        sc1 = min(src.width, src_grid.width, c0 + dst.width)
        if sr1 > sr0 and sc1 > sc0:
            win = Window(sc0, sr0, sc1 - sc0, sr1 - sr0)
            rows, cols = slice(sr0 - r0, sr1 - r0), slice(sc0 - c0, sc1 - c0)
            if valid_only:
                data, ok = read_valid(src, indexes, win)
                out[:, rows, cols] = np.where(ok[None], data, out[:, rows, cols])
                covered[rows, cols] = ok
            else:
                out[:, rows, cols] = read_checked(src, indexes, win)
                covered[rows, cols] = True
        return out, covered
    # General case: read the covering source window and warp it onto dst.
    left, bottom, right, top = rasterio.warp.transform_bounds(dst.crs, src_grid.crs, *dst.bounds)
    inv = ~src_grid.transform
    cols, rows = zip(
        *(inv @ (x, y) for x, y in ((left, top), (right, top), (left, bottom), (right, bottom)))
    )
    sc0 = max(0, math.floor(min(cols)) - 2)
    sr0 = max(0, math.floor(min(rows)) - 2)
    sc1 = min(src.width, math.ceil(max(cols)) + 2)
    sr1 = min(src.height, math.ceil(max(rows)) + 2)
    if sr1 <= sr0 or sc1 <= sc0:
        return out, covered
    win = Window(sc0, sr0, sc1 - sc0, sr1 - sr0)
    if valid_only:
        raw, ok = read_valid(src, indexes, win)
        data = raw.astype(np.float32)
        data[:, ~ok] = np.nan  # NaN is the warp's nodata: never blended into valid pixels
    else:
        data = read_checked(src, indexes, win).astype(np.float32)
    win_transform = src_grid.transform @ Affine.translation(sc0, sr0)
    dest = np.full((len(indexes), dst.height, dst.width), np.nan, np.float32)
    rasterio.warp.reproject(
        data,
        dest,
        src_transform=win_transform,
        src_crs=src_grid.crs,
        dst_transform=dst.transform,
        dst_crs=dst.crs,
        src_nodata=np.nan,
        dst_nodata=np.nan,
        resampling=resampling,
    )
    covered = np.isfinite(dest).all(axis=0)
    if np.issubdtype(out.dtype, np.integer):
        out[:, covered] = np.rint(dest[:, covered]).astype(out.dtype)
    else:
        out[:, covered] = dest[:, covered]
    return out, covered
