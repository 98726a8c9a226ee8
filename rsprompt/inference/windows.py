"""Stage 1 of prediction, the window plan: which windows, in which batches, for which rows.

The grid and the blending weights themselves live in :mod:`rsprompt.tiling` (shared with
:mod:`rsprompt.engine.evaluate`) and are re-exported here. :class:`WindowPlan` adds what scene
prediction needs on top:

- column bands: a scene too wide for the memory budget is blended in bands of columns
  (:func:`~rsprompt.tiling.column_bands`);
- batching: each column band's windows, row-major, cut into batches of ``batch_size``;
- the strip of each window row (the columns read once per row of windows);
- a row range: only the output rows ``[r0, r1)`` of the scene. Every window overlapping them is
  computed, in the very batches the whole-scene plan has (a batch is kept whole, so the model sees
  the same inputs batched the same way), so these rows blend exactly as in a single run;
- the write alignment: finished rows leave the blender in multiples of :data:`STRIP_ROWS` (one
  column band: striped temporary rasters) or of ``BLOCK`` (column bands: tiles), counted from the
  first output row.
"""

from __future__ import annotations

from dataclasses import dataclass

from rsprompt.inference.writers import BLOCK
from rsprompt.tiling import (
    WeightCache,
    Window,
    axis_offsets,
    axis_weight,
    band_windows,
    column_bands,
    row_bands,
    row_windows,
    window_grid,
    window_weight,
)

__all__ = [
    "STRIP_ROWS",
    "Batch",
    "WeightCache",
    "Window",
    "WindowPlan",
    "axis_offsets",
    "axis_weight",
    "band_windows",
    "column_bands",
    "row_bands",
    "row_windows",
    "window_grid",
    "window_weight",
]

#: Rows per strip of the temporary rasters (striped files, one column band): the blended rows
#: are flushed in multiples of this, so that every write fills whole strips (see
#: :class:`~rsprompt.inference.writers.StripWriter`).
STRIP_ROWS = 16


@dataclass(frozen=True)
class Batch:
    """Windows predicted in one forward pass.

    Attributes:
        col_band: Index of the column band the windows are blended in.
        windows: The windows, row-major.
    """

    col_band: int
    windows: tuple[Window, ...]


class WindowPlan:
    """The windows of a scene, their batches, column bands and the rows to produce.

    Args:
        height: Scene rows.
        width: Scene columns.
        window: Window side.
        overlap: Overlap of neighbouring windows.
        num_classes: ``K`` (sizes the blending accumulator).
        batch_size: Windows per forward pass.
        memory_mb: Budget of one column band's accumulator.
        row_range: Output rows ``[r0, r1)``; ``None``: the whole scene.

    Raises:
        ValueError: A row range outside the scene or empty.
    """

    def __init__(
        self,
        height: int,
        width: int,
        window: int,
        overlap: int,
        *,
        num_classes: int,
        batch_size: int = 4,
        memory_mb: float = 512.0,
        row_range: tuple[int, int] | None = None,
    ) -> None:
        r0, r1 = row_range if row_range is not None else (0, height)
        if not 0 <= r0 < r1 <= height:
            raise ValueError(f"row range [{r0}, {r1}) is not inside the scene's {height} rows")
        self.height, self.width, self.overlap = height, width, overlap
        self.rows = (int(r0), int(r1))
        self.windows = window_grid(height, width, window, overlap)
        self.win_h, self.win_w = self.windows[0].height, self.windows[0].width
        # A scene smaller than the window is padded to the window for the model.
        self.in_h, self.in_w = max(window, self.win_h), max(window, self.win_w)
        bytes_per_col = (num_classes + 2) * 4.0 * (self.win_h + BLOCK)
        self.col_bands = column_bands(width, self.win_w, bytes_per_col, memory_mb * 2**20, BLOCK)
        banded = len(self.col_bands) > 1
        self.align = BLOCK if banded else STRIP_ROWS
        self.strip_rows: int | None = None if banded else STRIP_ROWS
        self.batches: list[Batch] = []
        self._spans: dict[tuple[int, int], tuple[int, int]] = {}
        for cb, (c0, c1) in enumerate(self.col_bands):
            wins = band_windows(self.windows, c0, c1) if banded else self.windows
            for win in wins:
                lo, hi = self._spans.get((cb, win.row), (win.col, win.col_end))
                self._spans[(cb, win.row)] = (min(lo, win.col), max(hi, win.col_end))
            for i in range(0, len(wins), batch_size):
                chunk = tuple(wins[i : i + batch_size])
                if any(self.needed(w) for w in chunk):
                    self.batches.append(Batch(cb, chunk))

    @property
    def n_windows(self) -> int:
        """Windows computed (those of every kept batch)."""
        return sum(len(b.windows) for b in self.batches)

    @property
    def is_part(self) -> bool:
        """Whether only some rows of the scene are produced."""
        return self.rows != (0, self.height)

    def needed(self, win: Window) -> bool:
        """Whether ``win`` covers an output row (only those are blended)."""
        return win.row < self.rows[1] and win.row_end > self.rows[0]

    def strip_span(self, col_band: int, row: int) -> tuple[int, int]:
        """Columns ``[c0, c1)`` of the strip read once for the window row at ``row`` of a band."""
        return self._spans[(col_band, row)]

    def band_extent(self, col_band: int) -> tuple[int, int, int]:
        """``(first row, first column, end column)`` of the windows blended in a column band."""
        c0, c1 = self.col_bands[col_band]
        wins = [w for w in band_windows(self.windows, c0, c1) if self.needed(w)]
        return wins[0].row, min(w.col for w in wins), max(w.col_end for w in wins)

    def flush_boundary(self, row: int) -> int:
        """The last write boundary at or above ``row``.

        Rows above it are final once a window starting at ``row`` arrives (row-major order).
        Boundaries are the first output row plus multiples of :attr:`align`.
        """
        r0 = self.rows[0]
        return r0 + (row - r0) // self.align * self.align
