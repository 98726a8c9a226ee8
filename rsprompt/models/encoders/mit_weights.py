"""Real weights for segmentation-models-pytorch's MiT (SegFormer encoders ``mit_b0``…``mit_b5``).

smp's MiT is a native smp encoder, not a timm model: timm's ``pretrained_cfg_overlay`` does not
apply, and smp's own weights download from a hub at run time. rsprompt therefore builds the MiT
with ``weights=None`` and loads a LOCAL file here, strictly.

Accepted checkpoint layouts (detected from the keys):

* **SegFormer / mmseg 0.x** (NVlabs' released ``segformer.b*.*.pth``, e.g. the ADE20K-finetuned
  SegFormer-B5 DPLNet starts from): keys ``backbone.patch_embed1.proj.weight``, …,
  ``decode_head.*``. ``backbone.`` is stripped; ``decode_head.*`` and ``auxiliary_head.*`` are
  dropped.
* **ImageNet MiT** (NVlabs' ``mit_b*.pth``, smp's hub files): keys without prefix plus a
  classifier ``head.*``, which is dropped.
* **mmseg 1.x** (OpenMMLab's model-zoo SegFormer files, after mmseg's ``mit2mmseg`` conversion):
  ``backbone.layers.{s}.0.projection.*`` (patch embedding), ``backbone.layers.{s}.1.{j}.*``
  (blocks: ``attn.attn.in_proj_*`` = the query rows then the key/value rows, ``attn.attn.out_proj``,
  ``ffn.layers.0/1/4`` = ``fc1`` (1×1 conv) / depth-wise conv / ``fc2`` (1×1 conv)) and
  ``backbone.layers.{s}.2.*`` (stage norm). These are mapped back onto smp's names (the fused
  ``in_proj`` is split into ``q`` and ``kv``, the 1×1 convs become linear weights).
* Any of the above wrapped in ``{"state_dict": …}`` / ``{"model": …}`` (mmseg/mmcv files are)
  or prefixed ``module.`` (DataParallel).

Everything left must match smp's MiT key for key and shape for shape: the load is
``strict=True``, and a mismatch raises a :class:`ValueError` that lists the missing, unexpected
and wrongly shaped keys.

Example:
    >>> from segmentation_models_pytorch.encoders import get_encoder  # doctest: +SKIP
    >>> mit = get_encoder("mit_b5", weights=None)  # doctest: +SKIP
    >>> info = load_mit_weights(mit, "segformer.b5.640x640.ade.160k.pth")  # doctest: +SKIP
    >>> info["dropped"][:1]  # doctest: +SKIP
    ['decode_head.conv_seg.weight']
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["convert_mit_state_dict", "load_mit_weights", "read_state_dict"]

#: Top-level prefixes of keys that belong to segmentation/classification heads, never the encoder.
DROPPED_PREFIXES = ("decode_head.", "auxiliary_head.", "head.")
#: Wrapper keys under which training frameworks nest the weights.
NESTING_KEYS = ("state_dict", "model", "module")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from a local file onto the CPU.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)`` (no arbitrary code runs). A checkpoint that nests its
    weights under ``state_dict``, ``model`` or ``module`` is unwrapped; non-tensor entries (e.g.
    mmcv's ``meta``) are ignored.

    Args:
        path: Local weights file.

    Returns:
        The name → tensor mapping.

    Raises:
        FileNotFoundError: If ``path`` is not a file.
        ValueError: If the file holds no tensors.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"MiT weights file not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(p), device="cpu"))
    try:
        obj: Any = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors come in many types
        raise ValueError(
            f"could not read {p} as a torch state dict with weights_only=True: {exc}"
        ) from exc
    for key in NESTING_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{p} does not hold a state dict (got {type(obj).__name__})")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ValueError(f"{p} holds no tensors")
    return tensors


def convert_mit_state_dict(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Map a SegFormer/mmseg or ImageNet MiT state dict onto smp's MiT key layout.

    Strips ``module.`` and ``backbone.`` prefixes and drops head keys (``decode_head.*``,
    ``auxiliary_head.*``, ``head.*``). When the file has ``backbone.`` keys, every other key
    (e.g. a SegFormer decode head) is dropped too. mmseg 1.x keys (``layers.…``) are renamed.

    Args:
        state: The checkpoint's tensors.

    Returns:
        ``(converted, dropped)``: the encoder tensors under smp's names, and the original names of
        the keys that were dropped.
    """
    keys = [k.removeprefix("module.") for k in state]
    has_backbone = any(k.startswith("backbone.") for k in keys)
    converted: dict[str, Tensor] = {}
    dropped: list[str] = []
    for original, value in state.items():
        key = original.removeprefix("module.")
        if has_backbone:
            if not key.startswith("backbone."):
                dropped.append(original)
                continue
            key = key.removeprefix("backbone.")
        if key.startswith(DROPPED_PREFIXES):
            dropped.append(original)
            continue
        converted[key] = value
    if any(k.startswith("layers.") for k in converted):
        converted = _from_mmseg_layout(converted)
    return converted, dropped


