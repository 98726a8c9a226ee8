"""Inputs of your own data: image lists, path patterns, and labels as polygons or rasters.

Used by :class:`~rsprompt.data.datasets.custom.RasterScenes`,
:class:`~rsprompt.data.datamodules.RasterDataModule` and ``rsprompt data check custom``.

Path patterns (aux rasters, label rasters) take ``{stem}`` (the image's file name without its
extension), ``{name}`` (its file name) and ``{dir}`` (its folder), as ``rsprompt predict`` does. A
relative path is looked up under the data root (the current folder by default), then beside the
image. A path without a placeholder names ONE file covering every image (a DSM mosaic, a VRT, a
label raster or a vector file).

Vector labels (GeoPackage, GeoJSON, Shapefile, FlatGeobuf; any CRS) are rasterised window by
window on the grid being read, after reprojection to the image's CRS. **Overlapping polygons: the
smaller polygon wins** (its area measured in metres); between polygons of equal area the one later
in the file wins. So a building drawn inside a large "residential" polygon keeps its class, in
whatever order the polygons were drawn. Pixels outside every polygon are ignored (255), unless
``background`` names a class for them. Polygons whose attribute value is not one of ``classes``
are burnt as ignored (never as background).

Example:
    >>> from rsprompt.data.datasets.custom_labels import fill_pattern
    >>> str(fill_pattern("dsm/{stem}_dsm.tif", Path("scenes/a.tif"), Path("/data")))
    '/data/dsm/a_dsm.tif'
"""

from __future__ import annotations

import glob
import json
import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyproj
import rasterio.features
import rasterio.warp
import shapely
from rasterio.enums import Resampling

from rsprompt.data.datasets._raster import Grid, open_quiet, raster_info, read_on_grid
from rsprompt.data.labels import IGNORE_INDEX, ClassTable, default_colors, parse_color
from rsprompt.data.validity import valid_pixels

log = logging.getLogger(__name__)

#: File suffixes read as vector labels.
VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json", ".shp", ".fgb", ".sqlite", ".gml", ".kml")
#: Placeholders of path patterns.
PLACEHOLDERS = "{stem} (image file name without extension), {name} (file name), {dir} (folder)"
#: Largest number of classes (the masks are uint8 with 255 = ignore).
MAX_CLASSES = 255


class CustomDataError(ValueError):
    """A problem with the user's images, aux rasters or labels (the message names the file)."""


# ------------------------------------------------------------------------------------ values
def as_list(value: Any) -> list[Any] | None:
    """``value`` as a list: a list/tuple, or text holding a JSON list; else ``None``.

    Lists reach a datamodule either as lists (config files, the command line) or as JSON text
    (recorded in a checkpoint, whose datamodule options are plain values).
    """
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return None
        return parsed if isinstance(parsed, list) else None
    return None


def as_json(value: Any) -> Any:
    """A plain value for a checkpoint: lists and mappings as JSON text, scalars unchanged."""
    if isinstance(value, list | tuple | dict):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return value


def stems_of(value: Any, option: str) -> list[str]:
    """Image stems from a list, JSON text or comma-separated text (``None``: none)."""
    if value is None:
        return []
    items = as_list(value)
    if items is None:
        if not isinstance(value, str):
            raise CustomDataError(f"{option}: expected image stems, got {value!r}")
        items = value.split(",")
    return [str(Path(str(s).strip()).stem) if "." in str(s) else str(s).strip() for s in items]


# ------------------------------------------------------------------------------------ paths
def resolve_images(images: Any, root: Path) -> list[Path]:
    """The optical rasters named by ``images``: a glob, a list, or a text file of paths.

    Relative paths and patterns are taken under ``root``; the paths of a text file relative to
    the file's folder. Duplicates are dropped; the order is sorted for a glob, as given otherwise.

    Raises:
        CustomDataError: If nothing matches, a listed file is missing or two images share a stem.
    """
    items = as_list(images)
    if items is None:
        if not isinstance(images, str | Path) or not str(images).strip():
            raise CustomDataError(f"images: expected a glob, a list or a text file, got {images!r}")
        text = str(images).strip()
        path = _under(root, text)
        if path.is_file() and path.suffix.lower() in (".txt", ".lst", ".list", ".csv"):
            lines = [ln.strip() for ln in path.read_text().splitlines()]
            items = [_under(path.parent, ln) for ln in lines if ln and not ln.startswith("#")]
            if not items:
                raise CustomDataError(f"images: the list {path} names no file")
        elif glob.has_magic(text):
            items = [Path(m) for m in sorted(glob.glob(str(path), recursive=True))]
            if not items:
                raise CustomDataError(f"images: no file matches {text!r} (under {root})")
        else:
            items = [text]
    out: list[Path] = []
    for item in items:
        p = item if isinstance(item, Path) else _under(root, str(item))
        if not p.is_file():
            raise CustomDataError(f"image {p}: file not found")
        if p not in out:
            out.append(p)
    stems: dict[str, Path] = {}
    for p in out:
        if p.stem in stems:
            raise CustomDataError(
                f"images {stems[p.stem]} and {p} share the name {p.stem!r}: image names (file "
                "names without extension) identify images in patterns and splits; rename one"
            )
        stems[p.stem] = p
    return out


