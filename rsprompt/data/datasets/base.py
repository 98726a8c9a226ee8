"""The multimodal tile dataset every rsprompt dataset builds on (a TorchGeo 0.10 ``GeoDataset``).

One index row per tile (optical image + aux raster + label). Each tile gets ONE grid shared by its
modalities: its own georeferencing when the optical file has it, else the aux file's world file
(``.tfw``; CRS :data:`~rsprompt.data.datasets._raster.LOCAL_CRS`), else a synthetic local grid
with every tile at its own disjoint offset. Modalities without georeferencing take the tile's grid,
so image, aux and label always intersect and tiles never overlap.

Samples (slice-indexed, ``ds[xmin:xmax, ymin:ymax]``, as TorchGeo's samplers yield) hold
``image`` (float32 C×H×W, normalised), ``aux`` (float32 A×H×W on the optical grid, kept apart from
the optical bands), ``aux_valid`` (float32 1×H×W), ``mask`` (int64 H×W, 255 = ignore) and
TorchGeo's ``bounds``/``transform``. Per-tile aux statistics (e.g. DSM min–max) are fitted once over
the whole tile on the optical grid and applied to every window (no per-window statistics).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import rasterio.warp
import shapely
import torch
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from torchgeo.datasets import GeoDataset

from rsprompt.data.datasets._raster import (
    LOCAL_CRS,
    Grid,
    RasterInfo,
    open_quiet,
    raster_info,
    read_on_grid,
)
from rsprompt.data.labels import IGNORE_INDEX, ISPRS_CLASSES, ClassTable
from rsprompt.data.normalize import Normalization

log = logging.getLogger(__name__)

Georeference = Literal["auto", "never"]


@dataclass(frozen=True)
class Tile:
    """The files of one tile.

    Attributes:
        name: Tile id as text (``"1"`` for Vaihingen area 1, ``"2_10"``, ``"NH49E001014"``).
        image: Optical raster.
        aux: DSM or SAR raster (``None``: missing, served as zeros with ``aux_valid`` 0).
        label: Label raster (``None``: unlabelled, mask all ignore).
    """

    name: str
    image: Path
    aux: Path | None = None
    label: Path | None = None


@dataclass(frozen=True)
class TileGrids:
    """The grids the modalities of one tile are read with."""

    image: Grid
    aux: Grid | None
    label: Grid | None
    source: str  # "georeferenced", "world file" or "local"


class MultimodalTileDataset(GeoDataset):
    """A TorchGeo ``GeoDataset`` over tiles of optical + aux + label rasters.

    Subclasses set :attr:`aux_kind` and implement :meth:`decode_label`. See the module docstring
    for the grid rules and the sample keys.

    Args:
        tiles: The tiles (see :class:`Tile`).
        normalization: Per-modality normalisation (``None``: raw optical values as float32 and
            raw aux values with invalid pixels zeroed).
        georeference: ``auto`` uses the files' georeferencing when present; ``never`` puts every
            tile on the synthetic local grid.
        local_res: Pixel size (metres) of the synthetic local grid.
        transforms: Function applied to each sample.

    Raises:
        ValueError: If no tile is given or georeferenced tiles overlap.
    """

    #: ``dsm`` or ``sar``.
    aux_kind: ClassVar[str] = "dsm"
    #: rsprompt dataset name.
    dataset_name: ClassVar[str] = ""
    #: Class table of the labels.
    classes: ClassTable = ISPRS_CLASSES
    #: Gap (pixels) between tiles on the synthetic local grid.
    local_gap: ClassVar[int] = 256

    def __init__(
        self,
        tiles: Sequence[Tile],
        *,
        normalization: Normalization | None = None,
        georeference: Georeference = "auto",
        local_res: float = 1.0,
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        if not tiles:
            raise ValueError(f"{type(self).__name__}: no tiles given")
        if georeference not in ("auto", "never"):
            raise ValueError(f"georeference must be 'auto' or 'never', got {georeference!r}")
        self.tiles = list(tiles)
        self.normalization = normalization
        self.transforms = transforms
        self.georeference = georeference
        self.local_res = float(local_res)
        self.paths = [str(t.image) for t in self.tiles]
        self.unmatched: dict[str, int] = {}
        self._aux_stats: dict[int, dict[str, Any]] = {}
        self._handles: dict[str, Any] = {}
        self._pid = os.getpid()
        self.grids = self._assign_grids()
        crs = self.grids[0].image.crs
        geoms = [self._footprint(g.image, crs) for g in self.grids]
        self._check_overlaps(geoms)
        self._res = self.grids[0].image.res
        n = len(self.tiles)
        index = pd.IntervalIndex.from_tuples(
            [(pd.Timestamp.min, pd.Timestamp.max)] * n, closed="both", name="datetime"
        )
        self.index = gpd.GeoDataFrame(
            {"tile": [t.name for t in self.tiles], "position": np.arange(n)},
            index=index,
            geometry=geoms,
            crs=crs,
        )
        self._tile_pos = {t.name: i for i, t in enumerate(self.tiles)}

    # ---------------------------------------------------------------- grids
    def _assign_grids(self) -> list[TileGrids]:
        infos = []
        for t in self.tiles:
            img = raster_info(t.image)
            aux = raster_info(t.aux) if t.aux is not None else None
            lbl = raster_info(t.label) if t.label is not None else None
            infos.append((img, aux, lbl))
        grids = [self._grids_of(*i) for i in infos]
        crss = {g.image.crs.to_wkt() for g in grids if g.source != "local"}
        if self.georeference == "never":
            return self._local_grids(infos)
        if any(g.source == "local" for g in grids):
            if crss:
                log.warning(
                    "%s: some tiles carry no georeferencing: all tiles use the local grid",
                    type(self).__name__,
                )
            return self._local_grids(infos)
        if len(crss) > 1:
            log.info(
                "%s: tiles in %d CRSs: each tile on its own local grid (no resampling)",
                type(self).__name__,
                len(crss),
            )
            grids = self._local_grids(infos)
        return grids

    def _grids_of(
        self, img: RasterInfo, aux: RasterInfo | None, lbl: RasterInfo | None
    ) -> TileGrids:
        if self.georeference == "auto" and img.georeferenced:
            assert img.crs is not None and img.transform is not None
            g = Grid(img.crs, img.transform, img.width, img.height)
            source = "georeferenced"
        elif self.georeference == "auto" and img.transform is not None:
            g = Grid(img.crs or LOCAL_CRS, img.transform, img.width, img.height)
            source = "world file"
        elif self.georeference == "auto" and aux is not None and aux.transform is not None:
            g = Grid(aux.crs or LOCAL_CRS, aux.transform, img.width, img.height)
            source = "world file"
        else:
            # Placeholder; replaced by _local_grids.
            g = Grid(
                LOCAL_CRS, from_origin(0, 0, self.local_res, self.local_res), img.width, img.height
            )
            return TileGrids(g, None, None, "local")

        def follow(info: RasterInfo | None) -> Grid | None:
            if info is None:
                return None
            if source == "georeferenced" and info.georeferenced:
                assert info.crs is not None and info.transform is not None
                return Grid(info.crs, info.transform, info.width, info.height)
            return Grid(g.crs, g.transform, info.width, info.height)

        aux_grid = follow(aux)
        if source == "world file" and aux is not None:
            # The DSM's own world file places it (same, CRS-less coordinates as the image's).
            aux_grid = Grid(g.crs, aux.transform or g.transform, aux.width, aux.height)
        return TileGrids(g, aux_grid, follow(lbl), source)

    def _local_grids(self, infos: list[tuple[RasterInfo, RasterInfo | None, RasterInfo | None]]):
        res = self.local_res
        step = max(i[0].width for i in infos) + self.local_gap
        grids = []
        for k, (img, aux, lbl) in enumerate(infos):
            tr = from_origin(k * step * res, 0.0, res, res)
            g = Grid(LOCAL_CRS, tr, img.width, img.height)
            grids.append(
                TileGrids(
                    g,
                    None if aux is None else Grid(LOCAL_CRS, tr, aux.width, aux.height),
                    None if lbl is None else Grid(LOCAL_CRS, tr, lbl.width, lbl.height),
                    "local",
                )
            )
        return grids

    @staticmethod
    def _footprint(grid: Grid, crs: pyproj.CRS) -> shapely.Polygon:
        bounds = grid.bounds
        if grid.crs != crs:
            bounds = rasterio.warp.transform_bounds(grid.crs, crs, *bounds)
        return shapely.box(*bounds)

    #: Tiles overlapping by more than this fraction of the smaller one are an error (duplicates or
    #: broken georeferencing); smaller overlaps (a few edge pixels) are logged.
    max_overlap: ClassVar[float] = 0.5

    def _check_overlaps(self, geoms: list[shapely.Polygon]) -> None:
        tree = shapely.STRtree(geoms)
        for i, g in enumerate(geoms):
            for j in tree.query(g, predicate="intersects"):
                if j <= i:
                    continue
                inter = g.intersection(geoms[j]).area / min(g.area, geoms[j].area)
                a, b = self.tiles[i], self.tiles[int(j)]
                if inter > self.max_overlap:
                    raise ValueError(
                        f"tiles {a.name} ({a.image}) and {b.name} ({b.image}) overlap by "
                        f"{inter:.0%}; pass georeference='never' to put each tile on its own "
                        "local grid"
                    )
                if inter > 1e-6:
                    log.info("tiles %s and %s overlap by %.2f%%", a.name, b.name, 100 * inter)

    # ---------------------------------------------------------------- reading
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state

    def _open(self, path: Path) -> Any:
        if os.getpid() != self._pid:
            self._handles, self._pid = {}, os.getpid()
        key = str(path)
        if key not in self._handles:
            self._handles[key] = open_quiet(path)
        return self._handles[key]

    def close(self) -> None:
        """Close the cached file handles."""
        for h in self._handles.values():
            h.close()
        self._handles = {}

    @property
    def image_indexes(self) -> list[int] | None:
        """1-based optical bands to read (``None``: all); the normaliser's selection."""
        if self.normalization is None or self.normalization.optical.bands is None:
            return None
        return [b + 1 for b in self.normalization.optical.bands]

    def decode_label(self, raw: np.ndarray, tile: Tile) -> np.ndarray:
        """Turn raw label bands (``C×H×W``) into an ``H×W`` uint8 index map (255 = ignore)."""
        raise NotImplementedError

    def aux_stats(self, position: int) -> dict[str, Any]:
        """Aux normalisation statistics of a tile, fitted once over the whole tile."""
        if position not in self._aux_stats:
            norm = self.normalization.aux if self.normalization is not None else None
            tile, grids = self.tiles[position], self.grids[position]
            if norm is None or not norm.needs_fit or tile.aux is None or grids.aux is None:
                self._aux_stats[position] = {}
            else:
                src = self._open(tile.aux)
                raw, valid = read_on_grid(
                    src, grids.aux, grids.image, [1], Resampling.bilinear, np.nan, valid_only=True
                )
                stats = norm.fit(raw[0].astype(np.float32), valid, res=grids.image.res[0])
                if "ground" in stats:  # keep the ground grid compact in memory
                    stats["ground"] = np.asarray(stats["ground"], np.float32)
                self._aux_stats[position] = stats
        return self._aux_stats[position]

    def _read_tile_piece(self, position: int, dst: Grid) -> dict[str, np.ndarray]:
        tile, grids = self.tiles[position], self.grids[position]
        img_src = self._open(tile.image)
        image, covered = read_on_grid(
            img_src, grids.image, dst, self.image_indexes, Resampling.bilinear, 0
        )
        piece: dict[str, np.ndarray] = {"image": image.astype(np.float32), "covered": covered}
        if tile.aux is not None and grids.aux is not None:
            src = self._open(tile.aux)
            raw, acov = read_on_grid(
                src, grids.aux, dst, None, Resampling.bilinear, np.nan, valid_only=True
            )
            raw = raw.astype(np.float32)
            valid = acov & covered
            norm = self.normalization.aux if self.normalization is not None else None
            if norm is not None:
                off = self._offset(grids.image, dst)
                aux, aux_valid = norm.apply(raw, self.aux_stats(position), valid, off)
            else:
                aux = np.where(valid[None], np.nan_to_num(raw), 0).astype(np.float32)
                aux_valid = valid[None].astype(np.float32)
            piece["aux"], piece["aux_valid"] = aux, aux_valid
        if tile.label is not None and grids.label is not None:
            raw, lcov = read_on_grid(
                self._open(tile.label), grids.label, dst, None, Resampling.nearest, 0
            )
            mask = self.decode_label(raw, tile)
            mask[~(lcov & covered)] = IGNORE_INDEX
            piece["mask"] = mask
        return piece

    @staticmethod
    def _offset(tile_grid: Grid, dst: Grid) -> tuple[int, int]:
        t, d = tile_grid.transform, dst.transform
        if tile_grid.crs != dst.crs:
            return (0, 0)
        return (round((d.f - t.f) / t.e), round((d.c - t.c) / t.a))

    def _assemble(self, positions: Sequence[int], dst: Grid) -> dict[str, np.ndarray]:
        h, w = dst.height, dst.width
        image: np.ndarray | None = None
        aux = np.zeros((1, h, w), np.float32)
        aux_valid = np.zeros((1, h, w), np.float32)
        mask = np.full((h, w), IGNORE_INDEX, np.uint8)
        covered = np.zeros((h, w), bool)
        for p in positions:
            piece = self._read_tile_piece(p, dst)
            cov = piece["covered"]
            if len(positions) == 1:  # the common case: pieces are already padded
                image, covered = piece["image"], cov
                aux = piece.get("aux", aux)
                aux_valid = piece.get("aux_valid", aux_valid)
                mask = piece.get("mask", mask)
                break
            if image is None:
                image = np.zeros((piece["image"].shape[0], h, w), np.float32)
            np.copyto(image, piece["image"], where=cov[None])
            if "aux" in piece:
                if aux.shape[0] != piece["aux"].shape[0]:
                    aux = np.zeros((piece["aux"].shape[0], h, w), np.float32)
                np.copyto(aux, piece["aux"], where=cov[None])
                np.copyto(aux_valid, piece["aux_valid"], where=cov[None])
            if "mask" in piece:
                np.copyto(mask, piece["mask"], where=cov)
            covered |= cov
        assert image is not None
        if self.normalization is not None:
            image = self.normalization.optical.apply(image, selected=True)
        if not covered.all():
            image = np.where(covered[None], image, 0)
        return {
            "image": image.astype(np.float32, copy=False),
            "aux": aux,
            "aux_valid": aux_valid,
            "mask": mask,
            "covered": covered,
        }

    def __getitem__(self, index: Any) -> dict[str, Any]:
        """Read the window ``ds[xmin:xmax, ymin:ymax]`` (optionally ``[..., ..., t]``).

        Raises:
            IndexError: If the window touches no tile.
        """
        x, y, _ = self._disambiguate_slice(index)
        xres, yres = x.step or self.res[0], y.step or self.res[1]
        width = max(1, round((x.stop - x.start) / xres))
        height = max(1, round((y.stop - y.start) / yres))
        box = shapely.box(x.start, y.start, x.stop, y.stop)
        overlaps = {}
        for i in self.index.sindex.query(box, predicate="intersects"):
            area = self.index.geometry.iloc[i].intersection(box).area
            if area > 0:
                overlaps[int(self.index["position"].iloc[i])] = area
        if not overlaps:
            raise IndexError(f"index: {index} not found in dataset with bounds: {self.bounds}")
        hits = list(overlaps)
        x0, y1 = self._snap(max(overlaps, key=overlaps.__getitem__), x.start, y.stop, xres, yres)
        dst = Grid(self.crs, from_origin(x0, y1, xres, yres), width, height)
        arrays = self._assemble(sorted(hits), dst)
        sample: dict[str, Any] = {
            "image": torch.from_numpy(arrays["image"]),
            "aux": torch.from_numpy(arrays["aux"]),
            "aux_valid": torch.from_numpy(arrays["aux_valid"]),
            "mask": torch.from_numpy(arrays["mask"].astype(np.int64)),
            "bounds": self._slice_to_tensor(index),
            "transform": torch.tensor(dst.transform),
        }
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample

    def _snap(
        self, position: int, x0: float, y1: float, xres: float, yres: float
    ) -> tuple[float, float]:
        """Shift a window origin by less than a pixel onto a tile's pixel grid (no resampling).

        TorchGeo's samplers snap to a lattice anchored at the union of all footprints; tiles
        placed by world files are not on that lattice.
        """
        g = self.grids[position].image
        t = g.transform
        if g.crs != self.crs or not (
            math.isclose(abs(t.a), xres, rel_tol=1e-6)
            and math.isclose(abs(t.e), yres, rel_tol=1e-6)
        ):
            return x0, y1
        col = (x0 - t.c) / t.a
        row = (y1 - t.f) / t.e
        return t.c + round(col) * t.a, t.f + round(row) * t.e

    # ---------------------------------------------------------------- whole tiles
    def tile_names(self) -> list[str]:
        """Tile ids in index order."""
        return [t.name for t in self.tiles]

    def read_tile(self, tile: str | int) -> dict[str, Any]:
        """Read one whole tile on its optical grid (normalised as samples are).

        Args:
            tile: Tile id (or position in :attr:`tiles`).

        Returns:
            ``{"name", "image", "aux", "aux_valid", "mask", "crs", "transform"}``: numpy arrays
            (``mask`` uint8 with 255 = ignore) and the tile's float64 ``Affine`` and CRS.

        Raises:
            KeyError: If the tile is not in this dataset.
        """
        pos = tile if isinstance(tile, int) else self._tile_pos[str(tile)]
        grid = self.grids[pos].image
        arrays = self._assemble([pos], grid)
        return {
            "name": self.tiles[pos].name,
            "image": arrays["image"],
            "aux": arrays["aux"],
            "aux_valid": arrays["aux_valid"],
            "mask": arrays["mask"],
            "crs": grid.crs,
            "transform": grid.transform,
        }

    def iter_tiles(self) -> Iterator[dict[str, Any]]:
        """Yield :meth:`read_tile` for every tile, in index order."""
        for pos in range(len(self.tiles)):
            yield self.read_tile(pos)

    def _warn_unmatched(self, tile: Tile, unmatched: int) -> None:
        if unmatched <= 0:
            return
        first = tile.name not in self.unmatched
        self.unmatched[tile.name] = self.unmatched.get(tile.name, 0) + unmatched
        if first:
            log.warning(
                "%s: %d label pixel(s) match no class colour (set to ignore) in %s",
                type(self).__name__,
                unmatched,
                tile.label,
            )


