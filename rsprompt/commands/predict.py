"""``rsprompt predict``: segment whole scenes into QGIS-ready class maps."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import click

# Idle OpenMP threads of torch must not spin against the reader/writer threads (on a 2-core
# machine spinning made the forward pass 3× slower). Effective only before torch is imported,
# which the lazy CLI guarantees for `rsprompt predict`.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# GDAL's block cache defaults to 5% of the RAM and fills with the blocks of big scenes: cap it so
# that peak memory does not follow the scene's size (32 MB holds a row of 512-px windows of a
# 6000-px-wide 3-band scene; blocks re-read after eviction cost little).
os.environ.setdefault("GDAL_CACHEMAX", "32")
# With the fixed 1 MiB mmap threshold below, every large torch tensor is a fresh mmap: backing it
# with transparent huge pages (torch's THP_MEM_ALLOC_ENABLE, Linux) cuts the page faults that made
# a light model's forward pass ~1.6× slower.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def _fixed_mmap_threshold(nbytes: int = 1 << 20) -> None:
    """Make glibc return big freed buffers to the OS (no dynamic mmap threshold).

    Window batches are tens of MB; with glibc's dynamic threshold they end up in the heap and
    fragment it, so the resident memory crept up with the number of windows. Linux/glibc only.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, nbytes)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


_fixed_mmap_threshold()

PLACEHOLDERS = "{stem} (scene file name without extension), {name} (file name), {dir} (folder)"


def _fill(pattern: str, scene: Path) -> str:
    try:
        return pattern.format(stem=scene.stem, name=scene.name, dir=str(scene.parent))
    except (KeyError, IndexError, ValueError) as exc:
        raise click.BadParameter(
            f"pattern {pattern!r}: unknown placeholder {exc}; use {PLACEHOLDERS}"
        ) from None


def _aux_for(pattern: str, scene: Path) -> Path:
    """The aux file for ``scene``: ``pattern`` filled in, relative to the cwd or else the scene's folder."""
    path = Path(_fill(pattern, scene)).expanduser()
    if path.is_absolute() or path.exists():
        return path
    beside = scene.parent / path
    return beside if beside.exists() else path


def _has_placeholder(pattern: str | None) -> bool:
    return pattern is not None and "{" in pattern


