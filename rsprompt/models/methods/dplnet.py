"""DPLNet: dual-prompt learning on a frozen SegFormer MiT (arXiv 2312.00360).

Implements ``docs/methods/dplnet.md`` on segmentation-models-pytorch's ``MixVisionTransformer``
(``mit_b0`` … ``mit_b5``; the paper configuration is MiT-B5 from the ADE20K-finetuned SegFormer-B5
checkpoint). The MiT is frozen and its code is neither edited nor copied: DPLNet drives it stage by
stage, calling its own submodules (``patch_embed{i}``, every block's ``norm1``/``attn``/
``drop_path``/``norm2``/``mlp``, ``norm{i}``), and reads each block's frozen query projection
``attn.q`` through a temporary forward hook while the frozen attention runs.

Trainable modules (top-level names, as in the parameter table):

* ``aux_patch_embed`` — a new, randomly initialised copy of the four overlapping patch embeddings
  (7×7/s4 ``A'→C1``, then 3×3/s2 ``C1→C2``, ``C2→C3``, ``C3→C4``, each + LayerNorm). Stage 1 embeds
  the aux image; stage ``k ≥ 2`` embeds the PROMPT MAP ``P_{k−1}`` of the previous stage.
* ``mpg`` — the multimodal prompt generator of every stage (ratio 4, purely affine):
  ``P_i = Linear(C/4→C)(Linear(C→C/4)(A_i) + Linear(C→C/4)(X_i))``; ``X_i + P_i`` enters the
  frozen blocks of stage ``i``.
* ``mfa`` — the multimodal feature adapter inside EVERY frozen block (per-block LayerNorm(32) and
  projections, ``r = C/32``): with ``q`` the frozen query projection of ``LN1(x)``,
  ``out_p = Linear(r→C)(softmax(Q_p K_pᵀ · (C/h)^−½) V_p)`` where ``Q_p = Linear(C→r)(q)`` and
  ``K_p``/``V_p`` come from the shared prompt through ``Linear(32→2C)`` then ``Linear(C→r)``. The
  block becomes ``x + DropPath(frozen_attn(LN1(x)) + out_p)`` followed by the frozen Mix-FFN
  residual. The scale is the FROZEN attention's (head dim ``C/h``), as the authors' code does.
* ``prompt`` — one learnable ``30×32`` prompt (``N(0, 1)`` init) shared by all blocks.
* ``decoder`` — a new SegFormer all-MLP head (embedding 768; 256 for B0/B1): per-stage
  ``Linear(C_i→E)``, resize to 1/4, concat, ``1×1 conv 4E→E`` (no bias) + BN + ReLU,
  ``Dropout2d(0.5)``, ``1×1 conv E→150``, then the final ``1×1 conv 150→K`` (``decoder.classifier``)
  and a bilinear upsample to the input size. The final 1×1 conv is applied BEFORE the ×4 upsample
  (the authors upsample first): bilinear interpolation is a convex combination per pixel, so the
  two orders give the same logits, and ``K ≤ 150`` channels are cheaper to upsample.

Paper configuration counts (``build_model("dplnet", "mit_b5", 41)``): frozen 81,443,008;
trainable 7,146,271 = aux_patch_embed 1,929,408 + mpg 290,304 + mfa 1,653,722 + prompt 960 +
decoder 3,271,877 (3,266,592 at ``K = 6``).

Options beyond the paper:

* ``fold_kv=True`` folds each block's ``Linear(32→2C)→Linear(C→r)`` chains into one
  ``Linear(32→r)`` for keys and one for values: the same function with far fewer parameters
  (MFA ≈ 0.36M for B5). :meth:`DPLNet.fold_kv_` folds a trained unfolded model in place.
* At inference (autograd disabled) the prompt keys/values, which do not depend on the input, are
  computed once and cached; the cache is keyed on the identity, storage and version counter of the
  prompt/MFA parameters, so an optimiser step or a ``load_state_dict`` invalidates it.
* ``encoder_drop_path`` (default True, as the authors trained): the frozen MiT stays in train
  mode during training, so its drop-path (0.1) is active; False keeps it in eval mode.

Aux input: ``aux_channels = A``. A 1-channel aux (DSM; normalised with mean 0.449 / std 0.226) is
replicated to 3 channels for the 3-channel stage-1 aux embedding; with ``A > 1`` the embedding
takes ``A`` channels (a 1-channel input is still replicated). ``A = 0`` is rejected: DPLNet's
prompts need an aux modality.

Missing aux: ``aux=None`` means an all-zero (normalised) aux image, i.e. the prompts are generated
from the optical path and the aux embeddings' biases only. ``aux_valid`` (``B×1×H×W``, 1 = valid)
sets invalid aux pixels to zero before the aux embedding (NaNs there are dropped too), so an
all-ones mask equals the normal path and an all-zeros mask equals ``aux=None``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsprompt.data.labels import IGNORE_INDEX
from rsprompt.models.base import SegmentationModel
from rsprompt.models.registry import register_method

__all__ = [
    "DPLNet",
    "MultimodalFeatureAdapter",
    "MultimodalPromptGenerator",
    "SegFormerMLPHead",
    "build_dplnet",
    "build_mit",
]

MIT_NAMES = tuple(f"mit_b{i}" for i in range(6))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Normalisation of a 1-channel aux (DSM/depth) as the authors used it (before replication).
AUX_MEAN, AUX_STD = 0.449, 0.226


def _init_linear(module: nn.Module) -> None:
    """SegFormer-style init: trunc-normal(0.02) linear weights, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------- MiT
