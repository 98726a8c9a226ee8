"""Stage 5 of prediction, the map sink: finished rows into the final files, atomically.

:class:`MapSink` streams the blended rows into temporary rasters (:class:`StripWriter`: striped
or tiled so that every write fills whole blocks), counts the pixels of each class, and at the end
turns them into the outputs, all through one :class:`~rsprompt.inference.writers.AtomicOutputs`:

- a whole scene (:func:`finish_map`): the class map as a Cloud-Optimised GeoTIFF with overviews,
  its ``.qml`` style and ``.aux.xml`` raster attribute table (with the pixel counts), the
  probabilities as a COG, and polygons;
- a *part* (some rows of a scene, :func:`finish_part`): a tiled GeoTIFF of those rows only (no
  overviews, sidecars or vectors), for :func:`~rsprompt.inference.parts.merge_row_parts`, which
  finishes the stitched map with the same :func:`finish_map`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio.shutil
from rasterio.crs import CRS
from rasterio.transform import Affine

from rsprompt.data.labels import ClassTable
from rsprompt.inference.writers import (
    BLOCK,
    AtomicOutputs,
    StripWriter,
    class_dtype,
    colormap,
    qml_text,
    quiet_stderr,
    rat_aux_xml_text,
    to_cog,
    write_vectors,
    writing,
)


@dataclass(frozen=True)
class MapTargets:
    """The final files of a map.

    Attributes:
        classes: The class map (GeoTIFF).
        probabilities: The probabilities (GeoTIFF), or ``None``.
        vectors: Polygons (GeoPackage), or ``None``.
    """

    classes: Path
    probabilities: Path | None = None
    vectors: Path | None = None

    @classmethod
    def of(
        cls,
        classes: str | Path,
        probabilities: str | Path | None = None,
        vectors: str | Path | None = None,
    ) -> MapTargets:
        """The targets from paths given as strings or paths."""
        return cls(
            Path(classes),
            Path(probabilities) if probabilities is not None else None,
            Path(vectors) if vectors is not None else None,
        )


@dataclass(frozen=True)
class RasterGrid:
    """Where a written raster lies: size and georeferencing.

    Attributes:
        height: Rows.
        width: Columns.
        crs: CRS.
        transform: Geotransform of the first pixel.
        row0: Scene row of the raster's first row (a part of a scene).
    """

    height: int
    width: int
    crs: CRS
    transform: Affine
    row0: int = 0


def count_classes(classes: np.ndarray, nodata: int, num_classes: int) -> np.ndarray:
    """Pixels per class value ``0 … K-1`` (int64), nodata left out."""
    values = classes[classes != nodata].ravel()
    return np.bincount(values, minlength=num_classes)[:num_classes].astype(np.int64)


def close_writers(writers: list[StripWriter | None], ok: bool) -> None:
    """Close the temporary rasters; a close error counts only if nothing failed before."""
    for w in writers:
        if w is None:
            continue
        if ok:
            with writing(f"the temporary raster {w.path}", w.path):
                w.close()
        else:
            try:
                with quiet_stderr():  # GDAL's follow-up errors of a failed file
                    w.close()
            except Exception:
                pass  # the first error is the one raised


class MapSink:
    """Temporary class map (and probability) rasters, filled row block by row block.

    Args:
        outputs: The run's atomic outputs (the temporary rasters are its scratch files).
        targets: The final files.
        grid: The written raster's grid (for a part: its rows only, transform shifted).
        classes: The class table (the class map's data type and nodata value follow from its
            size, see :func:`~rsprompt.inference.writers.class_dtype`).
        strip_rows: Rows per strip of striped temporary rasters, or ``None`` for tiles.

    Raises:
        OutputError: A temporary raster cannot be created (nothing is left behind).
    """

    def __init__(
        self,
        outputs: AtomicOutputs,
        targets: MapTargets,
        grid: RasterGrid,
        classes: ClassTable,
        *,
        strip_rows: int | None,
    ) -> None:
        self.outputs, self.targets, self.grid, self.classes = outputs, targets, grid, classes
        self.k = classes.num_classes
        self.dtype, self.nodata = class_dtype(self.k)
        dtype, nodata = self.dtype, self.nodata
        self.counts = np.zeros(classes.num_classes, np.int64)
        self.nodata_pixels = 0
        out = targets.classes
        self.cls_tmp = outputs.scratch(out)
        self._cls_what = f"the class map {out} (temporary file {self.cls_tmp})"
        common = {"height": grid.height, "width": grid.width, "crs": grid.crs}
        common.update(transform=grid.transform, strip_rows=strip_rows)
        with writing(self._cls_what, self.cls_tmp):
            self.cls_writer = StripWriter(
                self.cls_tmp,
                count=1,
                dtype=dtype,
                nodata=nodata,
                colormap=colormap(classes.colors, nodata),
                **common,
            )
        self.prob_writer: StripWriter | None = None
        self.prob_tmp: Path | None = None
        if targets.probabilities is not None:
            self.prob_tmp = outputs.scratch(targets.probabilities)
            self._prob_what = (
                f"the probabilities {targets.probabilities} (temporary file {self.prob_tmp})"
            )
            try:
                with writing(self._prob_what, self.prob_tmp):
                    self.prob_writer = StripWriter(
                        self.prob_tmp,
                        count=classes.num_classes,
                        dtype="uint8",
                        nodata=None,
                        descriptions=list(classes.names),
                        **common,
                    )
            except BaseException:
                close_writers([self.cls_writer], False)
                raise

    @property
    def wants_probabilities(self) -> bool:
        """Whether probabilities are written."""
        return self.prob_writer is not None

    def write(self, row: int, col: int, classes: np.ndarray, probs: np.ndarray | None) -> None:
        """Write class rows (nodata where invalid) and probabilities at scene ``(row, col)``."""
        self.counts += count_classes(classes, self.nodata, self.classes.num_classes)
        self.nodata_pixels += int((classes == self.nodata).sum())
        r = row - self.grid.row0
        with writing(self._cls_what, self.cls_tmp):
            self.cls_writer.write(classes, r, col)
        if self.prob_writer is not None and probs is not None:
            with writing(self._prob_what, self.prob_tmp):
                self.prob_writer.write(probs, r, col)

    def close(self, ok: bool) -> None:
        """Close the temporary rasters (``ok``: no error so far, so a close error counts)."""
        close_writers([self.cls_writer, self.prob_writer], ok)

    def finish(
        self,
        *,
        part: bool,
        overview_resampling: str = "mode",
        compress: str = "DEFLATE",
        cog: Callable[..., Any] = to_cog,
        polygonize: Callable[..., Any] = write_vectors,
    ) -> list[Path]:
        """Write the final files (temporary until the outputs commit); returns the extra files.

        ``cog`` and ``polygonize`` write the COGs and the vectors (see :func:`finish_map`).
        """
        if part:
            return finish_part(self.outputs, self.cls_tmp, self.prob_tmp, self.targets, compress)
        return finish_map(
            self.outputs,
            self.cls_tmp,
            self.prob_tmp,
            self.targets,
            self.classes,
            self.counts.tolist(),
            nodata=self.nodata,
            overview_resampling=overview_resampling,
            compress=compress,
            cog=cog,
            polygonize=polygonize,
        )


def finish_map(
    outputs: AtomicOutputs,
    cls_tmp: Path,
    prob_tmp: Path | None,
    targets: MapTargets,
    classes: ClassTable,
    counts: list[int],
    *,
    nodata: int,
    overview_resampling: str = "mode",
    compress: str = "DEFLATE",
    cog: Callable[..., Any] = to_cog,
    polygonize: Callable[..., Any] = write_vectors,
) -> list[Path]:
    """The final files of a whole map from its temporary rasters.

    The class map as a COG with overviews, its ``.qml`` style and ``.aux.xml`` (RAT with
    ``counts``), the probabilities COG and the vectors; all temporary until ``outputs`` commits.
    ``cog`` (:func:`~rsprompt.inference.writers.to_cog`) and ``polygonize``
    (:func:`~rsprompt.inference.writers.write_vectors`) do the writing; ``predict_scene`` passes
    its own module's names, so that a test can make them fail.

    Returns:
        The files written besides the class map.
    """
    out = targets.classes
    cog_tmp = outputs.temp_for(out)
    with writing(f"the class map {out} (temporary file {cog_tmp})", cog_tmp):
        cog(cls_tmp, cog_tmp, overview_resampling=overview_resampling, compress=compress)
    qml, aux_xml = out.with_suffix(".qml"), Path(f"{out}.aux.xml")
    rat = rat_aux_xml_text(classes.names, classes.colors, counts, nodata)
    for path, text in ((qml, qml_text(classes.names, classes.colors, nodata)), (aux_xml, rat)):
        tmp = outputs.temp_for(path)
        with writing(f"{path} (temporary file {tmp})", tmp):
            tmp.write_text(text)
    extra = [qml, aux_xml]
    if targets.probabilities is not None and prob_tmp is not None:
        tmp = outputs.temp_for(targets.probabilities)
        with writing(f"the probabilities {targets.probabilities} (temporary file {tmp})", tmp):
            cog(prob_tmp, tmp, overview_resampling="average", compress=compress)
        extra.append(targets.probabilities)
    if targets.vectors is not None:
        tmp = outputs.temp_for(targets.vectors)
        with writing(f"the vectors {targets.vectors} (temporary file {tmp})", tmp):
            polygonize(cls_tmp, tmp, classes.names)
        extra.append(targets.vectors)
    return extra


def to_part(src: Path, dst: Path, compress: str = "DEFLATE") -> None:
    """Copy ``src`` to a tiled GeoTIFF part (:data:`BLOCK` tiles, no overviews)."""
    opts = {
        "driver": "GTiff",
        "tiled": True,
        "blockxsize": BLOCK,
        "blockysize": BLOCK,
        "compress": compress.upper(),
        "bigtiff": "IF_SAFER",
    }
    with rasterio.open(src) as ds:
        rasterio.shutil.copy(ds, dst, **opts)


def finish_part(
    outputs: AtomicOutputs,
    cls_tmp: Path,
    prob_tmp: Path | None,
    targets: MapTargets,
    compress: str = "DEFLATE",
) -> list[Path]:
    """The rows of a part as tiled GeoTIFFs (temporary until ``outputs`` commits).

    Returns:
        The files written besides the class map (the probabilities part, if any).
    """
    out = targets.classes
    tmp = outputs.temp_for(out)
    with writing(f"the class map part {out} (temporary file {tmp})", tmp):
        to_part(cls_tmp, tmp, compress)
    if targets.probabilities is None or prob_tmp is None:
        return []
    tmp = outputs.temp_for(targets.probabilities)
    with writing(f"the probabilities part {targets.probabilities} (temporary file {tmp})", tmp):
        to_part(prob_tmp, tmp, compress)
    return [targets.probabilities]
