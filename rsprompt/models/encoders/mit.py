"""SegFormer's Mix Transformer (MiT-B0…B5, segmentation-models-pytorch) as a staged encoder.

The stem is the first overlapping patch embedding (7×7/s4 conv + LayerNorm). Stage 0 runs
``block1`` + ``norm1``; stage ``i ≥ 1`` runs ``patch_embed{i+1}`` (3×3/s2) + ``block{i+1}`` +
``norm{i+1}``, so a stage input has the width of the previous stage's output. States and taps are
``B×C×H×W`` maps at strides 4/8/16/32. smp's MiT cannot be built on the meta device: it is always
built on the CPU (random init seeded by ``encoder_seed``; B5 takes about 3 s). Real weights are
loaded with :func:`rsprompt.models.encoders.mit_weights.load_mit_weights` (SegFormer/mmseg or
ImageNet MiT checkpoints). Normalisation: ImageNet statistics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rsprompt.models.encoders.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EncoderState,
    FrozenEncoder,
    seeded,
)
from rsprompt.models.weights import HUB_ALIASES, check_weights_file, hub_download_error, sha256_file

MIT_NAMES = tuple(f"mit_b{i}" for i in range(6))


class SmpMiTEncoder(FrozenEncoder):
    """An smp ``MixVisionTransformerEncoder`` behind the staged interface.

    Args:
        name: ``"mit_b0"`` … ``"mit_b5"``.
        weights: ``None`` (random init) or a local checkpoint file; a hub alias tries smp's download.
        device: Device to move the model to (``"meta"`` is not supported by smp's MiT and builds on
            the CPU instead).
        encoder_seed: Seed of the random init when ``weights`` is ``None``.
        drop_path_rate: Stochastic depth of the frozen blocks (smp's default 0.1; active only when
            :attr:`stochastic_depth` is set, as DPLNet's authors trained).
        **kwargs: Overrides of smp's MiT parameters (e.g. ``depths=[1, 1, 1, 1]`` for tests).
    """

    family = "mit"

    def __init__(
        self,
        name: str,
        weights: str | Path | None = None,
        *,
        device: str | torch.device | None = None,
        encoder_seed: int | None = 0,
        drop_path_rate: float | None = None,
        img_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        from segmentation_models_pytorch.encoders.mix_transformer import mix_transformer_encoders

        if name not in mix_transformer_encoders:
            raise ValueError(f"unknown MiT {name!r}; available: {', '.join(MIT_NAMES)}")
        entry = mix_transformer_encoders[name]
        params = dict(entry["params"])
        params.update(kwargs)
        if drop_path_rate is not None:
            params["drop_path_rate"] = drop_path_rate
        if img_size is not None:
            params["img_size"] = img_size
        with seeded(encoder_seed):
            model = entry["encoder"](**params)
        self.model = model
        self.name, self.library = name, "smp"
        self.weights, self.weights_sha256 = None, None
        self.encoder_seed = encoder_seed
        if weights is not None:
            if str(weights) in HUB_ALIASES:
                self._load_from_hub(name)
            else:
                path = check_weights_file(weights)
                try:
                    from rsprompt.models.encoders.mit_weights import load_mit_weights
                except ImportError as exc:
                    raise NotImplementedError(
                        "loading MiT weights needs rsprompt.models.encoders.mit_weights."
                        "load_mit_weights(module, path), which is not available yet"
                    ) from exc
                load_mit_weights(model, path)
                self.weights, self.weights_sha256 = str(path), sha256_file(path)
            self.encoder_seed = None
        dims = [int(d) for d in params["embed_dims"]]
        self.widths = tuple(dims)
        self.in_widths = (dims[0], *dims[:-1])
        self.strides = (4, 8, 16, 32)
        self.pad_multiple = 32
        self.in_chans = int(model.patch_embed1.proj.in_channels)
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        if device is not None and torch.device(device).type != "meta":
            self.to(device)
        self._finish()

    def _load_from_hub(self, name: str) -> None:
        try:
            from segmentation_models_pytorch.encoders import get_encoder

            loaded = get_encoder(name, weights="imagenet")
            self.model.load_state_dict(loaded.state_dict())
        except Exception as exc:
            raise RuntimeError(
                hub_download_error(name, "segmentation-models-pytorch", exc)
            ) from exc
        self.weights = f"hub:smp:{name}.imagenet"

    @property
    def stem(self) -> nn.Module:  # noqa: D102
        return self.model.patch_embed1

    @property
    def patch_embeds(self) -> list[nn.Module]:
        """The four overlapping patch embeddings (``patch_embed1`` is the stem)."""
        m = self.model
        return [m.patch_embed1, m.patch_embed2, m.patch_embed3, m.patch_embed4]

    @property
    def blocks(self) -> list[nn.Sequential]:
        """The blocks of each stage."""
        m = self.model
        return [m.block1, m.block2, m.block3, m.block4]

    @property
    def norms(self) -> list[nn.Module]:
        """The LayerNorm closing each stage."""
        m = self.model
        return [m.norm1, m.norm2, m.norm3, m.norm4]

    def stage_modules(self, index: int) -> list[nn.Module]:
        """Patch embedding (stages ≥ 1), blocks and norm of stage ``index``."""
        head = [] if index == 0 else [self.patch_embeds[index]]
        return [*head, *self.blocks[index], self.norms[index]]

    def begin(self, embedded: Tensor) -> EncoderState:  # noqa: D102
        return EncoderState(embedded, (int(embedded.shape[-2]), int(embedded.shape[-1])))

    def run_stage(self, index: int, state: EncoderState) -> EncoderState:  # noqa: D102
        x = state.x
        if index > 0:
            x = self.patch_embeds[index](x)
        x = self.blocks[index](x)
        x = self.norms[index](x).contiguous()
        return EncoderState(x, (int(x.shape[-2]), int(x.shape[-1])))

    def stage_map(self, state: EncoderState) -> Tensor:  # noqa: D102
        return state.x

    def with_stage_map(self, state: EncoderState, fmap: Tensor) -> EncoderState:  # noqa: D102
        return EncoderState(fmap, (int(fmap.shape[-2]), int(fmap.shape[-1])))
