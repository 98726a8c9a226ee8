"""``rsprompt stack``: a scene and its DSM/SAR → one stacked VRT layer (QGIS Deepness input).

See :mod:`rsprompt.export.stack`: the aux is aligned onto the scene's grid by the reader
``rsprompt predict`` uses and written as a GeoTIFF beside the VRT.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command("stack")
@click.argument("scene", type=click.Path(path_type=Path))
@click.option("--dem", type=click.Path(path_type=Path), default=None, help="DSM raster.")
@click.option("--sar", type=click.Path(path_type=Path), default=None, help="SAR raster.")
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), required=True, help="VRT to write."
)
@click.option(
    "-m",
    "--model",
    "checkpoint",
    type=click.Path(path_type=Path),
    default=None,
    help="model.ckpt: keep the optical bands it reads [default: every band].",
)
@click.option(
    "--ndsm/--raw-dsm",
    default=None,
    help="Write the DSM as heights above the ground rsprompt predict fits over the scene "
    "(<output stem>_ndsm.tif), or as it is [default: heights above ground exactly when -m "
    "names a checkpoint trained on an nDSM].",
)
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
def stack(
    scene: Path,
    dem: Path | None,
    sar: Path | None,
    output: Path,
    checkpoint: Path | None,
    ndsm: bool | None,
    overwrite: bool,
) -> None:
    """Stack SCENE's optical bands and a DSM (--dem) or SAR (--sar) raster into one VRT.

    The aux raster is warped onto the scene's grid exactly as `rsprompt predict` warps it and
    written as <output stem>_dsm.tif (or _sar.tif) beside the VRT. With --ndsm (the default for
    a checkpoint trained on an nDSM) the band holds heights above ground, <output stem>_ndsm.tif:
    export that checkpoint with its default (nDSM input) for Deepness.
    """
    from rsprompt.export.common import ExportError
    from rsprompt.export.stack import stack_scene

    if dem is not None and sar is not None:
        raise click.UsageError("give --dem or --sar, not both")
    aux, kind = (dem, "dsm") if dem is not None else (sar, "sar" if sar is not None else None)
    try:
        s = stack_scene(
            scene,
            output,
            aux=aux,
            aux_kind=kind,
            checkpoint=checkpoint,
            ndsm=ndsm,
            overwrite=overwrite,
        )
    except ExportError as exc:
        raise click.ClickException(str(exc)) from None
    what = "height-above-ground" if s.ndsm else str(kind)
    aux_text = "" if s.aux is None else f" + {s.aux_channels} {what} band(s) from {s.aux}"
    click.echo(
        f"wrote {s.vrt}: {s.width}×{s.height} px, optical bands {s.bands} of {scene}{aux_text}"
    )
