"""TorchGeo 0.10 datasets reading the official distributions of Vaihingen, Potsdam, WHU-OPT-SAR."""

from rsprompt.data.datasets._raster import LOCAL_CRS, Grid, raster_info
from rsprompt.data.datasets.base import (
    MultimodalTileDataset,
    Tile,
    check_patch_fits,
    held_out_val,
    select_tiles,
)
from rsprompt.data.datasets.layouts import find_tiles, layout
from rsprompt.data.datasets.potsdam import Potsdam
from rsprompt.data.datasets.vaihingen import Vaihingen
from rsprompt.data.datasets.whu_opt_sar import WHUOptSar

DATASET_CLASSES = {"vaihingen": Vaihingen, "potsdam": Potsdam, "whu-opt-sar": WHUOptSar}

__all__ = [
    "DATASET_CLASSES",
    "LOCAL_CRS",
    "Grid",
    "MultimodalTileDataset",
    "Potsdam",
    "Tile",
    "Vaihingen",
    "WHUOptSar",
    "check_patch_fits",
    "find_tiles",
    "held_out_val",
    "layout",
    "raster_info",
    "select_tiles",
]
