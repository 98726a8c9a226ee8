"""Points where rsprompt follows the authors' released code (docs/methods: departures listed there)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rsprompt.models.methods.dplnet import MultimodalFeatureAdapter
from rsprompt.models.methods.mobanet import _rectangle


def test_mcrm_rectangle_aspect_is_width_over_height():
    """Released MoBaNet: ar ~ U(0.5, 2), h = sqrt(A / ar), w = sqrt(A · ar).

    With a fixed ratio of 2 and area fraction 1/8 of a 64×64 crop (A = 512 px²), the rectangle
    is h = sqrt(256) = 16 rows by w = sqrt(1024) = 32 columns: wider than tall.
    """
    gen = torch.Generator().manual_seed(0)
    top, left, rh, rw = _rectangle(64, 64, (1 / 8, 1 / 8), (2.0, 2.0), gen)
    assert (rh, rw) == (16, 32)
    assert 0 <= top <= 64 - 16 and 0 <= left <= 64 - 32


def test_mcrm_rectangle_orientation_statistics():
    """Over many draws E[w/h] = E[ar] = (0.5 + 2) / 2 = 1.25 and E[h/w] = E[1/ar] = ln 4 / 1.5."""
    gen = torch.Generator().manual_seed(1)
    ratios, inverse = [], []
    for _ in range(4000):
        _, _, rh, rw = _rectangle(400, 400, (0.25, 0.25), (0.5, 2.0), gen)
        ratios.append(rw / rh)
        inverse.append(rh / rw)
    mean_wh = sum(ratios) / len(ratios)
    mean_hw = sum(inverse) / len(inverse)
    assert abs(mean_wh - 1.25) < 0.03
    assert abs(mean_hw - math.log(4) / 1.5) < 0.03  # ≈ 0.924


def test_dplnet_mfa_prompt_norm_eps_is_the_blocks():
    """The released MFA normalises the prompt with the block's own LayerNorm (eps 1e-6)."""
    mfa = MultimodalFeatureAdapter(dim=64, num_heads=1, scale=0.125)
    assert mfa.norm.eps == 1e-6
    x = torch.randn(3, 32) * 1e-3  # tiny variance: eps matters
    ref = torch.nn.functional.layer_norm(x, (32,), mfa.norm.weight, mfa.norm.bias, eps=1e-6)
    torch.testing.assert_close(mfa.norm(x), ref)


def _tiny_dinov2(**kw):
    from rsprompt.models.encoders.vit import TimmViTEncoder

    torch.manual_seed(0)
    enc = TimmViTEncoder(
        "vit_small_patch14_dinov2", depth=1, embed_dim=24, num_heads=2, encoder_seed=3, **kw
    )
    with torch.no_grad():  # a smooth, non-trivial embedding (random init is mostly zeros)
        m = enc.model
        yy, xx = torch.meshgrid(torch.linspace(0, 3, 37), torch.linspace(0, 2, 37), indexing="ij")
        grid = torch.stack([torch.sin(yy * (k + 1) + xx * k) for k in range(24)], dim=-1)
        m.pos_embed[0, 1:] = grid.reshape(37 * 37, 24)
        m.pos_embed[0, 0] = torch.arange(24) / 24
    return enc


def _expected_dinov2(pos, rows, cols):
    """DINOv2's interpolate_pos_encoding, written out from its published description."""
    sq = pos[0, 1:].reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
    out = F.interpolate(
        sq, scale_factor=((rows + 0.1) / 37, (cols + 0.1) / 37), mode="bicubic", antialias=False
    )
    return out.permute(0, 2, 3, 1).reshape(rows * cols, -1)


def test_dinov2_position_embedding_rule():
    enc = _tiny_dinov2()
    assert enc.pos_interp == "dinov2" and enc.describe()["pos_interp"] == "dinov2"
    m = enc.model
    emb = torch.zeros(2, 19, 23, 24)  # a 266×322 input: 19×23 patches of 14 px
    with torch.no_grad():
        x = enc.begin(emb).x
    pos = m.pos_embed.detach()
    torch.testing.assert_close(x[0, 0], m.cls_token[0, 0] + pos[0, 0])
    torch.testing.assert_close(x[1, 1:], _expected_dinov2(pos, 19, 23))
    # timm's own rule (antialiased, exact size) differs measurably on a smooth embedding
    timm_rule = _tiny_dinov2(pos_interp="timm")
    with torch.no_grad():
        y = timm_rule.begin(emb).x
    rel = (y[0, 1:] - x[0, 1:]).norm() / x[0, 1:].norm()
    assert rel > 1e-3


