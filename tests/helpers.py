"""Helpers shared by several test modules (import as ``from helpers import …``).

- :func:`load_make` / :func:`make_fixture_folder`: the fixture-folder writers in
  ``tests/data/<dataset>/make.py`` (official layouts of Vaihingen, Potsdam, WHU-OPT-SAR);
- :func:`read_raster` / :func:`write_plain_gtiff`: read a raster's bands; write an array as a
  GeoTIFF without georeferencing (as the ISPRS files are distributed);
- :func:`one_torch_thread`: run with one torch thread (for a per-module autouse fixture);
- :func:`miou`: mean IoU over the classes present in a prediction or its target;
- :func:`toy_batch` / :func:`train_on_toy_batches`: a batch where only the DSM tells two classes
  apart, and a short training run on such batches that scores the model with and without DSM;
- :func:`skip_unless_required`: skip for a missing resource, or fail where CI requires it.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window

DATA = Path(__file__).resolve().parent / "data"


def load_make(name: str) -> ModuleType:
    """The module ``tests/data/<name>/make.py`` (loaded by path: the three share a basename)."""
    spec = importlib.util.spec_from_file_location(f"make_{name}", DATA / name / "make.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_fixture_folder(dataset: str, root: Path) -> Path:
    """Write ``dataset``'s fixture folder (its ``make.py`` defaults) to ``root/dataset``."""
    load_make(dataset).make(root / dataset)
    return root / dataset


def read_raster(path: Path, window: Window | None = None) -> np.ndarray:
    """All bands of the raster at ``path`` (``C×H×W``), or of ``window`` of it."""
    with rasterio.open(path) as src:
        return src.read(window=window)


def write_plain_gtiff(path: Path, data: np.ndarray) -> None:
    """Write ``data`` (``C×H×W``) as a GeoTIFF with no CRS and no transform."""
    count, height, width = data.shape
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=count, dtype=data.dtype
    ) as dst:
        dst.write(data)


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run the block with one torch thread: on a shared 2-core machine, 2 threads thrash."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def miou(pred: torch.Tensor, target: torch.Tensor, k: int) -> float:
    """Mean IoU over the classes ``0..k-1`` present in ``pred`` or ``target``."""
    ious = []
    for c in range(k):
        union = ((pred == c) | (target == c)).sum().item()
        if union:
            ious.append(((pred == c) & (target == c)).sum().item() / union)
    return sum(ious) / len(ious)


def toy_batch(n: int, seed: int, size: int = 64) -> tuple[torch.Tensor, ...]:
    """Roofs and roads share a colour; only the DSM tells them apart.

    Returns:
        ``(image, dsm, labels)``: normalised ``n×3×size×size`` image, ``n×1×size×size`` DSM
        (1 on roofs, 0 elsewhere, plus noise) and ``n×size×size`` labels (0 grass, 1 roof,
        2 road).
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        for _ in range(4):
            c = int(torch.randint(1, 3, (1,), generator=g))
            y0, x0 = torch.randint(0, size - 16, (2,), generator=g).tolist()
            hh, ww = torch.randint(12, 32, (2,), generator=g).tolist()
            labels[i, y0 : y0 + hh, x0 : x0 + ww] = c
    colours = torch.tensor([[0.2, 0.6, 0.2], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]])
    heights = torch.tensor([0.0, 1.0, 0.0])
    image = colours[labels].permute(0, 3, 1, 2) + 0.1 * torch.randn(n, 3, size, size, generator=g)
    dsm = heights[labels][:, None] + 0.1 * torch.randn(n, 1, size, size, generator=g)
    return (image - 0.5) / 0.25, dsm, labels


def train_on_toy_batches(
    model: torch.nn.Module, steps: int = 40, lr: float = 3e-3
) -> tuple[list[float], float, float]:
    """Train ``model``'s trainable parameters on :func:`toy_batch` batches of 4 (AdamW).

    Returns:
        ``(losses, with_dsm, without)``: the training losses, then the mIoU (3 classes) on 8
        held-out samples with the DSM and without it (``aux=None``).
    """
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for step in range(steps):
        image, dsm, labels = toy_batch(4, seed=100 + step)
        loss = model.compute_loss(model(image, dsm), labels)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    image, dsm, labels = toy_batch(8, seed=1)
    with torch.no_grad():
        with_dsm = miou(model(image, dsm).argmax(1), labels, 3)
        without = miou(model(image, None).argmax(1), labels, 3)
    return losses, with_dsm, without


def skip_unless_required(reason: str, env_var: str) -> NoReturn:
    """Skip the test for ``reason``, or fail it where ``env_var=1`` says it must run (CI)."""
    if os.environ.get(env_var) == "1":
        pytest.fail(f"{reason}; {env_var}=1 requires it")
    pytest.skip(reason)


def save_dsm_checkpoint(path: Path, model: torch.nn.Module, patch_size: int) -> Path:
    """Save ``model`` as an rsprompt checkpoint of ISPRS classes with a DSM (min–max scaled).

    The tiny-model checkpoints of the predict tests; the caller registers the model's method.
    """
    import rsprompt.data.normalize as normalize
    import rsprompt.engine.checkpoint as ckpt_mod
    from rsprompt.data.labels import ISPRS_CLASSES

    norm = normalize.Normalization(normalize.OpticalNormalizer(), normalize.DSMNormalizer("minmax"))
    meta = ckpt_mod.model_meta(
        model,
        weights=None,
        classes=ISPRS_CLASSES.names,
        colors=ISPRS_CLASSES.colors,
        normalization=norm,
        aux_kind="dsm",
        patch_size=patch_size,
    )
    ckpt_mod.save_model_checkpoint(path, model, meta)
    return path
