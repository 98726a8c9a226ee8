r"""``rsprompt train``: a LightningCLI over :class:`~rsprompt.engine.task.SegmentationTask`.

Usage (LightningCLI style; every top-level YAML in ``configs/`` is a complete config)::

    rsprompt train --config configs/mobanet_vaihingen.yaml --data.root data/vaihingen \\
        --trainer.max_steps 1000 --trainer.default_root_dir runs/mobanet
    rsprompt train --config … --model.encoder resnet18 --model.weights null   # random encoder
    rsprompt train --config … --ckpt_path last      # resume <default_root_dir>/checkpoints/last.ckpt
    rsprompt train --config … --overwrite           # start afresh in a folder that holds a run
    rsprompt train --config … --print_config        # print the resolved config and exit

Every run writes under ``--trainer.default_root_dir``: ``model.ckpt`` (what ``evaluate`` and
``predict`` load; written however the run stops, once it ran a training step),
``checkpoints/last.ckpt`` (resume), ``val_metrics.json`` (+ ``val_metrics.jsonl`` history) and
``config.yaml``. A folder that already holds ``model.ckpt`` or ``checkpoints/last.ckpt`` is only
trained into with ``--ckpt_path`` (continue) or ``--overwrite`` (replace).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from jsonargparse import ActionYesNo
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from rsprompt.engine.callbacks import ModelExport, ResumeCheckpoint
from rsprompt.engine.checkpoint import FORMAT, CheckpointError, load_trusted
from rsprompt.engine.precision import trainer_precision
from rsprompt.engine.task import SegmentationTask

log = logging.getLogger(__name__)

#: Float16 precisions: without a GPU they fall back to 32-bit.
_FP16_PRECISIONS = ("16-mixed", "16", "16-true")


class SaveConfigWhenTrained(SaveConfigCallback):
    """Write ``config.yaml`` once this run has run an optimiser step.

    A run that is refused (resume checkpoint of another model) or fails before training leaves
    the folder's ``config.yaml`` describing the model that is there, like ``model.ckpt``.
    """

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Defer the save (Lightning calls this before restoring or checking anything)."""
        self._stage = stage
        self._start_step: int | None = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Note the step training starts at (after any resume checkpoint was restored)."""
        self._start_step = int(trainer.global_step)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        """Save after the first optimiser step of this run."""
        start = getattr(self, "_start_step", None)
        if not self.already_saved and start is not None and trainer.global_step > start:
            super().setup(trainer, pl_module, getattr(self, "_stage", "fit"))


class TrainCLI(LightningCLI):
    """LightningCLI with rsprompt's defaults: encoder-free checkpoints, ``--ckpt_path`` resume."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add ``--ckpt_path`` (resume) and accept ``trainer.precision: auto``."""
        action = parser._option_string_actions.get("--trainer.precision")
        if action is not None and hasattr(action, "_typehint"):
            # Lightning has no "auto" precision: rsprompt resolves it before the Trainer is built.
            action._typehint = Literal["auto"] | action._typehint
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help="Resume from this resume checkpoint (last.ckpt); 'last' = "
            "<trainer.default_root_dir>/checkpoints/last.ckpt.",
        )
        parser.add_argument(
            "--overwrite",
            action=ActionYesNo,
            default=False,
            help="Train into a --trainer.default_root_dir that already holds a run (model.ckpt or "
            "checkpoints/last.ckpt), replacing it; without it such a folder is refused unless "
            "--ckpt_path continues the run.",
        )

    def before_instantiate_classes(self) -> None:
        """Resolve ``trainer.precision`` (``auto`` included) and say which precision runs."""
        cfg = self.config
        trainer = cfg.get("trainer") if hasattr(cfg, "get") else None
        if trainer is None:
            return
        requested = trainer.get("precision")
        resolved = resolve_train_precision(requested, trainer.get("accelerator"))
        trainer["precision"] = resolved
        print(f"rsprompt train: precision {resolved} (asked: {requested})", file=sys.stderr)


