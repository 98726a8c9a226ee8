"""Tiny rsprompt checkpoints to export to ONNX (shared by test_export and test_onnx_predict).

Random-encoder models of the five methods at 64-pixel windows, saved as real checkpoints, and
raw stacked windows (8-bit optical values, then heights).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import rsprompt.data.normalize as N
import rsprompt.engine.checkpoint as ckpt_mod
from rsprompt.data.labels import ISPRS_CLASSES
from rsprompt.models import registry

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)
WINDOW = 64
CLASSES = ["impervious surfaces", "building", "low vegetation"]
MINMAX = N.DSMNormalizer("minmax")


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the machine is shared (autouse where a test module imports it)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


#: A 4-block ViT of width 32 on 8-pixel patches (GoPT and SPM).
TINY_VIT = (
    "vit_base_patch16_224",
    {
        "encoder_kwargs": {
            "depth": 4,
            "embed_dim": 32,
            "num_heads": 2,
            "patch_size": 8,
            "img_size": 64,
        }
    },
)
#: method -> (encoder, build kwargs) of a tiny random model.
TINY = {
    "mobanet": (
        "vit_small_patch14_dinov2",
        {"encoder_kwargs": {"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 56}},
    ),
    "dplnet": ("mit_b0", {"encoder_kwargs": {"depths": [1, 1, 1, 1]}}),
    "gopt": TINY_VIT,
    "spm": TINY_VIT,
    "rpn": ("rsprompt-tiny-clip", {"img_size": 64}),
}


def save_tiny(
    path: Path,
    method: str,
    aux: N.DSMNormalizer | N.SARNormalizer | None = MINMAX,
    *,
    aux_channels: int = 1,
    dataset: str | None = "vaihingen",
    classes: list[str] = CLASSES,
    optical: N.OpticalNormalizer | None = None,
    **kwargs,
) -> Path:
    """A checkpoint of a tiny random ``method`` model (DSM min–max unless told otherwise)."""
    encoder, build = TINY[method]
    build = {**build, **kwargs}
    torch.manual_seed(0)
    a = aux_channels if aux is not None or aux_channels else 0
    model = registry.build_model(method, encoder, len(classes), aux_channels=a, **build)
    meta = ckpt_mod.model_meta(
        model,
        weights=None,
        encoder_seed=0,
        model_kwargs=build,
        classes=classes,
        colors=ISPRS_CLASSES.colors[: len(classes)],
        normalization=N.Normalization(optical or N.OpticalNormalizer(), aux),
        aux_kind=None if aux is None else aux.kind,
        patch_size=WINDOW,
        dataset=dataset,
    )
    return ckpt_mod.save_model_checkpoint(path, model, meta)


def raw_window(batch: int, seed: int, lo: float = 240.0, hi: float = 290.0) -> np.ndarray:
    """Raw ``batch×4×64×64``: 8-bit optical values, then heights in ``[lo, hi]``."""
    rng = np.random.default_rng(seed)
    opt = rng.integers(0, 256, (batch, 3, WINDOW, WINDOW)).astype(np.float32)
    dsm = (lo + (hi - lo) * rng.random((batch, 1, WINDOW, WINDOW))).astype(np.float32)
    return np.concatenate([opt, dsm], 1)
