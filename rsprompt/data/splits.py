"""Official file lists and train/test/validation splits of the datasets rsprompt reads.

This is the ONE place that holds them; datasets, data modules, the synthetic layouts and the tests
import from here. Tile identifiers are:

- ``vaihingen``: the area number as an ``int`` (file ``top_mosaic_09cm_area{N}.tif``);
- ``potsdam``: ``"a_b"`` strings (file ``top_potsdam_{a}_{b}_RGB.tif``; column ``a``, row ``b``);
- ``whu-opt-sar``: the scene name, e.g. ``"NH49E001014"``.

Variants:

- ``official``: the datasets' own training and test sets; ``val`` is the suggested validation set,
  held out of the official training set (never taken from the test set).
- ``deepnets`` (Vaihingen): the DeepNetsForEO / SSRS line of fusion papers (12 training, 4 test).
- ``mobanet`` (Potsdam): MoBaNet's released code, the official training set without tile 7_10
  (label errors).

Example:
    >>> from rsprompt.data.splits import get_tiles, split_of
    >>> get_tiles("vaihingen", "val")
    (32, 34, 37)
    >>> split_of("potsdam", "2_13")
    'test'
    >>> len(get_tiles("vaihingen", "train", exclude_val=True))
    13
"""

from __future__ import annotations

from typing import Literal

TileId = int | str
Split = Literal["train", "val", "test"]


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.split())


def _strs(text: str) -> tuple[str, ...]:
    return tuple(text.split())


VAIHINGEN_TRAIN = _ints("1 3 5 7 11 13 15 17 21 23 26 28 30 32 34 37")
VAIHINGEN_TEST = _ints("2 4 6 8 10 12 14 16 20 22 24 27 29 31 33 35 38")
VAIHINGEN_VAL = _ints("32 34 37")
VAIHINGEN_DEEPNETS_TRAIN = _ints("1 3 23 26 7 11 13 28 17 32 34 37")
VAIHINGEN_DEEPNETS_TEST = _ints("5 21 15 30")

POTSDAM_TRAIN = _strs(
    "2_10 2_11 2_12 3_10 3_11 3_12 4_10 4_11 4_12 5_10 5_11 5_12 6_7 6_8 6_9 6_10 "
    "6_11 6_12 7_7 7_8 7_9 7_10 7_11 7_12"
)
POTSDAM_TEST = _strs("2_13 2_14 3_13 3_14 4_13 4_14 4_15 5_13 5_14 5_15 6_13 6_14 6_15 7_13")
POTSDAM_VAL = _strs("7_11 7_12")
POTSDAM_MOBANET_TRAIN = tuple(t for t in POTSDAM_TRAIN if t != "7_10")

WHU_OPT_SAR_TEST = _strs(
    "NH49E001014 NH49E001017 NH49E002012 NH49E002016 NH49E003014 NH49E003024 NH49E004011 "
    "NH49E005011 NH49E005019 NH49E006019 NH49E007014 NH49E008013 NH49E009017 NH49E010020 "
    "NH49E011024 NH49E012020 NH49E013010 NH50E007002 NH50E011005 NH50E014003"
)
WHU_OPT_SAR_TRAIN = _strs(
    "NH49E004021 NH49E005014 NH49E005023 NH49E005024 NH49E006011 NH49E006022 NH49E006024 "
    "NH49E007013 NH49E007023 NH49E007024 NH49E008014 NH49E008017 NH49E008024 NH49E009014 "
    "NH49E009023 NH49E009024 NH49E010014 NH49E010015 NH49E012017 NH49E012018 NH49E012022 "
    "NH49E013018 NH49E013023 NH49E014007 NH49E014017 NH49E014021 NH49E014024 NH50E003001 "
    "NH50E006001 NH50E006007 NH50E007001 NH50E007003 NH50E007004 NH50E008003 NH50E009001 "
    "NH50E009003 NH50E009004 NH50E009006 NH50E010001 NH50E010003 NH50E010004 NH50E011002 "
    "NH50E011004 NH50E012001 NH50E012004 NH50E012005 NH50E012008 NH50E013001 NH50E013002 "
    "NH50E013005 NI49E021010 NI49E022010 NI49E022011 NI49E022013 NI49E022015 NI49E023017 "
    "NI49E024017 NI49E024018 NI49E024019 NI49E024020 NH49E001013 NH49E002014 NH49E004013 "
    "NH49E006014 NH49E006017 NH49E007017 NH49E009012 NH49E010016 NH49E010022 NH49E011011 "
    "NH49E011017 NH49E012009 NH49E013007 NH49E013021 NH49E014022 NH50E016002 NI49E021011 "
    "NI49E021012 NI49E022014 NI49E024013"
)

