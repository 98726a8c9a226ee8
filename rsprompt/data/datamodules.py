"""Lightning data modules for Vaihingen, Potsdam, WHU-OPT-SAR and your own rasters.

Standard splits (:mod:`rsprompt.data.splits`); the validation split is held out of the training
tiles (never the test set). When the official validation tiles are absent (a partial download),
``val="auto"`` (``--data.val auto``) holds out part of the training tiles that are present
instead (:meth:`MultimodalDataModule.auto_val_tiles`). :class:`RasterDataModule` reads any
georeferenced rasters with labels drawn as polygons or given as rasters (see
:mod:`rsprompt.data.datasets.custom`). Training draws seeded random patches
(:class:`~rsprompt.data.datasets.samplers.SeededRandomPatchSampler`, reproducible per epoch);
validation and test cover every tile with windows inside it
(:class:`~rsprompt.data.datasets.samplers.TileGridSampler`). Joint kornia augmentation
(:class:`~rsprompt.data.augment.JointAugmentation`) runs on the device after transfer, training
only. :meth:`MultimodalDataModule.tiles` yields whole tiles for sliding-window evaluation.

Example:
    >>> dm = VaihingenDataModule("data/vaihingen", patch_size=256, batch_size=8)  # doctest: +SKIP
    >>> dm.setup("fit")  # doctest: +SKIP
    >>> batch = next(iter(dm.train_dataloader()))  # doctest: +SKIP
    >>> batch["image"].shape, batch["aux"].shape, batch["mask"].shape  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader
from torchgeo.datasets import stack_samples

from rsprompt.data.augment import JointAugmentation
from rsprompt.data.datasets import MultimodalTileDataset, Potsdam, Vaihingen, WHUOptSar
from rsprompt.data.datasets._raster import raster_info
from rsprompt.data.datasets.custom import (
    RasterScenes,
    image_info,
    sample_optical,
    spatial_split,
)
from rsprompt.data.datasets.custom_labels import (
    CustomDataError,
    RasterLabels,
    VectorLabels,
    as_json,
    as_list,
    fill_pattern,
    has_placeholder,
    is_vector,
    resolve_images,
    stems_of,
    table_record,
)
from rsprompt.data.datasets.samplers import SeededRandomPatchSampler, TileGridSampler
from rsprompt.data.labels import (
    WHU_OPT_SAR_CLASSES,
    WHU_OPT_SAR_CLASSES_WITH_BACKGROUND,
    ClassTable,
)
from rsprompt.data.normalize import (
    DSMNormalizer,
    Normalization,
    OpticalNormalizer,
    SARNormalizer,
)

log = logging.getLogger(__name__)


class MultimodalDataModule(LightningDataModule):
    """Common base of the rsprompt data modules.

    Args:
        root: Dataset folder (the official layout).
        patch_size: Training/validation patch size in pixels.
        batch_size: Patches per batch.
        num_workers: Data-loading worker processes.
        length: Training patches per epoch (default: about the non-overlapping patch count).
        val_stride: Stride of the validation/test windows (default: ``patch_size``).
        normalization: :class:`~rsprompt.data.normalize.Normalization` (or its ``to_dict()``);
            default: ImageNet optical statistics and the dataset's aux default.
        augment: ``True`` (flips + 90° rotations), ``False``, or a ``JointAugmentation``.
        variant: Split variant.
        seed: Seed of the training sampler (per-epoch seeding).
        georeference: ``auto`` or ``never`` (see the datasets).
        val: ``official``: the official validation tiles (an error names them when none is
            present); ``auto``: those when present, else every 10th of the training tiles that
            are present (at least one, never all), with a warning — for partial downloads.
        **dataset_kwargs: Passed to the dataset class (e.g. ``labels``, ``optical``).
    """

    #: ``val="auto"`` holds out every ``AUTO_VAL_EVERY``-th training tile present.
    AUTO_VAL_EVERY: ClassVar[int] = 10

    dataset_class: ClassVar[type[MultimodalTileDataset]]

    def __init__(
        self,
        root: str | Path,
        *,
        patch_size: int = 256,
        batch_size: int = 8,
        num_workers: int = 0,
        length: int | None = None,
        val_stride: int | None = None,
        normalization: Normalization | dict[str, Any] | None = None,
        augment: bool | JointAugmentation = True,
        variant: str = "official",
        seed: int = 0,
        georeference: str = "auto",
        val: str = "official",
        **dataset_kwargs: Any,
    ) -> None:
        super().__init__()
        if val not in ("official", "auto"):
            raise ValueError(f"val must be 'official' or 'auto', got {val!r}")
        self.val = val
        self._auto_split: tuple[list[str], list[str]] | None = None
        self.root = Path(root)
        self.patch_size = patch_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.length = length
        self.val_stride = val_stride or patch_size
        if isinstance(normalization, dict):
            normalization = Normalization.from_dict(normalization)
        self.normalization = normalization or self.default_normalization()
        if augment is True:
            augment = JointAugmentation()
        self.augment = augment or None
        self.variant = variant
        self.seed = seed
        self.georeference = georeference
        self.dataset_kwargs = dataset_kwargs
        self.datasets: dict[str, MultimodalTileDataset] = {}
        self.train_sampler: SeededRandomPatchSampler | None = None
        self._restored_epoch: int | None = None

    @classmethod
    def default_normalization(cls) -> Normalization:
        """ImageNet optical statistics and a min–max DSM (overridden for SAR datasets)."""
        return Normalization(OpticalNormalizer(), DSMNormalizer(mode="minmax"))

    def dataset(self, split: str | None, **overrides: Any) -> MultimodalTileDataset:
        """Build (and cache) the dataset of ``split`` (``train``, ``val``, ``test``).

        Raises:
            FileNotFoundError: If no tile of the split is present; for ``val`` the message offers
                ``--data.val auto``.
        """
        if (
            split in ("train", "val")
            and "tiles" not in overrides
            and "tiles" not in self.dataset_kwargs
        ):
            auto = self.auto_val_tiles()
            if auto is not None:
                overrides = {**overrides, "tiles": auto[0] if split == "train" else auto[1]}
        try:
            return self._build_dataset(split, **overrides)
        except FileNotFoundError as exc:
            if split != "val" or "tiles" in overrides:
                raise
            raise FileNotFoundError(
                f"{exc}: the validation tiles are absent (a partial download?); pass "
                "--data.val auto (val: auto in a config) to hold out part of the training tiles "
                "that are present for validation"
            ) from None

    def auto_val_tiles(self) -> tuple[list[str], list[str]] | None:
        """``(train, val)`` tile ids of ``val="auto"`` when no official validation tile is present.

        ``None`` with ``val="official"`` or when a validation tile is present (the official split
        is used). Held out: every :attr:`AUTO_VAL_EVERY`-th training tile present, in the
        published order, starting with the last of each run (at least one, never all).

        Raises:
            FileNotFoundError: If fewer than two training tiles are present.
        """
        if self.val != "auto":
            return None
        if self._auto_split is not None:
            return self._auto_split
        try:
            self._build_dataset("val")
            return None
        except FileNotFoundError:
            pass
        present = [t.name for t in self._build_dataset("train").tiles]
        if len(present) < 2:
            raise FileNotFoundError(
                f"{self.dataset_name} under {self.root}: no validation tile and only "
                f"{len(present)} training tile(s) present: val=auto needs two at least"
            )
        every = self.AUTO_VAL_EVERY
        held = present[every - 1 :: every] or [present[-1]]
        train = [t for t in present if t not in held]
        log.warning(
            "%s under %s: none of the official validation tiles is present; val=auto holds out "
            "%d of the %d training tiles present for validation: %s",
            self.dataset_name,
            self.root,
            len(held),
            len(present),
            " ".join(held),
        )
        self._auto_split = (train, held)
        return self._auto_split

    def _build_dataset(self, split: str | None, **overrides: Any) -> MultimodalTileDataset:
        key = f"{split}:{sorted(overrides.items())}"
        if key not in self.datasets:
            kwargs = {**self.dataset_kwargs, **overrides}
            self.datasets[key] = self.dataset_class(  # type: ignore[call-arg]
                self.root,
                split,
                variant=self.variant,
                normalization=self.normalization,
                georeference=self.georeference,
                **kwargs,
            )
        return self.datasets[key]

    def setup(self, stage: str) -> None:
        """Create the datasets and samplers ``stage`` needs (``fit``, ``validate``, ``test``)."""
        if stage == "fit":
            if self.length is not None and self.length < self.batch_size:
                raise ValueError(
                    f"length={self.length} patches per epoch is less than batch_size="
                    f"{self.batch_size}: the training loader (drop_last) would yield no batch"
                )
            train = self.dataset("train")
            self.train_sampler = SeededRandomPatchSampler(
                train, size=self.patch_size, length=self.length, seed=self.seed, split="train"
            )
            if self._restored_epoch is not None:
                self.train_sampler.set_epoch(self._restored_epoch)
        if stage in ("fit", "validate"):
            self.dataset("val")
        if stage == "test":
            self.dataset("test")

    def _loader(self, ds: MultimodalTileDataset, sampler: Any, train: bool) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=stack_samples,
            drop_last=train,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Seeded random patches of the training tiles (validation tiles held out)."""
        if self.train_sampler is None:
            self.setup("fit")
        assert self.train_sampler is not None
        return self._loader(self.dataset("train"), self.train_sampler, train=True)

    def _grid_loader(self, split: str) -> DataLoader:
        ds = self.dataset(split)
        sampler = TileGridSampler(ds, size=self.patch_size, stride=self.val_stride)
        return self._loader(ds, sampler, train=False)

    def val_dataloader(self) -> DataLoader:
        """Windows covering every validation tile."""
        return self._grid_loader("val")

    def test_dataloader(self) -> DataLoader:
        """Windows covering every test tile."""
        return self._grid_loader("test")

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """Apply the joint augmentation to training batches (on the device)."""
        trainer = getattr(self, "_trainer", None)
        if self.augment is not None and trainer is not None and trainer.training:
            batch = self.augment(batch)
        return batch

    def tiles(self, split: str = "test", **overrides: Any) -> Iterator[dict[str, Any]]:
        """Yield whole tiles of ``split`` for sliding-window evaluation.

        Yields:
            ``{"name", "image", "aux", "aux_valid", "mask", "crs", "transform"}`` with numpy
            arrays normalised exactly as the patches (aux statistics over the whole tile).
        """
        yield from self.dataset(split, **overrides).iter_tiles()

    @property
    def class_table(self) -> ClassTable:
        """Class names and colours of the labels this data module serves."""
        return self.dataset_class.classes

    @property
    def num_classes(self) -> int:
        """Number of classes of the dataset's labels."""
        return self.class_table.num_classes

    @property
    def dataset_name(self) -> str:
        """``vaihingen``, ``potsdam`` or ``whu-opt-sar``."""
        return self.dataset_class.dataset_name

    @property
    def aux_kind(self) -> str:
        """``dsm`` or ``sar``."""
        return self.dataset_class.aux_kind

    def state_dict(self) -> dict[str, Any]:
        """Record the normalisation and the sampler epoch in Lightning checkpoints."""
        return {
            "normalization": self.normalization.to_dict(),
            "seed": self.seed,
            "epoch": None if self.train_sampler is None else self.train_sampler.epoch,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` recorded."""
        self.normalization = Normalization.from_dict(state_dict["normalization"])
        self.seed = int(state_dict.get("seed", self.seed))
        self.datasets.clear()
        # The sampler's epoch: Lightning's own set_epoch does not reach a sampler it wrapped for
        # DDP (DistributedSamplerWrapper), so a resumed run would replay epoch 0's patches.
        epoch = state_dict.get("epoch")
        self._restored_epoch = None if epoch is None else int(epoch)
        if self.train_sampler is not None and self._restored_epoch is not None:
            self.train_sampler.seed = self.seed
            self.train_sampler.set_epoch(self._restored_epoch)


class VaihingenDataModule(MultimodalDataModule):
    """ISPRS Vaihingen (IRRG + DSM), official split, validation areas 32 34 37."""

    dataset_class = Vaihingen


class PotsdamDataModule(MultimodalDataModule):
    """ISPRS Potsdam (RGB/IRRG/RGBIR + DSM); ``variant="mobanet"`` drops tile 7_10.

    Pass ``optical="IRRG"`` or ``"RGBIR"`` to read another optical product.
    """

    dataset_class = Potsdam


class WHUOptSarDataModule(MultimodalDataModule):
    """WHU-OPT-SAR (optical R,G,B[,NIR] + SAR); 8 training scenes held out for validation.

    The default normalisation feeds R, G, B to a 3-channel encoder; pass an
    ``OpticalNormalizer(bands=None, mean=…4 values…, std=…)`` to use all four bands.
    """

    dataset_class = WHUOptSar

    @classmethod
    def default_normalization(cls) -> Normalization:
        """ImageNet statistics on R, G, B; 8-bit SAR scaled to [0, 1]."""
        return Normalization(OpticalNormalizer(bands=(0, 1, 2)), SARNormalizer(mode="uint8"))

    @property
    def class_table(self) -> ClassTable:
        """7 classes (background ignored), or 8 with ``keep_background=True``."""
        if self.dataset_kwargs.get("keep_background"):
            return WHU_OPT_SAR_CLASSES_WITH_BACKGROUND
        return WHU_OPT_SAR_CLASSES


class RasterDataModule(MultimodalDataModule):
    """Your own georeferenced rasters, with labels as polygons (any vector file) or rasters.

    Every relative path (``images``, ``aux``, ``labels``) is taken under ``root`` (the current
    folder by default; ``rsprompt evaluate --data.root`` sets it). Images and labels are checked,
    the classes, splits and value scaling worked out, when the datamodule is created.

    Args:
        root: Folder relative paths are taken under.
        images: Optical rasters: a glob (``"scenes/*.tif"``), a list, or a text file of paths.
            Any CRS, dtype and band count; nodata, NaN and internal masks are honoured.
        labels: A vector file (GeoPackage, GeoJSON, Shapefile, FlatGeobuf; any CRS) or a label
            raster pattern with ``{stem}``/``{name}``/``{dir}`` (class indices), or one raster.
        label_field: The vector attribute holding the classes (text or integer).
        label_layer: Layer of a multi-layer vector file.
        ignore_index: Label raster value that is ignored (besides the raster's nodata value).
        background: Class of the pixels outside every polygon (default: they are ignored).
        classes: Ordered class names, optionally with colours (``[building, road]`` or
            ``{building: "#ff0000", road: null}``). Default: the sorted unique values of
            ``label_field`` (and ``background``); for label rasters the values ``0 … max``.
            A name that is no value of the field is an error.
        aux: DSM or SAR: a pattern with ``{stem}``/``{name}``/``{dir}`` or ONE raster/VRT covering
            every image (any CRS, resolution, extent; aligned onto each image's grid on the fly).
        aux_kind: ``dsm`` or ``sar``.
        aux_bands: 1-based aux bands to use (default all).
        aux_scaling: Aux normalisation mode: DSM ``ndsm`` (default: height above a local ground
            estimate, per image), ``minmax`` or ``global``; SAR ``db`` (default for float),
            ``uint8`` (default for 8-bit) or ``linear``.
        bands: 1-based optical bands (e.g. ``[4, 3, 2]`` of a Sentinel-2 scene); default all.
        scaling: Optical value scaling fitted on the training images: ``percentile`` (default:
            each band's 2nd–98th percentile stretched to [0, 1] and clipped, then ImageNet's
            mean/std), ``meanstd`` (each band standardised by its mean and std) or ``imagenet``
            (values / 255, ImageNet's mean/std: 8-bit RGB only).
        val: Image names (stems) held out for validation; they make ``split`` ``images``.
        test: Image names held out for testing (never trained or validated on).
        split: ``auto`` (``images`` when ``val`` is given, else ``spatial``), ``images`` (needs
            ``val``) or ``spatial``: blocks of the labelled area held out for validation (see
            :func:`~rsprompt.data.datasets.custom.spatial_split`). Not recorded in checkpoints:
            ``val`` says which it was.
        val_fraction: Share of the labelled area a spatial split holds out.
        buffer: Gap in metres between training and validation pixels of a spatial split
            (default: a quarter of the patch; at least one pixel).
        block_size: Side in pixels of the spatial split's blocks (default: twice the patch plus
            the buffer).
        split_seed: Seed of the spatial split's block draw.
        stats_pixels: Pixels sampled (in all) to fit the value scaling.
        patch_size: Training/validation patch size in pixels.
        batch_size: Patches per batch.
        num_workers: Data-loading worker processes.
        length: Training patches per epoch (default: about the non-overlapping patch count).
        val_stride: Stride of the validation/test windows (default: ``patch_size``).
        normalization: A recorded normalisation (checkpoints, evaluation): nothing is fitted.
        augment: ``True`` (flips + 90° rotations), ``False``, or a ``JointAugmentation``.
        seed: Seed of the training sampler.

    Raises:
        rsprompt.data.datasets.custom_labels.CustomDataError: Naming the file: no image, an
            image that is not georeferenced, band indices out of range, a missing aux raster,
            labels that overlap no image, a missing label field, unknown class names, or a
            patch larger than every image.
    """

    dataset_class = RasterScenes  # type: ignore[assignment]

    def __init__(
        self,
        root: str | Path = ".",
        *,
        images: str | list[str],
        labels: str,
        label_field: str | None = None,
        label_layer: str | None = None,
        ignore_index: int | None = None,
        background: str | None = None,
        classes: list[str] | dict[str, str | None] | str | None = None,
        aux: str | None = None,
        aux_kind: str = "dsm",
        aux_bands: list[int] | str | None = None,
        aux_scaling: str | None = None,
        bands: list[int] | str | None = None,
        scaling: str = "percentile",
        val: list[str] | str | None = None,
        test: list[str] | str | None = None,
        split: str = "auto",
        val_fraction: float = 0.2,
        buffer: float | None = None,
        block_size: int | None = None,
        split_seed: int = 0,
        stats_pixels: int = 1 << 20,
        patch_size: int = 256,
        batch_size: int = 8,
        num_workers: int = 0,
        length: int | None = None,
        val_stride: int | None = None,
        normalization: Normalization | dict[str, Any] | None = None,
        augment: bool | JointAugmentation = True,
        seed: int = 0,
    ) -> None:
        if isinstance(normalization, dict):
            normalization = Normalization.from_dict(normalization)
        super().__init__(
            root,
            patch_size=patch_size,
            batch_size=batch_size,
            num_workers=num_workers,
            length=length,
            val_stride=val_stride,
            normalization=normalization or Normalization(),
            augment=augment,
            seed=seed,
        )
        self.variant = None  # type: ignore[assignment]  # no official split variants
        self.georeference = None  # type: ignore[assignment]
        if aux_kind not in ("dsm", "sar"):
            raise CustomDataError(f"aux_kind must be 'dsm' or 'sar', got {aux_kind!r}")
        if scaling not in ("percentile", "meanstd", "imagenet"):
            raise CustomDataError(
                f"scaling must be percentile, meanstd or imagenet, got {scaling!r}"
            )
        paths = resolve_images(images, self.root)
        self.images = [image_info(p) for p in paths]
        # Ground sampling distance (median pixel side, metres): recorded in the checkpoint, where
        # `rsprompt export` takes it as the resolution Deepness reads.
        self.gsd_m = float(np.median([img.pixel_m for img in self.images]))
        self.band_list = self._bands(bands, normalization)
        self.aux_paths, self.aux_band_list = self._aux(aux, aux_bands)
        self._aux_kind = aux_kind if aux is not None else None
        self.aux_channels = (
            None if aux is None else len(self.aux_band_list or []) or self._aux_count()
        )
        self.label_source = self._labels(
            labels, label_field, label_layer, ignore_index, background, classes
        )
        self.label_variant = "polygons" if isinstance(self.label_source, VectorLabels) else "raster"
        self.footprints = self._footprints()
        self.splits, self.split_mode = self._splits(
            val, test, split, val_fraction, buffer, block_size, split_seed
        )
        self._check_patch()
        if normalization is None:
            self.normalization = self._fit(scaling, aux_scaling, stats_pixels, bands is not None)
        self.dataset_kwargs = {
            "images": as_json(images) if not isinstance(images, str | Path) else str(images),
            "labels": str(labels),
            "label_field": label_field,
            "label_layer": label_layer,
            "ignore_index": ignore_index,
            "background": background,
            "classes": table_record(self.label_source.table),
            "aux": aux,
            "aux_kind": aux_kind,
            "aux_bands": as_json(self.aux_band_list) if self.aux_band_list else None,
            "aux_scaling": aux_scaling,
            "bands": as_json(self.band_list) if bands is not None else None,
            "scaling": scaling,
            "val": as_json(stems_of(val, "val")) if val is not None else None,
            "test": as_json(stems_of(test, "test")) if test is not None else None,
            "val_fraction": float(val_fraction),
            "buffer": buffer,
            "block_size": block_size,
            "split_seed": int(split_seed),
            "stats_pixels": int(stats_pixels),
        }

    # ------------------------------------------------------------------ inputs
    def _bands(self, bands: Any, normalization: Normalization | None) -> list[int]:
        """The 1-based optical bands, checked against every image."""
        chosen = as_list(bands) if bands is not None else None
        if bands is not None and chosen is None:
            chosen = [b for b in str(bands).replace(",", " ").split()]
        if chosen is None and normalization is not None and normalization.optical.bands is not None:
            chosen = [b + 1 for b in normalization.optical.bands]
        if chosen is not None:
            try:
                out = [int(b) for b in chosen]
            except (TypeError, ValueError):
                raise CustomDataError(
                    f"bands: expected 1-based band numbers, got {bands!r}"
                ) from None
            if not out:
                raise CustomDataError("bands: no band given")
            for img in self.images:
                bad = [b for b in out if not 1 <= b <= img.count]
                if bad:
                    raise CustomDataError(
                        f"image {img.path} has {img.count} band(s): bands {bad} of {out} "
                        "(1-based) are out of range"
                    )
            return out
        counts = {img.count for img in self.images}
        if len(counts) > 1:
            listing = ", ".join(f"{img.path.name}: {img.count}" for img in self.images[:8])
            raise CustomDataError(
                f"the images have different band counts ({listing}): choose the bands to use "
                "with bands (--data.bands [4,3,2])"
            )
        return list(range(1, counts.pop() + 1))

    def _aux(self, aux: str | None, aux_bands: Any) -> tuple[list[Path | None], list[int] | None]:
        """The aux raster of each image, and the 1-based aux bands (checked)."""
        if aux is None:
            if aux_bands is not None:
                raise CustomDataError("aux_bands given without aux")
            return [None] * len(self.images), None
        if has_placeholder(aux):
            paths = [fill_pattern(aux, img.path, self.root) for img in self.images]
        else:
            paths = [fill_pattern(aux, self.images[0].path, self.root)] * len(self.images)
        for img, p in zip(self.images, paths, strict=True):
            if not p.is_file():
                raise CustomDataError(f"aux raster {p} (for image {img.path}): file not found")
        chosen = as_list(aux_bands) if aux_bands is not None else None
        if aux_bands is not None and chosen is None:
            chosen = str(aux_bands).replace(",", " ").split()
        bands = None if chosen is None else [int(b) for b in chosen]
        for p in dict.fromkeys(paths):
            try:
                count = raster_info(p).count
            except Exception as exc:  # RasterioIOError and friends
                raise CustomDataError(f"aux raster {p}: not a readable raster ({exc})") from None
            bad = [b for b in bands or [] if not 1 <= b <= count]
            if bad:
                raise CustomDataError(
                    f"aux raster {p} has {count} band(s): aux_bands {bad} are out of range"
                )
        return paths, bands

    def _aux_count(self) -> int:
        counts = {raster_info(p).count for p in dict.fromkeys(self.aux_paths) if p is not None}
        if len(counts) > 1:
            raise CustomDataError(
                "the aux rasters have different band counts: choose them with aux_bands"
            )
        return counts.pop()

    def _labels(
        self,
        labels: str,
        field: str | None,
        layer: str | None,
        ignore_index: int | None,
        background: str | None,
        classes: Any,
    ) -> VectorLabels | RasterLabels:
        if labels is None or not str(labels).strip():
            raise CustomDataError("labels: give a vector file or a label raster pattern")
        if is_vector(labels) and not has_placeholder(labels):
            path = Path(str(labels)).expanduser()
            path = path if path.is_absolute() else self.root / path
            return VectorLabels(path, field, layer=layer, classes=classes, background=background)
        if is_vector(labels):
            raise CustomDataError(
                f"labels {labels}: one vector file per image is not supported; merge them into "
                "one file (QGIS: Vector → Data Management Tools → Merge Vector Layers)"
            )
        if background is not None:
            raise CustomDataError("background applies to vector labels (polygons) only")
        return RasterLabels(
            str(labels),
            [img.path for img in self.images],
            self.root,
            ignore_index=ignore_index,
            classes=classes,
        )

    def _footprints(self) -> dict[int, tuple[int, int, int, int]]:
        """Labelled footprint of each image that has labels (pixels); error when none has."""
        src = self.label_source
        out = {}
        for k, img in enumerate(self.images):
            fp = (
                src.footprint(img.grid)
                if isinstance(src, VectorLabels)
                else src.footprint(k, img.grid)
            )
            if fp is not None:
                out[k] = fp
        if not out:
            what = src.path if isinstance(src, VectorLabels) else src.pattern
            names = ", ".join(str(img.path) for img in self.images[:5])
            raise CustomDataError(
                f"labels {what} do not overlap any image ({names}"
                + (" …" if len(self.images) > 5 else "")
                + "); check their CRS and extent"
            )
        missing = [img.name for k, img in enumerate(self.images) if k not in out]
        if missing:
            log.warning(
                "no labels over image(s) %s: they are left out of training and validation",
                ", ".join(missing),
            )
        return out

    def _splits(
        self,
        val: Any,
        test: Any,
        split: str,
        fraction: float,
        buffer: float | None,
        block_size: int | None,
        split_seed: int,
    ) -> tuple[dict[str, list[tuple[int, Any]]], str]:
        """Per split, ``(image position, region)`` pairs (region ``None``: the footprint)."""
        import shapely

        names = [img.name for img in self.images]
        val_names, test_names = stems_of(val, "val"), stems_of(test, "test")
        for option, given in (("val", val_names), ("test", test_names)):
            unknown = [n for n in given if n not in names]
            if unknown:
                raise CustomDataError(
                    f"{option}: no image named {', '.join(map(repr, unknown))}; the images: "
                    + ", ".join(names[:20])
                )
        both = set(val_names) & set(test_names)
        if both:
            raise CustomDataError(f"images {sorted(both)} are in both val and test")
        if split not in ("auto", "images", "spatial"):
            raise CustomDataError(f"split must be auto, images or spatial, got {split!r}")
        mode = split if split != "auto" else ("images" if val_names else "spatial")
        if mode == "spatial" and val_names:
            raise CustomDataError("split: spatial holds out blocks; do not also give val images")
        if mode == "images" and not val_names:
            raise CustomDataError("split: images needs the names of the val images (--data.val)")
        fps = self.footprints
        box = {k: shapely.box(*fp) for k, fp in fps.items()}
        test_pos = [k for k in fps if names[k] in test_names]
        out: dict[str, list[tuple[int, Any]]] = {"test": [(k, box[k]) for k in test_pos]}
        if mode == "images":
            val_pos = [k for k in fps if names[k] in val_names]
            out["val"] = [(k, box[k]) for k in val_pos]
            out["train"] = [(k, box[k]) for k in fps if k not in val_pos and k not in test_pos]
            return out, mode
        pool = {k: fp for k, fp in fps.items() if k not in test_pos}
        gap = {
            k: max(1, math.ceil((buffer / self.images[k].pixel_m) - 1e-9))
            if buffer is not None
            else max(1, self.patch_size // 4)
            for k in pool
        }
        block = int(block_size or 2 * self.patch_size + max(gap.values(), default=1))
        train, held = spatial_split(
            pool, block=block, fraction=fraction, buffer_px=gap, seed=split_seed
        )
        out["train"] = sorted(train.items())
        out["val"] = sorted(held.items())
        return out, mode

    def _check_patch(self) -> None:
        train = [self.images[k] for k, _ in self.splits.get("train", [])]
        if not train:
            raise CustomDataError("no labelled image is left for training")
        p = self.patch_size
        if all(min(i.grid.width, i.grid.height) < p for i in train):
            sizes = ", ".join(f"{i.path} ({i.grid.width}×{i.grid.height})" for i in train[:6])
            raise CustomDataError(
                f"patch_size {p} is larger than every training image: {sizes}; pass a smaller "
                "--data.patch_size"
            )

    def _fit(
        self, scaling: str, aux_scaling: str | None, pixels: int, explicit: bool
    ) -> Normalization:
        """The value scaling fitted on the training images, and the aux normaliser."""
        bands = tuple(b - 1 for b in self.band_list) if explicit else None
        train = sorted({k for k, _ in self.splits["train"]})
        if scaling == "imagenet":
            if len(self.band_list) != 3:
                raise CustomDataError(
                    f"scaling imagenet has statistics for 3 bands, not {len(self.band_list)}; "
                    "use percentile or meanstd"
                )
            optical = OpticalNormalizer(bands=bands)
        else:
            per_image = max(4096, pixels // max(1, len(train)))
            samples = [
                sample_optical(self.images[k], self.band_list, per_image, seed=k) for k in train
            ]
            dtype = self.images[train[0]].dtype
            try:
                optical = OpticalNormalizer.fit(
                    np.concatenate(samples, axis=1),
                    scaling,
                    bands=bands,
                    dtype=dtype,  # type: ignore[arg-type]
                )
            except ValueError as exc:
                raise CustomDataError(
                    f"training images: cannot fit the value scaling ({exc})"
                ) from None
        return Normalization(optical, self._aux_normalizer(aux_scaling))

    def _aux_normalizer(self, mode: str | None) -> DSMNormalizer | SARNormalizer | None:
        if self._aux_kind is None:
            return None
        try:
            if self._aux_kind == "dsm":
                return DSMNormalizer(mode=mode or "ndsm")  # type: ignore[arg-type]
            if mode is None:
                first = next(p for p in self.aux_paths if p is not None)
                mode = "uint8" if raster_info(first).dtype == "uint8" else "db"
            return SARNormalizer(mode=mode)  # type: ignore[arg-type]
        except ValueError as exc:
            raise CustomDataError(f"aux_scaling: {exc}") from None

    # ------------------------------------------------------------------ datasets
    def dataset(self, split: str | None, **overrides: Any) -> RasterScenes:  # type: ignore[override]
        """Build (and cache) the dataset of ``split`` (``train``, ``val`` or ``test``).

        Raises:
            CustomDataError: For an unknown split or one without images.
        """
        if split not in ("train", "val", "test"):
            raise CustomDataError(f"unknown split {split!r}; expected train, val or test")
        key = str(split)
        if key not in self.datasets:
            entries = self.splits.get(split) or []
            if not entries:
                hint = (
                    "name test images with --data.test when training, or evaluate --split val"
                    if split == "test"
                    else "name images with --data.val, or use split: spatial"
                )
                raise CustomDataError(f"no {split} images: {hint}")
            positions = [k for k, _ in entries]
            self.datasets[key] = RasterScenes(
                [self.images[k] for k in positions],
                regions=[r for _, r in entries],
                labels=self.label_source,
                classes=self.label_source.table,
                aux=[self.aux_paths[k] for k in positions],
                aux_kind=self._aux_kind,
                aux_bands=self.aux_band_list,
                bands=self.band_list,
                normalization=self.normalization,
                positions=positions,
            )
        return self.datasets[key]  # type: ignore[return-value]

    def auto_val_tiles(self) -> None:
        """Splits are the datamodule's own (``val``/``test``/``split``)."""
        return None

    @property
    def class_table(self) -> ClassTable:
        """The classes (names and colours) of the labels."""
        return self.label_source.table

    @property
    def dataset_name(self) -> str:
        """``custom``."""
        return "custom"

    @property
    def aux_kind(self) -> str | None:  # type: ignore[override]
        """``dsm``, ``sar`` or ``None`` (no aux raster)."""
        return self._aux_kind


DATAMODULES: dict[str, type[MultimodalDataModule]] = {
    "vaihingen": VaihingenDataModule,
    "potsdam": PotsdamDataModule,
    "whu-opt-sar": WHUOptSarDataModule,
    "custom": RasterDataModule,
}
