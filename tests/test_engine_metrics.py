import json
import math

import pytest
import torch

from rsprompt.engine.metrics import (
    SegmentationMetrics,
    format_table,
    isprs_mean_classes,
    metrics_from_confusion,
    plot_confusion,
    scalar_metrics,
    write_metrics_json,
)


def test_metrics_known_values_and_ignore():
    m = SegmentationMetrics(
        ["a", "b", "clutter"], mean_classes=isprs_mean_classes(["a", "b", "clutter"])
    )
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 2]])
    m.update(pred, target)
    r = m.compute()
    # cm rows=target: a:[1,1,0] b:[0,2,0] clutter:[1,0,1]
    assert r["pixels"] == 6
    assert r["oa"] == pytest.approx(4 / 6)
    assert r["iou"] == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert r["f1"] == pytest.approx([2 / 4, 4 / 5, 2 / 3])
    assert r["mean_classes"] == [0, 1]
    assert r["miou"] == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert r["mf1"] == pytest.approx((0.5 + 0.8) / 2)
    # logits are accepted too
    m2 = SegmentationMetrics(["a", "b", "clutter"])
    m2.update(torch.nn.functional.one_hot(pred, 3).permute(2, 0, 1)[None].float(), target[None])
    assert torch.equal(m2.confusion(), m.confusion())
    assert m2.compute()["miou"] == pytest.approx((1 / 3 + 2 / 3 + 0.5) / 3)


def test_absent_class_is_nan_and_left_out():
    r = metrics_from_confusion(torch.tensor([[3, 0, 0], [0, 0, 0], [1, 0, 2]]), ["x", "y", "z"])
    assert math.isnan(r["iou"][1]) and math.isnan(r["f1"][1])
    assert r["miou"] == pytest.approx((3 / 4 + 2 / 3) / 2)


def test_zero_shot_metrics():
    cm = torch.tensor([[5, 0, 0], [0, 5, 5], [0, 0, 5]])
    r = metrics_from_confusion(cm, ["a", "b", "c"], seen=[0, 1], unseen=[2])
    assert r["miou_seen"] == pytest.approx((1 + 0.5) / 2)
    assert r["miou_unseen"] == pytest.approx(0.5)
    s, u = 0.75, 0.5
    assert r["hiou"] == pytest.approx(2 * s * u / (s + u))


def test_outputs(tmp_path):
    cm = torch.tensor([[3, 1], [0, 0]])
    r = metrics_from_confusion(cm, ["low veg", "car"])
    p = write_metrics_json(tmp_path / "m.json", r, split="test")
    d = json.loads(p.read_text())
    assert d["split"] == "test" and d["iou"][1] == 0.0 and d["recall"][1] is None
    table = format_table(r)
    assert "low veg" in table and "mIoU" in table
    s = scalar_metrics(r, "val/")
    assert s["val/iou_low_veg"] == pytest.approx(0.75)
    png = plot_confusion(cm, ["low veg", "car"], tmp_path / "cm.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_shape_mismatch():
    with pytest.raises(ValueError, match="differ"):
        SegmentationMetrics(["a"]).update(torch.zeros(2, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="does not match"):
        metrics_from_confusion(torch.zeros(2, 2), ["a"])


def test_labels_outside_the_classes_are_counted_and_warned_once(caplog):
    """Labels outside 0..K-1 (not ignore) are left out, counted, named, and warned about once."""
    m = SegmentationMetrics(["a", "b", "c"])
    # 3 classes, ignore 255: the values 3, 7 and -1 are outside 0..2 (4 pixels), 255 is ignore.
    target = torch.tensor([[0, 1, 2, 3], [7, 7, -1, 255]])
    pred = torch.tensor([[0, 1, 1, 0], [0, 1, 2, 0]])
    with caplog.at_level("WARNING", logger="rsprompt.engine.metrics"):
        m.update(pred, target)
        m.update(pred[:1], target[:1])  # one more out-of-range pixel (the 3), no second warning
    r = m.compute()
    # only the 3 + 3 in-range pixels count: a→a, b→b, c→b twice
    assert r["pixels"] == 6 and r["oa"] == pytest.approx(4 / 6)
    assert r["out_of_range_pixels"] == 5
    assert r["out_of_range_values"] == [-1, 3, 7]
    warnings = [rec for rec in caplog.records if "outside the classes" in rec.getMessage()]
    assert len(warnings) == 1
    assert "4 label pixel(s)" in warnings[0].getMessage()
    assert "[-1, 3, 7]" in warnings[0].getMessage()
    assert scalar_metrics(r, "val/")["val/out_of_range_pixels"] == 5.0
    m.reset()
    m.update(pred, torch.zeros_like(target))
    assert m.compute()["out_of_range_pixels"] == 0


def test_only_ignore_is_not_out_of_range(caplog):
    m = SegmentationMetrics(["a", "b"], ignore_index=9)
    with caplog.at_level("WARNING", logger="rsprompt.engine.metrics"):
        m.update(torch.tensor([0, 1, 1]), torch.tensor([0, 9, 1]))
    assert m.compute()["out_of_range_pixels"] == 0
    assert not [rec for rec in caplog.records if "outside the classes" in rec.getMessage()]
