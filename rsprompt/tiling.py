"""The window plan and blending weights shared by scene prediction and evaluation.

A leaf module (numpy only, no other rsprompt import), so that every layer may use it:
:mod:`rsprompt.engine.evaluate` (whole dataset tiles) and :mod:`rsprompt.inference` (whole
scenes) cut and blend with the same rules, and agree by construction.

Grid: windows of one size; consecutive windows overlap by ``overlap`` pixels (start every
``window - overlap`` pixels); the last window of a row or column is shifted back so that it ends
on the scene's edge (never padded with data that does not exist). A scene smaller than the window
gets one window as large as the scene in that direction (the model input is padded and the output
cropped).

Blending: each window's output is multiplied by a smooth weight that ramps up over the overlap
with a neighbouring window as ``sin²`` and stays 1 elsewhere, including along the scene's own
edges (a cosine/Tukey window). On a regular grid the ramps of two neighbours sum to exactly 1
(``sin² + cos² = 1``); the shifted edge windows overlap more and are renormalised by the
accumulated weight, so the blend is a partition of unity everywhere and has no seams. The papers'
evaluation protocol sums raw logits instead: every window weighs 1 (:func:`blend_weight` with
``blend="sum"``).

Example:
    >>> [(w.row, w.col) for w in window_grid(100, 70, 64, 16)]
    [(0, 0), (0, 6), (36, 0), (36, 6)]
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import numpy as np

#: How overlapping window outputs are combined: raw logits summed (the papers' protocol) or
#: softmax probabilities weighted by :func:`window_weight`.
Blend = Literal["sum", "cosine"]


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
        Sorted unique offsets, one every ``size - overlap`` pixels; the last one is
        ``length - size`` (shifted inside the scene).

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
    stride = size - overlap
    size = min(size, length)
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
    edge, and ramps down over the last ``overlap`` pixels unless it ends at the scene's edge
    (at most half the window each).

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
    """2-D blending weight (``win.height × win.width``, float32) of ``win`` in a ``height × width`` scene."""
    wy = axis_weight(height, win.row, win.height, overlap)
    wx = axis_weight(width, win.col, win.width, overlap)
    return np.outer(wy, wx).astype(np.float32)


class WeightCache:
    """:func:`window_weight` (or all ones for ``blend="sum"``) computed once per window kind.

    Windows of one grid share their size; their weight only depends on which scene edges they
    touch, so at most nine distinct arrays exist.

    Args:
        height: Scene rows.
        width: Scene columns.
        overlap: The grid's overlap.
        blend: ``cosine`` (smooth weights) or ``sum`` (every window weighs 1).
    """

    def __init__(self, height: int, width: int, overlap: int, blend: Blend = "cosine") -> None:
        if blend not in ("sum", "cosine"):
            raise ValueError(f"blend must be 'sum' or 'cosine', got {blend!r}")
        self.height, self.width, self.overlap, self.blend = height, width, overlap, blend
        self._cache: dict[tuple[int, int, bool, bool, bool, bool], np.ndarray] = {}

    def __call__(self, win: Window) -> np.ndarray:
        """The weight of ``win`` (``win.height × win.width`` float32; do not modify it)."""
        key = (
            win.height,
            win.width,
            win.row == 0,
            win.row_end == self.height,
            win.col == 0,
            win.col_end == self.width,
        )
        if key not in self._cache:
            if self.blend == "sum":
                self._cache[key] = np.ones((win.height, win.width), np.float32)
            else:
                self._cache[key] = window_weight(win, self.height, self.width, self.overlap)
        return self._cache[key]


def column_bands(
    width: int, window_width: int, bytes_per_column: float, budget_bytes: float, align: int = 512
) -> list[tuple[int, int]]:
    """Split the scene's columns into column bands whose accumulators fit in ``budget_bytes``.

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


def row_windows(windows: list[Window], r0: int, r1: int) -> list[Window]:
    """The windows (row-major) that cover at least one row of ``[r0, r1)``."""
    return [w for w in windows if w.row < r1 and w.row_end > r0]


def row_bands(height: int, n: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """Split a scene's rows into at most ``n`` horizontal bands for separate workers.

    Rule: the borders are starts of window rows of the grid (:func:`axis_offsets`), each the one
    nearest to an equal split ``i · height / n``; duplicates are dropped, so a scene with fewer
    window rows than ``n`` gives fewer bands. Each band is then predicted on its own
    (``predict_scene(row_range=…)``) from every window overlapping its rows, so its rows are
    blended exactly as in a single run, and the parts stitch back in any case (the merge does not
    need any alignment; a border on a window start just keeps the duplicated windows few).

    Args:
        height: Scene rows.
        n: Wanted number of bands (``>= 1``).
        window: Window side.
        overlap: Window overlap.

    Returns:
        ``[(r0, r1), …]`` in order, covering ``[0, height)`` without gaps or overlaps.

    Example:
        >>> row_bands(200, 2, 64, 16)  # window rows start at 0, 48, 96, 136
        [(0, 96), (96, 200)]
    """
    if n < 1:
        raise ValueError(f"the number of bands must be >= 1, got {n}")
    starts = axis_offsets(height, window, overlap)
    cuts: list[int] = []
    for i in range(1, n):
        target = i * height / n
        best = min(starts[1:], key=lambda s: (abs(s - target), s), default=None)
        if best is not None and best not in cuts:
            cuts.append(best)
    borders = [0, *sorted(cuts), height]
    return list(itertools.pairwise(borders))
