"""``rsprompt info``: build a method on an encoder without weights and print its parameters."""

from __future__ import annotations

import json

import click


def _parse_options(values: tuple[str, ...]) -> dict:
    import yaml

    options: dict = {}
    for item in values:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--option")
        try:
            options[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise click.BadParameter(f"cannot parse the value of {item!r}: {exc}") from exc
    return options


@click.command("info", short_help="Print a method's frozen/trainable parameter table.")
@click.option("--method", "-m", required=True, help="Method name (see the list in the error).")
@click.option("--encoder", "-e", required=True, help="Encoder name (timm name or mit_b0…mit_b5).")
@click.option("--num-classes", "-k", type=click.IntRange(min=1), required=True, help="Classes K.")
@click.option(
    "--aux-channels",
    type=click.IntRange(min=0),
    default=None,
    help="Aux-modality channels (default: the method's paper configuration; 0 = no aux).",
)
@click.option("--img-size", type=click.IntRange(min=1), default=None, help="Encoder build size.")
@click.option(
    "--option",
    "-o",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Method option, repeatable; VALUE is YAML (e.g. -o mcrm=false -o taps=[5,11,17,23]).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def info(
    method: str,
    encoder: str,
    num_classes: int,
    aux_channels: int | None,
    img_size: int | None,
    options: tuple[str, ...],
    as_json: bool,
) -> None:
    """Build METHOD on ENCODER without weights (meta device, or random init where the encoder
    cannot be built on meta; no forward pass) and print its parameter table: frozen encoder,
    trainable parameters per module, trainable at inference (without training-only modules).

    \b
    Examples:
      rsprompt info --method mobanet --encoder vit_large_patch14_dinov2 --num-classes 6
      rsprompt info -m mobanet -e tf_efficientnet_lite0 -k 6 -o mcrm=false --json
    """  # noqa: D205, D301
    from rsprompt.models.params import format_parameter_table, model_info
    from rsprompt.models.registry import available_methods

    if method not in available_methods():
        raise click.BadParameter(
            f"unknown method {method!r}; available: {', '.join(available_methods())}",
            param_hint="--method",
        )
    opts = _parse_options(options)
    if img_size is not None:
        opts["img_size"] = img_size
    try:
        report = model_info(method, encoder, num_classes, aux_channels, **opts)
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(report))
    else:
        click.echo(format_parameter_table(report))
