"""Class tables, palettes and label decoding for the datasets rsprompt reads.

A :class:`ClassTable` holds the class names and RGB colours of a dataset. Dataset names are the
same everywhere in rsprompt: ``vaihingen``, ``potsdam`` and ``whu-opt-sar``.

ISPRS labels are distributed as RGB images; :func:`decode_isprs_rgb` turns them into class indices
robustly (nearest palette colour within a tolerance, with a count of pixels that match no colour)
instead of silently mapping unknown colours to class 0. WHU-OPT-SAR labels are stored as
0, 10, …, 70; :func:`decode_whu_labels` turns them into indices.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

#: Index written for pixels that take no part in the loss or the metrics.
IGNORE_INDEX = 255

DATASETS = ("vaihingen", "potsdam", "whu-opt-sar")


@dataclass(frozen=True)
class ClassTable:
    """Names and colours of a dataset's classes.

    Args:
        names: Class names, index ``i`` is class ``i``.
        colors: RGB colour of each class (0–255).
        ignore_index: Label value that is ignored in losses and metrics.
    """

    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        if len(self.names) != len(self.colors):
            raise ValueError(
                f"{len(self.names)} class names but {len(self.colors)} colours were given"
            )

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.names)

    def palette(self) -> np.ndarray:
        """Return the colours as a ``K×3`` uint8 array."""
        return np.asarray(self.colors, dtype=np.uint8).reshape(-1, 3)

    def colorize(
        self, index: np.ndarray, ignore_color: tuple[int, int, int] = (0, 0, 0)
    ) -> np.ndarray:
        """Paint an index map as an ``H×W×3`` uint8 RGB image (ignored/unknown → ``ignore_color``)."""
        lut = np.zeros(
            (256 if index.dtype == np.uint8 else int(index.max(initial=0)) + 1, 3), np.uint8
        )
        lut[:] = ignore_color
        lut[: self.num_classes] = self.palette()
        safe = np.where((index >= 0) & (index < len(lut)), index, len(lut) - 1)
        return lut[safe]


ISPRS_CLASSES = ClassTable(
    names=("impervious surfaces", "building", "low vegetation", "tree", "car", "clutter"),
    colors=((255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0)),
)
#: Colour of the eroded boundary in the ISPRS "noBoundary" labels (ignored).
ISPRS_BOUNDARY_COLOR = (0, 0, 0)

WHU_OPT_SAR_CLASSES = ClassTable(
    names=("farmland", "city", "village", "water", "forest", "road", "others"),
    colors=(
        (204, 102, 1),
        (254, 0, 0),
        (255, 255, 1),
        (0, 0, 254),
        (85, 167, 0),
        (93, 255, 255),
        (152, 102, 153),
    ),
)
#: WHU-OPT-SAR with its background class kept (value 0) as class 0.
WHU_OPT_SAR_CLASSES_WITH_BACKGROUND = ClassTable(
    names=("background", *WHU_OPT_SAR_CLASSES.names),
    colors=((0, 0, 0), *WHU_OPT_SAR_CLASSES.colors),
)

CLASS_TABLES: dict[str, ClassTable] = {
    "vaihingen": ISPRS_CLASSES,
    "potsdam": ISPRS_CLASSES,
    "whu-opt-sar": WHU_OPT_SAR_CLASSES,
}


def default_colors(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct colours (golden-ratio hues), the same for the same ``n``."""
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95)
        out.append((round(r * 255), round(g * 255), round(b * 255)))
    return out


def parse_color(value: str | tuple[int, ...] | list[int]) -> tuple[int, int, int]:
    """An RGB colour from ``#rrggbb`` (or ``rrggbb``) or three 0–255 integers.

    Raises:
        ValueError: If ``value`` is neither.

    Example:
        >>> parse_color("#ff8000"), parse_color([0, 128, 255])
        ((255, 128, 0), (0, 128, 255))
    """
    if isinstance(value, str):
        h = value.strip().lstrip("#")
        if len(h) == 6:
            try:
                return (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16))
            except ValueError:
                pass
        raise ValueError(f"colour {value!r} is not #rrggbb")
    try:
        rgb = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"colour {value!r} is not #rrggbb or three integers") from None
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise ValueError(f"colour {value!r} is not three integers in 0–255")
    return rgb  # type: ignore[return-value]


def class_table(dataset: str) -> ClassTable:
    """Return the class table of ``dataset`` (``vaihingen``, ``potsdam`` or ``whu-opt-sar``)."""
    try:
        return CLASS_TABLES[dataset]
    except KeyError:
        raise ValueError(
            f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}"
        ) from None


