"""Writers for GIS-ready outputs: class COG, QGIS style, raster attribute table, vectors.

- The class map is streamed strip by strip into a temporary tiled GeoTIFF, then copied to a
  Cloud-Optimised GeoTIFF with GDAL's COG driver (internal NEAREST/MODE overviews, 512 tiles,
  DEFLATE or ZSTD), keeping the colour table and nodata value.
- Sidecars: a same-named ``.qml`` (QGIS "paletted" renderer with the class names) and a GDAL
  raster attribute table in ``.aux.xml``.
- Every output goes to a temporary file in its destination folder first; :class:`AtomicOutputs`
  renames them all at the end, or deletes them all on error.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.transform import Affine
from rasterio.windows import Window as RioWindow

#: Tile size of every raster written.
BLOCK = 512


def class_dtype(num_classes: int) -> tuple[str, int]:
    """Data type and nodata value of a class map with ``num_classes`` classes.

    uint8 with nodata 255 up to 255 classes, else uint16 with nodata 65535 (never a class).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if num_classes <= 255:
        return "uint8", 255
    if num_classes <= 65535:
        return "uint16", 65535
    raise ValueError(f"{num_classes} classes do not fit in a uint16 class map")


def hex_color(rgb: Sequence[int]) -> str:
    """``(r, g, b)`` → ``#rrggbb``."""
    r, g, b = (int(c) for c in rgb[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


# ---------------------------------------------------------------------------- atomic writes
class AtomicOutputs:
    """Temporary files that become the final outputs all together, or not at all.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> with AtomicOutputs() as out:
        ...     tmp = out.temp_for(d / "map.tif")
        ...     _ = tmp.write_text("x")
        >>> sorted(p.name for p in d.iterdir())
        ['map.tif']
    """

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []
        self._scratch: list[Path] = []

    def temp_for(self, final: str | Path) -> Path:
        """A temporary path in ``final``'s folder that replaces ``final`` on commit."""
        final = Path(final)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp{final.suffix}")
        self._pending.append((tmp, final))
        return tmp

    def scratch(self, near: str | Path, suffix: str = ".tif") -> Path:
        """A temporary path next to ``near`` that is always deleted at the end."""
        near = Path(near)
        tmp = near.with_name(f".{near.name}.{uuid.uuid4().hex[:8]}.scratch{suffix}")
        self._scratch.append(tmp)
        return tmp

    @staticmethod
    def _remove(path: Path) -> None:
        for p in (path, Path(f"{path}.aux.xml"), Path(f"{path}.ovr"), Path(f"{path}.msk")):
            if p.exists():
                p.unlink()

    def commit(self) -> None:
        """Rename every temporary file onto its final name (sidecars first, main files last)."""
        for tmp, _ in self._pending:
            if not tmp.exists():
                raise FileNotFoundError(f"temporary output {tmp} was never written")
        ordered = sorted(self._pending, key=lambda p: p[1].suffix in (".tif", ".tiff"))
        for tmp, final in ordered:
            # Sidecars GDAL may have created for the temporary name are not wanted.
            for extra in (Path(f"{tmp}.aux.xml"), Path(f"{tmp}.ovr")):
                if extra.exists():
                    extra.unlink()
            if final.suffix.lower() in (".tif", ".tiff"):
                # Stale external overviews/masks would override the new internal ones.
                for stale in (Path(f"{final}.ovr"), Path(f"{final}.msk")):
                    if stale.exists():
                        stale.unlink()
            os.replace(tmp, final)
        self._pending.clear()
        self.cleanup()

    def rollback(self) -> None:
        """Delete every temporary file."""
        for tmp, _ in self._pending:
            self._remove(tmp)
        self._pending.clear()
        self.cleanup()

    def cleanup(self) -> None:
        """Delete scratch files."""
        for tmp in self._scratch:
            self._remove(tmp)
        self._scratch.clear()

    def __enter__(self) -> AtomicOutputs:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.rollback()


# ---------------------------------------------------------------------------- streaming GeoTIFF
class StripWriter:
    """A temporary tiled GeoTIFF written in row strips (the input of :func:`to_cog`).

    Args:
        path: File to create.
        height: Rows.
        width: Columns.
        count: Bands.
        dtype: Data type.
        crs: CRS.
        transform: Geotransform.
        nodata: Nodata value or ``None``.
        colormap: ``{value: (r, g, b, a)}`` for band 1, or ``None``.
        descriptions: Band descriptions, or ``None``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        height: int,
        width: int,
        count: int,
        dtype: str,
        crs: CRS,
        transform: Affine,
        nodata: float | None = None,
        colormap: dict[int, tuple[int, int, int, int]] | None = None,
        descriptions: Sequence[str] | None = None,
    ) -> None:
        self.path = Path(path)
        profile = {
            "driver": "GTiff",
            "height": height,
            "width": width,
            "count": count,
            "dtype": dtype,
            "crs": crs,
            "transform": transform,
            "nodata": nodata,
            "tiled": True,
            "blockxsize": BLOCK,
            "blockysize": BLOCK,
            # Fast, light compression: this file is read once by the COG copy.
            "compress": "ZSTD",
            "zstd_level": 1,
            "bigtiff": "IF_SAFER",
            "photometric": "MINISBLACK",
            "interleave": "band" if count > 1 else "pixel",
        }
        if height < BLOCK or width < BLOCK:
            profile["tiled"] = False
            profile.pop("blockxsize")
            profile.pop("blockysize")
        self.ds = rasterio.open(self.path, "w", **profile)
        if colormap is not None:
            self.ds.write_colormap(1, colormap)
            self.ds.colorinterp = [ColorInterp.palette]
        if descriptions is not None:
            for i, name in enumerate(descriptions, start=1):
                self.ds.set_band_description(i, name)

    def write(self, data: np.ndarray, row: int, col: int = 0) -> None:
        """Write ``data`` (``count×h×w`` or ``h×w``) with its first pixel at ``(row, col)``."""
        if data.ndim == 2:
            data = data[None]
        self.ds.write(data, window=RioWindow(col, row, data.shape[-1], data.shape[-2]))

    def close(self) -> None:
        """Close the file."""
        if not self.ds.closed:
            self.ds.close()


def to_cog(
    src: str | Path,
    dst: str | Path,
    *,
    overview_resampling: str = "mode",
    compress: str = "DEFLATE",
    predictor: bool = False,
) -> None:
    """Copy ``src`` to a Cloud-Optimised GeoTIFF ``dst`` (512 tiles, internal overviews).

    Args:
        src: Input raster (e.g. the :class:`StripWriter` file).
        dst: Output path.
        overview_resampling: ``nearest`` or ``mode`` for classes, ``average`` for probabilities.
        compress: ``DEFLATE`` or ``ZSTD``.
        predictor: Use the horizontal-differencing predictor (for continuous data).
    """
    opts = {
        "driver": "COG",
        "blocksize": BLOCK,
        "compress": compress.upper(),
        "overview_resampling": overview_resampling.upper(),
        "resampling": overview_resampling.upper(),
        "bigtiff": "IF_SAFER",
        "num_threads": "2",
    }
    if predictor:
        opts["predictor"] = "YES"
    with rasterio.open(src) as ds:
        rasterio.shutil.copy(ds, dst, **opts)


# ---------------------------------------------------------------------------- sidecars
def colormap(colors: Sequence[Sequence[int]], nodata: int) -> dict[int, tuple[int, int, int, int]]:
    """Colour table for band 1: class colours, nodata transparent black."""
    cmap = {i: (int(c[0]), int(c[1]), int(c[2]), 255) for i, c in enumerate(colors)}
    if nodata <= 255:
        cmap[nodata] = (0, 0, 0, 0)
    return cmap


def qml_text(names: Sequence[str], colors: Sequence[Sequence[int]], nodata: int) -> str:
    """A QGIS style (``.qml``) with a paletted renderer labelling every class.

    Args:
        names: Class names (index = pixel value).
        colors: RGB colour per class.
        nodata: Nodata value of the class map (left out of the palette).
    """
    entries = "\n".join(
        f"        <paletteEntry value={quoteattr(str(i))} color={quoteattr(hex_color(c))} "
        f'alpha="255" label={quoteattr(str(n))}/>'
        for i, (n, c) in enumerate(zip(names, colors, strict=True))
    )
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22.0" styleCategories="AllStyleCategories" hasScaleBasedVisibilityFlag="0">
  <pipe>
    <provider>
      <resampling enabled="false" maxOversampling="2" zoomedInResamplingMethod="nearestNeighbour" zoomedOutResamplingMethod="nearestNeighbour"/>
    </provider>
    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">
      <rasterTransparency/>
      <minMaxOrigin>
        <limits>None</limits>
        <extent>WholeRaster</extent>
        <statAccuracy>Estimated</statAccuracy>
        <cumulativeCutLower>0.02</cumulativeCutLower>
        <cumulativeCutUpper>0.98</cumulativeCutUpper>
        <stdDevFactor>2</stdDevFactor>
      </minMaxOrigin>
      <colorPalette>
{entries}
      </colorPalette>
    </rasterrenderer>
    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>
    <huesaturation saturation="0" colorizeOn="0" grayscaleMode="0" invertColors="0"/>
    <rasterresampler maxOversampling="2"/>
    <resamplingStage>resamplingFilter</resamplingStage>
  </pipe>
  <blendMode>0</blendMode>
  <!-- nodata value {nodata} is not a class -->
</qgis>
"""


def rat_aux_xml_text(
    names: Sequence[str],
    colors: Sequence[Sequence[int]],
    counts: Sequence[int] | None = None,
    nodata: int | None = None,
) -> str:
    """A GDAL PAM ``.aux.xml`` holding a thematic raster attribute table for band 1.

    Columns: ``Value`` (min-max usage), ``Class`` (name usage), ``Red``/``Green``/``Blue`` and,
    when given, ``Count`` (pixel count usage).
    """
    fields = [
        ("Value", 0, 5),
        ("Class", 2, 2),
        ("Red", 0, 6),
        ("Green", 0, 7),
        ("Blue", 0, 8),
    ]
    if counts is not None:
        fields.append(("Count", 1, 1))
    defs = "\n".join(
        f'      <FieldDefn index="{i}">\n        <Name>{n}</Name>\n        <Type>{t}</Type>\n'
        f"        <Usage>{u}</Usage>\n      </FieldDefn>"
        for i, (n, t, u) in enumerate(fields)
    )
    rows = []
    for i, (name, c) in enumerate(zip(names, colors, strict=True)):
        vals = [str(i), escape(str(name)), str(int(c[0])), str(int(c[1])), str(int(c[2]))]
        if counts is not None:
            vals.append(str(int(counts[i])))
        cells = "".join(f"<F>{v}</F>" for v in vals)
        rows.append(f'      <Row index="{i}">{cells}</Row>')
    nod = f"    <NoDataValue>{nodata}</NoDataValue>\n" if nodata is not None else ""
    body = "\n".join(rows)
    return f"""<PAMDataset>
  <PAMRasterBand band="1">
{nod}    <GDALRasterAttributeTable tableType="thematic">
{defs}
{body}
    </GDALRasterAttributeTable>
  </PAMRasterBand>
</PAMDataset>
"""


# ---------------------------------------------------------------------------- vectors
def _blocks(height: int, width: int, size: int) -> Iterator[RioWindow]:
    for row in range(0, height, size):
        for col in range(0, width, size):
            yield RioWindow(col, row, min(size, width - col), min(size, height - row))


def write_vectors(
    class_map: str | Path,
    out: str | Path,
    names: Sequence[str],
    *,
    block: int = 2048,
    layer: str = "classes",
) -> int:
    """Polygonise a class map into a GeoPackage (``class_id``, ``class_name``; nodata skipped).

    Memory stays bounded: the map is polygonised in ``block × block`` chunks, so polygons that
    cross a chunk border are split there (dissolve by ``class_id`` in a GIS if needed).

    Returns:
        Number of polygons written.
    """
    import geopandas as gpd
    from rasterio.features import shapes
    from shapely.geometry import shape

    total = 0
    first = True
    with rasterio.open(class_map) as ds:
        nodata = ds.nodata
        crs = ds.crs
        for win in _blocks(ds.height, ds.width, block):
            data = ds.read(1, window=win)
            mask = data != nodata if nodata is not None else None
            transform = ds.window_transform(win)
            geoms, ids = [], []
            for geom, value in shapes(data, mask=mask, transform=transform, connectivity=4):
                geoms.append(shape(geom))
                ids.append(int(value))
            if not geoms:
                continue
            ids_arr = np.asarray(ids, dtype=np.int32)
            frame = gpd.GeoDataFrame(
                {
                    "class_id": ids_arr,
                    "class_name": [names[i] if 0 <= i < len(names) else str(i) for i in ids],
                },
                geometry=geoms,
                crs=crs,
            )
            frame.to_file(out, layer=layer, driver="GPKG", mode="w" if first else "a")
            first = False
            total += len(frame)
        if first:  # nothing but nodata: an empty layer with the right schema
            empty = gpd.GeoDataFrame(
                {"class_id": np.zeros(0, np.int32), "class_name": np.zeros(0, object)},
                geometry=gpd.GeoSeries([], crs=crs),
            )
            empty.to_file(out, layer=layer, driver="GPKG", geometry_type="Polygon")
    return total
