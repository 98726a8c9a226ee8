"""Check a dataset folder against its official layout (or custom data) before training on it.

A folder is *complete* when every tile found has every modality the dataset needs (optical, DSM or
SAR, and a label variant), every file opens **and decodes** (every block is read, streamed by row
strips, so a damaged block in the middle of a file is found), each tile's modalities agree (size —
a DSM off by one pixel is tolerated, it is cropped/padded on reading — band count, dtype and, when
both are georeferenced, the area they cover), the DSM/SAR has valid pixels (the validity rule of
:mod:`rsprompt.data.validity`) and the labels hold at least one class. Official tiles that are
absent, optional products (Potsdam's nDSM, other optical variants), unknown files, a DSM/SAR that
covers only part of its tile and label pixels of no class colour are warnings only. Tile sizes
other than the official ones are fine.

Custom data (:func:`check_custom`, ``rsprompt data check custom``): per image the size, bands,
dtype, CRS and the share the aux raster covers; the labelled area and the pixels per class.

Example:
    >>> from rsprompt.data.check import check_folder  # doctest: +SKIP
    >>> report = check_folder("vaihingen", "data/vaihingen")  # doctest: +SKIP
    >>> print(report.format()); report.ok  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyproj
import rasterio
import rasterio.warp
from rasterio.errors import RasterioError
from rasterio.transform import Affine, array_bounds
from rasterio.windows import Window
from tqdm import tqdm

from rsprompt.data import splits
from rsprompt.data.datasets._raster import (
    RasterInfo,
    corrupt_error,
    has_internal_mask,
    open_quiet,
    raster_info,
)
from rsprompt.data.datasets.layouts import expected_paths, find_tiles, layout, unknown_files
from rsprompt.data.labels import IGNORE_INDEX, decode_isprs_rgb, decode_whu_labels
from rsprompt.data.validity import valid_pixels

#: Expected band count and dtypes of each role (``None``: any).
EXPECTED: dict[str, dict[str, tuple[int | None, tuple[str, ...] | None]]] = {
    "vaihingen": {
        "image": (3, ("uint8",)),
        "aux": (1, ("float32", "float64")),
        "label:full": (3, ("uint8",)),
        "label:eroded": (3, ("uint8",)),
    },
    "potsdam": {
        "image:RGB": (3, ("uint8",)),
        "image:IRRG": (3, ("uint8",)),
        "image:RGBIR": (4, ("uint8",)),
        "aux": (1, ("float32", "float64")),
        "ndsm": (None, None),
        "label:full": (3, ("uint8",)),
        "label:eroded": (3, ("uint8",)),
    },
    "whu-opt-sar": {
        "image": (4, ("uint8", "uint16")),
        "aux": (1, ("uint8", "uint16", "float32")),
        "label:full": (1, ("uint8",)),
    },
}
#: Roles whose size must equal the optical image exactly (the aux may be off by one pixel).
AUX_SIZE_TOLERANCE = 1
#: Largest offset (optical pixels) between a georeferenced label's footprint and its image's.
LABEL_OFFSET_TOLERANCE = 0.5
#: Largest per-channel colour difference the ISPRS label decoder accepts (the datasets' default).
LABEL_TOLERANCE = 30
#: Rows read at once while decoding a file (rounded up to whole blocks).
STRIP_ROWS = 256


@dataclass
class TileCheck:
    """Findings for one tile.

    Attributes:
        name: Tile id.
        split: ``train``, ``val``, ``test`` or ``None`` (not in the official lists).
        files: role → header (``None`` when the file could not be read).
        paths: role → path.
        errors: Problems that make the folder incomplete.
        warnings: Everything else worth knowing.
    """

    name: str
    split: str | None
    files: dict[str, RasterInfo | None] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class FolderCheck:
    """The result of :func:`check_folder`.

    Attributes:
        dataset: Dataset name.
        root: Folder checked.
        variant: Split variant used to group tiles.
        tiles: Per-tile findings.
        errors: Folder-level errors (no tile found).
        warnings: Folder-level warnings (absent official tiles, unknown files).
    """

    dataset: str
    root: Path
    variant: str
    tiles: list[TileCheck] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def all_errors(self) -> list[str]:
        """Folder and tile errors."""
        return [*self.errors, *(e for t in self.tiles for e in t.errors)]

    @property
    def all_warnings(self) -> list[str]:
        """Folder and tile warnings."""
        return [*self.warnings, *(w for t in self.tiles for w in t.warnings)]

    @property
    def ok(self) -> bool:
        """True when the folder is complete (warnings allowed)."""
        return not self.all_errors

    def format(self) -> str:
        """A human-readable report: per split, the tiles with their modalities, sizes and CRS."""
        lines = [f"{self.dataset} at {self.root} (split variant: {self.variant})"]
        groups: dict[str, list[TileCheck]] = {}
        for t in self.tiles:
            groups.setdefault(t.split or "not in any split", []).append(t)
        official = splits.SPLITS[self.dataset].get(self.variant, {})
        for split in ("train", "val", "test", "not in any split"):
            tiles = groups.get(split, [])
            if not tiles and split not in official:
                continue
            ids = set(official.get(split, ()))
            note = ""
            if split == "train" and "val" in official:
                # The validation tiles are held out of the official training tiles.
                held = ids & set(official["val"])
                ids -= held
                note = f" (+{len(held)} held out for validation)" if held else ""
            total = len(ids) if split in official else None
            count = f"{len(tiles)} of {total} official tiles" if total else f"{len(tiles)} tiles"
            count += note
            lines.append(f"{split}: {count}")
            for t in tiles:
                lines.append(f"  {t.name}")
                for role in sorted(t.paths, key=_role_order):
                    lines.append(
                        f"    {role:<13} {_describe(t.files.get(role), t.paths[role], self.root)}"
                    )
        if self.all_warnings:
            lines.append(f"warnings ({len(self.all_warnings)}):")
            lines.extend(f"  - {w}" for w in self.all_warnings)
        if self.all_errors:
            lines.append(f"errors ({len(self.all_errors)}):")
            lines.extend(f"  - {e}" for e in self.all_errors)
            lines.append(f"INCOMPLETE: {len(self.all_errors)} error(s)")
        else:
            lines.append(f"complete: {len(self.tiles)} tile(s) with every required modality")
        return "\n".join(lines)


def _role_order(role: str) -> tuple[int, str]:
    order = ("image", "aux", "ndsm", "label")
    return (next(i for i, p in enumerate((*order, "")) if role.startswith(p)), role)


def _describe(info: RasterInfo | None, path: Path, root: Path) -> str:
    rel = path.relative_to(root) if path.is_relative_to(root) else path
    if info is None:
        return f"{rel}: UNREADABLE"
    if info.crs is not None:
        epsg = info.crs.to_epsg()
        crs = f"EPSG:{epsg}" if epsg else info.crs.name
    elif info.transform is not None:
        crs = "no CRS (world file)"
    else:
        crs = "no CRS"
    return f"{rel}  {info.count}×{info.height}×{info.width} {info.dtype}  {crs}"


def check_variant(dataset: str, variant: str) -> None:
    """Raise ``ValueError`` listing the split variants of ``dataset`` unless ``variant`` is one."""
    known = list(splits.SPLITS[dataset])
    if variant not in known:
        raise ValueError(
            f"unknown split variant {variant!r} for {dataset}; expected one of: {', '.join(known)}"
        )


def _split_of(dataset: str, tile: str, variant: str) -> str | None:
    try:
        return splits.split_of(dataset, tile, variant)
    except ValueError:
        return None


def check_folder(
    dataset: str, root: str | Path, *, variant: str = "official", progress: bool = True
) -> FolderCheck:
    """Check ``root`` against the official layout of ``dataset``.

    Args:
        dataset: ``vaihingen``, ``potsdam`` or ``whu-opt-sar``.
        root: Dataset folder.
        variant: Split variant used to group tiles and list absent ones.
        progress: Show a progress bar (on a terminal) while opening files.

    Returns:
        A :class:`FolderCheck`; ``ok`` is False when a tile lacks a required modality, a file is
        unreadable or a tile's modalities disagree.

    Raises:
        ValueError: For an unknown dataset or split variant.
        FileNotFoundError: If ``root`` is not a folder.
    """
    spec = layout(dataset)
    check_variant(dataset, variant)
    root = Path(root)
    found = find_tiles(dataset, root)
    report = FolderCheck(dataset, root, variant)
    if not found:
        report.errors.append(
            f"no {dataset} tile found under {root} (expected e.g. "
            + ", ".join(f"{folder}/" for _, folder in spec.discover[:2])
            + ")"
        )
        return report
    expected = EXPECTED[dataset]
    for name in tqdm(found, desc=f"checking {dataset}", disable=None if progress else True):
        roles = found[name]
        tc = TileCheck(name, _split_of(dataset, name, variant), paths=dict(roles))
        for role, path in roles.items():
            try:
                tc.files[role] = raster_info(path)
            except (RasterioError, OSError) as exc:
                tc.files[role] = None
                tc.errors.append(f"{path}: unreadable ({exc})")
        for alternatives in spec.required:
            if not any(r in roles for r in alternatives):
                paths = [p for r in alternatives for p in expected_paths(dataset, name)[r]]
                tc.errors.append(
                    f"tile {name}: no {' or '.join(alternatives)} file (expected {root / paths[0]}"
                    + (f" or {len(paths) - 1} other place(s))" if len(paths) > 1 else ")")
                )
        for role in spec.optional:
            if role not in roles:
                tc.warnings.append(f"tile {name}: optional {role} absent")
        _check_consistency(tc, expected)
        _check_footprints(tc)
        for role in roles:
            _scan_file(tc, role, dataset)
        report.tiles.append(tc)
    official = splits.SPLITS[dataset].get(variant, {})
    for split, ids in official.items():
        absent = [str(t) for t in ids if str(t) not in found]
        if absent:
            report.warnings.append(
                f"{split}: {len(absent)} official tile(s) absent: {' '.join(absent)}"
            )
    for path in unknown_files(dataset, root, found):
        report.warnings.append(f"unknown file (not part of any tile): {path}")
    return report


def _check_consistency(
    tc: TileCheck, expected: dict[str, tuple[int | None, tuple[str, ...] | None]]
) -> None:
    infos = {r: i for r, i in tc.files.items() if i is not None}
    for role, info in infos.items():
        count, dtypes = expected.get(role, (None, None))
        if count is not None and info.count != count:
            tc.errors.append(f"{info.path}: {info.count} band(s), {role} needs {count}")
        if dtypes is not None and info.dtype not in dtypes:
            tc.errors.append(f"{info.path}: dtype {info.dtype}, {role} needs {' or '.join(dtypes)}")
    images = [i for r, i in infos.items() if r.startswith("image")]
    if not images:
        return
    ref = images[0]
    for role, info in infos.items():
        if role == "ndsm" or info is ref:
            continue
        dh, dw = abs(info.height - ref.height), abs(info.width - ref.width)
        if dh == 0 and dw == 0:
            continue
        if role == "aux" and max(dh, dw) <= AUX_SIZE_TOLERANCE:
            tc.warnings.append(
                f"{info.path}: {info.width}×{info.height} px vs optical {ref.width}×{ref.height}: "
                "off by one pixel, cropped/padded on reading"
            )
            continue
        if role == "aux" and info.georeferenced and ref.georeferenced:
            continue  # a georeferenced aux on its own grid is warped onto the optical grid
        tc.errors.append(
            f"{info.path}: {info.width}×{info.height} px but the optical image {ref.path} is "
            f"{ref.width}×{ref.height} px"
        )


# ------------------------------------------------------------------------ georeferencing
Box = tuple[float, float, float, float]


def _bounds_in(info: RasterInfo, crs: pyproj.CRS | None) -> Box:
    """``(xmin, ymin, xmax, ymax)`` of a georeferenced raster, in ``crs``."""
    assert info.transform is not None and info.crs is not None
    west, south, east, north = array_bounds(info.height, info.width, info.transform)
    box = (min(west, east), min(south, north), max(west, east), max(south, north))
    if info.crs != crs:
        box = rasterio.warp.transform_bounds(info.crs, crs, *box, densify_pts=21)
    return box


def _check_footprints(tc: TileCheck) -> None:
    """Labels must cover their image's pixels; a DSM/SAR should cover the whole image.

    Only georeferenced pairs are compared (the datasets read each georeferenced file on its own
    grid; a file without georeferencing takes its image's grid).
    """
    infos = {r: i for r, i in tc.files.items() if i is not None}
    images = [i for r, i in infos.items() if r.startswith("image")]
    if not images or not images[0].georeferenced:
        return
    ref = images[0]
    assert ref.transform is not None
    res = (abs(ref.transform.a), abs(ref.transform.e))
    img = _bounds_in(ref, ref.crs)
    for role, info in infos.items():
        if not (role == "aux" or role.startswith("label")) or not info.georeferenced:
            continue
        try:
            box = _bounds_in(info, ref.crs)
        except Exception as exc:  # pyproj and GDAL raise several unrelated types
            tc.errors.append(f"{info.path}: its footprint cannot be put in the image's CRS ({exc})")
            continue
        if role.startswith("label"):
            _check_label_footprint(tc, info, ref, img, box, res)
        else:
            _check_aux_footprint(tc, info, ref, img, box, res)


def _check_label_footprint(
    tc: TileCheck,
    info: RasterInfo,
    ref: RasterInfo,
    img: Box,
    box: Box,
    res: tuple[float, float],
) -> None:
    off = max(
        abs(box[0] - img[0]) / res[0],
        abs(box[2] - img[2]) / res[0],
        abs(box[1] - img[1]) / res[1],
        abs(box[3] - img[3]) / res[1],
    )
    if off > LABEL_OFFSET_TOLERANCE:
        dx, dy = (box[0] - img[0]) / res[0], (box[3] - img[3]) / res[1]
        tc.errors.append(
            f"{info.path}: georeferenced {off:.0f} px off the optical image {ref.path} (its "
            f"upper-left corner is {dx:+.1f} px east, {dy:+.1f} px north of the image's): the "
            "labels would not match the pixels"
        )


def _check_aux_footprint(
    tc: TileCheck,
    info: RasterInfo,
    ref: RasterInfo,
    img: Box,
    box: Box,
    res: tuple[float, float],
) -> None:
    w = max(0.0, min(img[2], box[2]) - max(img[0], box[0]))
    h = max(0.0, min(img[3], box[3]) - max(img[1], box[1]))
    if w == 0 or h == 0:
        tc.errors.append(
            f"{info.path}: georeferenced outside the optical image {ref.path}: it covers no "
            "pixel of the tile"
        )
        return
    short = max(
        (box[0] - img[0]) / res[0],
        (img[2] - box[2]) / res[0],
        (box[1] - img[1]) / res[1],
        (img[3] - box[3]) / res[1],
    )
    if short > AUX_SIZE_TOLERANCE:
        share = w * h / ((img[2] - img[0]) * (img[3] - img[1]))
        tc.warnings.append(
            f"{info.path}: covers {share:.0%} of the optical image {ref.path} (up to "
            f"{short:.0f} px short of an edge); the rest has no aux data (aux_valid 0)"
        )


# ------------------------------------------------------------------------ decoding
def _strips(src: rasterio.io.DatasetReader) -> Iterator[Window]:
    """Full-width row strips of whole blocks covering ``src`` (every block read exactly once)."""
    block_rows = max(1, src.block_shapes[0][0])
    rows = -(-STRIP_ROWS // block_rows) * block_rows
    for r0 in range(0, src.height, rows):
        yield Window(0, r0, src.width, min(rows, src.height - r0))


class _Tally:
    """What one streamed file holds: valid aux pixels, or label values/colours and counts."""

    def __init__(self) -> None:
        self.pixels = 0
        self.valid = 0
        self.values: Counter[int] = Counter()

    def add_aux(self, src: rasterio.io.DatasetReader, data: np.ndarray, window: Window) -> None:
        mask = src.read_masks(1, window=window) if has_internal_mask(src) else None
        self.pixels += data.shape[1] * data.shape[2]
        self.valid += int(valid_pixels(data, src.nodata, mask=mask, every_band=True).sum())

    def add_label(self, data: np.ndarray) -> None:
        if data.shape[0] >= 3:  # colours packed as 0xRRGGBB
            d = data[:3].astype(np.uint32)
            codes = (d[0] << 16) | (d[1] << 8) | d[2]
        else:
            codes = data[0].astype(np.int64)
        uniq, counts = np.unique(codes, return_counts=True)
        self.values.update(dict(zip(uniq.tolist(), counts.tolist(), strict=True)))


def _scan_file(tc: TileCheck, role: str, dataset: str) -> None:
    """Decode every block of one file; report corrupt blocks, an empty aux, classless labels."""
    info = tc.files.get(role)
    if info is None:  # unreadable header: already an error
        return
    path = tc.paths[role]
    tally = _Tally()
    try:
        with open_quiet(path) as src:
            for window in _strips(src):
                data = src.read(window=window)
                if role == "aux":
                    tally.add_aux(src, data, window)
                elif role.startswith("label"):
                    tally.add_label(data)
            nodata = src.nodata
    except (RasterioError, OSError) as exc:
        tc.errors.append(str(corrupt_error(path, exc)))
        return
    if role == "aux" and tally.valid == 0:
        kind = "SAR" if dataset == "whu-opt-sar" else "DSM"
        tc.errors.append(
            f"{path}: no valid {kind} pixel (every pixel is NaN, infinite, masked or the nodata "
            f"value {nodata})"
        )
    elif role.startswith("label"):
        _check_label_values(tc, path, tally.values, dataset, rgb=info.count >= 3)


def _check_label_values(
    tc: TileCheck, path: Path, values: Counter[int], dataset: str, *, rgb: bool
) -> None:
    """Error when no label pixel holds a class; warning for pixels of no class colour/value."""
    keys = np.fromiter(values, np.int64, len(values))
    counts = np.fromiter(values.values(), np.int64, len(values))
    if dataset == "whu-opt-sar":
        classes = decode_whu_labels(keys, keep_background=True) != IGNORE_INDEX
        unknown = ~classes
        what = "a WHU-OPT-SAR label value (0, 10, …, 70)"
    elif rgb:
        colours = np.stack([(keys >> 16) & 255, (keys >> 8) & 255, keys & 255], -1)
        colours = colours.astype(np.uint8)[:, None, :]
        lut = np.asarray(decode_isprs_rgb(colours, tolerance=LABEL_TOLERANCE))[:, 0]
        classes = lut != IGNORE_INDEX
        unknown = ~classes & (colours[:, 0].max(axis=-1) > LABEL_TOLERANCE)  # black: boundary
        what = "an ISPRS class colour"
    else:
        classes = (keys >= 0) & (keys < 6)
        unknown = ~classes & (keys != IGNORE_INDEX)
        what = "an ISPRS class index (0–5)"
    if not counts[classes].sum():
        seen = ", ".join(_show(int(k), rgb and dataset != "whu-opt-sar") for k in keys[:5])
        tc.errors.append(
            f"{path}: no pixel holds {what} (found {seen}"
            + (" …" if len(keys) > 5 else "")
            + "): the tile has nothing to learn from"
        )
    elif counts[unknown].sum():
        n = int(counts[unknown].sum())
        tc.warnings.append(
            f"{path}: {n} pixel(s) ({n / counts.sum():.1%}) hold no class ({what}); they are "
            "ignored in training"
        )


def _show(key: int, rgb: bool) -> str:
    return f"({key >> 16}, {(key >> 8) & 255}, {key & 255})" if rgb else str(key)


# ------------------------------------------------------------------------------------ custom
@dataclass
class ImageCheck:
    """Findings for one image of custom data (``rsprompt data check custom``).

    Attributes:
        path: The image.
        info: Size, bands, dtype, CRS (``None`` when unreadable).
        pixel_m: Pixel side in metres.
        aux: Its aux raster, if any.
        aux_coverage: Share of its pixels with a valid aux value (``None`` without aux).
        labelled: Labelled pixels (any class).
        counts: Pixels per class index.
    """

    path: Path
    info: RasterInfo | None = None
    pixel_m: float | None = None
    aux: Path | None = None
    aux_coverage: float | None = None
    labelled: int = 0
    counts: np.ndarray | None = None


@dataclass
class CustomCheck:
    """The result of :func:`check_custom`.

    Attributes:
        images: Per-image findings.
        classes: Class names (index order).
        labels: The labels (file or pattern) and, for vector labels, the field.
        errors: Problems that stop training.
        warnings: Everything else worth knowing.
    """

    images: list[ImageCheck] = field(default_factory=list)
    classes: tuple[str, ...] = ()
    labels: str = ""
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing stops training (warnings allowed)."""
        return not self.errors

    def format(self) -> str:
        """A human-readable report: per image, then the labelled area and pixels per class."""
        lines = [f"custom data: {len(self.images)} image(s); labels {self.labels}"]
        for im in self.images:
            lines.append(f"  {im.path}")
            if im.info is None:
                lines.append("    UNREADABLE")
                continue
            i = im.info
            crs = _crs_text(i.crs)
            px = f", pixel {im.pixel_m:.3g} m" if im.pixel_m else ""
            lines.append(f"    {i.width}×{i.height} px, {i.count} band(s) {i.dtype}, {crs}{px}")
            if im.aux is not None:
                cov = "?" if im.aux_coverage is None else f"{100 * im.aux_coverage:.1f}%"
                lines.append(f"    aux {im.aux}: covers {cov} of the image")
            total = i.width * i.height
            area = f", {im.labelled * (im.pixel_m or 0) ** 2:,.0f} m²" if im.pixel_m else ""
            lines.append(
                f"    labelled: {im.labelled:,} px ({100 * im.labelled / max(total, 1):.1f}%{area})"
            )
        counts = [im.counts for im in self.images if im.counts is not None]
        if counts and self.classes:
            total = np.sum(counts, axis=0)
            area = sum(im.labelled * (im.pixel_m or 0) ** 2 for im in self.images)
            lines.append(
                f"labelled area: {int(total.sum()):,} px, {area:,.0f} m² in "
                f"{sum(1 for im in self.images if im.labelled)} image(s)"
            )
            lines.append("pixels per class:")
            width = max(len(n) for n in self.classes)
            for name, n in zip(self.classes, total.tolist(), strict=True):
                lines.append(f"  {name:<{width}}  {int(n):>12,}")
        if self.warnings:
            lines.append(f"warnings ({len(self.warnings)}):")
            lines.extend(f"  - {w}" for w in self.warnings)
        if self.errors:
            lines.append(f"errors ({len(self.errors)}):")
            lines.extend(f"  - {e}" for e in self.errors)
            lines.append(f"NOT READY: {len(self.errors)} error(s)")
        else:
            lines.append("ready to train")
        return "\n".join(lines)


def _crs_text(crs: pyproj.CRS | None) -> str:
    if crs is None:
        return "no CRS"
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.name


def check_custom(
    images: str | list[str],
    labels: str,
    *,
    root: str | Path = ".",
    aux: str | None = None,
    label_field: str | None = None,
    label_layer: str | None = None,
    classes: str | list[str] | None = None,
    background: str | None = None,
    ignore_index: int | None = None,
) -> CustomCheck:
    """Check custom data as :class:`~rsprompt.data.datamodules.RasterDataModule` would read it.

    Per image: size, bands, dtype, CRS, pixel size and the share of it the aux raster covers;
    the labelled pixels; pixels per class over all images (labels rasterised or read on each
    image's grid by row strips).

    Raises:
        rsprompt.data.datasets.custom_labels.CustomDataError: When the images or labels cannot be
            read at all (no image, unreadable labels, missing field, unknown class names).
    """
    from rsprompt.data.datasets.custom import ImageInfo, image_info
    from rsprompt.data.datasets.custom_labels import (
        CustomDataError,
        RasterLabels,
        VectorLabels,
        fill_pattern,
        has_placeholder,
        is_vector,
        resolve_images,
    )

    root = Path(root)
    report = CustomCheck()
    paths = resolve_images(images, root)
    infos: list[ImageInfo | None] = []
    for p in paths:
        im = ImageCheck(p)
        report.images.append(im)
        try:
            info = image_info(p)
        except CustomDataError as exc:
            report.errors.append(str(exc))
            infos.append(None)
            try:
                im.info = raster_info(p)
            except (RasterioError, OSError):
                pass
            continue
        infos.append(info)
        im.info = raster_info(p)
        im.pixel_m = info.pixel_m
    if is_vector(labels) and not has_placeholder(labels):
        lpath = Path(labels) if Path(labels).is_absolute() else root / labels
        src: Any = VectorLabels(
            lpath, label_field, layer=label_layer, classes=classes, background=background
        )
        report.labels = f"{lpath} (field {label_field!r}, {src.table.num_classes} classes)"
    else:
        src = RasterLabels(labels, paths, root, ignore_index=ignore_index, classes=classes)
        report.labels = f"{labels} (label rasters, {src.table.num_classes} classes)"
    report.classes = src.table.names
    for k, (im, info) in enumerate(zip(report.images, infos, strict=True)):
        if info is None:
            continue
        if aux is not None:
            im.aux = fill_pattern(aux, im.path, root)
            _check_aux(im, info, report)
        _count_labels(im, info, src, k, report)
    if not any(im.labelled for im in report.images):
        report.errors.append(f"labels {report.labels.split(' (')[0]} do not overlap any image")
    return report


def _check_aux(im: ImageCheck, info: Any, report: CustomCheck) -> None:
    """Share of the image covered by valid aux pixels, on a grid of at most 256×256 cells."""
    from rsprompt.data.datasets._raster import Grid, read_on_grid

    assert im.aux is not None
    if not im.aux.is_file():
        report.errors.append(f"aux raster {im.aux} (for image {im.path}): file not found")
        return
    try:
        ainfo = raster_info(im.aux)
    except (RasterioError, OSError) as exc:
        report.errors.append(f"aux raster {im.aux}: not a readable raster ({exc})")
        return
    if not ainfo.georeferenced:
        report.errors.append(f"aux raster {im.aux} is not georeferenced")
        return
    g = info.grid
    f = max(1, math.ceil(max(g.width, g.height) / 256))
    coarse = Grid(g.crs, g.transform @ Affine.scale(f), -(-g.width // f), -(-g.height // f))
    agrid = Grid(ainfo.crs, ainfo.transform, ainfo.width, ainfo.height)
    with open_quiet(im.aux) as src:
        _, covered = read_on_grid(src, agrid, coarse, [1], valid_only=True, fill=np.nan)
    im.aux_coverage = float(covered.mean())
    if im.aux_coverage == 0:
        report.errors.append(f"aux raster {im.aux} has no valid pixel over image {im.path}")
    elif im.aux_coverage < 0.99:
        report.warnings.append(
            f"aux raster {im.aux} covers {100 * im.aux_coverage:.1f}% of image {im.path} (the "
            "rest is read as missing aux)"
        )


def _count_labels(im: ImageCheck, info: Any, src: Any, k: int, report: CustomCheck) -> None:
    """Pixels per class of image ``k`` (its labels on its own grid, by row strips)."""
    from rsprompt.data.datasets._raster import Grid
    from rsprompt.data.datasets.custom_labels import VectorLabels

    g = info.grid
    n = src.table.num_classes
    counts = np.zeros(n, np.int64)
    handle = None if isinstance(src, VectorLabels) else open_quiet(src.paths[k])
    try:
        for r in range(0, g.height, STRIP_ROWS * 4):
            h = min(STRIP_ROWS * 4, g.height - r)
            strip = Grid(g.crs, g.transform @ Affine.translation(0, r), g.width, h)
            if isinstance(src, VectorLabels):
                mask = src.rasterize(strip)
            else:
                mask = src.read(k, g, strip, handle)
            counts += np.bincount(mask.ravel(), minlength=256)[:n]
    finally:
        if handle is not None:
            handle.close()
    im.counts = counts
    im.labelled = int(counts.sum())
    if not im.labelled:
        report.warnings.append(f"image {im.path}: no labelled pixel (left out of training)")
