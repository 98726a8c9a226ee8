"""WHU-OPT-SAR: GF-1 optical (R, G, B, NIR) + GF-3 SAR (1 band), 100 scenes at 5 m.

Reads ``optical/{name}.tif``, ``sar/{name}.tif`` and ``lbl/{name}.tif`` (values 0, 10, …, 70).
Georeferencing of the distributed files is unverified: georeferenced scenes are read on their own
grids (SAR warped onto the optical grid when they differ); scenes without georeferencing share a
synthetic local grid (5 m pixels), as do all scenes when ``georeference="never"``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rsprompt.data.datasets.base import Georeference, MultimodalTileDataset, Tile, select_tiles
from rsprompt.data.labels import (
    WHU_OPT_SAR_CLASSES,
    WHU_OPT_SAR_CLASSES_WITH_BACKGROUND,
    decode_whu_labels,
)
from rsprompt.data.normalize import Normalization


class WHUOptSar(MultimodalTileDataset):
    """WHU-OPT-SAR optical + SAR scenes.

    Args:
        root: Dataset folder.
        split: ``train`` (without the held-out validation scenes), ``val`` (8 training scenes,
            see :func:`~rsprompt.data.datasets.base.held_out_val`), ``test`` or ``None``.
        variant: Split variant.
        tiles: Explicit scene names (overrides ``split``).
        keep_background: Keep background (0) as class 0 (8 classes); by default it is ignored
            and the 7 classes are 0–6.
        normalization: Per-modality normalisation (``None``: raw values).
        georeference: ``auto`` or ``never``.
        transforms: Function applied to each sample.
        exclude_val: For ``train``, leave the validation scenes out.
    """

    dataset_name = "whu-opt-sar"
    aux_kind = "sar"
    classes = WHU_OPT_SAR_CLASSES  # instances with keep_background=True: with background

    def __init__(
        self,
        root: str | Path,
        split: str | None = "train",
        *,
        variant: str = "official",
        tiles: Sequence[str] | None = None,
        keep_background: bool = False,
        normalization: Normalization | None = None,
        georeference: Georeference = "auto",
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        exclude_val: bool = True,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.keep_background = keep_background
        self.classes = (
            WHU_OPT_SAR_CLASSES_WITH_BACKGROUND if keep_background else WHU_OPT_SAR_CLASSES
        )
        found = select_tiles(
            self.dataset_name,
            self.root,
            split=split,
            variant=variant,
            tiles=tiles,
            exclude_val=exclude_val,
        )
        super().__init__(
            found,
            normalization=normalization,
            georeference=georeference,
            local_res=5.0,
            transforms=transforms,
        )

    def decode_label(self, raw: np.ndarray, tile: Tile) -> np.ndarray:
        """Decode label values 0, 10, …, 70 (see :func:`rsprompt.data.labels.decode_whu_labels`)."""
        return decode_whu_labels(raw[0], keep_background=self.keep_background)
