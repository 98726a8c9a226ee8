"""Streaming prediction of whole scenes at bounded memory: the stages put together.

:func:`predict_scene` composes five stages, each a unit of its own:

1. the window plan (:mod:`~rsprompt.inference.windows`): grid, column bands, batches, rows;
2. the scene source (:mod:`~rsprompt.inference.source`): strips read once per window row, aux
   aligned, validity, normalisation;
3. the model step (:mod:`~rsprompt.inference.model_step`): device, precision, TTA, padding;
4. the blender (:mod:`~rsprompt.inference.blender`): weighted probabilities accumulated in a
   row strip, argmax of finished rows;
5. the map sink (:mod:`~rsprompt.inference.sink`): temporary rasters, then the COG with
   overviews and sidecars (or a part of a scene), all atomic.

Reading, the forward pass and blending/writing run overlapped on three threads with bounded
queues (:func:`~rsprompt.inference.overlap.run_overlapped`); the first error of any stops all.
Memory is bounded by the strip (``K × (window + 16) × width`` floats) and the queues, never by the
scene's height. With ``overlap_io=False`` the same stages run one after another on the calling
thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from rasterio.transform import Affine
from torch import Tensor

from rsprompt.data.labels import ClassTable
from rsprompt.engine.device import resolve_device
from rsprompt.engine.precision import resolve_precision
from rsprompt.inference.blender import Blender, StripAccumulator
from rsprompt.inference.model_step import ModelStep, eval_mode
from rsprompt.inference.model_step import forward_probs as _forward
from rsprompt.inference.overlap import run_overlapped as _run_overlapped
from rsprompt.inference.reader import AuxStats, PredictError, SceneReader
from rsprompt.inference.sink import MapSink, MapTargets, RasterGrid
from rsprompt.inference.source import (
    NormalizeFn,
    SceneNormalizer,
    SceneSource,
    fit_normalizer,
    identity,
)
from rsprompt.inference.summary import PredictSummary, pixel_area_m2
from rsprompt.inference.windows import STRIP_ROWS, WindowPlan
from rsprompt.inference.writers import (
    AtomicOutputs,
    PlannedOutput,
    check_planned,
    find_collision,
    locked_outputs,
    stale_sidecars,
    to_cog,
    write_vectors,
    writing,
)

__all__ = [
    "STRIP_ROWS",
    "NormalizeFn",
    "SceneNormalizer",
    "StripAccumulator",
    "_forward",
    "_run_overlapped",
    "predict_scene",
    "scene_outputs",
]


_SIDECAR_NAMES = {".aux.xml": "GDAL metadata", ".ovr": "external overviews", ".msk": "mask"}


def _require_suffix(path: Path, name: str, suffixes: tuple[str, ...], kind: str) -> None:
    if path.suffix.lower() not in suffixes:
        raise PredictError(f"{name} {path} must be {kind}")


def scene_outputs(
    out_path: str | Path,
    probabilities: str | Path | None = None,
    vectors: str | Path | None = None,
    *,
    owner: Path | None = None,
    names: tuple[str, str, str] = ("out_path", "probabilities", "vectors"),
    part: bool = False,
) -> list[PlannedOutput]:
    """Every file :func:`predict_scene` writes for one scene, sidecars included.

    The class map, its ``.qml`` style and ``.aux.xml`` attribute table, the probabilities and
    vectors when asked for, then the stale GDAL sidecars (external overviews, masks, metadata)
    that replacing a GeoTIFF output deletes.

    Args:
        out_path: Class map.
        probabilities: Probability GeoTIFF, or ``None``.
        vectors: GeoPackage, or ``None``.
        owner: The scene (for messages).
        names: How the three are called in messages (the CLI's option names).
        part: The outputs of ``predict_scene(row_range=…)``: the class map and probabilities
            only (no ``.qml`` or ``.aux.xml``; ``vectors`` is refused).

    Raises:
        PredictError: An output with the wrong extension, or vectors asked for a part.
    """
    o_name, p_name, v_name = names
    out_path = Path(out_path)
    tif = (".tif", ".tiff")
    _require_suffix(out_path, o_name, tif, "a GeoTIFF (.tif or .tiff)")
    if part and vectors is not None:
        raise PredictError(
            f"{v_name} {vectors}: a part of a scene (row_range) has no vectors; they are written "
            "when the parts are merged"
        )
    planned = [PlannedOutput(out_path, o_name, owner)]
    if not part:
        planned += [
            PlannedOutput(out_path.with_suffix(".qml"), f"QGIS style of {o_name}", owner),
            PlannedOutput(Path(f"{out_path}.aux.xml"), f"attribute table of {o_name}", owner),
        ]
    if probabilities is not None:
        _require_suffix(Path(probabilities), p_name, tif, "a GeoTIFF (.tif or .tiff)")
        planned.append(PlannedOutput(Path(probabilities), p_name, owner))
    if vectors is not None:
        _require_suffix(Path(vectors), v_name, (".gpkg",), "a GeoPackage (.gpkg)")
        planned.append(PlannedOutput(Path(vectors), v_name, owner))
    finals = [o.path for o in planned]
    for o in list(planned):
        for side in stale_sidecars(o.path, finals):
            kind = _SIDECAR_NAMES[side.name[len(o.path.name) :]]
            planned.append(PlannedOutput(side, f"{kind} of {o.label}", owner, removes=True))
    return planned


def _check_scene_outputs(
    planned: list[PlannedOutput], inputs: list[tuple[str, Path]], overwrite: bool
) -> None:
    """Distinct outputs, none an input or a folder, existing ones only with ``overwrite``."""
    clash = find_collision(planned)
    if clash is not None:
        a, b = clash
        raise PredictError(f"{a.label} and {b.label} name the same file {b.path}")
    check_planned(planned, inputs, overwrite=overwrite)


@contextmanager
def _atomic(overwrite: bool, what: str, near: Path) -> Iterator[AtomicOutputs]:
    """:class:`AtomicOutputs` committed at the end of the block (errors named), else rolled back."""
    outputs = AtomicOutputs(overwrite=overwrite)
    try:
        yield outputs
    except BaseException:
        outputs.rollback()
        raise
    with writing(what, near):
        outputs.commit()


def _check_options(window: int, overlap: int, batch_size: int) -> None:
    if window < 1 or not 0 <= overlap < window:
        raise PredictError(f"need window >= 1 and 0 <= overlap < window, got {window}, {overlap}")
    if batch_size < 1:
        raise PredictError(f"batch size must be >= 1, got {batch_size}")


def _checked_rows(reader: SceneReader, row_range: tuple[int, int] | None) -> tuple[int, int]:
    """The output rows: ``row_range`` checked against the scene, or all rows."""
    if row_range is None:
        return 0, reader.height
    r0, r1 = (int(r) for r in row_range)
    if not 0 <= r0 < r1 <= reader.height:
        raise PredictError(
            f"row range [{r0}, {r1}) is not inside scene {reader.scene_path} ({reader.height} rows)"
        )
    return r0, r1


def _part_grid(reader: SceneReader, rows: tuple[int, int]) -> RasterGrid:
    """The grid of output rows ``[r0, r1)``: the scene's, shifted down by ``r0`` rows."""
    r0, r1 = rows
    transform = reader.transform
    if r0:
        transform = transform @ Affine.translation(0, r0)
    return RasterGrid(r1 - r0, reader.width, reader.crs, transform, row0=r0)


@contextmanager
def _progress(
    enabled: bool | Callable[[int], Any], total: int, desc: str
) -> Iterator[Callable[[int], Any] | None]:
    """A tqdm bar's ``update`` (closed at the end), the caller's own counter, or ``None``."""
    if callable(enabled):
        yield enabled
        return
    if not enabled:
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="win", leave=False)
    try:
        yield bar.update
    finally:
        bar.close()


