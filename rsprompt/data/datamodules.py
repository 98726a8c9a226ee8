"""Lightning data modules for Vaihingen, Potsdam and WHU-OPT-SAR.

Standard splits (:mod:`rsprompt.data.splits`); the validation split is held out of the training
tiles (never the test set). Training draws seeded random patches
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

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader
from torchgeo.datasets import stack_samples

from rsprompt.data.augment import JointAugmentation
from rsprompt.data.datasets import MultimodalTileDataset, Potsdam, Vaihingen, WHUOptSar
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
        **dataset_kwargs: Passed to the dataset class (e.g. ``labels``, ``optical``).
    """

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
        **dataset_kwargs: Any,
    ) -> None:
        super().__init__()
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
        """Build (and cache) the dataset of ``split`` (``train``, ``val``, ``test``)."""
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


DATAMODULES: dict[str, type[MultimodalDataModule]] = {
    "vaihingen": VaihingenDataModule,
    "potsdam": PotsdamDataModule,
    "whu-opt-sar": WHUOptSarDataModule,
}