def _under(root: Path, text: str) -> Path:
    p = Path(text).expanduser()
    return p if p.is_absolute() else root / p


def has_placeholder(pattern: str | None) -> bool:
    """Whether ``pattern`` holds a ``{…}`` placeholder."""
    return pattern is not None and "{" in str(pattern)


def fill_pattern(pattern: str, image: Path, root: Path) -> Path:
    """The file ``pattern`` names for ``image`` (see the module docstring).

    Raises:
        CustomDataError: For an unknown placeholder.
    """
    try:
        text = str(pattern).format(stem=image.stem, name=image.name, dir=str(image.parent))
    except (KeyError, IndexError, ValueError) as exc:
        raise CustomDataError(
            f"pattern {pattern!r}: unknown placeholder {exc}; use {PLACEHOLDERS}"
        ) from None
    path = Path(text).expanduser()
    if path.is_absolute():
        return path
    under = root / path
    if under.exists():
        return under
    beside = image.parent / path
    return beside if beside.exists() else under


def is_vector(path: str | Path) -> bool:
    """Whether ``path`` is read as vector labels (by its suffix)."""
    return Path(str(path)).suffix.lower() in VECTOR_SUFFIXES


# ------------------------------------------------------------------------------------ classes
def parse_classes(classes: Any) -> list[tuple[str, tuple[int, int, int] | None]] | None:
    """``(name, colour or None)`` pairs from a list of names, a name → colour mapping or JSON.

    Accepted: ``["building", "road"]``, ``{"building": "#ff0000", "road": null}``,
    ``[["building", "#ff0000"], "road"]``, comma-separated names, or any of these as JSON text.

    Raises:
        CustomDataError: For duplicate names, bad colours or an empty list.
    """
    if classes is None:
        return None
    value = classes
    if isinstance(value, str):
        text = value.strip()
        if text.startswith(("[", "{")):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise CustomDataError(f"classes: not valid JSON ({exc})") from None
        else:
            value = [t.strip() for t in text.split(",") if t.strip()]
    pairs: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        pairs = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, list | tuple):
        for item in value:
            if isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[0], str):
                pairs.append((item[0], item[1]))
            elif isinstance(item, dict) and len(item) == 1:
                pairs.append(next((str(k), v) for k, v in item.items()))
            else:
                pairs.append((str(item), None))
    else:
        raise CustomDataError(f"classes: expected names or a name → colour mapping, got {value!r}")
    if not pairs:
        raise CustomDataError("classes: no class given")
    out = []
    for name, color in pairs:
        try:
            out.append((name, None if color is None else parse_color(color)))
        except ValueError as exc:
            raise CustomDataError(f"classes: {name!r}: {exc}") from None
    names = [n for n, _ in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise CustomDataError(f"classes: {', '.join(map(repr, dupes))} given more than once")
    if len(out) > MAX_CLASSES:
        raise CustomDataError(f"classes: {len(out)} classes, at most {MAX_CLASSES} are supported")
    return out


def make_table(pairs: Sequence[tuple[str, tuple[int, int, int] | None]]) -> ClassTable:
    """A :class:`ClassTable`; classes without a colour get :func:`default_colors`' colour."""
    fallback = default_colors(len(pairs))
    return ClassTable(
        names=tuple(n for n, _ in pairs),
        colors=tuple(c if c is not None else fallback[i] for i, (_, c) in enumerate(pairs)),
    )


def table_record(table: ClassTable) -> str:
    """The class table as JSON text (names with ``#rrggbb`` colours), as checkpoints record it."""
    return json.dumps(
        [
            [n, "#{:02x}{:02x}{:02x}".format(*c)]
            for n, c in zip(table.names, table.colors, strict=True)
        ]
    )


# ------------------------------------------------------------------------------------ geometry
def pixel_box(
    grid: Grid, bounds: tuple[float, float, float, float]
) -> tuple[int, int, int, int] | None:
    """``(col0, row0, col1, row1)`` of ``grid``'s pixels touched by ``bounds`` (grid CRS), or None."""
    inv = ~grid.transform
    xs, ys = zip(*(inv @ (x, y) for x in bounds[0::2] for y in bounds[1::2]), strict=True)
    eps = 1e-3  # a reprojected edge a hair beyond a pixel boundary stays on it
    c0, c1 = max(0, math.floor(min(xs) + eps)), min(grid.width, math.ceil(max(xs) - eps))
    r0, r1 = max(0, math.floor(min(ys) + eps)), min(grid.height, math.ceil(max(ys) - eps))
    if c1 <= c0 or r1 <= r0:
        return None
    return (c0, r0, c1, r1)


def bounds_in(src_crs: Any, dst_crs: Any, bounds: Sequence[float]) -> tuple[float, ...] | None:
    """``bounds`` transformed to ``dst_crs`` (densified), or None when it cannot be done."""
    if pyproj.CRS.from_user_input(src_crs) == pyproj.CRS.from_user_input(dst_crs):
        return tuple(bounds)
    try:
        return tuple(rasterio.warp.transform_bounds(src_crs, dst_crs, *bounds, densify_pts=21))
    except Exception:  # far outside the CRS's area of use: no overlap
        return None


def metric_areas(geoms: Any, crs: pyproj.CRS) -> np.ndarray:
    """Areas of ``geoms`` (a GeoSeries in ``crs``) in square metres (projected to UTM if needed)."""
    if crs.is_projected and crs.axis_info and crs.axis_info[0].unit_name in ("metre", "meter"):
        return np.asarray(geoms.area, np.float64)
    try:
        utm = geoms.estimate_utm_crs()
        return np.asarray(geoms.to_crs(utm).area, np.float64)
    except Exception:  # no UTM zone (empty, global): the file's own units
        return np.asarray(geoms.area, np.float64)


# ------------------------------------------------------------------------------------ vector
def list_layers(path: Path) -> list[str]:
    """Layer names of a vector file.

    Raises:
        CustomDataError: If the file cannot be opened as vector data.
    """
    import pyogrio

    try:
        return [str(r[0]) for r in pyogrio.list_layers(path)]
    except Exception as exc:  # pyogrio raises several DataSource errors
        raise CustomDataError(f"labels {path}: not a readable vector file ({exc})") from None


def read_vector(path: Path, layer: str | None):
    """Read a vector file's layer as a GeoDataFrame.

    Raises:
        CustomDataError: For a missing file, an unknown layer, a file with several layers and no
            ``layer``, or a layer without CRS.
    """
    import geopandas as gpd

    if not path.is_file():
        raise CustomDataError(f"labels {path}: file not found")
    layers = list_layers(path)
    if layer is None and len(layers) > 1:
        raise CustomDataError(
            f"labels {path} has {len(layers)} layers ({', '.join(layers)}): choose one with "
            "label_layer (--data.label_layer)"
        )
    if layer is not None and layer not in layers:
        raise CustomDataError(
            f"labels {path} has no layer {layer!r}; its layers: {', '.join(layers)}"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        gdf = gpd.read_file(path, layer=layer) if layer is not None else gpd.read_file(path)
    if gdf.crs is None:
        raise CustomDataError(
            f"labels {path}: the layer has no CRS; set it (in QGIS: Layer Properties → Source → "
            "Assigned Coordinate Reference System, then export again)"
        )
    return gdf


def _value_key(value: Any) -> str | None:
    """The class key of an attribute value: text as is, whole numbers without ``.0``."""
    if value is None:
        return None
    if isinstance(value, float | np.floating):
        if not math.isfinite(value):
            return None
        return str(int(value)) if float(value).is_integer() else str(value)
    if isinstance(value, int | np.integer):
        return str(int(value))
    text = str(value).strip()
    return text or None


def _sort_keys(keys: set[str]) -> list[str]:
    """Sorted keys: numerically when every key is a whole number, else as text."""
    try:
        return sorted(keys, key=int)
    except ValueError:
        return sorted(keys)


class VectorLabels:
    """Polygons of a vector file, rasterised on demand onto any grid.

    Args:
        path: Vector file (any CRS).
        field: Attribute holding each polygon's class (text or integer).
        layer: Layer of a multi-layer file.
        classes: Ordered classes (see :func:`parse_classes`); default the sorted unique values of
            ``field`` (plus ``background``).
        background: Class of the pixels outside every polygon (default: ignored). It need not be
            a value of ``field``.

    Raises:
        CustomDataError: Naming the file: unreadable, no CRS, no such field (the fields are
            listed), no polygon, or names in ``classes`` that are no value of ``field``.
    """

    def __init__(
        self,
        path: str | Path,
        field: str | None,
        *,
        layer: str | None = None,
        classes: Any = None,
        background: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.field = field
        self.layer = layer
        gdf = read_vector(self.path, layer)
        columns = [c for c in gdf.columns if c != gdf.geometry.name]
        if field is None:
            raise CustomDataError(
                f"labels {self.path}: give the attribute holding the classes with label_field "
                f"(--data.label_field); its fields: {', '.join(columns) or 'none'}"
            )
        if field not in gdf.columns:
            raise CustomDataError(
                f"labels {self.path}: no field {field!r}; its fields: {', '.join(columns) or 'none'}"
            )
        self.crs = pyproj.CRS.from_user_input(gdf.crs)
        keys = [_value_key(v) for v in gdf[field]]
        geoms = gdf.geometry
        polygonal = (
            geoms.notna() & ~geoms.is_empty & geoms.geom_type.isin(["Polygon", "MultiPolygon"])
        )
        skipped = int((~polygonal).sum())
        if skipped:
            log.warning(
                "labels %s: %d feature(s) without polygon geometry ignored", self.path, skipped
            )
        no_value = int(sum(1 for k, p in zip(keys, polygonal, strict=True) if p and k is None))
        if no_value:
            log.warning(
                "labels %s: %d polygon(s) with an empty %s ignored", self.path, no_value, field
            )
        keep = np.array([bool(p) and k is not None for k, p in zip(keys, polygonal, strict=True)])
        if not keep.any():
            raise CustomDataError(f"labels {self.path}: no polygon with a value of {field!r}")
        geoms = geoms[keep].make_valid()
        self.keys = [k for k, m in zip(keys, keep, strict=True) if m]
        self.values = _sort_keys(set(self.keys))
        self.table, self.background = self._classes(classes, background)
        lookup = {n: i for i, n in enumerate(self.table.names)}
        unlisted = sorted(set(self.keys) - set(lookup))
        if unlisted:
            log.warning(
                "labels %s: %s value(s) %s are not among the classes: those polygons are ignored",
                self.path,
                field,
                ", ".join(map(repr, unlisted[:10])),
            )
        burn = np.array([lookup.get(k, IGNORE_INDEX) for k in self.keys], np.uint8)
        # Burn order: larger polygons first, so the smaller one wins where they overlap; equal
        # areas in file order (the later feature wins).
        areas = metric_areas(geoms, self.crs)
        order = np.lexsort((np.arange(len(areas)), -areas))
        self.geoms = geoms.iloc[order].reset_index(drop=True)
        self.burn = burn[order]
        self.areas = areas[order]
        self._cache: dict[str, _Projected] = {}

    def _classes(self, classes: Any, background: str | None) -> tuple[ClassTable, int | None]:
        pairs = parse_classes(classes)
        if pairs is None:
            names = set(self.values) | ({background} if background else set())
            pairs = [(n, None) for n in _sort_keys(names)]
        else:
            known = set(self.values) | ({background} if background else set())
            unknown = [n for n, _ in pairs if n not in known]
            if unknown:
                raise CustomDataError(
                    f"classes {', '.join(map(repr, unknown))} are not values of {self.field!r} "
                    f"in {self.path} (its values: {', '.join(map(repr, self.values[:20]))}"
                    + (" …" if len(self.values) > 20 else "")
                    + ")"
                )
            if background and background not in [n for n, _ in pairs]:
                pairs = [*pairs, (background, None)]
        if len(pairs) > MAX_CLASSES:
            raise CustomDataError(
                f"labels {self.path}: {len(pairs)} classes in {self.field!r}, at most "
                f"{MAX_CLASSES} are supported (is it the right field?)"
            )
        table = make_table(pairs)
        bg = None if not background else table.names.index(background)
        return table, bg

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = {}
        return state

    def _in_crs(self, crs: pyproj.CRS) -> tuple[np.ndarray, shapely.STRtree]:
        """The polygons in ``crs`` (burn order) and their search tree (cached per CRS)."""
        p = self._projected(crs)
        return p.geoms, p.tree

    def _projected(self, crs: pyproj.CRS) -> _Projected:
        key = crs.to_wkt()
        if key not in self._cache:
            geoms = self.geoms if crs == self.crs else self.geoms.to_crs(crs)
            self._cache[key] = _Projected(np.asarray(geoms.values, dtype=object))
        return self._cache[key]

    def footprint(self, grid: Grid) -> tuple[int, int, int, int] | None:
        """``(col0, row0, col1, row1)``: the pixels of ``grid`` inside the polygons' extent.

        With ``background`` every pixel is labelled: the whole grid. ``None`` when no polygon
        touches the grid.
        """
        if self.background is not None:
            return (0, 0, grid.width, grid.height)
        mine = bounds_in(grid.crs, self.crs, grid.bounds)
        if mine is None or not self.geoms.sindex.query(shapely.box(*mine)).size:
            return None
        arr, tree = self._in_crs(grid.crs)
        hits = tree.query(shapely.box(*grid.bounds), predicate="intersects")
        if not hits.size:
            return None
        labelled = hits[self.burn[hits] != IGNORE_INDEX]
        if not labelled.size:
            return None
        return pixel_box(grid, shapely.total_bounds(arr[labelled]))

    def rasterize(self, grid: Grid) -> np.ndarray:
        """Class indices (uint8 ``H×W``, 255 = ignored) of the polygons on ``grid``."""
        fill = IGNORE_INDEX if self.background is None else self.background
        p = self._projected(grid.crs)
        hits = np.sort(p.tree.query(shapely.box(*grid.bounds), predicate="intersects"))
        if not hits.size:
            return np.full((grid.height, grid.width), fill, np.uint8)
        shapes = [
            (g, int(self.burn[i]))
            for i, g in zip(hits.tolist(), p.geojson(hits, grid.bounds), strict=True)
            if g is not None
        ]
        if not shapes:
            return np.full((grid.height, grid.width), fill, np.uint8)
        return rasterio.features.rasterize(
            shapes,
            out_shape=(grid.height, grid.width),
            transform=grid.transform,
            fill=fill,
            dtype="uint8",
        )


# ------------------------------------------------------------------------------------ raster
class RasterLabels:
    """Label rasters of class indices (one per image by pattern, or one covering all).

    Args:
        pattern: Path pattern (see :func:`fill_pattern`) or one raster.
        images: The images, to resolve the pattern.
        root: Data root of relative paths.
        ignore_index: Label value that is ignored (besides the raster's nodata value).
        classes: Ordered classes; value ``i`` is class ``i``. Default: one class per value
            ``0 … max`` found in the rasters (named by the value).

    Raises:
        CustomDataError: Naming the file: missing, unreadable, or more values than classes.
    """

    def __init__(
        self,
        pattern: str,
        images: Sequence[Path],
        root: Path,
        *,
        ignore_index: int | None = None,
        classes: Any = None,
    ) -> None:
        self.pattern = str(pattern)
        self.ignore_index = ignore_index
        self.background = None
        if has_placeholder(self.pattern):
            self.paths = [fill_pattern(self.pattern, img, root) for img in images]
        else:
            self.paths = [_under(root, self.pattern)] * len(images)
        for img, p in zip(images, self.paths, strict=True):
            if not p.is_file():
                raise CustomDataError(f"label raster {p} (for image {img}): file not found")
        self.infos = {}
        for p in dict.fromkeys(self.paths):
            try:
                self.infos[str(p)] = raster_info(p)
            except Exception as exc:  # RasterioIOError and friends
                raise CustomDataError(f"label raster {p}: not a readable raster ({exc})") from None
        pairs = parse_classes(classes)
        if pairs is None:
            top = max(self._max_value(p) for p in set(self.paths))
            if top < 0:
                raise CustomDataError(f"label rasters {self.pattern}: no labelled pixel found")
            pairs = [(str(v), None) for v in range(top + 1)]
        if len(pairs) > MAX_CLASSES:
            raise CustomDataError(
                f"label rasters {self.pattern}: {len(pairs)} classes, at most {MAX_CLASSES}"
            )
        self.table = make_table(pairs)

    def _max_value(self, path: Path) -> int:
        """Largest labelled value of a label raster (-1 when none), streamed by row strips."""
        top = -1
        with open_quiet(path) as src:
            for _, win in src.block_windows(1):
                data = src.read(1, window=win)
                ok = valid_pixels(data, src.nodata) & (data >= 0)
                if self.ignore_index is not None:
                    ok &= data != self.ignore_index
                if ok.any():
                    top = max(top, int(data[ok].max()))
        return top

    def grid_of(self, position: int, image_grid: Grid) -> Grid:
        """The grid of image ``position``'s label raster (the image's when not georeferenced)."""
        info = self.infos[str(self.paths[position])]
        if info.georeferenced:
            assert info.crs is not None and info.transform is not None
            return Grid(info.crs, info.transform, info.width, info.height)
        if (info.width, info.height) != (image_grid.width, image_grid.height):
            raise CustomDataError(
                f"label raster {info.path} has no georeferencing and a size "
                f"({info.width}×{info.height}) other than its image's "
                f"({image_grid.width}×{image_grid.height})"
            )
        return image_grid

    def footprint(self, position: int, grid: Grid) -> tuple[int, int, int, int] | None:
        """The pixels of ``grid`` (image ``position``) inside its label raster's extent."""
        lg = self.grid_of(position, grid)
        b = bounds_in(lg.crs, grid.crs, lg.bounds)
        return None if b is None else pixel_box(grid, b)

    def read(self, position: int, image_grid: Grid, dst: Grid, src: Any) -> np.ndarray:
        """Class indices (uint8 ``H×W``, 255 = ignored) of the label raster on ``dst``."""
        lg = self.grid_of(position, image_grid)
        raw, covered = read_on_grid(src, lg, dst, [1], Resampling.nearest, 0, valid_only=True)
        v = raw[0].astype(np.int64)
        ok = covered & (v >= 0) & (v < self.table.num_classes)
        if self.ignore_index is not None:
            ok &= v != self.ignore_index
        return np.where(ok, v, IGNORE_INDEX).astype(np.uint8)


class _Projected:
    """Polygons in one CRS: search tree, and GeoJSON mappings for ``rasterio.features.rasterize``.

    Turning a shapely polygon into the mapping rasterio reads costs more than rasterising it on a
    patch, so the mapping of each polygon is kept after its first use (up to
    :attr:`CACHE_VERTICES` vertices in all). A polygon of more than :attr:`CLIP_VERTICES`
    vertices (a large area traced in detail) is instead clipped to the window first, so a patch
    never pays for the whole of it.
    """

    #: Vertices whose mappings are kept (about 120 bytes each).
    CACHE_VERTICES = 2_000_000
    #: Polygons with more vertices are clipped to each window instead of cached whole.
    CLIP_VERTICES = 5_000

    def __init__(self, geoms: np.ndarray) -> None:
        self.geoms = geoms
        self.tree = shapely.STRtree(geoms)
        self.vertices = shapely.get_num_coordinates(geoms)
        self.mappings: dict[int, dict[str, Any]] = {}
        self.cached_vertices = 0

    def geojson(self, hits: np.ndarray, bounds: tuple[float, ...]) -> list[dict[str, Any] | None]:
        """The mappings of polygons ``hits`` (in order) for a window (``None``: nothing there)."""
        out: list[dict[str, Any] | None] = [None] * len(hits)
        big = self.vertices[hits] > self.CLIP_VERTICES
        todo = [j for j, i in enumerate(hits.tolist()) if not big[j] and i not in self.mappings]
        if todo:
            texts = shapely.to_geojson(self.geoms[hits[todo]])
            for j, text in zip(todo, texts, strict=True):
                i = int(hits[j])
                out[j] = json.loads(text)
                if self.cached_vertices + self.vertices[i] <= self.CACHE_VERTICES:
                    self.mappings[i] = out[j]
                    self.cached_vertices += int(self.vertices[i])
        for j, i in enumerate(hits.tolist()):
            if out[j] is None and not big[j]:
                out[j] = self.mappings[i]
        if big.any():
            clipped = shapely.clip_by_rect(self.geoms[hits[big]], *bounds)
            for j, geom in zip(np.flatnonzero(big).tolist(), clipped, strict=True):
                if not geom.is_empty and geom.geom_type in ("Polygon", "MultiPolygon"):
                    out[j] = json.loads(shapely.to_geojson(geom))
                elif not geom.is_empty:  # a collection: keep its polygonal parts
                    parts = [
                        g
                        for g in shapely.get_parts(geom)
                        if g.geom_type in ("Polygon", "MultiPolygon")
                    ]
                    if parts:
                        out[j] = json.loads(shapely.to_geojson(shapely.union_all(parts)))
        return out