@contextlib.contextmanager
def _torch_default_init() -> Iterator[None]:
    """Skip smp MiT's repeated trunc-normal re-initialisation (torch's default init stays).

    smp's MiT re-initialises every Linear with timm's ``trunc_normal_`` once per enclosing
    module (attention, block, model): most of the build time of a B5. When the weights are
    loaded from a file right after, that work is wasted. The module-level name is swapped for the
    duration of the build only (not thread-safe against a concurrent MiT build).
    """
    import segmentation_models_pytorch.encoders.mix_transformer as mix_transformer

    original = mix_transformer.trunc_normal_
    mix_transformer.trunc_normal_ = lambda tensor, *args, **kwargs: tensor
    try:
        yield
    finally:
        mix_transformer.trunc_normal_ = original


def build_mit(
    name: str,
    *,
    seed: int | None = 0,
    drop_path_rate: float | None = None,
    init: bool = True,
    **overrides: Any,
) -> nn.Module:
    """Build smp's ``MixVisionTransformerEncoder`` with random init (no download).

    Args:
        name: ``"mit_b0"`` … ``"mit_b5"``.
        seed: Seed of the random init (``None``: the global RNG).
        drop_path_rate: Stochastic depth of the blocks (smp's default 0.1).
        init: Apply SegFormer's trunc-normal init (False: torch's default init of the layers,
            much faster; for models whose weights are loaded next or only counted).
        **overrides: smp MiT parameters to override (e.g. ``depths=[1, 1, 1, 1]`` for tests).

    Raises:
        ValueError: If ``name`` is not a MiT.
    """
    from segmentation_models_pytorch.encoders.mix_transformer import mix_transformer_encoders

    if name not in mix_transformer_encoders:
        raise ValueError(f"DPLNet needs a MiT encoder; got {name!r}, available: {MIT_NAMES}")
    entry = mix_transformer_encoders[name]
    params = {**entry["params"], **overrides}
    if drop_path_rate is not None:
        params["drop_path_rate"] = drop_path_rate
    ctx = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with ctx, contextlib.nullcontext() if init else _torch_default_init():
        if seed is not None:
            torch.manual_seed(seed)
        return entry["encoder"](**params)


