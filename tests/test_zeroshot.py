"""Zero-shot protocol helpers: unseen masking, relabelling, seen/unseen mIoU and hIoU."""

from __future__ import annotations

import math

import pytest
import torch

from rsprompt.engine.zeroshot import (
    confusion_matrix,
    harmonic_mean,
    iou_per_class,
    mask_unseen,
    seen_label_map,
    split_classes,
    to_seen_targets,
    zero_shot_metrics,
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


def test_mask_unseen_sets_ignore_and_keeps_the_rest():
    target = torch.tensor([[0, 3, 4], [255, 1, 3]], dtype=torch.uint8)
    out = mask_unseen(target, [3, 4])
    assert out.tolist() == [[0, 255, 255], [255, 1, 255]]
    assert out.dtype == torch.uint8
    assert target.tolist() == [[0, 3, 4], [255, 1, 3]]  # input untouched
    assert torch.equal(mask_unseen(target, []), target)


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


def test_confusion_matrix_and_iou_by_hand():
    target = torch.tensor([0, 0, 1, 1, 2, 255])
    pred = torch.tensor([0, 1, 1, 1, 0, 2])
    cm = confusion_matrix(pred, target, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    iou = iou_per_class(cm)
    # class 0: tp 1, fp 1, fn 1 → 1/3; class 1: tp 2, fp 1 → 2/3; class 2: tp 0, fn 1 → 0
    assert iou.tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])
    with pytest.raises(ValueError, match="differ"):
        confusion_matrix(pred[:3], target, 3)


def test_zero_shot_metrics_by_hand():
    # 4 classes: seen 0, 1; unseen 2, 3 (class 3 absent everywhere → NaN, left out).
    cm = torch.tensor([[8, 2, 0, 0], [0, 6, 0, 0], [0, 2, 2, 0], [0, 0, 0, 0]])
    m = zero_shot_metrics(cm, seen_ids=[0, 1], unseen_ids=[2, 3])
    iou0, iou1, iou2 = 8 / 10, 6 / 10, 2 / 4
    assert m["miou_seen"] == pytest.approx((iou0 + iou1) / 2)
    assert m["miou_unseen"] == pytest.approx(iou2)
    s, u = (iou0 + iou1) / 2, iou2
    assert m["hiou"] == pytest.approx(2 * s * u / (s + u))
    assert m["miou"] == pytest.approx((iou0 + iou1 + iou2) / 3)
    assert math.isnan(m["iou"][3])


def test_harmonic_mean_edge_cases():
    assert harmonic_mean(0.0, 0.0) == 0.0
    assert harmonic_mean(0.5, 0.5) == pytest.approx(0.5)
    assert math.isnan(harmonic_mean(float("nan"), 0.3))
