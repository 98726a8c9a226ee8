"""Optimiser over trainable parameters only, and warm-up + cosine/poly learning-rate schedules.

Weight-decay rules (docs/training.md): with ``no_decay_1d`` every parameter with fewer than 2
dimensions (biases, norms, MoBaNet's CPIA γ/β, 1-D prompts) gets weight decay 0; the others get
``weight_decay``. Per-group learning-rate multipliers (RPN: VPT tokens, the shared Linear, the
prompt LayerNorm and the LPM head at 10×) are given as ``{pattern: factor}``: a parameter takes
the factor of the first pattern its name matches (``fnmatch`` syntax, or a plain prefix such as
``"lpm"`` which matches ``lpm.*``).

Schedules are per optimiser step: linear warm-up from ``warmup_start_factor × lr`` to ``lr`` over
``warmup_steps``, then cosine or polynomial decay to ``min_lr`` at ``total_steps`` (or constant).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

OptimizerName = Literal["adamw", "sgd"]
ScheduleName = Literal["cosine", "poly", "constant"]


def _matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or name == pattern or name.startswith(pattern + ".")


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    no_decay_1d: bool = True,
    lr_mult: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Group the trainable parameters of ``model`` by (weight decay, lr multiplier).

    Args:
        model: The model; frozen parameters (``requires_grad=False``) are left out.
        lr: Base learning rate.
        weight_decay: Decay of ≥2-D parameters (and of 1-D ones when ``no_decay_1d`` is false).
        no_decay_1d: Give every parameter with ``ndim < 2`` weight decay 0.
        lr_mult: ``{pattern: factor}``; first match wins; unmatched parameters take 1.

    Returns:
        Optimiser parameter groups, each with ``params``, ``lr``, ``weight_decay``, ``lr_mult``
        and ``names`` (for inspection; optimisers ignore unknown keys).

    Raises:
        ValueError: If nothing is trainable, or a pattern of ``lr_mult`` matches no parameter.
    """
    lr_mult = dict(lr_mult or {})
    used: set[str] = set()
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        mult = 1.0
        for pattern, factor in lr_mult.items():
            if _matches(name, pattern):
                mult = float(factor)
                used.add(pattern)
                break
        wd = 0.0 if (no_decay_1d and p.ndim < 2) else float(weight_decay)
        g = groups.setdefault(
            (wd, mult),
            {"params": [], "names": [], "lr": lr * mult, "weight_decay": wd, "lr_mult": mult},
        )
        g["params"].append(p)
        g["names"].append(name)
    if not groups:
        raise ValueError("the model has no trainable parameter")
    unused = sorted(set(lr_mult) - used)
    if unused:
        raise ValueError(f"lr_mult pattern(s) {unused} match no trainable parameter of the model")
    return list(groups.values())


def build_optimizer(
    model: nn.Module,
    name: OptimizerName = "adamw",
    lr: float = 1e-4,
    weight_decay: float = 0.01,
    no_decay_1d: bool = True,
    lr_mult: Mapping[str, float] | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """AdamW or SGD (with momentum) over the trainable parameters of ``model`` (see :func:`param_groups`)."""
    groups = param_groups(model, lr, weight_decay, no_decay_1d, lr_mult)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    raise ValueError(f"unknown optimizer {name!r}; choose 'adamw' or 'sgd'")


def lr_factor(
    step: int,
    total_steps: int,
    schedule: ScheduleName = "cosine",
    warmup_steps: int = 0,
    warmup_start_factor: float = 1e-3,
    min_factor: float = 0.0,
    power: float = 0.9,
) -> float:
    """Multiplier of the base lr at optimiser step ``step`` (0-based).

    Args:
        step: Steps taken so far.
        total_steps: Length of the schedule (warm-up included).
        schedule: ``cosine``, ``poly`` (``(1 − t)^power``) or ``constant`` after the warm-up.
        warmup_steps: Linear warm-up length.
        warmup_start_factor: Multiplier at step 0 of the warm-up.
        min_factor: Final multiplier (``min_lr / lr``).
        power: Exponent of the poly schedule.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_start_factor + (1.0 - warmup_start_factor) * step / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, max(0.0, (step - warmup_steps) / span))
    if schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * t))
    elif schedule == "poly":
        decay = (1.0 - t) ** power
    else:
        raise ValueError(f"unknown schedule {schedule!r}; choose cosine, poly or constant")
    return min_factor + (1.0 - min_factor) * decay


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    schedule: ScheduleName = "cosine",
    warmup_steps: int = 0,
    warmup_start_factor: float = 1e-3,
    min_lr: float = 0.0,
    power: float = 0.9,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step :class:`~torch.optim.lr_scheduler.LambdaLR` following :func:`lr_factor`.

    ``min_lr`` is absolute (for the base lr); groups with an lr multiplier scale it likewise.
    """
    base = optimizer.defaults["lr"]
    min_factor = min_lr / base if base > 0 else 0.0

    def fn(step: int) -> float:
        return lr_factor(
            step, total_steps, schedule, warmup_steps, warmup_start_factor, min_factor, power
        )

    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
