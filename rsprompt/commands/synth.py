"""``rsprompt synth``: a synthetic multimodal scene, tiles in an official layout, or "own data"."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

_KINDS = ("isprs", "whu-opt-sar")
_LAYOUTS = ("vaihingen", "potsdam", "whu-opt-sar", "custom")
_LAYOUT_KIND = {"vaihingen": "isprs", "potsdam": "isprs", "whu-opt-sar": "whu-opt-sar"}


def _parse_size(ctx: click.Context, param: click.Parameter, value: str | None):
    if value is None:
        return None
    text = value.lower().replace("x", ",")
    try:
        parts = [int(v) for v in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected N or H,W (or HxW), got {value!r}") from None
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return (parts[0], parts[1])
    raise click.BadParameter(f"expected N or H,W (or HxW), got {value!r}")


def _parse_tiles(values: tuple[str, ...]) -> list[str] | None:
    tiles = [t.strip() for v in values for t in v.replace(",", " ").split() if t.strip()]
    return tiles or None


@click.command(
    "synth",
    short_help="Write a synthetic optical + DSM/SAR scene (or an official dataset layout).",
)
@click.option(
    "--kind",
    type=click.Choice(_KINDS),
    default=None,
    help="Scene kind: urban ISPRS (optical + DSM) or WHU-OPT-SAR (optical + SAR). "
    "Default isprs, or the layout's kind.",
)
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Output folder (created when missing).",
)
@click.option(
    "--size",
    callback=_parse_size,
    default="256",
    show_default=True,
    help="Scene/tile size in pixels: N or H,W.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option(
    "--layout",
    type=click.Choice(_LAYOUTS),
    default=None,
    help="Write tiles with the exact folder and file names of this official dataset "
    "instead of scene.tif / dsm.tif|sar.tif / labels.tif. custom: --count scenes/scene_N.tif "
    "with dsm/scene_N_dsm.tif and the labels as polygons in labels.gpkg (text attribute "
    "landcover), as drawn in QGIS (docs/own-data.md).",
)
@click.option(
    "--count",
    type=click.IntRange(1),
    default=None,
    help="Layout custom: number of scenes [default: 2].",
)
@click.option(
    "--dtype",
    type=click.Choice(("uint8", "uint16")),
    default=None,
    help="Layout custom: optical data type; uint16 holds values x 10000/255 [default: uint16].",
)
@click.option(
    "--labels-crs", default=None, help="Layout custom: CRS of the polygons [default: the scenes']."
)
@click.option(
    "--bands",
    type=click.Choice(("irrg", "rgb", "rgbir")),
    default=None,
    help="Optical band order (irrg = NIR,R,G; rgbir = R,G,B,NIR). Default irrg for "
    "isprs, rgbir for whu-opt-sar. Layouts fix their own bands.",
)
@click.option(
    "--aux",
    type=click.Choice(("dsm", "sar", "both")),
    default=None,
    help="Second modality to write (default dsm for isprs, sar for whu-opt-sar).",
)
@click.option(
    "--resolution",
    type=float,
    default=None,
    help="Pixel size in metres (default 0.09 isprs, 5 whu-opt-sar).",
)
@click.option(
    "--crs",
    "crs",
    default=None,
    help="Projected CRS of the scene, e.g. EPSG:32632 "
    "(default EPSG:32633 isprs, EPSG:32649 whu-opt-sar).",
)
@click.option("--aux-crs", default=None, help="Write the DSM/SAR in another CRS, e.g. EPSG:32632.")
@click.option(
    "--aux-resolution",
    type=float,
    default=None,
    help="Pixel size of the DSM/SAR in metres on the ground (default: the scene's). In a CRS "
    "not in metres (--aux-crs EPSG:4326) it is converted to that CRS's units at the scene centre.",
)
@click.option(
    "--aux-coverage",
    type=click.FloatRange(0, 1, min_open=True),
    default=1.0,
    show_default=True,
    help="Fraction of the optical footprint the DSM/SAR covers.",
)
@click.option(
    "--aux-nodata-border",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Width (aux pixels) of a nodata frame around the DSM/SAR.",
)
@click.option(
    "--tiles",
    multiple=True,
    help="Layout tiles (repeatable or comma-separated): Vaihingen area numbers, "
    "Potsdam a_b, WHU scene names. Default: 2 training, 1 validation and 1 test tile "
    "(enough for the shipped configs to train).",
)
@click.option(
    "--labels-flat",
    is_flag=True,
    help="Layouts vaihingen/potsdam: write the complete label archives flat in the root.",
)
@click.option("--dsm-world-files", is_flag=True, help="Layout vaihingen: write .tfw world files.")
@click.option(
    "--off-palette",
    "off_palette",
    multiple=True,
    metavar="TILE",
    help="Layout potsdam: code cars as (252,255,0) in this tile's labels, like the real tile 6_7 "
    "(repeatable).",
)
@click.option(
    "--no-georef",
    is_flag=True,
    help="Layout whu-opt-sar: write no CRS/transform. Default scene: write no CRS.",
)
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
def synth(
    kind: str | None,
    out: Path,
    size,
    seed: int,
    layout: str | None,
    bands: str | None,
    aux: str | None,
    resolution: float | None,
    crs: str | None,
    aux_crs: str | None,
    aux_resolution: float | None,
    aux_coverage: float,
    aux_nodata_border: int,
    tiles: tuple[str, ...],
    labels_flat: bool,
    dsm_world_files: bool,
    off_palette: tuple[str, ...],
    no_georef: bool,
    overwrite: bool,
    count: int | None,
    dtype: str | None,
    labels_crs: str | None,
) -> None:
    """Write a seeded synthetic multimodal scene (optical + DSM or SAR + labels).

    By default writes georeferenced scene.tif, dsm.tif or sar.tif and labels.tif into --out. With
    --layout the same kind of content is written as tiles named exactly like the official
    distribution (e.g. top/top_mosaic_09cm_area1.tif for Vaihingen).

    \b
    Examples:
      rsprompt synth --out demo_scene --size 512 --seed 1
      rsprompt synth --kind whu-opt-sar --out whu --size 256
      rsprompt synth --out s --aux-crs EPSG:32632 --aux-resolution 0.5 --aux-nodata-border 4
      rsprompt synth --layout vaihingen --out data/vaihingen --size 256 --tiles 1,3,2
      rsprompt synth --layout custom --out mydata --count 3 --aux-crs EPSG:32632
    """  # noqa: D301 — "\b" is click's no-rewrap marker (a backspace character)
    opts = _SynthOptions(
        kind=kind,
        out=out,
        size=size,
        seed=seed,
        layout=layout,
        bands=bands,
        aux=aux,
        resolution=resolution,
        crs=crs,
        aux_crs=aux_crs,
        aux_resolution=aux_resolution,
        aux_coverage=aux_coverage,
        aux_nodata_border=aux_nodata_border,
        tiles=tiles,
        labels_flat=labels_flat,
        dsm_world_files=dsm_world_files,
        off_palette=off_palette,
        no_georef=no_georef,
        overwrite=overwrite,
        count=count,
        dtype=dtype,
        labels_crs=labels_crs,
    )
    _refuse_custom_only(opts)
    try:
        if layout == "custom":
            _synth_custom(opts)
            return
        if layout is not None:
            _synth_layout(opts)
            return
        scene, written = _synth_scene(opts)
    except FileExistsError as exc:
        raise click.ClickException(str(exc)) from None
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"wrote {scene.kind} scene {scene.shape[0]}x{scene.shape[1]} (seed {seed}) to {out}")
    for key, path in written.items():
        click.echo(f"  {key}\t{path}")


@dataclass(frozen=True)
class _SynthOptions:
    """The values ``rsprompt synth`` was given (see its options for their meaning)."""

    kind: str | None
    out: Path
    size: int | tuple[int, int]
    seed: int
    layout: str | None
    bands: str | None
    aux: str | None
    resolution: float | None
    crs: str | None
    aux_crs: str | None
    aux_resolution: float | None
    aux_coverage: float
    aux_nodata_border: int
    tiles: tuple[str, ...]
    labels_flat: bool
    dsm_world_files: bool
    off_palette: tuple[str, ...]
    no_georef: bool
    overwrite: bool
    count: int | None
    dtype: str | None
    labels_crs: str | None


def _given(options: dict[str, Any]) -> list[str]:
    """The names in ``options`` whose value is not None (the options given), in order."""
    return [k for k, v in options.items() if v is not None]


def _aux_grid_given(o: _SynthOptions) -> dict[str, Any]:
    """--aux-coverage and --aux-nodata-border, None where left at their defaults."""
    return {
        "--aux-coverage": None if o.aux_coverage == 1.0 else o.aux_coverage,
        "--aux-nodata-border": o.aux_nodata_border or None,
    }


def _refuse_custom_only(o: _SynthOptions) -> None:
    """Raise a usage error when an option of ``--layout custom`` is given without it."""
    given = _given({"--count": o.count, "--dtype": o.dtype, "--labels-crs": o.labels_crs})
    if o.layout != "custom" and given:
        raise click.UsageError(f"{', '.join(given)} apply to --layout custom only")


def _synth_custom(o: _SynthOptions) -> None:
    """``--layout custom``: hand its options to :func:`_write_custom`, refusing the others."""
    _write_custom(
        o.out,
        kind=o.kind or "isprs",
        size=o.size,
        seed=o.seed,
        bands=o.bands,
        count=o.count,
        dtype=o.dtype,
        resolution=o.resolution,
        crs=o.crs,
        aux_crs=o.aux_crs,
        aux_resolution=o.aux_resolution,
        labels_crs=o.labels_crs,
        overwrite=o.overwrite,
        refused={
            "--aux": o.aux,
            **_aux_grid_given(o),
            "--tiles": o.tiles or None,
            "--labels-flat": o.labels_flat or None,
            "--dsm-world-files": o.dsm_world_files or None,
            "--off-palette": o.off_palette or None,
            "--no-georef": o.no_georef or None,
        },
    )


def _check_layout_options(o: _SynthOptions) -> None:
    """Refuse a --kind other than the layout's and the options of the default scene output."""
    layout = o.layout
    if o.kind is not None and o.kind != _LAYOUT_KIND[layout]:
        raise click.UsageError(
            f"--layout {layout} holds {_LAYOUT_KIND[layout]} scenes, not --kind {o.kind}"
        )
    scene_only = {
        "--bands": o.bands,
        "--aux": o.aux,
        "--resolution": o.resolution,
        "--crs": o.crs,
        "--aux-crs": o.aux_crs,
        "--aux-resolution": o.aux_resolution,
        **_aux_grid_given(o),
    }
    given = _given(scene_only)
    if given:
        raise click.UsageError(
            f"{', '.join(given)} apply to the default scene output, not to --layout "
            "(an official layout fixes its own bands, grid and modalities)"
        )


