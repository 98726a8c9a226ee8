"""Callbacks: write ``model.ckpt`` at the end of every run that trained, however it stops."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from rsprompt.engine.checkpoint import save_model_checkpoint

log = logging.getLogger(__name__)

MODEL_CHECKPOINT = "model.ckpt"


class ModelExport(pl.Callback):
    """Save the model checkpoint (``model.ckpt``) when training ends, fails or is interrupted.

    Only a run that trained: ``model.ckpt`` is written only when this process ran at least one
    optimiser step (``trainer.global_step`` beyond the step training started or resumed at). A run
    that stops before that (a refused resume checkpoint, a crash in the first step, bad data)
    leaves an existing ``model.ckpt`` untouched: Lightning builds a fresh, untrained model before
    it restores (or refuses) the resume checkpoint.

    Args:
        dirpath: Folder of ``model.ckpt`` (default: the trainer's ``default_root_dir``).
        filename: File name.
    """

    def __init__(self, dirpath: str | None = None, filename: str = MODEL_CHECKPOINT) -> None:
        self.dirpath = dirpath
        self.filename = filename
        self.saved: Path | None = None
        self.start_step: int | None = None

    def path(self, trainer: pl.Trainer) -> Path:
        """Where the checkpoint goes."""
        return Path(self.dirpath or trainer.default_root_dir) / self.filename

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Forget a previous run's state (the callback object may be reused)."""
        self.saved = None
        self.start_step = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Note the step training starts at (after any resume checkpoint was restored)."""
        self.start_step = int(trainer.global_step)

    def trained(self, trainer: pl.Trainer) -> bool:
        """Whether this process ran at least one optimiser step."""
        return self.start_step is not None and int(trainer.global_step) > self.start_step

    def export(self, trainer: pl.Trainer, pl_module: Any) -> Path | None:
        """Write ``model.ckpt`` on rank 0 when this run trained (else a no-op)."""
        if not trainer.is_global_zero or getattr(pl_module, "model", None) is None:
            return None
        if not self.trained(trainer):
            log.info("no optimiser step ran in this run: %s not written", self.path(trainer))
            return None
        path = save_model_checkpoint(self.path(trainer), pl_module.model, pl_module.meta())
        self.saved = path
        log.info("model checkpoint written: %s", path)
        return path

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:  # noqa: D102
        self.export(trainer, pl_module)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """Save what was trained so far (if anything), then let the exception propagate."""
        try:
            path = self.export(trainer, pl_module)
        except Exception as e:
            log.error("could not write the model checkpoint after %r: %s", exception, e)
            return
        if path is not None:
            log.warning(
                "run stopped (%s); model checkpoint written: %s", type(exception).__name__, path
            )
        elif trainer.is_global_zero and self.path(trainer).is_file():
            log.warning(
                "run stopped (%s) before any training step; %s left as it was",
                type(exception).__name__,
                self.path(trainer),
            )


RESUME_CHECKPOINT = "last.ckpt"


class ResumeCheckpoint(pl.Callback):
    """Write Lightning's resume checkpoint (``last.ckpt``) at every epoch end and when training ends.

    The task filters the frozen encoder out of it (see
    :meth:`~rsprompt.engine.task.SegmentationTask.on_save_checkpoint`); it holds the trainable
    tensors incl. training-only heads, optimiser, scheduler, loop and RNG states.

    It is saved after each validation (where Lightning resumes an epoch boundary exactly, with
    per-epoch seeded samplers), at epoch ends without validation (resumable, but Lightning then
    numbers the resumed epoch's sampler one higher, so the data order differs from an
    uninterrupted run) and when training ends.

    Args:
        dirpath: Folder (default: ``<default_root_dir>/checkpoints``).
        every_n_train_steps: Also save every N optimiser steps (0: only at epoch ends).
    """

    def __init__(self, dirpath: str | None = None, every_n_train_steps: int = 0) -> None:
        self.dirpath = dirpath
        self.every_n_train_steps = every_n_train_steps
        self._last_step_saved = -1

    def path(self, trainer: pl.Trainer) -> Path:
        """Where ``last.ckpt`` goes."""
        root = (
            Path(self.dirpath) if self.dirpath else Path(trainer.default_root_dir) / "checkpoints"
        )
        return root / RESUME_CHECKPOINT

    def save(self, trainer: pl.Trainer) -> None:
        """Save (every rank calls this; Lightning writes on rank 0)."""
        if trainer.global_step == self._last_step_saved or trainer.sanity_checking:
            return
        path = self.path(trainer)
        if trainer.is_global_zero:
            path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(path, weights_only=False)
        self._last_step_saved = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: D102
        n = self.every_n_train_steps
        if n and trainer.global_step > 0 and trainer.global_step % n == 0:
            self.save(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Save after each validation (at an epoch end this is where Lightning resumes cleanly)."""
        self.save(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Save at the epoch end when no validation ran at the end of this epoch."""
        self.save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Save when training ends (e.g. ``max_steps`` reached mid-epoch) to continue it later."""
        self.save(trainer)
