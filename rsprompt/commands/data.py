"""``rsprompt data``: dataset folder tools."""

from __future__ import annotations

from pathlib import Path

import click

_BENCHMARKS = ("vaihingen", "potsdam", "whu-opt-sar")


@click.group("data")
def data() -> None:
    """Check data before training: official layouts (vaihingen, potsdam, whu-opt-sar) or your own."""


@data.command("check")
@click.argument("dataset", type=click.Choice([*_BENCHMARKS, "custom"]))
@click.argument("root", type=click.Path(path_type=Path), required=False)
@click.option(
    "--variant",
    default="official",
    show_default=True,
    help="Split variant used to group tiles (vaihingen: deepnets; potsdam: mobanet).",
)
@click.option(
    "--images",
    multiple=True,
    help='custom: optical rasters, a glob ("scenes/*.tif"), paths (repeatable) or a text file.',
)
@click.option("--aux", help="custom: DSM/SAR, a pattern with {stem}, {name}, {dir} or one file.")
@click.option("--labels", help="custom: vector file (GeoPackage, …) or label raster pattern.")
@click.option("--label-field", help="custom: attribute holding the classes (vector labels).")
@click.option("--label-layer", help="custom: layer of a multi-layer vector file.")
@click.option("--classes", help='custom: ordered class names "a,b,c" [default: sorted values].')
@click.option("--background", help="custom: class of the pixels outside every polygon.")
@click.option("--ignore-index", type=int, help="custom: ignored value of label rasters.")
@click.pass_context
def check(
    ctx: click.Context,
    dataset: str,
    root: Path | None,
    variant: str,
    images: tuple[str, ...],
    aux: str | None,
    labels: str | None,
    label_field: str | None,
    label_layer: str | None,
    classes: str | None,
    background: str | None,
    ignore_index: int | None,
) -> None:
    """Check that ROOT holds DATASET as distributed, and that every file decodes.

    Prints, per split, the tiles found with their modalities, sizes and CRS. Absent official
    tiles, optional products, unknown files, a DSM/SAR covering only part of its tile and label
    pixels of no class are warnings (exit code 0). Exits with code 1, naming each file, when a
    tile lacks a required modality, a file is unreadable or corrupt (every block is decoded, so
    this reads the whole dataset), a tile's modalities disagree (size, band count, dtype, or a
    georeferenced label off its image), a DSM/SAR has no valid pixel, or a label holds no class.

    Your own data: DATASET custom, ROOT (default the current folder) is where relative paths
    start; --images, --labels (and --label-field for polygons) are needed, --aux optional. Prints
    per image the size, bands, dtype, CRS and aux coverage, the labelled area and the pixels per
    class; exits with code 1 when something would stop training. Example:

    \b
      rsprompt data check custom --images "scenes/*.tif" --aux "dsm/{stem}_dsm.tif"
          --labels labels.gpkg --label-field landcover
    """  # noqa: D301 — "\b" is click's no-rewrap marker (a backspace character)
    if dataset == "custom":
        _check_custom(
            ctx,
            root or Path("."),
            images=images,
            aux=aux,
            labels=labels,
            label_field=label_field,
            label_layer=label_layer,
            classes=classes,
            background=background,
            ignore_index=ignore_index,
        )
        return
    given = [
        name
        for name, value in (
            ("--images", images),
            ("--aux", aux),
            ("--labels", labels),
            ("--label-field", label_field),
            ("--label-layer", label_layer),
            ("--classes", classes),
            ("--background", background),
            ("--ignore-index", ignore_index),
        )
        if value
    ]
    if given:
        raise click.UsageError(f"{', '.join(given)} apply to `rsprompt data check custom` only")
    if root is None:
        raise click.UsageError(f"missing argument ROOT (the {dataset} folder)")
    _check_benchmark(ctx, dataset, root, variant)


def _check_benchmark(ctx: click.Context, dataset: str, root: Path, variant: str) -> None:
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


def _check_custom(ctx: click.Context, root: Path, *, images: tuple[str, ...], **kwargs) -> None:
    from rsprompt.data.check import check_custom

    if not images:
        raise click.UsageError("custom data needs --images")
    if not kwargs.get("labels"):
        raise click.UsageError("custom data needs --labels")
    if not root.is_dir():
        raise click.ClickException(f"{root} is not a folder")
    spec: str | list[str] = images[0] if len(images) == 1 else list(images)
    labels = kwargs.pop("labels")
    try:
        report = check_custom(spec, labels, root=root, **kwargs)
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc).splitlines()[0]) from None
    click.echo(report.format())
    if not report.ok:
        ctx.exit(1)
