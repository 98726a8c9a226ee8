"""What the export and the stacked layer share: errors, the input layout, atomic outputs.

The *input layout* of a checkpoint is what one stacked raster must hold for it: the optical
bands the model reads (1-based indices of the scene's bands, or all of them), then its aux
band(s). It follows the same rules as ``rsprompt predict``
(:class:`rsprompt.inference.from_checkpoint.CheckpointPredictor`): the optical normaliser's band
selection, else the checkpoint's recorded ``bands``, else every band.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The optional extra that brings onnx and onnxruntime.
EXTRA = "onnx"

#: Ground sampling distance (cm per pixel) of the benchmark datasets, by the dataset name a
#: checkpoint records (ISPRS Vaihingen 9 cm, ISPRS Potsdam 5 cm, WHU-OPT-SAR 5 m).
DATASET_GSD_CM: dict[str, float] = {"vaihingen": 9.0, "potsdam": 5.0, "whu-opt-sar": 500.0}


class ExportError(ValueError):
    """A checkpoint or raster cannot be exported/stacked (message names the file and why)."""


def require_onnx(*modules: str) -> None:
    """Fail clearly when an optional ONNX dependency is not installed.

    Raises:
        ExportError: Naming the missing module(s) and the extra that installs them.
    """
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed: "
            f"install the optional extra with `pip install 'rsprompt[{EXTRA}]'` "
            f"(onnx and onnxruntime)"
        )


@dataclass(frozen=True)
class InputLayout:
    """What one stacked raster holds for a checkpoint.

    Attributes:
        bands: 1-based scene bands the model reads, in order (``None``: every band).
        n_optical: Optical channels the model takes (``None``: unknown, every band of the scene).
        aux_kind: ``"dsm"``, ``"sar"`` or ``None``.
        aux_channels: Aux channels (0: optical only).
    """

    bands: list[int] | None
    n_optical: int | None
    aux_kind: str | None
    aux_channels: int

    @property
    def channels(self) -> int | None:
        """Channels of the stacked input (``None`` when the optical count is unknown)."""
        return None if self.n_optical is None else self.n_optical + self.aux_channels


def input_layout(meta: dict[str, Any], source: str | Path = "checkpoint") -> InputLayout:
    """The :class:`InputLayout` of a checkpoint's ``meta`` (rules of ``rsprompt predict``).

    Raises:
        ExportError: If the normalisation record is unreadable.
    """
    bands: list[int] | None = None
    n: int | None = None
    norm = checkpoint_normalization(meta, source)
    optical = None if norm is None else norm.optical
    if optical is not None and optical.bands is not None:
        bands = [b + 1 for b in optical.bands]
    elif meta.get("bands"):
        bands = [int(b) + 1 for b in meta["bands"]]
    if bands is not None:
        n = len(bands)
    elif optical is not None and len(optical.mean) > 1:
        n = len(optical.mean)
    aux_channels = int(meta.get("aux_channels") or 0)
    aux_kind = meta.get("aux_kind") if aux_channels else None
    return InputLayout(bands, n, aux_kind, aux_channels if aux_kind else 0)


def checkpoint_normalization(meta: dict[str, Any], source: str | Path = "checkpoint") -> Any:
    """The :class:`~rsprompt.data.normalize.Normalization` of a checkpoint's ``meta`` (or ``None``).

    Raises:
        ExportError: If the normalisation record is unreadable.
    """
    from rsprompt.data.normalize import Normalization

    record = meta.get("normalization")
    if record is None:
        return None
    try:
        return Normalization.from_dict(record)
    except (KeyError, ValueError, TypeError) as exc:
        raise ExportError(f"checkpoint {source}: unreadable normalisation record ({exc})") from None


def is_ndsm(aux: Any) -> bool:
    """Whether ``aux`` is a DSM normaliser in ``ndsm`` mode (heights above a fitted ground)."""
    return getattr(aux, "kind", None) == "dsm" and getattr(aux, "mode", None) == "ndsm"


def ndsm_input(aux: Any, requested: bool | None, source: str | Path, option: str) -> bool:
    """Whether the aux layer holds heights above ground (``rsprompt stack``/``export --ndsm``).

    Default (``requested`` is ``None``): yes exactly for a checkpoint whose DSM normalisation
    is ``ndsm``. ``True`` for any other checkpoint is refused; ``False`` keeps the raw DSM.

    Raises:
        ExportError: ``--ndsm`` for a checkpoint that does not normalise its DSM as an nDSM.
    """
    if requested is None:
        return is_ndsm(aux)
    if requested and not is_ndsm(aux):
        what = (
            "takes no DSM normalisation"
            if aux is None
            else f"normalises its {str(aux.kind).upper()} with mode {aux.mode!r}"
        )
        raise ExportError(
            f"checkpoint {source} {what}: {option} (heights above ground) fits only checkpoints "
            "trained with the nDSM normalisation (DSM mode 'ndsm')"
        )
    return bool(requested)


def training_resolution_cm(meta: dict[str, Any]) -> float | None:
    """Ground sampling distance of the training data in cm/px, where the checkpoint tells it.

    A ``resolution_cm`` or ``gsd_m`` key in the meta (or in its ``datamodule_kwargs``), else the
    benchmark dataset it names (:data:`DATASET_GSD_CM`); ``None`` when unknown.
    """
    kwargs = meta.get("datamodule_kwargs") or {}
    for where in (meta, kwargs):
        for key, factor in (("resolution_cm", 1.0), ("gsd_m", 100.0), ("pixel_size_m", 100.0)):
            value = where.get(key) if isinstance(where, dict) else None
            if isinstance(value, int | float) and value > 0:
                return float(value) * factor
    name = meta.get("dataset")
    return DATASET_GSD_CM.get(str(name).lower()) if name else None


def check_output(path: Path, overwrite: bool, role: str = "output") -> None:
    """Refuse an existing output without ``overwrite``, or a missing output folder.

    Raises:
        ExportError: Naming the file.
    """
    if path.exists() and not overwrite:
        raise ExportError(f"{role} {path} exists; pass --overwrite to replace it")
    if path.exists() and path.is_dir():
        raise ExportError(f"{role} {path} is a folder")
    if not path.parent.is_dir():
        raise ExportError(f"output folder {path.parent} does not exist")


def temp_path(path: Path) -> Path:
    """A temporary name next to ``path`` (same folder, so the final rename is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")


@contextmanager
def atomic_outputs(paths: Sequence[Path]) -> Iterator[list[Path]]:
    """Yield temporary paths for ``paths``; rename them all into place when the block succeeds.

    On any error the temporary files are removed and the existing outputs are left untouched.
    """
    temps = [temp_path(p) for p in paths]
    try:
        yield temps
        for tmp, final in zip(temps, paths, strict=True):
            os.replace(tmp, final)
    finally:
        for tmp in temps:
            if tmp.exists():
                tmp.unlink()
