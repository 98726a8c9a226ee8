"""Your own scenes as a dataset: any CRS, dtype and band count; aux and labels aligned on the fly.

:class:`RasterScenes` is a :class:`~rsprompt.data.datasets.base.MultimodalTileDataset` whose tiles
are the user's images. Each image is indexed on its own *pixel* grid (one index unit = one pixel of
that image; images side by side with a gap, never resampled), so images in different CRSs, with
different resolutions or overlapping footprints live together. A window is read on the image's
real grid: the optical bands with a plain windowed read (nodata, NaN and internal masks honoured),
the aux raster (DSM or SAR, any CRS, resolution or extent, one file per image or one mosaic) with
:func:`~rsprompt.data.datasets._raster.read_on_grid` — the alignment every training read uses —
and the labels rasterised (polygons) or read (label rasters) on that same grid.

The index rows are the *regions* of the split (the labelled footprint of an image, or its
training / validation blocks of a spatial split, see :func:`spatial_split`): random training
patches are drawn inside them, validation windows cover them, and label pixels outside them are
ignored, so no pixel of one split is ever scored in another.

Value scaling: :func:`sample_optical` draws a bounded, seeded sample of valid pixels from each
image (a few small windows; cached per file) for
:meth:`~rsprompt.data.normalize.OpticalNormalizer.fit`. Aux statistics that a DSM normalisation
takes per image (min–max, nDSM ground) are streamed by row strips over the whole image, once.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyproj
import rasterio.features
import shapely
import shapely.affinity
from rasterio.enums import Resampling
from rasterio.transform import Affine, from_origin
from rasterio.windows import Window

from rsprompt.data.datasets._raster import (
    LOCAL_CRS,
    Grid,
    _aligned_offset,
    has_internal_mask,
    raster_info,
    read_checked,
    read_on_grid,
)
from rsprompt.data.datasets.base import MultimodalTileDataset, Tile, TileGrids
from rsprompt.data.datasets.custom_labels import (
    CustomDataError,
    RasterLabels,
    VectorLabels,
)
from rsprompt.data.labels import IGNORE_INDEX, ClassTable
from rsprompt.data.normalize import Normalization, _block_min, ground_estimate
from rsprompt.data.validity import band_valid, valid_pixels

log = logging.getLogger(__name__)

#: A box of pixels ``(col0, row0, col1, row1)``.
PixelBox = tuple[int, int, int, int]
Labels = VectorLabels | RasterLabels


@dataclass(frozen=True)
class ImageInfo:
    """One image of the user's data.

    Attributes:
        path: The optical raster.
        grid: Its real grid (CRS, transform, size).
        count: Its number of bands.
        dtype: Data type of band 1.
        pixel_m: Side in metres of a pixel (geodesic at the centre for a geographic CRS).
    """

    path: Path
    grid: Grid
    count: int
    dtype: str
    pixel_m: float

    @property
    def name(self) -> str:
        """The image's stem (file name without extension)."""
        return self.path.stem


def pixel_size_m(crs: pyproj.CRS, transform: Affine, width: int, height: int) -> float:
    """Side in metres of a pixel at the grid's centre (``sqrt`` of its ground area).

    Raises:
        CustomDataError: If the CRS has no unit that converts to metres.
    """
    if crs.is_geographic:
        geod = crs.get_geod() or pyproj.Geod(ellps="WGS84")
        cx, cy = transform @ (width / 2, height / 2)
        ex, _ = transform @ (width / 2 + 1, height / 2)
        _, ny = transform @ (width / 2, height / 2 + 1)
        dx = geod.inv(cx, cy, ex, cy)[2]
        dy = geod.inv(cx, cy, cx, ny)[2]
        return math.sqrt(abs(dx * dy))
    factor = None
    if crs.axis_info:
        factor = crs.axis_info[0].unit_conversion_factor
    if not factor:
        raise CustomDataError(f"CRS {crs.name!r} has no unit that converts to metres")
    return math.sqrt(abs(transform.a * transform.e)) * factor


