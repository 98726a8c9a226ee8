"""Predict whole scenes with an exported ONNX model (the ``onnxruntime`` backend of predict).

An ONNX file written by :func:`rsprompt.export.export_onnx` runs through the **same** prediction
pipeline as a checkpoint (:func:`rsprompt.inference.predict_scene`: strip reading, aux warping,
weighted blending of overlapping windows, atomic COG + sidecar outputs, probabilities, polygons),
with :class:`~rsprompt.export.onnx_runtime.OnnxModel` in place of the torch model:

- the graph holds rsprompt's normalisation, so the windows are fed **raw** (no ``normalize``);
  the aux is NaN where it has no data, which the graph turns into its validity mask;
- the window is the graph's fixed spatial size; the default overlap is the exported
  ``tiles_overlap`` (percent of the window), else a quarter of the window as ``rsprompt predict``;
- class names and colours, the scene bands and the aux kind come from the file's metadata;
- onnxruntime runs float32: precision ``32`` (``auto`` resolves to it); ``bf16``/``16`` are
  refused;
- device ``cpu``, or ``cuda`` through onnxruntime's CUDA provider (``onnxruntime-gpu``);
  ``auto`` takes CUDA when that provider is present.

**Fixed aux statistics.** A DSM min–max is baked into the graph with the statistics given at
export (``--aux-stats``/``--aux-range``); this backend does *not* run the scene-wide statistics
pass of the torch backend. The map equals the torch backend's when the export's statistics are
those of the scene (``--aux-stats`` on the scene's DSM or stacked layer).

**nDSM.** A file exported for heights above ground (the default for an nDSM checkpoint) is fed
the DSM minus the ground fitted once over the scene, as the torch backend fits it
(:class:`~rsprompt.inference.ground.HeightAboveGround`): the two backends see the same heights.
A file exported with ``--raw-dsm`` estimates the ground per window inside the graph instead.

Example:
    >>> from rsprompt.export import predict_onnx  # doctest: +SKIP
    >>> summary = predict_onnx("scene.tif", "model.onnx", "map.tif", aux="dsm.tif")  # doctest: +SKIP
    >>> summary.numeric_precision  # doctest: +SKIP
    '32'
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rsprompt.data.labels import ClassTable, default_colors
from rsprompt.export.common import ExportError
from rsprompt.export.onnx_runtime import OnnxModel, onnx_device
from rsprompt.inference.reader import AuxSource, PredictError
from rsprompt.inference.summary import PredictSummary

#: The backend name (``rsprompt predict --backend``).
BACKEND = "onnxruntime"
#: ``predict_scene`` options this backend sets itself (passing them is a mistake).
RESERVED = ("normalize", "expected_bands", "aux_channels", "model", "classes", "device")
#: ``rsprompt predict`` options of the torch backend only: an ONNX file has no encoder weights
#: to relocate, and its vocabulary is frozen at export.
TORCH_ONLY_OPTIONS = ("--weights", "--classes")

_FLAGS = {"dsm": "--dem", "sar": "--sar"}


def onnx_precision(precision: str | None) -> str:
    """The forward-pass precision of the onnxruntime backend: always ``"32"``.

    Raises:
        PredictError: For ``bf16`` or ``16`` (onnxruntime runs the exported float32 graph).
    """
    p = "auto" if precision is None else str(precision).strip().lower()
    if p in ("auto", "32", "fp32", "32-true"):
        return "32"
    raise PredictError(
        f"the onnxruntime backend runs the exported float32 graph only; --precision {precision} "
        "needs the torch backend (predict the checkpoint), or pass --precision 32"
    )


def default_overlap(model: OnnxModel, window: int) -> int:
    """The exported ``tiles_overlap`` (percent of the window) in pixels, else ``window // 4``."""
    pct = model.metadata.get("tiles_overlap")
    if isinstance(pct, int | float) and 0 <= pct < 100:
        return min(window - 1, round(window * float(pct) / 100.0))
    return window // 4


