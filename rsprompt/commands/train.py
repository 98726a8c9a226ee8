"""``rsprompt train``: train a method with a YAML config (LightningCLI style)."""

from __future__ import annotations

import click

_EPILOG = """\b
Examples:
  rsprompt train --config configs/mobanet_vaihingen.yaml --data.root data/vaihingen
  rsprompt train --config configs/dplnet_potsdam.yaml --data.batch_size 4 \\
      --trainer.max_steps 100 --trainer.default_root_dir runs/dpl
  rsprompt train --config configs/gopt_vaihingen.yaml --model.encoder resnet18 --model.weights null
  rsprompt train --config configs/spm_vaihingen.yaml --ckpt_path last      # resume
  rsprompt train --config configs/spm_vaihingen.yaml --overwrite   # replace the run in the folder
  rsprompt train --config configs/rpn_potsdam.yaml --print_config
Run `rsprompt train --help` for every option (LightningCLI's help).
"""


def _find(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kinds):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _one_line(exc: BaseException) -> str:
    """The error as one line (first line of its message; the type when it has none)."""
    text = str(exc).strip().strip("'\"")
    return text.splitlines()[0] if text else type(exc).__name__


@click.command(
    "train",
    context_settings={
        "ignore_unknown_options": True,
        "allow_extra_args": True,
        "help_option_names": [],
    },
    add_help_option=False,
    epilog=_EPILOG,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def train(args: tuple[str, ...]) -> None:
    """Train a method: `rsprompt train --config CONFIG.yaml [--section.option VALUE …]`.

    Writes model.ckpt (for evaluate/predict), checkpoints/last.ckpt (resume) and
    val_metrics.json under --trainer.default_root_dir.
    """
    from rsprompt.data.datasets.custom_labels import CustomDataError
    from rsprompt.engine.checkpoint import CheckpointError
    from rsprompt.engine.cli_train import run_train
    from rsprompt.engine.task import WeightsNotFoundError

    try:
        result = run_train(list(args))
    except (CheckpointError, ValueError, FloatingPointError, OSError) as exc:
        # OSError: missing files, read-only or full disks, raster read errors (RasterioIOError)
        found = _find(exc, (WeightsNotFoundError, CheckpointError, CustomDataError)) or exc
        raise click.ClickException(_one_line(found)) from None
    except Exception as exc:  # jsonargparse wraps errors raised while instantiating classes
        found = _find(
            exc, (WeightsNotFoundError, CheckpointError, CustomDataError, FileNotFoundError)
        )
        if found is None:
            raise
        raise click.ClickException(_one_line(found)) from None
    if result["model_ckpt"] is not None:
        click.echo(f"model checkpoint: {result['model_ckpt']}")
