"""Model checkpoints (``model.ckpt``): the trainable inference tensors plus what rebuilds the model.

A model checkpoint never holds the frozen encoder. It holds:

- ``state_dict``: :meth:`SegmentationModel.adapter_state_dict` — the trainable tensors used at
  inference and the buffers of those modules (training-only heads are left out);
- ``meta``: what rebuilds the model and its data (see :func:`model_meta`): method, encoder and its
  weights file (path + sha256) or the seed of its random initialisation, class names and colours,
  the normalisation of both modalities, bands, patch size, ignore index…

Loading rebuilds the model with :func:`~rsprompt.models.registry.build_model` and refuses an
encoder that differs from the one used in training (a weights file, or the file behind
``weights="package"``, with another sha256; a rebuilt random or hub encoder whose fingerprint
differs). Files are read with ``torch.load(weights_only=True)`` (:func:`load_trusted`): nothing in
a checkpoint is executed.

Example:
    >>> meta = model_meta(model, dataset="vaihingen", ...)  # doctest: +SKIP
    >>> save_model_checkpoint("run/model.ckpt", model, meta)  # doctest: +SKIP
    >>> model, meta = load_model_checkpoint("run/model.ckpt")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import pickle
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rsprompt import __version__
from rsprompt.models.base import SegmentationModel
from rsprompt.models.weights import package_weights_file, sha256_file

FORMAT = "rsprompt-model"
VERSION = 1
#: Weights values that name no file (passed through to the encoder builder as they are).
SPECIAL_WEIGHTS = ("package", "hub")


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not match (message names the file and the problem)."""


def weights_record(weights: str | Path | None) -> dict[str, Any] | None:
    """``{"path", "sha256"}`` of an encoder weights file (``None`` for a random encoder).

    ``"package"`` is recorded with the sha256 of the file the package ships; ``"hub"`` (weights
    in the library's download cache) with ``sha256`` ``None``: the checkpoint then records a
    fingerprint of the loaded encoder instead (see :func:`model_meta`).

    Raises:
        FileNotFoundError: If ``weights`` names a file that does not exist (or the package is
            not installed).
    """
    if weights is None:
        return None
    if str(weights) in SPECIAL_WEIGHTS:
        shipped = package_weights_file(str(weights))
        return {"path": str(weights), "sha256": None if shipped is None else sha256_file(shipped)}
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"encoder weights file not found: {path}")
    return {"path": str(path.resolve()), "sha256": sha256_file(path)}


def encoder_fingerprint(model: SegmentationModel) -> dict[str, float]:
    """Cheap fingerprint of the frozen modules: tensor count, sum and sum of absolute values.

    Computed in float64 on the CPU, so it is reproducible; used to check that an encoder rebuilt
    from a seed (no weights file) is the one the adapters were trained on.
    """
    total = 0.0
    absolute = 0.0
    count = 0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    for key, value in model.state_dict().items():
        if not model._is_frozen_key(key) or key in trainable:
            continue
        if not value.is_floating_point() or value.device.type == "meta":
            continue
        v = value.detach().to("cpu", torch.float64)
        total += float(v.sum())
        absolute += float(v.abs().sum())
        count += v.numel()
    return {"numel": float(count), "sum": total, "abs_sum": absolute}


def _fingerprints_match(a: dict[str, float], b: dict[str, float], rtol: float = 1e-5) -> bool:
    if a.get("numel") != b.get("numel"):
        return False
    return all(
        math.isclose(a[k], b[k], rel_tol=rtol, abs_tol=1e-6 * max(1.0, a["numel"]))
        for k in ("sum", "abs_sum")
    )