def test_dinov2_rule_leaves_the_native_grid_untouched():
    enc = _tiny_dinov2()
    with torch.no_grad():
        x = enc.begin(torch.zeros(1, 37, 37, 24)).x
    torch.testing.assert_close(x[0, 1:], enc.model.pos_embed[0, 1:].detach())


def test_other_vits_keep_timms_rule():
    from rsprompt.models.encoders.vit import TimmViTEncoder

    enc = TimmViTEncoder("vit_tiny_patch16_224", depth=1, embed_dim=24, num_heads=2)
    assert enc.pos_interp == "timm"


# --------------------------------------------------------------------------- RPN loss
def _s(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def _focal_term(x: float, y: int) -> float:
    """α_t (1 − p_t)^γ · BCE for one pixel and class (α 0.25, γ 2)."""
    p = _s(x)
    return 0.25 * (1 - p) ** 2 * -math.log(p) if y else 0.75 * p**2 * -math.log(1 - p)


def _rpn():
    from rsprompt.models.registry import build_model

    return build_model("rpn", "rsprompt-tiny-clip", 2, img_size=64, device="meta")


def test_rpn_loss_by_hand_ignored_pixels_are_negatives():
    """One image, classes 0 and 1 present (N = 2), the third pixel ignored (255)."""
    logits = torch.tensor([[[[0.0, 2.0, 5.0]], [[1.0, -1.0, 5.0]]]])  # 1×2×1×3
    target = torch.tensor([[[1, 0, 255]]])
    labels = [[0, 1, 0], [1, 0, 0]]  # per class: 1 where the label is the class, else 0
    xs = [[0.0, 2.0, 5.0], [1.0, -1.0, 5.0]]
    focal = sum(sum(_focal_term(x, y) for x, y in zip(xs[k], labels[k])) / 3 for k in (0, 1)) / 2
    dice = 0.0
    for k in (0, 1):
        p = [_s(x) for x in xs[k]]
        inter = sum(pi * yi for pi, yi in zip(p, labels[k]))
        dice += 1 - (2 * inter + 1) / (sum(p) + sum(labels[k]) + 1)
    dice /= 2
    model = _rpn()
    losses = model.compute_loss({"logits": logits}, target)
    assert losses["loss_focal"].item() == pytest.approx(focal, rel=1e-5)
    assert losses["loss_dice"].item() == pytest.approx(dice, rel=1e-5)
    assert losses["loss"].item() == pytest.approx(100 * focal + dice, rel=1e-5)


def test_rpn_loss_absent_classes_and_an_unlabelled_image():
    """Two images, three classes. Image 0 has classes 0 and 1 (class 2 absent); image 1 is all
    ignored. N = 2 present masks. Focal: all 6 masks over all pixels; dice: the 2 present."""
    logits = torch.tensor(
        [
            [[[0.5, -0.5]], [[-1.0, 1.5]], [[0.2, -2.0]]],
            [[[1.0, 0.0]], [[-0.3, 0.7]], [[2.0, 0.1]]],
        ]
    )  # 2×3×1×2
    target = torch.tensor([[[0, 1]], [[255, 255]]])
    xs = logits[:, :, 0, :].tolist()
    ys = [[[1, 0], [0, 1], [0, 0]], [[0, 0], [0, 0], [0, 0]]]
    focal = 0.0
    for b in range(2):
        for k in range(3):
            focal += sum(_focal_term(x, y) for x, y in zip(xs[b][k], ys[b][k])) / 2
    focal /= 2
    dice = 0.0
    for k in (0, 1):  # image 0 only
        p = [_s(x) for x in xs[0][k]]
        inter = sum(pi * yi for pi, yi in zip(p, ys[0][k]))
        dice += 1 - (2 * inter + 1) / (sum(p) + sum(ys[0][k]) + 1)
    dice /= 2
    from rsprompt.models.registry import build_model

    model = build_model("rpn", "rsprompt-tiny-clip", 3, img_size=64, device="meta")
    losses = model.compute_loss({"logits": logits}, target)
    assert losses["loss_focal"].item() == pytest.approx(focal, rel=1e-5)
    assert losses["loss_dice"].item() == pytest.approx(dice, rel=1e-5)


def test_rpn_loss_with_no_labelled_pixel_divides_by_one():
    logits = torch.tensor([[[[0.3, -0.2]], [[1.0, 0.4]]]])
    target = torch.tensor([[[255, 255]]])
    focal = sum(_focal_term(x, 0) for row in logits[0, :, 0].tolist() for x in row) / 2
    losses = _rpn().compute_loss({"logits": logits}, target)
    assert losses["loss_focal"].item() == pytest.approx(focal, rel=1e-5)  # N clamped to 1
    assert losses["loss_dice"].item() == 0.0


def test_rpn_ignored_pixels_get_a_gradient():
    logits = torch.zeros(1, 2, 1, 2, requires_grad=True)
    _rpn().compute_loss({"logits": logits}, torch.tensor([[[0, 255]]]))["loss"].backward()
    assert (logits.grad[0, :, 0, 1] > 0).all()  # pushed towards negative for every class


# --------------------------------------------------------------------------- RPN CLS token
def test_cls_token_forms():
    """Released: CLS input 2·class_embedding + pos[0]; CLIP: class_embedding + pos[0]."""
    from rsprompt.models.encoders.clip import build_clip, embed_image

    visual, _, _ = build_clip("rsprompt-tiny-clip", seed=3)
    with torch.no_grad():
        visual.class_embedding.copy_(torch.linspace(-1, 1, 64))
        visual.ln_pre = torch.nn.Identity()  # compare the raw token inputs
        image = torch.randn(2, 3, 64, 64)
        rel, _ = embed_image(visual, image, cls_form="released")
        std, _ = embed_image(visual, image, cls_form="clip")
    ce, pos0 = visual.class_embedding, visual.positional_embedding[0]
    torch.testing.assert_close(rel[:, 0], (2 * ce + pos0).expand(2, -1))
    torch.testing.assert_close(std[:, 0], (ce + pos0).expand(2, -1))
    torch.testing.assert_close(rel[:, 1:], std[:, 1:])
    with pytest.raises(ValueError, match="cls_form"):
        embed_image(visual, image, cls_form="zegclip")


def test_rpn_cls_form_default_and_old_checkpoints():
    from rsprompt.models.methods.rpn import rpn_from_config
    from rsprompt.models.registry import build_model

    model = build_model("rpn", "rsprompt-tiny-clip", 2, img_size=64)
    assert model.cls_form == "released" and model.config()["cls_form"] == "released"
    old = model.config()
    del old["cls_form"]  # a checkpoint written before the option: standard CLIP form
    assert rpn_from_config(old).cls_form == "clip"
    assert (
        build_model("rpn", "rsprompt-tiny-clip", 2, img_size=64, cls_form="clip").cls_form == "clip"
    )


def test_rpn_vpt_dropout_mask_per_sample_and_default_bias_init():
    from rsprompt.models.registry import build_model

    model = build_model("rpn", "rsprompt-tiny-clip", 2, img_size=64, dropout=0.5)
    bound = 1 / math.sqrt(model.prompt_proj.in_features)  # PyTorch's default Linear bias init
    bias = model.prompt_proj.bias.detach()
    assert bias.abs().max() <= bound and bias.abs().max() > 0
    seen = []
    block0 = model.image_encoder.transformer.resblocks[0]
    handle = block0.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    model.train()
    torch.manual_seed(0)
    image = torch.randn(1, 3, 64, 64).expand(2, -1, -1, -1)  # the same image twice
    with torch.no_grad():
        model.forward_logits(image)
    handle.remove()
    tokens = seen[0][:, 1 : 1 + model.vpt_tokens]  # VPT tokens of block 0
    assert not torch.equal(tokens[0], tokens[1])  # one dropout mask per sample
    assert ((tokens[0] == 0) != (tokens[1] == 0)).any()


def test_dplnet_mpg_and_head_init_as_released():
    """Linear layers keep PyTorch's default init (weights and biases U(±1/sqrt(fan_in)), nonzero
    biases); the fuse conv is kaiming-normal fan-out: std sqrt(2 / fan_out)."""
    from rsprompt.models.methods.dplnet import MultimodalPromptGenerator, SegFormerMLPHead

    torch.manual_seed(0)
    mpg = MultimodalPromptGenerator(256)
    for lin in (mpg.aux_proj, mpg.optical_proj, mpg.out_proj):
        bound = 1 / math.sqrt(lin.in_features)
        assert lin.bias.abs().max() > 0.5 * bound  # trunc-normal(0.02) init had zero biases
        assert lin.weight.abs().max() <= bound
        assert lin.weight.std() > 0.5 * bound / math.sqrt(3)  # uniform std = bound / sqrt(3)
    head = SegFormerMLPHead([32, 64, 160, 256], 6, embed_dim=128)
    assert head.linear_c[0].bias.abs().max() > 0
    fuse = head.fuse[0].weight  # 128 out × 512 in, 1×1: fan_out = 128
    assert abs(fuse.std().item() - math.sqrt(2 / 128)) < 0.01
