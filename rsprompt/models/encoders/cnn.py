"""CNNs from timm (ResNet, EfficientNet incl. ``tf_efficientnet_lite0``, …) as staged encoders.

The taps are the last four of timm's ``feature_info`` levels (strides 4/8/16/32 where the model has
them). The model's top-level modules (with the containers that hold taps, such as ``blocks``,
expanded one level) are split into a *stem* — the leading conv + BN (+ act, + max-pool) modules
before the first tap or block container — and four stages, each running the modules after the
previous tap up to its own tap. Modules after the last tap (classifier head, ``conv_head``) are
replaced by ``nn.Identity`` once the weights are loaded: they never run and are not counted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rsprompt.models.encoders._timm import create_timm_model, timm_norm_stats
from rsprompt.models.encoders.base import EncoderState, FrozenEncoder

_BODY_PREFIXES = ("layer", "stages", "blocks", "features", "stage")


def _out_channels(modules: list[nn.Module]) -> int:
    for module in reversed(modules):
        for m in reversed(list(module.modules())):
            for attr in ("num_features", "out_channels"):
                value = getattr(m, attr, None)
                if isinstance(value, int):
                    return value
    raise ValueError("cannot find the output channels of the stem")


class TimmCNNEncoder(FrozenEncoder):
    """A timm CNN behind the staged interface.

    Args:
        name: timm model name, e.g. ``"resnet50"`` or ``"tf_efficientnet_lite0"``.
        weights: ``None`` (random init), a local file (``"package"`` = the EfficientNet-Lite0
            package weights), or a hub alias (see :func:`~rsprompt.models.encoders.build_encoder`).
        num_stages: How many of the last feature levels are taps (default 4).
        device: ``"meta"`` to build without memory, else a device.
        encoder_seed: Seed of the random init when ``weights`` is ``None``.
        drop_path_rate: Stochastic depth (active only when :attr:`stochastic_depth` is set).
        **kwargs: Passed to ``timm.create_model``.
    """

    family = "cnn"

    def __init__(
        self,
        name: str,
        weights: str | Path | None = None,
        *,
        num_stages: int = 4,
        device: str | torch.device | None = None,
        encoder_seed: int | None = 0,
        drop_path_rate: float | None = None,
        img_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        del img_size  # CNNs take any size
        kw: dict[str, Any] = {"num_classes": 0, "global_pool": "", **kwargs}
        if drop_path_rate is not None:
            kw["drop_path_rate"] = drop_path_rate
        model, desc, sha = create_timm_model(
            name, weights, device=device, encoder_seed=encoder_seed, **kw
        )
        info = list(getattr(model, "feature_info", None) or [])
        if len(info) < num_stages:
            raise TypeError(
                f"timm model {name!r} exposes {len(info)} feature levels; {num_stages} are needed"
            )
        taps = info[-num_stages:]
        tap_paths = [t["module"] for t in taps]
        feature_paths = {t["module"] for t in info}
        # Flatten top-level children, expanding the containers that hold taps by one level.
        entries: list[tuple[str, nn.Module]] = []
        for cname, child in model.named_children():
            if any(p.startswith(cname + ".") for p in feature_paths):
                entries.extend((f"{cname}.{k}", m) for k, m in child.named_children())
            else:
                entries.append((cname, child))
        paths = [p for p, _ in entries]
        missing = [p for p in tap_paths if p not in paths]
        if missing:
            raise TypeError(f"cannot locate the feature modules {missing} of {name!r}")
        tap_idx = [paths.index(p) for p in tap_paths]
        stem_end = 0
        while (
            stem_end < tap_idx[0]
            and "." not in paths[stem_end]
            and not paths[stem_end].startswith(_BODY_PREFIXES)
        ):
            stem_end += 1
        if stem_end == 0:
            raise TypeError(f"cannot find a stem in {name!r} (first module {paths[0]!r})")
        self.model = model
        self._entry_paths = paths
        self._stem_paths = paths[:stem_end]
        bounds = [stem_end - 1, *tap_idx]
        self._stage_paths = [paths[bounds[i] + 1 : bounds[i + 1] + 1] for i in range(num_stages)]
        # Drop what runs after the last tap (heads) now that the weights are loaded.
        last_top = tap_paths[-1].split(".")[0]
        names = [n for n, _ in model.named_children()]
        for cname in names[names.index(last_top) + 1 :]:
            setattr(model, cname, nn.Identity())

        self.name, self.library = name, "timm"
        self.weights, self.weights_sha256 = desc, sha
        self.encoder_seed = encoder_seed if weights is None else None
        self.widths = tuple(int(t["num_chs"]) for t in taps)
        self.strides = tuple(int(t["reduction"]) for t in taps)
        stem_out = _out_channels([self._get(p) for p in self._stem_paths])
        self.in_widths = (stem_out, *self.widths[:-1])
        self.pad_multiple = max(self.strides)
        first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        self.in_chans = int(first.in_channels)
        self.mean, self.std = timm_norm_stats(model)
        self._finish()

    def _extra_description(self) -> dict[str, Any]:
        return {"stem": self._stem_paths, "stages": self._stage_paths}

    def _get(self, path: str) -> nn.Module:
        return self.model.get_submodule(path)

    @property
    def stem(self) -> nn.Module:
        """The stem (conv + BN …) as an ``nn.Sequential`` view of the frozen modules."""
        return nn.Sequential(*[self._get(p) for p in self._stem_paths])

    def stage_modules(self, index: int) -> list[nn.Module]:  # noqa: D102
        return [self._get(p) for p in self._stage_paths[index]]

    def begin(self, embedded: Tensor) -> EncoderState:  # noqa: D102
        return EncoderState(embedded, (int(embedded.shape[-2]), int(embedded.shape[-1])))

    def run_stage(self, index: int, state: EncoderState) -> EncoderState:  # noqa: D102
        x = state.x
        for m in self.stage_modules(index):
            x = m(x)
        return EncoderState(x, (int(x.shape[-2]), int(x.shape[-1])))

    def stage_map(self, state: EncoderState) -> Tensor:  # noqa: D102
        return state.x

    def with_stage_map(self, state: EncoderState, fmap: Tensor) -> EncoderState:  # noqa: D102
        return EncoderState(fmap, (int(fmap.shape[-2]), int(fmap.shape[-1])))
