"""Zero-shot (open-vocabulary) protocol helpers: pure torch functions.

Protocol (RPN, ZegCLIP and others): the classes of a dataset are split into *seen* and *unseen*.
Training sees only the seen class names and ignores the pixels of unseen classes; at test time
all names are given and the metrics are reported separately:

- mIoU over the seen classes, mIoU over the unseen classes,
- hIoU = harmonic mean of the two: ``2·s·u / (s + u)``.

Typical use::

    seen, unseen = split_classes(names, unseen=["car", "tree"])
    train_target = to_seen_targets(target, seen)          # labels in 0..S-1, unseen → 255
    model.set_vocabulary([names[i] for i in seen])        # training vocabulary
    ...
    model.set_vocabulary(names)                           # test vocabulary: all classes
    cm = confusion_matrix(pred, target, len(names))
    zero_shot_metrics(cm, seen, unseen)   # {"miou_seen": …, "miou_unseen": …, "hiou": …}
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

IGNORE_INDEX = 255


def split_classes(names: Sequence[str], unseen: Sequence[str | int]) -> tuple[list[int], list[int]]:
    """Split class indices into seen and unseen.

    Args:
        names: All class names (index ``i`` is class ``i``).
        unseen: Unseen classes, by name (case-insensitive) or index.

    Returns:
        ``(seen_ids, unseen_ids)``, both sorted.

    Raises:
        ValueError: Unknown name/index, or no seen class left.
    """
    lower = [n.lower() for n in names]
    ids: set[int] = set()
    for u in unseen:
        if isinstance(u, int):
            if not 0 <= u < len(names):
                raise ValueError(f"unseen class index {u} out of range 0..{len(names) - 1}")
            ids.add(u)
        elif u.lower() in lower:
            ids.add(lower.index(u.lower()))
        else:
            raise ValueError(f"unseen class {u!r} is not one of {list(names)}")
    seen = [i for i in range(len(names)) if i not in ids]
    if not seen:
        raise ValueError("every class is unseen: at least one seen class is needed for training")
    return seen, sorted(ids)


def mask_unseen(
    target: Tensor, unseen_ids: Sequence[int], ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """Return a copy of ``target`` with the pixels of unseen classes set to ``ignore_index``.

    Class indices stay those of the full vocabulary.
    """
    out = target.clone()
    if len(unseen_ids):
        ids = torch.as_tensor(list(unseen_ids), dtype=target.dtype, device=target.device)
        out[torch.isin(target, ids)] = ignore_index
    return out


def seen_label_map(
    num_classes: int, seen_ids: Sequence[int], ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """Look-up table full label → training label (seen classes → 0..S-1, others → ignore).

    The table has ``max(num_classes, ignore_index + 1)`` entries; ``ignore_index`` maps to itself.
    """
    size = max(num_classes, ignore_index + 1)
    lut = torch.full((size,), ignore_index, dtype=torch.long)
    for new, old in enumerate(seen_ids):
        if not 0 <= old < num_classes:
            raise ValueError(f"seen class index {old} out of range 0..{num_classes - 1}")
        lut[old] = new
    return lut


def to_seen_targets(
    target: Tensor,
    seen_ids: Sequence[int],
    num_classes: int | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Relabel ``target`` for training on the seen vocabulary only.

    Seen class ``seen_ids[j]`` becomes ``j``; unseen classes and ``ignore_index`` become
    ``ignore_index``. The result matches a model whose vocabulary is
    ``[names[i] for i in seen_ids]``.

    Args:
        target: Integer labels of the full vocabulary (any shape).
        seen_ids: Seen class indices, in the order of the training vocabulary.
        num_classes: Classes of the full vocabulary (default: ``max(seen_ids) + 1``).
        ignore_index: Label that takes no part in losses/metrics.
    """
    n = num_classes if num_classes is not None else max(seen_ids) + 1
    lut = seen_label_map(n, seen_ids, ignore_index).to(target.device)
    t = target.long()
    out = torch.full_like(t, ignore_index)
    valid = (t >= 0) & (t < len(lut))
    out[valid] = lut[t[valid]]
    return out.to(target.dtype)


def confusion_matrix(
    pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """``K×K`` int64 confusion matrix (rows = target, columns = prediction), ignore excluded.

    Raises:
        ValueError: Shapes differ.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    p = pred.reshape(-1).long()
    t = target.reshape(-1).long()
    keep = (t != ignore_index) & (t >= 0) & (t < num_classes) & (p >= 0) & (p < num_classes)
    idx = t[keep] * num_classes + p[keep]
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def iou_per_class(cm: Tensor) -> Tensor:
    """IoU of every class from a confusion matrix; NaN for classes absent from target and pred."""
    cm = cm.double()
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))


def _nanmean(x: Tensor) -> float:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if x.numel() else float("nan")


def harmonic_mean(a: float, b: float) -> float:
    """``2ab/(a+b)`` (0 when both are 0, NaN when either is NaN)."""
    if a != a or b != b:  # NaN
        return float("nan")
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def zero_shot_metrics(
    cm: Tensor, seen_ids: Sequence[int], unseen_ids: Sequence[int]
) -> dict[str, float | list[float]]:
    """Return mIoU over seen classes, mIoU over unseen classes, their harmonic mean and mIoU.

    Classes that occur neither in the targets nor in the predictions (NaN IoU) are left out of
    the means.

    Returns:
        ``{"miou_seen", "miou_unseen", "hiou", "miou", "iou"}`` (``iou``: per-class list).
    """
    iou = iou_per_class(cm)
    seen = _nanmean(iou[list(seen_ids)]) if len(seen_ids) else float("nan")
    unseen = _nanmean(iou[list(unseen_ids)]) if len(unseen_ids) else float("nan")
    return {
        "miou_seen": seen,
        "miou_unseen": unseen,
        "hiou": harmonic_mean(seen, unseen),
        "miou": _nanmean(iou),
        "iou": iou.tolist(),
    }