def _layout_extras(o: _SynthOptions) -> dict[str, Any]:
    """The keyword options of ``write_layout`` that depend on the layout."""
    options: dict = {"labels_flat": o.labels_flat}
    if o.layout == "vaihingen":
        options["dsm_world_files"] = o.dsm_world_files
    if o.layout == "whu-opt-sar":
        options["georeferenced"] = not o.no_georef
    if o.off_palette:
        if o.layout != "potsdam":
            raise click.UsageError("--off-palette applies to --layout potsdam")
        car, odd = (255, 255, 0), (252, 255, 0)
        options["off_palette"] = {t: {car: odd} for t in _parse_tiles(o.off_palette) or []}
    return options


def _synth_layout(o: _SynthOptions) -> None:
    """``--layout vaihingen|potsdam|whu-opt-sar``: check the options, write the tiles, list them."""
    from rsprompt.data.synthetic import trainable_tiles, write_layout

    _check_layout_options(o)
    layout, out = o.layout, o.out
    extras = _layout_extras(o)
    written = write_layout(
        out,
        layout,
        tiles=_parse_tiles(o.tiles) or trainable_tiles(layout),
        size=o.size,
        seed=o.seed,
        overwrite=o.overwrite,
        **extras,
    )
    n = sum(len(v) for v in written.values())
    click.echo(f"wrote {n} files for {len(written)} {layout} tile(s) under {out}")
    for tile, paths in written.items():
        for key, path in paths.items():
            click.echo(f"  {tile}\t{key}\t{path}")


