"""Many inputs for ``rsprompt predict``: scene lists, glob patterns and VRT mosaics.

- ``@scenes.txt``: a text file with one scene per line; blank lines and ``#`` comments are skipped;
  relative paths (and patterns) are relative to the list file's folder.
- Glob patterns (``"tiles/*.tif"``, ``"**/*.tif"``; quote them so the shell leaves them alone) are
  expanded by rsprompt, sorted by name. A pattern that matches nothing is an error.
- A VRT mosaic (:func:`write_mosaic`) turns many tiles of one grid into one scene: a GDAL virtual
  raster whose pixels are read from the tiles. rasterio reads a ``.vrt`` like any GeoTIFF, so it
  is predicted like one scene (and split into row bands like one, see :mod:`.jobs`).
"""

from __future__ import annotations

import glob
import math
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

from rsprompt.inference.reader import PredictError

#: Characters that make an argument a glob pattern (when no file has that name).
GLOB_CHARS = frozenset("*?[")


def _is_pattern(text: str) -> bool:
    return any(c in GLOB_CHARS for c in text)


def _expand_one(text: str, base: Path | None, origin: str) -> list[Path]:
    """One argument or list line: a path, or a glob pattern (relative to ``base`` when given)."""
    path = Path(text).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    if not _is_pattern(text) or path.exists():
        return [path]
    matches = sorted(glob.glob(str(path), recursive=True))
    files = [Path(m) for m in matches if os.path.isfile(m)]
    if not files:
        raise PredictError(f"{origin}: the pattern {text!r} matches no file")
    return files


def read_scene_list(list_file: Path) -> list[Path]:
    """The scenes of a list file (one path or pattern per line, ``#`` comments).

    Raises:
        PredictError: If the file cannot be read, lists nothing, or a pattern matches nothing.
    """
    try:
        text = list_file.read_text()
    except OSError as exc:
        raise PredictError(f"scene list {list_file}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise PredictError(f"scene list {list_file} is not a text file") from None
    scenes: list[Path] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if line:
            scenes += _expand_one(line, list_file.parent, f"scene list {list_file}:{number}")
    if not scenes:
        raise PredictError(f"scene list {list_file} lists no scene")
    return scenes


def expand_scenes(items: Sequence[str | Path]) -> list[Path]:
    """Scene paths from the command line: ``@list`` files, glob patterns, plain paths.

    Order is kept (each pattern's matches sorted); a scene named twice stays twice (the caller
    refuses duplicates with a message naming it).

    Raises:
        PredictError: A list file that cannot be read or a pattern that matches nothing.
    """
    scenes: list[Path] = []
    for item in items:
        text = str(item)
        if text.startswith("@") and len(text) > 1:
            scenes += read_scene_list(Path(text[1:]).expanduser())
        else:
            scenes += _expand_one(text, None, "scene argument")
    return scenes


def _grid_of(src: object, path: Path) -> tuple:
    """What tiles of one mosaic must share: CRS, pixel size, band count, data type."""
    t = src.transform  # type: ignore[attr-defined]
    if t.b != 0 or t.d != 0:
        raise PredictError(f"mosaic tile {path} is rotated; VRT mosaics need north-up tiles")
    return (src.crs, (t.a, t.e), src.count, src.dtypes[0])  # type: ignore[attr-defined]


def _on_grid(value: float, origin: float, step: float, path: Path) -> int:
    """Pixel offset of ``value`` on a grid; tiles must be aligned to whole pixels."""
    offset = (value - origin) / step
    if abs(offset - round(offset)) > 1e-3:
        raise PredictError(
            f"mosaic tile {path} is not aligned with the first tile's pixel grid "
            f"(offset {offset:.3f} px); resample it onto one grid first"
        )
    return round(offset)


def mosaic_xml(sources: Sequence[Path], relative_to: Path | None = None) -> str:
    """The XML of a VRT mosaic of ``sources`` (see :func:`write_mosaic`)."""
    import rasterio
    from rasterio.enums import MaskFlags

    tiles = []
    masks: list[bool] = []
    grid = None
    for path in sources:
        try:
            with rasterio.open(path) as src:
                g = _grid_of(src, path)
                if grid is not None and g != grid:
                    raise PredictError(
                        f"mosaic tile {path} has CRS/pixel size/bands/type {g[0]}, {g[1]}, "
                        f"{g[2]}, {g[3]}; the first tile has {grid[0]}, {grid[1]}, {grid[2]}, "
                        f"{grid[3]}"
                    )
                grid = g
                tiles.append((path, src.transform, src.width, src.height, src.nodata))
                masks.append(MaskFlags.all_valid not in src.mask_flag_enums[0])
        except rasterio.errors.RasterioError as exc:
            raise PredictError(f"mosaic tile {path}: {' '.join(str(exc).split())}") from None
    if grid is None:
        raise PredictError("a mosaic needs at least one tile")
    crs, (px, py), count, dtype = grid
    lefts = [t.c for _, t, _, _, _ in tiles]
    tops = [t.f for _, t, _, _, _ in tiles]
    x0 = min(lefts) if px > 0 else max(lefts)
    y0 = max(tops) if py < 0 else min(tops)
    placed = []
    for path, t, w, h, nodata in tiles:
        placed.append(
            (path, _on_grid(t.c, x0, px, path), _on_grid(t.f, y0, py, path), w, h, nodata)
        )
    width = max(c + w for _, c, _, w, _, _ in placed)
    height = max(r + h for _, _, r, _, h, _ in placed)
    nodatas = {n for *_, n in placed}
    nodata = nodatas.pop() if len(nodatas) == 1 else None
    masked = nodata is None and not (_covers(placed, width, height) and not any(masks))
    if nodata is not None and isinstance(nodata, float) and math.isnan(nodata):
        nodata_text = "nan"
    else:
        nodata_text = None if nodata is None else repr(nodata)
    return _vrt_document(
        placed,
        crs,
        (x0, px, y0, py),
        (width, height),
        (count, dtype),
        (nodata_text, masked),
        relative_to,
    )


def _covers(placed: list[tuple], width: int, height: int) -> bool:
    """Whether the tiles cover every pixel of the ``width × height`` mosaic."""
    import numpy as np

    xs = sorted(
        {0, width, *(c for _, c, _, _, _, _ in placed), *(c + w for _, c, _, w, _, _ in placed)}
    )
    ys = sorted(
        {0, height, *(r for _, _, r, _, _, _ in placed), *(r + h for _, _, r, _, h, _ in placed)}
    )
    covered = np.zeros((len(ys) - 1, len(xs) - 1), bool)
    for _, c, r, w, h, _ in placed:
        covered[ys.index(r) : ys.index(r + h), xs.index(c) : xs.index(c + w)] = True
    return bool(covered.all())


def _source_xml(
    kind: str, path: Path, band: str, tile: tuple, dtype: str, relative_to: Path | None
) -> str:
    _, col, row, w, h, _ = tile
    rel = "0"
    name = str(path.resolve())
    if relative_to is not None:
        try:
            name = os.path.relpath(path.resolve(), relative_to.resolve())
            rel = "1"
        except ValueError:  # another drive (Windows)
            pass
    return (
        f"    <{kind}>\n"
        f'      <SourceFilename relativeToVRT="{rel}">{escape(name)}</SourceFilename>\n'
        f"      <SourceBand>{band}</SourceBand>\n"
        f'      <SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>\n'
        f'      <DstRect xOff="{col}" yOff="{row}" xSize="{w}" ySize="{h}"/>\n'
        f"    </{kind}>\n"
    )


_GDAL_TYPES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "float32": "Float32",
    "float64": "Float64",
}


