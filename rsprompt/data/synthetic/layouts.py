"""Synthetic scenes laid out exactly like the official dataset distributions.

:func:`write_layout` writes tiles with the real folder and file names of ISPRS Vaihingen, ISPRS
Potsdam and WHU-OPT-SAR, so that fixtures and the demo exercise the same code paths as real data.
Tile identifiers and splits come from :mod:`rsprompt.data.splits`.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
from rasterio.crs import CRS

from rsprompt.data.labels import IGNORE_INDEX, encode_isprs_rgb, encode_whu_labels
from rsprompt.data.splits import TileId, normalize_tile, split_of
from rsprompt.data.synthetic.io import (
    check_writable,
    optical_descriptions,
    write_jpeg,
    write_tiff,
    write_world_file,
)
from rsprompt.data.synthetic.noise import boundary_mask
from rsprompt.data.synthetic.scene import generate_scene, ndsm_to_uint8, sar_to_uint8

LAYOUTS: tuple[str, ...] = ("vaihingen", "potsdam", "whu-opt-sar")
#: Scene kind of each layout.
LAYOUT_KIND = {"vaihingen": "isprs", "potsdam": "isprs", "whu-opt-sar": "whu-opt-sar"}

#: Default tiles: two training tiles and one test tile of the official split.
DEFAULT_TILES: dict[str, tuple[TileId, ...]] = {
    "vaihingen": (1, 3, 2),
    "potsdam": ("2_10", "2_11", "2_13"),
    "whu-opt-sar": ("NH49E004021", "NH49E005014", "NH49E001014"),
}
#: One validation tile per layout, in the ``val`` split of every split variant: Vaihingen 32
#: (official), Potsdam 7_11 (official and mobanet), WHU-OPT-SAR NH49E007024 (held out of the
#: training scenes). :func:`trainable_tiles` adds it to :data:`DEFAULT_TILES`.
VAL_TILES: dict[str, TileId] = {"vaihingen": 32, "potsdam": "7_11", "whu-opt-sar": "NH49E007024"}

VAIHINGEN_COMPLETE = "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE"
VAIHINGEN_ERODED_COMPLETE = "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE"
#: Officially misspelled ("labeing") folder of the training-only eroded labels.
VAIHINGEN_ERODED_PARTICIPANTS = (
    "ISPRS_semantic_labeing_Vaihingen_ground_truth_eroded_for_participants"
)
VAIHINGEN_RESOLUTION = 0.09
#: Where synthetic Vaihingen areas are placed in their world files (UTM 32N, near Vaihingen/Enz).
VAIHINGEN_ORIGIN = (496000.0, 5420000.0)

POTSDAM_RESOLUTION = 0.05
POTSDAM_CRS = "EPSG:32633"
#: Upper-left corner of Potsdam tile 2_10; tile a_b lies at column a, row b of a regular grid.
POTSDAM_ORIGIN_2_10 = (366976.5, 5808562.6)
#: Potsdam tile 6_7 codes cars as (252, 255, 0) instead of (255, 255, 0).
POTSDAM_CAR_OFF_PALETTE = (252, 255, 0)

WHU_RESOLUTION = 5.0

_Plan = list[tuple[Path, Callable[[Path], object]]]


def tile_seed(seed: int, layout: str, tile: TileId) -> int:
    """Seed of one tile: stable across runs and Python versions, different for each tile."""
    return int(
        np.random.SeedSequence([int(seed), zlib.crc32(f"{layout}:{tile}".encode())]).generate_state(
            1
        )[0]
    )


def vaihingen_paths(root: Path, area: int, *, labels_flat: bool = False) -> dict[str, Path]:
    """Official paths of one Vaihingen area (image, DSM, label sets) under ``root``."""
    name = f"top_mosaic_09cm_area{area}"
    complete = root if labels_flat else root / VAIHINGEN_COMPLETE
    eroded = root if labels_flat else root / VAIHINGEN_ERODED_COMPLETE
    return {
        "image": root / "top" / f"{name}.tif",
        "dsm": root / "dsm" / f"dsm_09cm_matching_area{area}.tif",
        "dsm_world": root / "dsm" / f"dsm_09cm_matching_area{area}.tfw",
        "label": complete / f"{name}.tif",
        "label_eroded": eroded / f"{name}_noBoundary.tif",
        "label_participants": root / "gts_for_participants" / f"{name}.tif",
        "label_eroded_participants": root
        / VAIHINGEN_ERODED_PARTICIPANTS
        / f"{name}_noBoundary.tif",
    }


def potsdam_paths(root: Path, tile: str, *, labels_flat: bool = False) -> dict[str, Path]:
    """Official paths of one Potsdam tile ``"a_b"`` under ``root``."""
    a, b = (int(v) for v in tile.split("_"))
    top = f"top_potsdam_{a}_{b}"
    lab = root if labels_flat else root / "5_Labels_all"
    lab_nb = root if labels_flat else root / "5_Labels_all_noBoundary"
    return {
        "image_rgb": root / "2_Ortho_RGB" / f"{top}_RGB.tif",
        "image_irrg": root / "3_Ortho_IRRG" / f"{top}_IRRG.tif",
        "image_rgbir": root / "4_Ortho_RGBIR" / f"{top}_RGBIR.tif",
        "dsm": root / "1_DSM" / f"dsm_potsdam_{a:02d}_{b:02d}.tif",
        "ndsm": root
        / "1_DSM_normalisation"
        / f"dsm_potsdam_{a:02d}_{b:02d}_normalized_lastools.jpg",
        "label": lab / f"{top}_label.tif",
        "label_eroded": lab_nb / f"{top}_label_noBoundary.tif",
        "label_participants": root / "5_Labels_for_participants" / f"{top}_label.tif",
        "label_eroded_participants": root
        / "5_Labels_for_participants_no_Boundary"
        / f"{top}_label_noBoundary.tif",
    }


def whu_paths(root: Path, name: str) -> dict[str, Path]:
    """Official paths of one WHU-OPT-SAR scene under ``root``."""
    return {
        "image": root / "optical" / f"{name}.tif",
        "sar": root / "sar" / f"{name}.tif",
        "label": root / "lbl" / f"{name}.tif",
    }


def whu_crs(name: str) -> CRS:
    """UTM zone of a WHU-OPT-SAR sheet name (``NH49…`` → EPSG:32649, ``NH50…`` → 32650)."""
    return CRS.from_epsg(32600 + int(name[2:4]))


def _size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def _eroded(labels: np.ndarray, radius: int) -> np.ndarray:
    out = labels.copy()
    out[boundary_mask(labels, radius)] = IGNORE_INDEX
    return out


def _tiff(path_key: str, paths: dict[str, Path], plan: _Plan, array: np.ndarray, **kw) -> None:
    plan.append((paths[path_key], lambda p, a=array, k=kw: write_tiff(p, a, **k)))


def _plan_vaihingen(
    root: Path,
    area: int,
    seed: int,
    size: tuple[int, int],
    *,
    size_jitter: int,
    dsm_world_files: bool,
    dsm_extra_px: int,
    labels_flat: bool,
    boundary_radius: int,
    eroded_for_participants: bool,
    scale: float,
) -> tuple[_Plan, dict[str, Path]]:
    rng = np.random.default_rng(tile_seed(seed, "vaihingen-size", area))
    h = size[0] + int(rng.integers(0, size_jitter + 1))
    w = size[1] + int(rng.integers(0, size_jitter + 1))
    col, row = (area - 1) % 6, (area - 1) // 6
    step = 2 * max(size) * VAIHINGEN_RESOLUTION + 100.0  # disjoint areas
    origin = (VAIHINGEN_ORIGIN[0] + col * step, VAIHINGEN_ORIGIN[1] - row * step)
    scene = generate_scene(
        "isprs",
        (h, w),
        tile_seed(seed, "vaihingen", area),
        bands="irrg",
        resolution=VAIHINGEN_RESOLUTION,
        crs="EPSG:32632",
        origin=origin,
        ground_level=265.0,
        scale=scale,
    )
    paths = vaihingen_paths(root, area, labels_flat=labels_flat)
    plan: _Plan = []
    train = split_of("vaihingen", area) in ("train", "val")
    # As distributed: no CRS and no transform in the TIFFs; optionally a world file for the DSM.
    _tiff(
        "image",
        paths,
        plan,
        scene.optical,
        photometric="RGB",
        descriptions=optical_descriptions("irrg"),
    )
    dsm = scene.dsm
    if dsm_extra_px:
        dsm = np.pad(dsm, ((0, dsm_extra_px), (0, dsm_extra_px)), mode="edge")
    _tiff("dsm", paths, plan, dsm)
    if dsm_world_files:
        plan.append((paths["dsm_world"], lambda p, t=scene.transform: write_world_file(p, t)))
    else:
        del paths["dsm_world"]
    rgb = np.moveaxis(encode_isprs_rgb(scene.labels), -1, 0)
    eroded = np.moveaxis(encode_isprs_rgb(_eroded(scene.labels, boundary_radius)), -1, 0)
    _tiff("label", paths, plan, rgb, photometric="RGB")
    _tiff("label_eroded", paths, plan, eroded, photometric="RGB")
    if train:
        _tiff("label_participants", paths, plan, rgb, photometric="RGB")
    else:
        del paths["label_participants"]
    if train and eroded_for_participants:
        _tiff("label_eroded_participants", paths, plan, eroded, photometric="RGB")
    else:
        del paths["label_eroded_participants"]
    return plan, paths


def _plan_potsdam(
    root: Path,
    tile: str,
    seed: int,
    size: tuple[int, int],
    *,
    labels_flat: bool,
    boundary_radius: int,
    off_palette: Mapping[str, Mapping[tuple[int, int, int], tuple[int, int, int]]] | None,
    participants: bool,
    scale: float,
) -> tuple[_Plan, dict[str, Path]]:
    a, b = (int(v) for v in tile.split("_"))
    h, w = size
    x0 = POTSDAM_ORIGIN_2_10[0] + (a - 2) * w * POTSDAM_RESOLUTION
    y0 = POTSDAM_ORIGIN_2_10[1] - (b - 10) * h * POTSDAM_RESOLUTION
    scene = generate_scene(
        "isprs",
        (h, w),
        tile_seed(seed, "potsdam", tile),
        bands="rgbir",
        resolution=POTSDAM_RESOLUTION,
        crs=POTSDAM_CRS,
        origin=(x0, y0),
        ground_level=35.0,
        scale=scale,
    )
    paths = potsdam_paths(root, tile, labels_flat=labels_flat)
    geo = {"crs": scene.crs, "transform": scene.transform}
    plan: _Plan = []
    for key, bands in (("image_rgb", "rgb"), ("image_irrg", "irrg"), ("image_rgbir", "rgbir")):
        _tiff(
            key,
            paths,
            plan,
            scene.optical_as(bands),
            **geo,
            photometric="RGB" if bands != "rgbir" else "MINISBLACK",
            descriptions=optical_descriptions(bands),
        )
    _tiff("dsm", paths, plan, scene.dsm, **geo)
    ndsm8 = ndsm_to_uint8(scene.height)
    plan.append((paths["ndsm"], lambda p, a=ndsm8: write_jpeg(p, a)))
    rgb = encode_isprs_rgb(scene.labels)
    eroded = encode_isprs_rgb(_eroded(scene.labels, boundary_radius))
    for old, new in ((off_palette or {}).get(tile, {}) or {}).items():
        for img in (rgb, eroded):
            img[np.all(img == np.asarray(old, np.uint8), axis=-1)] = new
    rgb, eroded = np.moveaxis(rgb, -1, 0), np.moveaxis(eroded, -1, 0)
    _tiff("label", paths, plan, rgb, photometric="RGB", **geo)
    _tiff("label_eroded", paths, plan, eroded, photometric="RGB", **geo)
    if participants and split_of("potsdam", tile) in ("train", "val"):
        _tiff("label_participants", paths, plan, rgb, photometric="RGB", **geo)
        _tiff("label_eroded_participants", paths, plan, eroded, photometric="RGB", **geo)
    else:
        del paths["label_participants"], paths["label_eroded_participants"]
    return plan, paths


def _plan_whu(
    root: Path,
    name: str,
    seed: int,
    size: tuple[int, int],
    *,
    georeferenced: bool,
    scale: float,
) -> tuple[_Plan, dict[str, Path]]:
    h, w = size
    row, col = int(name[5:8]), int(name[8:11])
    y_base = 3_800_000.0 if name.startswith("NI") else 3_400_000.0
    origin = (200_000.0 + col * w * WHU_RESOLUTION, y_base - row * h * WHU_RESOLUTION)
    scene = generate_scene(
        "whu-opt-sar",
        (h, w),
        tile_seed(seed, "whu-opt-sar", name),
        bands="rgbir",
        resolution=WHU_RESOLUTION,
        crs=whu_crs(name),
        origin=origin,
        scale=scale,
    )
    paths = whu_paths(root, name)
    geo = {"crs": scene.crs, "transform": scene.transform} if georeferenced else {}
    plan: _Plan = []
    _tiff(
        "image",
        paths,
        plan,
        scene.optical,
        photometric="MINISBLACK",
        descriptions=optical_descriptions("rgbir"),
        **geo,
    )
    _tiff("sar", paths, plan, sar_to_uint8(scene.sar), **geo)
    _tiff("label", paths, plan, encode_whu_labels(scene.labels), **geo)
    return plan, paths


def write_layout(
    out_dir: str | os.PathLike,
    layout: str,
    *,
    tiles: Iterable[TileId] | None = None,
    size: int | tuple[int, int] = 256,
    seed: int = 0,
    overwrite: bool = False,
    scale: float = 1.0,
    labels_flat: bool = False,
    boundary_radius: int = 3,
    size_jitter: int | None = None,
    dsm_world_files: bool = False,
    dsm_extra_px: int = 0,
    eroded_for_participants: bool = False,
    off_palette: Mapping[str, Mapping[tuple[int, int, int], tuple[int, int, int]]] | None = None,
    participants: bool = False,
    georeferenced: bool = True,
) -> dict[TileId, dict[str, Path]]:
    """Write synthetic tiles in the exact folder and file layout of an official distribution.

    Layouts (``out_dir`` plays the dataset's root folder):

    - ``vaihingen``: ``top/top_mosaic_09cm_area{N}.tif`` (IRRG uint8: NIR, R, G; no CRS, no
      transform), ``dsm/dsm_09cm_matching_area{N}.tif`` (float32 absolute heights ~260–300 m, no
      CRS; ``.tfw`` world file with ``dsm_world_files``), ISPRS colour labels:
      ``gts_for_participants/`` (training areas only),
      ``ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE/…area{N}.tif`` and
      ``ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE/…area{N}_noBoundary.tif``
      (black = eroded boundary), or both
      flat in the root with ``labels_flat`` (as the zips extract). 9 cm.
    - ``potsdam``: ``2_Ortho_RGB/top_potsdam_{a}_{b}_RGB.tif``, ``3_Ortho_IRRG/…_IRRG.tif``,
      ``4_Ortho_RGBIR/…_RGBIR.tif`` (R, G, B, IR; MINISBLACK), ``1_DSM/dsm_potsdam_{aa}_{bb}.tif``
      (float32), ``1_DSM_normalisation/dsm_potsdam_{aa}_{bb}_normalized_lastools.jpg`` (8-bit
      nDSM, 0.1 m per step), ``5_Labels_all/top_potsdam_{a}_{b}_label.tif`` and
      ``5_Labels_all_noBoundary/…_label_noBoundary.tif``. EPSG:32633, 5 cm, tile ``a_b`` at
      column ``a``, row ``b`` of a grid anchored at tile 2_10's corner (366976.5, 5808562.6).
    - ``whu-opt-sar``: ``optical/{name}.tif`` (R, G, B, NIR uint8, MINISBLACK), ``sar/{name}.tif``
      (uint8, dB scaled by :func:`~rsprompt.data.synthetic.sar_to_uint8`), ``lbl/{name}.tif``
      (uint8 0, 10, …, 70). 5 m, UTM 49N/50N from the sheet name, or no georeferencing.

    Args:
        out_dir: Dataset root folder (created when missing).
        layout: ``vaihingen``, ``potsdam`` or ``whu-opt-sar``.
        tiles: Tile ids (Vaihingen area numbers, Potsdam ``"a_b"``, WHU scene names); default
            two training tiles and one test tile (:data:`DEFAULT_TILES`); pass
            :func:`trainable_tiles` for a folder the shipped configs can train on.
        size: Tile size in pixels, ``N`` or ``(height, width)`` (real tiles: Vaihingen ~2000×2500,
            Potsdam 6000×6000, WHU 3704×5556).
        seed: Base seed; each tile's scene is seeded from ``(seed, tile)``.
        overwrite: Replace existing files; otherwise any existing output raises before anything
            is written.
        scale: Object size factor passed to :func:`~rsprompt.data.synthetic.generate_scene`.
        labels_flat: Vaihingen: write the two COMPLETE label sets flat into the root. Potsdam:
            write ``5_Labels_all`` and ``5_Labels_all_noBoundary`` flat into the root.
        boundary_radius: Radius (pixels) of the eroded class borders in the noBoundary labels.
        size_jitter: Vaihingen: each area is up to this many pixels taller and wider than
            ``size`` (real areas differ in size); default ``size // 10``. Ignored elsewhere.
        dsm_world_files: Vaihingen: write a ``.tfw`` world file beside each DSM (UTM 32N
            coordinates; areas disjoint).
        dsm_extra_px: Vaihingen: make the DSM this many pixels taller and wider than the image (a
            quirk of some real areas).
        eroded_for_participants: Vaihingen: also write the training-only eroded labels in the
            officially misspelled
            ``ISPRS_semantic_labeing_Vaihingen_ground_truth_eroded_for_participants`` folder.
        off_palette: Potsdam: per tile, colours to recode in its labels, e.g.
            ``{"6_7": {(255, 255, 0): (252, 255, 0)}}`` as in the real tile 6_7.
        participants: Potsdam: also write ``5_Labels_for_participants`` and
            ``5_Labels_for_participants_no_Boundary`` for the training tiles.
        georeferenced: WHU-OPT-SAR: write CRS and transform (default) or neither.

    Returns:
        ``{tile: {modality: path}}``. Modalities: ``vaihingen`` — image, dsm, [dsm_world], label,
        label_eroded, [label_participants], [label_eroded_participants]; ``potsdam`` —
        image_rgb, image_irrg, image_rgbir, dsm, ndsm, label, label_eroded, [label_participants,
        label_eroded_participants]; ``whu-opt-sar`` — image, sar, label. ``label`` is always the
        complete label, ``label_eroded`` the noBoundary one.

    Raises:
        ValueError: For an unknown layout or tile.
        FileExistsError: If an output exists and ``overwrite`` is false (nothing is written).

    Example:
        >>> import tempfile
        >>> paths = write_layout(tempfile.mkdtemp(), "potsdam", tiles=["6_7"], size=32)
        >>> paths["6_7"]["dsm"].name
        'dsm_potsdam_06_07.tif'
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    root = Path(out_dir)
    hw = _size_hw(size)
    if min(hw) < 8:
        raise ValueError(f"tile size must be at least 8 pixels, got {size}")
    ids = [normalize_tile(layout, t) for t in (DEFAULT_TILES[layout] if tiles is None else tiles)]
    if not ids:
        raise ValueError("no tiles to write")
    ids = list(dict.fromkeys(ids))  # keep order, drop duplicates

    plan: _Plan = []
    result: dict[TileId, dict[str, Path]] = {}
    for tile in ids:
        if layout == "vaihingen":
            p, paths = _plan_vaihingen(
                root,
                int(tile),
                seed,
                hw,
                size_jitter=max(hw) // 10 if size_jitter is None else int(size_jitter),
                dsm_world_files=dsm_world_files,
                dsm_extra_px=int(dsm_extra_px),
                labels_flat=labels_flat,
                boundary_radius=boundary_radius,
                eroded_for_participants=eroded_for_participants,
                scale=scale,
            )
        elif layout == "potsdam":
            p, paths = _plan_potsdam(
                root,
                str(tile),
                seed,
                hw,
                labels_flat=labels_flat,
                boundary_radius=boundary_radius,
                off_palette=off_palette,
                participants=participants,
                scale=scale,
            )
        else:
            p, paths = _plan_whu(
                root, str(tile), seed, hw, georeferenced=georeferenced, scale=scale
            )
        plan.extend(p)
        result[tile] = paths
    check_writable([path for path, _ in plan], overwrite)
    for path, write in plan:
        write(path)
    return result


def default_tiles(layout: str) -> tuple[TileId, ...]:
    """The tiles :func:`write_layout` writes by default (2 training + 1 test tile)."""
    return DEFAULT_TILES[layout]


def trainable_tiles(layout: str) -> tuple[TileId, ...]:
    """Two training, one validation and one test tile: every split the shipped configs read.

    ``rsprompt train`` needs a validation tile (the datamodules hold the ``val`` split out of the
    training tiles); ``rsprompt synth --layout`` writes these tiles by default.

    Example:
        >>> trainable_tiles("potsdam")
        ('2_10', '2_11', '7_11', '2_13')
    """
    train, test = DEFAULT_TILES[layout][:2], DEFAULT_TILES[layout][2:]
    return (*train, VAL_TILES[layout], *test)
