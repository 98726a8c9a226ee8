"""Scene prediction from an rsprompt model checkpoint (``model.ckpt``).

:class:`CheckpointPredictor` loads the model once (``rsprompt.engine.checkpoint``), rebuilds the
checkpoint's normalisation (``rsprompt.data.normalize``) and predicts any number of scenes with
:func:`~rsprompt.inference.predictor.predict_scene`. Statistics that the checkpoint's aux
normalisation takes per training tile (DSM min–max, nDSM ground) are computed once per scene.
"""

from __future__ import annotations

import colorsys
import dataclasses
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsprompt.data.labels import CLASS_TABLES, ClassTable
from rsprompt.inference.reader import AuxStats, PredictError
from rsprompt.inference.summary import PredictSummary

AUX_KINDS = ("dsm", "sar")


def default_colors(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct colours (golden-ratio hues)."""
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95)
        out.append((round(r * 255), round(g * 255), round(b * 255)))
    return out


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
        # A scene-wide min–max compresses heights; an nDSM ground grid is local.
        self.stats_compress_with_scene_size = mode == "minmax"
        self.ground_cell_px: int | None = (
            max(1, round(aux.cell_m / self.pixel_size)) if mode == "ndsm" else None
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
            from rsprompt.data.normalize import ground_estimate

            assert stats.cell_min is not None and stats.cell is not None
            grid, _ = ground_estimate(
                stats.cell_min, None, stats.cell * self.pixel_size, aux.cell_m, aux.window_m
            )
            self.stats = {"ground": grid.astype(np.float32), "cell": int(stats.cell)}

    def __call__(
        self,
        image: np.ndarray,
        aux: np.ndarray | None,
        aux_valid: np.ndarray | None,
        offset: tuple[int, int],
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Normalise one window (numpy in, numpy out)."""
        img = self.norm.optical.apply(image)
        if aux is None or self.norm.aux is None:
            return img, None, None
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
    ) -> None:
        from rsprompt.engine.checkpoint import CheckpointError, load_model_checkpoint

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
            window: Window side (default: the training patch size, else 512).
            overlap: Window overlap (default: a quarter of the window).
            **kwargs: More :func:`predict_scene` options.
        """
        from rsprompt.inference.predictor import predict_scene

        args = self._scene_args(scene, aux, aux_kind)
        patch = self.meta.get("patch_size") or 512
        window = int(window or patch)
        overlap = int(overlap if overlap is not None else window // 4)
        return predict_scene(
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
        ).close()

    def _scene_args(
        self, scene: str | Path, aux: str | Path | None, aux_kind: str | None
    ) -> dict[str, Any]:
        """Checks of the aux modality, and the normalisation/band arguments of a scene."""
        import rasterio

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
            norm = dataclasses.replace(self.normalization, optical=optical)
            pixel = 1.0
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    src = rasterio.open(scene)
                with src:
                    if src.crs is not None and src.crs.is_projected:
                        pixel = abs(src.transform.a) * float(src.crs.linear_units_factor[1])
            except Exception:
                pass  # predict_scene reports unreadable scenes with a clear message
            norm_fn = CheckpointNormalizer(norm, pixel)
        return {
            "normalize": norm_fn,
            "bands": bands,
            "expected_bands": expected,
            "aux_channels": self.aux_channels if aux is not None else None,
        }


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
    **kwargs: Any,
) -> PredictSummary:
    """Load ``checkpoint`` and predict ``scene`` into ``out_path`` (one call).

    See :class:`CheckpointPredictor` and :func:`~rsprompt.inference.predictor.predict_scene`
    for the arguments. To predict many scenes, build one :class:`CheckpointPredictor`.
    """
    predictor = CheckpointPredictor(
        checkpoint, weights=weights, device=device, classes=classes, palette=palette
    )
    return predictor.predict(scene, out_path, aux=aux, aux_kind=aux_kind, **kwargs)