def _run_stages(
    plan: WindowPlan,
    source: SceneSource,
    step: ModelStep,
    sink: MapSink,
    *,
    progress: bool | Callable[[int], Any],
    desc: str,
    overlap_io: bool,
    prefetch: int,
) -> None:
    """Source → model step → blender → sink over the whole plan.

    The model runs in eval and inference mode (its training mode is restored after). The sink's
    rasters are closed whatever happens (a close error counts only if nothing failed before).
    """
    blender = Blender(plan, sink, dtype=sink.dtype, nodata=sink.nodata, num_classes=sink.k)
    ok = False
    try:
        with (
            _progress(progress, plan.n_windows, desc) as on_batch,
            eval_mode(step.model),
            torch.inference_mode(),
        ):
            step.on_batch = on_batch
            if overlap_io:
                _run_overlapped(source.batches, step, blender.add, prefetch)
            else:
                for item in source.batches():
                    blender.add(step(item))
            blender.finish()
        ok = True
    finally:
        sink.close(ok)


def _summary(
    reader: SceneReader,
    rows: tuple[int, int],
    plan: WindowPlan,
    sink: MapSink,
    step: ModelStep,
    extra: list[Path],
    stats: AuxStats | None,
    seconds: float,
) -> PredictSummary:
    """What a run produced (the counts of its rows; the pixel area of the whole scene)."""
    return PredictSummary(
        scene=reader.scene_path,
        output=sink.targets.classes,
        width=reader.width,
        height=rows[1] - rows[0],
        class_names=list(sink.classes.names),
        counts=sink.counts.tolist(),
        nodata_pixels=sink.nodata_pixels,
        pixel_area_m2=pixel_area_m2(reader.crs, reader.transform, reader.height, reader.width),
        seconds=seconds,
        windows=plan.n_windows,
        extra_outputs=extra,
        aux_stats=stats.as_dict() if stats is not None else None,
        device=str(step.device),
        numeric_precision=step.precision,
    )


