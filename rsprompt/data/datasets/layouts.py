"""File names of the official distributions, as users download and unpack them.

The single place that knows where each modality of each tile lives. Datasets and the folder
checker (:mod:`rsprompt.data.check`) both use :func:`find_tiles`.

Roles: ``image`` (the optical raster; Potsdam has the variants ``image:RGB``, ``image:IRRG`` and
``image:RGBIR``), ``aux`` (DSM or SAR), ``ndsm`` (Potsdam's optional normalised DSM),
``label:full`` and ``label:eroded`` (ISPRS "noBoundary" labels); WHU-OPT-SAR has ``label:full``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rsprompt.data.labels import DATASETS

VAIHINGEN_FULL_DIR = "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE"
VAIHINGEN_ERODED_DIR = "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE"
#: Misspelled as distributed ("labeing"): training-area eroded labels.
VAIHINGEN_ERODED_PARTICIPANTS_DIR = (
    "ISPRS_semantic_labeing_Vaihingen_ground_truth_eroded_for_participants"
)
POTSDAM_OPTICAL = {
    "RGB": "2_Ortho_RGB/top_potsdam_{a}_{b}_RGB.tif",
    "IRRG": "3_Ortho_IRRG/top_potsdam_{a}_{b}_IRRG.tif",
    "RGBIR": "4_Ortho_RGBIR/top_potsdam_{a}_{b}_RGBIR.tif",
}


@dataclass(frozen=True)
class LayoutSpec:
    """Where the files of one dataset live.

    Attributes:
        name: Dataset name.
        discover: ``(regex, folder)`` pairs whose matches name tiles (group ``id``).
        candidates: role → function(tile id) → relative paths, first existing wins.
        required: Roles a complete tile needs; a tuple of alternatives counts as one.
        optional: Roles reported when present and warned about when absent.
    """

    name: str
    discover: tuple[tuple[str, str], ...]
    candidates: dict[str, Callable[[str], tuple[str, ...]]]
    required: tuple[tuple[str, ...], ...]
    optional: tuple[str, ...] = field(default=())


def _vh(n: str) -> str:
    return f"top_mosaic_09cm_area{n}"


def _potsdam_parts(tile: str) -> tuple[str, str]:
    a, b = tile.split("_")
    return a, b


def _pd_dsm(tile: str, suffix: str) -> str:
    a, b = _potsdam_parts(tile)
    return f"dsm_potsdam_{int(a):02d}_{int(b):02d}{suffix}"


VAIHINGEN = LayoutSpec(
    name="vaihingen",
    discover=(
        (r"top_mosaic_09cm_area(?P<id>\d+)\.tif$", "top"),
        (r"dsm_09cm_matching_area(?P<id>\d+)\.tif$", "dsm"),
    ),
    candidates={
        "image": lambda n: (f"top/{_vh(n)}.tif",),
        "aux": lambda n: (f"dsm/dsm_09cm_matching_area{n}.tif",),
        "label:full": lambda n: (
            f"{_vh(n)}.tif",
            f"{VAIHINGEN_FULL_DIR}/{_vh(n)}.tif",
            f"gts_for_participants/{_vh(n)}.tif",
        ),
        "label:eroded": lambda n: (
            f"{_vh(n)}_noBoundary.tif",
            f"{VAIHINGEN_ERODED_DIR}/{_vh(n)}_noBoundary.tif",
            f"{VAIHINGEN_ERODED_PARTICIPANTS_DIR}/{_vh(n)}_noBoundary.tif",
        ),
    },
    required=(("image",), ("aux",), ("label:full", "label:eroded")),
)

POTSDAM = LayoutSpec(
    name="potsdam",
    discover=(
        (r"top_potsdam_(?P<id>\d+_\d+)_RGB\.tif$", "2_Ortho_RGB"),
        (r"top_potsdam_(?P<id>\d+_\d+)_IRRG\.tif$", "3_Ortho_IRRG"),
        (r"top_potsdam_(?P<id>\d+_\d+)_RGBIR\.tif$", "4_Ortho_RGBIR"),
        (r"dsm_potsdam_(?P<id>\d+_\d+)\.tif$", "1_DSM"),
    ),
    candidates={
        **{
            f"image:{k}": (lambda t, p=p: (p.format(a=t.split("_")[0], b=t.split("_")[1]),))
            for k, p in POTSDAM_OPTICAL.items()
        },
        "aux": lambda t: (f"1_DSM/{_pd_dsm(t, '.tif')}",),
        "ndsm": lambda t: (f"1_DSM_normalisation/{_pd_dsm(t, '_normalized_lastools.jpg')}",),
        "label:full": lambda t: (
            f"5_Labels_all/top_potsdam_{t}_label.tif",
            f"top_potsdam_{t}_label.tif",
            f"5_Labels_for_participants/top_potsdam_{t}_label.tif",
        ),
        "label:eroded": lambda t: (
            f"5_Labels_all_noBoundary/top_potsdam_{t}_label_noBoundary.tif",
            f"top_potsdam_{t}_label_noBoundary.tif",
            f"5_Labels_for_participants_no_Boundary/top_potsdam_{t}_label_noBoundary.tif",
        ),
    },
    required=(
        ("image:RGB", "image:IRRG", "image:RGBIR"),
        ("aux",),
        ("label:full", "label:eroded"),
    ),
    optional=("ndsm", "image:RGB", "image:IRRG", "image:RGBIR"),
)

WHU_OPT_SAR = LayoutSpec(
    name="whu-opt-sar",
    discover=(
        (r"(?P<id>N[A-Z]\d+E\d+)\.tif$", "optical"),
        (r"(?P<id>N[A-Z]\d+E\d+)\.tif$", "sar"),
        (r"(?P<id>N[A-Z]\d+E\d+)\.tif$", "lbl"),
    ),
    candidates={
        "image": lambda n: (f"optical/{n}.tif",),
        "aux": lambda n: (f"sar/{n}.tif",),
        "label:full": lambda n: (f"lbl/{n}.tif",),
    },
    required=(("image",), ("aux",), ("label:full",)),
)

LAYOUTS: dict[str, LayoutSpec] = {
    "vaihingen": VAIHINGEN,
    "potsdam": POTSDAM,
    "whu-opt-sar": WHU_OPT_SAR,
}


def layout(dataset: str) -> LayoutSpec:
    """Return the layout of ``dataset``.

    Raises:
        ValueError: For an unknown dataset.
    """
    if dataset not in LAYOUTS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    return LAYOUTS[dataset]


def _normalize_potsdam_dsm_id(tile: str) -> str:
    a, b = tile.split("_")
    return f"{int(a)}_{int(b)}"


def find_tiles(dataset: str, root: str | Path) -> dict[str, dict[str, Path]]:
    """Find every tile of ``dataset`` under ``root`` and the files of each role.

    Args:
        dataset: ``vaihingen``, ``potsdam`` or ``whu-opt-sar``.
        root: Folder the archives were unpacked into.

    Returns:
        tile id (text; Vaihingen ``"1"``, Potsdam ``"2_10"``) → role → path, sorted by tile id.

    Raises:
        FileNotFoundError: If ``root`` is not a folder.
    """
    spec = layout(dataset)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    ids: set[str] = set()
    for pattern, folder in spec.discover:
        d = root / folder
        if not d.is_dir():
            continue
        rx = re.compile(pattern)
        for p in d.iterdir():
            m = rx.match(p.name)
            if m:
                tid = m.group("id")
                if dataset == "potsdam" and folder == "1_DSM":
                    tid = _normalize_potsdam_dsm_id(tid)
                ids.add(str(int(tid)) if dataset == "vaihingen" else tid)
    out: dict[str, dict[str, Path]] = {}
    for tid in sorted(ids, key=_sort_key):
        roles: dict[str, Path] = {}
        for role, cands in spec.candidates.items():
            for rel in cands(tid):
                if (root / rel).is_file():
                    roles[role] = root / rel
                    break
        out[tid] = roles
    return out


def _sort_key(tid: str) -> tuple:
    parts = re.split(r"(\d+)", tid)
    return tuple(int(p) if p.isdigit() else p for p in parts)


def expected_paths(dataset: str, tile: str) -> dict[str, tuple[str, ...]]:
    """Relative paths accepted for each role of ``tile`` (for messages)."""
    spec = layout(dataset)
    return {role: cands(tile) for role, cands in spec.candidates.items()}


def unknown_files(dataset: str, root: str | Path, found: dict[str, dict[str, Path]]) -> list[Path]:
    """Rasters in the layout's folders that belong to no found tile (sidecars ignored)."""
    spec = layout(dataset)
    root = Path(root)
    known: set[Path] = set()
    folders = {folder for _, folder in spec.discover}
    for tid in found:
        for cands in spec.candidates.values():
            for rel in cands(tid):
                known.add((root / rel).resolve())
                if str(Path(rel).parent) != ".":
                    folders.add(str(Path(rel).parent))
    out = []
    for folder in sorted(folders):
        d = root / folder
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            if p.is_file() and p.suffix.lower() in (".tif", ".tiff", ".jpg", ".png"):
                if p.resolve() not in known:
                    out.append(p)
    return out
