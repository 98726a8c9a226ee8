"""The scene-wide ground of an nDSM normalisation, and heights above it.

A checkpoint whose DSM normaliser is ``ndsm`` sees heights above a local ground estimate
(:func:`rsprompt.data.normalize.ground_estimate`: cell minima, then an opening). During training
the ground is fitted on each training tile; ``rsprompt predict`` fits it **once over the whole
scene** from streamed per-cell minima (:meth:`SceneReader.aux_statistics`), so the ground at a
pixel depends only on the pixel's position in the scene, never on the window around it.

This module holds that rule once, for everything that needs the same ground as predict:

- :class:`~rsprompt.inference.from_checkpoint.CheckpointNormalizer` (the torch backend);
- :class:`HeightAboveGround`, a scene normaliser that leaves the optical bands raw and turns the
  DSM into metres above the scene-wide ground (NaN where there is no height): the input of an
  ONNX model exported for an nDSM layer, and the band ``rsprompt stack --ndsm`` writes.

Example:
    >>> import numpy as np
    >>> from rsprompt.data.normalize import DSMNormalizer
    >>> from rsprompt.inference.reader import AuxStats
    >>> norm = HeightAboveGround(DSMNormalizer("ndsm", cell_m=1.0, window_m=2.0), pixel_size=1.0)
    >>> norm.ground_cell_px
    1
    >>> dsm = np.full((1, 4, 4), 100.0, np.float32)
    >>> dsm[0, 1, 1] = 104.0  # one 4 m post on flat ground at 100 m
    >>> norm.fit(AuxStats(min=[100.0], max=[104.0], cell_min=dsm[0].astype(np.float64), cell=1))
    >>> _, height, valid = norm(np.zeros((3, 4, 4), np.float32), dsm, None, (0, 0))
    >>> float(height[0, 1, 1]), float(height[0, 0, 0]), bool(valid.all())
    (4.0, 0.0, True)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from rsprompt.data.normalize import DSMNormalizer, ground_estimate
from rsprompt.inference.reader import AuxStats, PredictError


def ground_cell_px(aux: DSMNormalizer, pixel_size: float) -> int:
    """The ground grid's cell in pixels of ``pixel_size`` metres (at least 1)."""
    return max(1, round(aux.cell_m / float(pixel_size)))


def fit_ground(aux: DSMNormalizer, stats: AuxStats, pixel_size: float) -> dict[str, Any]:
    """The scene-wide ground of ``aux`` from streamed statistics (``cell_min``, ``cell``).

    Returns:
        ``{"ground": float32 grid, "cell": pixels}``, the ``stats`` that
        :meth:`DSMNormalizer.apply` and :meth:`DSMNormalizer.height_above_ground` take.
    """
    assert stats.cell_min is not None and stats.cell is not None
    grid, _ = ground_estimate(
        stats.cell_min, None, stats.cell * float(pixel_size), aux.cell_m, aux.window_m
    )
    return {"ground": grid.astype(np.float32), "cell": int(stats.cell)}


def ground_pixel_size(scene: Path) -> float:
    """Pixel size of ``scene`` in metres for an nDSM ground grid (geodesic when geographic).

    The side of a square of the pixel's ground area (``sqrt(x · y)``): pixels of a geographic CRS
    are narrower east–west than north–south away from the equator.

    Raises:
        PredictError: If the scene cannot be opened, is not georeferenced, or its CRS has no
            unit that converts to metres.
    """
    from rsprompt.inference.reader import _check_georeferenced, _open
    from rsprompt.inference.summary import pixel_size_m

    src = _open(scene, "scene")
    _check_georeferenced(src, scene, "scene")
    with src:
        size = pixel_size_m(src.crs, src.transform, src.height, src.width)
        crs = src.crs
    if size is None:
        raise PredictError(
            f"scene {scene}: its CRS ({crs}) has no unit that converts to metres, but the "
            "checkpoint's nDSM normalisation sizes its ground grid in metres; reproject the "
            "scene first (e.g. gdalwarp -t_srs to a UTM zone)"
        )
    return math.sqrt(size[0] * size[1])


class HeightAboveGround:
    """Raw optical bands; the DSM as metres above the scene-wide ground (a scene normaliser).

    ``predict_scene`` fits it on the scene's streamed aux statistics, then calls it on every
    window: the image comes back unchanged, the aux as :meth:`DSMNormalizer.height_above_ground`
    (NaN where the DSM has no valid height: NaN, the normaliser's nodata, outside the DSM),
    and the validity. Clipping to ``[0, max_height_m]`` and scaling are left to the consumer
    (an exported graph, or nobody: ``rsprompt stack --ndsm`` writes the metres).

    Args:
        aux: The checkpoint's ``ndsm`` DSM normaliser (cell, window, nodata).
        pixel_size: The scene's pixel size in metres (:func:`ground_pixel_size`).
    """

    needs_aux_stats = True
    #: The ground grid does not widen with the scene, unlike a min–max.
    stats_compress_with_scene_size = False
    #: The height at a pixel depends on its scene position only.
    pixelwise = True

    def __init__(self, aux: DSMNormalizer, pixel_size: float) -> None:
        if aux.kind != "dsm" or aux.mode != "ndsm":
            raise ValueError(f"HeightAboveGround needs a DSM ndsm normaliser, got {aux.mode!r}")
        self.aux = aux
        self.pixel_size = float(pixel_size)
        self.ground_cell_px = ground_cell_px(aux, self.pixel_size)
        self.stats: dict[str, Any] | None = None

    def fit(self, stats: AuxStats) -> None:
        """Fit the ground on the scene-wide statistics."""
        self.stats = fit_ground(self.aux, stats, self.pixel_size)

    def __call__(
        self,
        image: np.ndarray,
        aux: np.ndarray | None,
        aux_valid: np.ndarray | None,
        offset: tuple[int, int],
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """``(image, height above ground A×h×w with NaN where invalid, validity h×w)``."""
        if aux is None:
            return image, None, None
        height, ok = self.heights(aux, aux_valid, offset)
        return image, height, ok

    def heights(
        self, aux: np.ndarray, aux_valid: np.ndarray | None, offset: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Metres above the fitted ground (``A×h×w``, NaN where invalid) and the validity ``h×w``.

        Raises:
            ValueError: Before :meth:`fit`.
        """
        height, ok = self.aux.height_above_ground(aux, self.stats, valid=aux_valid, offset=offset)
        ok = ok[0] & np.isfinite(height).all(axis=0)
        height = np.where(ok[None], height, np.float32(np.nan)).astype(np.float32, copy=False)
        return height, ok
