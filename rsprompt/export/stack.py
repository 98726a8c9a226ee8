"""One stacked layer: a scene's optical bands and its aux raster aligned onto the scene's grid.

``rsprompt stack scene.tif --dem dsm.tif -o stacked.vrt`` writes two files:

- ``stacked_dsm.tif`` (``_sar`` for ``--sar``): the aux raster on the scene's grid (CRS, transform,
  size), float32, NaN where the aux has no data. It is read through
  :class:`rsprompt.inference.reader.SceneReader`, the reader ``rsprompt predict`` uses, so its
  values are exactly those the model sees at prediction (the same warping, the same bilinear
  upsampling of a coarse aux, the same validity rule). A pure VRT cannot reproduce that
  alignment: GDAL's warped VRT would interpolate a coarse aux directly and pick its kernel scale
  per read, so the aligned aux is written as a GeoTIFF next to the VRT.
- ``stacked.vrt``: a GDAL VRT on the scene's grid whose bands are the optical bands the checkpoint
  reads (``-m model.ckpt``; every band without it), referenced from the scene file as they are,
  then the aligned aux band(s). Paths inside are relative to the VRT, so the two files and the
  scene can move together.

**Heights above ground** (``--ndsm``; the default with a checkpoint trained on an nDSM): the aux
band holds the DSM minus the ground that ``rsprompt predict`` fits once over the whole scene
(:mod:`rsprompt.inference.ground`), in metres, unclipped, NaN where there is no height; the file
is ``stacked_ndsm.tif``. A model exported for it (``rsprompt export``, the same default) only
clips and scales these heights, so every tile of the layer gives the model exactly the values
predict gives it: no ground is estimated per tile.

This is the layer to select in QGIS's Deepness plugin for a model exported with
``rsprompt export`` (its input is exactly these bands), and a single file for any other tool.
The scene's nodata value is set on the optical bands; a scene's internal mask is not carried over.

Example:
    >>> from rsprompt.export import stack_scene  # doctest: +SKIP
    >>> stack_scene("scene.tif", "stacked.vrt", aux="dsm.tif", aux_kind="dsm")  # doctest: +SKIP
    StackSummary(vrt=PosixPath('stacked.vrt'), aux=PosixPath('stacked_dsm.tif'), ...)
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rsprompt.export.common import (
    ExportError,
    InputLayout,
    atomic_outputs,
    check_output,
    checkpoint_normalization,
    input_layout,
    ndsm_input,
)

#: Rows of the scene aligned and written at a time.
STRIP_ROWS = 512
FLAGS = {"dsm": "--dem", "sar": "--sar"}


@dataclass
class StackSummary:
    """What :func:`stack_scene` wrote.

    Attributes:
        vrt: The stacked VRT.
        aux: The aligned aux GeoTIFF (``None`` without an aux raster).
        bands: 1-based scene bands in the VRT, in order.
        aux_channels: Aux bands in the VRT (after the optical ones).
        width: Columns (the scene's).
        height: Rows (the scene's).
        ndsm: Whether the aux band holds heights above ground (metres) instead of the DSM.
    """

    vrt: Path
    aux: Path | None
    bands: list[int]
    aux_channels: int
    width: int
    height: int
    ndsm: bool = False


def _layout(
    checkpoint: str | Path | None, aux: Path | None, aux_kind: str | None
) -> tuple[InputLayout, Any]:
    """The checkpoint's input layout and aux normaliser (or every band and the aux as given)."""
    if checkpoint is None:
        return InputLayout(None, None, aux_kind if aux is not None else None, 0), None
    from rsprompt.engine.checkpoint import CheckpointError, read_model_checkpoint

    try:
        meta = read_model_checkpoint(checkpoint)["meta"]
    except CheckpointError as exc:
        raise ExportError(str(exc)) from None
    layout = input_layout(meta, checkpoint)
    if aux is None and layout.aux_channels:
        raise ExportError(
            f"checkpoint {checkpoint} takes a {str(layout.aux_kind).upper()} raster: pass "
            f"{FLAGS.get(str(layout.aux_kind), '--dem/--sar')} FILE"
        )
    if aux is not None and not layout.aux_channels:
        raise ExportError(
            f"checkpoint {checkpoint} was trained on optical imagery only; it takes no aux "
            f"raster ({aux})"
        )
    if aux is not None and aux_kind is not None and aux_kind != layout.aux_kind:
        raise ExportError(
            f"checkpoint {checkpoint} was trained with {str(layout.aux_kind).upper()} as aux "
            f"modality; {aux} was given as {aux_kind.upper()} (use "
            f"{FLAGS.get(str(layout.aux_kind), '--dem/--sar')})"
        )
    norm = checkpoint_normalization(meta, checkpoint)
    return layout, None if norm is None else norm.aux


def _ndsm_normalizer(
    checkpoint: str | Path | None,
    aux_norm: Any,
    aux: Path | None,
    kind: str | None,
    ndsm: bool | None,
) -> Any:
    """The ``ndsm`` DSM normaliser whose ground the aux band is taken above, or ``None``.

    With a checkpoint: its normaliser when it is an nDSM (unless ``ndsm`` is ``False``);
    without one: the default nDSM normaliser when ``ndsm`` is ``True``.

    Raises:
        ExportError: ``ndsm`` without a DSM, or for a checkpoint not trained on an nDSM.
    """
    from rsprompt.data.normalize import DSMNormalizer

    if ndsm and (aux is None or kind not in (None, "dsm")):
        given = "no aux raster" if aux is None else f"{aux} as {str(kind).upper()}"
        raise ExportError(
            f"--ndsm takes the heights of a DSM above ground: pass --dem FILE ({given})"
        )
    if aux is None:
        return None
    if checkpoint is None:
        return DSMNormalizer("ndsm") if ndsm else None
    return aux_norm if ndsm_input(aux_norm, ndsm, checkpoint, "--ndsm") else None


def _write_aux(reader: object, path: Path, heights: Any = None) -> int:
    """Write the aux aligned onto the scene's grid (float32, NaN = no data); return its bands.

    ``heights``: a fitted :class:`~rsprompt.inference.ground.HeightAboveGround`; the band then
    holds metres above its ground.
    """
    import rasterio

    from rsprompt.inference.reader import SceneReader
    from rsprompt.inference.windows import Window

    assert isinstance(reader, SceneReader) and reader.vrt is not None
    count = reader.vrt.count
    profile = {
        "driver": "GTiff",
        "width": reader.width,
        "height": reader.height,
        "count": count,
        "dtype": "float32",
        "crs": reader.crs,
        "transform": reader.transform,
        "nodata": float("nan"),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "predictor": 3,
        "BIGTIFF": "IF_SAFER",
    }
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, reader.height, STRIP_ROWS):
            h = min(STRIP_ROWS, reader.height - row)
            win = Window(row, 0, h, reader.width)
            aux, valid = reader.read_aux(win)
            if heights is not None:
                aux, valid = heights.heights(aux, valid, (row, 0))
            aux = aux.astype(np.float32, copy=True)
            aux[:, ~valid] = np.nan
            dst.write(aux, window=((row, row + h), (0, reader.width)))
    return count


def _source(parent: ET.Element, filename: Path, band: int, vrt_dir: Path) -> None:
    src = ET.SubElement(parent, "SimpleSource")
    try:
        rel = os.path.relpath(filename.resolve(), vrt_dir.resolve())
        name, relative = rel, "1"
    except ValueError:  # another drive (Windows): absolute path
        name, relative = str(filename.resolve()), "0"
    ET.SubElement(src, "SourceFilename", relativeToVRT=relative).text = name
    ET.SubElement(src, "SourceBand").text = str(band)


def _nodata_text(value: float) -> str:
    return "nan" if math.isnan(value) else repr(float(value))


def _vrt_text(
    scene: Path,
    reader: object,
    aux_path: Path | None,
    aux_count: int,
    aux_kind: str | None,
    vrt_dir: Path,
    ndsm: bool = False,
) -> str:
    """The stacked VRT's XML."""
    from rasterio.dtypes import _gdal_typename

    src = reader.src  # type: ignore[attr-defined]
    root = ET.Element("VRTDataset", rasterXSize=str(src.width), rasterYSize=str(src.height))
    ET.SubElement(root, "SRS").text = src.crs.to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(v) for v in src.transform.to_gdal())
    n = 0
    for b in reader.bands:  # type: ignore[attr-defined]
        n += 1
        band = ET.SubElement(
            root, "VRTRasterBand", dataType=_gdal_typename(src.dtypes[b - 1]), band=str(n)
        )
        ET.SubElement(band, "Description").text = f"optical band {b}"
        if src.nodata is not None:
            ET.SubElement(band, "NoDataValue").text = _nodata_text(src.nodata)
        _source(band, scene, b, vrt_dir)
    for a in range(1, aux_count + 1):
        n += 1
        band = ET.SubElement(root, "VRTRasterBand", dataType="Float32", band=str(n))
        name = "height above ground (m)" if ndsm else f"{aux_kind or 'aux'} band {a}"
        ET.SubElement(band, "Description").text = name
        ET.SubElement(band, "NoDataValue").text = "nan"
        assert aux_path is not None
        _source(band, aux_path, a, vrt_dir)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def stack_scene(
    scene: str | Path,
    out: str | Path,
    *,
    aux: str | Path | None = None,
    aux_kind: str | None = None,
    checkpoint: str | Path | None = None,
    ndsm: bool | None = None,
    overwrite: bool = False,
) -> StackSummary:
    """Write the stacked VRT of ``scene`` and its aux raster (see the module doc).

    Args:
        scene: Optical scene (defines the grid).
        out: The VRT to write; the aligned aux goes to ``<stem>_<dsm|sar|ndsm>.tif`` beside it.
        aux: DSM or SAR raster (any CRS, resolution or extent overlapping the scene).
        aux_kind: ``"dsm"`` or ``"sar"`` (checked against the checkpoint).
        checkpoint: ``model.ckpt`` whose optical bands and aux the VRT holds (default: every
            band of the scene, and the aux as given).
        ndsm: Write the DSM as heights above the scene-wide ground (metres). Default: exactly
            when ``checkpoint`` normalises its DSM as an nDSM (its ground cell and window are
            used; without a checkpoint, ``True`` uses the default 1 m cells and 30 m window).
        overwrite: Replace existing outputs.

    Raises:
        ExportError: A missing/unreadable/ungeoreferenced input, an aux that does not overlap the
            scene or does not fit the checkpoint, ``ndsm`` without a DSM or for a checkpoint not
            trained on an nDSM, or an existing output without ``overwrite``.
    """
    from rsprompt.inference.reader import PredictError, SceneReader

    scene, out = Path(scene), Path(out)
    aux_path = Path(aux) if aux is not None else None
    if aux_kind is not None and aux_kind not in FLAGS:
        raise ExportError(f"aux kind must be dsm or sar, got {aux_kind!r}")
    layout, aux_norm = _layout(checkpoint, aux_path, aux_kind)
    kind = layout.aux_kind or aux_kind
    ground = _ndsm_normalizer(checkpoint, aux_norm, aux_path, kind, ndsm)
    suffix = "ndsm" if ground is not None else kind or "aux"
    aligned = out.with_name(f"{out.stem}_{suffix}.tif") if aux_path is not None else None
    outputs = [p for p in (aligned, out) if p is not None]
    if aligned is not None and aligned.resolve() in (scene.resolve(), aux_path.resolve()):  # type: ignore[union-attr]
        raise ExportError(f"output {aligned} would replace an input")
    for p in outputs:
        check_output(p, overwrite)
    try:
        reader = SceneReader(
            scene,
            aux_path,
            bands=layout.bands,
            expected_bands=layout.n_optical,
            aux_channels=layout.aux_channels or None,
        )
    except PredictError as exc:
        raise ExportError(str(exc)) from None
    with reader, atomic_outputs(outputs) as temps:
        try:
            heights = _fitted_heights(reader, ground)
            count = _write_aux(reader, temps[0], heights) if aligned is not None else 0
        except PredictError as exc:
            raise ExportError(str(exc)) from None
        text = _vrt_text(scene, reader, aligned, count, kind, out.parent, ground is not None)
        temps[-1].write_text(text)
        bands = list(reader.bands)
        width, height = reader.width, reader.height
    return StackSummary(out, aligned, bands, count, width, height, ground is not None)


def _fitted_heights(reader: Any, ground: Any) -> Any:
    """A :class:`HeightAboveGround` fitted on the scene (as predict fits it), or ``None``."""
    if ground is None:
        return None
    from rsprompt.inference.ground import HeightAboveGround, ground_pixel_size
    from rsprompt.inference.source import fit_normalizer

    heights = HeightAboveGround(ground, ground_pixel_size(reader.scene_path))
    fit_normalizer(reader, heights)
    return heights
