"""Stage 2 of prediction, the scene source: the model's inputs, batch by batch.

:class:`SceneSource` reads each row of windows once as a strip (the scene, and the aux raster
aligned onto the scene's grid by :class:`~rsprompt.inference.reader.SceneReader`, with their
validity), normalises it (once per strip for a pixelwise normaliser, else window by window; value
scaling is part of the normaliser), cuts the windows of each batch of the
:class:`~rsprompt.inference.windows.WindowPlan` and stacks them. :func:`fit_normalizer` first gives
a normaliser that needs them the scene-wide aux statistics.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError

from rsprompt.inference.reader import AuxStats, PredictError, RowStripReader, SceneReader
from rsprompt.inference.windows import Batch, WindowPlan

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
    pixels of the whole scene (a streaming pre-pass; also when only some rows are predicted) and
    calls :meth:`fit` once, then calls the normaliser on every window like a :data:`NormalizeFn`.
    Any object with a true ``needs_aux_stats`` and a ``fit`` method is fitted. Optional
    attributes:

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


def identity(
    image: np.ndarray,
    aux: np.ndarray | None,
    aux_valid: np.ndarray | None,
    offset: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The normaliser that changes nothing (pixelwise)."""
    return image, aux, aux_valid


identity.pixelwise = True  # type: ignore[attr-defined]


def needs_aux_stats(norm: object) -> bool:
    """Whether ``norm`` is a :class:`SceneNormalizer` asking for statistics.

    Only ``needs_aux_stats`` and ``fit`` count: ``ground_cell_px`` and the other attributes are
    optional (``isinstance`` on the runtime protocol would require every data member).
    """
    return bool(getattr(norm, "needs_aux_stats", False)) and callable(getattr(norm, "fit", None))


@contextmanager
def reading(scene: Path, aux: Path | None) -> Iterator[None]:
    """A raw read error in the middle of a run (corrupt block) as a PredictError naming files."""
    try:
        yield
    except (OSError, RasterioError, CPLE_BaseError) as exc:
        what = f"scene {scene}" + (f" or its aux raster {aux}" if aux is not None else "")
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise PredictError(f"cannot read {what}: {reason}") from exc


def fit_normalizer(
    reader: SceneReader, norm: object, train_patch_size: int | None = None
) -> AuxStats | None:
    """Fit ``norm`` on the whole scene's aux statistics when it asks for them.

    Returns:
        The statistics, or ``None`` (no aux raster, or a normaliser without
        ``needs_aux_stats``). A scene more than four training patches wide gets a warning when
        the statistics widen with the scene (see :class:`SceneNormalizer`).
    """
    if not (reader.has_aux and needs_aux_stats(norm)):
        return None
    scene = reader.scene_path
    with reading(scene, reader.aux_path):
        stats = reader.aux_statistics(ground_cell=getattr(norm, "ground_cell_px", None))
    norm.fit(stats)  # type: ignore[attr-defined]
    big = train_patch_size and max(reader.height, reader.width) > 4 * train_patch_size
    if big and getattr(norm, "stats_compress_with_scene_size", True):
        warnings.warn(
            f"the aux normalisation of this checkpoint takes statistics per training "
            f"patch ({train_patch_size} px); over scene {scene.name} "
            f"({reader.width}×{reader.height} px) they are taken once over the whole "
            "scene, which compresses the heights the model sees. Prefer an nDSM "
            "(height above ground) or a checkpoint trained with global statistics.",
            UserWarning,
            stacklevel=3,
        )
    return stats


@dataclass
class SourceBatch:
    """The model inputs of one :class:`~rsprompt.inference.windows.Batch` (float32 numpy).

    Attributes:
        batch: The windows.
        image: ``B×C×h×w`` normalised optical windows.
        aux: ``B×A×h×w`` aux windows (0 where invalid), or ``None``.
        aux_valid: ``B×h×w`` bool aux validity, or ``None``.
        valid: ``B×h×w`` bool scene validity (invalid pixels are written as nodata).
    """

    batch: Batch
    image: np.ndarray
    aux: np.ndarray | None
    aux_valid: np.ndarray | None
    valid: np.ndarray


class SceneSource:
    """Reads, aligns, validates and normalises the windows of a plan, batch by batch.

    Args:
        reader: The open scene (and aux raster).
        normalize: The normaliser (a :data:`NormalizeFn`, fitted already if it needed it).
        plan: The window plan.
    """

    def __init__(self, reader: SceneReader, normalize: NormalizeFn, plan: WindowPlan) -> None:
        self.reader, self.norm, self.plan = reader, normalize, plan
        self.pixelwise = bool(getattr(normalize, "pixelwise", False))

    def _normalized(
        self,
        img: np.ndarray,
        a: np.ndarray | None,
        av: np.ndarray | None,
        offset: tuple[int, int],
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        h, w = img.shape[-2:]
        img, a, av = self.norm(img, a, av, offset)
        if a is not None and av is not None:
            av = np.asarray(av).reshape(h, w) > 0
            a = np.where(av[None], a, np.float32(0.0))
        return img, a, av

    def _normalized_strip(
        self,
        img: np.ndarray,
        valid: np.ndarray,
        a: np.ndarray | None,
        av: np.ndarray | None,
        offset: tuple[int, int],
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        img, a, av = self._normalized(img, a, av, offset)
        return img, valid, a, av

    def batches(self) -> Iterator[SourceBatch]:
        """The inputs of every batch of the plan, in order (each row of windows read once)."""
        # A pixelwise normaliser runs once per row strip (overlaps normalised once).
        strips = self.reader.row_reader(self._normalized_strip if self.pixelwise else None)
        for batch in self.plan.batches:
            yield self._read(strips, batch)

    def _read(self, strips: RowStripReader, batch: Batch) -> SourceBatch:
        imgs, auxs, avals, valids = [], [], [], []
        for win in batch.windows:
            with reading(self.reader.scene_path, self.reader.aux_path):
                span = self.plan.strip_span(batch.col_band, win.row)
                img, valid, a, av = strips.read(win, *span)
            if not self.pixelwise:
                img, a, av = self._normalized(img, a, av, (win.row, win.col))
            imgs.append(np.asarray(img, np.float32))
            valids.append(valid)
            if a is not None:
                auxs.append(np.asarray(a, np.float32))
                avals.append(av)
        return SourceBatch(
            batch,
            np.stack(imgs),
            np.stack(auxs) if auxs else None,
            np.stack(avals) if avals else None,
            np.stack(valids),
        )
