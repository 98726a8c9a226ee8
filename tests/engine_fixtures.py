"""A tiny SegmentationModel and datamodule for the engine tests (importable by subprocesses).

The test-only method ``tiny`` is NOT registered by importing this module inside pytest, so it
never leaks into the method registry that other tests (``rsprompt info``, ``available_methods``)
see. Tests ask for it explicitly:

- the ``tiny_method`` fixture (``tests/conftest.py``), e.g.
  ``pytestmark = pytest.mark.usefixtures("tiny_method")``;
- ``with registered_tiny(): ...`` (registers, and restores the registry on exit);
- ``register()`` / ``unregister()`` for code that manages the registry itself.

A helper script run as its own process (``scripts/ddp_smoke.py``, whose DDP ranks re-execute it)
gets ``tiny`` registered at import, as before: outside pytest there is no shared registry to spoil.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from rsprompt.data.labels import ClassTable
from rsprompt.models import registry
from rsprompt.models.base import SegmentationModel


class TinyModel(SegmentationModel):
    """Frozen conv "encoder", trainable aux stem + adapter (with BN buffers), decoder, aux head."""

    training_only_modules = ("aux_head",)

    def __init__(
        self,
        encoder: str,
        num_classes: int,
        aux_channels: int,
        weights: str | None = None,
        encoder_seed: int = 0,
        width: int = 8,
    ) -> None:
        super().__init__("tiny", encoder, num_classes, aux_channels)
        self.encoder = nn.Conv2d(3, width, 3, padding=1)
        if weights is not None:
            self.encoder.load_state_dict(torch.load(weights, weights_only=True))
        else:
            g = torch.Generator().manual_seed(encoder_seed)
            with torch.no_grad():
                self.encoder.weight.copy_(torch.randn(self.encoder.weight.shape, generator=g) * 0.3)
                self.encoder.bias.copy_(torch.randn(self.encoder.bias.shape, generator=g) * 0.1)
        self.aux_stem = nn.Conv2d(aux_channels, width, 3, padding=1) if aux_channels else None
        self.adapter = nn.Sequential(nn.Conv2d(width, width, 1), nn.BatchNorm2d(width), nn.ReLU())
        self.decoder = nn.Conv2d(width, num_classes, 1)
        self.aux_head = nn.Conv2d(width, num_classes, 1)
        self.drop = nn.Dropout(0.2)
        self.freeze()

    def forward(self, image: Tensor, aux: Tensor | None = None, aux_valid: Tensor | None = None):
        f = self.encoder(image)
        if self.aux_stem is not None and aux is not None:
            f = f + self.aux_stem(aux)
        f = self.drop(self.adapter(f))
        logits = self.decoder(f)
        if self.training:
            return {"logits": logits, "aux_logits": self.aux_head(f)}
        return logits

    def compute_loss(self, output: dict[str, Tensor], target: Tensor) -> dict[str, Tensor]:
        ce = F.cross_entropy(output["logits"], target, ignore_index=255)
        aux = F.cross_entropy(output["aux_logits"], target, ignore_index=255)
        return {"loss": ce + 0.1 * aux, "ce": ce, "aux": aux}


def build_tiny(encoder: str, num_classes: int, aux_channels: int, weights=None, **kw: Any):
    return TinyModel(encoder, num_classes, aux_channels, weights=weights, **kw)


#: The test-only method's registry name.
METHOD = "tiny"


def register() -> None:
    """Add the method ``tiny`` to the registry (idempotent; prefer :func:`registered_tiny`)."""
    registry.METHOD_MODULES[METHOD] = __name__
    registry._BUILDERS[METHOD] = build_tiny


def unregister() -> None:
    """Remove the method ``tiny`` from the registry (no-op when absent)."""
    registry.METHOD_MODULES.pop(METHOD, None)
    registry._BUILDERS.pop(METHOD, None)


@contextmanager
def registered_tiny() -> Iterator[str]:
    """Register ``tiny`` for the ``with`` block; on exit, restore the registry as it was.

    Yields:
        The method name, ``"tiny"``.
    """
    before = (registry.METHOD_MODULES.get(METHOD), registry._BUILDERS.get(METHOD))
    register()
    try:
        yield METHOD
    finally:
        unregister()
        if before[0] is not None:
            registry.METHOD_MODULES[METHOD] = before[0]
        if before[1] is not None:
            registry._BUILDERS[METHOD] = before[1]


if "pytest" not in sys.modules:  # a helper script's own process (see the module docstring)
    register()


class RandomSegData(Dataset):
    """Learnable random data: the class is a function of the image's first channel."""

    def __init__(self, n: int, size: int, num_classes: int, aux_channels: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.image = torch.randn(n, 3, size, size, generator=g)
        self.aux = torch.randn(n, aux_channels, size, size, generator=g)
        q = torch.quantile(self.image[:, 0], torch.linspace(0, 1, num_classes + 1)[1:-1])
        self.mask = torch.bucketize(self.image[:, 0], q)
        self.mask[:, :2, :2] = 255

    def __len__(self) -> int:
        return len(self.image)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {
            "image": self.image[i],
            "aux": self.aux[i],
            "aux_valid": torch.ones(1, *self.image.shape[-2:]),
            "mask": self.mask[i],
        }


class EpochSampler(Sampler[int]):
    """Shuffles with a generator seeded by ``seed + epoch`` (Lightning calls set_epoch)."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


class TinyDataModule(pl.LightningDataModule):
    def __init__(
        self,
        num_classes: int = 3,
        aux_channels: int = 1,
        size: int = 16,
        n_train: int = 12,
        n_val: int = 4,
        batch_size: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.class_table = ClassTable(
            (*tuple(f"c{i}" for i in range(num_classes - 1)), "clutter"),
            tuple((40 * i, 255 - 40 * i, 7 * i) for i in range(num_classes)),
        )
        self.aux_channels = aux_channels
        self.aux_kind = "dsm" if aux_channels else None
        self.patch_size = size
        self.dataset = "tiny"
        self.batch_size = batch_size
        self.train_ds = RandomSegData(n_train, size, num_classes, aux_channels, seed)
        self.val_ds = RandomSegData(n_val, size, num_classes, aux_channels, seed + 1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_ds, batch_size=self.batch_size, sampler=EpochSampler(len(self.train_ds))
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_ds, batch_size=self.batch_size)


class InterruptAtEpoch(pl.Callback):
    """Raise KeyboardInterrupt (as Ctrl+C) at the start of epoch ``epoch``."""

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt
