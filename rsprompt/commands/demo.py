"""``rsprompt demo``: the whole journey on synthetic data and a real frozen encoder."""

from __future__ import annotations

from pathlib import Path

import click

from rsprompt.commands._options import precision_option


@click.command("demo")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo_out"),
    show_default=True,
    help="Output folder.",
)
@click.option(
    "--minutes",
    type=click.FloatRange(min=0.2),
    default=5.0,
    show_default=True,
    help="Wall-time budget of the whole demo (about 70% goes to training the two models).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of data and training.")
@click.option("--tiny", is_flag=True, help="A tiny setting that runs in seconds (for smoke tests).")
@click.option("--overwrite", is_flag=True, help="Replace the outputs of an earlier demo run.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@precision_option(
    "Training and prediction precision; auto = bf16 where the CPU computes it natively.",
    choices=("auto", "32", "bf16"),
)
def demo(
    out_dir: Path,
    minutes: float,
    seed: int,
    tiny: bool,
    overwrite: bool,
    no_progress: bool,
    precision: str,
) -> None:
    """Train MoBaNet prompts on a frozen ImageNet EfficientNet-Lite0 and map a held-out scene.

    Generates an ISPRS-like synthetic area (training tiles and a held-out scene whose DSM comes in
    another CRS and resolution), trains the same model with and without the DSM, predicts the
    held-out scene like `rsprompt predict scene.tif --dem dsm.tif`, and writes the map (COG +
    .qml + .aux.xml), polygons, a preview PNG and metrics.json to --out.
    """
    import logging
    import warnings

    from rsprompt.demo import TINY_SETTINGS, DemoError, run_demo

    # The demo prints its own story; Lightning's device banner, tips and deprecation notices of
    # its dependencies are noise for a newcomer.
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    import lightning.pytorch  # noqa: F401  (importing it resets its loggers' levels)

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        run_demo(
            out_dir,
            minutes,
            seed=seed,
            settings=TINY_SETTINGS if tiny else None,
            overwrite=overwrite,
            progress=not no_progress,
            precision=precision,
            log=click.echo,
        )
    except DemoError as err:
        raise click.ClickException(str(err)) from None
