"""``rsprompt predict``: segment whole scenes into QGIS-ready class maps.

Safety of what it writes: every path the run writes (class maps and their ``.qml`` and
``.aux.xml`` sidecars, probabilities, vectors, the summary JSON, stale sidecars it deletes, lock
files) is planned and checked before anything is written: never an input (scenes, aux rasters,
checkpoint, encoder weights, palette file; compared after resolving symlinks and ``..``), never
twice in the job, never a folder, existing files only with ``--overwrite``. Each output is locked
for the run (a second run on it refuses), stale temporary files of killed runs are removed, and
each scene's outputs are committed together (see :mod:`rsprompt.inference.writers`).

Importing this module changes nothing in the process: the run's environment settings and the
allocator tuning are made when the command runs (:func:`_tuned_process`).
"""

from __future__ import annotations

import os
import signal
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from rsprompt.commands._options import device_option, precision_option, scale_options

#: Process settings of a prediction run, set (when absent) while the command runs:
#: - ``OMP_WAIT_POLICY``: idle OpenMP threads of torch must not spin against the reader/writer
#:   threads (on a 2-core machine spinning made the forward pass 3× slower); effective only
#:   before torch is imported, which the lazy CLI guarantees for ``rsprompt predict``;
#: - ``GDAL_CACHEMAX``: GDAL's block cache defaults to 5% of the RAM and fills with the blocks of
#:   big scenes; 32 MB holds a row of 512-px windows of a 6000-px-wide 3-band scene;
#: - ``THP_MEM_ALLOC_ENABLE``: with the fixed mmap threshold below every large torch tensor is a
#:   fresh mmap; transparent huge pages cut the page faults (a light model ran ~1.6× faster).
RUN_ENVIRONMENT = {"OMP_WAIT_POLICY": "PASSIVE", "GDAL_CACHEMAX": "32", "THP_MEM_ALLOC_ENABLE": "1"}

PLACEHOLDERS = "{stem} (scene file name without extension), {name} (file name), {dir} (folder)"

#: Names of the output options in messages (class map, probabilities, vectors).
OPTION_NAMES = ("-o/--output", "--probabilities", "--vectors")


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