@click.command("predict")
@click.argument("scenes", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-m",
    "--model",
    "checkpoint",
    required=True,
    type=click.Path(path_type=Path),
    help="Model checkpoint (model.ckpt written by `rsprompt train`).",
)
@click.option(
    "--dem", help=f"DSM raster (any CRS/grid overlapping the scene); may use {PLACEHOLDERS}."
)
@click.option("--sar", help="SAR raster (any CRS/grid overlapping the scene); same placeholders.")
@click.option(
    "-o", "--output", help="Class map to write (.tif); default {stem}_pred.tif in --out-dir."
)
@click.option(
    "--out-dir",
    type=click.Path(path_type=Path),
    help="Folder for the outputs of several scenes (created if missing).",
)
@click.option("--window", type=int, help="Window side in pixels [default: training patch size].")
@click.option("--overlap", type=int, help="Window overlap in pixels [default: window / 4].")
@click.option(
    "--batch-size", type=int, default=4, show_default=True, help="Windows per forward pass."
)
@click.option("--tta", is_flag=True, help="Average over horizontal/vertical flips (4× slower).")
@click.option("--probabilities", help="Also write per-class probabilities (uint8 GeoTIFF).")
@click.option("--vectors", help="Also write class polygons (GeoPackage).")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option("--device", default="cpu", show_default=True, help="Torch device.")
@click.option("--classes", help='Class names for open-vocabulary checkpoints: "name1,name2,…".')
@click.option("--palette", help="Colours: a dataset name, '#rrggbb,#rrggbb,…' or a file of those.")
@click.option("--weights", help="Encoder weights file (if it moved since training).")
@click.option(
    "--overviews",
    type=click.Choice(["mode", "nearest"]),
    default="mode",
    show_default=True,
    help="Resampling of the class map's overviews.",
)
@click.option(
    "--compress",
    type=click.Choice(["deflate", "zstd"]),
    default="deflate",
    show_default=True,
)
@click.option(
    "--summary-json", type=click.Path(path_type=Path), help="Write the summaries as JSON."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def predict(
    scenes: tuple[Path, ...],
    checkpoint: Path,
    dem: str | None,
    sar: str | None,
    output: str | None,
    out_dir: Path | None,
    window: int | None,
    overlap: int | None,
    batch_size: int,
    tta: bool,
    probabilities: str | None,
    vectors: str | None,
    overwrite: bool,
    device: str,
    classes: str | None,
    palette: str | None,
    weights: str | None,
    overviews: str,
    compress: str,
    summary_json: Path | None,
    quiet: bool,
) -> None:
    """Predict SCENES (optical GeoTIFFs) into Cloud-Optimised GeoTIFF class maps.

    Each map has the scene's grid, a colour table, a QGIS style (.qml) and a raster attribute
    table (.aux.xml) with the class names. The aux raster (--dem or --sar) is warped onto the
    scene's grid on the fly; where it has no data the model runs without it.

    Example: rsprompt predict scene.tif --model run/model.ckpt --dem dsm.tif -o map.tif

    Several scenes, aux files by pattern: rsprompt predict a.tif b.tif -m model.ckpt
    --dem "{stem}_dsm.tif" --out-dir maps/
    """
    from rsprompt.inference.from_checkpoint import CheckpointPredictor
    from rsprompt.inference.reader import PredictError

    if dem is not None and sar is not None:
        raise click.UsageError("give --dem or --sar, not both")
    aux_pattern, aux_kind = (dem, "dsm") if dem is not None else (sar, "sar")
    if aux_pattern is None:
        aux_kind = None
    several = len(scenes) > 1
    if output is None and out_dir is None:
        raise click.UsageError("give -o/--output (one scene) or --out-dir")
    for name, pat in (
        ("-o/--output", output),
        ("--probabilities", probabilities),
        ("--vectors", vectors),
    ):
        if (
            several
            and pat is not None
            and not _has_placeholder(pat)
            and (out_dir is None or Path(pat).is_absolute())
        ):
            raise click.UsageError(
                f"{name} {pat!r} would be the same file for every scene: use a placeholder, "
                f"e.g. {{stem}}, or --out-dir"
            )

    def out_path(pattern: str | None, default: str | None, scene: Path) -> Path | None:
        pat = pattern if pattern is not None else default
        if pat is None:
            return None
        p = Path(_fill(pat, scene)).expanduser()
        if out_dir is not None and not p.is_absolute():
            if several and not _has_placeholder(pat):
                p = p.with_name(f"{scene.stem}_{p.name}")
            p = out_dir / p
        return p

    jobs = []
    for scene in scenes:
        jobs.append(
            {
                "scene": scene,
                "aux": _aux_for(aux_pattern, scene) if aux_pattern is not None else None,
                "out": out_path(output, "{stem}_pred.tif", scene),
                "probs": out_path(probabilities, None, scene),
                "vectors": out_path(vectors, None, scene),
            }
        )
    seen: dict[Path, Path] = {}
    for job in jobs:
        for key in ("out", "probs", "vectors"):
            p = job[key]
            if p is None:
                continue
            r = p.resolve()
            if r in seen:
                raise click.UsageError(
                    f"scenes {seen[r]} and {job['scene']} would both write {p}; rename the scenes "
                    "or use {stem} in the output pattern"
                )
            seen[r] = job["scene"]
    try:
        from rsprompt.inference.predictor import check_outputs

        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
        for job in jobs:
            check_outputs([job["out"], job["probs"], job["vectors"]], overwrite)
        predictor = CheckpointPredictor(
            checkpoint,
            weights=weights,
            device=device,
            classes=classes.split(",") if classes is not None else None,
            palette=palette,
        )
        # Check every input before writing anything.
        for job in jobs:
            predictor.check(job["scene"], aux=job["aux"], aux_kind=aux_kind)
        summaries = []
        for job in jobs:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UserWarning)
                summary = predictor.predict(
                    job["scene"],
                    job["out"],
                    aux=job["aux"],
                    aux_kind=aux_kind,
                    window=window,
                    overlap=overlap,
                    batch_size=batch_size,
                    tta=tta,
                    probabilities=job["probs"],
                    vectors=job["vectors"],
                    overwrite=overwrite,
                    overview_resampling=overviews,
                    compress=compress,
                    progress=not quiet,
                )
            for w in caught:
                if issubclass(w.category, UserWarning):
                    click.echo(f"warning: {w.message}", err=True)
            click.echo(summary.format())
            summaries.append(summary.as_dict())
    except PredictError as exc:
        raise click.ClickException(str(exc)) from None
    if summary_json is not None:
        summary_json.write_text(json.dumps(summaries, indent=2))