def _synth_scene(o: _SynthOptions) -> tuple[Any, dict[str, Path]]:
    """The default output: one scene; returns it and the paths written by key."""
    from rsprompt.data.synthetic import generate_scene, write_scene

    if o.tiles or o.labels_flat or o.dsm_world_files or o.off_palette:
        raise click.UsageError(
            "--tiles, --labels-flat, --dsm-world-files and --off-palette need --layout"
        )
    scene = generate_scene(
        o.kind or "isprs",
        o.size,
        o.seed,
        bands=o.bands,
        resolution=o.resolution,
        crs=None if o.no_georef else (o.crs or "auto"),
        aux=o.aux,
    )
    written = write_scene(
        scene,
        o.out,
        aux_crs=o.aux_crs,
        aux_resolution=o.aux_resolution,
        aux_coverage=o.aux_coverage,
        aux_nodata_border=o.aux_nodata_border,
        overwrite=o.overwrite,
    )
    return scene, written


def _write_custom(out: Path, *, refused: dict, count: int | None, dtype: str | None, **kw) -> None:
    """``--layout custom``: scenes, DSMs and labels.gpkg (see rsprompt.data.synthetic.custom)."""
    from rsprompt.data.synthetic.custom import LABEL_FIELD, write_custom

    given = [k for k, v in refused.items() if v is not None]
    if given:
        raise click.UsageError(f"{', '.join(given)} do not apply to --layout custom")
    if kw.get("bands") is None:
        kw["bands"] = "rgbir"
    written = write_custom(out, count=count or 2, dtype=dtype or "uint16", **kw)
    n = (len(written) - 1) // 2
    click.echo(
        f"wrote {n} scene(s) with a DSM each and their labels as polygons (attribute "
        f"{LABEL_FIELD!r}) under {out}"
    )
    for key, path in written.items():
        click.echo(f"  {key}\t{path}")