def predict_scene(
    scene: str | Path,
    model: Callable[..., Tensor],
    out_path: str | Path,
    *,
    classes: ClassTable,
    aux: str | Path | None = None,
    normalize: NormalizeFn | SceneNormalizer | None = None,
    window: int = 512,
    overlap: int = 128,
    batch_size: int = 4,
    tta: bool = False,
    probabilities: str | Path | None = None,
    vectors: str | Path | None = None,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
    precision: str = "32",
    bands: Sequence[int] | None = None,
    expected_bands: int | None = None,
    aux_channels: int | None = None,
    train_patch_size: int | None = None,
    overview_resampling: str = "mode",
    compress: str = "DEFLATE",
    pad_mode: str = "reflect",
    prefetch: int = 2,
    progress: bool | Callable[[int], Any] = True,
    memory_mb: float = 512.0,
    overlap_io: bool = True,
    upsample_coarse_aux: bool = True,
    row_range: tuple[int, int] | None = None,
) -> PredictSummary:
    """Predict a whole scene and write a GIS-ready class map.

    Args:
        scene: Optical scene (GeoTIFF or any georeferenced raster); defines the output grid.
        model: Model following :class:`rsprompt.models.base.SegmentationModel`'s contract:
            ``model(image B×C×H×W, aux=B×A×H×W | None, aux_valid=B×1×H×W | None)`` returns logits
            ``B×K×H×W``.
        out_path: Class map to write (Cloud-Optimised GeoTIFF).
        classes: Class names and colours (``K`` must match the model's output).
        aux: Aux raster (DSM or SAR) on any grid/CRS overlapping the scene, or ``None``.
        normalize: Per-window normalisation (a :data:`NormalizeFn`; default: none). If it is a :class:`SceneNormalizer` with ``needs_aux_stats``, scene-wide aux
            statistics are computed first and passed to its ``fit``.
        window: Window side in pixels.
        overlap: Overlap between neighbouring windows in pixels.
        batch_size: Windows per forward pass.
        tta: Average the probabilities over horizontal/vertical flips (4× compute).
        probabilities: Also write per-class probabilities (uint8 0–255, one band per class).
        vectors: Also write polygons (GeoPackage with ``class_id`` and ``class_name``).
        overwrite: Replace existing outputs (and the stale GDAL sidecars of replaced rasters).
        device: Torch device of the model (``"auto"``: CUDA when available). On CUDA, windows are
            copied from pinned host memory without blocking.
        precision: Forward-pass precision: ``"32"``, ``"bf16"``, ``"16"`` or ``"auto"`` (bf16
            where the device computes it natively; see :mod:`rsprompt.engine.precision`).
            Blending, argmax and everything written stay float32/uint8.
        bands: 1-based scene bands to read (``None`` = all).
        expected_bands: Optical bands the model takes (checked against the scene).
        aux_channels: Aux bands the model takes (checked against the aux raster).
        train_patch_size: Training tile size; used to warn when scene-wide aux statistics are
            taken over a scene much larger than the tiles.
        overview_resampling: ``mode`` or ``nearest`` (class map overviews).
        compress: ``DEFLATE`` or ``ZSTD``.
        pad_mode: How a scene smaller than a window is padded for the model (``reflect``,
            ``replicate`` or ``constant``); the output is cropped back.
        prefetch: Batches read ahead of the forward pass.
        progress: Show a tqdm progress bar; or a callable, called with the number of windows
            of each batch the model has run (a job's own progress across processes).
        memory_mb: Budget of the blending accumulator; a scene too wide for it is processed in
            column bands (same result; windows across a band border are computed twice).
        overlap_io: Read and blend/write on two worker threads while the calling thread runs
            the forward pass (measured faster even on 2 cores). ``False`` does everything on the
            calling thread, one batch after another (same result).
        upsample_coarse_aux: Warp an aux raster at least twice as coarse as the scene onto a
            scene-aligned grid that much coarser and upsample it bilinearly (``1/f²`` of the
            warping work; see :class:`~rsprompt.inference.reader.SceneReader`). ``False`` warps
            it straight onto the scene's grid.
        row_range: Only produce the scene rows ``[r0, r1)`` (one worker's share, see
            :func:`~rsprompt.tiling.row_bands`): every window overlapping them is computed, so
            they come out identical to the same rows of a whole-scene run. ``out_path`` (and
            ``probabilities``) are then written as *parts*: tiled GeoTIFFs of these rows only
            (transform shifted by ``r0`` rows; no overviews, sidecars or vectors, and
            ``vectors`` is refused), which :func:`~rsprompt.inference.parts.merge_row_parts`
            stitches into the final map. The summary counts these rows; scene-wide aux
            statistics are still taken over the whole scene.

    Returns:
        A :class:`~rsprompt.inference.summary.PredictSummary`.

    Raises:
        PredictError: On a bad input (missing, corrupt, not georeferenced, no overlap, wrong band
            count), or outputs that cannot be written: two outputs on one file, an output that
            is an input or a folder, an existing output (sidecars included, see
            :func:`scene_outputs`) without ``overwrite``; nothing is written then. A block that
            cannot be read midway is a PredictError naming the files too.
        OutputLockedError: Another run is writing one of the outputs (each output is locked
            for the run, see :func:`~rsprompt.inference.writers.locked_outputs`).
        OutputError: A write failed (full disk, read-only folder…): the previous outputs are
            kept and no temporary file is left.
    """
    t_start = time.perf_counter()
    scene, out_path, part = Path(scene), Path(out_path), row_range is not None
    targets = MapTargets.of(out_path, probabilities, vectors)
    planned = scene_outputs(out_path, targets.probabilities, targets.vectors, part=part)
    inputs = [("scene", scene)] + ([("aux raster", Path(aux))] if aux is not None else [])
    _check_scene_outputs(planned, inputs, overwrite)
    _check_options(window, overlap, batch_size)
    dev = resolve_device(device)
    step = ModelStep(model, classes, device=dev, precision=resolve_precision(precision, dev))
    step.window, step.tta, step.pad_mode = window, tta, pad_mode
    reader = SceneReader(
        scene,
        aux,
        bands=bands,
        expected_bands=expected_bands,
        aux_channels=aux_channels,
        upsample_coarse_aux=upsample_coarse_aux,
    )
    finals = [o.path for o in planned if not o.removes]
    with reader:
        rows = _checked_rows(reader, row_range)
        with locked_outputs(finals, keep=[p for _, p in inputs]):
            # Again under the locks: another run may have finished these outputs meanwhile.
            _check_scene_outputs(planned, inputs, overwrite)
            norm = normalize if normalize is not None else identity
            stats = fit_normalizer(reader, norm, train_patch_size)
            plan = WindowPlan(
                reader.height,
                reader.width,
                window,
                overlap,
                num_classes=classes.num_classes,
                batch_size=batch_size,
                memory_mb=memory_mb,
                row_range=rows,
            )
            what = f"the outputs of scene {scene} ({out_path}, …)"
            with _atomic(overwrite, what, out_path) as outputs:
                grid = _part_grid(reader, rows)
                sink = MapSink(outputs, targets, grid, classes, strip_rows=plan.strip_rows)
                source = SceneSource(reader, norm, plan)
                _run_stages(
                    plan,
                    source,
                    step,
                    sink,
                    progress=progress,
                    desc=scene.name,
                    overlap_io=overlap_io,
                    prefetch=prefetch,
                )
                # to_cog and write_vectors looked up here: tests make this module's writers fail
                extra = sink.finish(
                    part=part,
                    overview_resampling=overview_resampling,
                    compress=compress,
                    cog=to_cog,
                    polygonize=write_vectors,
                )
    return _summary(reader, rows, plan, sink, step, extra, stats, time.perf_counter() - t_start)