def check_patch_fits(
    dataset: GeoDataset, patch_size: int | tuple[int, int], split: str = ""
) -> None:
    """Fail loudly when no random patch of ``patch_size`` pixels fits in ``dataset``.

    TorchGeo's ``RandomPatchSampler`` erodes the footprint by ~0.71 × the patch and then yields
    nothing while ``len(sampler)`` still reports the requested count.

    Raises:
        ValueError: Naming the split, the patch size and the tile sizes.
    """
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    xres, yres = dataset.res
    size = (ph * yres, pw * xres)
    distance = math.sqrt((size[0] / 2) ** 2 + (size[1] / 2) ** 2)
    geom = dataset.index.geometry.union_all()
    if shapely.buffer(geom, -distance).is_empty:
        sizes = []
        min_side = math.inf
        for _, row in dataset.index.iterrows():
            x0, y0, x1, y1 = row.geometry.bounds
            min_side = min(min_side, (x1 - x0) / xres, (y1 - y0) / yres)
            sizes.append(
                f"{row.get('tile', '?')}: {round((x1 - x0) / xres)}×{round((y1 - y0) / yres)} px"
            )
        where = f" {split}" if split else ""
        raise ValueError(
            f"no {ph}×{pw} px patch can be sampled from the{where} tiles (TorchGeo's random "
            f"sampler needs tiles of at least ~{math.ceil(1.42 * max(ph, pw))} px a side): "
            + ", ".join(sizes)
            + f"; pass a smaller patch size (--data.patch_size, at most "
            f"{max(16, int(min_side / 1.42) // 16 * 16)} here)"
        )


