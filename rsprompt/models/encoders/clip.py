"""Frozen open_clip CLIP towers (image and text) for open-vocabulary segmentation (RPN).

:func:`build_clip` builds an open_clip CLIP model by name, optionally loads a local weights file
(:func:`read_clip_state`: safetensors or ``torch.load(weights_only=True)``; a TorchScript archive
only when the user trusts it, since loading one runs its code), and splits it into two frozen
towers:

- the image tower is open_clip's own ``VisionTransformer`` (``conv1``, ``class_embedding``,
  ``positional_embedding``, ``ln_pre``, ``transformer.resblocks``, ``ln_post``, ``proj``); RPN runs
  its blocks one by one to insert prompt tokens, with :func:`embed_image` for the patch embedding;
- the text tower is a :class:`ClipTextTower` holding the text parts of the CLIP model (token and
  position embeddings, transformer, final norm, projection). CLIP's ``logit_scale`` is not used by
  RPN and is dropped.

OpenAI CLIP weights were trained with QuickGELU. open_clip switches QuickGELU on only for
``-quickgelu`` model names or pretrained *tags*, never for a local file, so :func:`build_clip`
sets it explicitly (``quick_gelu=None`` → :func:`default_quick_gelu`, True for the plain ViT CLIP
names whose paper weights are OpenAI's) and records the choice in :class:`ClipSpec`.

Paper-size models build without weights on the meta device (``device="meta"``; open_clip builds
on the CPU and moves, about 2 s for ViT-B-16). The tokenizer (open_clip's BPE
``SimpleTokenizer``) ships with open_clip and works offline.

Tiny random configurations for tests and demos are registered with open_clip under
:data:`TINY_CLIP_CONFIGS` (e.g. ``"rsprompt-tiny-clip"``), so they load local files through the
same loading path as the real models.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import math
import os
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsprompt.models.weights import sha256_file

#: RPN's released code normalised images with ImageNet statistics (not CLIP's own).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: CLIP's own pretraining statistics (for users who prefer them).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: Small random-initialised CLIP configurations (open_clip config format), for tests and demos.
TINY_CLIP_CONFIGS: dict[str, dict[str, Any]] = {
    "rsprompt-tiny-clip": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 3, "width": 64, "patch_size": 16},
        "text_cfg": {
            "context_length": 16,
            "vocab_size": 49408,
            "width": 32,
            "heads": 4,
            "layers": 2,
        },
    },
}


@dataclass(frozen=True)
class ClipSpec:
    """What was built: recorded in model configs and checkpoints.

    Attributes:
        name: open_clip model name (e.g. ``"ViT-B-16"``).
        img_size: Image size the position embedding was built/resized for.
        patch_size: Patch size of the image tower.
        width: Token width ``D`` of the image tower.
        layers: Number of image transformer blocks.
        embed_dim: Joint image-text embedding width ``E``.
        text_width: Width of the text transformer.
        context_length: Text context length (tokens).
        quick_gelu: Whether the towers use QuickGELU (OpenAI CLIP weights need it).
        weights: Local weights file name (``None`` = random init).
        weights_sha256: SHA-256 of the weights file (``None`` without weights).
        library: Always ``"open_clip"``.
        library_version: open_clip version used to build.
    """

    name: str
    img_size: int
    patch_size: int
    width: int
    layers: int
    embed_dim: int
    text_width: int
    context_length: int
    quick_gelu: bool
    weights: str | None = None
    weights_sha256: str | None = None
    library: str = "open_clip"
    library_version: str = ""

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid ``(H', W')`` at :attr:`img_size`."""
        return (self.img_size // self.patch_size, self.img_size // self.patch_size)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-serialisable)."""
        return asdict(self)


def default_quick_gelu(name: str) -> bool:
    """Whether ``name`` needs QuickGELU by default.

    True for the plain CLIP ViT/ResNet names whose reference weights are OpenAI's (``ViT-B-16``,
    ``ViT-L-14``, ``RN50``…) and for rsprompt's tiny configs; False for names that already encode
    the activation (``-quickgelu``) and for families trained with GELU (SigLIP, EVA, CoCa, ConvNeXt,
    MobileCLIP, ViTamin…). Pass ``quick_gelu`` explicitly for weights trained otherwise (e.g.
    LAION ``ViT-B-16`` weights use GELU).
    """
    low = name.lower()
    if low.endswith("-quickgelu"):
        return False  # the config already has quick_gelu=True
    gelu_families = ("siglip", "eva", "coca", "convnext", "mobileclip", "vitamin", "nllb", "mt5")
    if any(f in low for f in gelu_families):
        return False
    return True


@functools.cache
def register_tiny_configs() -> None:
    """Register :data:`TINY_CLIP_CONFIGS` with open_clip (once per process).

    Uses open_clip's public ``add_model_config`` with JSON files in a temporary directory.
    """
    import open_clip

    tmp = Path(tempfile.mkdtemp(prefix="rsprompt-clip-configs-"))
    for name, cfg in TINY_CLIP_CONFIGS.items():
        (tmp / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp)


@functools.cache
def get_tokenizer(context_length: int):
    """open_clip's BPE tokenizer (offline) for ``context_length`` tokens, cached per length."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


class ClipTextTower(nn.Module):
    """The frozen CLIP text tower: token ids ``M×L`` → text features ``M×E`` (not normalised).

    Holds the text modules of an open_clip ``CLIP`` model (moved, not copied).

    Args:
        clip_model: An open_clip ``CLIP`` model (not ``CustomTextCLIP``).
    """

    def __init__(self, clip_model: nn.Module) -> None:
        super().__init__()
        self.token_embedding = clip_model.token_embedding
        self.positional_embedding = clip_model.positional_embedding
        self.transformer = clip_model.transformer
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.pool_type: str = getattr(clip_model, "text_pool_type", "argmax")
        self.eos_id: int | None = getattr(clip_model, "text_eos_id", None)
        self.context_length: int = int(clip_model.context_length)
        self.register_buffer("attn_mask", clip_model.attn_mask, persistent=False)

    @property
    def output_dim(self) -> int:
        """Width ``E`` of the text features."""
        proj = self.text_projection
        if isinstance(proj, nn.Linear):
            return proj.out_features
        return int(proj.shape[1])

    def forward(self, tokens: Tensor) -> Tensor:
        """Encode token ids ``M×L`` into ``M×E`` features (CLIP's ``encode_text``)."""
        x = self.token_embedding(tokens)
        x = x + self.positional_embedding[: tokens.shape[1]].to(x.dtype)
        mask = self.attn_mask
        if mask is not None:
            mask = mask[: tokens.shape[1], : tokens.shape[1]]
        x = self.transformer(x, attn_mask=mask)
        x = self.ln_final(x)
        if self.pool_type == "argmax":
            pooled = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        elif self.pool_type == "eos" and self.eos_id is not None:
            idx = (tokens == self.eos_id).int().argmax(dim=-1)
            pooled = x[torch.arange(x.shape[0], device=x.device), idx]
        elif self.pool_type == "first":
            pooled = x[:, 0]
        else:
            pooled = x[:, -1]
        proj = self.text_projection
        if proj is None:
            return pooled
        if isinstance(proj, nn.Linear):
            return proj(pooled)
        return pooled @ proj


def build_clip(
    name: str = "ViT-B-16",
    img_size: int | None = None,
    weights: str | Path | None = None,
    quick_gelu: bool | None = None,
    device: str | torch.device | None = None,
    seed: int | None = 0,
    trust_torchscript: bool | None = None,
) -> tuple[nn.Module, ClipTextTower, ClipSpec]:
    """Build frozen open_clip image and text towers.

    Args:
        name: open_clip model name (``"ViT-B-16"``, ``"ViT-L-14"``, ``"ViT-B-16-quickgelu"``… or a
            name from :data:`TINY_CLIP_CONFIGS`). Only plain ViT CLIP models (open_clip's
            ``CLIP`` class with a ``VisionTransformer`` image tower) are supported.
        img_size: Input size; the image position embedding is built for (and pretrained ones
            resized to) ``img_size // patch`` per side (``force_image_size``). ``None`` = the
            config's own size.
        weights: Local weights file (open_clip/OpenAI state dict, ``.bin``/``.pt``/``.safetensors``,
            or an OpenAI TorchScript archive). ``None`` = random init. Nothing is downloaded.
        quick_gelu: Use QuickGELU; ``None`` = :func:`default_quick_gelu`. The name suffix
            ``-quickgelu`` always means True.
        device: ``None`` (CPU), a device, or ``"meta"`` (shapes only, no memory; no weights).
        seed: Seed of the random init (without weights; the caller's RNG state is restored);
            ``None`` = the global RNG.
        trust_torchscript: Allow a TorchScript archive as ``weights`` (OpenAI's original CLIP
            files). Such an archive is a program: loading it runs code it contains, so it is
            refused unless this is True. ``None`` = the environment variable
            ``RSPROMPT_TRUST_TORCHSCRIPT=1`` (the switch for the command line). Never read from a
            checkpoint.

    Returns:
        ``(image_tower, text_tower, spec)``; both towers frozen (``requires_grad=False``, eval).

    Raises:
        ValueError: Unknown model name, unsupported architecture, weights on the meta device, or a
            weights file that is not plain tensors (an untrusted TorchScript archive, a pickle
            with code) or does not fit the model.
        FileNotFoundError: The weights file does not exist.
    """
    import open_clip
    from open_clip.transformer import VisionTransformer

    register_tiny_configs()
    device = torch.device(device) if device is not None else torch.device("cpu")
    if open_clip.get_model_config(name) is None:
        raise ValueError(
            f"unknown open_clip model {name!r}; known CLIP ViT names include ViT-B-16, ViT-B-32, "
            f"ViT-L-14 and {', '.join(TINY_CLIP_CONFIGS)}"
        )
    if quick_gelu is None:
        quick_gelu = default_quick_gelu(name)
    quick_gelu = bool(quick_gelu or name.lower().endswith("-quickgelu"))
    weights_path: Path | None = None
    if weights is not None:
        if device.type == "meta":
            raise ValueError("weights cannot be loaded on the meta device; use device=None/'cpu'")
        weights_path = Path(weights).expanduser()
        if not weights_path.is_file():
            raise FileNotFoundError(f"CLIP weights file not found: {weights_path}")

    kwargs: dict[str, Any] = {"force_quick_gelu": quick_gelu, "device": device}
    if img_size is not None:
        kwargs["force_image_size"] = int(img_size)
    if weights_path is None:
        with torch.random.fork_rng(devices=[]), _no_random_init_warning():
            if seed is not None:
                torch.manual_seed(seed)
            model = open_clip.create_model(name, pretrained=None, pretrained_text=False, **kwargs)
    else:
        with _no_random_init_warning():  # the weights are loaded right below
            model = open_clip.create_model(name, pretrained=None, pretrained_text=False, **kwargs)
        _load_clip_weights(model, weights_path, trust_torchscript)

    if not isinstance(getattr(model, "visual", None), VisionTransformer) or not hasattr(
        model, "token_embedding"
    ):
        raise ValueError(
            f"{name!r} is not a plain open_clip ViT CLIP model (image tower "
            f"{type(getattr(model, 'visual', None)).__name__}); RPN needs open_clip's "
            "VisionTransformer image tower and built-in text transformer"
        )
    visual: nn.Module = model.visual
    text = ClipTextTower(model)
    for tower in (visual, text):
        tower.requires_grad_(False)
        tower.eval()
    patch = int(visual.patch_size[0])
    spec = ClipSpec(
        name=name,
        img_size=int(visual.image_size[0]),
        patch_size=patch,
        width=int(visual.class_embedding.shape[0]),
        layers=len(visual.transformer.resblocks),
        embed_dim=int(visual.output_dim),
        text_width=int(text.token_embedding.weight.shape[1]),
        context_length=text.context_length,
        quick_gelu=quick_gelu,
        weights=weights_path.name if weights_path else None,
        weights_sha256=sha256_file(weights_path) if weights_path else None,
        library_version=str(open_clip.__version__),
    )
    return visual, text, spec


class _DropRandomInitNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _no_random_init_warning() -> Iterator[None]:
    """Silence open_clip's root-logger notice for a random init that was asked for on purpose."""
    flt = _DropRandomInitNotice()
    root = logging.getLogger()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


#: Environment switch that allows TorchScript CLIP archives (see :func:`build_clip`).
TRUST_TORCHSCRIPT_ENV = "RSPROMPT_TRUST_TORCHSCRIPT"


def is_torchscript_archive(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip with serialised code), not plain tensors."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in n or n.endswith("constants.pkl") for n in archive.namelist())


def _trusted(trust: bool | None) -> bool:
    if trust is not None:
        return bool(trust)
    return os.environ.get(TRUST_TORCHSCRIPT_ENV, "").strip().lower() in ("1", "true", "yes")


def read_clip_state(path: Path, trust_torchscript: bool | None = None) -> dict[str, Tensor]:
    """Read a CLIP state dict from a local file without running code from it.

    safetensors files and torch pickles (``torch.load(weights_only=True)``) are read as tensors;
    an OpenAI TorchScript archive only when trusted (see :func:`build_clip`). A nested
    ``state_dict`` and a DataParallel ``module.`` prefix are unwrapped.

    Raises:
        ValueError: The file is an untrusted TorchScript archive, or not plain tensors.
    """
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: Any = load_file(str(path), device="cpu")
    elif is_torchscript_archive(path):
        if not _trusted(trust_torchscript):
            raise ValueError(
                f"CLIP weights {path} are a TorchScript archive: a program whose loading runs the "
                "code it contains, so rsprompt refuses it by default. If you trust its source, set "
                f"{TRUST_TORCHSCRIPT_ENV}=1 for this command (or pass trust_torchscript=True), or "
                "convert it once to a plain state dict (torch.save(torch.jit.load(f).state_dict()))"
            )
        obj = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors come in many types
            raise ValueError(
                f"CLIP weights {path} are not a plain tensor file (refused without running it): "
                f"{str(exc).splitlines()[0]}"
            ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"CLIP weights {path} hold no state dict of tensors")
    if obj and next(iter(obj)).startswith("module."):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj


def _load_clip_weights(model: nn.Module, path: Path, trust_torchscript: bool | None) -> None:
    """Load a local weights file into an open_clip model, strictly.

    The image position embedding is loaded at the file's native grid and resampled bilinearly
    (``align_corners=False``) to the model's grid, as RPN's released code does.
    """
    from open_clip.factory import convert_state_dict

    state = read_clip_state(path, trust_torchscript)
    for key in ("input_resolution", "context_length", "vocab_size"):
        state.pop(key, None)
    # Scripted models also store non-persistent buffers (the causal attention masks).
    state = {k: v for k, v in state.items() if not k.endswith("attn_mask")}
    state = convert_state_dict(model, state)
    _resize_image_pos_embed(state, model.visual)
    ref = model.state_dict()
    state = {k: v.to(ref[k].dtype) if k in ref else v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"CLIP weights {path} do not fit the model: {exc}") from None


def _resize_image_pos_embed(state: dict[str, Tensor], visual: nn.Module) -> None:
    """Bilinearly resample ``visual.positional_embedding`` in ``state`` to ``visual``'s grid."""
    key = "visual.positional_embedding"
    pos = state.get(key)
    if pos is None or pos.shape == visual.positional_embedding.shape:
        return
    n = pos.shape[0] - 1
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{key} has {n} grid tokens, not a square grid")
    state[key] = torch.cat(
        [pos[:1], resample_grid(pos[1:], (side, side), tuple(visual.grid_size))], dim=0
    )


def resample_grid(tokens: Tensor, old: tuple[int, int], new: tuple[int, int]) -> Tensor:
    """Bilinearly resample row-major grid tokens ``(old_h·old_w)×D`` to ``(new_h·new_w)×D``."""
    if tuple(old) == tuple(new):
        return tokens
    dim = tokens.shape[-1]
    grid = tokens.reshape(1, old[0], old[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new, mode="bilinear", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(new[0] * new[1], dim)


#: CLS token forms of :func:`embed_image`.
CLS_FORMS = ("released", "clip")


def embed_image(
    visual: nn.Module, image: Tensor, cls_form: str = "clip"
) -> tuple[Tensor, tuple[int, int]]:
    """Patch-embed ``image`` with an open_clip image tower: ``[CLS, patches]`` tokens.

    The position embedding is resampled bilinearly when the patch grid differs from the one the
    tower was built for (as RPN's released code did).

    Args:
        visual: open_clip ``VisionTransformer``.
        image: ``B×3×H×W`` with ``H`` and ``W`` multiples of the patch size.
        cls_form: ``"clip"``: the CLS input is ``class_embedding + pos[0]`` (CLIP). ``"released"``:
            RPN's released code (from ZegCLIP) puts ``class_embedding`` in the token and also adds
            it to ``pos[0]``, so the CLS input is ``2·class_embedding + pos[0]``.

    Returns:
        ``(tokens B×(1+N)×D after ln_pre, (H', W'))``.

    Raises:
        ValueError: Wrong channel count or a size that is not a multiple of the patch.
    """
    if cls_form not in CLS_FORMS:
        raise ValueError(f"cls_form must be one of {CLS_FORMS}, got {cls_form!r}")
    patch = visual.patch_size
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"CLIP expects a B×3×H×W optical image, got shape {tuple(image.shape)}")
    if image.shape[-2] % patch[0] or image.shape[-1] % patch[1]:
        raise ValueError(
            f"image size {tuple(image.shape[-2:])} is not a multiple of the patch size {patch}"
        )
    x = visual.conv1(image.to(visual.conv1.weight.dtype))
    grid = (int(x.shape[-2]), int(x.shape[-1]))
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1)
    pos = visual.positional_embedding.to(x.dtype)
    first = pos[:1] + cls[0] if cls_form == "released" else pos[:1]
    pos = torch.cat([first, resample_grid(pos[1:], tuple(visual.grid_size), grid)], dim=0)
    x = x + pos
    return visual.ln_pre(x), grid


def clone_config(name: str) -> dict[str, Any] | None:
    """A copy of open_clip's config for ``name`` (after registering the tiny configs)."""
    import open_clip

    register_tiny_configs()
    cfg = open_clip.get_model_config(name)
    return copy.deepcopy(cfg) if cfg is not None else None
