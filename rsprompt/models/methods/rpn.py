"""RPN — relationship prompt network for open-vocabulary segmentation (NeurIPS 2024).

A frozen CLIP (open_clip, paper configuration ViT-B/16 with OpenAI weights) segments with any
list of class names. Trainable parts (``docs/methods/rpn.md``):

- ``vpt``: deep visual prompt tokens ``L×T×D`` (``T`` = ``vpt_tokens``, default 10) inserted at
  the input of every image block, passed through the shared prompt projection;
- ``prompt_proj``: ONE ``Linear(D→D)`` shared by all prompts (then ``Dropout(0.1)``);
- ``prompt_norm``: ONE ``LayerNorm(D)`` applied before every read-out (then the frozen
  ``ln_post`` and ``proj`` and L2 normalisation) → patch embeddings ``p`` ``B×N×E`` and CLS
  embedding ``g`` ``B×E``;
- ``relation_h``: the relationship matrix ``h`` ``N×D`` shared by all layers (``U(±1/16)``).
  After every block but the last (11 boundaries for ViT-B), the relationship map
  ``m = p·(g⊙t)ᵀ`` (``B×N×C``, ``t`` the class text embeddings) gives ``C`` relationship prompts
  ``Dropout(prompt_proj(mᵀ·h))`` for the next block: its input is
  ``[CLS, VPT_l, prompts_l, patches]``; outputs at prompt positions are discarded;
- ``head`` (LPM): image ``LN(Linear(p))``, text ``LN(Linear(Linear([g⊙t, t])))``, logits
  ``image·textᵀ/√E`` on the patch grid, upsampled bilinearly to the input size.

``h`` is tied to ``N`` (the patch grid at ``img_size``): other input sizes resample it bilinearly
over the token grid (``resample_h=True``, default) or raise a clear error. The frozen position
embedding is resampled the same way.

Loss (the released code's): sigmoid focal (α 0.25, γ 2) × 100 + dice × 1 over per-(image,
class) binary masks, normalised by the number of masks present; ignored pixels are negatives of
every class (see :meth:`RPN.compute_loss`). Inference (eval mode) returns **scores**
``sigmoid(logits)`` with 0.1 subtracted from the classes seen in training (zero-shot
calibration); argmax gives the prediction. Scores lie in ``[-calibration, 1]``; softmax keeps
their argmax.

Open vocabulary: class names are data. The model is built for a list of names and predicts with
another via :meth:`RPN.set_vocabulary` or ``forward(..., class_names=[…])``. Text embeddings are
computed once per vocabulary (remote-sensing templates and land-cover synonyms by default, see
:mod:`rsprompt.models.text_prompts`) and cached.

rsprompt extension — aux modality (DSM/SAR): with ``aux_channels > 0`` a light ``aux_stem``
(two stride-2 convolutions, average pooling to a ``g×g`` grid, Linear to ``D``, plus one learned
embedding per block and the frozen position embedding resampled to the ``g×g`` grid) turns ``aux`` (and its validity mask) into ``g²`` extra prompt tokens
inserted after the VPT tokens at every block (outputs discarded). RPN's paper configuration has no
aux modality (``aux_channels=0``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsprompt.data.labels import ISPRS_CLASSES, WHU_OPT_SAR_CLASSES
from rsprompt.models.base import SegmentationModel
from rsprompt.models.encoders.clip import (
    CLS_FORMS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClipSpec,
    build_clip,
    embed_image,
    get_tokenizer,
    resample_grid,
)
from rsprompt.models.registry import register_method
from rsprompt.models.text_prompts import TextEmbeddingCache

IGNORE_INDEX = 255


# --------------------------------------------------------------------------- losses
def sigmoid_focal_loss(
    logits: Tensor,
    target: Tensor,
    num_masks: float | Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> Tensor:
    """Sigmoid focal loss of every (image, class) mask, as RPN's released code computes it.

    Every pixel counts, ignored ones included: their target is 0 for every class.

    Args:
        logits: ``B×K×H×W``.
        target: ``B×K×H×W`` binary (float) per-class masks (all zero at ignored pixels).
        num_masks: The normaliser ``N`` (see :func:`count_masks`).
        alpha: Weight of the positive class (``1-alpha`` for negatives).
        gamma: Focusing exponent.

    Returns:
        Scalar: ``Σ_(b,k) mean_pixels(α_t (1-p_t)^γ · BCE) / N``.
    """
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss.flatten(2).mean(-1).sum() / num_masks


def dice_loss(
    logits: Tensor,
    target: Tensor,
    present: Tensor,
    num_masks: float | Tensor,
    smooth: float = 1.0,
) -> Tensor:
    """Dice loss of the present (image, class) masks over all pixels (RPN's released code).

    ``1 - (2 Σ p·y + s) / (Σ p + Σ y + s)`` per mask, summed over the present masks, divided by
    ``N``.

    Args:
        logits: ``B×K×H×W``.
        target: ``B×K×H×W`` binary masks (all zero at ignored pixels).
        present: ``B×K`` bool, masks with at least one labelled pixel.
        num_masks: The normaliser ``N`` (see :func:`count_masks`).
        smooth: Smoothing term ``s``.
    """
    prob = logits.sigmoid()
    inter = (prob * target).flatten(2).sum(-1)
    denom = prob.flatten(2).sum(-1) + target.flatten(2).sum(-1)
    per_mask = 1 - (2 * inter + smooth) / (denom + smooth)
    return (per_mask * present.to(per_mask.dtype)).sum() / num_masks


def count_masks(present: Tensor) -> Tensor:
    """``N``: present (image, class) masks, averaged over DDP ranks, at least 1."""
    n = present.sum().to(torch.float32).detach()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(n)
        n = n / torch.distributed.get_world_size()
    return n.clamp_min(1.0)


def one_hot_targets(
    target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> tuple[Tensor, Tensor]:
    """Per-class binary masks ``B×K×H×W`` (float) and the valid-pixel mask ``B×H×W``.

    Raises:
        ValueError: A non-ignored label is outside ``0..K-1`` (e.g. an unseen class that was not
            mapped to ``ignore_index`` for zero-shot training).
    """
    target = target.long()
    valid = target != ignore_index
    bad = valid & ((target < 0) | (target >= num_classes))
    if bool(bad.any()):
        raise ValueError(
            f"target has labels outside 0..{num_classes - 1} (e.g. "
            f"{int(target[bad][0])}); map unseen classes to {ignore_index} "
            "(rsprompt.engine.zeroshot.to_seen_targets) or give the full vocabulary"
        )
    safe = torch.where(valid, target, torch.zeros_like(target))
    onehot = F.one_hot(safe, num_classes).permute(0, 3, 1, 2).float()
    return onehot * valid.unsqueeze(1), valid


# --------------------------------------------------------------------------- modules
class LPMHead(nn.Module):
    """RPN's LPM head: image ``LN(Linear(p))`` against text ``LN(Linear(Linear([g⊙t, t])))``.

    Args:
        embed_dim: CLIP joint embedding width ``E`` (512 for ViT-B/16).
    """

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_proj = nn.Linear(embed_dim, embed_dim)
        self.image_norm = nn.LayerNorm(embed_dim)
        self.text_fuse = nn.Linear(2 * embed_dim, embed_dim)
        self.text_proj = nn.Linear(embed_dim, embed_dim)
        self.text_norm = nn.LayerNorm(embed_dim)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, p: Tensor, g: Tensor, t: Tensor) -> Tensor:
        """Logits ``B×N×C`` from patch ``p`` ``B×N×E``, CLS ``g`` ``B×E``, text ``t`` ``C×E``."""
        image = self.image_norm(self.image_proj(p))
        gt = g.unsqueeze(1) * t.unsqueeze(0)
        text = torch.cat([gt, t.unsqueeze(0).expand_as(gt)], dim=-1)
        text = self.text_norm(self.text_proj(self.text_fuse(text)))
        return image @ text.transpose(1, 2) / math.sqrt(self.embed_dim)


class AuxStem(nn.Module):
    """rsprompt extension: aux raster (DSM/SAR) → ``g²`` prompt tokens per block.

    ``[aux·valid, valid]`` → Conv3×3/2 → GELU → Conv3×3/2 → GELU → adaptive average pool to
    ``g×g`` → Linear to ``D``; block ``l`` adds its own learned embedding.

    Args:
        aux_channels: Channels ``A`` of the aux modality.
        width: Token width ``D`` of the image tower.
        layers: Number of image blocks ``L``.
        grid: Tokens per side ``g``.
        hidden: Channels of the convolutions.
    """

    def __init__(
        self, aux_channels: int, width: int, layers: int, grid: int = 4, hidden: int = 32
    ) -> None:
        super().__init__()
        self.grid = grid
        self.convs = nn.Sequential(
            nn.Conv2d(aux_channels + 1, hidden, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(hidden, 2 * hidden, 3, stride=2, padding=1),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(grid),
        )
        self.to_tokens = nn.Linear(2 * hidden, width)
        self.layer_embed = nn.Parameter(torch.zeros(layers, width))

    def forward(self, aux: Tensor, valid: Tensor) -> Tensor:
        """Base tokens ``B×g²×D`` (add :attr:`layer_embed` ``[l]`` per block)."""
        x = self.convs(torch.cat([aux * valid, valid], dim=1))
        return self.to_tokens(x.flatten(2).transpose(1, 2))


def default_class_names(num_classes: int) -> list[str]:
    """Names used when none are given: ISPRS (6), WHU-OPT-SAR (7), else ``"class i"``."""
    if num_classes == ISPRS_CLASSES.num_classes:
        return list(ISPRS_CLASSES.names)
    if num_classes == WHU_OPT_SAR_CLASSES.num_classes:
        return list(WHU_OPT_SAR_CLASSES.names)
    return [f"class {i}" for i in range(num_classes)]


def _norm_name(name: str) -> str:
    return " ".join(str(name).lower().replace("_", " ").split())


class RPN(SegmentationModel):
    """Relationship prompt network on frozen open_clip towers (see the module docstring).

    Args:
        encoder_name: open_clip model name (paper: ``"ViT-B-16"``).
        num_classes: Number of class names of the build vocabulary.
        aux_channels: Aux modality channels (0 = none, RPN's configuration).
        weights: Local CLIP weights file (``None`` = random init).
        class_names: Build vocabulary (``None`` = :func:`default_class_names`).
        img_size: Crop size; fixes ``N = (img_size/patch)²`` rows of ``h`` (paper 512 → 1024).
        vpt_tokens: Deep VPT tokens per block ``T`` (10; 100 for large vocabularies).
        quick_gelu: QuickGELU in the towers (``None`` = True for OpenAI-style names).
        seen_classes: Names whose scores get the calibration subtracted at inference. ``None`` =
            the vocabularies of the training forwards, recorded automatically (the build
            vocabulary until the first training forward).
        calibration: Amount subtracted from seen-class scores (0.1; 0 disables).
        templates: Prompt templates (``None`` = remote-sensing templates).
        synonyms: Synonym table (``None`` = land-cover synonyms; ``{}`` = none).
        resample_h: Resample ``h`` for other input sizes (else raise).
        dropout: Dropout after the shared prompt Linear.
        aux_grid: Aux prompt tokens per side (aux stem only).
        focal_weight: Weight of the focal loss (100).
        dice_weight: Weight of the dice loss (1).
        device: ``None``/``"cpu"``/``"cuda"``… or ``"meta"`` (shapes only, e.g. for ``info``).
        encoder_seed: Seed of the random CLIP init when ``weights`` is ``None``.
        cls_form: CLS token input, ``"released"`` (RPN's released code, from ZegCLIP:
            ``2·class_embedding + pos[0]``, what the authors' prompts were trained with) or
            ``"clip"`` (standard CLIP: ``class_embedding + pos[0]``). See :func:`embed_image`.
    """

    frozen_modules: ClassVar[tuple[str, ...]] = ("image_encoder", "text_encoder")
    decoder_modules: ClassVar[tuple[str, ...]] = ("head",)

    def __init__(
        self,
        encoder_name: str = "ViT-B-16",
        num_classes: int = 6,
        aux_channels: int = 0,
        weights: str | None = None,
        class_names: Sequence[str] | None = None,
        img_size: int = 512,
        vpt_tokens: int = 10,
        quick_gelu: bool | None = None,
        seen_classes: Sequence[str] | None = None,
        calibration: float = 0.1,
        templates: Sequence[str] | None = None,
        synonyms: dict[str, Sequence[str]] | None = None,
        resample_h: bool = True,
        dropout: float = 0.1,
        aux_grid: int = 4,
        focal_weight: float = 100.0,
        dice_weight: float = 1.0,
        device: str | torch.device | None = None,
        encoder_seed: int | None = 0,
        cls_form: str = "released",
    ) -> None:
        if cls_form not in CLS_FORMS:
            raise ValueError(f"cls_form must be one of {CLS_FORMS}, got {cls_form!r}")
        names = list(class_names) if class_names is not None else default_class_names(num_classes)
        if len(names) != num_classes:
            raise ValueError(f"num_classes={num_classes} but {len(names)} class names were given")
        super().__init__("rpn", encoder_name, num_classes, aux_channels)
        if vpt_tokens < 0:
            raise ValueError(f"vpt_tokens must be >= 0, got {vpt_tokens}")
        image, text, spec = build_clip(
            encoder_name,
            img_size=img_size,
            weights=weights,
            quick_gelu=quick_gelu,
            device=device,
            seed=encoder_seed,
        )
        if spec.img_size % spec.patch_size:
            raise ValueError(
                f"img_size {img_size} is not a multiple of the patch {spec.patch_size}"
            )
        self.image_encoder = image
        self.text_encoder = text
        self.spec: ClipSpec = spec
        self.img_size = spec.img_size
        self.vpt_tokens = vpt_tokens
        self.resample_h = resample_h
        self.cls_form = cls_form
        self.calibration = float(calibration)
        self.focal_weight = float(focal_weight)
        self.dice_weight = float(dice_weight)
        self.dropout_p = float(dropout)
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD

        dev = torch.device(device) if device is not None else None
        d, e, layers = spec.width, spec.embed_dim, spec.layers
        n = spec.grid_size[0] * spec.grid_size[1]
        with torch.device(dev or "cpu"):
            # VPT init: uniform ±sqrt(6 / (3·patch² + D)) (the released code's Xavier-style bound).
            bound = math.sqrt(6.0 / (3 * spec.patch_size**2 + d))
            self.vpt = nn.Parameter(torch.empty(layers, vpt_tokens, d))
            self.relation_h = nn.Parameter(torch.empty(n, d))
            self.prompt_proj = nn.Linear(d, d)
            self.prompt_norm = nn.LayerNorm(d, eps=1e-6)
            self.prompt_dropout = nn.Dropout(dropout)
            self.head = LPMHead(e)
            self.aux_stem = AuxStem(aux_channels, d, layers, aux_grid) if aux_channels else None
            if dev is None or dev.type != "meta":
                nn.init.uniform_(self.vpt, -bound, bound)
                nn.init.uniform_(self.relation_h, -bound, bound)
                nn.init.kaiming_normal_(self.prompt_proj.weight, a=0, mode="fan_out")
                # the bias keeps PyTorch's default init, as in the released code

        self.templates = templates
        self.synonyms = synonyms
        self.text_cache = TextEmbeddingCache(self._encode_sentences, templates, synonyms)
        self.class_names: list[str] = names
        self.seen_classes: list[str] = list(seen_classes) if seen_classes is not None else names
        # Without explicit seen classes, the vocabularies of training forwards define them.
        self._seen_explicit = seen_classes is not None
        self._seen_recorded = False
        self.encoder_seed = encoder_seed if weights is None else None
        self.freeze()

    # ------------------------------------------------------------------ vocabulary
    def set_vocabulary(self, class_names: Sequence[str]) -> None:
        """Predict with ``class_names`` from now on (``num_classes`` follows).

        Raises:
            ValueError: An empty vocabulary.
        """
        names = [str(n) for n in class_names]
        if not names:
            raise ValueError("the vocabulary is empty: give at least one class name")
        self.class_names = names
        self.num_classes = len(names)

    def set_seen_classes(self, names: Sequence[str] | None) -> None:
        """Set the classes seen in training (their scores get the calibration subtracted).

        Explicit seen classes are kept as given; without them, the vocabularies used by training
        forwards are recorded automatically (the first training forward replaces the build
        vocabulary, later ones add their new names). ``None`` = no seen class (no calibration).
        """
        self.seen_classes = list(names) if names is not None else []
        self._seen_explicit = True

    def _record_seen(self, names: Sequence[str]) -> None:
        if self._seen_explicit:
            return
        if not self._seen_recorded:
            self.seen_classes, self._seen_recorded = [], True
        known = {_norm_name(n) for n in self.seen_classes}
        self.seen_classes += [n for n in names if _norm_name(n) not in known]

    def seen_mask(self, class_names: Sequence[str] | None = None) -> Tensor:
        """Bool ``C`` mask of the vocabulary's classes that were seen in training."""
        seen = {_norm_name(n) for n in self.seen_classes}
        names = self.class_names if class_names is None else class_names
        return torch.tensor([_norm_name(n) in seen for n in names], dtype=torch.bool)

    def _encode_sentences(self, sentences: list[str]) -> Tensor:
        tokens = get_tokenizer(self.spec.context_length)(sentences)
        device = self.text_encoder.token_embedding.weight.device
        if device.type == "meta":
            raise RuntimeError("text embeddings cannot be computed on the meta device")
        was_training = self.text_encoder.training
        self.text_encoder.eval()
        with torch.no_grad():
            out = self.text_encoder(tokens.to(device))
        self.text_encoder.train(was_training)
        return out

    def text_embeddings(self, class_names: Sequence[str] | None = None) -> Tensor:
        """``C×E`` L2-normalised class embeddings of a vocabulary (cached per vocabulary)."""
        names = self.class_names if class_names is None else list(class_names)
        device = self.text_encoder.token_embedding.weight.device
        return self.text_cache.get(names, device if device.type != "meta" else None)

    # ------------------------------------------------------------------ forward
    def _relation_h(self, grid: tuple[int, int]) -> Tensor:
        built = self.spec.grid_size
        if tuple(grid) == tuple(built):
            return self.relation_h
        if not self.resample_h:
            raise ValueError(
                f"RPN's h has {built[0] * built[1]} rows for a {built[0]}×{built[1]} token grid "
                f"(img_size {self.img_size}); this input gives a {grid[0]}×{grid[1]} grid. Use "
                f"{self.img_size}-pixel crops (sliding window) or build with resample_h=True"
            )
        return resample_grid(self.relation_h, built, grid)

    def _readout(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``[CLS, patches]`` tokens → L2-normalised patch ``B×N×E`` and CLS ``B×E`` embeddings."""
        v = self.image_encoder
        y = v.ln_post(self.prompt_norm(x)) @ v.proj
        y = F.normalize(y, dim=-1)
        return y[:, 1:], y[:, 0]

    def _aux_tokens(
        self, aux: Tensor | None, aux_valid: Tensor | None, like: Tensor
    ) -> Tensor | None:
        if self.aux_stem is None:
            return None
        b, _, h, w = like.shape
        if aux is None:
            aux = like.new_zeros(b, self.aux_channels, h, w)
            aux_valid = like.new_zeros(b, 1, h, w)
        if aux.shape[1] != self.aux_channels:
            raise ValueError(
                f"aux has {aux.shape[1]} channels, this model was built for {self.aux_channels}"
            )
        if aux_valid is None:
            aux_valid = torch.isfinite(aux).all(dim=1, keepdim=True)
        aux = torch.nan_to_num(aux, nan=0.0, posinf=0.0, neginf=0.0)
        tokens = self.aux_stem(aux, aux_valid.to(aux.dtype))
        # The frozen CLIP position embedding at the aux token grid lets the frozen attention
        # relate each aux token to the patches it covers.
        v = self.image_encoder
        g = self.aux_stem.grid
        pos = resample_grid(v.positional_embedding[1:], tuple(v.grid_size), (g, g))
        return tokens + pos.to(tokens.dtype)

    def forward_logits(
        self,
        image: Tensor,
        aux: Tensor | None = None,
        aux_valid: Tensor | None = None,
        class_names: Sequence[str] | None = None,
    ) -> Tensor:
        """Raw logits ``B×C×H×W`` (before sigmoid and calibration)."""
        text = self.text_embeddings(class_names).to(image.device, image.dtype)
        b = image.shape[0]
        x, grid = embed_image(self.image_encoder, image, cls_form=self.cls_form)
        n = grid[0] * grid[1]
        h = self._relation_h(grid)
        vpt = self.prompt_proj(self.vpt)  # L×T×D; dropout per sample below (released code)
        aux_tokens = self._aux_tokens(aux, aux_valid, image)
        blocks = self.image_encoder.transformer.resblocks
        relation: Tensor | None = None
        p = g = None
        for layer, block in enumerate(blocks):
            parts = [x[:, :1], self.prompt_dropout(vpt[layer].unsqueeze(0).expand(b, -1, -1))]
            if aux_tokens is not None:
                parts.append(aux_tokens + self.aux_stem.layer_embed[layer])
            if relation is not None:
                parts.append(relation)
            parts.append(x[:, 1:])
            y = block(torch.cat(parts, dim=1))
            x = torch.cat([y[:, :1], y[:, -n:]], dim=1)
            p, g = self._readout(x)
            if layer < len(blocks) - 1:
                rel_map = p @ (g.unsqueeze(1) * text.unsqueeze(0)).transpose(1, 2)  # B×N×C
                relation = self.prompt_dropout(self.prompt_proj(rel_map.transpose(1, 2) @ h))
        logits = self.head(p, g, text)  # B×N×C
        logits = logits.transpose(1, 2).reshape(b, -1, grid[0], grid[1])
        return F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)

    def calibrate(self, logits: Tensor, class_names: Sequence[str] | None = None) -> Tensor:
        """Scores ``sigmoid(logits)`` minus :attr:`calibration` on the seen classes."""
        scores = logits.sigmoid()
        if self.calibration:
            mask = self.seen_mask(class_names).to(scores.device)
            shift = mask.to(scores.dtype) * self.calibration
            scores = scores - shift.view(1, -1, 1, 1)
        return scores

    def forward(
        self,
        image: Tensor,
        aux: Tensor | None = None,
        aux_valid: Tensor | None = None,
        class_names: Sequence[str] | None = None,
    ) -> Tensor | dict[str, Tensor]:
        """Segment ``image`` (``B×3×H×W``, ImageNet-normalised) with a vocabulary.

        Args:
            image: Optical image, ``H`` and ``W`` multiples of the patch size.
            aux: Aux modality ``B×A×H×W`` (only with an aux stem; ``None`` = absent).
            aux_valid: ``B×1×H×W`` validity of ``aux`` (1 = valid; ``None`` = all valid).
            class_names: Vocabulary for this call (``None`` = :attr:`class_names`).

        Returns:
            Eval: calibrated scores ``B×C×H×W`` (argmax = prediction). Training:
            ``{"logits": B×C×H×W}``.
        """
        logits = self.forward_logits(image, aux, aux_valid, class_names)
        if self.training:
            self._record_seen(self.class_names if class_names is None else class_names)
            return {"logits": logits}
        return self.calibrate(logits, class_names)

    def compute_loss(self, output: dict[str, Tensor], target: Tensor) -> dict[str, Tensor]:
        """Sigmoid focal × ``focal_weight`` + dice × ``dice_weight``, as the released code.

        ``N`` = the (image, class) masks present in the batch (a labelled pixel of that class;
        at least 1, averaged over DDP ranks). Focal: every image and class of the vocabulary,
        mean over ALL pixels (ignored pixels, label 255, are negatives of every class), summed,
        divided by ``N``. Dice: the present masks only, over all pixels, summed, divided by ``N``.
        In zero-shot training unseen-class pixels are ignored, so every seen class learns to be
        negative there, which the −0.1 calibration of seen classes relies on.

        Args:
            output: Training output (``{"logits": B×C×H×W}``).
            target: ``B×H×W`` labels in the vocabulary used for ``output``.

        Returns:
            ``{"loss", "loss_focal", "loss_dice"}`` (the last two unweighted).
        """
        logits = output["logits"] if isinstance(output, dict) else output
        onehot, _valid = one_hot_targets(target, logits.shape[1])
        onehot = onehot.to(logits.dtype)
        present = onehot.flatten(2).amax(-1) > 0
        n = count_masks(present)
        focal = sigmoid_focal_loss(logits, onehot, n)
        dice = dice_loss(logits, onehot, present, n)
        total = self.focal_weight * focal + self.dice_weight * dice
        return {"loss": total, "loss_focal": focal.detach(), "loss_dice": dice.detach()}

    # ------------------------------------------------------------------ config
    @property
    def lr_multipliers(self) -> dict[str, float]:
        """Learning-rate factor per trainable module, as in the released recipe.

        Base lr 2e-5, ``h`` at 1×, everything else at 10×; keys are module names, usable as the
        optimiser's ``lr_mult`` patterns.
        """
        names = ["vpt", "prompt_proj", "prompt_norm", "head"]
        if self.aux_stem is not None:
            names.append("aux_stem")
        return {**dict.fromkeys(names, 10.0), "relation_h": 1.0}

    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this model (saved in checkpoints by the engine)."""
        return {
            "method": "rpn",
            "encoder": self.encoder_name,
            "clip": self.spec.to_dict(),
            "quick_gelu": self.spec.quick_gelu,
            "img_size": self.img_size,
            "vpt_tokens": self.vpt_tokens,
            "num_classes": self.num_classes,
            "aux_channels": self.aux_channels,
            "class_names": list(self.class_names),
            "seen_classes": list(self.seen_classes),
            "encoder_seed": self.encoder_seed,
            "calibration": self.calibration,
            "templates": list(self.text_cache.templates),
            "synonyms": None if self.synonyms is None else dict(self.synonyms),
            "resample_h": self.resample_h,
            "cls_form": self.cls_form,
            "dropout": self.dropout_p,
            "aux_grid": self.aux_stem.grid if self.aux_stem is not None else 4,
            "focal_weight": self.focal_weight,
            "dice_weight": self.dice_weight,
            "mean": list(self.mean),
            "std": list(self.std),
            "output": "scores",
            "lr_multipliers": dict(self.lr_multipliers),
        }


def rpn_from_config(
    config: dict[str, Any], weights: str | None = None, device: str | None = None
) -> RPN:
    """Rebuild an :class:`RPN` from :meth:`RPN.config` (then load its adapter state dict).

    Args:
        config: A dict saved by :meth:`RPN.config`.
        weights: Local CLIP weights file (the config records only its name and SHA-256).
        device: Build device.
    """
    model = RPN(
        config["encoder"],
        len(config["class_names"]),
        config.get("aux_channels", 0),
        weights=weights,
        class_names=config["class_names"],
        img_size=config["img_size"],
        vpt_tokens=config["vpt_tokens"],
        quick_gelu=config["quick_gelu"],
        seen_classes=config.get("seen_classes"),
        calibration=config.get("calibration", 0.1),
        templates=config.get("templates"),
        synonyms=config.get("synonyms"),
        resample_h=config.get("resample_h", True),
        dropout=config.get("dropout", 0.1),
        aux_grid=config.get("aux_grid", 4),
        focal_weight=config.get("focal_weight", 100.0),
        dice_weight=config.get("dice_weight", 1.0),
        device=device,
        encoder_seed=config.get("encoder_seed", 0),
        # checkpoints written before the option existed used the standard CLIP form
        cls_form=config.get("cls_form", "clip"),
    )
    sha = config.get("clip", {}).get("weights_sha256")
    if weights is not None and sha and model.spec.weights_sha256 != sha:
        raise ValueError(
            f"CLIP weights {weights} (sha256 {model.spec.weights_sha256[:12]}…) differ from the "
            f"ones this model was trained with (sha256 {sha[:12]}…)"
        )
    return model


@register_method("rpn")
def build_rpn(
    encoder: str,
    num_classes: int,
    aux_channels: int = 0,
    weights: str | None = None,
    **kwargs: Any,
) -> RPN:
    """Build :class:`RPN` (``build_model("rpn", "ViT-B-16", num_classes, …)``).

    Keyword arguments are those of :class:`RPN` (``class_names``, ``img_size=512``,
    ``vpt_tokens=10``, ``quick_gelu``, ``device``…).
    """
    return RPN(encoder, num_classes, aux_channels, weights=weights, **kwargs)
