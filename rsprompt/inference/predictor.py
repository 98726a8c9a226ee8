"""Streaming prediction of whole scenes at bounded memory.

Pipeline (three threads, bounded queues between them):

1. *reader*: reads each row of windows once as a strip (scene + aux warped onto the scene's
   grid), normalises it (once per strip for a pixelwise normaliser, else window by window), cuts
   the windows into batches and queues them;
2. *compute* (the calling thread): batched forward pass under ``torch.inference_mode``, softmax,
   optional flip TTA;
3. *blender/writer*: multiplies each window's probabilities by its blending weight, accumulates
   them in a row strip as high as one window, and writes every finished strip (class map, and
   optionally probabilities) before dropping it.

Memory is bounded by the strip (``K × (window + 16) × width`` floats) and the queues, never by the
scene's height. Outputs are written atomically (see :mod:`rsprompt.inference.writers`). With
``overlap_io=False`` the same three stages run one after another on the calling thread.
"""

from __future__ import annotations

import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError
from torch import Tensor

from rsprompt.data.labels import ClassTable
from rsprompt.engine.device import resolve_device
from rsprompt.engine.precision import autocast, resolve_precision
from rsprompt.inference.reader import AuxStats, PredictError, SceneReader
from rsprompt.inference.summary import PredictSummary, pixel_area_m2
from rsprompt.inference.windows import (
    Window,
    band_windows,
    column_bands,
    window_grid,
    window_weight,
)
from rsprompt.inference.writers import (
    BLOCK,
    AtomicOutputs,
    PlannedOutput,
    StripWriter,
    check_planned,
    class_dtype,
    colormap,
    find_collision,
    locked_outputs,
    qml_text,
    quiet_stderr,
    rat_aux_xml_text,
    stale_sidecars,
    to_cog,
    write_vectors,
    writing,
)

#: Rows per strip of the temporary rasters (striped files, one column band): the blended rows
#: are flushed in multiples of this, so that every write fills whole strips (see
#: :class:`~rsprompt.inference.writers.StripWriter`).
STRIP_ROWS = 16

#: ``normalize(image C×h×w, aux A×h×w | None, aux_valid h×w | None, offset (row, col))``
#: ``-> (image, aux, aux_valid)`` on float32 numpy arrays; ``offset`` is the window's first
#: pixel in the scene (for normalisations that vary over the scene, e.g. an nDSM ground grid).
#: A normaliser whose result at a pixel depends only on that pixel and its scene position (not on
#: the window around it) may set ``pixelwise = True``: it is then applied once per row of
#: windows instead of once per window (overlapping columns are normalised once).
NormalizeFn = Callable[
    [np.ndarray, np.ndarray | None, np.ndarray | None, tuple[int, int]],
    tuple[np.ndarray, np.ndarray | None, np.ndarray | None],
]


