"""Segmentation metrics: OA, per-class IoU/F1, mIoU, mF1, and the zero-shot seen/unseen/hIoU.

Everything is computed from one confusion matrix (rows = target, columns = prediction) accumulated
by torchmetrics' :class:`~torchmetrics.classification.MulticlassConfusionMatrix`, so the metrics
synchronise across DDP processes and pixels labelled ``ignore_index`` never count.

Conventions:

- ``mean_classes``: the classes averaged into mIoU/mF1 (default all). The ISPRS convention
  (:func:`isprs_mean_classes`) reports OA over all 6 classes and mIoU/mF1 without clutter.
- Classes absent from both target and prediction have an undefined IoU/F1 (NaN): they are left
  out of the means (``nanmean``) and written as ``null`` in JSON.
- Zero-shot (RPN): ``seen``/``unseen`` class indices add ``miou_seen``, ``miou_unseen`` and
  their harmonic mean ``hiou`` (see :mod:`rsprompt.engine.zeroshot`).

Example:
    >>> import torch
    >>> m = SegmentationMetrics(["a", "b"])
    >>> m.update(torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, 1], [0, 255]]))
    >>> r = m.compute()
    >>> round(r["oa"], 4), [round(v, 4) for v in r["iou"]]
    (0.6667, [0.5, 0.5])
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassConfusionMatrix

from rsprompt.engine.zeroshot import harmonic_mean

log = logging.getLogger(__name__)

IGNORE_INDEX = 255
#: At most this many distinct out-of-range label values are named in the warning.
_VALUES_SHOWN = 10


def isprs_mean_classes(class_names: Sequence[str]) -> list[int]:
    """Indices averaged by the ISPRS convention: every class but ``clutter`` (case-insensitive)."""
    return [i for i, n in enumerate(class_names) if n.lower().replace("_", " ") != "clutter"]


def _nanmean(values: Tensor) -> float:
    v = values[~torch.isnan(values)]
    return float(v.mean()) if v.numel() else float("nan")


def metrics_from_confusion(
    cm: Tensor,
    class_names: Sequence[str],
    mean_classes: Sequence[int] | None = None,
    seen: Sequence[int] | None = None,
    unseen: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Compute every metric from a ``K×K`` confusion matrix (rows = target).

    Args:
        cm: Confusion matrix, ignore pixels already excluded.
        class_names: Names of the ``K`` classes.
        mean_classes: Classes averaged into ``miou``/``mf1`` (``None``: all).
        seen: Seen classes (zero-shot protocol); with ``unseen`` adds ``miou_seen``,
            ``miou_unseen`` and ``hiou``.
        unseen: Unseen classes.

    Returns:
        ``{"oa", "miou", "mf1", "iou", "f1", "precision", "recall", "support", "classes",
        "mean_classes", "pixels"}`` (+ zero-shot keys); per-class values are lists (NaN where
        undefined).

    Raises:
        ValueError: If the matrix is not ``K×K`` for ``K = len(class_names)``.
    """
    k = len(class_names)
    if cm.shape != (k, k):
        raise ValueError(f"confusion matrix {tuple(cm.shape)} does not match {k} class names")
    cm = cm.detach().double().cpu()
    tp = cm.diagonal()
    support = cm.sum(1)
    predicted = cm.sum(0)
    union = support + predicted - tp
    nan = torch.full_like(tp, float("nan"))
    iou = torch.where(union > 0, tp / union.clamp_min(1), nan)
    f1 = torch.where(support + predicted > 0, 2 * tp / (support + predicted).clamp_min(1), nan)
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), nan)
    recall = torch.where(support > 0, tp / support.clamp_min(1), nan)
    total = float(cm.sum())
    idx = list(range(k)) if mean_classes is None else [int(i) for i in mean_classes]
    out: dict[str, Any] = {
        "oa": float(tp.sum() / total) if total > 0 else float("nan"),
        "miou": _nanmean(iou[idx]),
        "mf1": _nanmean(f1[idx]),
        "iou": iou.tolist(),
        "f1": f1.tolist(),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "support": [int(s) for s in support.tolist()],
        "classes": list(class_names),
        "mean_classes": idx,
        "pixels": int(total),
    }
    if seen is not None and unseen is not None:
        s = _nanmean(iou[list(seen)]) if len(seen) else float("nan")
        u = _nanmean(iou[list(unseen)]) if len(unseen) else float("nan")
        out.update(miou_seen=s, miou_unseen=u, hiou=harmonic_mean(s, u))
    return out


