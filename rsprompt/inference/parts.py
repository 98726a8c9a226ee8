"""Stitching the row parts of a scene into its final map (scale-out of one large scene).

A scene too large for one worker is split into horizontal bands (:func:`~rsprompt.tiling.row_bands`);
each worker runs ``predict_scene(..., row_range=(r0, r1))`` and writes its rows as a *part* (a
tiled GeoTIFF of those rows). :func:`merge_row_parts` then checks that the parts tile one scene
exactly, copies them into one temporary raster and finishes it with the map sink's
:func:`~rsprompt.inference.sink.finish_map`: the same COG, overviews, ``.qml``, ``.aux.xml``
(counts) and vectors as a single ``predict_scene`` run, atomically.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError
from rasterio.transform import Affine
from rasterio.windows import Window as RioWindow

from rsprompt.data.labels import ClassTable
from rsprompt.inference.predictor import _atomic, _check_scene_outputs, scene_outputs
from rsprompt.inference.reader import PredictError
from rsprompt.inference.sink import MapTargets, count_classes, finish_map
from rsprompt.inference.summary import PredictSummary, pixel_area_m2
from rsprompt.inference.writers import (
    BLOCK,
    StripWriter,
    class_dtype,
    colormap,
    locked_outputs,
    writing,
)
from rsprompt.tiling import row_bands

__all__ = ["PartLayout", "check_parts", "merge_row_parts", "row_bands"]


@dataclass(frozen=True)
class PartLayout:
    """Parts that tile one scene.

    Attributes:
        paths: The parts, top to bottom.
        rows: ``(r0, r1)`` of each part in the scene.
        width: Scene columns.
        crs: Scene CRS.
        transform: Scene geotransform (the first part's).
        dtype: Data type of the parts.
        count: Bands per part.
    """

    paths: list[Path]
    rows: list[tuple[int, int]]
    width: int
    crs: CRS
    transform: Affine
    dtype: str
    count: int

    @property
    def height(self) -> int:
        """Scene rows."""
        return self.rows[-1][1]


def _open_part(path: Path, what: str) -> rasterio.io.DatasetReader:
    if not path.is_file():
        raise PredictError(f"{what} {path}: file not found")
    try:
        return rasterio.open(path)
    except RasterioIOError as exc:
        raise PredictError(f"{what} {path}: not a readable raster ({exc})") from None


def check_parts(parts: Sequence[str | Path], what: str = "part") -> PartLayout:
    """Check that ``parts`` (in row order) tile one scene exactly.

    Each must have the CRS, width, pixel size, column origin, data type and band count of the
    first, and start on the row where the one before ends (its transform is the scene's shifted
    by its first row, as ``predict_scene(row_range=…)`` writes it).

    Raises:
        PredictError: No part, an unreadable part, or parts that do not tile one scene (naming
            the part and the mismatch).
    """
    paths = [Path(p) for p in parts]
    if not paths:
        raise PredictError(f"no {what} to merge")
    rows: list[tuple[int, int]] = []
    first: tuple[CRS, Affine, int, str, int] | None = None
    for path in paths:
        with _open_part(path, what) as ds:
            crs, tr, width, dtype, count = ds.crs, ds.transform, ds.width, ds.dtypes[0], ds.count
            height = ds.height
        if first is None:
            first = (crs, tr, width, dtype, count)
            rows.append((0, height))
            continue
        crs0, tr0, width0, dtype0, count0 = first
        if (crs, width, dtype, count) != (crs0, width0, dtype0, count0):
            raise PredictError(
                f"{what} {path} does not match {paths[0]}: CRS {crs} / {crs0}, width {width} / "
                f"{width0}, data type {dtype} / {dtype0}, bands {count} / {count0}"
            )
        start = rows[-1][1]
        expected = tr0 @ Affine.translation(0, start)
        same = all(math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-9) for a, b in zip(tr, expected))
        if not same:
            raise PredictError(
                f"{what} {path} does not start where the {what} before it ends (scene row "
                f"{start}): its transform {tuple(tr)[:6]} should be {tuple(expected)[:6]}; give "
                "the parts of one scene in row order"
            )
        rows.append((start, start + height))
    crs0, tr0, width0, dtype0, count0 = first  # type: ignore[misc]
    return PartLayout(paths, rows, width0, crs0, tr0, dtype0, count0)


def _copy_parts(layout: PartLayout, writer: StripWriter, *, counts_of: int | None) -> np.ndarray:
    """Copy the parts into ``writer`` in ``BLOCK × BLOCK`` tiles (a tile may span two parts).

    Returns:
        Pixels per class (``counts_of`` classes; nodata left out), or an empty array.
    """
    k = counts_of or 0
    counts = np.zeros(k, np.int64)
    nodata = writer.ds.nodata
    sources = [rasterio.open(p) for p in layout.paths]
    try:
        for row in range(0, layout.height, BLOCK):
            h = min(BLOCK, layout.height - row)
            for col in range(0, layout.width, BLOCK):
                w = min(BLOCK, layout.width - col)
                pieces = []
                for ds, (r0, r1) in zip(sources, layout.rows, strict=True):
                    lo, hi = max(row, r0), min(row + h, r1)
                    if lo < hi:
                        pieces.append(ds.read(window=RioWindow(col, lo - r0, w, hi - lo)))
                block = np.concatenate(pieces, axis=1)
                if k:
                    counts += count_classes(block[0], int(nodata), k)
                writer.write(block, row, col)
    finally:
        for ds in sources:
            ds.close()
    return counts


def _merged_raster(
    layout: PartLayout, path: Path, classes: ClassTable, *, probabilities: bool
) -> np.ndarray:
    """The stitched parts in a tiled temporary raster; class counts unless ``probabilities``."""
    k = classes.num_classes
    dtype, nodata = class_dtype(k)
    want = ("uint8", k) if probabilities else (dtype, 1)
    if (layout.dtype, layout.count) != want:
        kind = "probability parts" if probabilities else "class map parts"
        raise PredictError(
            f"{kind} ({layout.paths[0]}, …) hold {layout.count} band(s) of {layout.dtype}; "
            f"{k} classes need {want[1]} band(s) of {want[0]}"
        )
    common = {"height": layout.height, "width": layout.width, "crs": layout.crs}
    common.update(transform=layout.transform, strip_rows=None)
    if probabilities:
        writer = StripWriter(
            path, count=k, dtype="uint8", descriptions=list(classes.names), **common
        )
    else:
        cmap = colormap(classes.colors, nodata)
        writer = StripWriter(path, count=1, dtype=dtype, nodata=nodata, colormap=cmap, **common)
    try:
        counts = _copy_parts(layout, writer, counts_of=None if probabilities else k)
    finally:
        writer.close()
    return counts


def _check_probability_parts(layout: PartLayout, probs: PartLayout) -> None:
    if probs.rows != layout.rows or probs.width != layout.width or probs.crs != layout.crs:
        raise PredictError(
            f"the probability parts ({probs.paths[0]}, …) do not cover the rows of the class map "
            f"parts ({layout.paths[0]}, …): rows {probs.rows} / {layout.rows}"
        )


def merge_row_parts(
    parts: Sequence[str | Path],
    out_path: str | Path,
    *,
    classes: ClassTable,
    probability_parts: Sequence[str | Path] | None = None,
    probabilities: str | Path | None = None,
    vectors: str | Path | None = None,
    overwrite: bool = False,
    overview_resampling: str = "mode",
    compress: str = "DEFLATE",
    remove_parts: bool = False,
) -> PredictSummary:
    """Stitch the row parts of one scene into its final map, as one ``predict_scene`` run would.

    The class map parts (``predict_scene(row_range=…)`` outputs, given in row order) are checked
    to tile one scene (:func:`check_parts`), copied into one temporary raster and finished with
    the map sink: a COG with overviews, the ``.qml`` style, the ``.aux.xml`` attribute table with
    the pixel counts, and the probabilities COG and vectors when asked, all committed together
    (nothing is written on any error). The pixels, counts and style equal those of a single run.

    Args:
        parts: Class map parts, top to bottom.
        out_path: The class map to write.
        classes: The class table the parts were predicted with.
        probability_parts: Probability parts of the same rows (needed for ``probabilities``).
        probabilities: Probabilities COG to write, or ``None``.
        vectors: GeoPackage of polygons to write, or ``None``.
        overwrite: Replace existing outputs.
        overview_resampling: ``mode`` or ``nearest`` (class map overviews).
        compress: ``DEFLATE`` or ``ZSTD``.
        remove_parts: Delete the parts once the outputs are committed.

    Returns:
        A :class:`~rsprompt.inference.summary.PredictSummary` of the whole scene (``scene`` is
        the first part; ``windows`` 0).

    Raises:
        PredictError: Parts that do not tile one scene, do not match ``classes``, probability
            parts missing or not matching, or outputs that cannot be written (as in
            :func:`~rsprompt.inference.predictor.predict_scene`).
        OutputLockedError: Another run writes one of the outputs.
        OutputError: A write failed (the previous outputs are kept).
    """
    t_start = time.perf_counter()
    out_path = Path(out_path)
    targets = MapTargets(
        out_path,
        Path(probabilities) if probabilities is not None else None,
        Path(vectors) if vectors is not None else None,
    )
    if (probabilities is None) != (probability_parts is None):
        raise PredictError("probabilities and probability_parts go together: give both or neither")
    planned = scene_outputs(out_path, targets.probabilities, targets.vectors)
    layout = check_parts(parts)
    probs = check_parts(probability_parts, "probability part") if probability_parts else None
    if probs is not None:
        _check_probability_parts(layout, probs)
    inputs = [("part", p) for p in layout.paths + (probs.paths if probs else [])]
    _check_scene_outputs(planned, inputs, overwrite)
    finals = [o.path for o in planned if not o.removes]
    with locked_outputs(finals, keep=[p for _, p in inputs]):
        _check_scene_outputs(planned, inputs, overwrite)
        with _atomic(overwrite, f"the merged map {out_path} (…)", out_path) as outputs:
            cls_tmp = outputs.scratch(out_path)
            with writing(f"the class map {out_path} (temporary file {cls_tmp})", cls_tmp):
                counts = _merged_raster(layout, cls_tmp, classes, probabilities=False)
            prob_tmp = None
            if probs is not None and targets.probabilities is not None:
                prob_tmp = outputs.scratch(targets.probabilities)
                with writing(f"the probabilities {probabilities} (temporary file {prob_tmp})"):
                    _merged_raster(probs, prob_tmp, classes, probabilities=True)
            _, nodata = class_dtype(classes.num_classes)
            extra = finish_map(
                outputs,
                cls_tmp,
                prob_tmp,
                targets,
                classes,
                counts.tolist(),
                nodata=nodata,
                overview_resampling=overview_resampling,
                compress=compress,
            )
    if remove_parts:
        for p in inputs:
            p[1].unlink(missing_ok=True)
    height = layout.height
    return PredictSummary(
        scene=layout.paths[0],
        output=out_path,
        width=layout.width,
        height=height,
        class_names=list(classes.names),
        counts=counts.tolist(),
        nodata_pixels=layout.width * height - int(counts.sum()),
        pixel_area_m2=pixel_area_m2(layout.crs, layout.transform, height, layout.width),
        seconds=time.perf_counter() - t_start,
        windows=0,
        extra_outputs=extra,
    )