#: dataset -> variant -> split -> tile ids (in the order the sources list them).
SPLITS: dict[str, dict[str, dict[str, tuple[TileId, ...]]]] = {
    "vaihingen": {
        "official": {"train": VAIHINGEN_TRAIN, "val": VAIHINGEN_VAL, "test": VAIHINGEN_TEST},
        "deepnets": {"train": VAIHINGEN_DEEPNETS_TRAIN, "test": VAIHINGEN_DEEPNETS_TEST},
    },
    "potsdam": {
        "official": {"train": POTSDAM_TRAIN, "val": POTSDAM_VAL, "test": POTSDAM_TEST},
        "mobanet": {"train": POTSDAM_MOBANET_TRAIN, "val": POTSDAM_VAL, "test": POTSDAM_TEST},
    },
    "whu-opt-sar": {
        "official": {"train": WHU_OPT_SAR_TRAIN, "test": WHU_OPT_SAR_TEST},
    },
}


def _variants(dataset: str) -> dict[str, dict[str, tuple[TileId, ...]]]:
    try:
        return SPLITS[dataset]
    except KeyError:
        raise ValueError(
            f"unknown dataset {dataset!r}; expected one of {', '.join(SPLITS)}"
        ) from None


def normalize_tile(dataset: str, tile: TileId) -> TileId:
    """Return ``tile`` in its canonical form (``int`` for Vaihingen, ``str`` otherwise).

    Accepts ``"area7"``/``"7"``/``7`` for Vaihingen.

    Raises:
        ValueError: If the tile is not part of the dataset.
    """
    if dataset == "vaihingen":
        text = str(tile).strip().lower().removeprefix("area")
        if not text.isdigit():
            raise ValueError(f"not a Vaihingen area number: {tile!r}")
        out: TileId = int(text)
    else:
        _variants(dataset)
        out = str(tile).strip()
    if out not in all_tiles(dataset):
        raise ValueError(f"{tile!r} is not a {dataset} tile")
    return out


def all_tiles(dataset: str) -> tuple[TileId, ...]:
    """Every tile of ``dataset`` (official training tiles first, then test tiles)."""
    official = _variants(dataset)["official"]
    return (*official["train"], *official["test"])


def get_tiles(
    dataset: str, split: str, variant: str = "official", *, exclude_val: bool = False
) -> tuple[TileId, ...]:
    """Return the tile ids of one split.

    Args:
        dataset: ``vaihingen``, ``potsdam`` or ``whu-opt-sar``.
        split: ``train``, ``val`` or ``test``.
        variant: ``official`` (default), ``deepnets`` (Vaihingen) or ``mobanet`` (Potsdam).
        exclude_val: For ``train``, leave out the validation tiles of the variant.

    Raises:
        ValueError: For an unknown dataset, variant or split.
    """
    variants = _variants(dataset)
    if variant not in variants:
        raise ValueError(
            f"unknown split variant {variant!r} for {dataset}; expected one of "
            f"{', '.join(variants)}"
        )
    splits = variants[variant]
    if split not in splits:
        raise ValueError(
            f"{dataset} ({variant}) has no {split!r} split; it has {', '.join(splits)}"
        )
    tiles = splits[split]
    if split == "train" and exclude_val:
        val = set(splits.get("val", ()))
        tiles = tuple(t for t in tiles if t not in val)
    return tiles


def split_of(dataset: str, tile: TileId, variant: str = "official") -> str | None:
    """Return ``"test"``, ``"val"`` or ``"train"`` for ``tile`` (``None`` if in no split).

    Validation tiles, which the official lists count as training tiles, report ``"val"``.
    """
    splits = _variants(dataset).get(variant)
    if splits is None:
        raise ValueError(f"unknown split variant {variant!r} for {dataset}")
    tile = normalize_tile(dataset, tile)
    for name in ("test", "val", "train"):
        if tile in splits.get(name, ()):
            return name
    return None