def class_table(model: OnnxModel, palette: str | None = None) -> ClassTable:
    """Class names and colours of ``model`` (the exported ones; ``palette`` replaces the colours).

    Raises:
        PredictError: If the palette spec is unreadable.
    """
    from rsprompt.inference.from_checkpoint import parse_palette

    names = list(model.classes)
    colors: list[Any] = list(model.colors)
    if palette is not None:
        colors = parse_palette(palette, len(names))
    if len(colors) < len(names):
        colors = default_colors(len(names))
    return ClassTable(
        names=tuple(names), colors=tuple(tuple(int(v) for v in c[:3]) for c in colors)
    )


class OnnxPredictor:
    """An exported ONNX model loaded once (onnxruntime), ready to predict scenes.

    The onnxruntime counterpart of :class:`~rsprompt.inference.CheckpointPredictor`: the same
    :meth:`check` and :meth:`predict`, the same outputs.

    Args:
        model: ONNX file written by ``rsprompt export``, or an :class:`OnnxModel`.
        device: ``cpu``, ``cuda`` (``cuda:N``) or ``auto`` (CUDA when onnxruntime has it).
        threads: onnxruntime intra-op threads (``None``: its default, one per physical core).
        palette: Palette spec replacing the exported colours (see ``parse_palette``).
        bands: 1-based scene bands to feed the model (default: the exported ``rsprompt_bands``);
            their number must be the model's optical channels.
        aux_bands: 1-based bands of the aux raster (default: all of them).

    Attributes:
        model: The :class:`OnnxModel`.
        classes: The :class:`~rsprompt.data.labels.ClassTable` of the output.
        meta: The file's metadata (decoded); ``meta["method"]`` names the exported method.
        device: ``"cpu"`` or ``"cuda"``/``"cuda:N"`` (where onnxruntime runs).

    Raises:
        PredictError: onnxruntime missing, an unreadable file or one not written by
            ``rsprompt export``, a device onnxruntime cannot use, bad bands.
    """

    def __init__(
        self,
        model: str | Path | OnnxModel,
        *,
        device: str = "cpu",
        threads: int | None = None,
        palette: str | None = None,
        bands: Sequence[int] | None = None,
        aux_bands: Sequence[int] | None = None,
    ) -> None:
        from rsprompt.inference.from_checkpoint import _band_list

        try:
            if isinstance(model, OnnxModel):
                self.model = model
            else:
                self.model = OnnxModel(model, device=onnx_device(device), threads=threads)
        except ExportError as exc:
            raise PredictError(str(exc)) from None
        m = self.model
        self.path = m.path
        self.device = str(m.device)
        self.meta = {**m.metadata, "method": m.metadata.get("rsprompt_method")}
        self.classes = class_table(m, palette)
        self.bands = _band_list(bands, "bands")
        self.aux_bands = _band_list(aux_bands, "aux bands")
        if self.bands is not None and len(self.bands) != m.n_optical:
            raise PredictError(
                f"ONNX model {self.path} takes {m.n_optical} optical band(s); --bands gives "
                f"{len(self.bands)} ({', '.join(map(str, self.bands))})"
            )

    # ------------------------------------------------------------------ checks
    def _scene_args(self, aux: str | Path | None, aux_kind: str | None) -> dict[str, Any]:
        """The aux checks and the band arguments of ``predict_scene``."""
        m = self.model
        if aux is not None and not m.aux_channels:
            raise PredictError(
                f"ONNX model {self.path} takes optical bands only (exported without an aux "
                f"modality); it takes no aux raster ({aux})"
            )
        if aux is None and m.aux_channels:
            kind = str(m.aux_kind or "aux")
            raise PredictError(
                f"ONNX model {self.path} takes a {kind.upper()} besides the optical bands: pass "
                f"{_FLAGS.get(kind, '--dem/--sar')} FILE (or export the checkpoint with "
                "--optical-only for a graph without it)"
            )
        if aux is not None and aux_kind is not None and m.aux_kind and aux_kind != m.aux_kind:
            raise PredictError(
                f"ONNX model {self.path} was exported with {str(m.aux_kind).upper()} as aux "
                f"modality; {aux} was given as {aux_kind.upper()} "
                f"(use {_FLAGS.get(str(m.aux_kind), '--dem/--sar')})"
            )
        bands = self.bands if self.bands is not None else m.bands
        return {
            "bands": list(bands) if bands is not None else None,
            "expected_bands": m.n_optical,
            "aux_channels": m.aux_channels if aux is not None else None,
        }

    def check(
        self, scene: str | Path, *, aux: str | Path | None = None, aux_kind: str | None = None
    ) -> None:
        """Check a scene and its aux raster without predicting (opens, validates, closes).

        Raises:
            PredictError: Naming the file and the problem.
        """
        from rsprompt.inference.reader import SceneReader

        args = self._scene_args(aux, aux_kind)
        SceneReader(
            scene,
            aux,
            bands=args["bands"],
            expected_bands=args["expected_bands"],
            aux_channels=args["aux_channels"],
            aux_bands=self.aux_bands if aux is not None else None,
        ).close()

    def window_and_overlap(self, window: int | None, overlap: int | None) -> tuple[int, int]:
        """The window (the graph's) and the overlap in pixels.

        Raises:
            PredictError: If ``window`` differs from the exported window.
        """
        size = self.model.window
        if window is not None and int(window) != size:
            raise PredictError(
                f"ONNX model {self.path} was exported for {size}×{size} windows; --window "
                f"{window} cannot run on it: drop --window, or export the checkpoint again "
                f"with --window {window}"
            )
        return size, int(default_overlap(self.model, size) if overlap is None else overlap)

    def _heights(self, scene: str | Path) -> Any:
        """The scene-wide heights above ground a ``height_above_ground`` input takes, or ``None``.

        Raises:
            PredictError: An unreadable normalisation record, or a scene without metric pixels.
        """
        if self.model.aux_input != "height_above_ground":
            return None
        from rsprompt.data.normalize import DSMNormalizer
        from rsprompt.inference.ground import HeightAboveGround, ground_pixel_size

        record = dict(self.model.metadata.get("rsprompt_aux_normalization") or {})
        record.pop("fixed_stats", None)
        try:
            aux = DSMNormalizer.from_dict(record)
            return HeightAboveGround(aux, ground_pixel_size(Path(scene)))
        except (TypeError, ValueError) as exc:
            raise PredictError(
                f"ONNX model {self.path}: unreadable nDSM normalisation record ({exc})"
            ) from None

    # ------------------------------------------------------------------ predict
    def predict(
        self,
        scene: str | Path,
        out_path: str | Path,
        *,
        aux: str | Path | None = None,
        aux_kind: str | None = None,
        window: int | None = None,
        overlap: int | None = None,
        precision: str | None = "32",
        **kwargs: Any,
    ) -> PredictSummary:
        """Predict one scene (see :func:`predict_onnx` and ``predict_scene``).

        Raises:
            PredictError: See :func:`predict_onnx`.
            TypeError: For a ``predict_scene`` option this backend sets itself.
        """
        from rsprompt.inference.predictor import predict_scene

        bad = sorted(set(kwargs) & set(RESERVED))
        if bad:
            raise TypeError(f"predict with an ONNX model sets {', '.join(bad)} itself")
        numeric = onnx_precision(precision)
        args = self._scene_args(aux, aux_kind)
        win, ov = self.window_and_overlap(window, overlap)
        normalize = self._heights(scene) if aux is not None else None
        if aux is not None and self.aux_bands is not None:
            aux = AuxSource(aux, bands=self.aux_bands)
        # The windows stay on the host: onnxruntime takes numpy arrays, and its CUDA provider
        # copies them itself (no round trip through a torch CUDA tensor).
        summary = predict_scene(
            scene,
            self.model,
            out_path,
            classes=self.classes,
            aux=aux,
            normalize=normalize,
            window=win,
            overlap=ov,
            device="cpu",
            precision=numeric,
            **args,
            **kwargs,
        )
        if summary.nodata_pixels >= summary.width * summary.height:
            warnings.warn(
                f"scene {scene} has no valid pixel (every pixel is nodata, NaN or masked): the "
                f"map {out_path} is entirely nodata",
                UserWarning,
                stacklevel=2,
            )
        return dataclasses.replace(summary, device=self.device, numeric_precision=numeric)