@runtime_checkable
class SceneNormalizer(Protocol):
    """A normaliser that needs scene-wide aux statistics before it can be applied.

    ``predict_scene`` computes :class:`~rsprompt.inference.reader.AuxStats` over the valid aux
    pixels of the whole scene (a streaming pre-pass) and calls :meth:`fit` once, then calls the
    normaliser on every window like a :data:`NormalizeFn`. Any object with a true
    ``needs_aux_stats`` and a ``fit`` method is fitted. Optional attributes:

    - ``ground_cell_px`` (default ``None``): also compute a grid of per-cell minima of that many
      pixels for ground estimation;
    - ``stats_compress_with_scene_size`` (default True): whether its statistics widen as the
      scene grows (a min–max does, an nDSM ground grid does not); then a scene much larger than
      the training tiles gets a warning.
    """

    needs_aux_stats: bool

    def fit(self, stats: AuxStats) -> None:
        """Take the scene-wide aux statistics."""

    def __call__(
        self,
        image: np.ndarray,
        aux: np.ndarray | None,
        aux_valid: np.ndarray | None,
        offset: tuple[int, int],
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Normalise one window."""


def _identity(
    image: np.ndarray,
    aux: np.ndarray | None,
    aux_valid: np.ndarray | None,
    offset: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    return image, aux, aux_valid


_identity.pixelwise = True  # type: ignore[attr-defined]


def _needs_aux_stats(norm: object) -> bool:
    """Whether ``norm`` is a :class:`SceneNormalizer` asking for statistics.

    Only ``needs_aux_stats`` and ``fit`` count: ``ground_cell_px`` and the other attributes are
    optional (``isinstance`` on the runtime protocol would require every data member).
    """
    return bool(getattr(norm, "needs_aux_stats", False)) and callable(getattr(norm, "fit", None))


class _Stop(Exception):
    pass


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise _Stop
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _get(q: queue.Queue, stop: threading.Event) -> Any:
    while True:
        if stop.is_set():
            raise _Stop
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue


class _Worker(threading.Thread):
    """A daemon thread that records its exception and then sets ``stop`` for the others."""

    def __init__(self, target: Callable[[], None], name: str, stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self._fn = target
        self._stop_all = stop
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._fn()
        except _Stop:
            pass
        except BaseException as exc:
            self.error = exc
            self._stop_all.set()  # nobody may wait for this thread any more


class StripAccumulator:
    """Blends weighted window probabilities in a row strip and emits finished rows.

    Args:
        height: Scene rows.
        width: Scene columns.
        num_classes: ``K``.
        capacity: Rows held (at least window height + :data:`STRIP_ROWS`).
        col0: Scene column of the strip's first column (column bands of very wide scenes).
    """

    def __init__(
        self, height: int, width: int, num_classes: int, capacity: int, col0: int = 0
    ) -> None:
        self.height, self.width, self.k = height, width, num_classes
        self.col0 = col0  # scene column of the strip's first column
        self.cap = min(capacity, height)
        self.top = 0  # scene row of the strip's first row
        self.psum = np.zeros((num_classes, self.cap, width), np.float32)
        self.wsum = np.zeros((self.cap, width), np.float32)
        self.valid = np.zeros((self.cap, width), bool)
        self._pending = 0  # rows popped but not yet shifted out

    def add(self, win: Window, weighted: np.ndarray, weight: np.ndarray, valid: np.ndarray) -> None:
        """Add ``weighted`` (``K×h×w`` probabilities × weight) of ``win``."""
        self._shift()
        r0 = win.row - self.top
        if r0 < 0 or r0 + win.height > self.cap:
            raise RuntimeError(f"window {win} outside the live strip (top {self.top})")
        c0 = win.col - self.col0
        rs, cs = slice(r0, r0 + win.height), slice(c0, c0 + win.width)
        self.psum[:, rs, cs] += weighted
        self.wsum[rs, cs] += weight
        self.valid[rs, cs] = valid

    def pop(self, rows: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        """Remove the first ``rows`` finished rows.

        Returns:
            ``(first scene row, weighted probability sums K×rows×W, weight sums rows×W,
            valid rows×W)``; blended probabilities are the sums divided by the weight sums. The
            arrays are views of the strip, valid until the next :meth:`add` or :meth:`pop` (no
            copy: the strip moves up lazily).
        """
        self._shift()
        rows = min(rows, self.height - self.top)
        top = self.top
        self.top += rows
        self._pending = rows
        return top, self.psum[:, :rows], self.wsum[:rows], self.valid[:rows]

    def _shift(self) -> None:
        """Move the rows kept after the last :meth:`pop` to the top of the strip."""
        rows, self._pending = self._pending, 0
        if rows == 0:
            return
        keep = self.cap - rows
        self.psum[:, :keep] = self.psum[:, rows:]
        self.psum[:, keep:] = 0
        self.wsum[:keep] = self.wsum[rows:]
        self.wsum[keep:] = 0
        self.valid[:keep] = self.valid[rows:]
        self.valid[keep:] = False


def _run_overlapped(
    read_batches: Callable[[], Iterator[Any]],
    compute: Callable[[Any], Any],
    blend: Callable[[Any], None],
    prefetch: int,
) -> None:
    """Run ``blend(compute(item)) for item in read_batches()`` on three threads.

    Reading runs on one worker thread, blending/writing on another and the forward pass on the
    calling thread (bounded queues between them). The first error of any thread stops all three
    and is raised here.
    """
    stop = threading.Event()
    q_in: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    q_out: queue.Queue = queue.Queue(maxsize=2)

    def read_loop() -> None:
        for item in read_batches():
            _put(q_in, item, stop)
        _put(q_in, None, stop)

    def write_loop() -> None:
        while (item := _get(q_out, stop)) is not None:
            blend(item)

    reader_t = _Worker(read_loop, "rsprompt-reader", stop)
    writer_t = _Worker(write_loop, "rsprompt-writer", stop)
    reader_t.start()
    writer_t.start()
    try:
        while True:
            try:
                item = _get(q_in, stop)
            except _Stop:
                break  # a worker failed: its error is raised below
            if item is None:
                _put(q_out, None, stop)
                while writer_t.is_alive() and not stop.is_set():
                    writer_t.join(timeout=0.1)
                break
            _put(q_out, compute(item), stop)
    except _Stop:
        pass  # a worker failed while the forward pass waited on it: raised below
    finally:
        stop.set()
        reader_t.join()
        writer_t.join()
    for t in (reader_t, writer_t):
        if t.error is not None:
            raise t.error


def _forward(
    model: Callable[..., Tensor],
    image: Tensor,
    aux: Tensor | None,
    aux_valid: Tensor | None,
    tta: bool,
    precision: str = "32",
) -> Tensor:
    """Softmax probabilities ``B×K×H×W`` (float32), averaged over flips when ``tta``.

    Only the model runs under ``precision`` (autocast); the softmax and the average are float32.
    """

    def run(dims: tuple[int, ...]) -> Tensor:
        def f(t: Tensor | None) -> Tensor | None:
            return t.flip(dims) if (t is not None and dims) else t

        with autocast(image.device, precision):
            out = model(f(image), aux=f(aux), aux_valid=f(aux_valid))
        if isinstance(out, dict):
            out = out["logits"]
        probs = torch.softmax(out.float(), dim=1)
        return probs.flip(dims) if dims else probs

    if not tta:
        return run(())
    total = run(())
    for dims in ((-1,), (-2,), (-2, -1)):
        total = total + run(dims)
    return total / 4.0


def _to_device(array: np.ndarray, device: torch.device, pinned: bool) -> Tensor:
    """A host array on ``device``; through pinned memory without blocking on CUDA."""
    t = torch.from_numpy(array)
    if pinned:
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _pad_to(t: Tensor, h: int, w: int, mode: str) -> Tensor:
    ph, pw = h - t.shape[-2], w - t.shape[-1]
    if ph <= 0 and pw <= 0:
        return t
    if mode == "reflect" and (ph >= t.shape[-2] or pw >= t.shape[-1]):
        mode = "replicate"
    return F.pad(t, (0, max(pw, 0), 0, max(ph, 0)), mode=mode)


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

    Raises:
        PredictError: An output with the wrong extension.
    """
    o_name, p_name, v_name = names
    out_path = Path(out_path)
    tif = (".tif", ".tiff")
    _require_suffix(out_path, o_name, tif, "a GeoTIFF (.tif or .tiff)")
    planned = [
        PlannedOutput(out_path, o_name, owner),
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
def _reading(scene: Path, aux: Path | None) -> Iterator[None]:
    """A raw read error in the middle of a run (corrupt block) as a PredictError naming files."""
    try:
        yield
    except (OSError, RasterioError, CPLE_BaseError) as exc:
        what = f"scene {scene}" + (f" or its aux raster {aux}" if aux is not None else "")
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise PredictError(f"cannot read {what}: {reason}") from exc


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


def _close_writers(writers: list[StripWriter | None], ok: bool) -> None:
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
    progress: bool = True,
    memory_mb: float = 512.0,
    overlap_io: bool = True,
    upsample_coarse_aux: bool = True,
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
        progress: Show a tqdm progress bar.
        memory_mb: Budget of the blending accumulator; a scene too wide for it is processed in
            column bands (same result; windows across a band border are computed twice).
        overlap_io: Read and blend/write on two worker threads while the calling thread runs
            the forward pass (measured faster even on 2 cores). ``False`` does everything on the
            calling thread, one batch after another (same result).
        upsample_coarse_aux: Warp an aux raster at least twice as coarse as the scene onto a
            scene-aligned grid that much coarser and upsample it bilinearly (``1/f²`` of the
            warping work; see :class:`~rsprompt.inference.reader.SceneReader`). ``False`` warps
            it straight onto the scene's grid.

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
    scene = Path(scene)
    aux_path = Path(aux) if aux is not None else None
    out_path = Path(out_path)
    probs_path = Path(probabilities) if probabilities is not None else None
    vec_path = Path(vectors) if vectors is not None else None
    planned = scene_outputs(out_path, probs_path, vec_path)
    inputs = [("scene", scene)] + ([("aux raster", aux_path)] if aux_path is not None else [])
    _check_scene_outputs(planned, inputs, overwrite)
    if window < 1 or not 0 <= overlap < window:
        raise PredictError(f"need window >= 1 and 0 <= overlap < window, got {window}, {overlap}")
    if batch_size < 1:
        raise PredictError(f"batch size must be >= 1, got {batch_size}")
    k = classes.num_classes
    dtype, nodata = class_dtype(k)
    norm = normalize if normalize is not None else _identity
    device = resolve_device(device)
    numeric = resolve_precision(precision, device)
    pinned = device.type == "cuda"

    reader = SceneReader(
        scene,
        aux,
        bands=bands,
        expected_bands=expected_bands,
        aux_channels=aux_channels,
        upsample_coarse_aux=upsample_coarse_aux,
    )
    stats: AuxStats | None = None
    height, width, crs, transform = reader.height, reader.width, reader.crs, reader.transform
    finals = [o.path for o in planned if not o.removes]
    with reader, locked_outputs(finals, keep=[p for _, p in inputs]):
        # Again under the locks: another run may have finished these outputs meanwhile.
        _check_scene_outputs(planned, inputs, overwrite)
        if reader.has_aux and _needs_aux_stats(norm):
            with _reading(scene, aux_path):
                stats = reader.aux_statistics(ground_cell=getattr(norm, "ground_cell_px", None))
            norm.fit(stats)  # type: ignore[union-attr]
            big = train_patch_size and max(reader.height, reader.width) > 4 * train_patch_size
            if big and getattr(norm, "stats_compress_with_scene_size", True):
                warnings.warn(
                    f"the aux normalisation of this checkpoint takes statistics per training "
                    f"patch ({train_patch_size} px); over scene {scene.name} "
                    f"({reader.width}×{reader.height} px) they are taken once over the whole "
                    "scene, which compresses the heights the model sees. Prefer an nDSM "
                    "(height above ground) or a checkpoint trained with global statistics.",
                    UserWarning,
                    stacklevel=2,
                )
        windows = window_grid(reader.height, reader.width, window, overlap)
        win_h, win_w = windows[0].height, windows[0].width
        in_h, in_w = (window if win_h < window else win_h), (window if win_w < window else win_w)
        counts = np.zeros(k, np.int64)
        nodata_px = 0
        extra: list[Path] = []
        # Column bands keep the accumulator within the memory budget for very wide scenes.
        col_bands = column_bands(
            reader.width, win_w, (k + 2) * 4.0 * (win_h + BLOCK), memory_mb * 2**20, BLOCK
        )
        # Every write fills whole blocks of the temporary rasters: full-width strips of
        # STRIP_ROWS rows (striped files) for one band, BLOCK-aligned tiles for column bands.
        align = STRIP_ROWS if len(col_bands) == 1 else BLOCK
        strip_rows = STRIP_ROWS if len(col_bands) == 1 else None
        with _atomic(
            overwrite, f"the outputs of scene {scene} ({out_path}, …)", out_path
        ) as outputs:
            cls_tmp = outputs.scratch(out_path)
            with writing(f"the class map {out_path} (temporary file {cls_tmp})", cls_tmp):
                cls_writer = StripWriter(
                    cls_tmp,
                    height=reader.height,
                    width=reader.width,
                    count=1,
                    dtype=dtype,
                    crs=reader.crs,
                    transform=reader.transform,
                    nodata=nodata,
                    colormap=colormap(classes.colors, nodata),
                    strip_rows=strip_rows,
                )
            prob_writer = None
            prob_tmp = None
            if probs_path is not None:
                prob_tmp = outputs.scratch(probs_path)
                try:
                    with writing(
                        f"the probabilities {probs_path} (temporary file {prob_tmp})", prob_tmp
                    ):
                        prob_writer = StripWriter(
                            prob_tmp,
                            height=reader.height,
                            width=reader.width,
                            count=k,
                            dtype="uint8",
                            crs=reader.crs,
                            transform=reader.transform,
                            nodata=None,
                            descriptions=list(classes.names),
                            strip_rows=strip_rows,
                        )
                except BaseException:
                    _close_writers([cls_writer], False)
                    raise
            state: dict[str, Any] = {"band": -1, "acc": None}

            def start_band(b: int) -> None:
                c0, c1 = col_bands[b]
                wins = band_windows(windows, c0, c1)
                u0, u1 = min(w.col for w in wins), max(w.col_end for w in wins)
                state.update(
                    band=b,
                    core=(c0, c1),
                    acc=StripAccumulator(reader.height, u1 - u0, k, win_h + align, col0=u0),
                )

            def flush(rows: int) -> None:
                nonlocal nodata_px
                acc: StripAccumulator = state["acc"]
                c0, c1 = state["core"]
                top, psum, wsum, valid = acc.pop(rows)
                if (c0, c1) != (acc.col0, acc.col0 + acc.width):
                    cs = slice(c0 - acc.col0, c1 - acc.col0)
                    psum, wsum, valid = psum[:, :, cs], wsum[:, cs], valid[:, cs]
                # argmax of the weighted sums = argmax of the blended probabilities (wsum > 0)
                cls = np.zeros(psum.shape[1:], dtype=dtype)
                best = psum[0].copy()
                for c in range(1, k):
                    better = psum[c] > best
                    cls[better] = c
                    np.maximum(best, psum[c], out=best)
                counts[:] += np.bincount(cls[valid].ravel(), minlength=k)[:k]
                nodata_px += int((~valid).sum())
                cls[~valid] = nodata
                with writing(f"the class map {out_path} (temporary file {cls_tmp})", cls_tmp):
                    cls_writer.write(cls, top, c0)
                if prob_writer is not None:
                    probs = psum * (255.0 / np.maximum(wsum, 1e-12))
                    p8 = np.rint(probs).astype(np.uint8)
                    p8[:, ~valid] = 0
                    with writing(
                        f"the probabilities {probs_path} (temporary file {prob_tmp})", prob_tmp
                    ):
                        prob_writer.write(p8, top, c0)

            batches = []
            for b, (c0, c1) in enumerate(col_bands):
                wins = band_windows(windows, c0, c1) if len(col_bands) > 1 else windows
                batches += [(b, wins[i : i + batch_size]) for i in range(0, len(wins), batch_size)]
            n_windows = sum(len(bw) for _, bw in batches)
            weight_cache: dict[tuple[bool, bool, bool, bool], np.ndarray] = {}

            def weight_of(win: Window) -> np.ndarray:
                key = (
                    win.row == 0,
                    win.row_end == reader.height,
                    win.col == 0,
                    win.col_end == reader.width,
                )
                if key not in weight_cache:
                    weight_cache[key] = window_weight(win, reader.height, reader.width, overlap)
                return weight_cache[key]

            # Columns spanned by each window row of each band: the strip read once per row.
            row_span: dict[tuple[int, int], tuple[int, int]] = {}
            for band, batch in batches:
                for win in batch:
                    lo, hi = row_span.get((band, win.row), (win.col, win.col_end))
                    row_span[(band, win.row)] = (min(lo, win.col), max(hi, win.col_end))

            pixelwise = bool(getattr(norm, "pixelwise", False))

            def normalized(
                img: np.ndarray,
                a: np.ndarray | None,
                av: np.ndarray | None,
                offset: tuple[int, int],
            ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
                h, w = img.shape[-2:]
                img, a, av = norm(img, a, av, offset)
                if a is not None and av is not None:
                    av = np.asarray(av).reshape(h, w) > 0
                    a = np.where(av[None], a, np.float32(0.0))
                return img, a, av

            def normalized_strip(
                img: np.ndarray,
                valid: np.ndarray,
                a: np.ndarray | None,
                av: np.ndarray | None,
                offset: tuple[int, int],
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
                img, a, av = normalized(img, a, av, offset)
                return img, valid, a, av

            def read_batches() -> Iterator[tuple[Any, ...]]:
                # A pixelwise normaliser runs once per row strip (overlaps normalised once).
                strips = reader.row_reader(normalized_strip if pixelwise else None)
                for band, batch in batches:
                    imgs, auxs, avals, valids = [], [], [], []
                    for win in batch:
                        with _reading(scene, aux_path):
                            img, valid, a, av = strips.read(win, *row_span[(band, win.row)])
                        if not pixelwise:
                            img, a, av = normalized(img, a, av, (win.row, win.col))
                        imgs.append(np.asarray(img, np.float32))
                        valids.append(valid)
                        if a is not None:
                            auxs.append(np.asarray(a, np.float32))
                            avals.append(av)
                    yield (
                        (band, batch),
                        np.stack(imgs),
                        np.stack(auxs) if auxs else None,
                        np.stack(avals) if avals else None,
                        np.stack(valids),
                    )

            def blend(item: tuple[Any, ...]) -> None:
                (band, batch), probs, valids = item
                if band != state["band"]:
                    finish_blending()
                    start_band(band)
                acc: StripAccumulator = state["acc"]
                for i, win in enumerate(batch):
                    if win.row - acc.top >= align:
                        # Rows above this window's first row are final (row-major order).
                        flush((win.row - acc.top) // align * align)
                    w = weight_of(win)
                    np.multiply(probs[i], w, out=probs[i])
                    acc.add(win, probs[i], w, valids[i])

            def finish_blending() -> None:
                if state["acc"] is not None:
                    while state["acc"].top < reader.height:
                        flush(reader.height - state["acc"].top)

            checked = False

            def compute(item: tuple[Any, ...]) -> tuple[Any, ...]:
                nonlocal checked
                (band, batch), img, a, av, valids = item
                x = _to_device(img, device, pinned)
                xa = _to_device(a, device, pinned) if a is not None else None
                xv = (
                    _to_device(av[:, None].astype(np.float32), device, pinned)
                    if av is not None
                    else None
                )
                if (in_h, in_w) != (win_h, win_w):
                    x = _pad_to(x, in_h, in_w, pad_mode)
                    if xa is not None:
                        xa = _pad_to(xa, in_h, in_w, pad_mode)
                        xv = _pad_to(xv, in_h, in_w, "constant")
                probs = _forward(model, x, xa, xv, tta, numeric)[..., :win_h, :win_w]
                if not checked:
                    if probs.shape[1] != k:
                        raise PredictError(
                            f"the model outputs {probs.shape[1]} classes but the class "
                            f"table has {k} ({', '.join(classes.names)})"
                        )
                    if probs.shape[-2:] != (win_h, win_w):
                        raise PredictError(
                            f"the model returned {tuple(probs.shape[-2:])} logits for a "
                            f"{in_h}×{in_w} input"
                        )
                    checked = True
                if bar is not None:
                    bar.update(len(batch))
                return (band, batch), probs.cpu().numpy(), valids

            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=n_windows, desc=scene.name, unit="win", leave=False)
            was_training = getattr(model, "training", False)
            if hasattr(model, "eval"):
                model.eval()
            ok = False
            try:
                with torch.inference_mode():
                    if overlap_io:
                        _run_overlapped(read_batches, compute, blend, prefetch)
                    else:
                        for item in read_batches():
                            blend(compute(item))
                    finish_blending()
                ok = True
            finally:
                if bar is not None:
                    bar.close()
                if was_training and hasattr(model, "train"):
                    model.train()
                _close_writers([cls_writer, prob_writer], ok)

            # Finish: COGs, sidecars, vectors (all temporary until commit).
            cog_tmp = outputs.temp_for(out_path)
            with writing(f"the class map {out_path} (temporary file {cog_tmp})", cog_tmp):
                to_cog(cls_tmp, cog_tmp, overview_resampling=overview_resampling, compress=compress)
            qml = out_path.with_suffix(".qml")
            aux_xml = Path(f"{out_path}.aux.xml")
            rat = rat_aux_xml_text(classes.names, classes.colors, counts.tolist(), nodata)
            for path, text in (
                (qml, qml_text(classes.names, classes.colors, nodata)),
                (aux_xml, rat),
            ):
                tmp = outputs.temp_for(path)
                with writing(f"{path} (temporary file {tmp})", tmp):
                    tmp.write_text(text)
            extra += [qml, aux_xml]
            if probs_path is not None and prob_tmp is not None:
                tmp = outputs.temp_for(probs_path)
                with writing(f"the probabilities {probs_path} (temporary file {tmp})", tmp):
                    to_cog(prob_tmp, tmp, overview_resampling="average", compress=compress)
                extra.append(probs_path)
            if vec_path is not None:
                tmp = outputs.temp_for(vec_path)
                with writing(f"the vectors {vec_path} (temporary file {tmp})", tmp):
                    write_vectors(cls_tmp, tmp, classes.names)
                extra.append(vec_path)
    return PredictSummary(
        scene=scene,
        output=out_path,
        width=width,
        height=height,
        class_names=list(classes.names),
        counts=counts.tolist(),
        nodata_pixels=nodata_px,
        pixel_area_m2=pixel_area_m2(crs, transform, height, width),
        seconds=time.perf_counter() - t_start,
        windows=n_windows,
        extra_outputs=extra,
        aux_stats=stats.as_dict() if stats is not None else None,
        device=str(device),
        numeric_precision=numeric,
    )
