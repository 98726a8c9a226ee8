"""Click options shared by several commands (one definition each)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

#: ``--precision`` values (the same as :data:`rsprompt.engine.precision.PRECISIONS`; kept here so
#: that building the CLI does not import torch).
PRECISION_CHOICES = ("auto", "32", "bf16", "16")


def device_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--device`` (default ``auto``), resolved by :func:`rsprompt.engine.device.resolve_device`."""
    return click.option(
        "--device",
        default="auto",
        show_default=True,
        help="Torch device: auto (cuda when available, else cpu), cpu, cuda, cuda:N, mps.",
    )(func)


def precision_option(
    help_text: str, choices: tuple[str, ...] = PRECISION_CHOICES
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--precision`` (default ``auto``) with the command's own help text."""
    return click.option(
        "--precision",
        type=click.Choice(list(choices)),
        default="auto",
        show_default=True,
        help=help_text,
    )