@contextmanager
def _tuned_process() -> Iterator[None]:
    """Apply :data:`RUN_ENVIRONMENT` and the mmap threshold for the run.

    Variables the user did not set are removed again afterwards (the allocator setting stays:
    glibc cannot restore its dynamic threshold).
    """
    added = [k for k in RUN_ENVIRONMENT if k not in os.environ]
    os.environ.update({k: RUN_ENVIRONMENT[k] for k in added})
    _fixed_mmap_threshold()
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C so that every temporary file is removed."""


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Handle SIGTERM like SIGINT (only possible in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _WarningPrinter:
    """Records the run's warnings and prints each distinct one once, whatever its category.

    ``UserWarning``s print as ``warning: …``, others as ``warning (RuntimeWarning): …``. Only
    ``DeprecationWarning``/``PendingDeprecationWarning`` (about library APIs, for developers;
    Python hides them by default too) are left out.
    """

    HIDDEN = (DeprecationWarning, PendingDeprecationWarning)

    def __init__(self) -> None:
        self._seen: set[tuple[type, str]] = set()
        self._records: list[warnings.WarningMessage] = []

    @contextmanager
    def recording(self) -> Iterator[_WarningPrinter]:
        """Record warnings inside the block; print what is left at its end."""
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            self._records = records
            try:
                yield self
            finally:
                self.flush()

    def flush(self) -> None:
        """Print the warnings recorded so far (each distinct one once per run)."""
        records, self._records[:] = list(self._records), []
        for w in records:
            key = (w.category, str(w.message))
            if key in self._seen or issubclass(w.category, self.HIDDEN):
                continue
            self._seen.add(key)
            kind = "" if issubclass(w.category, UserWarning) else f" ({w.category.__name__})"
            click.echo(f"warning{kind}: {w.message}", err=True)


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


@dataclass
class _Job:
    """One scene: its inputs and everything it writes."""

    scene: Path
    aux: Path | None
    out: Path
    probs: Path | None
    vectors: Path | None
    outputs: list[Any] = field(default_factory=list)  # PlannedOutput


@dataclass
class _Plan:
    """The whole run: jobs, the summary JSON, inputs, and the folder to create."""

    jobs: list[_Job]
    summary: Any  # PlannedOutput | None
    inputs: list[tuple[str, Path]]
    out_dir: Path | None

    def outputs(self) -> list[Any]:
        """Every planned output of every scene, then the summary JSON."""
        every = [o for job in self.jobs for o in job.outputs]
        return every + ([self.summary] if self.summary is not None else [])

    def creatable(self) -> list[Path]:
        """The folder the run creates (``--out-dir``, when missing)."""
        return [self.out_dir] if self.out_dir is not None and not self.out_dir.exists() else []


def _check_patterns(
    scenes: tuple[Path, ...], output: str | None, out_dir: Path | None, patterns: dict[str, Any]
) -> None:
    """Refuse option combinations that cannot work before looking at any file."""
    if output is None and out_dir is None:
        raise click.UsageError("give -o/--output (one scene) or --out-dir")
    resolved: dict[Path, Path] = {}
    for scene in scenes:
        key = scene.resolve()
        if key in resolved:
            raise click.UsageError(f"scene {scene} is given twice")
        resolved[key] = scene
    for name, pat in patterns.items():
        if (
            len(scenes) > 1
            and pat is not None
            and not _has_placeholder(pat)
            and (out_dir is None or Path(pat).is_absolute())
        ):
            raise click.UsageError(
                f"{name} {pat!r} would be the same file for every scene: use a placeholder, "
                f"e.g. {{stem}}, or --out-dir"
            )
    if out_dir is not None:
        existing = next(p for p in (out_dir, *out_dir.absolute().parents) if p.exists())
        if not existing.is_dir():
            what = (
                "is a file" if existing == out_dir else f"cannot be created ({existing} is a file)"
            )
            raise click.UsageError(f"--out-dir {out_dir} {what}; give a folder")


def _plan_jobs(
    scenes: tuple[Path, ...],
    aux_pattern: str | None,
    patterns: tuple[str | None, str | None, str | None],
    out_dir: Path | None,
) -> list[_Job]:
    """Each scene's aux file and output paths (placeholders filled, --out-dir applied)."""
    from rsprompt.inference.predictor import scene_outputs

    several = len(scenes) > 1

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

    output, probabilities, vectors = patterns
    jobs = []
    for scene in scenes:
        job = _Job(
            scene=scene,
            aux=_aux_for(aux_pattern, scene) if aux_pattern is not None else None,
            out=out_path(output, "{stem}_pred.tif", scene),  # type: ignore[arg-type]
            probs=out_path(probabilities, None, scene),
            vectors=out_path(vectors, None, scene),
        )
        job.outputs = scene_outputs(
            job.out, job.probs, job.vectors, owner=scene, names=OPTION_NAMES
        )
        jobs.append(job)
    return jobs


def _collision_message(a: Any, b: Any) -> str:
    """Two planned outputs name one file: say which, and how to tell them apart."""
    if a.owner is None or b.owner is None or a.owner == b.owner:
        return f"{a.label} and {b.label} name the same file {b.path}"
    labels = a.label if a.label == b.label else f"{a.label} / {b.label}"
    text = f"scenes {a.owner} and {b.owner} would both write {b.path} ({labels})"
    if a.owner.stem == b.owner.stem:
        return (
            f"{text}: the scenes have the same file name stem {a.owner.stem!r}, so {{stem}} "
            "cannot tell them apart; use {dir} to write each map beside its scene (e.g. -o "
            '"{dir}/{stem}_pred.tif" without --out-dir), or predict them in separate runs with '
            "different --out-dir folders"
        )
    return f"{text}; use {{stem}} (or {{name}}, {{dir}}) in the output patterns"


