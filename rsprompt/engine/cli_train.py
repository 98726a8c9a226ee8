r"""``rsprompt train``: a LightningCLI over :class:`~rsprompt.engine.task.SegmentationTask`.

Usage (LightningCLI style; every top-level YAML in ``configs/`` is a complete config)::

    rsprompt train --config configs/mobanet_vaihingen.yaml --data.root data/vaihingen \\
        --trainer.max_steps 1000 --trainer.default_root_dir runs/mobanet
    rsprompt train --config … --model.encoder resnet18 --model.weights null   # random encoder
    rsprompt train --config … --ckpt_path last      # resume <default_root_dir>/checkpoints/last.ckpt
    rsprompt train --config … --print_config        # print the resolved config and exit

Every run writes under ``--trainer.default_root_dir``: ``model.ckpt`` (what ``evaluate`` and
``predict`` load; written however the run stops), ``checkpoints/last.ckpt`` (resume),
``val_metrics.json`` (+ ``val_metrics.jsonl`` history) and ``config.yaml``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from rsprompt.engine.callbacks import ModelExport, ResumeCheckpoint
from rsprompt.engine.task import SegmentationTask

log = logging.getLogger(__name__)

#: Precisions that need a GPU to be worth anything; on CPU they fall back to 32-bit.
_GPU_PRECISIONS = ("16-mixed", "16", 16, "bf16-mixed", "bf16", "16-true", "bf16-true")


class TrainCLI(LightningCLI):
    """LightningCLI with rsprompt's defaults: encoder-free checkpoints, ``--ckpt_path`` resume."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add ``--ckpt_path`` (resume) to the parser."""
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help="Resume from this resume checkpoint (last.ckpt); 'last' = "
            "<trainer.default_root_dir>/checkpoints/last.ckpt.",
        )

    def before_instantiate_classes(self) -> None:
        """Use 32-bit precision when a mixed precision is asked for and no GPU is present."""
        cfg = self.config
        trainer = cfg.get("trainer") if hasattr(cfg, "get") else None
        if trainer is None:
            return
        precision = trainer.get("precision")
        accelerator = str(trainer.get("accelerator") or "auto")
        if (
            precision in _GPU_PRECISIONS
            and not torch.cuda.is_available()
            and accelerator in ("auto", "cpu")
        ):
            warnings.warn(
                f"precision {precision!r} needs a GPU; training in 32-bit on the CPU",
                stacklevel=1,
            )
            trainer["precision"] = "32-true"


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


def close_datasets(datamodule: Any) -> None:
    """Close the raster handles of a datamodule's datasets (quiet interpreter shutdown)."""
    for ds in (getattr(datamodule, "datasets", None) or {}).values():
        close = getattr(ds, "close", None)
        if callable(close):
            close()


def make_cli(args: list[str] | None) -> TrainCLI:
    """Parse ``args`` and instantiate the task, datamodule and trainer (no training yet)."""
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
    try:
        trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt, weights_only=True)
    finally:
        close_datasets(cli.datamodule)
    export = next(c for c in trainer.callbacks if isinstance(c, ModelExport))
    return {
        "root": trainer.default_root_dir,
        "model_ckpt": export.saved,
        "metrics": cli.model.last_metrics,
    }