def predict_onnx(
    scene: str | Path,
    model: str | Path | OnnxModel,
    out_path: str | Path,
    *,
    aux: str | Path | None = None,
    aux_kind: str | None = None,
    probabilities: str | Path | None = None,
    vectors: str | Path | None = None,
    overwrite: bool = False,
    window: int | None = None,
    overlap: int | None = None,
    batch_size: int = 4,
    tta: bool = False,
    device: str = "cpu",
    threads: int | None = None,
    precision: str | None = "32",
    palette: str | None = None,
    bands: Sequence[int] | None = None,
    aux_bands: Sequence[int] | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> PredictSummary:
    """Predict ``scene`` with an exported ONNX model and write the same outputs as predict.

    Args:
        scene: Optical scene (any georeferenced raster); defines the output grid.
        model: ONNX file written by ``rsprompt export`` (or a loaded :class:`OnnxModel`).
        out_path: Class map to write (Cloud-Optimised GeoTIFF, ``.qml`` and ``.aux.xml``).
        aux: DSM or SAR raster (any grid/CRS overlapping the scene); required exactly when the
            model was exported with an aux input.
        aux_kind: What ``aux`` is (``"dsm"`` for ``--dem``, ``"sar"`` for ``--sar``); checked
            against the exported aux kind.
        probabilities: Also write per-class probabilities (uint8, one band per class).
        vectors: Also write polygons (GeoPackage).
        overwrite: Replace existing outputs.
        window: Window side; must be the exported window (default: it).
        overlap: Overlap in pixels (default: the exported ``tiles_overlap``, a quarter).
        batch_size: Windows per onnxruntime run.
        tta: Average over horizontal/vertical flips (4 runs per window).
        device: ``cpu``, ``cuda``/``cuda:N`` (onnxruntime's CUDA provider) or ``auto``.
        threads: onnxruntime intra-op threads (``None``: its default).
        precision: ``32`` or ``auto`` (both float32); ``bf16``/``16`` are refused.
        palette: Palette spec replacing the exported colours.
        bands: 1-based scene bands (default: the exported ones).
        aux_bands: 1-based bands of the aux raster (default: all).
        progress: Show a progress bar.
        **kwargs: More ``predict_scene`` options (``overview_resampling``, ``compress``,
            ``memory_mb``, ``pad_mode``, ``prefetch``, ``overlap_io``…).

    Returns:
        The :class:`~rsprompt.inference.PredictSummary` (``device`` where onnxruntime ran,
        ``numeric_precision`` ``"32"``).

    Raises:
        PredictError: onnxruntime missing; a file that is not an rsprompt ONNX export; another
            window; bf16/16; a missing, unexpected or mismatched aux raster; a bad scene or
            outputs (as ``predict_scene``: nothing is written then).
    """
    predictor = OnnxPredictor(
        model, device=device, threads=threads, palette=palette, bands=bands, aux_bands=aux_bands
    )
    return predictor.predict(
        scene,
        out_path,
        aux=aux,
        aux_kind=aux_kind,
        window=window,
        overlap=overlap,
        precision=precision,
        probabilities=probabilities,
        vectors=vectors,
        overwrite=overwrite,
        batch_size=batch_size,
        tta=tta,
        progress=progress,
        **kwargs,
    )