def image_info(path: Path) -> ImageInfo:
    """The :class:`ImageInfo` of an optical raster.

    Raises:
        CustomDataError: If the file cannot be opened, is not georeferenced or is rotated.
    """
    try:
        info = raster_info(path)
    except Exception as exc:  # RasterioIOError and friends
        raise CustomDataError(f"image {path}: not a readable raster ({exc})") from None
    if not info.georeferenced:
        raise CustomDataError(
            f"image {path} is not georeferenced (no CRS or geotransform): labels and aux rasters "
            "are placed by coordinates; assign a CRS first (e.g. gdal_translate -a_srs)"
        )
    assert info.crs is not None and info.transform is not None
    if info.transform.b or info.transform.d:
        raise CustomDataError(f"image {path} has a rotated geotransform; warp it north-up first")
    grid = Grid(info.crs, info.transform, info.width, info.height)
    return ImageInfo(
        path,
        grid,
        info.count,
        info.dtype,
        pixel_size_m(info.crs, info.transform, info.width, info.height),
    )


# ------------------------------------------------------------------------------------ sampling
_SAMPLES: OrderedDict[tuple, np.ndarray] = OrderedDict()
_SAMPLES_MAX = 256


def sample_optical(
    info: ImageInfo, bands: Sequence[int], pixels: int, *, seed: int = 0, side: int = 64
) -> np.ndarray:
    """A bounded, seeded sample of an image's valid pixels (raw values of ``bands``).

    About ``pixels`` pixels from ``side × side`` windows at random places (a window read touches
    few blocks: the cost does not grow with the image); every pixel of an image that has no more
    than ``pixels``. Band values that are invalid (nodata,
    NaN, masked) are NaN. Cached per file (path, size, modification time), bands and size.

    Returns:
        float64 ``C×N``.
    """
    stat = info.path.stat()
    key = (str(info.path), stat.st_mtime_ns, stat.st_size, tuple(bands), pixels, seed, side)
    if key in _SAMPLES:
        _SAMPLES.move_to_end(key)
        return _SAMPLES[key]
    g = info.grid
    if pixels >= g.width * g.height:  # small image: every pixel, once (row strips)
        rows = list(range(0, g.height, side))
        cols = [0] * len(rows)
        sizes = [(min(side, g.height - r), g.width) for r in rows]
    else:
        h, w = min(side, g.height), min(side, g.width)
        n = max(1, math.ceil(pixels / (h * w)))
        rng = np.random.default_rng([seed, g.width, g.height])
        rows = rng.integers(0, g.height - h + 1, n).tolist()
        cols = rng.integers(0, g.width - w + 1, n).tolist()
        sizes = [(h, w)] * n
    parts = []
    from rsprompt.data.datasets._raster import open_quiet

    with open_quiet(info.path) as src:
        masked = has_internal_mask(src)
        for r, c, (h, w) in zip(rows, cols, sizes, strict=True):
            win = Window(c, r, w, h)
            data = read_checked(src, list(bands), win)
            mask = src.read_masks(1, window=win) if masked else None
            ok = valid_pixels(data, src.nodata, mask=mask, every_band=False)
            sel = data[:, ok]
            vals = sel.astype(np.float64)
            vals[~band_valid(sel, src.nodata)] = np.nan
            parts.append(vals)
    out = np.concatenate(parts, axis=1) if parts else np.zeros((len(bands), 0))
    _SAMPLES[key] = out
    while len(_SAMPLES) > _SAMPLES_MAX:
        _SAMPLES.popitem(last=False)
    return out


# ------------------------------------------------------------------------------------ splits
def blocks_of(box: PixelBox, size: int) -> list[PixelBox]:
    """``box`` cut into ``size × size`` blocks from its top-left corner (edge blocks smaller)."""
    c0, r0, c1, r1 = box
    return [
        (c, r, min(c + size, c1), min(r + size, r1))
        for r in range(r0, r1, size)
        for c in range(c0, c1, size)
    ]


