"""Load the weights the authors' released code saved into rsprompt models (MoBaNet, DPLNet, RPN).

The released code of each method saves its whole ``nn.Module`` state dict: the frozen encoder,
the trainable prompts/adapters and the decoder, under the released module names. This module maps
those names onto rsprompt's, one model key at a time, from the module structure of the released
code (``docs/convert.md`` lists every rule and what could not be checked against a real file):

- **MoBaNet** (``Net`` of the released repository, DINOv2 encoder): the DINOv2 trunk in Meta's
  layout under ``image_encoder.backbone.*`` (``blocks.{i}`` or chunked ``blocks.{c}.{i}``,
  ``ls1.gamma``, SwiGLU ``mlp.w12``/``mlp.w3`` → timm's ``mlp.fc1``/``mlp.fc2``; ``mask_token``
  is not used by MoBaNet and dropped), ``image_encoder.extra_patch_embed``,
  ``image_encoder.peft_cpia_blocks.{i}`` (``D_fc1``/``D_fc2``/``P_fc2``/``U_fc1``, ``tfts_*``),
  ``image_encoder.peft_dgfm_blocks.{i}`` (``rgb_reduce``, ``dsm_reduce``, ``gate_net.{0,1,3}``),
  ``image_encoder.peft_fuse_norms.{i}``, ``image_encoder.dual_proj_layers.{i}``, ``decoder.*``
  (UPerNet: ``ppm.bottleneck``, ``fpn_bottleneck``, ``classifier.1.0``) and the training-only
  ``aux_head_rgb``/``aux_head_dsm``.
- **DPLNet** (the RGB-D ``DPLNet``): ``rgb.*`` (the prompted MiT; per block ``norm_prompt`` and
  ``attn.{q,kv,k,v,proj}_prompt`` form rsprompt's MFA, the rest is the frozen MiT; the unused
  ADE20K head ``rgb.head.*`` inside it is dropped), ``patch_embed{s}`` (aux embeddings),
  ``ada{s}`` (MPG), ``learnable_prompt``, ``head.*`` (SegFormer head) and ``conv1`` (final conv).
- **RPN** (mmseg ``CrossPromptCLIP``): ``backbone.*`` (CLIP image tower + deep VPT
  ``deep_prompt_embeddings``, ``prompt_proj``, ``prompt_norm``), ``text_encoder.*``,
  ``decode_head.*`` (LPM head: ``vis_proj_1``, ``vis_norm_1``, ``cls_proj``, ``cls_proj_1``,
  ``tex_norm_1``) and the segmentor-level ``prompt_proj`` (the relationship matrix ``h``); the
  segmentor-level ``prompt_norm`` is never used by the released forward and is dropped.

A key that is missing, unexpected or wrongly shaped raises :class:`OfficialStateError` (a
``ValueError``) listing every one of them.

Example:
    >>> state = torch.load("mobanet_vaihingen.pth", weights_only=True)  # doctest: +SKIP
    >>> model = load_official("mobanet", state, "vit_large_patch14_dinov2", 6)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from rsprompt.models.base import SegmentationModel

#: Methods whose released weights can be loaded.
SUPPORTED_METHODS = ("mobanet", "dplnet", "rpn")

#: Encoder names of the released code → rsprompt's (timm/smp/open_clip) names.
ENCODER_ALIASES: dict[str, str] = {
    "dinov2_vits14": "vit_small_patch14_dinov2",
    "dinov2_vitb14": "vit_base_patch14_dinov2",
    "dinov2_vitl14": "vit_large_patch14_dinov2",
    "dinov2_vitg14": "vit_giant_patch14_dinov2",
}

#: RPN's released text prompt (``tokenize(f"a photo of a {c}")``, no synonyms).
RPN_RELEASED_TEMPLATES = ("a photo of a {}",)

#: Model options that fix the shape of a model tensor (named in shape errors).
_SHAPE_HINTS: dict[str, dict[str, str]] = {
    "mobanet": {
        "encoder.model.pos_embed": "img_size (the released code builds DINOv2 at 518)",
        "decoder.classifier.weight": "num_classes",
    },
    "dplnet": {"decoder.classifier.weight": "num_classes", "prompt": "prompt_tokens"},
    "rpn": {
        "vpt": "vpt_tokens (10, or 100 for COCO)",
        "relation_h": "img_size (the released input_resolution)",
        "image_encoder.positional_embedding": "img_size (the released input_resolution)",
    },
}


class OfficialStateError(ValueError):
    """The released state dict does not fit the rsprompt model; the message lists every key."""


@dataclass
class Conversion:
    """A released state dict renamed onto an rsprompt model.

    Attributes:
        state: Tensors under rsprompt's names (every key of the model's state dict).
        sources: rsprompt name → released name.
        ignored: Released keys dropped on purpose (unused by the released forward).
    """

    state: dict[str, Tensor]
    sources: dict[str, str]
    ignored: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- file layouts
def unwrap_state_dict(obj: Any) -> dict[str, Tensor]:
    """The tensor mapping of a loaded file: nested ``state_dict``/``model`` unwrapped.

    mmseg/mmcv files keep the weights under ``state_dict`` (next to ``meta`` and
    ``optimizer``); a ``module.`` prefix on every key (DataParallel) is stripped.

    Raises:
        OfficialStateError: The object holds no mapping of names to tensors.
    """
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not obj:
        raise OfficialStateError("the file holds no state dict (a mapping of names to tensors)")
    bad = sorted(str(k) for k, v in obj.items() if not isinstance(v, Tensor))
    if bad:
        raise OfficialStateError(f"the state dict has {len(bad)} non-tensor entries: {bad}")
    state = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


_CHUNKED_BLOCK = re.compile(r"^(image_encoder\.backbone\.blocks)\.\d+\.(\d+)\.(.+)$")
_SWIGLU = {"mlp.w12.": "mlp.fc1.", "mlp.w3.": "mlp.fc2."}


def _normalise_dinov2(key: str) -> str:
    """Meta's DINOv2 trunk names → the names timm's ``vit_*_dinov2`` uses (same tensors).

    ``blocks.{chunk}.{i}.*`` (``block_chunks > 0``) → ``blocks.{i}.*``; SwiGLU ``mlp.w12`` /
    ``mlp.w3`` (ViT-g) → ``mlp.fc1`` / ``mlp.fc2`` (timm's packed SwiGLU).
    """
    m = _CHUNKED_BLOCK.match(key)
    if m:
        key = f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
    if key.startswith("image_encoder.backbone.blocks."):
        for old, new in _SWIGLU.items():
            key = key.replace(old, new)
    return key


# --------------------------------------------------------------------------- naming rules
def _swap_head(path: str, table: Mapping[str, str]) -> str | None:
    """``path`` with its first dotted component renamed by ``table`` (``None`` if unknown)."""
    head, sep, tail = path.partition(".")
    if head not in table:
        return None
    return table[head] + sep + tail


def _indexed(path: str) -> tuple[int, str]:
    """``"3.rest.of.key"`` → ``(3, "rest.of.key")``."""
    index, _, rest = path.partition(".")
    return int(index), rest


_CPIA = {
    "down_opt": "D_fc1",
    "down_aux": "D_fc2",
    "fuse": "P_fc2",
    "up": "U_fc1",
    "gamma_opt": "tfts_gamma_rgb",
    "beta_opt": "tfts_beta_rgb",
    "gamma_aux": "tfts_gamma_dsm",
    "beta_aux": "tfts_beta_dsm",
}
_DGFM = {
    "reduce_opt": "rgb_reduce",
    "reduce_aux": "dsm_reduce",
    "mix": "gate_net.0",
    "norm": "gate_net.1",
    "gate": "gate_net.3",
}
_UPERNET = {
    "ppm": "ppm",
    "bottleneck": "ppm.bottleneck",
    "lateral_convs": "lateral_convs",
    "fpn_convs": "fpn_convs",
    "fuse": "fpn_bottleneck",
    "classifier": "classifier.1.0",
}
_AUX_HEAD = {"0": "conv", "2": "conv_out.0"}
_AUX_HEAD_NAMES = ("aux_head_rgb", "aux_head_dsm")


def _mobanet_name(key: str, model: SegmentationModel) -> str | None:
    """Released ``Net`` name of a MoBaNet (DINOv2) tensor."""
    top, _, rest = key.partition(".")
    enc = "image_encoder"
    if top == "encoder":
        return f"{enc}.backbone.{rest.removeprefix('model.')}"
    if top == "aux_patch_embed":
        return f"{enc}.extra_patch_embed.{rest}"
    if top == "proj":
        return f"{enc}.dual_proj_layers.{rest}"
    if top in ("cpia", "dgfm"):
        i, sub = _indexed(rest)
        if top == "cpia":
            new = _swap_head(sub, _CPIA)
            return None if new is None else f"{enc}.peft_cpia_blocks.{i}.{new}"
        if sub.startswith("out_norm."):
            return f"{enc}.peft_fuse_norms.{i}.{sub.removeprefix('out_norm.')}"
        new = _swap_head(sub, _DGFM)
        return None if new is None else f"{enc}.peft_dgfm_blocks.{i}.{new}"
    if top == "decoder":
        new = _swap_head(rest, _UPERNET)
        return None if new is None else f"decoder.{new}"
    if top == "aux_heads":
        i, sub = _indexed(rest)
        new = _swap_head(sub, _AUX_HEAD)
        return None if new is None else f"{_AUX_HEAD_NAMES[i]}.{new}"
    return None


_MPG = {"aux_proj": "conv0_0", "optical_proj": "conv0_1", "out_proj": "conv"}
_MFA = {
    "norm": "norm_prompt",
    "kv": "attn.kv_prompt",
    "k": "attn.k_prompt",
    "v": "attn.v_prompt",
    "q": "attn.q_prompt",
    "proj": "attn.proj_prompt",
}
_SEGFORMER_FUSE = {"0": "conv", "1": "bn"}


def _mfa_block(model: SegmentationModel, index: int) -> tuple[int, int]:
    """``(stage 1…4, block j)`` of the ``index``-th MFA (blocks numbered stage by stage)."""
    for stage in range(1, 5):
        depth = len(getattr(model.encoder, f"block{stage}"))
        if index < depth:
            return stage, index
        index -= depth
    raise IndexError(f"MFA index beyond the MiT's blocks: {index}")


def _dplnet_decoder_name(rest: str) -> str | None:
    head, _, sub = rest.partition(".")
    if head == "linear_c":
        i, leaf = _indexed(sub)
        return f"head.linear_c{i + 1}.proj.{leaf}"
    if head == "fuse":
        new = _swap_head(sub, _SEGFORMER_FUSE)
        return None if new is None else f"head.linear_fuse.{new}"
    if head == "pred":
        return f"head.linear_pred.{sub}"
    if head == "classifier":
        return f"conv1.{sub}"
    return None


def _dplnet_name(key: str, model: SegmentationModel) -> str | None:
    """Released RGB-D ``DPLNet`` name of a DPLNet tensor."""
    top, _, rest = key.partition(".")
    if top == "encoder":
        return f"rgb.{rest}"
    if top == "prompt":
        return "learnable_prompt"
    if top == "aux_patch_embed":
        s, sub = _indexed(rest)
        return f"patch_embed{s + 1}.{sub}"
    if top == "mpg":
        s, sub = _indexed(rest)
        new = _swap_head(sub, _MPG)
        return None if new is None else f"ada{s + 1}.{new}"
    if top == "mfa":
        i, sub = _indexed(rest)
        stage, j = _mfa_block(model, i)
        new = _swap_head(sub, _MFA)
        return None if new is None else f"rgb.block{stage}.{j}.{new}"
    if top == "decoder":
        return _dplnet_decoder_name(rest)
    return None


_RPN_TOP = {
    "image_encoder": "backbone",
    "text_encoder": "text_encoder",
    "vpt": "backbone.deep_prompt_embeddings",
    "prompt_proj": "backbone.prompt_proj",
    "prompt_norm": "backbone.prompt_norm",
    "relation_h": "prompt_proj",
}
_LPM = {
    "image_proj": "vis_proj_1",
    "image_norm": "vis_norm_1",
    "text_fuse": "cls_proj",
    "text_proj": "cls_proj_1",
    "text_norm": "tex_norm_1",
}


def _rpn_name(key: str, model: SegmentationModel) -> str | None:
    """Released mmseg ``CrossPromptCLIP`` name of an RPN tensor."""
    if key.startswith("head."):
        new = _swap_head(key.removeprefix("head."), _LPM)
        return None if new is None else f"decode_head.{new}"
    return _swap_head(key, _RPN_TOP)


_NAMERS: dict[str, Callable[[str, SegmentationModel], str | None]] = {
    "mobanet": _mobanet_name,
    "dplnet": _dplnet_name,
    "rpn": _rpn_name,
}


def _ignored_prefixes(method: str, model: SegmentationModel) -> tuple[str, ...]:
    """Released keys dropped on purpose (never used by the released forward)."""
    if method == "mobanet":
        heads = () if getattr(model, "aux_heads", None) is not None else _AUX_HEAD_NAMES
        return ("image_encoder.backbone.mask_token", *(f"{h}." for h in heads))
    if method == "dplnet":
        return ("rgb.head.",)
    return ("prompt_norm.",)


def _to_model_layout(method: str, key: str, value: Tensor, like: Tensor) -> Tensor:
    """Reshape a released tensor whose layout differs (DPLNet's ``1×T×32`` prompt)."""
    if method == "dplnet" and key == "prompt" and value.ndim == 3 and value.shape[0] == 1:
        value = value[0]
    return value.to(like.dtype) if value.is_floating_point() else value


# --------------------------------------------------------------------------- conversion
def official_names(method: str, model: SegmentationModel) -> dict[str, str]:
    """Released name of every tensor of ``model``'s state dict (rsprompt name → released name).

    Raises:
        OfficialStateError: A tensor of the model has no counterpart in the released code.
    """
    namer = _NAMERS[method]
    names: dict[str, str] = {}
    orphans: list[str] = []
    for key in model.state_dict():
        official = namer(key, model)
        if official is None:
            orphans.append(key)
        else:
            names[key] = official
    if orphans:
        raise OfficialStateError(
            f"{method}: {len(orphans)} tensors of this rsprompt model have no counterpart in the "
            f"released code: {orphans}"
        )
    return names


def _optional(key: str) -> bool:
    """Tensors a released file may lack (BatchNorm counters of older PyTorch)."""
    return key.endswith("num_batches_tracked")


def _hinted(method: str, key: str) -> str:
    hint = _SHAPE_HINTS.get(method, {}).get(key)
    return f" [set {hint}]" if hint else ""


def _fit_report(
    method: str, missing: list[str], unexpected: list[str], shapes: list[str]
) -> OfficialStateError:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: {', '.join(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {', '.join(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} wrongly shaped: {', '.join(shapes)}")
    return OfficialStateError(
        f"the released {method} state dict does not fit the rsprompt model; " + "; ".join(parts)
    )


def convert_state_dict(
    method: str, state_dict: Mapping[str, Tensor], model: SegmentationModel
) -> Conversion:
    """Rename a released state dict onto ``model``, checking every key and shape.

    Args:
        method: ``"mobanet"``, ``"dplnet"`` or ``"rpn"``.
        state_dict: Tensors saved by the released code (see :func:`unwrap_state_dict`).
        model: The rsprompt model built for the same configuration.

    Returns:
        The :class:`Conversion` (tensors in the model's dtype).

    Raises:
        OfficialStateError: Missing, unexpected or wrongly shaped keys (all of them listed).
    """
    _check_method(method)
    own = model.state_dict()
    wanted = {official: key for key, official in official_names(method, model).items()}
    ignored_prefixes = _ignored_prefixes(method, model)
    state: dict[str, Tensor] = {}
    sources: dict[str, str] = {}
    ignored, unexpected, shapes, misshaped = [], [], [], set()
    for raw, value in state_dict.items():
        official = _normalise_dinov2(raw) if method == "mobanet" else raw
        key = wanted.get(official)
        if key is None:
            (ignored if official.startswith(ignored_prefixes) else unexpected).append(raw)
            continue
        value = _to_model_layout(method, key, value, own[key])
        if tuple(value.shape) != tuple(own[key].shape):
            misshaped.add(key)
            shapes.append(
                f"{raw} (file {tuple(value.shape)} vs {key} {tuple(own[key].shape)})"
                + _hinted(method, key)
            )
            continue
        state[key], sources[key] = value, raw
    missing = [
        f"{official} (→ {key})"
        for official, key in wanted.items()
        if key not in state and key not in misshaped and not _optional(key)
    ]
    if missing or unexpected or shapes:
        raise _fit_report(method, missing, sorted(unexpected), shapes)
    return Conversion(state, sources, sorted(ignored))


def _check_method(method: str) -> None:
    if method not in SUPPORTED_METHODS:
        raise ValueError(
            f"no released weights layout for method {method!r}; supported: "
            f"{', '.join(SUPPORTED_METHODS)}"
        )


# --------------------------------------------------------------------------- building
def official_model_kwargs(method: str, model_kwargs: Mapping[str, Any] | None = None) -> dict:
    """The build options of an rsprompt model that runs like the released code.

    RPN: the released text prompt ``"a photo of a {}"`` without synonyms, and the released CLS
    form, unless given. MoBaNet and DPLNet: the options as given (rsprompt's defaults are the
    released ones).
    """
    _check_method(method)
    kwargs = dict(model_kwargs or {})
    if method == "rpn":
        kwargs.setdefault("templates", list(RPN_RELEASED_TEMPLATES))
        kwargs.setdefault("synonyms", {})
        kwargs.setdefault("cls_form", "released")
    return kwargs


def resolve_encoder_name(encoder: str) -> str:
    """The rsprompt name of an encoder named as in the released code (``dinov2_vitl14``…)."""
    return ENCODER_ALIASES.get(encoder, encoder)


def _check_structure(method: str, model: SegmentationModel) -> None:
    """Refuse rsprompt configurations the released code cannot have produced."""
    if method == "mobanet":
        enc = model.encoder
        vit = getattr(enc, "family", "") == "vit" and "dinov2" in enc.name.lower()
        if not vit or getattr(enc.model, "reg_token", None) is not None:
            raise ValueError(
                f"the released MoBaNet runs on DINOv2 without registers (dinov2_vit{{s,b,l,g}}14); "
                f"encoder {enc.name!r} has no released weights layout"
            )
    if method == "rpn" and model.aux_channels:
        raise ValueError("the released RPN has no aux modality: build it with aux_channels=0")


def build_official_model(
    method: str, encoder: str, num_classes: int, **model_kwargs: Any
) -> SegmentationModel:
    """Build the (random, untrained) rsprompt model a released state dict is loaded into.

    ``weights`` is always ``None`` (the released file carries the frozen encoder). DPLNet's
    ``fold_kv=True`` is built unfolded (the released layout) and folded by
    :func:`load_official` after loading.
    """
    from rsprompt.models.registry import build_model

    _check_method(method)
    kwargs = official_model_kwargs(method, model_kwargs)
    kwargs.pop("weights", None)
    if method == "dplnet":
        kwargs["fold_kv"] = False
    aux = kwargs.pop("aux_channels", None)
    model = build_model(method, resolve_encoder_name(encoder), num_classes, aux, **kwargs)
    _check_structure(method, model)
    return model


def load_official_with_report(
    method: str,
    state_dict: Mapping[str, Any],
    encoder: str,
    num_classes: int,
    **model_kwargs: Any,
) -> tuple[SegmentationModel, Conversion]:
    """:func:`load_official`, also returning the :class:`Conversion` (e.g. the dropped keys)."""
    state = unwrap_state_dict(state_dict)
    model = build_official_model(method, encoder, num_classes, **model_kwargs)
    conversion = convert_state_dict(method, state, model)
    with torch.no_grad():
        model.load_state_dict(conversion.state, strict=False)
    if method == "dplnet" and model_kwargs.get("fold_kv"):
        model.fold_kv_()
    return model.eval(), conversion


def load_official(
    method: str,
    state_dict: Mapping[str, Any],
    encoder: str,
    num_classes: int,
    **model_kwargs: Any,
) -> SegmentationModel:
    """An rsprompt model (eval mode) holding the weights a released state dict carries.

    Every tensor of the model, frozen encoder included, comes from ``state_dict``.

    Args:
        method: ``"mobanet"``, ``"dplnet"`` or ``"rpn"``.
        state_dict: What the released code saved (nested ``state_dict``/``model`` and a
            ``module.`` prefix are unwrapped).
        encoder: Encoder name (rsprompt's, or the released ``dinov2_vit*14``).
        num_classes: Classes ``K`` (RPN: the number of class names).
        **model_kwargs: Build options of the method (``img_size``, ``vpt_tokens``,
            ``class_names``, ``encoder_kwargs``…; see :func:`official_model_kwargs`).

    Returns:
        The model in eval mode.

    Raises:
        OfficialStateError: Missing, unexpected or wrongly shaped keys (all listed).
        ValueError: An unsupported method or a configuration the released code has no
            layout for.
    """
    return load_official_with_report(method, state_dict, encoder, num_classes, **model_kwargs)[0]


# --------------------------------------------------------------------------- encoder file
#: CLIP's initial logit scale ln(1/0.07): open_clip's CLIP has it, RPN never uses it.
_CLIP_LOGIT_SCALE = math.log(1 / 0.07)


def encoder_weights_state(model: SegmentationModel) -> dict[str, Tensor]:
    """The frozen encoder of ``model`` as the weights file its builder loads.

    MoBaNet: timm's ViT state dict; DPLNet: smp's MiT state dict; RPN: an open_clip CLIP state
    dict (``visual.*`` and the text tower; ``logit_scale``, unused by RPN, set to CLIP's
    initial value). Tensors are contiguous CPU copies.
    """
    method = model.method
    _check_method(method)
    if method == "mobanet":
        state = model.encoder.model.state_dict()
    elif method == "dplnet":
        state = model.encoder.state_dict()
    else:
        state = {f"visual.{k}": v for k, v in model.image_encoder.state_dict().items()}
        state.update(model.text_encoder.state_dict())
        state["logit_scale"] = torch.tensor(_CLIP_LOGIT_SCALE)
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