@dataclass(frozen=True)
class DecodeReport:
    """What :func:`decode_isprs_rgb` found besides exact palette colours.

    Attributes:
        near: Pixels matched to a palette colour within the tolerance but not exactly.
        unmatched: Pixels farther than the tolerance from every colour (set to ignore).
    """

    near: int
    unmatched: int


def decode_isprs_rgb(
    rgb: np.ndarray, tolerance: int = 30, return_report: bool = False
) -> np.ndarray | tuple[np.ndarray, DecodeReport]:
    """Decode an ISPRS colour label into class indices.

    Each pixel takes the class of the nearest palette colour (the 6 classes plus black, the eroded
    boundary, which becomes :data:`IGNORE_INDEX`) when its largest per-channel difference is at
    most ``tolerance``; farther pixels become :data:`IGNORE_INDEX` and are counted.

    Args:
        rgb: ``H×W×3`` or ``3×H×W`` uint8 array.
        tolerance: Largest per-channel difference accepted for a match (Potsdam's tile 6_7 codes
            cars as (252, 255, 0); tile 4_12 was lossily re-encoded).
        return_report: Also return a :class:`DecodeReport`.

    Returns:
        ``H×W`` uint8 index map (0–5, 255 = ignore), and the report when asked for.

    Raises:
        ValueError: If ``rgb`` does not have three channels.

    Example:
        >>> import numpy as np
        >>> decode_isprs_rgb(np.array([[[0, 0, 255], [0, 0, 0]]], dtype=np.uint8)).tolist()
        [[1, 255]]
    """
    arr = np.asarray(rgb)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(
            f"an ISPRS colour label needs 3 channels, got shape {tuple(np.shape(rgb))}"
        )
    palette = np.vstack([ISPRS_CLASSES.palette(), np.asarray([ISPRS_BOUNDARY_COLOR], np.uint8)])
    values = np.asarray([*range(ISPRS_CLASSES.num_classes), IGNORE_INDEX], dtype=np.uint8)
    flat = arr.reshape(-1, 3).astype(np.int16)
    # Look up unique colours only: label images hold few distinct colours.
    colours, inverse = np.unique(flat, axis=0, return_inverse=True)
    dist = np.abs(colours[:, None, :] - palette[None, :, :].astype(np.int16)).max(axis=-1)
    nearest = dist.argmin(axis=1)
    best = dist[np.arange(len(colours)), nearest]
    lut = np.where(best <= tolerance, values[nearest], IGNORE_INDEX).astype(np.uint8)
    out = lut[inverse.reshape(-1)].reshape(arr.shape[:2])
    if not return_report:
        return out
    counts = np.bincount(inverse.reshape(-1), minlength=len(colours))
    report = DecodeReport(
        near=int(counts[(best > 0) & (best <= tolerance)].sum()),
        unmatched=int(counts[best > tolerance].sum()),
    )
    return out, report


def encode_isprs_rgb(index: np.ndarray) -> np.ndarray:
    """Paint an ISPRS index map (0–5, 255 = boundary) in the official colours, ``H×W×3`` uint8."""
    return ISPRS_CLASSES.colorize(
        np.asarray(index, dtype=np.uint8), ignore_color=ISPRS_BOUNDARY_COLOR
    )


def decode_whu_labels(values: np.ndarray, keep_background: bool = False) -> np.ndarray:
    """Turn WHU-OPT-SAR label values (0, 10, …, 70) into class indices.

    Args:
        values: Label raster as distributed.
        keep_background: Keep background (0) as class 0 and the others as 1–7; by default the
            background is :data:`IGNORE_INDEX` and the seven classes are 0–6.

    Returns:
        ``H×W`` uint8 index map. Values that are not a multiple of 10 in 0–70 become ignore.
    """
    v = np.asarray(values).astype(np.int64)
    idx = v // 10
    valid = (v % 10 == 0) & (idx >= 0) & (idx <= 7)
    if keep_background:
        out = np.where(valid, idx, IGNORE_INDEX)
    else:
        out = np.where(valid & (idx > 0), idx - 1, IGNORE_INDEX)
    return out.astype(np.uint8)


def encode_whu_labels(index: np.ndarray) -> np.ndarray:
    """Inverse of :func:`decode_whu_labels` (7-class form): 0–6 → 10–70, ignore → 0."""
    idx = np.asarray(index).astype(np.int64)
    return np.where(idx < 7, (idx + 1) * 10, 0).astype(np.uint8)