def spatial_split(
    footprints: dict[int, PixelBox],
    *,
    block: int,
    fraction: float,
    buffer_px: dict[int, int],
    seed: int = 0,
) -> tuple[dict[int, shapely.Geometry], dict[int, shapely.Geometry]]:
    """Split labelled footprints into training and validation regions that never touch.

    Each footprint is cut into ``block``-pixel blocks; blocks are drawn in a seeded random order
    until they hold ``fraction`` of the labelled area (at least one block, never all). The
    training region of an image is its footprint minus its validation blocks grown by
    ``buffer_px`` pixels (square corners): every training pixel is at least ``buffer_px`` pixels
    (and at least one) from every validation pixel.

    Args:
        footprints: image position → labelled footprint (pixels).
        block: Block side in pixels.
        fraction: Share of the labelled area held out for validation, in (0, 1).
        buffer_px: image position → gap in pixels.
        seed: Seed of the block draw.

    Returns:
        ``(train, val)``: image position → region (shapely geometry in pixel coordinates,
        x = column, y = row); images without a validation block have no ``val`` entry.

    Raises:
        CustomDataError: If there are fewer than two blocks.
    """
    if not 0 < fraction < 1:
        raise CustomDataError(f"val_fraction must be in (0, 1), got {fraction}")
    blocks = [(k, b) for k, fp in sorted(footprints.items()) for b in blocks_of(fp, block)]
    if len(blocks) < 2:
        raise CustomDataError(
            f"the labelled area holds {len(blocks)} block(s) of {block} px: a spatial split "
            "needs two at least; pass a smaller block_size, or val image names (--data.val)"
        )
    areas = np.array([(b[2] - b[0]) * (b[3] - b[1]) for _, b in blocks], np.float64)
    target = fraction * areas.sum()
    order = np.random.default_rng(seed).permutation(len(blocks))
    chosen: list[int] = []
    total = 0.0
    for i in order[:-1]:  # never every block
        chosen.append(int(i))
        total += areas[i]
        if total >= target:
            break
    val: dict[int, list[shapely.Geometry]] = {}
    for i in chosen:
        k, b = blocks[i]
        val.setdefault(k, []).append(shapely.box(*b))
    train: dict[int, shapely.Geometry] = {}
    val_regions: dict[int, shapely.Geometry] = {}
    for k, fp in footprints.items():
        region = shapely.box(*fp)
        if k in val:
            held = shapely.union_all(val[k])
            val_regions[k] = held
            gap = max(1, int(buffer_px.get(k, 1)))
            grown = shapely.buffer(held, gap, cap_style="square", join_style="mitre")
            region = shapely.difference(region, grown)
        if not region.is_empty:
            train[k] = region
    return train, val_regions


