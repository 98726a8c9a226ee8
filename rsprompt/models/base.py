"""The contract every rsprompt model follows.

A model is a frozen pretrained encoder plus small trainable modules (prompts/adapters) and a
decoder. :class:`SegmentationModel` fixes what the rest of rsprompt relies on:

- ``model(image, aux=None, aux_valid=None)`` returns logits ``B×K×H×W`` in eval mode; in training
  mode it returns a dict with ``"logits"`` plus whatever extra outputs the method's loss needs.
  ``aux=None`` means the aux modality is absent; ``aux_valid`` (``B×1×H×W``, 1 = valid) marks
  where it is present. Each method documents what it does with a missing or partial aux.
- ``model.compute_loss(output, target)`` returns a dict of loss terms with the total in ``"loss"``.
- Frozen modules are frozen by construction (``requires_grad=False``) and stay in eval mode when
  the model is put in training mode (unless the method asks otherwise, e.g. DPLNet keeps
  drop-path active as its authors did).
- :meth:`SegmentationModel.parameter_report` counts frozen and trainable parameters per module;
  :meth:`SegmentationModel.adapter_state_dict` holds only the trainable tensors (and the buffers
  of trainable modules): megabytes, never the encoder.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn


def count_parameters(params: Iterable[nn.Parameter]) -> int:
    """Return the number of elements in ``params`` (works on the meta device)."""
    return sum(p.numel() for p in params)


class SegmentationModel(nn.Module):
    """Base class: frozen encoder + trainable prompt/adapter modules + decoder.

    Subclasses assign their frozen backbone(s) to the attributes named in
    :attr:`frozen_modules`, their trainable modules to other attributes, call :meth:`freeze` at
    the end of ``__init__`` and implement :meth:`forward` and :meth:`compute_loss`.

    Args:
        method: Registered method name (e.g. ``"mobanet"``).
        encoder_name: Name of the frozen encoder (library name, e.g. ``"vit_large_patch14_dinov2"``).
        num_classes: Number of output classes ``K``.
        aux_channels: Channels of the aux modality (0 = no aux modality).
    """

    #: Top-level attributes holding frozen modules.
    frozen_modules: ClassVar[tuple[str, ...]] = ("encoder",)
    #: Top-level attributes that make up the decoder (reported as "decoder").
    decoder_modules: ClassVar[tuple[str, ...]] = ("decoder",)
    #: Top-level attributes used in training only (e.g. auxiliary heads); not in inference counts.
    training_only_modules: ClassVar[tuple[str, ...]] = ()
    #: Keep frozen modules in train mode while training (dropout/drop-path active; norms frozen
    #: only through requires_grad). False for almost every method.
    frozen_train_mode: ClassVar[bool] = False

    def __init__(self, method: str, encoder_name: str, num_classes: int, aux_channels: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if aux_channels < 0:
            raise ValueError(f"aux_channels must be >= 0, got {aux_channels}")
        self.method = method
        self.encoder_name = encoder_name
        self.num_classes = num_classes
        self.aux_channels = aux_channels

    # ------------------------------------------------------------------ freezing
    def frozen_children(self) -> list[nn.Module]:
        """Return the frozen modules that exist on this model."""
        return [getattr(self, n) for n in self.frozen_modules if getattr(self, n, None) is not None]

    def freeze(self) -> None:
        """Freeze the frozen modules: no gradients, eval mode."""
        for module in self.frozen_children():
            module.requires_grad_(False)
            module.eval()

    def train(self, mode: bool = True) -> SegmentationModel:
        """Set training mode on trainable modules; frozen modules stay in eval mode."""
        super().train(mode)
        if not self.frozen_train_mode:
            for module in self.frozen_children():
                module.eval()
        return self

    # ------------------------------------------------------------------ interface
    def forward(self, image: Tensor, aux: Tensor | None = None, aux_valid: Tensor | None = None):  # noqa: D102
        raise NotImplementedError

    def compute_loss(self, output: dict[str, Tensor], target: Tensor) -> dict[str, Tensor]:
        """Return the method's loss terms for a training ``output``; the total is ``"loss"``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ parameters
    def _module_name(self, param_name: str) -> str:
        return param_name.split(".", 1)[0]

    def trainable_parameters(self) -> dict[str, int]:
        """Trainable parameter count per top-level module name (sums to the trainable total)."""
        counts: dict[str, int] = {}
        for name, p in self.named_parameters():
            if p.requires_grad:
                key = self._module_name(name)
                counts[key] = counts.get(key, 0) + p.numel()
        return counts

    def parameter_report(self) -> dict[str, Any]:
        """Frozen/trainable parameter counts, as printed by ``rsprompt info``.

        Returns:
            A dict with ``method``, ``encoder``, ``num_classes``, ``aux_channels``, ``frozen``,
            ``trainable``, ``trainable_inference`` (without training-only modules), ``decoder``,
            ``prompt`` (trainable minus decoder minus training-only) and ``modules`` (trainable
            parameters per module; they sum to ``trainable``).
        """
        modules = self.trainable_parameters()
        frozen = count_parameters(p for p in self.parameters() if not p.requires_grad)
        trainable = sum(modules.values())
        training_only = sum(modules.get(n, 0) for n in self.training_only_modules)
        decoder = sum(modules.get(n, 0) for n in self.decoder_modules)
        return {
            "method": self.method,
            "encoder": self.encoder_name,
            "num_classes": self.num_classes,
            "aux_channels": self.aux_channels,
            "frozen": frozen,
            "trainable": trainable,
            "trainable_inference": trainable - training_only,
            "decoder": decoder,
            "prompt": trainable - training_only - decoder,
            "training_only": training_only,
            "modules": modules,
        }

    # ------------------------------------------------------------------ adapter checkpoints
    def _is_frozen_key(self, key: str) -> bool:
        return self._module_name(key) in self.frozen_modules

    def adapter_state_dict(self, include_training_only: bool = False) -> dict[str, Tensor]:
        """State of the trainable modules only (parameters and buffers), never the encoder.

        Args:
            include_training_only: Also include training-only modules (for resuming training).
        """
        skip = set() if include_training_only else set(self.training_only_modules)
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        out: dict[str, Tensor] = {}
        for key, value in self.state_dict().items():
            top = self._module_name(key)
            if top in skip:
                continue
            if self._is_frozen_key(key) and key not in trainable:
                continue
            out[key] = value.detach().clone()
        return out

    def load_adapter_state_dict(self, state: dict[str, Tensor], strict: bool = True) -> None:
        """Load tensors saved by :meth:`adapter_state_dict` (training-only modules optional).

        Raises:
            KeyError: With ``strict``, if a key is unknown or an inference tensor is missing.
        """
        expected = self.adapter_state_dict(include_training_only=True)
        unknown = sorted(set(state) - set(expected))
        needed = {k for k in expected if self._module_name(k) not in self.training_only_modules}
        missing = sorted(needed - set(state))
        if strict and (unknown or missing):
            raise KeyError(
                f"adapter state does not match this {self.method} model: "
                f"unknown keys {unknown[:5]}{'…' if len(unknown) > 5 else ''}, "
                f"missing keys {missing[:5]}{'…' if len(missing) > 5 else ''}"
            )
        own = self.state_dict()
        with torch.no_grad():
            for key, value in state.items():
                if key in own:
                    own[key].copy_(value)
