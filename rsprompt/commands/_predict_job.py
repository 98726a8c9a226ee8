"""``rsprompt predict`` as a job over several processes: ``--devices``/``--num-nodes``/``--shard``.

The work plan, manifests and merge are in :mod:`rsprompt.inference.jobs`, the ranks and the shard
loop in :mod:`rsprompt.inference.scale`; this module wires them to the command's options and
prints what happened (rank 0 only, other ranks print their own errors).
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import click


def _global_shard(opts: dict[str, Any], ranks: Any) -> tuple[int, int]:
    """This process's shard of the whole job: array task ``i/N`` times the launch's ranks."""
    from rsprompt.inference.jobs import parse_shard

    index, count = parse_shard(opts["shard"]) if opts["shard"] is not None else (0, 1)
    return index * ranks.world + ranks.rank, count * ranks.world


def _ranks(opts: dict[str, Any], device: str) -> Any:
    """The launch's ranks: Lightning DDP with --devices/--num-nodes, else this process alone."""
    from rsprompt.commands.predict import _torch_device
    from rsprompt.inference.scale import Ranks, launch_ranks

    if opts["devices"] > 1 or opts["num_nodes"] > 1:
        if device != "auto":
            raise click.UsageError(
                "--device picks one device; with --devices/--num-nodes use --accelerator"
            )
        ranks = launch_ranks(opts["accelerator"], opts["devices"], opts["num_nodes"])
        if ranks.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            import torch  # the node's cores shared by its ranks

            torch.set_num_threads(max(1, (os.cpu_count() or 1) // ranks.local_world))
        return ranks
    return Ranks(device=_torch_device(device))


def _scene_size(path: Path) -> tuple[int, int]:
    """``(height, width)``; ``(0, 0)`` for a file that cannot be opened (its shard reports it)."""
    import rasterio

    try:
        with rasterio.open(path) as src:
            return src.height, src.width
    except (rasterio.errors.RasterioError, OSError):
        return 0, 0


def _can_split() -> bool:
    """Whether predict_scene predicts row bands (``row_range``) and parts can be merged."""
    import importlib.util

    from rsprompt.inference import predictor

    params = inspect.signature(predictor.predict_scene).parameters
    return (
        "row_range" in params and importlib.util.find_spec("rsprompt.inference.parts") is not None
    )


def _make_plan(setup: Any, opts: dict[str, Any], predictor: Any, count: int) -> Any:
    """The job's plan (same on every shard) with its fingerprint."""
    from rsprompt.inference.jobs import JobPlan, SceneSpec, plan_units
    from rsprompt.models.weights import sha256_file

    specs = []
    for job in setup.plan.jobs:
        h, w = _scene_size(job.scene)
        paths = [job.scene, job.aux, job.out, job.probs, job.vectors]
        scene, aux, out, probs, vec = (str(Path(p).absolute()) if p else None for p in paths)
        specs.append(SceneSpec(scene, aux, out, probs, vec, h, w))  # type: ignore[arg-type]
    if hasattr(predictor, "window_and_overlap"):  # an ONNX model: the exported window
        window, overlap = predictor.window_and_overlap(
            setup.options["window"], setup.options["overlap"]
        )
    else:
        window = int(setup.options["window"] or predictor.meta.get("patch_size") or 512)
        ov = setup.options["overlap"]
        overlap = int(ov if ov is not None else window // 4)
    units = plan_units(
        specs,
        count,
        window,
        overlap,
        split_pixels=int(opts["split_mpix"] * 1e6),
        can_split=_can_split(),
    )
    summary = setup.plan.summary
    plan = JobPlan(
        specs=specs,
        units=units,
        shards=count,
        classes=[list(predictor.classes.names), [list(c) for c in predictor.classes.colors]],
        merge_options={
            "overview_resampling": setup.options["overview_resampling"],
            "compress": setup.options["compress"],
        },
        summary_json=str(summary.path.absolute()) if summary is not None else None,
    )
    recorded = {k: v for k, v in setup.predictor_args.items() if k != "checkpoint"}
    recorded.update(window=window, overlap=overlap, tta=setup.options["tta"])
    recorded.update(precision=setup.precision, aux_kind=setup.aux_kind)
    plan.fingerprint = plan.fingerprint_of(
        recorded, sha256_file(Path(setup.predictor_args["checkpoint"]))
    )
    return plan, window, overlap


def _check_outputs(setup: Any, job: Any) -> None:
    """Final outputs of the scenes not merged yet: not inputs, and existing only with --overwrite."""
    from rsprompt.inference.writers import check_planned

    plan = setup.plan
    outputs = [
        o
        for i, scene_job in enumerate(plan.jobs)
        if not job.merged_path(i).is_file()
        for o in scene_job.outputs
    ]
    if plan.summary is not None:
        outputs.append(plan.summary)
    check_planned(outputs, plan.inputs, overwrite=setup.overwrite, creatable=plan.creatable())


def run_job(printer: Any, setup: Any, opts: dict[str, Any]) -> None:
    """Predict this process's shard of the job, then merge when every unit is finished."""
    from rsprompt.commands.predict import _load_predictor
    from rsprompt.inference.jobs import JobFolder, assign
    from rsprompt.inference.scale import JobProgress, any_rank, run_shard, shared_token

    out_dir = setup.plan.out_dir
    if out_dir is None:
        raise click.UsageError("--devices/--num-nodes/--shard need --out-dir (the job's folder)")
    ranks = _ranks(opts, setup.device)
    index, count = _global_shard(opts, ranks)
    predictor, numeric = _load_predictor(setup, ranks.device)
    plan, window, overlap = _make_plan(setup, opts, predictor, count)
    job = JobFolder.under(out_dir)
    job.plan = plan
    _check_outputs(setup, job)
    out_dir.mkdir(parents=True, exist_ok=True)
    job.save_plan(plan)
    if setup.overwrite:  # every scene is predicted and merged again
        for marker in (job.root / "merged").glob("*.json"):
            marker.unlink(missing_ok=True)
    shards = assign(plan.units, count)
    token = shared_token(ranks)
    if ranks.distributed:  # the launch's ranks share their shards, largest unit first
        ids = {
            u.id
            for units in shards[index - ranks.rank : index - ranks.rank + ranks.world]
            for u in units
        }
        mine = [u for u in plan.units if u.id in ids]
        label = f"rank {ranks.rank} of {ranks.world}"
    else:
        mine, label = shards[index], f"shard {index}/{count}"
    since = token if setup.overwrite else None
    total = sum(u.windows for u in mine if not job.finished(u, since))
    if ranks.rank == 0 and not setup.quiet:
        click.echo(
            f"{len(plan.units)} unit(s) of {len(plan.specs)} scene(s) over {count} shard(s); "
            f"device {ranks.device}, precision {numeric}",
            err=True,
        )
    progress = JobProgress(job, token, ranks, total, show=not setup.quiet)
    options = dict(setup.options, window=window, overlap=overlap, precision=numeric, progress=False)
    try:
        result = run_shard(
            job, mine, predictor, setup.aux_kind, options, overwrite=setup.overwrite,
            launch=token, shared=ranks.distributed, progress=progress,
        )  # fmt: skip
        for unit, message in result.failed:
            scene = plan.specs[unit.scene].scene
            click.echo(f"error: {label}, unit {unit.id} ({scene}): {message}", err=True)
        failed_somewhere = any_rank(bool(result.failed), ranks)  # waits for every rank
    finally:
        progress.close()
        printer.flush()
    if result.failed:
        raise click.ClickException(
            f"{label}: {len(result.failed)} unit(s) failed (see above); the finished units are "
            "kept: fix the input and rerun to finish the job"
        )
    if failed_somewhere:
        raise click.ClickException(
            "another rank failed (see its error above); the finished units are kept: fix the "
            "input and rerun to finish the job"
        )
    if ranks.rank == 0:
        _finish(job, label, result, setup)


def _finish(job: Any, label: str, result: Any, setup: Any) -> None:
    """Merge when every unit of the job is finished; else say what is left."""
    missing = job.missing()
    click.echo(
        f"{label}: {len(result.done)} unit(s) predicted, {len(result.skipped)} finished before",
        err=True,
    )
    if missing:
        click.echo(
            f"{len(missing)} unit(s) of other shards are not finished yet; the last shard to "
            f"finish merges (or run: rsprompt predict --merge {job.root.parent})",
            err=True,
        )
        return
    _merge(job, setup.overwrite)


def _merge(job: Any, overwrite: bool) -> None:
    """Merge the job and print each scene's summary and the job's total."""
    from rsprompt.inference.jobs import job_total_text, merge_job

    summaries = merge_job(job, overwrite=overwrite, on_scene=lambda s: click.echo(s.format()))
    if summaries is None:
        click.echo("another shard is merging the job", err=True)
        return
    if len(summaries) > 1:
        click.echo(job_total_text(summaries))


def run_merge(out_dir: Path, *, overwrite: bool, quiet: bool) -> None:
    """``rsprompt predict --merge OUT_DIR``."""
    from rsprompt.inference.jobs import JobFolder

    job = JobFolder.under(out_dir)
    job.load_plan()
    _merge(job, overwrite)