# ------------------------------------------------------------------------------------ dataset
class RasterScenes(MultimodalTileDataset):
    """The user's images with their aux rasters and labels (see the module docstring).

    Args:
        images: The images.
        regions: For each image, its region in this split (shapely geometry in pixel coordinates,
            x = column, y = row); ``None``: the whole image.
        labels: Vector or raster labels (``None``: unlabelled, masks all ignored).
        classes: The class table.
        aux: For each image, its aux raster (``None``: missing, served as zeros, validity 0).
        aux_kind: ``dsm``, ``sar`` or ``None`` (no aux raster).
        aux_bands: 1-based aux bands to read (``None``: all).
        bands: 1-based optical bands to read.
        normalization: Per-modality normalisation (``None``: raw values).
        transforms: Function applied to each sample.

    Raises:
        CustomDataError: If no image is given or an aux raster is not georeferenced.
    """

    dataset_name = "custom"
    #: Set per instance: ``dsm``, ``sar`` or ``None`` when the images come without aux raster.
    aux_kind = None  # type: ignore[assignment]

    def __init__(
        self,
        images: Sequence[ImageInfo],
        *,
        regions: Sequence[shapely.Geometry | None],
        labels: Labels | None,
        classes: ClassTable,
        aux: Sequence[Path | None] | None = None,
        aux_kind: str | None = None,
        aux_bands: Sequence[int] | None = None,
        bands: Sequence[int],
        normalization: Normalization | None = None,
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        positions: Sequence[int] | None = None,
    ) -> None:
        if not images:
            raise CustomDataError("no image in this split")
        self.images = list(images)
        self.labels = labels
        self.classes = classes
        self.aux_kind = aux_kind  # type: ignore[misc]
        self.aux_bands = None if aux_bands is None else [int(b) for b in aux_bands]
        self.bands = [int(b) for b in bands]
        self.label_positions = (
            list(positions) if positions is not None else list(range(len(images)))
        )
        aux_paths = list(aux) if aux is not None else [None] * len(self.images)
        self.aux_grids: list[Grid | None] = [self._aux_grid(p) for p in aux_paths]
        self.local_gap = 256  # type: ignore[misc]
        self._step = max(i.grid.width for i in self.images) + self.local_gap
        label_paths = [self._label_path(k) for k in range(len(self.images))]
        tiles = [
            Tile(img.name, img.path, a, lp)
            for img, a, lp in zip(self.images, aux_paths, label_paths, strict=True)
        ]
        super().__init__(
            tiles, normalization=normalization, georeference="auto", transforms=transforms
        )
        self.regions_px = list(regions)
        self.regions = [self._to_local(k, r) for k, r in enumerate(self.regions_px)]
        self._set_index()

    # ----------------------------------------------------------------- set-up
    def _label_path(self, k: int) -> Path | None:
        if self.labels is None:
            return None
        if isinstance(self.labels, VectorLabels):
            return self.labels.path
        return self.labels.paths[self.label_positions[k]]

    @staticmethod
    def _aux_grid(path: Path | None) -> Grid | None:
        if path is None:
            return None
        info = raster_info(path)
        if not info.georeferenced:
            raise CustomDataError(
                f"aux raster {path} is not georeferenced (no CRS or geotransform): it is placed "
                "on the images by its coordinates"
            )
        assert info.crs is not None and info.transform is not None
        return Grid(info.crs, info.transform, info.width, info.height)

    def _assign_grids(self) -> list[TileGrids]:
        """Each image on its own pixel grid in index space (one unit = one pixel)."""
        out = []
        for k, img in enumerate(self.images):
            g = Grid(
                LOCAL_CRS,
                from_origin(k * self._step, 0.0, 1.0, 1.0),
                img.grid.width,
                img.grid.height,
            )
            out.append(TileGrids(g, None, None, "local"))
        return out

    def _to_local(self, k: int, region: shapely.Geometry | None) -> shapely.Geometry:
        """A region in pixel coordinates as index coordinates of image ``k``."""
        g = self.images[k].grid
        if region is None:
            region = shapely.box(0, 0, g.width, g.height)
        return shapely.affinity.affine_transform(region, [1, 0, 0, -1, k * self._step, 0])

    def _set_index(self) -> None:
        """One index row per polygon of each image's region."""
        import geopandas as gpd
        import pandas as pd

        names, positions, geoms = [], [], []
        for k, region in enumerate(self.regions):
            for part in shapely.get_parts(region):
                if part.is_empty or part.area <= 0:
                    continue
                names.append(self.images[k].name)
                positions.append(k)
                geoms.append(part)
        if not geoms:
            raise CustomDataError("no labelled area in this split")
        index = pd.IntervalIndex.from_tuples(
            [(pd.Timestamp.min, pd.Timestamp.max)] * len(geoms), closed="both", name="datetime"
        )
        self.index = gpd.GeoDataFrame(
            {"tile": names, "position": positions}, index=index, geometry=geoms, crs=LOCAL_CRS
        )

    @property
    def image_indexes(self) -> list[int]:
        """1-based optical bands to read."""
        return self.bands

    def close(self) -> None:
        """Close the cached file handles."""
        super().close()

    # ----------------------------------------------------------------- reading
    def real_grid(self, position: int, dst: Grid) -> tuple[Grid, tuple[int, int]]:
        """The real grid of an index-space window of image ``position``, and its (row, col)."""
        t = dst.transform
        col = round(t.c - position * self._step)
        row = round(-t.f)
        img = self.images[position].grid
        return Grid(img.crs, img.transform @ Affine.translation(col, row), dst.width, dst.height), (
            row,
            col,
        )

    def locate(self, transform: Affine) -> tuple[int, int, int]:
        """``(image position, row, col)`` of the top-left pixel of a sample's ``transform``."""
        k = int((transform.c + 0.5) // self._step)
        return k, round(-transform.f), round(transform.c - k * self._step)

    def _read_optical(
        self, position: int, real: Grid, off: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw selected bands (float32 ``C×h×w``, 0 outside/invalid) and their validity."""
        src = self._open(self.images[position].path)
        g = self.images[position].grid
        h, w = real.height, real.width
        image = np.zeros((len(self.bands), h, w), np.float32)
        valid = np.zeros((h, w), bool)
        r0, c0 = off
        sr0, sc0 = max(0, r0), max(0, c0)
        sr1, sc1 = min(g.height, r0 + h), min(g.width, c0 + w)
        if sr1 <= sr0 or sc1 <= sc0:
            return image, valid
        win = Window(sc0, sr0, sc1 - sc0, sr1 - sr0)
        data = read_checked(src, self.bands, win)
        mask = src.read_masks(1, window=win) if has_internal_mask(src) else None
        ok = valid_pixels(data, src.nodata, mask=mask, every_band=False)
        rows, cols = slice(sr0 - r0, sr1 - r0), slice(sc0 - c0, sc1 - c0)
        vals = data.astype(np.float32)
        bad = ~band_valid(data, src.nodata)
        if bad.any():
            vals[bad] = 0.0
        image[:, rows, cols] = vals
        valid[rows, cols] = ok
        return image, valid

    def _read_aux(
        self, position: int, real: Grid, off: tuple[int, int], covered: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        raw, acov = self._aux_raw(position, real, off)
        valid = acov & covered
        norm = self.normalization.aux if self.normalization is not None else None
        if norm is not None:
            return norm.apply(raw, self.aux_stats(position), valid, off)
        aux = np.where(valid[None], np.nan_to_num(raw), 0).astype(np.float32)
        return aux, valid[None].astype(np.float32)

    #: Side (pixels) of the blocks polygons are rasterised in, and the bytes of blocks kept.
    LABEL_BLOCK = 256
    LABEL_CACHE_BYTES = 64 << 20

    def _aux_raw(
        self, position: int, real: Grid, off: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw aux values on a window (float32, NaN where invalid) and their validity."""
        tile, ag = self.tiles[position], self.aux_grids[position]
        assert tile.aux is not None and ag is not None
        if _aligned_offset(ag, real) is None:  # another grid: warped, in cached blocks
            return self._warped_aux(position, real, off)
        raw, acov = read_on_grid(
            self._open(tile.aux),
            ag,
            real,
            self.aux_bands,
            Resampling.bilinear,
            np.nan,
            valid_only=True,
        )
        return raw.astype(np.float32, copy=False), acov

    def _read_labels(self, position: int, real: Grid, off: tuple[int, int]) -> np.ndarray:
        assert self.labels is not None
        if isinstance(self.labels, VectorLabels):
            return self._vector_labels(position, real, off)
        tile = self.tiles[position]
        assert tile.label is not None
        return self.labels.read(
            self.label_positions[position], self.images[position].grid, real, self._open(tile.label)
        )

    def _vector_labels(self, position: int, real: Grid, off: tuple[int, int]) -> np.ndarray:
        """Polygons on a window of image ``position``, from cached rasterised blocks.

        The window's real grid is the image's, offset by whole pixels: it is cut from the
        ``LABEL_BLOCK``-pixel blocks of the image grid it touches, each rasterised once (only the
        polygons touching it, see :meth:`VectorLabels.rasterize`) and kept while the cache
        (``LABEL_CACHE_BYTES``, least recently used out first) has room.
        """
        b = self.LABEL_BLOCK
        r0, c0 = off
        h, w = real.height, real.width
        out = np.empty((h, w), np.uint8)
        for br in range(r0 // b, (r0 + h - 1) // b + 1):
            for bc in range(c0 // b, (c0 + w - 1) // b + 1):
                block = self._label_block(position, br, bc)
                rs = slice(max(r0, br * b), min(r0 + h, (br + 1) * b))
                cs = slice(max(c0, bc * b), min(c0 + w, (bc + 1) * b))
                out[rs.start - r0 : rs.stop - r0, cs.start - c0 : cs.stop - c0] = block[
                    rs.start - br * b : rs.stop - br * b, cs.start - bc * b : cs.stop - bc * b
                ]
        return out

    #: Bytes of warped aux blocks kept (an aux raster on another grid is warped block by block).
    AUX_CACHE_BYTES = 128 << 20

    def _warped_aux(
        self, position: int, real: Grid, off: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The aux raster warped onto a window, from cached ``LABEL_BLOCK``-pixel blocks.

        Each block of the image grid is warped once with
        :func:`~rsprompt.data.datasets._raster.read_on_grid` (a covering source window with a
        margin: the values are those of a warp of the whole image) and kept while
        ``AUX_CACHE_BYTES`` allow.
        """
        b = self.LABEL_BLOCK
        r0, c0 = off
        h, w = real.height, real.width
        out: np.ndarray | None = None
        covered = np.zeros((h, w), bool)
        for br in range(r0 // b, (r0 + h - 1) // b + 1):
            for bc in range(c0 // b, (c0 + w - 1) // b + 1):
                data, ok = self._aux_block(position, br, bc)
                if out is None:
                    out = np.full((data.shape[0], h, w), np.nan, np.float32)
                rs = slice(max(r0, br * b), min(r0 + h, (br + 1) * b))
                cs = slice(max(c0, bc * b), min(c0 + w, (bc + 1) * b))
                dst = (slice(rs.start - r0, rs.stop - r0), slice(cs.start - c0, cs.stop - c0))
                src = (
                    slice(rs.start - br * b, rs.stop - br * b),
                    slice(cs.start - bc * b, cs.stop - bc * b),
                )
                out[(slice(None), *dst)] = data[(slice(None), *src)]
                covered[dst] = ok[src]
        assert out is not None
        return out, covered

    def _block_grid(self, position: int, br: int, bc: int) -> Grid:
        """The grid of block ``(br, bc)`` (``LABEL_BLOCK`` px square) of image ``position``."""
        b = self.LABEL_BLOCK
        g = self.images[position].grid
        return Grid(g.crs, g.transform @ Affine.translation(bc * b, br * b), b, b)

    def _cached(self, name: str, key: tuple[int, int, int], make: Any, budget: int) -> Any:
        """``make()`` cached in the LRU ``name``, keeping its blocks within ``budget`` bytes."""
        cache = self.__dict__.setdefault(name, OrderedDict())
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        value, nbytes = make()
        cache[key] = value
        while len(cache) * nbytes > budget:
            cache.popitem(last=False)
        return value

    def _aux_block(self, position: int, br: int, bc: int) -> tuple[np.ndarray, np.ndarray]:
        def make() -> tuple[tuple[np.ndarray, np.ndarray], int]:
            tile, ag = self.tiles[position], self.aux_grids[position]
            assert tile.aux is not None and ag is not None
            raw, ok = read_on_grid(
                self._open(tile.aux),
                ag,
                self._block_grid(position, br, bc),
                self.aux_bands,
                Resampling.bilinear,
                np.nan,
                valid_only=True,
            )
            size = self.LABEL_BLOCK**2 * (4 * raw.shape[0] + 1)
            return (raw.astype(np.float32, copy=False), ok), size

        return self._cached("_aux_blocks", (position, br, bc), make, self.AUX_CACHE_BYTES)

    def _label_block(self, position: int, br: int, bc: int) -> np.ndarray:
        def make() -> tuple[np.ndarray, int]:
            assert isinstance(self.labels, VectorLabels)
            block = self.labels.rasterize(self._block_grid(position, br, bc))
            return block, self.LABEL_BLOCK**2

        return self._cached("_blocks", (position, br, bc), make, self.LABEL_CACHE_BYTES)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_blocks", None)
        state.pop("_aux_blocks", None)
        return state

    def _region_mask(self, position: int, dst: Grid) -> np.ndarray | None:
        """Pixels of ``dst`` inside image ``position``'s region (``None``: all of them)."""
        region = self.regions[position]
        if region.contains(shapely.box(*dst.bounds)):
            return None
        return rasterio.features.geometry_mask(
            [region], out_shape=(dst.height, dst.width), transform=dst.transform, invert=True
        )

    def _read_tile_piece(self, position: int, dst: Grid) -> dict[str, np.ndarray]:
        real, off = self.real_grid(position, dst)
        image, covered = self._read_optical(position, real, off)
        piece: dict[str, np.ndarray] = {"image": image, "covered": covered}
        if self.aux_grids[position] is not None:
            piece["aux"], piece["aux_valid"] = self._read_aux(position, real, off, covered)
        elif any(g is not None for g in self.aux_grids):
            channels = len(self.aux_bands) if self.aux_bands else 1
            piece["aux"] = np.zeros((channels, dst.height, dst.width), np.float32)
            piece["aux_valid"] = np.zeros((1, dst.height, dst.width), np.float32)
        mask = (
            self._read_labels(position, real, off)
            if self.labels is not None
            else np.full((dst.height, dst.width), IGNORE_INDEX, np.uint8)
        )
        mask[~covered] = IGNORE_INDEX
        inside = self._region_mask(position, dst)
        if inside is not None:
            mask[~inside] = IGNORE_INDEX
        piece["mask"] = mask
        return piece

    def aux_stats(self, position: int) -> dict[str, Any]:
        """Aux statistics of an image (DSM min–max or nDSM ground), streamed once by row strips."""
        if position in self._aux_stats:
            return self._aux_stats[position]
        norm = self.normalization.aux if self.normalization is not None else None
        tile, ag = self.tiles[position], self.aux_grids[position]
        stats: dict[str, Any] = {}
        if norm is not None and norm.needs_fit and tile.aux is not None and ag is not None:
            stats = self._fit_aux(position, norm)
        self._aux_stats[position] = stats
        return stats

    def _may_lack_data(self, position: int) -> bool:
        """Whether some pixels of image ``position`` may be invalid (nodata, mask or float)."""
        src = self._open(self.images[position].path)
        return (
            src.nodata is not None
            or has_internal_mask(src)
            or np.issubdtype(np.dtype(self.images[position].dtype), np.floating)
        )

    def _fit_aux(self, position: int, norm: Any) -> dict[str, Any]:
        img = self.images[position]
        g = img.grid
        ndsm = getattr(norm, "mode", None) == "ndsm"
        cell = max(1, round(norm.cell_m / img.pixel_m)) if ndsm else 1
        strip = max(1, 512 // cell) * cell
        lo, hi = math.inf, -math.inf
        minima = []
        for r in range(0, g.height, strip):
            h = min(strip, g.height - r)
            part = Grid(g.crs, g.transform @ Affine.translation(0, r), g.width, h)
            raw, ok = self._aux_raw(position, part, (r, 0))
            if self._may_lack_data(position):
                ok &= self._read_optical(position, part, (r, 0))[1]
            band = raw[0].astype(np.float64)
            if ndsm:
                minima.append(_block_min(np.where(ok, band, np.nan), cell))
            elif ok.any():
                vals = raw[:, ok].astype(np.float64)
                lo, hi = min(lo, float(vals.min())), max(hi, float(vals.max()))
        if ndsm:
            cells = np.concatenate(minima, axis=0)
            cells[~np.isfinite(cells)] = np.nan
            grid, _ = ground_estimate(cells, None, cell * img.pixel_m, norm.cell_m, norm.window_m)
            return {"ground": grid.astype(np.float32), "cell": cell}
        if lo > hi:
            return {"min": 0.0, "max": 0.0}
        return {"min": lo, "max": hi}

    def decode_label(self, raw: np.ndarray, tile: Tile) -> np.ndarray:  # pragma: no cover
        """Unused: labels are read by :meth:`_read_labels`."""
        raise NotImplementedError
