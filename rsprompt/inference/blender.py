"""Stage 4 of prediction, the blender: weighted window probabilities into finished rows.

:class:`Blender` multiplies each window's probabilities by its blending weight
(:class:`~rsprompt.tiling.WeightCache`, the weights evaluation uses too), accumulates them in a
:class:`StripAccumulator` (a row strip one window plus one write block high), and hands every
finished block of rows to a sink as a class map (argmax of the weighted sums; nodata where the
scene has no data) and, when the sink wants them, probabilities as uint8 (``255 × sum / weight``).
Only the plan's output rows are handed on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from rsprompt.inference.model_step import ScoredBatch
from rsprompt.inference.windows import Window, WindowPlan
from rsprompt.tiling import WeightCache


class StripAccumulator:
    """Blends weighted window probabilities in a row strip and emits finished rows.

    Args:
        height: Scene rows.
        width: Strip columns.
        num_classes: ``K``.
        capacity: Rows held (at least window height + the write block).
        col0: Scene column of the strip's first column (column bands of very wide scenes).
        row0: Scene row of the strip's first row (the first window blended).
    """

    def __init__(
        self,
        height: int,
        width: int,
        num_classes: int,
        capacity: int,
        col0: int = 0,
        row0: int = 0,
    ) -> None:
        self.height, self.width, self.k = height, width, num_classes
        self.col0 = col0  # scene column of the strip's first column
        self.cap = min(capacity, height - row0)
        self.top = row0  # scene row of the strip's first row
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


def argmax_classes(psum: np.ndarray, dtype: str) -> np.ndarray:
    """Index of the largest of ``K`` planes (``K×h×w``), the first on ties, as ``dtype``.

    The argmax of the weighted sums equals the argmax of the blended probabilities (the weight
    sum is positive), so no division is needed.
    """
    cls = np.zeros(psum.shape[1:], dtype=dtype)
    best = psum[0].copy()
    for c in range(1, psum.shape[0]):
        better = psum[c] > best
        cls[better] = c
        np.maximum(best, psum[c], out=best)
    return cls


def probabilities_u8(psum: np.ndarray, wsum: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Blended probabilities as uint8 ``round(255 × psum / wsum)`` (0 where not ``valid``)."""
    probs = psum * (255.0 / np.maximum(wsum, 1e-12))
    p8 = np.rint(probs).astype(np.uint8)
    p8[:, ~valid] = 0
    return p8


class RowSink(Protocol):
    """Where finished rows go (see :class:`~rsprompt.inference.sink.MapSink`)."""

    wants_probabilities: bool

    def write(self, row: int, col: int, classes: np.ndarray, probs: np.ndarray | None) -> None:
        """Rows of the class map (nodata where invalid) and probabilities at scene ``(row, col)``."""


@dataclass
class _ColBand:
    index: int
    core: tuple[int, int]
    acc: StripAccumulator


class Blender:
    """Blends the scored batches of a plan and hands finished rows to ``sink``.

    Args:
        plan: The window plan (rows, column bands, write alignment).
        sink: Receives the finished rows.
        dtype: Class map data type.
        nodata: Class map nodata value.
        num_classes: ``K``.
    """

    def __init__(
        self, plan: WindowPlan, sink: RowSink, *, dtype: str, nodata: int, num_classes: int
    ) -> None:
        self.plan, self.sink, self.dtype, self.nodata, self.k = (
            plan,
            sink,
            dtype,
            nodata,
            num_classes,
        )
        self.weights = WeightCache(plan.height, plan.width, plan.overlap, "cosine")
        self._col_band: _ColBand | None = None

    def add(self, scored: ScoredBatch) -> None:
        """Blend one batch (windows outside the output rows are skipped)."""
        if self._col_band is None or scored.batch.col_band != self._col_band.index:
            self.finish()
            self._start(scored.batch.col_band)
        assert self._col_band is not None
        acc = self._col_band.acc
        for i, win in enumerate(scored.batch.windows):
            if not self.plan.needed(win):
                continue
            boundary = self.plan.flush_boundary(win.row)
            if boundary > acc.top:
                self._flush(boundary - acc.top)  # rows above this window's row are final
            w = self.weights(win)
            np.multiply(scored.probs[i], w, out=scored.probs[i])
            acc.add(win, scored.probs[i], w, scored.valid[i])

    def finish(self) -> None:
        """Hand on the rows still held (end of a column band, or of the run)."""
        if self._col_band is None:
            return
        end = self.plan.rows[1]
        while self._col_band.acc.top < end:
            self._flush(end - self._col_band.acc.top)

    def _start(self, col_band: int) -> None:
        row0, u0, u1 = self.plan.band_extent(col_band)
        acc = StripAccumulator(
            self.plan.height,
            u1 - u0,
            self.k,
            self.plan.win_h + self.plan.align,
            col0=u0,
            row0=row0,
        )
        self._col_band = _ColBand(col_band, self.plan.col_bands[col_band], acc)

    def _flush(self, rows: int) -> None:
        assert self._col_band is not None
        acc, (c0, c1) = self._col_band.acc, self._col_band.core
        top, psum, wsum, valid = acc.pop(rows)
        r0, r1 = self.plan.rows
        lo, hi = max(r0 - top, 0), min(r1 - top, valid.shape[0])
        if hi <= lo:
            return  # rows above the output rows (a part's first windows)
        cs = slice(c0 - acc.col0, c1 - acc.col0)
        psum, wsum, valid = psum[:, lo:hi, cs], wsum[lo:hi, cs], valid[lo:hi, cs]
        cls = argmax_classes(psum, self.dtype)
        cls[~valid] = self.nodata
        probs = probabilities_u8(psum, wsum, valid) if self.sink.wants_probabilities else None
        self.sink.write(top + lo, c0, cls, probs)
