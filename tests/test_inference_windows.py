import itertools

import numpy as np
import pytest

from rsprompt.inference.windows import (
    axis_offsets,
    axis_weight,
    window_grid,
    window_weight,
)


def weight_sum(height, width, window, overlap):
    """Accumulated blending weight of the whole grid (``H×W``)."""
    total = np.zeros((height, width), dtype=np.float64)
    for win in window_grid(height, width, window, overlap):
        total[win.row : win.row_end, win.col : win.col_end] += window_weight(
            win, height, width, overlap
        )
    return total


@pytest.mark.parametrize(
    ("length", "size", "overlap"),
    [(1000, 512, 128), (512, 512, 64), (300, 512, 128), (1, 64, 0), (2049, 256, 100), (700, 64, 0)],
)
def test_offsets_cover_scene_and_stay_inside(length, size, overlap):
    offs = axis_offsets(length, size, overlap)
    s = min(size, length)
    assert offs[0] == 0
    assert offs[-1] == length - s  # last window shifted inside, never padded
    assert all(0 <= o <= length - s for o in offs)
    assert offs == sorted(set(offs))
    covered = np.zeros(length, bool)
    for o in offs:
        covered[o : o + s] = True
    assert covered.all()
    # consecutive windows overlap by at least `overlap` (when the scene is larger than a window)
    if length > size:
        assert all(b - a <= size - overlap for a, b in itertools.pairwise(offs))


def test_bad_grid_arguments():
    with pytest.raises(ValueError, match="overlap"):
        axis_offsets(100, 64, 64)
    with pytest.raises(ValueError, match="window"):
        axis_offsets(100, 0, 0)
    with pytest.raises(ValueError, match="length"):
        axis_offsets(0, 64, 0)


def test_grid_row_major_and_equal_sizes():
    wins = window_grid(700, 1000, 256, 64)
    assert len({(w.height, w.width) for w in wins}) == 1
    # rows of windows start every 256 - 64 = 192 px, the last shifted to 700 - 256 = 444;
    # columns at 0, 192, 384, 576 and 1000 - 256 = 744
    assert [(w.row, w.col) for w in wins[:6]] == [(0, 0), (0, 192), (0, 384), (0, 576),
                                                  (0, 744), (192, 0)]  # fmt: skip
    assert sorted({w.row for w in wins}) == [0, 192, 384, 444]
    assert len(wins) == 4 * 5
    small = window_grid(100, 80, 256, 64)
    assert len(small) == 1 and (small[0].height, small[0].width) == (100, 80)


def test_ramps_are_complementary_on_a_regular_grid():
    # 3 windows of 256 with stride 192 cover exactly 640 px: a regular grid
    total = weight_sum(640, 640, 256, 64)
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


def test_weights_positive_and_normalise_on_shifted_grids():
    for h, w, win, ov in [(1000, 777, 256, 64), (300, 5000, 128, 32), (50, 60, 64, 16)]:
        total = weight_sum(h, w, win, ov)
        assert total.min() > 0.0
        # the normalised weights of all windows covering a pixel sum to 1
        norm = np.zeros((h, w))
        for win_ in window_grid(h, w, win, ov):
            norm[win_.row : win_.row_end, win_.col : win_.col_end] += (
                window_weight(win_, h, w, ov)
                / total[win_.row : win_.row_end, win_.col : win_.col_end]
            )
        np.testing.assert_allclose(norm, 1.0, atol=1e-6)


def test_weight_is_one_at_scene_edges_and_smooth():
    w = axis_weight(1000, 0, 256, 64)
    assert w[0] == 1.0 and w[100] == 1.0
    assert w[-1] < 0.01 and np.all(np.diff(w[-64:]) < 0)
    inner = axis_weight(1000, 300, 256, 64)
    assert inner[0] < 0.01 and inner[128] == 1.0
    assert np.abs(np.diff(inner)).max() < 0.05  # no jumps
