"""Window grids and blending weights for tiled prediction of whole scenes.

The grid covers a scene with windows of one size. Consecutive windows overlap by ``overlap``
pixels; the last window of a row or column is shifted back so that it ends on the scene's edge
(never padded with data that does not exist). A scene smaller than the window gets one window as
large as the scene in that direction (the predictor pads the model input and crops the output).

Blending: each window's class probabilities are multiplied by a smooth weight that ramps up over
the overlap with a neighbouring window as ``sin²`` and stays 1 elsewhere, including along the
scene's own edges (a cosine/Tukey window). On a regular grid the ramps of two neighbours sum to
exactly 1 (``sin² + cos² = 1``); the shifted edge windows overlap more and are renormalised by
the accumulated weight, so the blend is a partition of unity everywhere and has no seams.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    """A window of the grid in pixel coordinates of the scene.

    Attributes:
        row: First row.
        col: First column.
        height: Number of rows.
        width: Number of columns.
    """

    row: int
    col: int
    height: int
    width: int

    @property
    def row_end(self) -> int:
        """One past the last row."""
        return self.row + self.height

    @property
    def col_end(self) -> int:
        """One past the last column."""
        return self.col + self.width


def axis_offsets(length: int, size: int, overlap: int) -> list[int]:
    """Start offsets of windows of ``size`` covering ``length`` pixels with ``overlap``.

    Args:
        length: Scene length along the axis (pixels).
        size: Window length; clipped to ``length`` for short scenes.
        overlap: Overlap between consecutive windows (``0 <= overlap < size``).

    Returns:
        Sorted unique offsets; the last one is ``length - size`` (shifted inside the scene).

    Example:
        >>> axis_offsets(1000, 512, 128)
        [0, 384, 488]
    """
    if length < 1:
        raise ValueError(f"scene length must be >= 1, got {length}")
    if size < 1:
        raise ValueError(f"window size must be >= 1, got {size}")
    if not 0 <= overlap < size:
        raise ValueError(f"overlap must be in [0, window) = [0, {size}), got {overlap}")
    size = min(size, length)
    overlap = min(overlap, size - 1)
    stride = size - overlap
    offsets = list(range(0, length - size + 1, stride))
    if offsets[-1] != length - size:
        offsets.append(length - size)
    return offsets


def window_grid(height: int, width: int, window: int, overlap: int) -> list[Window]:
    """All windows of a scene in row-major order (rows of windows top to bottom).

    Args:
        height: Scene rows.
        width: Scene columns.
        window: Window side (pixels).
        overlap: Overlap between neighbouring windows (pixels).

    Returns:
        The windows; every one has the same size ``min(window, height) × min(window, width)``.
    """
    rows = axis_offsets(height, window, overlap)
    cols = axis_offsets(width, window, overlap)
    h, w = min(window, height), min(window, width)
    return [Window(r, c, h, w) for r in rows for c in cols]


def _ramp(n: int) -> np.ndarray:
    """Rising half-cosine ramp ``sin²(π/2 · (i + 0.5) / n)``, ``i = 0 … n-1`` (never exactly 0)."""
    t = (np.arange(n, dtype=np.float64) + 0.5) / n
    return np.sin(0.5 * np.pi * t) ** 2


def axis_weight(length: int, offset: int, size: int, overlap: int) -> np.ndarray:
    """1-D blending weight of a window at ``offset`` along an axis of ``length`` pixels.

    The weight ramps up over the first ``overlap`` pixels unless the window starts at the scene's
    edge, and ramps down over the last ``overlap`` pixels unless it ends at the scene's edge.

    Returns:
        float32 array of ``size`` values in ``(0, 1]``.
    """
    w = np.ones(size, dtype=np.float64)
    ov = min(overlap, size // 2)
    if ov > 0:
        ramp = _ramp(ov)
        if offset > 0:
            w[:ov] *= ramp
        if offset + size < length:
            w[size - ov :] *= ramp[::-1]
    return w.astype(np.float32)


def window_weight(win: Window, height: int, width: int, overlap: int) -> np.ndarray:
    """2-D blending weight (``win.height × win.width``, float32) of ``win`` in an ``height × width`` scene."""
    wy = axis_weight(height, win.row, win.height, overlap)
    wx = axis_weight(width, win.col, win.width, overlap)
    return np.outer(wy, wx).astype(np.float32)


def weight_sum(height: int, width: int, window: int, overlap: int) -> np.ndarray:
    """Accumulated blending weight of the whole grid (for tests and diagnostics; ``H×W``)."""
    total = np.zeros((height, width), dtype=np.float64)
    for win in window_grid(height, width, window, overlap):
        total[win.row : win.row_end, win.col : win.col_end] += window_weight(
            win, height, width, overlap
        )
    return total


def window_rows(windows: list[Window]) -> list[list[Window]]:
    """Group row-major ``windows`` into rows of windows sharing the same first row."""
    rows: list[list[Window]] = []
    for win in windows:
        if rows and rows[-1][0].row == win.row:
            rows[-1].append(win)
        else:
            rows.append([win])
    return rows


def column_bands(
    width: int, window_width: int, bytes_per_column: float, budget_bytes: float, align: int = 512
) -> list[tuple[int, int]]:
    """Split the scene's columns into bands whose accumulators fit in ``budget_bytes``.

    A scene narrow enough is one band (the usual case). Otherwise each band's *core* columns
    ``[c0, c1)`` start at multiples of ``align``; a band's accumulator spans its core plus the
    windows overlapping it, so every core pixel is blended from exactly the windows of the global
    grid that cover it (the result equals the unbanded one; windows across a band border are
    computed once per band).

    Args:
        width: Scene columns.
        window_width: Window width.
        bytes_per_column: Accumulator bytes per column.
        budget_bytes: Budget for one band's accumulator.
        align: Band borders are multiples of this (the output's tile width).

    Returns:
        ``[(c0, c1), …]`` covering ``[0, width)``.
    """
    cols = int(budget_bytes // max(bytes_per_column, 1.0)) - 2 * window_width
    core = max(align, cols // align * align)
    if core >= width:
        return [(0, width)]
    return [(c, min(c + core, width)) for c in range(0, width, core)]


def band_windows(windows: list[Window], c0: int, c1: int) -> list[Window]:
    """The windows (row-major) that cover at least one column of ``[c0, c1)``."""
    return [w for w in windows if w.col < c1 and w.col_end > c0]