def _mit_stage_info(mit: nn.Module) -> tuple[list[int], list[int], list[int]]:
    """Widths, heads and depths of the four stages of an smp MiT."""
    dims, heads, depths = [], [], []
    for s in range(1, 5):
        blocks = getattr(mit, f"block{s}")
        dims.append(getattr(mit, f"norm{s}").normalized_shape[0])
        heads.append(blocks[0].attn.num_heads)
        depths.append(len(blocks))
    return dims, heads, depths


# --------------------------------------------------------------------------------------- MPG
class MultimodalPromptGenerator(nn.Module):
    """MPG fuser of one stage: ``Linear(C/r→C)(Linear(C→C/r)(aux) + Linear(C→C/r)(optical))``.

    Args:
        dim: Stage width ``C``.
        ratio: Bottleneck ratio (4 in the paper).
    """

    def __init__(self, dim: int, ratio: int = 4) -> None:
        super().__init__()
        hidden = dim // ratio
        if hidden < 1:
            raise ValueError(f"MPG ratio {ratio} leaves no channels of width {dim}")
        self.aux_proj = nn.Linear(dim, hidden)
        self.optical_proj = nn.Linear(dim, hidden)
        self.out_proj = nn.Linear(hidden, dim)  # PyTorch's default init, as the released code

    def forward(self, optical: Tensor, aux: Tensor) -> Tensor:
        """Prompt tokens ``B×N×C`` from optical and aux tokens (both ``B×N×C``)."""
        return self.out_proj(self.aux_proj(aux) + self.optical_proj(optical))


# --------------------------------------------------------------------------------------- MFA
class MultimodalFeatureAdapter(nn.Module):
    """MFA of one frozen block: prompt attention beside the frozen self-attention.

    Args:
        dim: Block width ``C``.
        num_heads: Heads ``h`` of the frozen attention.
        scale: The frozen attention's scale (``(C/h)^−½``).
        prompt_dim: Width of the shared prompt (32).
        reduction: ``r = C / reduction`` (32).
        fold_kv: Fold ``Linear(32→2C)→Linear(C→r)`` into one ``Linear(32→r)`` for K and V.

    Raises:
        ValueError: If ``r`` is not a positive multiple of ``num_heads``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        scale: float,
        prompt_dim: int = 32,
        reduction: int = 32,
        fold_kv: bool = False,
    ) -> None:
        super().__init__()
        r = dim // reduction
        if r < 1 or r % num_heads:
            raise ValueError(
                f"MFA width C/{reduction} = {r} (C = {dim}) must be a positive multiple of the "
                f"{num_heads} heads"
            )
        self.dim, self.num_heads, self.inner, self.scale = dim, num_heads, r, float(scale)
        self.folded = fold_kv
        # eps 1e-6: the released code uses the block's own norm layer (SegFormer's LayerNorm).
        self.norm = nn.LayerNorm(prompt_dim, eps=1e-6)
        if fold_kv:
            self.k = nn.Linear(prompt_dim, r)
            self.v = nn.Linear(prompt_dim, r)
        else:
            self.kv = nn.Linear(prompt_dim, 2 * dim)
            self.k = nn.Linear(dim, r)
            self.v = nn.Linear(dim, r)
        self.q = nn.Linear(dim, r)
        self.proj = nn.Linear(r, dim)
        _init_linear(self)

    def prompt_kv(self, prompt: Tensor) -> tuple[Tensor, Tensor]:
        """Prompt keys and values ``T×r`` (independent of the input)."""
        p = self.norm(prompt)
        if self.folded:
            return self.k(p), self.v(p)
        kv = self.kv(p)
        return self.k(kv[:, : self.dim]), self.v(kv[:, self.dim :])

    @torch.no_grad()
    def fold_kv_(self) -> MultimodalFeatureAdapter:
        """Fold the key/value chains into single ``Linear(32→r)`` layers, in place."""
        if self.folded:
            return self
        w_kv, b_kv = self.kv.weight, self.kv.bias
        new = []
        for lin, rows in ((self.k, slice(0, self.dim)), (self.v, slice(self.dim, None))):
            fused = nn.Linear(w_kv.shape[1], self.inner, device=w_kv.device, dtype=w_kv.dtype)
            fused.weight.copy_(lin.weight @ w_kv[rows])
            fused.bias.copy_(lin.weight @ b_kv[rows] + lin.bias)
            fused.requires_grad_(lin.weight.requires_grad)
            new.append(fused)
        self.k, self.v = new
        del self.kv
        self.folded = True
        return self

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Adapter output ``B×N×C``.

        Args:
            q: Output of the frozen query projection ``B×N×C``.
            k: Prompt keys ``T×r``.
            v: Prompt values ``T×r``.
        """
        b, n, _ = q.shape
        h, d = self.num_heads, self.inner // self.num_heads
        qp = self.q(q).reshape(b, n, h, d).transpose(1, 2)  # B×h×N×d
        kp = k.to(qp.dtype).reshape(1, -1, h, d).transpose(1, 2).expand(b, -1, -1, -1)
        vp = v.to(qp.dtype).reshape(1, -1, h, d).transpose(1, 2).expand(b, -1, -1, -1)
        out = F.scaled_dot_product_attention(qp, kp, vp, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, n, self.inner))