def select_tiles(
    dataset: str,
    root: str | Path,
    *,
    split: str | None,
    variant: str = "official",
    tiles: Sequence[str | int] | None = None,
    exclude_val: bool = True,
    image_role: str = "image",
    aux_role: str = "aux",
    label_variant: Literal["full", "eroded"] = "full",
) -> list[Tile]:
    """Find the tiles of a split under ``root`` (see :mod:`~rsprompt.data.datasets.layouts`).

    Args:
        dataset: ``vaihingen``, ``potsdam`` or ``whu-opt-sar``.
        root: Dataset folder.
        split: ``train``, ``val``, ``test`` or ``None`` (every tile found).
        variant: Split variant (see :mod:`rsprompt.data.splits`).
        tiles: Explicit tile ids (overrides ``split``).
        exclude_val: For ``train``, leave out the validation tiles.
        image_role: Layout role of the optical raster (Potsdam: ``image:RGB`` …).
        aux_role: Layout role of the aux raster (``aux``; Potsdam also ``ndsm``).
        label_variant: ``full`` or ``eroded`` (ISPRS "noBoundary"); a tile without the asked
            variant falls back to the other one, with a warning.

    Returns:
        The tiles present (official tiles absent from ``root`` are logged).

    Raises:
        FileNotFoundError: If no tile of the split is present.
    """
    from rsprompt.data.datasets.layouts import find_tiles

    found = find_tiles(dataset, root)
    if tiles is not None:
        wanted = [str(t) for t in tiles]
    elif split is None:
        wanted = list(found)
    else:
        ids = _split_ids(dataset, split, variant, exclude_val)
        wanted = [str(t) for t in ids]
    missing = [t for t in wanted if t not in found or image_role not in found[t]]
    if missing:
        log.warning(
            "%s %s: %d of %d tiles absent from %s: %s",
            dataset,
            split or "",
            len(missing),
            len(wanted),
            root,
            " ".join(missing[:10]) + (" …" if len(missing) > 10 else ""),
        )
    other = "eroded" if label_variant == "full" else "full"
    out = []
    for t in wanted:
        roles = found.get(t, {})
        if image_role not in roles:
            continue
        label = roles.get(f"label:{label_variant}")
        if label is None and f"label:{other}" in roles:
            log.warning(
                "%s tile %s: no %s label, using the %s one", dataset, t, label_variant, other
            )
            label = roles[f"label:{other}"]
        if label is None:
            log.warning("%s tile %s: no label file, its mask is all ignore", dataset, t)
        if aux_role not in roles:
            log.warning(
                "%s tile %s: no %s file, served as zeros with aux_valid 0", dataset, t, aux_role
            )
        out.append(Tile(t, roles[image_role], roles.get(aux_role), label))
    if not out:
        raise FileNotFoundError(
            f"no {dataset} tile of split {split!r} ({variant}) found under {root}"
            + (f" (looked for {image_role})" if image_role != "image" else "")
        )
    return out


def _split_ids(dataset: str, split: str, variant: str, exclude_val: bool) -> tuple:
    from rsprompt.data import splits as splits_mod

    if split == "val" and "val" not in splits_mod.SPLITS[dataset].get(variant, {}):
        return held_out_val(dataset, variant)
    ids = splits_mod.get_tiles(
        dataset, split, variant, exclude_val=exclude_val and split == "train"
    )
    if (
        split == "train"
        and exclude_val
        and "val" not in splits_mod.SPLITS[dataset].get(variant, {})
    ):
        val = set(held_out_val(dataset, variant))
        ids = tuple(t for t in ids if t not in val)
    return ids


def held_out_val(dataset: str, variant: str = "official", every: int = 10) -> tuple:
    """Validation tiles for a split without an official one: every ``every``-th training tile.

    WHU-OPT-SAR publishes only train/test: 8 of its 80 training scenes (every 10th in the
    published order) are held out for validation, never the test scenes.
    """
    from rsprompt.data import splits as splits_mod

    train = splits_mod.get_tiles(dataset, "train", variant)
    return tuple(train[every - 1 :: every])
