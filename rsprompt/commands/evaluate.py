"""``rsprompt evaluate``: the sliding-window test protocol over whole tiles."""

from __future__ import annotations

from pathlib import Path

import click

from rsprompt.commands._options import device_option, precision_option


@click.command("evaluate")
@click.option(
    "-m",
    "--model",
    "checkpoint",
    required=True,
    type=click.Path(path_type=Path),
    help="Model checkpoint (model.ckpt written by `rsprompt train`).",
)
@click.option(
    "--data.root",
    "--root",
    "root",
    required=True,
    type=click.Path(path_type=Path),
    help="Dataset folder (official layout) of the dataset the model was trained on.",
)
@click.option(
    "--split", default="test", show_default=True, help="Split to evaluate (test, val, train)."
)
@click.option(
    "--window",
    type=click.IntRange(min=1),
    help="Window size [default: recorded by training, else the patch size].",
)
@click.option(
    "--stride",
    type=click.IntRange(min=1),
    help="Window stride [default: recorded by training, else window/2].",
)
@click.option(
    "--blend",
    type=click.Choice(["sum", "cosine"]),
    help="Combine overlaps: raw logits summed (papers) or cosine-blended probabilities.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Windows per forward pass.",
)
@click.option(
    "--weights", help="Encoder weights file, when it moved since training (sha256 checked)."
)
@click.option(
    "--labels",
    type=click.Choice(["full", "eroded"]),
    help="ISPRS label variant to score against [default: as trained].",
)
@device_option
@precision_option("Forward-pass precision; auto = bf16 where the CPU/GPU computes it natively.")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Folder of metrics.json and confusion.png [default: <model dir>/eval_<split>].",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def evaluate(
    checkpoint,
    root,
    split,
    window,
    stride,
    blend,
    batch_size,
    weights,
    labels,
    device,
    precision,
    output,
    quiet,
):
    """Evaluate a model checkpoint on whole tiles with the sliding-window protocol.

    Prints a per-class table (IoU, F1, precision, recall), writes metrics.json and a
    confusion-matrix PNG.
    """
    from rsprompt.engine.checkpoint import CheckpointError
    from rsprompt.engine.evaluate import evaluate_checkpoint

    if not root.exists():
        raise click.ClickException(f"dataset folder not found: {root}")
    try:
        evaluate_checkpoint(
            checkpoint,
            root,
            split=split,
            window=window,
            stride=stride,
            blend=blend,
            batch_size=batch_size,
            weights=weights,
            device=device,
            output=output,
            dataset_overrides={"labels": labels} if labels else None,
            progress=not quiet,
            echo=click.echo,
            precision=precision,
        )
    except (CheckpointError, ValueError, KeyError, OSError) as exc:
        # ValueError covers DeviceError, EvaluateError and corrupt rasters; OSError missing,
        # read-only or full output folders and raster read errors (RasterioIOError).
        raise click.ClickException(_one_line(exc)) from None


def _one_line(exc: BaseException) -> str:
    """The error as one line (first line of its message; the type when it has none)."""
    text = str(exc).strip().strip("'\"")
    return text.splitlines()[0] if text else type(exc).__name__
