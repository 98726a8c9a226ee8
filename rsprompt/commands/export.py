"""``rsprompt export``: a model checkpoint → one ONNX file for QGIS's Deepness plugin.

See :mod:`rsprompt.export.onnx_export` for what the graph holds and docs/qgis-deepness.md for
the QGIS steps. Needs the optional extra ``rsprompt[onnx]`` (onnx and onnxruntime).
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command("export")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), required=True, help="ONNX file to write."
)
@click.option(
    "--window",
    type=click.IntRange(min=8),
    default=None,
    help="Tile side H = W of the exported graph [default: the training patch size, else 512].",
)
@click.option("--opset", type=click.IntRange(min=14), default=17, show_default=True)
@click.option(
    "--aux-stats",
    type=click.Path(path_type=Path),
    default=None,
    help="DSM (or stacked layer) whose valid heights give the fixed min–max of a DSM min–max "
    "normalisation (MoBaNet).",
)
@click.option(
    "--aux-range",
    type=(float, float),
    default=None,
    metavar="MIN MAX",
    help="Fixed min and max of a DSM min–max normalisation instead of --aux-stats.",
)
@click.option(
    "--resolution",
    type=float,
    default=None,
    help="Ground sampling distance in cm/px [default: the training data's, when the checkpoint "
    "tells it].",
)
@click.option(
    "--classes",
    default=None,
    help='Open-vocabulary models (RPN): class names "a,b,c" frozen into the graph.',
)
@click.option("--weights", default=None, help="Encoder weights file, if it moved since training.")
@click.option(
    "--optical-only",
    is_flag=True,
    help="Leave the aux input out: the model runs with its DSM/SAR missing (3-band runners).",
)
@click.option(
    "--ndsm/--raw-dsm",
    default=None,
    help="The DSM input holds heights above ground (the layer of `rsprompt stack --ndsm`), or "
    "the raw DSM with the ground estimated per tile in the graph [default: heights above ground "
    "exactly for a checkpoint trained on an nDSM].",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
def export(
    checkpoint: Path,
    output: Path,
    window: int | None,
    opset: int,
    aux_stats: Path | None,
    aux_range: tuple[float, float] | None,
    resolution: float | None,
    classes: str | None,
    weights: str | None,
    optical_only: bool,
    ndsm: bool | None,
    overwrite: bool,
) -> None:
    """Export CHECKPOINT (model.ckpt) to an ONNX model for QGIS's Deepness plugin.

    The graph takes the raw stacked layer (`rsprompt stack`: the checkpoint's optical bands, then
    the DSM/SAR band; heights above ground for a checkpoint trained on an nDSM) and returns
    softmax probabilities; rsprompt's normalisation is inside it.
    The file is checked with onnxruntime against the torch model before it is written.
    """
    from rsprompt.export.common import ExportError
    from rsprompt.export.onnx_export import export_onnx

    names = None if classes is None else [c.strip() for c in classes.split(",")]
    try:
        s = export_onnx(
            checkpoint,
            output,
            window=window,
            opset=opset,
            aux_stats=aux_stats,
            aux_range=aux_range,
            resolution=resolution,
            classes=names,
            weights=weights,
            optical_only=optical_only,
            ndsm=ndsm,
            overwrite=overwrite,
        )
    except ExportError as exc:
        raise click.ClickException(str(exc)) from None
    detail = (
        ""
        if s.aux_stats is None
        else (f"; DSM min–max fixed to {s.aux_stats['min']:g}–{s.aux_stats['max']:g}")
    )
    values = "raw values"
    if s.aux_input == "height_above_ground":
        values = "raw optical values, then the DSM as heights above ground"
        detail = "; stack the scene with `rsprompt stack --ndsm` (the default for this checkpoint)"
    click.echo(
        f"wrote {s.path}: input N×{s.channels}×{s.window}×{s.window} ({values}), "
        f"{len(s.classes)} classes, {s.resolution_cm:g} cm/px{detail}; onnxruntime matches torch "
        f"(max abs diff {s.max_abs_diff:.2g})"
    )
