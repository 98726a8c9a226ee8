"""Scene prediction from an rsprompt model checkpoint (``model.ckpt``).

:class:`CheckpointPredictor` loads the model once (``rsprompt.engine.checkpoint``), rebuilds the
checkpoint's normalisation (``rsprompt.data.normalize``) and predicts any number of scenes with
:func:`~rsprompt.inference.predictor.predict_scene`. Statistics that the checkpoint's aux
normalisation takes per training tile (DSM min–max, nDSM ground) are computed once per scene.

A checkpoint whose normalisation has no aux part was trained on the raw aux values (zero where
invalid, ``rsprompt.data.datasets.base``): predict feeds them raw as well. The nDSM ground grid is
sized in metres, geodesically for a geographic-CRS scene.

Bands: the scene's bands are those the checkpoint recorded (its normalisation's band selection,
else ``meta["bands"]``), or those given (``bands=``, 1-based; their number must be the model's).
The aux raster's bands are those given (``aux_bands=``), else those training read (recorded with
the datamodule's options), else all of them.

Before predicting, a scene whose sampled values lie far from what the checkpoint was trained on
gets a warning naming both: with a value scaling fitted on the training images (the checkpoint
records their 2nd–98th percentiles and dtype), a scene whose value range is several times wider
or narrower, or lies outside it; with preset statistics, a scene far outside ``[0, scale]`` (a
uint16 or reflectance scene for a model trained on 8-bit imagery). A scene without any valid
pixel is refused, naming the scene, when the scene-wide aux statistics are computed (a DSM with a
min–max or nDSM checkpoint); otherwise its map is written, entirely nodata, with a warning.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsprompt.data.labels import CLASS_TABLES, ClassTable, default_colors
from rsprompt.inference.ground import fit_ground, ground_cell_px, ground_pixel_size
from rsprompt.inference.reader import AuxSource, AuxStats, PredictError
from rsprompt.inference.summary import PredictSummary

#: A scene is far from the optical normalisation's range ``[0, scale]`` when its sampled 99th
#: percentile exceeds ``scale`` by this factor, or is below ``scale`` divided by it, or its 1st
#: percentile is below ``-scale / RANGE_FACTOR``.
RANGE_FACTOR = 2.0
#: ... and the low end: a 99th percentile under ``scale / LOW_FACTOR`` (0..1 reflectance for a
#: model trained on 0..255).
LOW_FACTOR = 20.0
#: With fitted statistics: a scene whose sampled value span is this many times wider or
#: narrower than the training images' (2nd–98th percentiles) is far from them.
SPAN_FACTOR = 4.0
#: A min–max aux normalisation fitted over a scene this many times the training patch warns.
SCENE_PATCH_FACTOR = 4

AUX_KINDS = ("dsm", "sar")


__all__ = [
    "CheckpointNormalizer",
    "CheckpointPredictor",
    "default_colors",
    "parse_palette",
    "predict_from_checkpoint",
]


def parse_palette(spec: str, n: int) -> list[tuple[int, int, int]]:
    """Colours from a palette spec: a dataset name, ``#rrggbb,#rrggbb,…`` or a file of those.

    Raises:
        PredictError: If the spec cannot be parsed or gives fewer than ``n`` colours.
    """
    text = spec.strip()
    if text.lower() in CLASS_TABLES:
        colors = [tuple(c) for c in CLASS_TABLES[text.lower()].colors]
    else:
        path = Path(text)
        if path.is_file():
            text = path.read_text()
        items = [t.strip() for t in text.replace("\n", ",").split(",") if t.strip()]
        colors = []
        for item in items:
            h = item.lstrip("#")
            if len(h) != 6:
                raise PredictError(f"palette entry {item!r} is not a #rrggbb colour")
            try:
                colors.append((int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)))
            except ValueError:
                raise PredictError(f"palette entry {item!r} is not a #rrggbb colour") from None
    if len(colors) < n:
        raise PredictError(f"palette {spec!r} has {len(colors)} colours for {n} classes")
    return [(int(c[0]), int(c[1]), int(c[2])) for c in colors[:n]]


class CheckpointNormalizer:
    """Applies a checkpoint's :class:`rsprompt.data.normalize.Normalization` window by window.

    Per-tile aux statistics (DSM ``minmax``, ``ndsm`` ground grid) are fitted once on scene-wide
    statistics (:meth:`fit`), never per window.

    Without an aux normaliser (``normalization.aux is None``) the aux is passed through raw,
    zero where invalid, as the training datasets fed it.

    Args:
        normalization: The checkpoint's ``Normalization``.
        pixel_size: Scene pixel size in metres (ground estimation of ``ndsm``).
    """

    def __init__(self, normalization: Any, pixel_size: float = 1.0) -> None:
        self.norm = normalization
        self.pixel_size = float(pixel_size)
        aux = normalization.aux
        mode = getattr(aux, "mode", None)
        self.needs_aux_stats = getattr(aux, "kind", "") == "dsm" and mode in ("minmax", "ndsm")
        # A scene-wide min–max compresses heights, but CheckpointPredictor warns about it itself
        # (with what the checkpoint records); predict_scene's generic warning is not repeated.
        self.stats_compress_with_scene_size = False
        self.ground_cell_px: int | None = (
            ground_cell_px(aux, self.pixel_size) if mode == "ndsm" else None
        )
        self.stats: dict[str, Any] | None = None
        # Every checkpoint normalisation is pixelwise once fitted (see predict_scene).
        self.pixelwise = True

    def fit(self, stats: AuxStats) -> None:
        """Turn scene-wide :class:`AuxStats` into the statistics the aux normaliser applies."""
        aux = self.norm.aux
        if aux.mode == "minmax":
            self.stats = {"min": float(stats.min[0]), "max": float(stats.max[0])}
        elif aux.mode == "ndsm":
            self.stats = fit_ground(aux, stats, self.pixel_size)

    def __call__(
        self,
        image: np.ndarray,
        aux: np.ndarray | None,
        aux_valid: np.ndarray | None,
        offset: tuple[int, int],
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Normalise one window (numpy in, numpy out)."""
        img = self.norm.optical.apply(image)
        if aux is None:
            return img, None, None
        if self.norm.aux is None:  # trained on the raw aux (zero where invalid)
            av = np.ones(aux.shape[-2:], bool) if aux_valid is None else aux_valid.astype(bool)
            return img, np.where(av[None], aux, np.float32(0.0)).astype(np.float32), av
        a, av = self.norm.aux.apply(aux, self.stats, valid=aux_valid, offset=offset)
        return img, a, av[0]


