"""Zero-shot protocol helpers: the seen/unseen split, relabelling and the harmonic mean.

The seen/unseen mIoU and hIoU themselves are tested through ``metrics_from_confusion`` in
test_engine_metrics.py."""

from __future__ import annotations

import math

import pytest
import torch

from rsprompt.engine.zeroshot import (
    harmonic_mean,
    seen_label_map,
    split_classes,
    to_seen_targets,
)

NAMES = ["impervious surfaces", "building", "low vegetation", "tree", "car", "clutter"]


def test_split_classes_by_name_and_index():
    seen, unseen = split_classes(NAMES, ["Tree", 4])
    assert unseen == [3, 4]
    assert seen == [0, 1, 2, 5]
    with pytest.raises(ValueError, match="not one of"):
        split_classes(NAMES, ["river"])
    with pytest.raises(ValueError, match="out of range"):
        split_classes(NAMES, [6])
    with pytest.raises(ValueError, match="every class is unseen"):
        split_classes(NAMES[:2], [0, 1])


def test_to_seen_targets_relabels_for_the_seen_vocabulary():
    seen = [0, 1, 2, 5]
    target = torch.tensor([[0, 1, 2, 3], [4, 5, 255, 5]])
    out = to_seen_targets(target, seen, num_classes=6)
    assert out.tolist() == [[0, 1, 2, 255], [255, 3, 255, 3]]
    lut = seen_label_map(6, seen)
    assert lut.shape == (256,)
    assert lut[5] == 3 and lut[255] == 255 and lut[3] == 255
    with pytest.raises(ValueError, match="out of range"):
        seen_label_map(3, [0, 4])


def test_harmonic_mean_edge_cases():
    assert harmonic_mean(0.0, 0.0) == 0.0
    assert harmonic_mean(0.5, 0.5) == pytest.approx(0.5)
    assert math.isnan(harmonic_mean(float("nan"), 0.3))