def model_meta(
    model: SegmentationModel,
    *,
    weights: str | Path | dict[str, Any] | None,
    encoder_seed: int | None = 0,
    model_kwargs: dict[str, Any] | None = None,
    classes: Sequence[str],
    colors: Sequence[Sequence[int]] | None = None,
    normalization: Any = None,
    aux_kind: str | None = None,
    bands: Sequence[int] | None = None,
    dataset: str | None = None,
    label_variant: str | None = None,
    patch_size: int | None = None,
    ignore_index: int = 255,
    fingerprint: dict[str, float] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Assemble the ``meta`` of a model checkpoint.

    Args:
        model: The model (method, encoder, classes and aux channels are read from it).
        weights: Encoder weights file (hashed here), a record from :func:`weights_record`, or
            ``None`` for a random encoder.
        encoder_seed: Seed of the random encoder (used when no weights file was given).
        model_kwargs: Every other keyword given to ``build_model`` (method and encoder options).
        classes: Class names (``len == model.num_classes``).
        colors: RGB colour per class.
        normalization: A :class:`rsprompt.data.normalize.Normalization` (or its ``to_dict()``).
        aux_kind: ``"dsm"``, ``"sar"`` or ``None``.
        bands: Optical band indices fed to the model (``None``: all bands).
        dataset: Dataset name (``vaihingen``, ``potsdam``, ``whu-opt-sar``…).
        label_variant: Label variant trained on (e.g. ``"eroded"``).
        patch_size: Training crop size.
        ignore_index: Label ignored by losses and metrics.
        fingerprint: :func:`encoder_fingerprint` of the model, when already computed; recorded
            whenever the weights have no sha256 (random or hub encoder).
        **extra: More keys to record (e.g. ``unseen_classes``, ``mean_classes``).

    Raises:
        ValueError: If the class names do not match the model's number of classes.
    """
    if len(classes) != model.num_classes:
        raise ValueError(f"{len(classes)} class names for a model with {model.num_classes} classes")
    record = weights if isinstance(weights, dict) or weights is None else weights_record(weights)
    norm = normalization.to_dict() if hasattr(normalization, "to_dict") else normalization
    if record is None or not record.get("sha256"):
        fingerprint = fingerprint or encoder_fingerprint(model)
    else:
        fingerprint = None
    meta: dict[str, Any] = {
        "method": model.method,
        "encoder": model.encoder_name,
        "num_classes": model.num_classes,
        "aux_channels": model.aux_channels,
        "model_kwargs": dict(model_kwargs or {}),
        "weights": record,
        "encoder_seed": None if encoder_seed is None else int(encoder_seed),
        "encoder_fingerprint": fingerprint,
        "classes": [str(c) for c in classes],
        "colors": None if colors is None else [[int(v) for v in c] for c in colors],
        "normalization": norm,
        "modalities": ["optical"] if aux_kind is None else ["optical", aux_kind],
        "aux_kind": aux_kind,
        "bands": None if bands is None else [int(b) for b in bands],
        "dataset": dataset,
        "label_variant": label_variant,
        "patch_size": None if patch_size is None else int(patch_size),
        "ignore_index": int(ignore_index),
        "rsprompt_version": __version__,
    }
    meta.update(extra)
    return meta


def _atomic_save(obj: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def save_model_checkpoint(path: str | Path, model: SegmentationModel, meta: dict[str, Any]) -> Path:
    """Write ``model.ckpt`` atomically (temporary file, then rename).

    Holds ``{"format": "rsprompt-model", "version": 1, "meta": meta, "state_dict":
    model.adapter_state_dict()}`` on the CPU: trainable inference tensors and their buffers,
    never the frozen encoder.
    """
    state = {k: v.detach().cpu() for k, v in model.adapter_state_dict().items()}
    obj = {"format": FORMAT, "version": VERSION, "meta": meta, "state_dict": state}
    return _atomic_save(obj, Path(path))


def _unpickling_detail(error: BaseException) -> str:
    """The line of torch's refusal that names what was refused (never its advice to retry)."""
    for line in str(error).splitlines():
        line = line.strip()
        if line.startswith(("Trying to load unsupported GLOBAL", "Unsupported global")):
            return f" ({line.split('.', 1)[0] if line.startswith('Unsupported') else line})"
    return ""


def load_trusted(path: str | Path, what: str = "checkpoint") -> Any:
    """Read a torch file with ``weights_only=True``; one-line errors that name the file.

    Nothing in the file is executed: an object other than tensors and plain containers is refused.
    The message never repeats torch's advice to retry with ``weights_only=False``.

    Raises:
        CheckpointError: Unreadable, corrupt, truncated, or holding Python objects.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: not a readable, trusted rsprompt {what}: it is corrupt, not a PyTorch "
            f"file, or holds Python objects besides tensors and plain data"
            f"{_unpickling_detail(e)}, which rsprompt never unpickles"
        ) from None
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(
            f"{path}: not a readable {what} (corrupt, truncated or not a PyTorch file): "
            f"{type(e).__name__}{': ' + first if first else ''}"
        ) from None


def read_model_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and validate a model checkpoint file without building the model.

    Raises:
        CheckpointError: Missing, unreadable/corrupt, or not an rsprompt model checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: model checkpoint not found")
    obj = load_trusted(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        if isinstance(obj, dict) and "pytorch-lightning_version" in obj:
            raise CheckpointError(
                f"{path}: this is a Lightning resume checkpoint (last.ckpt); evaluate and "
                f"predict take the model checkpoint model.ckpt written next to it"
            )
        raise CheckpointError(f"{path}: not an rsprompt model checkpoint (no format {FORMAT!r})")
    if obj.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {obj.get('version')} is not supported "
            f"(this rsprompt reads version {VERSION})"
        )
    for key in ("meta", "state_dict"):
        if not isinstance(obj.get(key), dict):
            raise CheckpointError(f"{path}: checkpoint has no {key!r}")
    return obj


def _unverified(source: str | Path, record: dict[str, Any], what: str) -> None:
    """Warn that a checkpoint (written before weights were hashed) cannot be verified."""
    warnings.warn(
        f"{source}: the checkpoint records no sha256 for its encoder weights "
        f"({record.get('path')!r}; written by an older rsprompt), so {what} cannot be verified "
        f"against the encoder this model was trained with",
        UserWarning,
        stacklevel=3,
    )


def _check_sha(
    source: str | Path, record: dict[str, Any], file: Path, digest: str, hint: str
) -> None:
    if digest != record["sha256"]:
        raise CheckpointError(
            f"{source}: encoder weights {file} (sha256 {digest[:12]}…) do not match the encoder "
            f"this model was trained with ({record['path']}, sha256 {record['sha256'][:12]}…); "
            f"{hint}"
        )


def resolve_encoder_weights(
    meta: dict[str, Any], weights: str | Path | None = None, source: str | Path = "checkpoint"
) -> str | None:
    """The weights to rebuild the encoder with, after checking their sha256.

    A file (recorded, or given as ``weights``) must have the recorded sha256; ``"package"``
    weights are the file the installed package ships, hashed the same way. ``"hub"`` weights
    have no file here: :func:`load_model_checkpoint` compares the rebuilt encoder's fingerprint.
    Checkpoints written before weights were hashed (``sha256`` null and no fingerprint) still
    load, with a warning.

    Args:
        meta: Checkpoint meta.
        weights: A file given by the user (``--weights``) instead of the recorded path.
        source: Name of the checkpoint, for messages.

    Raises:
        CheckpointError: A file is missing or its sha256 differs from the recorded one, or
            weights are given for a model trained on a randomly initialised encoder.
    """
    record = meta.get("weights")
    if record is None:
        if weights is not None:
            raise CheckpointError(
                f"{source}: this model was trained on a randomly initialised encoder "
                f"(encoder_seed {meta.get('encoder_seed')}); do not pass --weights"
            )
        return None
    if not isinstance(record, dict) or not isinstance(record.get("path"), str):
        raise CheckpointError(f"{source}: malformed encoder weights record {record!r}")
    path = str(weights) if weights is not None else record["path"]
    recorded = record.get("sha256")
    if path in SPECIAL_WEIGHTS:
        try:
            shipped = package_weights_file(path)
        except FileNotFoundError as e:
            raise CheckpointError(f"{source}: {e}") from None
        if shipped is None:  # hub weights: the fingerprint is checked once the encoder is built
            if recorded:
                raise CheckpointError(
                    f"{source}: the model was trained with the weights file {record['path']}; "
                    f"{path!r} weights cannot be checked against it: pass --weights PATH"
                )
            if not meta.get("encoder_fingerprint"):
                _unverified(source, record, f"the {path!r} weights")
            return path
        if recorded:
            hint = "install the package version used in training, or pass --weights PATH"
            _check_sha(source, record, shipped, sha256_file(shipped), hint)
        else:
            _unverified(source, record, f"the installed package's weights {shipped}")
        return path
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(
            f"{source}: the encoder weights file {p} was not found (the model was trained with "
            f"{record['path']}); if the file moved, pass --weights PATH"
        )
    if recorded:
        _check_sha(source, record, p, sha256_file(p), "pass --weights PATH with the original file")
    elif not meta.get("encoder_fingerprint"):
        _unverified(source, record, f"the weights file {p}")
    return str(p)


def _builder_accepts(method: str, name: str) -> bool:
    import inspect

    from rsprompt.models.registry import get_builder

    params = inspect.signature(get_builder(method)).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def build_seeded(
    method: str,
    encoder: str,
    num_classes: int,
    aux_channels: int | None,
    weights: str | None,
    encoder_seed: int | None,
    **kwargs: Any,
) -> SegmentationModel:
    """``build_model`` whose random initialisation is reproducible from ``encoder_seed``.

    The builder runs under a forked global RNG seeded with ``encoder_seed`` (so even builders
    without an ``encoder_seed`` option rebuild the same random encoder), and ``encoder_seed`` is
    passed on when no weights file is used and the builder takes it. The caller's RNG state is
    left untouched.
    """
    from rsprompt.models.registry import build_model

    if weights is None and encoder_seed is not None and _builder_accepts(method, "encoder_seed"):
        kwargs.setdefault("encoder_seed", encoder_seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0 if encoder_seed is None else int(encoder_seed))
        return build_model(method, encoder, num_classes, aux_channels, weights=weights, **kwargs)


def build_from_meta(
    meta: dict[str, Any], weights: str | None = None, source: str | Path = "checkpoint"
) -> SegmentationModel:
    """Rebuild the (untrained) model that a checkpoint's ``meta`` describes."""
    path = resolve_encoder_weights(meta, weights, source)
    kwargs = dict(meta.get("model_kwargs") or {})
    try:
        return build_seeded(
            meta["method"],
            meta["encoder"],
            meta["num_classes"],
            meta["aux_channels"],
            path,
            meta.get("encoder_seed"),
            **kwargs,
        )
    except KeyError as e:
        raise CheckpointError(f"{source}: meta lacks {e}") from e


def _check_fingerprint(path: str | Path, meta: dict[str, Any], model: SegmentationModel) -> None:
    """Compare the rebuilt encoder with the recorded fingerprint (random or hub encoders)."""
    expected = meta.get("encoder_fingerprint")
    if not expected:
        return
    if not isinstance(expected, dict):
        raise CheckpointError(f"{path}: malformed encoder fingerprint {expected!r}")
    got = encoder_fingerprint(model)
    if _fingerprints_match(expected, got):
        return
    if meta.get("weights") is None:
        what = f"the rebuilt random encoder {meta['encoder']} (seed {meta.get('encoder_seed')})"
        why = "was it trained with another library version?"
    else:
        what = f"the encoder {meta['encoder']} rebuilt with {meta['weights'].get('path')!r} weights"
        why = "the downloaded weights have changed since training; pass --weights PATH"
    raise CheckpointError(
        f"{path}: {what} differs from the one this model was trained on (fingerprint "
        f"{expected} vs {got}); {why}"
    )


def load_model_checkpoint(
    path: str | Path, *, weights: str | None = None, device: str | torch.device = "cpu"
) -> tuple[SegmentationModel, dict[str, Any]]:
    """Rebuild a model from ``model.ckpt`` and load its trainable tensors.

    Args:
        path: Model checkpoint.
        weights: Encoder weights file to use instead of the recorded path (when it moved); its
            sha256 must match the recorded one.
        device: Device of the returned model.

    Returns:
        ``(model, meta)``; the model is in eval mode.

    Raises:
        CheckpointError: Missing/corrupt/foreign file, or an encoder that does not match.
    """
    obj = read_model_checkpoint(path)
    meta = obj["meta"]
    model = build_from_meta(meta, weights, source=path)
    _check_fingerprint(path, meta, model)
    try:
        model.load_adapter_state_dict(obj["state_dict"])
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"{path}: the saved tensors do not fit the rebuilt model: {e}") from e
    return model.to(device).eval(), meta
