"""Running a prediction job's shards: Lightning ranks, the shard loop, progress across ranks.

- :func:`launch_ranks` starts (or joins) the processes of a Lightning Fabric launch with the DDP
  strategy: on one machine Fabric re-executes the command once per extra device (``sys.argv``);
  under ``torchrun`` or ``srun`` (SLURM) it joins the ranks those started. Each rank then runs one
  shard of the job's plan (:mod:`rsprompt.inference.jobs`), on its own device.
- :func:`run_shard` predicts a shard's units one after another, skipping finished ones, and goes
  on past a unit whose input is bad (the error is kept, naming the file, and the shard fails at
  the end): the other units' outputs and manifests stay.
- :class:`JobProgress`: each rank writes how many windows it has predicted to a small file in the
  job folder; rank 0 shows one progress bar over all ranks' windows.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from rsprompt.inference.jobs import JobFolder, Unit, assign, run_unit
from rsprompt.inference.reader import PredictError

#: How long a rank waits for the others at the end (a rank's share may take a long time).
RANK_TIMEOUT = timedelta(days=7)


@dataclass
class Ranks:
    """This process's place in a launch.

    Attributes:
        rank: Global rank.
        world: Number of ranks.
        local_rank: Rank on this node (the device index).
        device: Torch device of this rank.
        local_world: Ranks on this node.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: Any = "cpu"
    local_world: int = 1

    @property
    def distributed(self) -> bool:
        """Whether there is more than one rank (collectives are available)."""
        return self.world > 1


