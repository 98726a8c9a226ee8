"""Check a dataset folder against its official layout before training on it.

A folder is *complete* when every tile found has every modality the dataset needs (optical, DSM or
SAR, and a label variant), every file opens, and each tile's modalities agree (size — a DSM off by
one pixel is tolerated, it is cropped/padded on reading — band count and dtype). Official tiles
that are absent, optional products (Potsdam's nDSM, other optical variants) and unknown files are
warnings only. Tile sizes other than the official ones are fine.

Example:
    >>> from rsprompt.data.check import check_folder  # doctest: +SKIP
    >>> report = check_folder("vaihingen", "data/vaihingen")  # doctest: +SKIP
    >>> print(report.format()); report.ok  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rasterio.errors import RasterioError
from tqdm import tqdm

from rsprompt.data import splits
from rsprompt.data.datasets._raster import RasterInfo, raster_info
from rsprompt.data.datasets.layouts import expected_paths, find_tiles, layout, unknown_files

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
        ValueError: For an unknown dataset.
        FileNotFoundError: If ``root`` is not a folder.
    """
    spec = layout(dataset)
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
