"""The sliding-window test protocol over whole tiles (``rsprompt evaluate``).

Each tile is covered by ``window × window`` crops every ``stride`` pixels (the last crop of a row or
column is shifted back to end on the tile's edge; a tile smaller than the window is zero-padded and
the output cropped). Overlapping outputs are combined either as the papers did — raw logits
**summed** — or **blended** with a smooth (``sin²``-ramp) window on the softmax probabilities. The
argmax is compared with the label over the whole tile; the metrics come from one confusion matrix
(:mod:`rsprompt.engine.metrics`).

Example:
    >>> from rsprompt.engine.checkpoint import load_model_checkpoint  # doctest: +SKIP
    >>> model, meta = load_model_checkpoint("runs/x/model.ckpt")  # doctest: +SKIP
    >>> result = evaluate_checkpoint("runs/x/model.ckpt", "data/vaihingen")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from rsprompt.engine.metrics import (
    SegmentationMetrics,
    format_table,
    plot_confusion,
    write_metrics_json,
)
from rsprompt.models.base import SegmentationModel

Blend = Literal["sum", "cosine"]


def window_offsets(length: int, window: int, stride: int) -> list[int]:
    """Start offsets along one axis: every ``stride``, the last one ending on the edge."""
    if window <= 0 or stride <= 0:
        raise ValueError(f"window and stride must be positive, got {window}, {stride}")
    if length <= window:
        return [0]
    offs = list(range(0, length - window + 1, stride))
    if offs[-1] != length - window:
        offs.append(length - window)
    return offs


def _ramp_weight(window: int, device: torch.device) -> Tensor:
    """2-D weight: ``sin²`` ramps over the outer quarter on each side, 1 inside (never 0)."""
    n = max(1, window // 4)
    w = torch.ones(window, dtype=torch.float32, device=device)
    t = (torch.arange(n, dtype=torch.float32, device=device) + 0.5) / n
    ramp = torch.sin(t * torch.pi / 2) ** 2
    w[:n] = ramp
    w[window - n :] = ramp.flip(0)
    return w[:, None] * w[None, :]


@torch.inference_mode()
def sliding_window_logits(
    model: SegmentationModel,
    image: Tensor,
    aux: Tensor | None = None,
    aux_valid: Tensor | None = None,
    *,
    window: int,
    stride: int,
    blend: Blend = "sum",
    batch_size: int = 8,
) -> Tensor:
    """Scores ``K×H×W`` of a whole tile (summed logits, or blended probabilities).

    Args:
        model: Model in eval mode (returns ``B×K×h×w`` logits).
        image: ``C×H×W`` normalised optical tile (on the model's device).
        aux: ``A×H×W`` aux tile or ``None``.
        aux_valid: ``1×H×W`` aux validity or ``None``.
        window: Crop size.
        stride: Step between crops.
        blend: ``sum`` (raw logits summed, the papers' protocol) or ``cosine``.
        batch_size: Crops per forward pass.
    """
    _, h, w = image.shape
    ph, pw = max(0, window - h), max(0, window - w)

    def pad(x: Tensor | None) -> Tensor | None:
        if x is None or (ph == 0 and pw == 0):
            return x
        return torch.nn.functional.pad(x, (0, pw, 0, ph))

    image, aux, aux_valid = pad(image), pad(aux), pad(aux_valid)
    hh, ww = image.shape[-2:]
    coords = [
        (r, c)
        for r in window_offsets(hh, window, stride)
        for c in window_offsets(ww, window, stride)
    ]
    weight = _ramp_weight(window, image.device) if blend == "cosine" else None
    acc: Tensor | None = None
    norm = torch.zeros(1, hh, ww, device=image.device)
    for i in range(0, len(coords), batch_size):
        chunk = coords[i : i + batch_size]

        def crops(x: Tensor | None, chunk=chunk) -> Tensor | None:
            if x is None:
                return None
            return torch.stack([x[:, r : r + window, c : c + window] for r, c in chunk])

        out = model(crops(image), crops(aux), crops(aux_valid))
        if isinstance(out, dict):
            out = out["logits"]
        out = out.float()
        if acc is None:
            acc = torch.zeros(out.shape[1], hh, ww, device=image.device)
        if blend == "cosine":
            out = out.softmax(1) * weight
        for (r, c), o in zip(chunk, out, strict=True):
            acc[:, r : r + window, c : c + window] += o
            norm[:, r : r + window, c : c + window] += 1.0 if weight is None else weight
    assert acc is not None
    return (acc / norm.clamp_min(1e-12))[:, :h, :w]


def evaluate_tiles(
    model: SegmentationModel,
    tiles: Iterable[dict[str, Any]],
    class_names: Sequence[str],
    *,
    window: int,
    stride: int,
    blend: Blend = "sum",
    batch_size: int = 8,
    ignore_index: int = 255,
    mean_classes: Sequence[int] | None = None,
    seen: Sequence[int] | None = None,
    unseen: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    total: int | None = None,
) -> tuple[dict[str, Any], Tensor]:
    """Run the sliding-window protocol over ``tiles`` and compute the metrics.

    Args:
        model: The model (put in eval mode here).
        tiles: Dicts with numpy ``image`` (C×H×W), ``aux``, ``aux_valid``, ``mask`` (H×W) and
            ``name`` — as :meth:`rsprompt.data.datamodules.MultimodalDataModule.tiles` yields.
        class_names: Class names.
        window: Crop size.
        stride: Stride.
        blend: ``sum`` or ``cosine``.
        batch_size: Crops per forward pass.
        ignore_index: Label excluded from the metrics.
        mean_classes: Classes averaged into mIoU/mF1.
        seen: Seen classes (zero-shot metrics).
        unseen: Unseen classes.
        device: Device.
        progress: Show a progress bar.
        total: Number of tiles (for the progress bar).

    Returns:
        ``(result, confusion matrix)``; ``result`` has the metrics plus ``tiles`` (per-tile OA
        and mIoU).
    """
    model = model.to(device).eval()
    metrics = SegmentationMetrics(class_names, ignore_index, mean_classes, seen, unseen).to(device)
    uses_aux = model.aux_channels > 0
    per_tile: list[dict[str, Any]] = []
    for tile in tqdm(tiles, total=total, desc="evaluate", unit="tile", disable=not progress):
        image = torch.as_tensor(np.asarray(tile["image"]), dtype=torch.float32, device=device)
        aux = valid = None
        if uses_aux and tile.get("aux") is not None:
            aux = torch.as_tensor(np.asarray(tile["aux"]), dtype=torch.float32, device=device)
            v = tile.get("aux_valid")
            valid = (
                None
                if v is None
                else torch.as_tensor(np.asarray(v), dtype=torch.float32, device=device)
            )
        scores = sliding_window_logits(
            model,
            image,
            aux,
            valid,
            window=window,
            stride=stride,
            blend=blend,
            batch_size=batch_size,
        )
        pred = scores.argmax(0)
        target = torch.as_tensor(np.asarray(tile["mask"]).astype(np.int64), device=device)
        metrics.update(pred, target)
        one = SegmentationMetrics(class_names, ignore_index, mean_classes).to(device)
        one.update(pred, target)
        r = one.compute()
        per_tile.append(
            {"name": str(tile.get("name")), "oa": r["oa"], "miou": r["miou"], "pixels": r["pixels"]}
        )
    cm = metrics.confusion().cpu()
    result = metrics.compute()
    result["tiles"] = per_tile
    return result, cm


def _import(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def datamodule_from_meta(meta: dict[str, Any], root: str | Path, **overrides: Any) -> Any:
    """Rebuild the checkpoint's datamodule on ``root`` with its normalisation and options.

    Raises:
        ValueError: If the checkpoint records no datamodule.
    """
    path = meta.get("datamodule")
    if not path:
        raise ValueError("the checkpoint records no datamodule (was it trained by rsprompt train?)")
    cls = _import(path)
    kwargs = dict(meta.get("datamodule_kwargs") or {})
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    if meta.get("patch_size"):
        kwargs.setdefault("patch_size", meta["patch_size"])
    if meta.get("normalization") is not None:
        kwargs.setdefault("normalization", meta["normalization"])
    kwargs.setdefault("augment", False)
    return cls(root, **kwargs)


def evaluate_checkpoint(
    checkpoint: str | Path,
    root: str | Path,
    *,
    split: str = "test",
    window: int | None = None,
    stride: int | None = None,
    blend: Blend | None = None,
    batch_size: int = 8,
    weights: str | None = None,
    device: str | None = None,
    output: str | Path | None = None,
    dataset_overrides: dict[str, Any] | None = None,
    progress: bool = True,
    echo: Any = print,
) -> dict[str, Any]:
    """Evaluate ``model.ckpt`` on a split of the dataset at ``root``; write JSON and PNG.

    Defaults come from the checkpoint (window/stride/blend recorded by training, else the patch
    size and half of it).

    Returns:
        The metrics (also written to ``<output>/metrics.json``; the confusion matrix to
        ``<output>/confusion.png``).
    """
    from rsprompt.engine.checkpoint import load_model_checkpoint

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, meta = load_model_checkpoint(checkpoint, weights=weights, device=dev)
    ev = meta.get("evaluation") or {}
    window = int(window or ev.get("window") or meta.get("patch_size") or 256)
    stride = int(stride or ev.get("stride") or max(1, window // 2))
    blend = blend or ev.get("blend") or "sum"
    dm = datamodule_from_meta(meta, root, **(dataset_overrides or {}))
    names = list(meta["classes"])
    unseen_names = meta.get("unseen_classes") or []
    lower = [n.lower() for n in names]
    unseen = [lower.index(n.lower()) for n in unseen_names] if unseen_names else None
    seen = [i for i in range(len(names)) if i not in (unseen or [])] if unseen else None
    try:
        ds = dm.dataset(split)
        total = len(ds.tiles)
    except Exception:
        total = None
    try:
        result, cm = evaluate_tiles(
            model,
            dm.tiles(split),
            names,
            window=window,
            stride=stride,
            blend=blend,
            batch_size=batch_size,
            ignore_index=int(meta.get("ignore_index", 255)),
            mean_classes=meta.get("mean_classes"),
            seen=seen,
            unseen=unseen,
            device=dev,
            progress=progress,
            total=total,
        )
    finally:
        for d in (getattr(dm, "datasets", None) or {}).values():
            if callable(getattr(d, "close", None)):
                d.close()
    out = Path(output) if output is not None else Path(checkpoint).parent / f"eval_{split}"
    extra = {
        "checkpoint": str(checkpoint),
        "root": str(root),
        "split": split,
        "window": window,
        "stride": stride,
        "blend": blend,
        "method": meta["method"],
        "encoder": meta["encoder"],
    }
    write_metrics_json(out / "metrics.json", result, **extra)
    plot_confusion(cm, names, out / "confusion.png")
    result["confusion_matrix"] = cm.tolist()
    write_metrics_json(out / "metrics.json", result, **extra)
    if echo is not None:
        echo(format_table(result))
        echo(f"metrics: {out / 'metrics.json'}  confusion matrix: {out / 'confusion.png'}")
    return {**extra, **result, "output": str(out)}