_MMSEG_FFN = {"0": "mlp.fc1", "1": "mlp.dwconv.dwconv", "4": "mlp.fc2"}


def _from_mmseg_layout(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map mmseg 1.x MiT keys (``layers.{s}.{0,1,2}…``) onto smp's MiT keys."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] != "layers" or len(parts) < 4:
            out[key] = value  # not an encoder key: reported as unexpected by the strict load
            continue
        stage, part, rest = int(parts[1]) + 1, parts[2], parts[3:]
        if part == "0":  # patch embedding
            name = ".".join(["proj" if rest[0] == "projection" else rest[0], *rest[1:]])
            out[f"patch_embed{stage}.{name}"] = value
        elif part == "2":  # stage norm
            out[f"norm{stage}.{'.'.join(rest)}"] = value
        else:  # part == "1": blocks
            block, sub = rest[0], rest[1:]
            prefix = f"block{stage}.{block}"
            joined = ".".join(sub)
            if joined in ("attn.attn.in_proj_weight", "attn.attn.in_proj_bias"):
                kind = joined.rsplit("_", 1)[1]
                dim = value.shape[0] // 3
                out[f"{prefix}.attn.q.{kind}"] = value[:dim]
                out[f"{prefix}.attn.kv.{kind}"] = value[dim:]
            elif joined.startswith("attn.attn.out_proj."):
                out[f"{prefix}.attn.proj.{sub[-1]}"] = value
            elif sub[:2] == ["ffn", "layers"] and len(sub) == 4 and sub[2] in _MMSEG_FFN:
                name = _MMSEG_FFN[sub[2]]
                if name != "mlp.dwconv.dwconv" and value.ndim == 4:
                    value = value.flatten(1)  # 1×1 conv → linear weight
                out[f"{prefix}.{name}.{sub[3]}"] = value
            else:  # norm1, norm2, attn.sr, attn.norm keep their names
                out[f"{prefix}.{joined}"] = value
    return out


def _format_keys(keys: list[str], limit: int = 10) -> str:
    if not keys:
        return "none"
    more = f" … (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_mit_weights(mit_module: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a local SegFormer/mmseg or ImageNet MiT checkpoint into smp's MiT, strictly.

    Args:
        mit_module: An smp ``MixVisionTransformerEncoder`` (or ``MixVisionTransformer``), built
            with ``weights=None``.
        path: Local checkpoint file (``.pth``/``.pt``/``.bin`` pickle read with
            ``weights_only=True``, or ``.safetensors``).

    Returns:
        A dict with ``path``, ``loaded`` (number of tensors loaded) and ``dropped`` (checkpoint
        keys that were not encoder weights, e.g. ``decode_head.*``).

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the file is not a state dict, or its keys/shapes do not match the MiT
            (the message lists missing, unexpected and wrongly shaped keys — e.g. a B2 file for a
            B5 model, or a file that is not a MiT at all).
    """
    state, dropped = convert_mit_state_dict(read_state_dict(path))
    own = mit_module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or shapes:
        raise ValueError(
            f"{path} does not match this MiT ({type(mit_module).__name__}, "
            f"{len(own)} tensors; the file has {len(state)} after stripping 'backbone.' and "
            f"dropping {len(dropped)} head keys). Missing keys: {_format_keys(missing)}. "
            f"Unexpected keys: {_format_keys(unexpected)}. Shape mismatches: "
            f"{_format_keys(shapes)}. Expected a SegFormer/mmseg checkpoint "
            "('backbone.patch_embed1.proj.weight', … or mmseg 1.x 'backbone.layers.0.0.projection"
            ".weight', …) or an ImageNet MiT checkpoint "
            "('patch_embed1.proj.weight', …, 'head.*') of the same MiT size."
        )
    # nn.Module.load_state_dict directly: smp's encoder overrides it without ``strict``.
    nn.Module.load_state_dict(mit_module, state, strict=True)
    return {"path": str(path), "loaded": len(state), "dropped": dropped}
