"""``rsprompt convert``: the authors' released weights → an rsprompt ``model.ckpt``.

The released file holds the frozen encoder too, so two files are written: ``model.ckpt`` (the
trainable tensors and the meta, as ``rsprompt train`` writes it) and, next to it,
``<stem>.encoder.safetensors``: the frozen encoder in the layout the method's builder loads,
recorded in the meta with its sha256 like any encoder weights file. ``rsprompt evaluate`` and
``rsprompt predict`` rebuild the model from the two.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

#: Methods with a released weights layout (rsprompt.models.convert.SUPPORTED_METHODS).
METHODS = ("mobanet", "dplnet", "rpn")
DATASETS = ("vaihingen", "potsdam", "whu-opt-sar")
#: Training patch size recorded when none is given (the papers' crops; RPN: its img_size).
DEFAULT_PATCH = {"mobanet": 256, "dplnet": 512}
#: Build options that --option may not set, and why.
REFUSED_OPTIONS = {
    "weights": "the released file carries the encoder",
    "device": "the released file carries the encoder",
    "encoder_seed": "the released file carries the encoder",
    "class_names": "give class names with --classes",
    "aux_channels": "use --aux-channels",
}


def _outputs(output: Path, official: Path, overwrite: bool) -> tuple[Path, Path]:
    """``(model.ckpt, encoder sidecar)``; refuses to replace files without ``--overwrite``."""
    sidecar = output.with_name(f"{output.stem}.encoder.safetensors")
    for path in (output, sidecar):
        if path.is_dir():
            raise click.ClickException(f"output {path} is a folder; give a file name")
        if official.exists() and path.exists() and path.resolve() == official.resolve():
            raise click.ClickException(f"output {path} is the input file; choose another name")
        if path.exists() and not overwrite:
            raise click.ClickException(f"{path} exists; pass --overwrite to replace it")
    return output, sidecar


def _read_official(path: Path) -> dict[str, Any]:
    """The released state dict (``torch.load(weights_only=True)`` or safetensors, unwrapped)."""
    from rsprompt.engine.checkpoint import CheckpointError, load_trusted
    from rsprompt.models.convert import OfficialStateError, unwrap_state_dict

    if not path.is_file():
        raise click.ClickException(f"released weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error type
            raise click.ClickException(f"{path}: not a readable safetensors file: {exc}") from None
    else:
        try:
            obj = load_trusted(path, what="weights file")
        except CheckpointError as exc:
            raise click.ClickException(str(exc)) from None
    try:
        return unwrap_state_dict(obj)
    except OfficialStateError as exc:
        raise click.ClickException(f"{path}: {exc}") from None


def _data_record(
    method: str, dataset: str | None, classes: str | None, num_classes: int, aux_channels: int
) -> dict[str, Any]:
    """Class names/colours, normalisation and dataset entries of the meta."""
    from rsprompt.data.labels import ISPRS_CLASSES, class_table
    from rsprompt.data.normalize import DSMNormalizer, Normalization, OpticalNormalizer
    from rsprompt.models.methods.rpn import default_class_names

    record: dict[str, Any] = {"dataset": dataset, "colors": None, "label_variant": None}
    if dataset is not None:
        from rsprompt.data.datamodules import DATAMODULES

        dm = DATAMODULES[dataset]
        table = class_table(dataset)
        names, record["colors"] = list(table.names), [list(c) for c in table.colors]
        norm = dm.default_normalization()
        record["datamodule"] = f"{dm.__module__}.{dm.__qualname__}"
        record["datamodule_kwargs"] = {}
        record["label_variant"] = "full" if dataset in ("vaihingen", "potsdam") else None
    else:
        names = default_class_names(num_classes)
        aux = DSMNormalizer(mode="minmax") if aux_channels else None
        norm = Normalization(OpticalNormalizer(), aux)
    if classes is not None:
        names = [c.strip() for c in classes.split(",") if c.strip()]
        record["colors"] = None
    if len(names) != num_classes:
        raise click.BadParameter(
            f"{len(names)} class names ({', '.join(names)}) for --num-classes {num_classes}",
            param_hint="--classes" if classes is not None else "--dataset",
        )
    if record["colors"] is None and tuple(names) == ISPRS_CLASSES.names:
        record["colors"] = [list(c) for c in ISPRS_CLASSES.colors]
    record["classes"] = names
    record["normalization"] = norm
    record["aux_kind"] = None if not aux_channels or norm.aux is None else norm.aux.kind
    bands = norm.optical.bands
    record["bands"] = None if bands is None else list(bands)
    return record


def _model_kwargs(method: str, options: tuple[str, ...], classes: list[str]) -> dict[str, Any]:
    from rsprompt.commands.info import _parse_options
    from rsprompt.models.convert import official_model_kwargs

    kwargs = _parse_options(options)
    for key, why in REFUSED_OPTIONS.items():
        if key in kwargs:
            raise click.BadParameter(f"{key} cannot be set here: {why}", param_hint="--option")
    if method == "rpn":
        kwargs.setdefault("class_names", list(classes))
    return official_model_kwargs(method, kwargs)


def _frozen_differences(a: Any, b: Any) -> list[str]:
    """Frozen tensors of model ``a`` that differ in ``b`` (or are absent there)."""
    import torch

    theirs = b.state_dict()
    return [
        k
        for k, v in a.state_dict().items()
        if a._is_frozen_key(k) and (k not in theirs or not torch.equal(v, theirs[k]))
    ]


def _write_sidecar(model: Any, sidecar: Path, build: dict[str, Any]) -> None:
    """Write the frozen encoder next to the checkpoint, after checking that it rebuilds it."""
    from safetensors.torch import save_file

    from rsprompt.engine.checkpoint import build_seeded
    from rsprompt.models.convert import encoder_weights_state

    sidecar.parent.mkdir(parents=True, exist_ok=True)
    tmp = sidecar.with_name(f".{sidecar.stem}.{os.getpid()}.tmp.safetensors")
    try:
        save_file(encoder_weights_state(model), str(tmp))
        rebuilt = build_seeded(weights=str(tmp), encoder_seed=None, **build)
        bad = _frozen_differences(model, rebuilt)
        if bad:
            raise click.ClickException(
                f"the encoder file written for {sidecar} does not rebuild the converted encoder "
                f"({len(bad)} tensors differ, e.g. {bad[:3]}); nothing was written"
            )
        os.replace(tmp, sidecar)
    finally:
        if tmp.exists():
            tmp.unlink()


@click.command("convert")
@click.argument("method", type=click.Choice(METHODS))
@click.argument("official", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="model.ckpt to write (the encoder goes to <stem>.encoder.safetensors beside it).",
)
@click.option(
    "--encoder",
    "-e",
    required=True,
    help="Encoder (vit_large_patch14_dinov2 / dinov2_vitl14, "
    "mit_b5, ViT-B-16…), as the released model was built.",
)
@click.option("--num-classes", "-k", type=click.IntRange(min=1), required=True, help="Classes K.")
@click.option(
    "--aux-channels",
    type=click.IntRange(min=0),
    help="Aux-modality channels [default: the method's paper configuration].",
)
@click.option(
    "--dataset",
    type=click.Choice(DATASETS),
    help="Dataset (classes, normalisation; needed by `rsprompt evaluate`).",
)
@click.option("--classes", help='Class names "name1,name2,…" [default: the dataset\'s].')
@click.option(
    "--patch-size",
    type=click.IntRange(min=1),
    help="Training crop size recorded (default window of evaluate/predict) [default: MoBaNet "
    "256, DPLNet 512, RPN its img_size].",
)
@click.option(
    "--option",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Method option as the released model was built, repeatable; VALUE is YAML "
    "(e.g. --option vpt_tokens=100 --option img_size=512).",
)
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
def convert(
    method: str,
    official: Path,
    output: Path,
    encoder: str,
    num_classes: int,
    aux_channels: int | None,
    dataset: str | None,
    classes: str | None,
    patch_size: int | None,
    options: tuple[str, ...],
    overwrite: bool,
) -> None:
    """Convert a state dict saved by the authors' released code of METHOD (OFFICIAL, a .pth)
    into an rsprompt model.ckpt that `rsprompt evaluate` and `rsprompt predict` take.

    \b
    Example:
      rsprompt convert mobanet MoBaNet_vaihingen.pth -o run/model.ckpt \\
          --encoder dinov2_vitl14 --num-classes 6 --dataset vaihingen
    """  # noqa: D205, D301
    from rsprompt.engine.checkpoint import model_meta, save_model_checkpoint, weights_record
    from rsprompt.models.convert import load_official_with_report, resolve_encoder_name
    from rsprompt.models.registry import default_aux_channels
    from rsprompt.models.weights import sha256_file

    ckpt, sidecar = _outputs(output, official, overwrite)
    aux = default_aux_channels(method) if aux_channels is None else aux_channels
    data = _data_record(method, dataset, classes, num_classes, aux)
    kwargs = _model_kwargs(method, options, data["classes"])
    state = _read_official(official)
    encoder = resolve_encoder_name(encoder)
    try:
        model, conversion = load_official_with_report(
            method, state, encoder, num_classes, aux_channels=aux, **kwargs
        )
        build = {
            "method": method,
            "encoder": encoder,
            "num_classes": num_classes,
            "aux_channels": aux,
            **kwargs,
        }
        _write_sidecar(model, sidecar, build)
    except (ValueError, TypeError, KeyError, RuntimeError, OSError) as exc:
        text = str(exc).strip().strip("'\"").splitlines()
        first = text[0] if text else type(exc).__name__
        raise click.ClickException(f"{official}: {first}") from None
    patch = patch_size or DEFAULT_PATCH.get(method) or getattr(model, "img_size", None)
    meta = model_meta(
        model,
        weights=weights_record(sidecar),
        encoder_seed=None,
        model_kwargs=kwargs,
        patch_size=patch,
        converted_from={
            "file": str(official.resolve()),
            "sha256": sha256_file(official),
            "ignored_keys": conversion.ignored,
        },
        **data,
    )
    save_model_checkpoint(ckpt, model, meta)
    click.echo(
        f"wrote {ckpt} ({len(model.adapter_state_dict())} trainable tensors) and {sidecar} "
        f"(frozen encoder); {len(conversion.sources)} tensors converted"
        + (f", {len(conversion.ignored)} unused keys dropped" if conversion.ignored else "")
    )