# --------------------------------------------------------------------------------------- head
class SegFormerMLPHead(nn.Module):
    """SegFormer's all-MLP decode head with DPLNet's 150-wide layer and final 1×1 conv.

    Args:
        in_dims: Widths of the four stages.
        num_classes: Classes ``K``.
        embed_dim: Embedding width (768; 256 for B0/B1).
        hidden_classes: Width of the SegFormer prediction layer (150, ADE20K's classes).
        dropout: ``Dropout2d`` rate before the prediction layer (0.5).
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        num_classes: int,
        embed_dim: int = 768,
        hidden_classes: int = 150,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.linear_c = nn.ModuleList(nn.Linear(c, embed_dim) for c in in_dims)
        self.fuse = nn.Sequential(
            nn.Conv2d(len(in_dims) * embed_dim, embed_dim, 1, bias=False),
            nn.BatchNorm2d(embed_dim),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout2d(dropout)
        self.pred = nn.Conv2d(embed_dim, hidden_classes, 1)
        self.classifier = nn.Conv2d(hidden_classes, num_classes, 1)
        # Released code: PyTorch's default init for the Linear layers and mmcv's ConvModule init
        # (kaiming normal, fan-out, ReLU gain) for the fuse convolution.
        nn.init.kaiming_normal_(self.fuse[0].weight, mode="fan_out", nonlinearity="relu")

    def forward(self, features: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        """Logits ``B×K×H×W`` from the four ``B×C_i×H_i×W_i`` maps, resized to ``size``."""
        target = features[0].shape[-2:]
        maps = []
        for feat, linear in zip(features, self.linear_c, strict=True):
            b, _, h, w = feat.shape
            x = linear(feat.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, -1, h, w)
            if (h, w) != tuple(target):
                x = F.interpolate(x, size=target, mode="bilinear", align_corners=False)
            maps.append(x)
        x = self.fuse(torch.cat(maps[::-1], dim=1))  # SegFormer order: c4, c3, c2, c1
        x = self.classifier(self.pred(self.dropout(x)))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------------------- model
@contextlib.contextmanager
def _capture_output(module: nn.Module) -> Iterator[list[Tensor]]:
    """Record the outputs of ``module`` while the context is open (a temporary forward hook)."""
    outputs: list[Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: outputs.append(out))
    try:
        yield outputs
    finally:
        handle.remove()


class DPLNet(SegmentationModel):
    """DPLNet on a frozen smp MiT. Build it with :func:`build_dplnet` (registered as "dplnet").

    Args:
        mit: An smp ``MixVisionTransformerEncoder`` (frozen here).
        encoder_name: Its name (``"mit_b5"``…).
        num_classes: Classes ``K``.
        aux_channels: Aux channels ``A ≥ 1`` (1 = DSM, replicated to 3).
        fold_kv: Fold the prompt key/value chains (see module docstring).
        encoder_drop_path: Keep the frozen MiT's drop-path active in training (authors: True).
        decoder_dim: Embedding of the MLP head (default 256 for B0/B1, 768 otherwise).
        hidden_classes: Width of the head's prediction layer before the final conv (150).
        decoder_dropout: ``Dropout2d`` rate of the head (0.5).
        prompt_tokens: Tokens of the shared prompt (30).
        prompt_dim: Width of the shared prompt (32).
        mfa_reduction: ``r = C / mfa_reduction`` (32).
        mpg_ratio: MPG bottleneck ratio (4).
        class_weights: Optional per-class CE weights (the paper uses class-weighted CE).
    """

    frozen_modules = ("encoder",)
    decoder_modules = ("decoder",)
    frozen_train_mode = True

    def __init__(
        self,
        mit: nn.Module,
        encoder_name: str,
        num_classes: int,
        aux_channels: int = 1,
        *,
        fold_kv: bool = False,
        encoder_drop_path: bool = True,
        decoder_dim: int | None = None,
        hidden_classes: int = 150,
        decoder_dropout: float = 0.5,
        prompt_tokens: int = 30,
        prompt_dim: int = 32,
        mfa_reduction: int = 32,
        mpg_ratio: int = 4,
        class_weights: Sequence[float] | Tensor | None = None,
    ) -> None:
        super().__init__("dplnet", encoder_name, num_classes, aux_channels)
        if aux_channels < 1:
            raise ValueError(
                "DPLNet needs an aux modality (aux_channels >= 1): its prompts are generated from "
                f"the aux image; got aux_channels={aux_channels}"
            )
        from segmentation_models_pytorch.encoders.mix_transformer import OverlapPatchEmbed

        self.frozen_train_mode = encoder_drop_path
        self.encoder = mit
        dims, heads, _ = _mit_stage_info(mit)
        self.stage_dims = dims
        self.aux_in_channels = 3 if aux_channels == 1 else aux_channels
        self.aux_patch_embed = nn.ModuleList(
            OverlapPatchEmbed(
                patch_size=7 if s == 0 else 3,
                stride=4 if s == 0 else 2,
                in_chans=self.aux_in_channels if s == 0 else dims[s - 1],
                embed_dim=dims[s],
            )
            for s in range(4)
        )
        self.mpg = nn.ModuleList(MultimodalPromptGenerator(d, mpg_ratio) for d in dims)
        self.mfa = nn.ModuleList(
            MultimodalFeatureAdapter(
                dims[s], heads[s], blk.attn.scale, prompt_dim, mfa_reduction, fold_kv
            )
            for s in range(4)
            for blk in getattr(mit, f"block{s + 1}")
        )
        self.prompt = nn.Parameter(torch.randn(prompt_tokens, prompt_dim))
        if decoder_dim is None:
            decoder_dim = 256 if encoder_name in ("mit_b0", "mit_b1") else 768
        self.decoder = SegFormerMLPHead(
            dims, num_classes, decoder_dim, hidden_classes, decoder_dropout
        )
        weights = None if class_weights is None else torch.as_tensor(class_weights).float()
        if weights is not None and weights.shape != (num_classes,):
            raise ValueError(f"class_weights must have {num_classes} entries, got {weights.shape}")
        self.register_buffer("class_weights", weights, persistent=False)
        #: Optical normalisation of the encoder's pretraining; aux: the authors' depth statistics.
        self.normalization = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
        self.aux_normalization = {"mean": (AUX_MEAN,), "std": (AUX_STD,)}
        self._kv_cache: tuple[tuple, list[tuple[Tensor, Tensor]]] | None = None
        self.freeze()

    # ------------------------------------------------------------------ options
    @property
    def folded(self) -> bool:
        """Whether the prompt key/value chains are folded."""
        return all(m.folded for m in self.mfa)

    def fold_kv_(self) -> DPLNet:
        """Fold every MFA's key/value chains in place (same outputs, fewer parameters)."""
        for m in self.mfa:
            m.fold_kv_()
        self._kv_cache = None
        return self

    # ------------------------------------------------------------------ prompt keys/values
    def _cache_key(self) -> tuple | None:
        try:
            params = [self.prompt, *self.mfa.parameters()]
            return tuple((id(p), p.data_ptr(), p._version, p.dtype, p.device) for p in params)
        except RuntimeError:  # inference tensors have no version counter: do not cache
            return None

    def prompt_kv(self) -> list[tuple[Tensor, Tensor]]:
        """Prompt keys/values of every block; cached while autograd is disabled."""
        if torch.is_grad_enabled():
            return [m.prompt_kv(self.prompt) for m in self.mfa]
        key = self._cache_key()
        if key is not None and self._kv_cache is not None and self._kv_cache[0] == key:
            return self._kv_cache[1]
        # normal tensors even under inference mode, so the cache also serves no_grad forwards
        with torch.inference_mode(False), torch.no_grad():
            kvs = [m.prompt_kv(self.prompt) for m in self.mfa]
        self._kv_cache = None if key is None else (key, kvs)
        return kvs

    # ------------------------------------------------------------------ forward
    def _prepare_aux(self, image: Tensor, aux: Tensor | None, aux_valid: Tensor | None) -> Tensor:
        b, _, h, w = image.shape
        if aux is None:
            return image.new_zeros(b, self.aux_in_channels, h, w)
        if aux.ndim == 3:
            aux = aux.unsqueeze(1)
        if aux.ndim != 4 or aux.shape[0] != b or aux.shape[-2:] != image.shape[-2:]:
            raise ValueError(
                f"aux must be B×A×H×W matching the image {tuple(image.shape)}, got "
                f"{tuple(aux.shape)}"
            )
        if aux.shape[1] == 1 and self.aux_in_channels != 1:
            aux = aux.expand(-1, self.aux_in_channels, -1, -1)
        elif aux.shape[1] != self.aux_in_channels:
            raise ValueError(
                f"this DPLNet takes {self.aux_channels} aux channel(s), got {aux.shape[1]}"
            )
        aux = aux.to(image.dtype)
        if aux_valid is not None:
            if aux_valid.ndim == 3:
                aux_valid = aux_valid.unsqueeze(1)
            if aux_valid.shape != (b, 1, h, w):
                raise ValueError(
                    f"aux_valid must be B×1×H×W = {(b, 1, h, w)}, got {tuple(aux_valid.shape)}"
                )
            aux = torch.where(aux_valid > 0, aux, 0.0)
        return aux

    def _block(self, blk: nn.Module, mfa: MultimodalFeatureAdapter, x: Tensor, hw, kv) -> Tensor:
        """One frozen MiT block with its MFA (calls the block's own frozen submodules)."""
        h, w = hw
        y = blk.norm1(x)
        with _capture_output(blk.attn.q) as q_out:
            attn = blk.attn(y, h, w)
        x = x + blk.drop_path(attn + mfa(q_out[0], *kv))
        return x + blk.drop_path(blk.mlp(blk.norm2(x), h, w))

    def checkpoint_units(self) -> list[nn.Module]:
        """Frozen units for activation checkpointing: the Mix-FFN of every MiT block.

        The blocks themselves are not called as a whole (the MFA sits inside their attention),
        so their feed-forward parts, the widest activations, are what can be recomputed.
        """
        return [blk.mlp for s in range(4) for blk in getattr(self.encoder, f"block{s + 1}")]

    def forward_features(
        self, image: Tensor, aux: Tensor | None = None, aux_valid: Tensor | None = None
    ) -> list[Tensor]:
        """The four prompted MiT feature maps ``B×C_i×H/2^(i+1)×W/2^(i+1)``."""
        aux_in = self._prepare_aux(image, aux, aux_valid)
        kvs = self.prompt_kv()
        enc = self.encoder
        x, features, index = image, [], 0
        for s in range(4):
            x = getattr(enc, f"patch_embed{s + 1}")(x)
            b, c, h, w = x.shape
            a = self.aux_patch_embed[s](aux_in)
            tokens = x.flatten(2).transpose(1, 2)
            prompt = self.mpg[s](tokens, a.flatten(2).transpose(1, 2))
            tokens = tokens + prompt
            for blk in getattr(enc, f"block{s + 1}"):
                tokens = self._block(blk, self.mfa[index], tokens, (h, w), kvs[index])
                index += 1
            tokens = getattr(enc, f"norm{s + 1}")(tokens)
            x = tokens.transpose(1, 2).reshape(b, c, h, w)
            features.append(x)
            aux_in = prompt.transpose(1, 2).reshape(b, c, h, w)
        return features

    def forward(  # noqa: D102 - documented in the class/module docstring
        self, image: Tensor, aux: Tensor | None = None, aux_valid: Tensor | None = None
    ) -> Tensor | dict[str, Tensor]:
        logits = self.decoder(self.forward_features(image, aux, aux_valid), image.shape[-2:])
        return {"logits": logits} if self.training else logits

    def compute_loss(self, output: dict[str, Tensor] | Tensor, target: Tensor) -> dict[str, Tensor]:
        """Cross-entropy (ignore index 255; class-weighted when ``class_weights`` is set)."""
        logits = output["logits"] if isinstance(output, dict) else output
        weight = None if self.class_weights is None else self.class_weights.to(logits.dtype)
        ce = F.cross_entropy(logits, target.long(), weight=weight, ignore_index=IGNORE_INDEX)
        return {"loss": ce, "ce": ce}


