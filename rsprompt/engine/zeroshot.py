"""Zero-shot (open-vocabulary) protocol helpers: pure torch functions.

Protocol (RPN, ZegCLIP and others): the classes of a dataset are split into *seen* and *unseen*.
Training sees only the seen class names and ignores the pixels of unseen classes; at test time
all names are given and the metrics are reported separately:

- mIoU over the seen classes, mIoU over the unseen classes,
- hIoU = harmonic mean of the two: ``2·s·u / (s + u)``.

The training task (:class:`rsprompt.engine.task.SegmentationTask`) splits the classes with
:func:`split_classes` and relabels each batch with :func:`to_seen_targets`; the metrics
(:func:`rsprompt.engine.metrics.metrics_from_confusion` with ``seen``/``unseen``) report the
seen/unseen mIoU and their :func:`harmonic_mean`.

Example:
    >>> import torch
    >>> names = ["road", "building", "tree", "car"]
    >>> seen, unseen = split_classes(names, unseen=["car"])
    >>> seen, unseen
    ([0, 1, 2], [3])
    >>> to_seen_targets(torch.tensor([0, 3, 2, 255]), seen, num_classes=4).tolist()
    [0, 255, 2, 255]
    >>> round(harmonic_mean(0.6, 0.3), 4)
    0.4
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


def harmonic_mean(a: float, b: float) -> float:
    """``2ab/(a+b)`` (0 when both are 0, NaN when either is NaN)."""
    if a != a or b != b:  # NaN
        return float("nan")
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)
