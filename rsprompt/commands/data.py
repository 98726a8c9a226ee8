"""``rsprompt data``: dataset folder tools."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("data")
def data() -> None:
    """Work with dataset folders in the official layouts (vaihingen, potsdam, whu-opt-sar)."""


@data.command("check")
@click.argument("dataset", type=click.Choice(["vaihingen", "potsdam", "whu-opt-sar"]))
@click.argument("root", type=click.Path(path_type=Path))
@click.option(
    "--variant",
    default="official",
    show_default=True,
    help="Split variant used to group tiles (vaihingen: deepnets; potsdam: mobanet).",
)
@click.pass_context
def check(ctx: click.Context, dataset: str, root: Path, variant: str) -> None:
    """Check that ROOT holds DATASET as distributed, and that every file decodes.

    Prints, per split, the tiles found with their modalities, sizes and CRS. Absent official
    tiles, optional products, unknown files, a DSM/SAR covering only part of its tile and label
    pixels of no class are warnings (exit code 0). Exits with code 1, naming each file, when a
    tile lacks a required modality, a file is unreadable or corrupt (every block is decoded, so
    this reads the whole dataset), a tile's modalities disagree (size, band count, dtype, or a
    georeferenced label off its image), a DSM/SAR has no valid pixel, or a label holds no class.
    """
    from rsprompt.data.check import check_folder, check_variant

    try:
        check_variant(dataset, variant)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--variant") from None
    if not root.is_dir():
        raise click.ClickException(f"{root} is not a folder")
    try:
        report = check_folder(dataset, root, variant=variant)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(report.format())
    if not report.ok:
        ctx.exit(1)
