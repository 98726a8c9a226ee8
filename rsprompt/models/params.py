"""Parameter tables of registered methods, built without weights (what ``rsprompt info`` prints)."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from rsprompt.models.base import SegmentationModel


def build_for_counting(
    method: str,
    encoder: str,
    num_classes: int,
    aux_channels: int | None = None,
    **options: Any,
) -> SegmentationModel:
    """Build ``method`` on ``encoder`` without weights, as cheaply as it can be built.

    Tries the meta device first (no memory, no init: paper-size models in seconds); a builder that
    does not take ``device`` or cannot build on meta gets a random init on the CPU instead
    (seeded by ``encoder_seed``, default 0). No forward pass is run.

    Args:
        method: A registered method name (see ``available_methods``).
        encoder: Encoder name understood by the method's builder.
        num_classes: Number of output classes.
        aux_channels: Aux channels (``None``: the method's default).
        **options: Method options passed on to the builder (``encoder_seed``, …).

    Returns:
        The model (parameters possibly on the meta device).
    """
    from rsprompt.models.registry import build_model, get_builder

    builder = get_builder(method)
    params = inspect.signature(builder).parameters
    takes_device = "device" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    if takes_device and "device" not in options:
        try:
            return build_model(
                method, encoder, num_classes, aux_channels, weights=None, device="meta", **options
            )
        except (NotImplementedError, RuntimeError, TypeError) as exc:
            if "meta" not in str(exc).lower() and "device" not in str(exc).lower():
                raise
    with torch.random.fork_rng(devices=[]):
        return build_model(method, encoder, num_classes, aux_channels, weights=None, **options)


def model_info(
    method: str,
    encoder: str,
    num_classes: int,
    aux_channels: int | None = None,
    **options: Any,
) -> dict[str, Any]:
    """The parameter report of ``method`` on ``encoder`` (see ``SegmentationModel.parameter_report``).

    Adds ``options`` (the method options used) and ``training_only_modules`` /
    ``decoder_modules`` (which rows of ``modules`` they are).

    Example:
        >>> info = model_info("mobanet", "vit_large_patch14_dinov2", 6)  # doctest: +SKIP
        >>> info["trainable"], info["trainable_inference"]  # doctest: +SKIP
        (8981376, 7797632)
    """
    model = build_for_counting(method, encoder, num_classes, aux_channels, **options)
    report = model.parameter_report()
    report["frozen_modules"] = list(type(model).frozen_modules)
    report["decoder_modules"] = [n for n in type(model).decoder_modules if n in report["modules"]]
    report["training_only_modules"] = [
        n for n in type(model).training_only_modules if n in report["modules"]
    ]
    report["options"] = {k: _jsonable(v) for k, v in options.items()}
    return report


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def format_parameter_table(report: dict[str, Any]) -> str:
    """A human-readable table of a parameter report."""
    rows: list[tuple[str, int, str]] = []
    training_only = set(report.get("training_only_modules", []))
    decoder = set(report.get("decoder_modules", []))
    for name, count in report["modules"].items():
        note = "training only" if name in training_only else "decoder" if name in decoder else ""
        rows.append((name, count, note))
    totals = [
        ("trainable", report["trainable"]),
        ("trainable at inference", report["trainable_inference"]),
        ("  of which decoder", report["decoder"]),
        ("  of which prompts/adapters", report["prompt"]),
        ("frozen encoder", report["frozen"]),
    ]
    width = max([len(r[0]) for r in rows] + [len(t[0]) for t in totals] + [28])
    num = max(len(f"{report['frozen']:,}"), len(f"{report['trainable']:,}"), 11)
    aux = report.get("aux_channels")
    lines = [
        f"method       {report['method']}",
        f"encoder      {report['encoder']}",
        f"classes      {report['num_classes']}",
        f"aux channels {aux}{' (no aux modality)' if aux == 0 else ''}",
    ]
    if report.get("options"):
        opts = ", ".join(f"{k}={v}" for k, v in report["options"].items())
        lines.append(f"options      {opts}")
    lines.append("")
    lines.append(f"{'trainable module':<{width}}  {'parameters':>{num}}")
    lines.append(f"{'-' * width}  {'-' * num}")
    for name, count, note in rows:
        lines.append(f"{name:<{width}}  {count:>{num},}" + (f"  ({note})" if note else ""))
    lines.append(f"{'-' * width}  {'-' * num}")
    for label, count in totals:
        lines.append(f"{label:<{width}}  {count:>{num},}")
    share = report["trainable_inference"] / max(1, report["frozen"] + report["trainable_inference"])
    lines.append(f"{'trainable share at inference':<{width}}  {share:>{num}.2%}")
    if report["frozen"]:
        # The budget that prompt-tuning papers quote (e.g. SPM's ≤ 5%): decoder excluded.
        lines.append(
            f"{'prompts/adapters : encoder':<{width}}  {report['prompt'] / report['frozen']:>{num}.2%}"
        )
    return "\n".join(lines)