def _build_plan(
    jobs: list[_Job],
    summary_json: Path | None,
    out_dir: Path | None,
    extra_inputs: list[tuple[str, Path]],
) -> _Plan:
    """The run's plan; refuses two outputs on one file (across all scenes)."""
    from rsprompt.inference.writers import PlannedOutput, find_collision

    summary = None
    if summary_json is not None:
        if summary_json.suffix.lower() != ".json":
            raise click.UsageError(f"--summary-json {summary_json} must be a .json file")
        summary = PlannedOutput(summary_json, "--summary-json")
    inputs = [("scene", j.scene) for j in jobs]
    inputs += [("aux raster", j.aux) for j in jobs if j.aux is not None]
    plan = _Plan(jobs, summary, inputs + extra_inputs, out_dir)
    clash = find_collision(plan.outputs())
    if clash is not None:
        raise click.UsageError(_collision_message(*clash))
    return plan


def _check_plan(plan: _Plan, overwrite: bool) -> None:
    """Outputs vs inputs, folders, existing files (see ``check_planned``)."""
    from rsprompt.inference.writers import check_planned

    check_planned(plan.outputs(), plan.inputs, overwrite=overwrite, creatable=plan.creatable())


def _make_folder(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return those created (deepest first)."""
    from rsprompt.inference.reader import PredictError

    missing = [p for p in (folder, *folder.absolute().parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PredictError(f"cannot create --out-dir {folder}: {exc.strerror or exc}") from None
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders the run created, if it left them empty (deepest first)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _predict_all(
    predictor: Any,
    plan: _Plan,
    printer: _WarningPrinter,
    aux_kind: str | None,
    options: dict[str, Any],
) -> list[dict[str, Any]]:
    """Predict every scene (under the run's output locks); return the summaries."""
    summaries = []
    for job in plan.jobs:
        summary = predictor.predict(
            job.scene,
            job.out,
            aux=job.aux,
            aux_kind=aux_kind,
            probabilities=job.probs,
            vectors=job.vectors,
            **options,
        )
        printer.flush()
        click.echo(summary.format())
        summaries.append(summary.as_dict())
    return summaries


@click.command("predict")
@click.argument("scenes", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "-m",
    "--model",
    "checkpoint",
    type=click.Path(path_type=Path),
    help="Model checkpoint (model.ckpt written by `rsprompt train`). Required (except with --merge).",
)
@click.option(
    "--dem", help=f"DSM raster (any CRS/grid overlapping the scene); may use {PLACEHOLDERS}."
)
@click.option("--sar", help="SAR raster (any CRS/grid overlapping the scene); same placeholders.")
@click.option(
    "--bands",
    help="1-based scene bands fed to the model, e.g. 4,3,2 of a Sentinel-2 scene "
    "[default: the bands recorded in the checkpoint].",
)
@click.option(
    "--aux-bands",
    help="1-based bands of the --dem/--sar raster, e.g. 1 (VV of a VV,VH file) "
    "[default: those used in training, else all].",
)
@click.option(
    "-o", "--output", help="Class map to write (.tif); default {stem}_pred.tif in --out-dir."
)
@click.option(
    "--out-dir",
    type=click.Path(path_type=Path),
    help="Folder for the outputs of several scenes (created if missing).",
)
@click.option(
    "--window",
    type=click.IntRange(min=1),
    help="Window side in pixels [default: training patch size].",
)
@click.option(
    "--overlap",
    type=click.IntRange(min=0),
    help="Window overlap in pixels, less than the window [default: window / 4].",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Windows per forward pass.",
)
@click.option("--tta", is_flag=True, help="Average over horizontal/vertical flips (4× slower).")
@click.option("--probabilities", help="Also write per-class probabilities (uint8 GeoTIFF, .tif).")
@click.option("--vectors", help="Also write class polygons (GeoPackage, .gpkg).")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs (and their sidecars).")
@device_option
@precision_option(
    "Forward-pass precision; auto = bf16 where the CPU (AVX-512 BF16/AMX) or GPU computes "
    "it natively, else 32. The map, probabilities and blending stay float32/uint8."
)
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
    "--summary-json",
    type=click.Path(path_type=Path),
    help="Write the summaries as JSON (.json; its folder must exist).",
)
@click.option(
    "--backend",
    type=click.Choice(["auto", "torch", "onnxruntime"]),
    default="auto",
    show_default=True,
    help="Run the model with torch (a .ckpt) or onnxruntime (a .onnx from `rsprompt export`; "
    "its window, bands and normalisation are fixed at export, fp32 only). auto: by the "
    "--model file's suffix.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="onnxruntime intra-op threads (default: one per physical core).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@scale_options
@click.pass_context
def predict(ctx: click.Context, **opts: Any) -> None:
    """Predict SCENES (optical GeoTIFFs) into Cloud-Optimised GeoTIFF class maps.

    Each map has the scene's grid, a colour table, a QGIS style (.qml) and a raster attribute
    table (.aux.xml) with the class names. The aux raster (--dem or --sar) is warped onto the
    scene's grid on the fly; where it has no data the model runs without it.

    Nothing is written before every input and output is checked; an output that exists (sidecars
    included) is replaced only with --overwrite, and never an input.

    Example: rsprompt predict scene.tif --model run/model.ckpt --dem dsm.tif -o map.tif

    Several scenes, aux files by pattern: rsprompt predict a.tif b.tif -m model.ckpt
    --dem "{stem}_dsm.tif" --out-dir maps/

    SCENES may be @list.txt files (one path per line, # comments, relative to the list) and
    quoted glob patterns ("tiles/*.tif"); --mosaic joins them into one VRT scene.

    Scale out (see docs/scale-out.md): --devices N [--num-nodes M] spreads the scenes, or row
    bands of a large scene, over Lightning ranks; --shard i/N runs one task of a job array; the
    last shard to finish merges (or: rsprompt predict --merge OUT_DIR). The results are identical
    to a single-process run; reruns skip finished work.
    """
    with _tuned_process():
        from rasterio._err import CPLE_BaseError
        from rasterio.errors import RasterioError

        from rsprompt.inference.reader import PredictError

        printer = _WarningPrinter()
        try:
            with _sigterm_as_interrupt(), printer.recording():
                _run(printer, **opts)
        except _Terminated:
            click.echo("terminated (SIGTERM): the unfinished outputs were removed", err=True)
            ctx.exit(143)
        except PredictError as exc:
            raise click.ClickException(str(exc)) from None
        except (OSError, RasterioError, CPLE_BaseError) as exc:
            raise click.ClickException(_one_line(exc)) from None


def _band_numbers(text: str | None, option: str) -> list[int] | None:
    """1-based band numbers from ``"4,3,2"`` (or ``"[4, 3, 2]"``, spaces allowed)."""
    if text is None:
        return None
    items = [t for t in text.strip().strip("[]").replace(",", " ").split() if t]
    try:
        out = [int(t) for t in items]
    except ValueError:
        out = []
    if not out or any(b < 1 for b in out):
        raise click.BadParameter(
            f"expected 1-based band numbers such as 4,3,2, got {text!r}", param_hint=option
        )
    return out


def _one_line(exc: BaseException) -> str:
    """An unexpected OS/GDAL error as one line (with the file when the error names one)."""
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return " ".join(str(exc).split()) or type(exc).__name__


@dataclass
class _Setup:
    """What both a single run and a job need: the plan, the model's options, the run options."""

    plan: _Plan
    aux_kind: str | None
    predictor_args: dict[str, Any]
    options: dict[str, Any]
    device: str
    precision: str
    quiet: bool
    overwrite: bool
    backend: str = "torch"
    threads: int | None = None


def _scene_paths(scenes: tuple[Path, ...], mosaic: Path | None, overwrite: bool) -> tuple:
    """SCENES with @lists and patterns expanded; all of them as one VRT with --mosaic."""
    from rsprompt.inference.inputs import expand_scenes, write_mosaic

    paths = expand_scenes([str(s) for s in scenes])
    if mosaic is None:
        return tuple(paths)
    if mosaic.suffix.lower() != ".vrt":
        raise click.BadParameter(f"{mosaic} must be a .vrt file", param_hint="--mosaic")
    if any(_same_path(mosaic, p) for p in paths):
        raise click.BadParameter(f"{mosaic} is one of the SCENES", param_hint="--mosaic")
    return (write_mosaic(paths, mosaic, overwrite=overwrite),)


def _same_path(a: Path, b: Path) -> bool:
    """Whether two paths name one file."""
    from rsprompt.inference.writers import same_file

    return same_file(a, b)


def _setup(opts: dict[str, Any]) -> _Setup:
    """Check the options and plan every scene's outputs (nothing is loaded or written)."""
    dem, sar = opts["dem"], opts["sar"]
    window, overlap = opts["window"], opts["overlap"]
    if opts["checkpoint"] is None:
        raise click.UsageError("Missing option '-m' / '--model'.")
    if not opts["scenes"]:
        raise click.UsageError("Missing argument 'SCENES...'.")
    if dem is not None and sar is not None:
        raise click.UsageError("give --dem or --sar, not both")
    if window is not None and overlap is not None and overlap >= window:
        raise click.UsageError(f"--overlap {overlap} must be less than --window {window}")
    aux_pattern, aux_kind = (dem, "dsm") if dem is not None else (sar, "sar")
    if aux_pattern is None:
        aux_kind = None
    scenes = _scene_paths(opts["scenes"], opts["mosaic"], opts["overwrite"])
    output, out_dir = opts["output"], opts["out_dir"]
    patterns = (output, opts["probabilities"], opts["vectors"])
    _check_patterns(scenes, output, out_dir, dict(zip(OPTION_NAMES, patterns, strict=True)))
    jobs = _plan_jobs(scenes, aux_pattern, patterns, out_dir)
    checkpoint, weights, palette = opts["checkpoint"], opts["weights"], opts["palette"]
    backend = _backend(opts)
    extra = [("checkpoint", checkpoint)]
    extra += [("--weights file", Path(weights))] if weights is not None else []
    if palette is not None and Path(palette).is_file():
        extra.append(("palette file", Path(palette)))
    plan = _build_plan(jobs, opts["summary_json"], out_dir, extra)
    classes = opts["classes"]
    predictor_args = {
        "checkpoint": checkpoint,
        "weights": weights,
        "classes": classes.split(",") if classes is not None else None,
        "palette": palette,
        "bands": _band_numbers(opts["bands"], "--bands"),
        "aux_bands": _band_numbers(opts["aux_bands"], "--aux-bands"),
    }
    options = {
        "window": window,
        "overlap": overlap,
        "batch_size": opts["batch_size"],
        "tta": opts["tta"],
        "overwrite": opts["overwrite"],
        "overview_resampling": opts["overviews"],
        "compress": opts["compress"],
        "progress": not opts["quiet"],
    }
    return _Setup(
        plan,
        aux_kind,
        predictor_args,
        options,
        opts["device"],
        opts["precision"],
        opts["quiet"],
        opts["overwrite"],
        backend,
        opts["threads"],
    )


def _backend(opts: dict[str, Any]) -> str:
    """``torch`` or ``onnxruntime``, checked against the model file and the other options."""
    onnx_file = Path(opts["checkpoint"]).suffix.lower() == ".onnx"
    backend = opts["backend"]
    if backend == "auto":
        backend = "onnxruntime" if onnx_file else "torch"
    if backend == "torch" and onnx_file:
        raise click.UsageError(
            f"{opts['checkpoint']} is an ONNX file: torch runs rsprompt checkpoints (.ckpt); "
            "use --backend onnxruntime (or auto)"
        )
    if backend == "onnxruntime":
        used = [f"--{k}" for k in ("weights", "classes") if opts[k] is not None]
        if used:
            raise click.UsageError(
                f"{' and '.join(used)} need a checkpoint (.ckpt): an ONNX file's encoder and "
                "class vocabulary are fixed when it is exported"
            )
    elif opts["threads"] is not None:
        raise click.UsageError("--threads applies to --backend onnxruntime only")
    return backend


def _load_predictor(setup: _Setup, torch_device: Any) -> tuple[Any, str]:
    """The model on ``torch_device`` (or where onnxruntime runs) and the forward precision."""
    from rsprompt.engine.precision import PrecisionError, resolve_precision
    from rsprompt.inference.from_checkpoint import CheckpointPredictor

    if setup.backend == "onnxruntime":
        return _load_onnx(setup, torch_device)
    args = dict(setup.predictor_args)
    predictor = CheckpointPredictor(args.pop("checkpoint"), device=torch_device, **args)
    try:
        numeric = resolve_precision(
            setup.precision, torch_device, model_key=predictor.meta.get("method")
        )
    except PrecisionError as exc:
        raise click.BadParameter(str(exc), param_hint="--precision") from None
    return predictor, numeric


def _load_onnx(setup: _Setup, device: Any) -> tuple[Any, str]:
    """The exported model run by onnxruntime, and its precision (always ``"32"``).

    Args:
        setup: The run's setup.
        device: A rank's torch device in a job, or ``None``: ``--device`` as onnxruntime
            resolves it (``auto`` takes CUDA only where onnxruntime has its CUDA provider).
    """
    from rsprompt.export import ExportError, OnnxPredictor, onnx_device, onnx_precision
    from rsprompt.inference.reader import PredictError

    try:
        where = onnx_device(setup.device if device is None else str(device))
    except ExportError as exc:
        raise click.BadParameter(str(exc), param_hint="--device") from None
    try:
        numeric = onnx_precision(setup.precision)
    except PredictError as exc:
        raise click.BadParameter(str(exc), param_hint="--precision") from None
    args = setup.predictor_args
    predictor = OnnxPredictor(
        args["checkpoint"],
        device=where,
        threads=setup.threads,
        palette=args["palette"],
        bands=args["bands"],
        aux_bands=args["aux_bands"],
    )
    predictor.window_and_overlap(setup.options["window"], setup.options["overlap"])
    return predictor, numeric


def _torch_device(device: str) -> Any:
    from rsprompt.engine.device import DeviceError, resolve_device

    try:
        return resolve_device(device)
    except DeviceError as exc:
        raise click.BadParameter(str(exc), param_hint="--device") from None


def _run(printer: _WarningPrinter, **opts: Any) -> None:
    """The command: a merge, a job (--devices/--num-nodes/--shard), or a single run."""
    from rsprompt.commands._predict_job import run_job, run_merge

    if opts["merge_dir"] is not None:
        if opts["scenes"] or opts["shard"] is not None:
            raise click.UsageError("--merge OUT_DIR takes no SCENES and no --shard")
        run_merge(opts["merge_dir"], overwrite=opts["overwrite"], quiet=opts["quiet"])
        return
    setup = _setup(opts)
    if opts["shard"] is not None or opts["devices"] > 1 or opts["num_nodes"] > 1:
        run_job(printer, setup, opts)
        return
    _run_single(printer, setup)


def _run_single(printer: _WarningPrinter, setup: _Setup) -> None:
    """One process: check everything, load the model, predict each scene under output locks."""
    from rsprompt.inference.jobs import write_summary_json
    from rsprompt.inference.writers import locked_outputs

    plan, overwrite = setup.plan, setup.overwrite
    onnx = setup.backend == "onnxruntime"
    torch_device = None if onnx else _torch_device(setup.device)
    _check_plan(plan, overwrite)
    predictor, numeric = _load_predictor(setup, torch_device)
    if not setup.quiet:
        where = f"{predictor.device} (onnxruntime)" if onnx else torch_device
        click.echo(f"device {where}, precision {numeric}", err=True)
    for job in plan.jobs:  # every input is checked before anything is written
        predictor.check(job.scene, aux=job.aux, aux_kind=setup.aux_kind)
    created = _make_folder(plan.out_dir) if plan.out_dir is not None else []
    finals = [o.path for o in plan.outputs() if not o.removes]
    options = dict(setup.options, precision=numeric)
    try:
        with locked_outputs(finals, keep=[p for _, p in plan.inputs]):
            _check_plan(plan, overwrite)  # again under the locks (another run may have finished)
            summaries = _predict_all(predictor, plan, printer, setup.aux_kind, options)
            if plan.summary is not None:
                write_summary_json(plan.summary.path, summaries, overwrite)
    except BaseException:
        _remove_empty(created)
        raise