@register_method("dplnet")
def build_dplnet(
    encoder: str,
    num_classes: int,
    aux_channels: int = 1,
    weights: str | Path | None = None,
    *,
    encoder_seed: int | None = 0,
    encoder_kwargs: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    **kwargs: Any,
) -> DPLNet:
    """Build DPLNet on smp's MiT.

    Args:
        encoder: ``"mit_b0"`` … ``"mit_b5"`` (paper configuration ``"mit_b5"``).
        num_classes: Classes ``K``.
        aux_channels: Aux channels (1 = DSM replicated to 3; must be ≥ 1).
        weights: Local SegFormer/mmseg or ImageNet MiT checkpoint (see
            :func:`rsprompt.models.encoders.mit_weights.load_mit_weights`); ``None`` = random init.
        encoder_seed: Seed of the MiT's random init.
        encoder_kwargs: smp MiT parameter overrides (e.g. ``{"depths": [1, 1, 1, 1]}``).
        device: Move the model there. smp's MiT cannot be built on ``"meta"``: it is built on the
            CPU with torch's default init (fast) and then moved to the meta device (for counting).
        **kwargs: :class:`DPLNet` options (``fold_kv``, ``encoder_drop_path``, ``decoder_dim``,
            ``class_weights``, …).

    Returns:
        The model with its MiT frozen.
    """
    meta = device is not None and torch.device(device).type == "meta"
    # smp's MiT cannot be built on meta: build it on the CPU, skipping SegFormer's slow init when
    # the values do not matter (weights loaded next, or a meta model for counting)
    mit = build_mit(
        encoder, seed=encoder_seed, init=weights is None and not meta, **(encoder_kwargs or {})
    )
    if weights is not None:
        from rsprompt.models.encoders.mit_weights import load_mit_weights

        load_mit_weights(mit, weights)
    model = DPLNet(mit, encoder, num_classes, aux_channels, **kwargs)
    if device is not None:
        model = model.to(device)
    return model
