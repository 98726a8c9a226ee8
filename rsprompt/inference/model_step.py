"""Stage 3 of prediction, the model step: a batch of windows in, class probabilities out.

:class:`ModelStep` copies a :class:`~rsprompt.inference.source.SourceBatch` to the device (through
pinned memory without blocking on CUDA), pads windows of a scene smaller than the model's window,
runs the model under the chosen precision (autocast), optionally averages over flips (TTA), and
returns float32 softmax probabilities on the host, cropped back to the windows. The first batch
checks the model's class count and output size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rsprompt.data.labels import ClassTable
from rsprompt.engine.precision import autocast
from rsprompt.inference.reader import PredictError
from rsprompt.inference.source import SourceBatch
from rsprompt.inference.windows import Batch


@dataclass
class ScoredBatch:
    """Probabilities of one batch of windows.

    Attributes:
        batch: The windows.
        probs: ``B×K×h×w`` float32 softmax probabilities (host memory, writable).
        valid: ``B×h×w`` bool scene validity.
    """

    batch: Batch
    probs: np.ndarray
    valid: np.ndarray


def forward_probs(
    model: Callable[..., Tensor],
    image: Tensor,
    aux: Tensor | None,
    aux_valid: Tensor | None,
    tta: bool,
    precision: str = "32",
) -> Tensor:
    """Softmax probabilities ``B×K×H×W`` (float32), averaged over flips when ``tta``.

    Only the model runs under ``precision`` (autocast); the softmax and the average are float32.
    """

    def run(dims: tuple[int, ...]) -> Tensor:
        def f(t: Tensor | None) -> Tensor | None:
            return t.flip(dims) if (t is not None and dims) else t

        with autocast(image.device, precision):
            out = model(f(image), aux=f(aux), aux_valid=f(aux_valid))
        if isinstance(out, dict):
            out = out["logits"]
        probs = torch.softmax(out.float(), dim=1)
        return probs.flip(dims) if dims else probs

    if not tta:
        return run(())
    total = run(())
    for dims in ((-1,), (-2,), (-2, -1)):
        total = total + run(dims)
    return total / 4.0


def to_device(array: np.ndarray, device: torch.device, pinned: bool) -> Tensor:
    """A host array on ``device``; through pinned memory without blocking on CUDA."""
    t = torch.from_numpy(array)
    if pinned:
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def pad_to(t: Tensor, h: int, w: int, mode: str) -> Tensor:
    """Pad ``t`` at the bottom and right to ``h × w``.

    ``reflect`` falls back to ``replicate`` when the input is too small to reflect.
    """
    ph, pw = h - t.shape[-2], w - t.shape[-1]
    if ph <= 0 and pw <= 0:
        return t
    if mode == "reflect" and (ph >= t.shape[-2] or pw >= t.shape[-1]):
        mode = "replicate"
    return F.pad(t, (0, max(pw, 0), 0, max(ph, 0)), mode=mode)


@contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """The model in eval mode for the block (training mode restored after it)."""
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        yield
    finally:
        if was_training and hasattr(model, "train"):
            model.train()


class ModelStep:
    """Runs the model on a batch of windows.

    Args:
        model: ``model(image, aux=, aux_valid=)`` returning logits (or ``{"logits": …}``).
        classes: The class table (its size is checked against the model's output).
        device: Torch device (resolved).
        precision: Resolved forward precision (``"32"``, ``"bf16"``, ``"16"``).
        window: Window side the model takes: windows of a scene smaller than that are padded
            to it with ``pad_mode`` and the output is cropped back (``None``: never padded).
        tta: Average over flips.
        pad_mode: ``reflect``, ``replicate`` or ``constant``.
        on_batch: Called with the number of windows after each batch (progress).
    """

    def __init__(
        self,
        model: Callable[..., Tensor],
        classes: ClassTable,
        *,
        device: torch.device,
        precision: str,
        window: int | None = None,
        tta: bool = False,
        pad_mode: str = "reflect",
        on_batch: Callable[[int], Any] | None = None,
    ) -> None:
        self.model, self.classes, self.device, self.precision = model, classes, device, precision
        self.window, self.tta, self.pad_mode = window, tta, pad_mode
        self.pinned = device.type == "cuda"
        self.on_batch = on_batch
        self._checked = False

    def __call__(self, item: SourceBatch) -> ScoredBatch:
        """Probabilities of ``item``'s windows (the model must be in eval/inference mode)."""
        dev, pinned = self.device, self.pinned
        x = to_device(item.image, dev, pinned)
        xa = to_device(item.aux, dev, pinned) if item.aux is not None else None
        xv = None
        if item.aux_valid is not None:
            xv = to_device(item.aux_valid[:, None].astype(np.float32), dev, pinned)
        win_h, win_w = item.image.shape[-2:]
        in_h, in_w = max(self.window or 0, win_h), max(self.window or 0, win_w)
        if (in_h, in_w) != (win_h, win_w):
            x = pad_to(x, in_h, in_w, self.pad_mode)
            if xa is not None:
                xa = pad_to(xa, in_h, in_w, self.pad_mode)
                xv = pad_to(xv, in_h, in_w, "constant")
        probs = forward_probs(self.model, x, xa, xv, self.tta, self.precision)
        probs = probs[..., :win_h, :win_w]
        if not self._checked:
            self._check(probs, (win_h, win_w), (in_h, in_w))
        if self.on_batch is not None:
            self.on_batch(len(item.batch.windows))
        return ScoredBatch(item.batch, probs.cpu().numpy(), item.valid)

    def _check(self, probs: Tensor, window: tuple[int, int], model_input: tuple[int, int]) -> None:
        k = self.classes.num_classes
        if probs.shape[1] != k:
            raise PredictError(
                f"the model outputs {probs.shape[1]} classes but the class "
                f"table has {k} ({', '.join(self.classes.names)})"
            )
        if probs.shape[-2:] != window:
            in_h, in_w = model_input
            raise PredictError(
                f"the model returned {tuple(probs.shape[-2:])} logits for a {in_h}×{in_w} input"
            )
        self._checked = True