def resolve_train_precision(precision: Any, accelerator: str | None) -> str:
    """Lightning's precision for a config value; ``auto`` follows the hardware.

    ``auto`` (or unset): bf16-mixed on a CPU with native bf16 or a bf16 GPU, 16-mixed on older
    GPUs, 32-true elsewhere (:func:`rsprompt.engine.precision.trainer_precision`). Float16 asked
    for without a GPU falls back to 32-true with a warning (CPU float16 autocast is slow).
    Other values are passed to Lightning unchanged.
    """
    acc = str(accelerator or "auto").lower()
    no_gpu = not torch.cuda.is_available() and acc in ("auto", "cpu")
    if precision is None or str(precision).lower() == "auto":
        return trainer_precision("auto", "cpu" if no_gpu else acc)
    if no_gpu and str(precision) in _FP16_PRECISIONS:
        warnings.warn(
            f"precision {precision!r} (float16) needs a GPU; training in 32-true on the CPU "
            "(bf16-mixed or auto use bfloat16 where the CPU has it)",
            stacklevel=2,
        )
        return "32-true"
    return str(precision)


def resolve_ckpt_path(ckpt_path: str | None, root_dir: str | Path) -> str | None:
    """``last`` → ``<root_dir>/checkpoints/last.ckpt``; check that the file exists.

    Raises:
        FileNotFoundError: If the resume checkpoint does not exist.
    """
    if ckpt_path is None:
        return None
    path = Path(root_dir) / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"resume checkpoint not found: {path}")
    return str(path)


class RunFolderError(ValueError):
    """The run folder already holds a run that this one would replace."""


#: Keys every Lightning resume checkpoint written by ``rsprompt train`` holds.
_RESUME_KEYS = ("pytorch-lightning_version", "state_dict", "loops", "optimizer_states")


def validate_resume_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a resume checkpoint safely (``weights_only=True``) and check that it is one.

    Returns:
        Its ``rsprompt_meta``.

    Raises:
        CheckpointError: Unreadable or untrusted file, a model checkpoint (``model.ckpt``), or
            not a Lightning resume checkpoint written by ``rsprompt train``.
    """
    obj = load_trusted(path, "resume checkpoint")
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        raise CheckpointError(
            f"{path}: this is a model checkpoint (model.ckpt), which cannot resume training; "
            f"--ckpt_path takes the resume checkpoint checkpoints/last.ckpt (or 'last')"
        )
    missing = [k for k in _RESUME_KEYS if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise CheckpointError(
            f"{path}: not a Lightning resume checkpoint (no {', '.join(missing)}); --ckpt_path "
            f"takes checkpoints/last.ckpt of an rsprompt training run (or 'last')"
        )
    meta = obj.get("rsprompt_meta")
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"{path}: not an rsprompt resume checkpoint (no rsprompt_meta); --ckpt_path takes "
            f"checkpoints/last.ckpt of an rsprompt training run"
        )
    return meta


def check_run_folder(trainer: Any, overwrite: bool) -> None:
    """Refuse to start a new run where a run already is, unless ``overwrite``.

    Raises:
        RunFolderError: The folder holds ``model.ckpt`` or ``checkpoints/last.ckpt``.
    """
    if overwrite:
        return
    held = [
        c.path(trainer)
        for c in trainer.callbacks
        if isinstance(c, ModelExport | ResumeCheckpoint) and c.path(trainer).exists()
    ]
    if held:
        raise RunFolderError(
            f"{trainer.default_root_dir} already holds a training run "
            f"({', '.join(str(p) for p in held)}): pass --ckpt_path last to continue it, "
            f"--overwrite to replace it, or another --trainer.default_root_dir"
        )


def _new_log_dirs(trainer: Any) -> list[Path]:
    """The loggers' folders (and parents below the run folder) that do not exist yet."""
    root = Path(trainer.default_root_dir).resolve()
    out: list[Path] = []
    for logger in trainer.loggers:
        try:
            log_dir = logger.log_dir
        except Exception:  # a logger without a local folder
            continue
        if not isinstance(log_dir, str):
            continue
        d = Path(log_dir).resolve()
        while d != root and root in d.parents and not d.exists():
            out.append(d)
            d = d.parent
    return out


