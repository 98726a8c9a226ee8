"""Click options shared by several commands (one definition each)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
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


def scale_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``rsprompt predict``'s many-input and scale-out options (see docs/scale-out.md)."""
    options = [
        click.option(
            "--mosaic",
            type=click.Path(path_type=Path),
            help="Write the SCENES (tiles on one pixel grid) as this VRT mosaic and predict it "
            "as one scene (its outputs are named after the VRT).",
        ),
        click.option(
            "--devices",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="Processes (devices) per node; more than 1 launches Lightning DDP ranks that "
            "share the scenes (or row bands) and merge at the end. Needs --out-dir.",
        ),
        click.option(
            "--num-nodes",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="Nodes of a multi-node launch (torchrun or SLURM srun start the processes).",
        ),
        click.option(
            "--accelerator",
            type=click.Choice(["auto", "cpu", "gpu"]),
            default="auto",
            show_default=True,
            help="Device kind of the ranks with --devices/--num-nodes (gpu: one GPU per rank).",
        ),
        click.option(
            "--shard",
            help="Run task i (0-based) of N of a job array, e.g. 3/10 "
            "($SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT). Needs --out-dir; the last task to "
            "finish merges.",
        ),
        click.option(
            "--merge",
            "merge_dir",
            type=click.Path(path_type=Path),
            help="Merge the finished job in this --out-dir (no SCENES or -m needed).",
        ),
        click.option(
            "--split-mpix",
            type=click.FloatRange(min=0, min_open=True),
            default=64.0,
            show_default=True,
            help="With --devices/--shard: a scene larger than this (megapixels) is split into "
            "row bands (so is every scene when there are fewer scenes than ranks).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func
