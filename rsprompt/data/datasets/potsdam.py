"""ISPRS Potsdam: 6000×6000 px orthophotos at 5 cm (EPSG:32633) + DSM, 38 tiles.

Reads ``2_Ortho_RGB``/``3_Ortho_IRRG``/``4_Ortho_RGBIR`` (choose with ``optical``), ``1_DSM``
(zero-padded ids) and ``5_Labels_all``/``5_Labels_all_noBoundary`` (or the labels unpacked flat).
Tiles are read on their own georeferencing; files without any get the tile's grid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from rsprompt.data.datasets.base import Georeference
from rsprompt.data.datasets.isprs import ISPRSDataset
from rsprompt.data.normalize import Normalization

OPTICAL_VARIANTS = ("RGB", "IRRG", "RGBIR")


class Potsdam(ISPRSDataset):
    """ISPRS Potsdam (RGB/IRRG/RGBIR + DSM).

    Args:
        root: Dataset folder.
        split: ``train``, ``val``, ``test`` or ``None``.
        optical: ``RGB`` (default), ``IRRG`` or ``RGBIR`` (R, G, B, IR).
        dsm: ``dsm`` (``1_DSM``, float32 heights; default) or ``ndsm`` (the distributed 8-bit
            normalised DSM ``1_DSM_normalisation/…_normalized_lastools.jpg``, on the tile grid).
        variant: ``official`` or ``mobanet`` (official training tiles without 7_10).
        tiles: Explicit tile ids (overrides ``split``).
        labels: ``full`` or ``eroded`` ("noBoundary", boundaries ignored).
        normalization: Per-modality normalisation (``None``: raw values).
        georeference: ``auto`` or ``never`` (see
            :class:`~rsprompt.data.datasets.base.MultimodalTileDataset`).
        label_tolerance: Largest per-channel colour difference accepted by the label decoder.
        transforms: Function applied to each sample.
        exclude_val: For ``train``, leave the validation tiles out.

    Raises:
        ValueError: For an unknown optical or DSM variant.
    """

    dataset_name = "potsdam"
    default_local_res = 0.05

    def __init__(
        self,
        root: str | Path,
        split: str | None = "train",
        *,
        optical: str = "RGB",
        dsm: str = "dsm",
        variant: str = "official",
        tiles: Sequence[str | int] | None = None,
        labels: Literal["full", "eroded"] = "full",
        normalization: Normalization | None = None,
        georeference: Georeference = "auto",
        label_tolerance: int = 30,
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        exclude_val: bool = True,
    ) -> None:
        if optical not in OPTICAL_VARIANTS:
            raise ValueError(f"optical must be one of {OPTICAL_VARIANTS}, got {optical!r}")
        if dsm not in ("dsm", "ndsm"):
            raise ValueError(f"dsm must be 'dsm' or 'ndsm', got {dsm!r}")
        self.optical = optical
        self.aux_role = "aux" if dsm == "dsm" else "ndsm"
        self.image_role = f"image:{optical}"
        super().__init__(
            root,
            split,
            variant=variant,
            tiles=tiles,
            labels=labels,
            normalization=normalization,
            georeference=georeference,
            label_tolerance=label_tolerance,
            transforms=transforms,
            exclude_val=exclude_val,
        )
