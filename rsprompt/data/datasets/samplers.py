"""Samplers for the multimodal tile datasets: seeded random patches and per-tile grids."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torchgeo.datasets import GeoDataset
from torchgeo.samplers import RandomPatchSampler
from torchgeo.samplers.base import GeoSampler

from rsprompt.data.datasets.base import check_patch_fits


class SeededRandomPatchSampler(RandomPatchSampler):
    """TorchGeo's ``RandomPatchSampler`` with per-epoch seeding and a loud size check.

    Epoch ``e`` draws its patches from ``numpy.random.default_rng([seed, e])``: the same epoch
    gives the same patches after a resume. Lightning calls :meth:`set_epoch` before every epoch;
    outside Lightning the epoch advances by one at each new iteration.

    Args:
        dataset: Dataset to sample from.
        size: Patch size in pixels.
        length: Patches per epoch (default: about the number of non-overlapping patches).
        seed: Base seed.
        split: Split name for error messages.

    Raises:
        ValueError: If no patch of ``size`` fits in any tile (see
            :func:`~rsprompt.data.datasets.base.check_patch_fits`).
    """

    def __init__(
        self,
        dataset: GeoDataset,
        *,
        size: int | tuple[int, int],
        length: int | None = None,
        seed: int = 0,
        split: str = "",
    ) -> None:
        check_patch_fits(dataset, size, split)
        super().__init__(dataset, size=size, length=length, generator=seed)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the patches of epoch ``epoch`` on the next iteration."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[slice, slice]]:
        """Return this epoch's patches (reproducible from ``seed`` and the epoch).

        The epoch advances when iteration starts, whether or not it is exhausted (Lightning
        stops after its batch count), unless :meth:`set_epoch` sets it again.
        """
        self.generator = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        return super().__iter__()


class TileGridSampler(GeoSampler):
    """Regular windows over each tile, the last row/column shifted back inside the tile.

    Unlike TorchGeo's ``GriddedPatchSampler`` (one grid centred on the union of all tiles, edge
    windows overhanging the data), every window lies inside one tile; a tile smaller than the
    window gives one window anchored at its top-left corner (the rest is padding: mask ignore).

    Args:
        dataset: A dataset whose index rows are tiles.
        size: Window size in pixels.
        stride: Step in pixels (default: ``size``).
    """

    def __init__(
        self, dataset: GeoDataset, *, size: int | tuple[int, int], stride: int | None = None
    ) -> None:
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.stride = stride or min(self.size)
        self.res = dataset.res
        self.windows: list[tuple[slice, slice]] = []
        for geom in dataset.index.geometry:
            self.windows.extend(self._tile_windows(geom.bounds))
        self._length = len(self.windows)

    @staticmethod
    def _starts(n: int, size: int, stride: int) -> list[int]:
        if n <= size:
            return [0]
        starts = list(range(0, n - size + 1, stride))
        if starts[-1] != n - size:
            starts.append(n - size)
        return starts

    def _tile_windows(self, bounds: tuple[float, float, float, float]) -> list[tuple[slice, slice]]:
        xmin, ymin, xmax, ymax = bounds
        xres, yres = self.res
        width, height = round((xmax - xmin) / xres), round((ymax - ymin) / yres)
        ph, pw = self.size
        out = []
        for r in self._starts(height, ph, self.stride):
            top = ymax - r * yres
            for c in self._starts(width, pw, self.stride):
                left = xmin + c * xres
                out.append((slice(left, left + pw * xres), slice(top - ph * yres, top)))
        return out

    def __iter__(self) -> Iterator[tuple[slice, slice]]:
        """Yield the windows tile by tile, row by row."""
        yield from self.windows

    def __len__(self) -> int:
        """Number of windows."""
        return self._length