class _PixelCount(Metric):
    """An exact (int64) pixel count, summed across DDP processes."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, count: Tensor) -> None:
        """Add ``count`` pixels."""
        self.count += count.to(self.count.device, torch.long)

    def compute(self) -> Tensor:
        """The total count."""
        return self.count


class SegmentationMetrics(nn.Module):
    """Accumulate a confusion matrix over batches and compute :func:`metrics_from_confusion`.

    Args:
        class_names: Class names (``K`` = their number).
        ignore_index: Label excluded from every metric.
        mean_classes: Classes averaged into mIoU/mF1 (``None``: all).
        seen: Seen classes for the zero-shot metrics (``None``: not reported).
        unseen: Unseen classes.
        warn: Log a warning (once per instance) when labels outside ``0..K-1`` (other than
            ``ignore_index``) are found.

    Labels outside ``0..K-1`` that are not ``ignore_index`` (a decoding error, a label raster of
    another dataset) are left out of the confusion matrix, counted, and reported by
    :meth:`compute` as ``out_of_range_pixels`` (with ``out_of_range_values``): they are never
    silently dropped.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        ignore_index: int = IGNORE_INDEX,
        mean_classes: Sequence[int] | None = None,
        seen: Sequence[int] | None = None,
        unseen: Sequence[int] | None = None,
        warn: bool = True,
    ) -> None:
        super().__init__()
        self.class_names = list(class_names)
        self.ignore_index = ignore_index
        self.mean_classes = None if mean_classes is None else list(mean_classes)
        self.seen = None if seen is None else list(seen)
        self.unseen = None if unseen is None else list(unseen)
        self.warn = warn
        self.confmat = MulticlassConfusionMatrix(
            len(self.class_names), ignore_index=ignore_index, validate_args=False
        )
        # A torchmetrics sum, so the count is synchronised across DDP processes like the matrix.
        self.out_of_range = _PixelCount()
        self.out_of_range_values: set[int] = set()
        self._warned = False

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch: ``pred`` class indices (or ``B×K×H×W`` logits) and ``target`` labels."""
        if pred.ndim == target.ndim + 1:
            pred = pred.argmax(1)
        if pred.shape != target.shape:
            raise ValueError(
                f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ"
            )
        target = target.long()
        # Labels outside 0..K-1 (other than ignore) would break the bincount: leave them out of
        # the matrix, but count them (a decoding error must not silently inflate the scores).
        bad = ((target < 0) | (target >= self.num_classes)) & (target != self.ignore_index)
        count = int(bad.sum())
        self.out_of_range.update(torch.tensor(count))
        if count:
            self._note_out_of_range(target[bad], count)
            target = target.masked_fill(bad, self.ignore_index)
        self.confmat.update(pred.long(), target)

    def _note_out_of_range(self, values: Tensor, count: int) -> None:
        """Remember the out-of-range label values; warn the first time."""
        self.out_of_range_values.update(int(v) for v in values.unique().tolist())
        if self.warn and not self._warned:
            self._warned = True
            shown = sorted(self.out_of_range_values)[:_VALUES_SHOWN]
            log.warning(
                "%d label pixel(s) hold value(s) %s outside the classes 0..%d (ignore index %d): "
                "they are left out of the metrics and counted as out_of_range_pixels; check the "
                "label decoding (label variant, keep_background, dataset)",
                count,
                shown,
                self.num_classes - 1,
                self.ignore_index,
            )

    def confusion(self) -> Tensor:
        """The accumulated (DDP-synchronised) confusion matrix, int64 ``K×K``."""
        return self.confmat.compute().long()

    def out_of_range_pixels(self) -> int:
        """Label pixels outside ``0..K-1`` (not ``ignore_index``) seen since the last reset.

        Synchronised across DDP processes like the confusion matrix (every rank must call it).
        """
        return int(self.out_of_range.compute())

    def compute(self) -> dict[str, Any]:
        """Every metric of the accumulated confusion matrix, plus the out-of-range label count."""
        out = metrics_from_confusion(
            self.confusion(), self.class_names, self.mean_classes, self.seen, self.unseen
        )
        out["out_of_range_pixels"] = self.out_of_range_pixels()
        out["out_of_range_values"] = sorted(self.out_of_range_values)
        return out

    def reset(self) -> None:
        """Clear the accumulated matrix and the out-of-range count."""
        self.confmat.reset()
        self.out_of_range.reset()
        self.out_of_range_values = set()


def scalar_metrics(result: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Scalar metrics for a logger: the means plus ``iou_<class>``/``f1_<class>``."""
    out = {
        f"{prefix}{k}": float(result[k])
        for k in ("oa", "miou", "mf1", "miou_seen", "miou_unseen", "hiou", "out_of_range_pixels")
        if k in result
    }
    for name, iou, f1 in zip(result["classes"], result["iou"], result["f1"], strict=True):
        key = name.replace(" ", "_")
        out[f"{prefix}iou_{key}"] = float(iou)
        out[f"{prefix}f1_{key}"] = float(f1)
    return out


def _json_safe(x: Any) -> Any:
    if isinstance(x, float):
        return None if math.isnan(x) or math.isinf(x) else x
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    if isinstance(x, Tensor):
        return _json_safe(x.tolist())
    return x


def write_metrics_json(path: str | Path, result: dict[str, Any], **extra: Any) -> Path:
    """Write ``result`` (plus ``extra`` keys) as JSON, NaN as ``null``, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_json_safe({**extra, **result}), indent=2) + "\n")
    tmp.replace(path)
    return path


def format_table(result: dict[str, Any]) -> str:
    """A per-class table (IoU, F1, precision, recall, support) plus the means, as text."""
    names = result["classes"]
    width = max(12, *(len(n) for n in names))
    means = set(result.get("mean_classes", range(len(names))))
    lines = [
        f"{'class':<{width}}  {'IoU':>6}  {'F1':>6}  {'prec':>6}  {'recall':>6}  {'pixels':>11}"
    ]

    def pct(v: float) -> str:
        return "   n/a" if v != v else f"{100 * v:6.2f}"

    for i, n in enumerate(names):
        mark = "" if i in means else "  (not in means)"
        lines.append(
            f"{n:<{width}}  {pct(result['iou'][i])}  {pct(result['f1'][i])}  "
            f"{pct(result['precision'][i])}  {pct(result['recall'][i])}  "
            f"{result['support'][i]:>11,}{mark}"
        )
    lines.append("-" * len(lines[0]))
    summary = f"OA {pct(result['oa']).strip()}  mIoU {pct(result['miou']).strip()}  mF1 {pct(result['mf1']).strip()}"
    if "hiou" in result:
        summary += (
            f"  mIoU(seen) {pct(result['miou_seen']).strip()}  "
            f"mIoU(unseen) {pct(result['miou_unseen']).strip()}  hIoU {pct(result['hiou']).strip()}"
        )
    lines.append(summary)
    return "\n".join(lines)


def plot_confusion(
    cm: Tensor, class_names: Sequence[str], path: str | Path, normalize: bool = True
) -> Path:
    """Save the confusion matrix as a PNG (rows = target, normalised per row by default)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    m = cm.detach().double().cpu()
    if normalize:
        m = m / m.sum(1, keepdim=True).clamp_min(1)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * k, 0.8 + 0.7 * k), dpi=100)
    im = ax.imshow(m.numpy(), cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(k), list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(k), list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("target")
    for i in range(k):
        for j in range(k):
            v = float(m[i, j])
            ax.text(
                j,
                i,
                f"{v:.2f}" if normalize else f"{int(v)}",
                ha="center",
                va="center",
                color="white" if (v > 0.5 if normalize else False) else "black",
                fontsize=8,
            )
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path