class CheckpointPredictor:
    """A model loaded from a checkpoint, ready to predict scenes.

    Args:
        checkpoint: ``model.ckpt`` written by ``rsprompt train``.
        weights: Encoder weights file, when it moved since training.
        device: Torch device.
        classes: Class names for an open-vocabulary checkpoint (replaces its vocabulary).
        palette: Palette spec (see :func:`parse_palette`) replacing the checkpoint's colours.
        bands: 1-based scene bands to feed the model (e.g. ``[4, 3, 2]`` of a Sentinel-2 scene);
            default: what the checkpoint recorded. Their number must be the model's.
        aux_bands: 1-based bands of the aux raster (e.g. ``[1]``: VV of a VV/VH SAR file);
            default: those training read, else all.

    Raises:
        PredictError: If the checkpoint cannot be loaded or the options do not fit it.
    """

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        weights: str | None = None,
        device: str | torch.device = "cpu",
        classes: Sequence[str] | None = None,
        palette: str | None = None,
        bands: Sequence[int] | None = None,
        aux_bands: Sequence[int] | None = None,
    ) -> None:
        from rsprompt.engine.checkpoint import CheckpointError, load_model_checkpoint

        self.bands = _band_list(bands, "bands")
        self.aux_bands = _band_list(aux_bands, "aux bands")

        self.checkpoint = Path(checkpoint)
        try:
            self.model, self.meta = load_model_checkpoint(
                self.checkpoint, weights=weights, device=device
            )
        except CheckpointError as exc:
            raise PredictError(str(exc)) from None
        except (FileNotFoundError, ValueError) as exc:
            raise PredictError(f"checkpoint {self.checkpoint}: {exc}") from None
        self.device = device
        meta = self.meta
        names = list(meta.get("classes") or [f"class {i}" for i in range(meta["num_classes"])])
        colors = meta.get("colors")
        if classes is not None:
            if not hasattr(self.model, "set_vocabulary"):
                raise PredictError(
                    f"checkpoint {self.checkpoint} ({meta.get('method')}) is not open-vocabulary: "
                    "--classes only applies to models like RPN"
                )
            new = [c.strip() for c in classes if c.strip()]
            if not new:
                raise PredictError("--classes needs at least one class name")
            self.model.set_vocabulary(new)
            old = dict(zip(names, colors or [], strict=False))
            fallback = default_colors(len(new))
            colors = [old.get(n, fallback[i]) for i, n in enumerate(new)]
            names = new
        if palette is not None:
            colors = parse_palette(palette, len(names))
        if colors is None or len(colors) < len(names):
            colors = default_colors(len(names))
        self.classes = ClassTable(
            names=tuple(names), colors=tuple(tuple(int(v) for v in c[:3]) for c in colors)
        )
        self.aux_kind = meta.get("aux_kind")
        self.aux_channels = int(meta.get("aux_channels") or 0)
        self.normalization = self._normalization()
        if self.aux_bands is None:
            self.aux_bands = self._recorded_aux_bands()

    def _recorded_aux_bands(self) -> list[int] | None:
        """The aux bands training read (``datamodule_kwargs["aux_bands"]``), if recorded."""
        kwargs = self.meta.get("datamodule_kwargs")
        value = kwargs.get("aux_bands") if isinstance(kwargs, dict) else None
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                return None
        if not isinstance(value, list) or not value:
            return None
        try:
            return [int(b) for b in value]
        except (TypeError, ValueError):
            return None

    def _normalization(self) -> Any:
        from rsprompt.data.normalize import Normalization

        d = self.meta.get("normalization")
        if d is None:
            return None
        try:
            return Normalization.from_dict(d)
        except (KeyError, ValueError, TypeError) as exc:
            raise PredictError(
                f"checkpoint {self.checkpoint}: unreadable normalisation record ({exc})"
            ) from None

    def predict(
        self,
        scene: str | Path,
        out_path: str | Path,
        *,
        aux: str | Path | None = None,
        aux_kind: str | None = None,
        window: int | None = None,
        overlap: int | None = None,
        **kwargs: Any,
    ) -> PredictSummary:
        """Predict one scene (see :func:`~rsprompt.inference.predictor.predict_scene`).

        Args:
            scene: Optical scene.
            out_path: Class map to write.
            aux: DSM or SAR raster.
            aux_kind: What ``aux`` is (``"dsm"`` for ``--dem``, ``"sar"`` for ``--sar``); checked
                against the checkpoint.
            window: Window side (default: the training patch size, else 512; must be >= 1).
            overlap: Window overlap (default: a quarter of the window).
            **kwargs: More :func:`predict_scene` options.
        """
        from rsprompt.inference.predictor import predict_scene

        args = self._scene_args(scene, aux, aux_kind)
        self._preflight(scene, args["bands"], with_aux=aux is not None)
        if aux is not None and self.aux_bands is not None:
            aux = AuxSource(aux, bands=self.aux_bands)
        patch = self.meta.get("patch_size") or 512
        window = int(patch if window is None else window)  # 0 is an error, not "default"
        overlap = int(overlap if overlap is not None else window // 4)
        summary = predict_scene(
            scene,
            self.model,
            out_path,
            classes=self.classes,
            aux=aux,
            window=window,
            overlap=overlap,
            device=self.device,
            train_patch_size=self.meta.get("patch_size"),
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
        return summary

    def _preflight(self, scene: str | Path, bands: list[int] | None, *, with_aux: bool) -> None:
        """Warnings before predicting: values far from the training range, a scene-wide min–max.

        Raises:
            PredictError: If the scene cannot be opened or read (see ``SceneReader``).
        """
        from rsprompt.inference.reader import SceneReader

        if self.normalization is None:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # predict_scene's own reader gives the warnings
            reader = SceneReader(scene, bands=bands)
        with reader:
            _warn_value_range(reader, self.normalization.optical)
            height, width = reader.height, reader.width
        patch = self.meta.get("patch_size")
        mode = getattr(self.normalization.aux, "mode", None)
        if (
            with_aux
            and mode == "minmax"
            and patch
            and max(height, width) > SCENE_PATCH_FACTOR * patch
        ):
            warnings.warn(
                "this checkpoint's DSM min–max normalisation was fitted over each training tile "
                f"as a whole (the checkpoint does not record the tiles' size; the model saw "
                f"{patch} px patches cut from them); over scene {Path(scene).name} "
                f"({width}×{height} px) it is fitted once over the whole scene, which compresses "
                "the heights the model sees when the scene spans a wider height range than a "
                "training tile. Prefer an nDSM (height above ground) or a checkpoint trained "
                "with global statistics.",
                UserWarning,
                stacklevel=3,
            )

    def check(
        self, scene: str | Path, *, aux: str | Path | None = None, aux_kind: str | None = None
    ) -> None:
        """Check a scene and its aux raster without predicting (opens, validates, closes).

        Raises:
            PredictError: Naming the file and the problem.
        """
        from rsprompt.inference.reader import SceneReader

        args = self._scene_args(scene, aux, aux_kind)
        SceneReader(
            scene,
            aux,
            bands=args["bands"],
            expected_bands=args["expected_bands"],
            aux_channels=args["aux_channels"],
            aux_bands=self.aux_bands if aux is not None else None,
        ).close()

    def _scene_args(
        self, scene: str | Path, aux: str | Path | None, aux_kind: str | None
    ) -> dict[str, Any]:
        """Checks of the aux modality, and the normalisation/band arguments of a scene."""
        if aux is not None:
            if self.aux_channels == 0 or self.aux_kind is None:
                raise PredictError(
                    f"checkpoint {self.checkpoint} was trained on optical imagery only; it takes "
                    f"no aux raster ({aux})"
                )
            if aux_kind is not None and aux_kind != self.aux_kind:
                flag = {"dsm": "--dem", "sar": "--sar"}
                raise PredictError(
                    f"checkpoint {self.checkpoint} was trained with {self.aux_kind.upper()} "
                    f"as aux modality; {aux} was given as {aux_kind.upper()} "
                    f"(use {flag.get(self.aux_kind, '--dem/--sar')})"
                )
        norm_fn = None
        bands = None
        expected = None
        if self.normalization is not None:
            optical = self.normalization.optical
            if optical.bands is not None:
                bands = [b + 1 for b in optical.bands]
                expected = len(bands)
                optical = dataclasses.replace(optical, bands=None)
            elif self.meta.get("bands"):
                bands = [int(b) + 1 for b in self.meta["bands"]]  # recorded 0-based
                expected = len(bands)
            elif len(optical.mean) > 1:
                expected = len(optical.mean)
            if self.bands is not None:
                bands = list(self.bands)
            norm = dataclasses.replace(self.normalization, optical=optical)
            pixel = 1.0
            if aux is not None and getattr(norm.aux, "mode", None) == "ndsm":
                pixel = ground_pixel_size(Path(scene))
            norm_fn = CheckpointNormalizer(norm, pixel)
        elif self.bands is not None:
            bands = list(self.bands)
        return {
            "normalize": norm_fn,
            "bands": bands,
            "expected_bands": expected,
            "aux_channels": self.aux_channels if aux is not None else None,
        }


def _band_list(value: Sequence[int] | None, what: str) -> list[int] | None:
    """1-based band numbers, checked (``None`` stays ``None``).

    Raises:
        PredictError: If a value is not a whole number of at least 1, or none is given.
    """
    if value is None:
        return None
    try:
        out = [int(b) for b in value]
    except (TypeError, ValueError):
        raise PredictError(f"{what}: expected 1-based band numbers, got {value!r}") from None
    if not out or any(b < 1 for b in out):
        raise PredictError(f"{what}: expected 1-based band numbers (1, 2, …), got {value!r}")
    return out


def _warn_value_range(reader: Any, optical: Any) -> None:
    """Warn when the scene's sampled values are far from what the checkpoint was trained on.

    With a fitted scaling (``optical.fitted``) the checkpoint records the training images' dtype
    and per-band 2nd–98th percentiles (``low``/``high``): the scene is far from them when the span
    of its sampled values (1st–99th percentile) is :data:`SPAN_FACTOR` times wider or narrower,
    or lies more than one training span away. With preset statistics, the normalisation divides
    by ``scale`` (255 for 8-bit imagery) and standardises with the encoder's mean and std: it
    expects values in ``[0, scale]``; a uint16 scene (0..10 000) or a reflectance scene (0..1)
    given to a model trained on 8-bit imagery yields a confident but meaningless map.
    """
    values = reader.sample_values()
    if values.size == 0:
        return
    lo, hi = (float(v) for v in np.percentile(values, [1, 99]))
    if getattr(optical, "fitted", None) is not None and optical.low and optical.high:
        _warn_fitted_range(reader, optical, lo, hi)
        return
    scale = float(optical.scale)
    if lo >= -scale / LOW_FACTOR and scale / LOW_FACTOR <= hi <= RANGE_FACTOR * scale:
        return
    dtype = reader.src.dtypes[reader.bands[0] - 1]
    mean = ", ".join(f"{m:g}" for m in optical.mean)
    std = ", ".join(f"{s:g}" for s in optical.std)
    warnings.warn(
        f"scene {reader.scene_path} ({dtype}, sampled values {lo:g} to {hi:g}, 1st–99th "
        f"percentile) is far from the range this checkpoint was trained on (0 to {scale:g}: "
        f"values are divided by {scale:g}, then standardised with mean {mean} and std {std}); "
        f"the map will be unreliable. Rescale the scene to 0–{scale:g} first.",
        UserWarning,
        stacklevel=4,
    )


def _warn_fitted_range(reader: Any, optical: Any, lo: float, hi: float) -> None:
    """The value-range warning against fitted training statistics (see _warn_value_range)."""
    t_lo, t_hi = min(optical.low), max(optical.high)
    span = max(t_hi - t_lo, 1e-6 * max(abs(t_hi), 1.0))
    s_span = hi - lo
    far = (
        s_span > SPAN_FACTOR * span
        or s_span < span / SPAN_FACTOR
        or hi < t_lo - span
        or lo > t_hi + span
    )
    if not far:
        return
    dtype = reader.src.dtypes[reader.bands[0] - 1]
    trained = optical.dtype or "unknown dtype"
    warnings.warn(
        f"scene {reader.scene_path} ({dtype}, sampled values {lo:g} to {hi:g}, 1st–99th "
        f"percentile, bands {reader.bands}) is far from the images this checkpoint was trained "
        f"on ({trained}, values {t_lo:g} to {t_hi:g}, 2nd–98th percentile of the training "
        f"pixels, as recorded with its {optical.fitted} scaling); the map will be unreliable. "
        "Check the bands (--bands) and give the scene the training images' scale and units.",
        UserWarning,
        stacklevel=5,
    )


def predict_from_checkpoint(
    scene: str | Path,
    checkpoint: str | Path,
    out_path: str | Path,
    *,
    aux: str | Path | None = None,
    aux_kind: str | None = None,
    weights: str | None = None,
    device: str | torch.device = "cpu",
    classes: Sequence[str] | None = None,
    palette: str | None = None,
    bands: Sequence[int] | None = None,
    aux_bands: Sequence[int] | None = None,
    **kwargs: Any,
) -> PredictSummary:
    """Load ``checkpoint`` and predict ``scene`` into ``out_path`` (one call).

    See :class:`CheckpointPredictor` and :func:`~rsprompt.inference.predictor.predict_scene`
    for the arguments. To predict many scenes, build one :class:`CheckpointPredictor`.
    """
    predictor = CheckpointPredictor(
        checkpoint,
        weights=weights,
        device=device,
        classes=classes,
        palette=palette,
        bands=bands,
        aux_bands=aux_bands,
    )
    return predictor.predict(scene, out_path, aux=aux, aux_kind=aux_kind, **kwargs)