def _remove_empty(dirs: list[Path]) -> None:
    """Remove the folders among ``dirs`` that exist and are empty (deepest first)."""
    for d in sorted(set(dirs), key=lambda p: len(p.parts), reverse=True):
        try:
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        except OSError:
            pass


def close_datasets(datamodule: Any) -> None:
    """Close the raster handles of a datamodule's datasets (quiet interpreter shutdown)."""
    for ds in (getattr(datamodule, "datasets", None) or {}).values():
        close = getattr(ds, "close", None)
        if callable(close):
            close()


#: Packages whose classes a config or the command line may name (``class_path``).
ALLOWED_IMPORTS = (
    "rsprompt",
    "lightning",
    "pytorch_lightning",
    "torch",
    "torchmetrics",
    "torchgeo",
)
#: Extra packages the user allows, comma-separated (e.g. ``RSPROMPT_ALLOW_IMPORTS=mylab.data``).
ALLOW_IMPORTS_ENV = "RSPROMPT_ALLOW_IMPORTS"


def restrict_imports() -> list[str]:
    """Let configs name classes only from :data:`ALLOWED_IMPORTS` and the user's additions.

    A ``class_path`` in a config file or on the command line makes jsonargparse import a module,
    which runs its code; anything outside the allow-list is refused before it is imported. The
    user widens the list with the environment variable :data:`ALLOW_IMPORTS_ENV`.

    Returns:
        The allowed import prefixes.
    """
    from jsonargparse import set_parsing_settings

    extra = [e.strip() for e in os.environ.get(ALLOW_IMPORTS_ENV, "").split(",") if e.strip()]
    allowed = [*ALLOWED_IMPORTS, *extra]
    try:
        set_parsing_settings(import_path_denylist=["*"], import_path_allowlist=allowed)
    except ValueError as exc:
        raise ValueError(f"{ALLOW_IMPORTS_ENV}: {exc}") from None
    return allowed


def make_cli(args: list[str] | None) -> TrainCLI:
    """Parse ``args`` and instantiate the task, datamodule and trainer (no training yet)."""
    restrict_imports()
    # The click command hands its arguments over as ``args``: LightningCLI's warning about
    # sys.argv also holding them does not apply.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    return TrainCLI(
        SegmentationTask,
        LightningDataModule,
        subclass_mode_data=True,
        run=False,
        args=args,
        seed_everything_default=0,
        save_config_callback=SaveConfigWhenTrained,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "enable_checkpointing": False,  # Lightning's own would store the frozen encoder
            "callbacks": [ModelExport(), ResumeCheckpoint()],
        },
        parser_kwargs={"prog": "rsprompt train", "description": __doc__.split("\n\n")[0]},
        auto_configure_optimizers=False,
    )


def run_train(args: list[str] | None = None) -> dict[str, Any]:
    """Train from LightningCLI-style arguments.

    Returns:
        ``{"root": run folder, "model_ckpt": path or None, "metrics": last validation metrics}``.
    """
    cli = make_cli(args)
    trainer = cli.trainer
    ckpt = resolve_ckpt_path(cli.config.get("ckpt_path"), trainer.default_root_dir)
    if ckpt is not None:
        validate_resume_checkpoint(ckpt)
    else:
        check_run_folder(trainer, bool(cli.config.get("overwrite")))
    export = next(c for c in trainer.callbacks if isinstance(c, ModelExport))
    new_dirs = _new_log_dirs(trainer)
    try:
        trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt, weights_only=True)
    except CheckpointError as e:  # the task refused the resume checkpoint: name it
        _remove_empty(new_dirs)
        if ckpt is None or str(e).startswith(ckpt):
            raise
        raise CheckpointError(f"{ckpt}: {e}") from e
    except BaseException:
        if not export.trained(trainer):  # failed before training: leave no empty log folder
            _remove_empty(new_dirs)
        raise
    finally:
        close_datasets(cli.datamodule)
    return {
        "root": trainer.default_root_dir,
        "model_ckpt": export.saved,
        "metrics": cli.model.last_metrics,
    }
