"""The frozen-encoder interface every method builds on.

A :class:`FrozenEncoder` wraps a pretrained backbone (timm ViT/DINOv2, timm Swin, smp MiT, timm
CNNs) and exposes it as a *staged* encoder, the view every prompt/adapter method needs:

    image ──stem──▶ embedded ──begin──▶ state ──stage 0──▶ state ──stage 1──▶ … ──stage S−1──▶
                                           │ stage_map / with_stage_map   │ readout(i) → tap i

- :attr:`FrozenEncoder.stem` is the patch/stem embedding module (ViT patch embedding, MiT/Swin
  first patch embedding, CNN stem conv + BN); a method may deep-copy it to embed an aux modality.
- :meth:`FrozenEncoder.begin` turns a stem output into the running state (ViT: prepend the cls
  token, add the (interpolated) position embedding).
- :meth:`FrozenEncoder.run_stage` runs the frozen modules of one stage; for transformers
  :meth:`FrozenEncoder.stage_modules` lists the blocks of a stage.
- :meth:`FrozenEncoder.stage_map` and :meth:`FrozenEncoder.with_stage_map` read and replace the
  spatial features of a state as a ``B×C×H×W`` map (prefix tokens such as the ViT cls token are
  left untouched), so adapters can act on stage inputs of any family.
- :meth:`FrozenEncoder.readout` turns the state after stage ``i`` into tap ``i`` (``B×C×H×W``;
  ViT taps pass the frozen final norm — read-out only, the running sequence is not normalised).
- :attr:`FrozenEncoder.widths` / :attr:`FrozenEncoder.in_widths` / :attr:`FrozenEncoder.strides`
  give the channels of each tap, the channels of each stage input and the tap strides.
- :attr:`FrozenEncoder.mean` / :attr:`FrozenEncoder.std` are the optical normalisation statistics
  of the weights' pretraining; :attr:`FrozenEncoder.weights_sha256` fingerprints the weights file.

Encoders are frozen by construction: every parameter has ``requires_grad=False`` and the module
stays in eval mode (``train(True)`` is ignored), unless :attr:`FrozenEncoder.stochastic_depth` is
set, in which case dropout/drop-path follow the training mode while batch norms stay in eval mode.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class EncoderState:
    """The running representation between stages.

    Attributes:
        x: The encoder-native tensor (ViT: tokens ``B×(P+N)×D`` incl. ``P`` prefix tokens; CNN and
            MiT: ``B×C×H×W``; Swin: ``B×H×W×C``).
        hw: The spatial grid ``(H, W)`` of the features.
    """

    x: Tensor
    hw: tuple[int, int]


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Run a block under ``torch.manual_seed(seed)`` without touching the caller's RNG state."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class FrozenEncoder(nn.Module):
    """Base class of the staged frozen encoders (see the module docstring).

    Subclasses set the attributes below in ``__init__`` and call :meth:`_finish` at its end.

    Attributes:
        name: Library model name (e.g. ``"vit_large_patch14_dinov2"``, ``"mit_b5"``).
        library: ``"timm"`` or ``"smp"``.
        family: ``"vit"``, ``"swin"``, ``"mit"`` or ``"cnn"``.
        in_chans: Channels the stem takes.
        widths: Channels of each tap (stage output).
        in_widths: Channels of each stage input.
        strides: Stride of each tap w.r.t. the input image.
        pad_multiple: Inputs whose sides are multiples of this run without internal padding
            (ViT: the patch size; others: the largest stride).
        mean, std: Optical normalisation of the pretraining (per channel, for 0–1 inputs).
        weights: What the weights came from (a file path, a hub name, or ``None`` = random init).
        weights_sha256: sha256 of the weights file (``None`` without a file).
        encoder_seed: Seed of the random init when ``weights`` is ``None``.
    """

    family: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        self.name = ""
        self.library = ""
        self.in_chans = 3
        self.widths: tuple[int, ...] = ()
        self.in_widths: tuple[int, ...] = ()
        self.strides: tuple[int, ...] = ()
        self.pad_multiple = 1
        self.mean: tuple[float, ...] = IMAGENET_MEAN
        self.std: tuple[float, ...] = IMAGENET_STD
        self.weights: str | None = None
        self.weights_sha256: str | None = None
        self.encoder_seed: int | None = None
        self.stochastic_depth = False

    # ------------------------------------------------------------------ freezing
    def _finish(self) -> None:
        """Freeze: no gradients, eval mode."""
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> FrozenEncoder:
        """Stay in eval mode unless :attr:`stochastic_depth`; batch norms are always in eval."""
        super().train(bool(mode) and self.stochastic_depth)
        for m in self.modules():
            if isinstance(m, _BatchNorm):
                m.eval()
        return self

    # ------------------------------------------------------------------ description
    @property
    def num_stages(self) -> int:
        """Number of stages (= taps)."""
        return len(self.widths)

    def describe(self) -> dict[str, Any]:
        """What a checkpoint records about its encoder."""
        return {
            "library": self.library,
            "name": self.name,
            "family": self.family,
            "weights": self.weights,
            "weights_sha256": self.weights_sha256,
            "encoder_seed": self.encoder_seed,
            "mean": list(self.mean),
            "std": list(self.std),
            "widths": list(self.widths),
            "in_widths": list(self.in_widths),
            "strides": list(self.strides),
            **self._extra_description(),
        }

    def _extra_description(self) -> dict[str, Any]:
        return {}

    def extra_repr(self) -> str:  # noqa: D102
        return f"name={self.name!r}, widths={self.widths}, strides={self.strides}"

    # ------------------------------------------------------------------ staged interface
    @property
    def stem(self) -> nn.Module:
        """The stem / first patch-embedding module (image → embedded)."""
        raise NotImplementedError

    def embed(self, image: Tensor) -> Tensor:
        """Run the frozen stem on ``image`` (``B×in_chans×H×W``)."""
        return self.stem(image)

    def begin(self, embedded: Tensor) -> EncoderState:
        """Turn a stem output (from :attr:`stem` or a copy of it) into the stage-0 input state."""
        raise NotImplementedError

    def stage_modules(self, index: int) -> list[nn.Module]:
        """The frozen modules of stage ``index`` (for transformers: its blocks), in order."""
        raise NotImplementedError

    def run_stage(self, index: int, state: EncoderState) -> EncoderState:
        """Run the frozen stage ``index`` on ``state``."""
        raise NotImplementedError

    def stage_map(self, state: EncoderState) -> Tensor:
        """The spatial features of ``state`` as ``B×C×H×W`` (prefix tokens excluded)."""
        raise NotImplementedError

    def with_stage_map(self, state: EncoderState, fmap: Tensor) -> EncoderState:
        """``state`` with its spatial features replaced by ``fmap`` (``B×C×H×W``)."""
        raise NotImplementedError

    def readout(self, index: int, state: EncoderState) -> Tensor:
        """Tap ``index`` (``B×widths[index]×H×W``) from the state after stage ``index``."""
        return self.stage_map(state)

    def forward(self, image: Tensor) -> list[Tensor]:
        """Plain frozen features: the list of taps, one ``B×C×H×W`` map per stage."""
        state = self.begin(self.embed(image))
        taps = []
        for i in range(self.num_stages):
            state = self.run_stage(i, state)
            taps.append(self.readout(i, state))
        return taps

    # ------------------------------------------------------------------ helpers
    def stem_copy(self) -> nn.Module:
        """A trainable deep copy of :attr:`stem` (initialised from the frozen weights)."""
        import copy

        stem = copy.deepcopy(self.stem)
        stem.requires_grad_(True)
        stem.train(self.training)
        return stem


def default_taps(depth: int, num_stages: int = 4) -> list[int]:
    """Indices of the last block of ``num_stages`` equal groups of ``depth`` blocks.

    ``default_taps(24) == [5, 11, 17, 23]``; ``default_taps(12) == [2, 5, 8, 11]``.
    """
    import math

    return [max(0, math.ceil((i + 1) * depth / num_stages) - 1) for i in range(num_stages)]


def check_taps(taps: Sequence[int], depth: int) -> list[int]:
    """Validate stage taps (strictly increasing block indices within ``depth``)."""
    taps = [int(t) for t in taps]
    if not taps:
        raise ValueError("taps must name at least one block index")
    if any(t < 0 or t >= depth for t in taps):
        raise ValueError(f"taps {taps} out of range for an encoder of {depth} blocks (0-based)")
    if any(b < a for a, b in itertools.pairwise(taps)):
        raise ValueError(f"taps {taps} must be non-decreasing block indices")
    return taps