def _srs_text(crs: object) -> str:
    """The tiles' CRS as the VRT's SRS: its authority code when it has one (``EPSG:32633``).

    The code makes GDAL see exactly the tiles' CRS; a WKT dump may differ in details so that
    an aux raster in that CRS would be reprojected (not just resampled) onto the mosaic.
    """
    auth = crs.to_authority()  # type: ignore[attr-defined]
    if auth is not None:
        return f"{auth[0]}:{auth[1]}"
    return crs.to_wkt()  # type: ignore[attr-defined]


def _vrt_document(
    placed: list[tuple],
    crs: object,
    origin: tuple[float, float, float, float],
    size: tuple[int, int],
    kind: tuple[int, str],
    validity: tuple[str | None, bool],
    relative_to: Path | None,
) -> str:
    """The VRT: one band per tile band, with the tiles' nodata or a mask.

    ``masked``: a mask band from the tiles' masks, used where they have no common nodata and do
    not cover the mosaic (or have masks).
    """
    count, dtype = kind
    nodata, masked = validity
    gdal_type = _GDAL_TYPES.get(dtype)
    if gdal_type is None:
        raise PredictError(f"mosaic tiles of type {dtype} are not supported")
    x0, px, y0, py = origin
    width, height = size
    wkt = escape(_srs_text(crs)) if crs is not None else ""
    parts = [
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">\n',
        f"  <SRS>{wkt}</SRS>\n",
        f"  <GeoTransform>{x0!r}, {px!r}, 0.0, {y0!r}, 0.0, {py!r}</GeoTransform>\n",
    ]
    for b in range(1, count + 1):
        parts.append(f'  <VRTRasterBand dataType="{gdal_type}" band="{b}">\n')
        if nodata is not None:
            parts.append(f"    <NoDataValue>{nodata}</NoDataValue>\n")
        for tile in placed:
            parts.append(_source_xml("SimpleSource", tile[0], str(b), tile, dtype, relative_to))
        parts.append("  </VRTRasterBand>\n")
    if masked:  # outside the tiles (and where they are masked) there is no data
        parts.append('  <MaskBand>\n    <VRTRasterBand dataType="Byte">\n')
        for tile in placed:
            parts.append(_source_xml("SimpleSource", tile[0], "mask,1", tile, dtype, relative_to))
        parts.append("    </VRTRasterBand>\n  </MaskBand>\n")
    parts.append("</VRTDataset>\n")
    return "".join(parts)


def write_mosaic(sources: Sequence[Path], vrt: Path, *, overwrite: bool = False) -> Path:
    """Write a VRT mosaic of ``sources`` (tiles on one pixel grid) to ``vrt``, atomically.

    Tiles must share CRS, pixel size, band count and data type and sit on one pixel grid (no
    resampling). The tiles are referenced relative to the VRT's folder. Where no tile covers the
    mosaic there is no data: the tiles' common nodata value, else a mask built from the tiles'
    masks (none when the tiles cover the mosaic and have neither). Writing the same mosaic again (same XML) is a no-op, so parallel shards may all call it.

    Raises:
        PredictError: Tiles that do not fit one grid, or ``vrt`` exists with other content and
            ``overwrite`` is false.
    """
    text = mosaic_xml(sources, relative_to=vrt.parent)
    if vrt.exists():
        if vrt.read_text() == text:
            return vrt
        if not overwrite:
            raise PredictError(f"--mosaic {vrt} exists with other tiles; pass --overwrite")
    tmp = vrt.with_name(f".{vrt.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, vrt)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise PredictError(f"cannot write --mosaic {vrt}: {exc.strerror or exc}") from None
    return vrt