def launch_ranks(accelerator: str, devices: int, num_nodes: int) -> Ranks:
    """Start or join a Lightning Fabric DDP launch (gloo on CPU, NCCL on GPUs).

    Raises:
        PredictError: If Lightning cannot set up the launch (no GPU for ``gpu``…).
    """
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import DDPStrategy

    for name in ("lightning.fabric", "lightning.pytorch"):  # no launch banner
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        fabric = Fabric(
            accelerator=accelerator,
            devices=devices,
            num_nodes=num_nodes,
            strategy=DDPStrategy(timeout=RANK_TIMEOUT),
        )
        fabric.launch()
    except (ValueError, RuntimeError, TypeError) as exc:
        raise PredictError(
            f"cannot start {devices} device(s) × {num_nodes} node(s): {exc}"
        ) from None
    local_world = max(1, fabric.world_size // max(num_nodes, 1))
    return Ranks(
        fabric.global_rank, fabric.world_size, fabric.local_rank, fabric.device, local_world
    )


def any_rank(flag: bool, ranks: Ranks) -> bool:
    """Whether ``flag`` is true on any rank (all ranks must call it)."""
    if not ranks.distributed:
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        t = t.to(ranks.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def shared_token(ranks: Ranks) -> str:
    """A token of this launch, the same on every rank (names the progress files)."""
    token = [uuid.uuid4().hex[:12]]
    if ranks.distributed:
        import torch.distributed as dist

        dist.broadcast_object_list(token, src=0)
    return token[0]


class JobProgress:
    """Windows predicted by every rank of a launch, as small files in the job folder.

    Every rank calls :meth:`add`; on rank 0 with ``show``, a thread polls the files and drives
    one tqdm bar (total: the windows of every unit the launch predicts).
    """

    def __init__(self, job: JobFolder, token: str, ranks: Ranks, total: int, show: bool) -> None:
        self.files = [job.progress_file(token, r) for r in range(ranks.world)]
        self.mine = self.files[ranks.rank]
        self.done = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._write()
        if show and ranks.rank == 0 and total > 0:
            self._thread = threading.Thread(target=self._poll, args=(total,), daemon=True)
            self._thread.start()

    def _write(self) -> None:
        tmp = self.mine.with_name(f".{self.mine.name}.tmp")
        try:
            tmp.write_text(str(self.done))
            os.replace(tmp, self.mine)
        except OSError:
            pass  # progress is best effort

    def add(self, windows: int) -> None:
        """Count ``windows`` more windows of this rank."""
        self.done += windows
        self._write()

    def _count(self) -> int:
        total = 0
        for f in self.files:
            try:
                total += int(f.read_text() or 0)
            except (OSError, ValueError):
                pass
        return total

    def _poll(self, total: int) -> None:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="job", unit="win")
        try:
            while not self._stop.wait(0.5):
                bar.n = min(self._count(), total)
                bar.refresh()
            bar.n = min(self._count(), total)
            bar.refresh()
        finally:
            bar.close()

    def close(self) -> None:
        """Stop the bar (rank 0); the files go with the job folder when it is merged."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


@dataclass
class ShardResult:
    """What one shard did.

    Attributes:
        done: Units predicted now.
        skipped: Units finished before (valid manifest).
        failed: ``(unit, one-line error)`` of the units that failed.
    """

    done: list[Unit] = field(default_factory=list)
    skipped: list[Unit] = field(default_factory=list)
    failed: list[tuple[Unit, str]] = field(default_factory=list)


def shard_units(job: JobFolder, index: int, count: int) -> list[Unit]:
    """The units of shard ``index`` of ``count`` (see :func:`~rsprompt.inference.jobs.assign`)."""
    assert job.plan is not None
    return assign(job.plan.units, count)[index]


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return " ".join(str(exc).split()) or type(exc).__name__


def run_shard(
    job: JobFolder,
    units: list[Unit],
    predictor: Any,
    aux_kind: str | None,
    options: dict[str, Any],
    *,
    overwrite: bool,
    launch: str,
    shared: bool = False,
    progress: JobProgress | None = None,
) -> ShardResult:
    """Predict ``units`` (skipping finished ones unless ``overwrite``); errors are collected.

    A unit's inputs are checked (``predictor.check``) right before it is predicted; a bad input
    fails that unit only (the message names the file), the shard goes on with its other units.

    Args:
        job: The job folder (plan loaded).
        units: The units to predict, largest first.
        predictor: A :class:`~rsprompt.inference.from_checkpoint.CheckpointPredictor`.
        aux_kind: ``"dsm"``, ``"sar"`` or ``None``.
        options: ``predict`` options.
        overwrite: Redo units finished before this launch.
        launch: The launch's token (:func:`shared_token`), recorded in the manifests.
        shared: The ranks of one launch share ``units``: each takes the next unit that is not
            finished and that no other rank holds (its lock), so a rank that started late does
            less. The results do not depend on which rank predicts a unit.
        progress: Counts the windows of the units predicted here, batch by batch.
    """
    result = ShardResult()
    since = launch if overwrite else None  # what counts as finished
    for unit in units:
        if job.finished(unit, since):
            if not job.finished(unit, launch):
                result.skipped.append(unit)  # finished before this launch
            continue
        if shared and job.failed_path(unit, launch).exists():
            continue  # another rank failed on it and reported it
        counted = [0]
        unit_options = options
        if progress is not None:

            def count(n: int, counted: list[int] = counted) -> None:
                counted[0] += n
                progress.add(n)  # type: ignore[union-attr]

            unit_options = dict(options, progress=count)  # window by window
        outcome = _run_locked(job, unit, predictor, aux_kind, unit_options, since, launch, shared)
        if isinstance(outcome, str):
            result.failed.append((unit, outcome))
            if shared:
                job.failed_path(unit, launch).touch()
        elif outcome:
            result.done.append(unit)
            if progress is not None and unit.windows > counted[0]:
                progress.add(unit.windows - counted[0])  # the plan's count is the bar's total
    return result


def _run_locked(
    job: JobFolder,
    unit: Unit,
    predictor: Any,
    aux_kind: str | None,
    options: dict[str, Any],
    since: str | None,
    launch: str,
    shared: bool,
) -> bool | str:
    """Predict one unit under its lock: ``True`` done, ``False`` left to another rank, or the error."""
    from rasterio._err import CPLE_BaseError
    from rasterio.errors import RasterioError

    from rsprompt.inference.writers import OutputLockedError, locked_outputs

    assert job.plan is not None
    spec = job.plan.specs[unit.scene]
    try:
        with locked_outputs([job.unit_dir(unit)]):
            if job.finished(unit, since):  # another rank finished it meanwhile
                return False
            predictor.check(spec.scene, aux=spec.aux, aux_kind=aux_kind)
            run_unit(job, unit, predictor.predict, aux_kind, options, launch)
    except OutputLockedError as exc:
        return False if shared else _one_line(exc)
    except (PredictError, OSError, RasterioError, CPLE_BaseError) as exc:
        return _one_line(exc)
    return True
