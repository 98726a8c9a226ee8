"""The sliding-window test protocol over whole tiles (``rsprompt evaluate``).

Each tile is covered by ``window × window`` crops every ``stride`` pixels: the window plan of scene
prediction (:mod:`rsprompt.tiling`, ``overlap = window - stride``; the last crop of a row or column
is shifted back to end on the tile's edge; a tile smaller than the window is zero-padded and the
output cropped). Overlapping outputs are combined either as the papers did — raw logits
**summed** — or **blended** with the blending weights of scene prediction (``sin²`` ramps over the
overlaps, 1 along the tile's edges) on the softmax probabilities. The argmax is compared with the
label over the whole tile; the metrics come from one confusion matrix
(:mod:`rsprompt.engine.metrics`).

Example:
    >>> from rsprompt.engine.checkpoint import load_model_checkpoint  # doctest: +SKIP
    >>> model, meta = load_model_checkpoint("runs/x/model.ckpt")  # doctest: +SKIP
    >>> result = evaluate_checkpoint("runs/x/model.ckpt", "data/vaihingen")  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

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
from rsprompt.engine.precision import autocast
from rsprompt.models.base import SegmentationModel
from rsprompt.tiling import Blend, WeightCache, Window, window_grid


class EvaluateError(ValueError):
    """Evaluation cannot run as asked (the message names the file or option and the problem)."""


def _torch_weight(cache: WeightCache, win: Window, device: torch.device, memo: dict) -> Tensor:
    """``cache(win)`` as a tensor on ``device`` (converted once per distinct array)."""
    array = cache(win)
    key = id(array)
    if key not in memo:
        memo[key] = (array, torch.from_numpy(array).to(device))
    return memo[key][1]


@torch.inference_mode()
def sliding_window_scores(
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
    """Scores ``K×H×W`` of a whole tile: mean logits (``sum``) or blended probabilities.

    The windows are those of scene prediction (:func:`rsprompt.tiling.window_grid` with
    ``overlap = window - stride``: one every ``stride`` pixels, the last shifted inside the tile;
    a tile smaller than the window is one window, zero-padded for the model and cropped back).
    ``sum`` is the papers' protocol: raw logits summed, divided by the number of windows (the
    argmax is that of the sum). ``cosine`` weighs each window's softmax probabilities with
    :func:`rsprompt.tiling.window_weight`, exactly as ``predict_scene`` blends, and divides by the
    accumulated weight.

    Args:
        model: Model in eval mode (returns ``B×K×h×w`` logits).
        image: ``C×H×W`` normalised optical tile (on the model's device).
        aux: ``A×H×W`` aux tile or ``None``.
        aux_valid: ``1×H×W`` aux validity or ``None``.
        window: Crop size.
        stride: Step between crops (at most ``window``).
        blend: ``sum`` (raw logits, the papers' protocol) or ``cosine``.
        batch_size: Crops per forward pass.

    Raises:
        ValueError: ``window`` or ``stride`` not positive, or ``stride > window`` (gaps).
    """
    if window <= 0 or stride <= 0:
        raise ValueError(f"window and stride must be positive, got {window}, {stride}")
    if stride > window:
        raise ValueError(f"stride {stride} is larger than the window {window}: gaps between crops")
    _, h, w = image.shape
    wins = window_grid(h, w, window, window - stride)
    weights = WeightCache(h, w, window - stride, blend)
    memo: dict[int, tuple[Any, Tensor]] = {}
    acc: Tensor | None = None
    norm = torch.zeros(1, h, w, device=image.device)
    for i in range(0, len(wins), batch_size):
        chunk = wins[i : i + batch_size]
        out = model(*(_crops(x, chunk, window) for x in (image, aux, aux_valid)))
        if isinstance(out, dict):
            out = out["logits"]
        out = out.float()[..., : chunk[0].height, : chunk[0].width]
        if acc is None:
            acc = torch.zeros(out.shape[1], h, w, device=image.device)
        if blend == "cosine":
            out = out.softmax(1)
        for win, o in zip(chunk, out, strict=True):
            rs, cs = slice(win.row, win.row_end), slice(win.col, win.col_end)
            if blend == "sum":
                acc[:, rs, cs] += o
                norm[:, rs, cs] += 1.0
            else:
                wt = _torch_weight(weights, win, image.device, memo)
                acc[:, rs, cs] += o * wt
                norm[:, rs, cs] += wt
    assert acc is not None
    return acc / norm.clamp_min(1e-12)


def _crops(x: Tensor | None, chunk: list[Window], window: int) -> Tensor | None:
    """The windows of ``x`` stacked, zero-padded to ``window`` when the tile is smaller."""
    if x is None:
        return None
    crops = torch.stack([x[:, w.row : w.row_end, w.col : w.col_end] for w in chunk])
    ph, pw = window - crops.shape[-2], window - crops.shape[-1]
    if ph > 0 or pw > 0:
        crops = torch.nn.functional.pad(crops, (0, max(pw, 0), 0, max(ph, 0)))
    return crops


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
    precision: str = "32",
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
        precision: ``"32"``, ``"bf16"`` or ``"16"`` (resolved, see
            :func:`rsprompt.engine.precision.resolve_precision`): the model's forward pass runs
            under autocast; blending, argmax and metrics stay float32.

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
        with autocast(device, precision):
            scores = sliding_window_scores(
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
        one = SegmentationMetrics(class_names, ignore_index, mean_classes, warn=False).to(device)
        one.update(pred, target)
        r = one.compute()
        per_tile.append(
            {
                "name": str(tile.get("name")),
                "oa": r["oa"],
                "miou": r["miou"],
                "pixels": r["pixels"],
                "out_of_range_pixels": r["out_of_range_pixels"],
            }
        )
    cm = metrics.confusion().cpu()
    result = metrics.compute()
    result["tiles"] = per_tile
    return result, cm


def datamodule_class(name: str, source: str | Path = "checkpoint") -> type:
    """The registered rsprompt datamodule a checkpoint names (nothing is imported by name).

    Args:
        name: ``meta["datamodule"]``: the class path recorded by training
            (``rsprompt.data.datamodules.VaihingenDataModule``), a class name or a dataset name
            (``vaihingen``).
        source: Name of the checkpoint, for messages.

    Raises:
        CheckpointError: If ``name`` is not one of :data:`rsprompt.data.datamodules.DATAMODULES`.
    """
    from rsprompt.data.datamodules import DATAMODULES
    from rsprompt.engine.checkpoint import CheckpointError

    known: dict[str, type] = {}
    for key, cls in DATAMODULES.items():
        for alias in (key, cls.__name__, f"{cls.__module__}.{cls.__qualname__}"):
            known[alias] = cls
    if not isinstance(name, str) or name not in known:
        raise CheckpointError(
            f"{source}: the checkpoint names the datamodule {name!r}, which is not an rsprompt "
            f"datamodule ({', '.join(sorted(DATAMODULES))}); evaluate rebuilds registered "
            f"datamodules only"
        )
    return known[name]


def _keywords(cls: type) -> set[str]:
    """Keyword names ``cls(...)`` accepts, following ``**kwargs`` to its dataset class."""
    names: set[str] = set()
    for c in (cls, getattr(cls, "dataset_class", None)):
        if c is None:
            break
        params = inspect.signature(c.__init__).parameters
        names |= {
            n
            for n, p in params.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"
        }
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            break
    return names - _NOT_FROM_CHECKPOINT


#: Constructor arguments a checkpoint never sets: given by evaluate itself, or code (callables).
_NOT_FROM_CHECKPOINT = frozenset({"root", "split", "augment", "transforms"})


#: Keyword values a checkpoint may hand to a datamodule (plain JSON scalars).
_SCALARS = (str, int, float, bool, type(None))


def _checked_kwargs(cls: type, kwargs: dict[str, Any], source: str | Path) -> dict[str, Any]:
    """Keep ``kwargs`` only when ``cls`` accepts every name and every value is a JSON scalar."""
    from rsprompt.engine.checkpoint import CheckpointError

    accepted = _keywords(cls)
    unknown = sorted(k for k in kwargs if k not in accepted)
    if unknown:
        raise CheckpointError(
            f"{source}: {cls.__name__} takes no option(s) {', '.join(map(repr, unknown))} "
            f"(recorded in the checkpoint or given on the command line)"
        )
    bad = sorted(k for k, v in kwargs.items() if not isinstance(v, _SCALARS))
    if bad:
        raise CheckpointError(
            f"{source}: datamodule option(s) {', '.join(map(repr, bad))} must be plain values"
        )
    return kwargs


def _checked_normalization(record: Any, source: str | Path) -> Any:
    """The checkpoint's normalisation as a Normalization, or a clear error naming the file."""
    from rsprompt.data.normalize import Normalization
    from rsprompt.engine.checkpoint import CheckpointError

    try:
        return Normalization.from_dict(record)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: malformed normalization record: {e}") from None


def datamodule_from_meta(
    meta: dict[str, Any], root: str | Path, *, source: str | Path = "checkpoint", **overrides: Any
) -> Any:
    """Rebuild the checkpoint's datamodule on ``root`` with its normalisation and options.

    Only registered rsprompt datamodules are rebuilt (:func:`datamodule_class`), with options
    their constructor (or their dataset's) takes, as plain values: nothing named by a checkpoint
    is imported or called.

    Raises:
        ValueError: If the checkpoint records no datamodule.
        CheckpointError: An unknown datamodule, unknown or non-plain options, or a malformed
            normalisation record.
    """
    path = meta.get("datamodule")
    if not path:
        raise ValueError("the checkpoint records no datamodule (was it trained by rsprompt train?)")
    cls = datamodule_class(path, source)
    kwargs = meta.get("datamodule_kwargs") or {}
    if not isinstance(kwargs, dict):
        from rsprompt.engine.checkpoint import CheckpointError

        raise CheckpointError(f"{source}: malformed datamodule_kwargs {kwargs!r}")
    kwargs = dict(kwargs)
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    if meta.get("patch_size"):
        kwargs.setdefault("patch_size", meta["patch_size"])
    kwargs.pop("augment", None)
    kwargs = _checked_kwargs(cls, kwargs, source)
    if meta.get("normalization") is not None:
        kwargs["normalization"] = _checked_normalization(meta["normalization"], source)
    return cls(root, augment=False, **kwargs)


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise EvaluateError(f"{name} must be a positive integer, got {value!r}")
    if value < 1:
        raise EvaluateError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_output_folder(out: str | Path) -> Path:
    """Check, before any work, that ``out`` is (or can be created as) a writable folder.

    Nothing is created here.

    Raises:
        EvaluateError: ``out`` (or a parent) is a file, or the folder is not writable.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EvaluateError(f"output {out} exists and is not a folder")
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise EvaluateError(f"cannot create the output folder {out}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise EvaluateError(f"output folder {out} cannot be written ({probe} is read-only)")
    return out


def check_labels(dataset: Any, split: str, root: str | Path) -> None:
    """Every tile to score has a label file.

    Raises:
        EvaluateError: Naming the tiles without labels.
    """
    missing = [t.name for t in getattr(dataset, "tiles", []) if getattr(t, "label", "") is None]
    if missing:
        names = ", ".join(missing[:10]) + (" …" if len(missing) > 10 else "")
        raise EvaluateError(
            f"no labels for tile {names} (split {split!r} under {root}): evaluation needs the "
            f"label raster of every tile"
        )


def _protocol(
    meta: dict[str, Any], window: int | None, stride: int | None, blend: Blend | None
) -> tuple[int, int, Blend]:
    """Window, stride and blend: as given, else as recorded by training, else the defaults.

    A given value is never replaced (``0`` is an error, not "the default").
    """
    ev = meta.get("evaluation") or {}
    if window is None:
        window = ev.get("window") or meta.get("patch_size") or 256
    window = _positive("window", window)
    if stride is None:
        stride = ev.get("stride") or max(1, window // 2)
    stride = _positive("stride", stride)
    if stride > window:
        raise EvaluateError(
            f"stride {stride} is larger than the window {window}: the crops would leave gaps"
        )
    blend = blend or ev.get("blend") or "sum"
    if blend not in ("sum", "cosine"):
        raise EvaluateError(f"blend must be 'sum' or 'cosine', got {blend!r}")
    return window, stride, blend


def _zero_shot_split(meta: dict[str, Any]) -> tuple[list[str], list[int] | None, list[int] | None]:
    """Class names, and the seen/unseen class indices of a zero-shot checkpoint."""
    names = list(meta["classes"])
    unseen_names = meta.get("unseen_classes") or []
    if not unseen_names:
        return names, None, None
    lower = [n.lower() for n in names]
    unseen = [lower.index(n.lower()) for n in unseen_names]
    return names, [i for i in range(len(names)) if i not in unseen], unseen


def _close(dm: Any) -> None:
    for d in (getattr(dm, "datasets", None) or {}).values():
        if callable(getattr(d, "close", None)):
            d.close()


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
    precision: str | None = "auto",
) -> dict[str, Any]:
    """Evaluate ``model.ckpt`` on a split of the dataset at ``root``; write JSON and PNG.

    Defaults come from the checkpoint (window/stride/blend recorded by training, else the patch
    size and half of it). Options, the device and the output folder are checked before the model
    is loaded; every tile of the split must have a label. ``precision`` (``auto``: bf16 where the
    hardware computes it natively, see :mod:`rsprompt.engine.precision`) is recorded in
    ``metrics.json`` as ``numeric_precision``.

    Returns:
        The metrics (also written to ``<output>/metrics.json``; the confusion matrix to
        ``<output>/confusion.png``). ``out_of_range_pixels`` counts label pixels outside the
        classes (other than the ignore index), which are left out of the metrics.

    Raises:
        EvaluateError: Bad options, output folder or missing labels.
        CheckpointError: An unreadable or untrusted checkpoint, or one naming an unknown
            datamodule, unknown options or a malformed normalisation.
        rsprompt.engine.device.DeviceError: An unknown or absent device.
    """
    from rsprompt.engine.checkpoint import load_model_checkpoint
    from rsprompt.engine.device import resolve_device
    from rsprompt.engine.precision import resolve_precision

    batch_size = _positive("batch size", batch_size)
    for name, value in (("window", window), ("stride", stride)):
        if value is not None:
            _positive(name, value)
    dev = resolve_device(device)
    out = Path(output) if output is not None else Path(checkpoint).parent / f"eval_{split}"
    check_output_folder(out)
    model, meta = load_model_checkpoint(checkpoint, weights=weights, device=dev)
    numeric = resolve_precision(precision, dev, model_key=meta.get("method"))
    window, stride, blend = _protocol(meta, window, stride, blend)
    dm = datamodule_from_meta(meta, root, source=checkpoint, **(dataset_overrides or {}))
    names, seen, unseen = _zero_shot_split(meta)
    try:
        ds = dm.dataset(split)
        check_labels(ds, split, root)
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
            total=len(ds.tiles),
            precision=numeric,
        )
    finally:
        _close(dm)
    extra = {
        "checkpoint": str(checkpoint),
        "root": str(root),
        "split": split,
        "window": window,
        "stride": stride,
        "blend": blend,
        "method": meta["method"],
        "encoder": meta["encoder"],
        "device": str(dev),
        "numeric_precision": numeric,
    }
    result["confusion_matrix"] = cm.tolist()
    write_metrics_json(out / "metrics.json", result, **extra)
    plot_confusion(cm, names, out / "confusion.png")
    if echo is not None:
        echo(format_table(result))
        if result["out_of_range_pixels"]:
            echo(
                f"{result['out_of_range_pixels']:,} label pixel(s) with values "
                f"{result['out_of_range_values'][:10]} outside the classes were left out"
            )
        echo(f"metrics: {out / 'metrics.json'}  confusion matrix: {out / 'confusion.png'}")
    return {**extra, **result, "output": str(out)}
