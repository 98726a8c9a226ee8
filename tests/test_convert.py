"""Loading the authors' released weights (``load_official``) and ``rsprompt convert``.

Each test writes a state dict the way the released code names it, from the module structure of
the released repositories (sauryeo/MoBaNet ``Net.py`` and ``Model/models/dinov2/build_dinov2.py``,
ShaohuaDong2021/DPLNet ``RGBD/toolbox/models/DPLNet.py`` and
``mix_transformer_ourprompt_proj.py``, liblacklucy/RPN ``models/segmentor/cptclip.py``,
``models/backbone/img_encoder.py``, ``models/decode_heads/decode_seg.py``). The released names
are written out here module by module, independently of ``rsprompt.models.convert``; the
released forward formulas of CPIA, DGFM, ADA/MPG, the MFA prompt attention and the LPM head are
written out too and compared with the loaded rsprompt modules.
"""

from __future__ import annotations

import datetime
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import Tensor, nn

from rsprompt.cli import main
from rsprompt.engine.checkpoint import load_model_checkpoint
from rsprompt.models.convert import (
    OfficialStateError,
    build_official_model,
    convert_state_dict,
    load_official,
    load_official_with_report,
    official_names,
)
from rsprompt.models.weights import sha256_file

K = 6
TINY = {
    "mobanet": (
        "vit_small_patch14_dinov2",
        {"encoder_kwargs": {"depth": 4, "embed_dim": 32, "num_heads": 2, "img_size": 56}},
    ),
    "dplnet": ("mit_b0", {"encoder_kwargs": {"depths": [1, 1, 1, 1]}}),
    "rpn": ("rsprompt-tiny-clip", {"img_size": 64}),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _perturbed(method: str, seed: int = 0):
    """A tiny rsprompt model whose every float tensor is perturbed (zero-init gates included)."""
    encoder, kwargs = TINY[method]
    torch.manual_seed(seed)
    model = build_official_model(method, encoder, K, **kwargs)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if not value.is_floating_point():
                continue
            noise = torch.randn(value.shape, generator=gen)
            if key.endswith("running_var"):
                value.mul_(1 + noise.abs())
            else:
                value.add_(0.1 * noise)
    return model.eval()


def _put(out: dict[str, Tensor], prefix: str, source: nn.Module | Tensor, names=None) -> None:
    """Copy ``source``'s tensors under ``prefix`` (only ``names`` when given, checked complete)."""
    if isinstance(source, Tensor):
        out[prefix] = source.detach().clone()
        return
    state = source.state_dict()
    if names is not None:
        assert sorted(names) == sorted(state), f"hand list of {prefix} is incomplete"
    for key in names or state:
        out[f"{prefix}.{key}"] = state[key].detach().clone()


def _linear(name: str) -> list[str]:
    return [f"{name}.weight", f"{name}.bias"]


# --------------------------------------------------------------------------- released layouts
#: A block of Meta's DINOv2 (dinov2/layers/block.py) with its MLP FFN.
DINOV2_BLOCK = [
    *_linear("norm1"),
    *_linear("attn.qkv"),
    *_linear("attn.proj"),
    "ls1.gamma",
    *_linear("norm2"),
    *_linear("mlp.fc1"),
    *_linear("mlp.fc2"),
    "ls2.gamma",
]


def released_mobanet(model, block_names: list[str] | None = DINOV2_BLOCK) -> dict[str, Tensor]:
    """MoBaNet's ``Net`` (DINOv2 path) state dict, written from the released module names.

    ``block_names``: the hand list of a DINOv2 block (``None``: the block's own names).
    """
    out: dict[str, Tensor] = {}
    vit = model.encoder.model
    trunk = "image_encoder.backbone"
    for name in ("cls_token", "pos_embed"):
        _put(out, f"{trunk}.{name}", getattr(vit, name))
    out[f"{trunk}.mask_token"] = torch.randn(1, vit.embed_dim)  # Meta's; unused by MoBaNet
    _put(out, f"{trunk}.patch_embed.proj", vit.patch_embed.proj)
    for i, blk in enumerate(vit.blocks):
        _put(out, f"{trunk}.blocks.{i}", blk, block_names)
    _put(out, f"{trunk}.norm", vit.norm)
    _put(out, "image_encoder.extra_patch_embed.proj", model.aux_patch_embed.proj)
    for i in range(4):
        c, g = model.cpia[i], model.dgfm[i]
        cpia = f"image_encoder.peft_cpia_blocks.{i}"
        # CPIABlock.forward: D_fc1(x_rgb), D_fc2(x_dsm), P_fc2(cat), U_fc1; tfts_*_rgb / *_dsm
        for released, module in (("D_fc1", c.down_opt), ("D_fc2", c.down_aux)):
            _put(out, f"{cpia}.{released}", module)
        _put(out, f"{cpia}.P_fc2", c.fuse)
        _put(out, f"{cpia}.U_fc1", c.up)
        _put(out, f"{cpia}.tfts_gamma_rgb", c.gamma_opt)
        _put(out, f"{cpia}.tfts_beta_rgb", c.beta_opt)
        _put(out, f"{cpia}.tfts_gamma_dsm", c.gamma_aux)
        _put(out, f"{cpia}.tfts_beta_dsm", c.beta_aux)
        dgfm = f"image_encoder.peft_dgfm_blocks.{i}"
        _put(out, f"{dgfm}.rgb_reduce", g.reduce_opt)
        _put(out, f"{dgfm}.dsm_reduce", g.reduce_aux)
        _put(out, f"{dgfm}.gate_net.0", g.mix)  # Conv 3h→h
        _put(out, f"{dgfm}.gate_net.1", g.norm)  # GroupNorm(1, h); 2 = GELU
        _put(out, f"{dgfm}.gate_net.3", g.gate)  # Conv h→D; 4 = Sigmoid
        _put(out, f"image_encoder.peft_fuse_norms.{i}", g.out_norm)
        _put(out, f"image_encoder.dual_proj_layers.{i}", model.proj[i])
    dec = model.decoder
    for j, stage in enumerate(dec.ppm.stages):  # Sequential(AdaptiveAvgPool, ConvBNReLU)
        _put(out, f"decoder.ppm.stages.{j}.1", stage[1])
    _put(out, "decoder.ppm.bottleneck", dec.bottleneck)  # PPM owns its bottleneck
    for i in range(3):
        _put(out, f"decoder.lateral_convs.{i}", dec.lateral_convs[i])
        _put(out, f"decoder.fpn_convs.{i}", dec.fpn_convs[i])
    _put(out, "decoder.fpn_bottleneck", dec.fuse)
    _put(out, "decoder.classifier.1.0", dec.classifier)  # Sequential(Dropout2d, Conv(conv))
    for name, head in zip(("aux_head_rgb", "aux_head_dsm"), model.aux_heads, strict=True):
        _put(out, f"{name}.conv", head[0])  # ConvBNReLU
        _put(out, f"{name}.conv_out.0", head[2])  # Conv(Sequential(conv)), no bias
    return out


def _mit_block(sr: bool) -> list[str]:
    names = [*_linear("norm1"), *_linear("attn.q"), *_linear("attn.kv"), *_linear("attn.proj")]
    if sr:
        names += [*_linear("attn.sr"), *_linear("attn.norm")]
    return [*names, *_linear("norm2"), *_linear("mlp.fc1"), *_linear("mlp.dwconv.dwconv"),
            *_linear("mlp.fc2")]  # fmt: skip


def released_dplnet(model) -> dict[str, Tensor]:
    """The RGB-D ``DPLNet`` state dict, written from the released module names."""
    out: dict[str, Tensor] = {}
    mit = model.encoder
    index = 0
    for s in range(1, 5):
        _put(out, f"rgb.patch_embed{s}", getattr(mit, f"patch_embed{s}"))
        for j, blk in enumerate(getattr(mit, f"block{s}")):
            _put(out, f"rgb.block{s}.{j}", blk, _mit_block(sr=s < 4))
            mfa = model.mfa[index]
            index += 1
            _put(out, f"rgb.block{s}.{j}.norm_prompt", mfa.norm)
            _put(out, f"rgb.block{s}.{j}.attn.q_prompt", mfa.q)
            _put(out, f"rgb.block{s}.{j}.attn.kv_prompt", mfa.kv)
            _put(out, f"rgb.block{s}.{j}.attn.k_prompt", mfa.k)
            _put(out, f"rgb.block{s}.{j}.attn.v_prompt", mfa.v)
            _put(out, f"rgb.block{s}.{j}.attn.proj_prompt", mfa.proj)
        _put(out, f"rgb.norm{s}", getattr(mit, f"norm{s}"))
        _put(out, f"patch_embed{s}", model.aux_patch_embed[s - 1])
        mpg = model.mpg[s - 1]
        _put(out, f"ada{s}.conv0_0", mpg.aux_proj)  # ADA.forward(p=depth, x=rgb)
        _put(out, f"ada{s}.conv0_1", mpg.optical_proj)
        _put(out, f"ada{s}.conv", mpg.out_proj)
    # MITB5's own SegFormer head (ADE20K weights, never run by DPLNet.forward)
    out["rgb.head.linear_pred.weight"] = torch.randn(150, 768, 1, 1)
    out["rgb.head.linear_fuse.bn.running_mean"] = torch.randn(768)
    out["learnable_prompt"] = model.prompt.detach().clone()[None]  # nn.Parameter(1×30×32)
    dec = model.decoder
    for i in range(4):
        _put(out, f"head.linear_c{i + 1}.proj", dec.linear_c[i])  # MLP(proj)
    _put(out, "head.linear_fuse.conv", dec.fuse[0])  # mmcv ConvModule: conv + bn
    _put(out, "head.linear_fuse.bn", dec.fuse[1])
    _put(out, "head.linear_pred", dec.pred)
    _put(out, "conv1", dec.classifier)  # Conv2d(150, K)
    return out


#: OpenAI CLIP's ResidualAttentionBlock (RPN's models/backbone/utils.py).
CLIP_BLOCK = [
    *_linear("ln_1"),
    "attn.in_proj_weight",
    "attn.in_proj_bias",
    *_linear("attn.out_proj"),
    *_linear("ln_2"),
    *_linear("mlp.c_fc"),
    *_linear("mlp.c_proj"),
]


def released_rpn(model) -> dict[str, Tensor]:
    """The mmseg ``CrossPromptCLIP`` state dict, written from the released module names."""
    out: dict[str, Tensor] = {}
    vis, txt = model.image_encoder, model.text_encoder
    for name in ("class_embedding", "positional_embedding", "proj"):
        _put(out, f"backbone.{name}", getattr(vis, name))
    out["backbone.conv1.weight"] = vis.conv1.weight.detach().clone()
    for name in ("ln_pre", "ln_post"):
        _put(out, f"backbone.{name}", getattr(vis, name))
    for i, blk in enumerate(vis.transformer.resblocks):
        _put(out, f"backbone.transformer.resblocks.{i}", blk, CLIP_BLOCK)
    _put(out, "backbone.deep_prompt_embeddings", model.vpt)  # total_d_layer × num_tokens × D
    _put(out, "backbone.prompt_proj", model.prompt_proj)
    _put(out, "backbone.prompt_norm", model.prompt_norm)
    _put(out, "text_encoder.token_embedding", txt.token_embedding)
    for name in ("positional_embedding", "text_projection"):
        _put(out, f"text_encoder.{name}", getattr(txt, name))
    for i, blk in enumerate(txt.transformer.resblocks):
        _put(out, f"text_encoder.transformer.resblocks.{i}", blk, CLIP_BLOCK)
    _put(out, "text_encoder.ln_final", txt.ln_final)
    _put(out, "prompt_proj", model.relation_h)  # the segmentor's nn.Parameter(hw × D): h
    _put(out, "prompt_norm", nn.LayerNorm(vis.class_embedding.shape[0]))  # never used
    head = model.head
    _put(out, "decode_head.vis_proj_1", head.image_proj)
    _put(out, "decode_head.vis_norm_1", head.image_norm)
    _put(out, "decode_head.cls_proj", head.text_fuse)  # Linear(2·dim → dim) in get_cls_token
    _put(out, "decode_head.cls_proj_1", head.text_proj)  # t_proj registered as cls_proj_{i}
    _put(out, "decode_head.tex_norm_1", head.text_norm)
    return out


RELEASED = {"mobanet": released_mobanet, "dplnet": released_dplnet, "rpn": released_rpn}
IGNORED = {
    "mobanet": ["image_encoder.backbone.mask_token"],
    "dplnet": ["rgb.head.linear_fuse.bn.running_mean", "rgb.head.linear_pred.weight"],
    "rpn": ["prompt_norm.bias", "prompt_norm.weight"],
}


def _inputs(method: str, size: int = 64):
    gen = torch.Generator().manual_seed(5)
    image = torch.randn(2, 3, size, size, generator=gen)
    aux = None if method == "rpn" else torch.rand(2, 1, size, size, generator=gen)
    return image, aux


def _max_diff(a: nn.Module, b: nn.Module, method: str) -> float:
    image, aux = _inputs(method)
    with torch.no_grad():
        return float((a(image, aux) - b(image, aux)).abs().max())


# --------------------------------------------------------------------------- load_official
@pytest.mark.parametrize("method", ["mobanet", "dplnet", "rpn"])
def test_released_layout_loads_every_tensor_and_gives_the_same_outputs(method):
    source = _perturbed(method)
    released = RELEASED[method](source)
    encoder, kwargs = TINY[method]
    model, conversion = load_official_with_report(method, released, encoder, K, **kwargs)
    assert not model.training
    theirs = model.state_dict()
    for key, value in source.state_dict().items():  # every tensor landed, frozen ones too
        assert torch.equal(theirs[key], value), key
    assert conversion.ignored == IGNORED[method]
    assert set(conversion.sources.values()) == set(released) - set(IGNORED[method])
    assert _max_diff(model, source, method) <= 1e-5


def test_dinov2_chunked_blocks_module_prefix_and_nesting():
    """``block_chunks=1`` keys, DataParallel's ``module.`` and mmcv-style nesting unwrap."""
    source = _perturbed("mobanet")
    released = released_mobanet(source)
    chunked = {}
    for key, value in released.items():
        key = key.replace("backbone.blocks.", "backbone.blocks.0.")  # one chunk: blocks.0.{i}
        chunked[f"module.{key}"] = value
    encoder, kwargs = TINY["mobanet"]
    wrapped = {"meta": {"epoch": 3}, "state_dict": chunked}
    model = load_official("mobanet", wrapped, encoder, K, **kwargs)
    assert _max_diff(model, source, "mobanet") <= 1e-5


def test_dinov2_giant_swiglu_names():
    """Meta's ViT-g SwiGLU ``mlp.w12``/``mlp.w3`` load into timm's packed ``mlp.fc1``/``fc2``."""
    kwargs = {"encoder_kwargs": {"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 28}}
    torch.manual_seed(0)
    source = build_official_model("mobanet", "dinov2_vitg14", K, **kwargs).eval()
    released = {}
    for key, value in released_mobanet(source, block_names=None).items():
        released[key.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3.")] = value
    assert "image_encoder.backbone.blocks.1.mlp.w12.weight" in released
    model = load_official("mobanet", released, "vit_giant_patch14_dinov2", K, **kwargs)
    image, aux = _inputs("mobanet", 28)
    with torch.no_grad():
        assert float((model(image, aux) - source(image, aux)).abs().max()) <= 1e-5


def test_mobanet_without_aux_heads_drops_the_released_ones():
    """The released ``Net`` always has its training-only aux heads; ``mcrm=False`` drops them."""
    source = _perturbed("mobanet")
    released = released_mobanet(source)
    encoder, kwargs = TINY["mobanet"]
    model, conversion = load_official_with_report(
        "mobanet", released, encoder, K, mcrm=False, **kwargs
    )
    assert model.aux_heads is None
    # 2 heads × (3×3 conv + BatchNorm weight, bias, mean, var, count + 1×1 conv) = 14 tensors
    assert sum(k.startswith(("aux_head_rgb.", "aux_head_dsm.")) for k in conversion.ignored) == 14
    assert _max_diff(model, source, "mobanet") <= 1e-5


def test_dplnet_fold_kv_after_loading():
    source = _perturbed("dplnet")
    encoder, kwargs = TINY["dplnet"]
    folded = load_official("dplnet", released_dplnet(source), encoder, K, fold_kv=True, **kwargs)
    assert folded.folded
    # folding re-associates float32 sums: the bound for outputs (1e-4)
    assert _max_diff(folded, source, "dplnet") <= 1e-4


def test_every_missing_unexpected_and_misshaped_key_is_listed():
    source = _perturbed("mobanet")
    released = released_mobanet(source)
    gone = ["image_encoder.peft_cpia_blocks.2.U_fc1.bias", "decoder.fpn_bottleneck.0.weight"]
    for key in gone:
        del released[key]
    junk = ["image_encoder.peft_cpia_blocks.9.D_fc1.weight", "image_encoder.fpn1x.0.weight"]
    for key in junk:
        released[key] = torch.zeros(3)
    bad = ["image_encoder.dual_proj_layers.1.weight", "decoder.classifier.1.0.weight"]
    for key in bad:
        released[key] = torch.zeros(7, 7)
    encoder, kwargs = TINY["mobanet"]
    with pytest.raises(OfficialStateError) as err:
        load_official("mobanet", released, encoder, K, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    for key in [*gone, *junk, *bad]:
        assert key in message
    assert "2 missing" in message and "2 unexpected" in message and "2 wrongly shaped" in message
    assert "num_classes" in message  # the option that shapes the classifier is named


def test_shape_errors_name_the_option_rpn():
    source = _perturbed("rpn")
    released = released_rpn(source)
    released["backbone.deep_prompt_embeddings"] = torch.zeros(3, 100, 64)
    with pytest.raises(OfficialStateError, match=r"vpt_tokens"):
        load_official("rpn", released, "rsprompt-tiny-clip", K, img_size=64)


def test_convert_state_dict_is_strict_about_non_tensors_and_methods():
    model = _perturbed("rpn")
    with pytest.raises(OfficialStateError, match="non-tensor"):
        load_official("rpn", {"backbone.proj": 3}, "rsprompt-tiny-clip", K, img_size=64)
    with pytest.raises(ValueError, match="supported: mobanet, dplnet, rpn"):
        convert_state_dict("gopt", {}, model)
    with pytest.raises(ValueError, match="no aux modality"):
        build_official_model("rpn", "rsprompt-tiny-clip", K, aux_channels=1, img_size=64)


def test_mobanet_needs_dinov2():
    with pytest.raises(ValueError, match="DINOv2"):
        build_official_model("mobanet", "mit_b0", K, encoder_kwargs={"depths": [1, 1, 1, 1]})


@pytest.mark.parametrize(
    ("method", "encoder", "classes", "count", "names"),
    [
        # DINOv2 ViT-L: cls, pos, patch w/b, 24 blocks × 14, norm w/b = 342; extra patch embed
        # 2; CPIA 4 × (4 linears × 2 + 4 tfts) = 48; DGFM 4 × (3 convs + GN 2 + gate 2 + fuse
        # norm 2) = 36; projections 4; UPerNet 4 × 6 + 6 + 3 × 6 + 3 × 6 + 6 + 1 = 73 (a conv
        # and its BatchNorm's 5 tensors); aux heads 2 × (6 + 1) = 14 → 519
        ("mobanet", "dinov2_vitl14", 6, 519, ["image_encoder.backbone.blocks.23.ls2.gamma"]),
        # image tower 1 + 1 + 1 + 2 + 12 × 12 + 2 + 1 = 152; VPT, prompt Linear, LayerNorm 5;
        # h 1; text tower 1 + 1 + 12 × 12 + 2 + 1 = 149; LPM head 5 × 2 = 10 → 317
        ("rpn", "ViT-B-16", 15, 317, ["backbone.deep_prompt_embeddings", "prompt_proj"]),
        # MiT-B5: patch embeds 16, 49 blocks with sr × 20 + 3 × 16, norms 8 = 1052; prompt
        # parts 52 blocks × 12 = 624; aux patch embeds 16; ADA 4 × 6; prompt 1; head 8 + 6 + 2
        # + conv1 2 = 18 → 1735
        ("dplnet", "mit_b5", 41, 1735, ["rgb.block3.39.attn.proj_prompt.bias", "ada4.conv.bias"]),
    ],
)
def test_paper_configurations_have_a_released_name_for_every_tensor(
    method, encoder, classes, count, names
):
    model = build_official_model(method, encoder, classes, device="meta")
    released = official_names(method, model)
    assert len(set(released.values())) == len(released) == count
    assert set(names) <= set(released.values())


# --------------------------------------------------------------------------- released formulas
def _lin(sd: dict[str, Tensor], name: str, x: Tensor) -> Tensor:
    return F.linear(x, sd[f"{name}.weight"], sd.get(f"{name}.bias"))


def test_mobanet_cpia_and_dgfm_follow_the_released_forward():
    source = _perturbed("mobanet")
    sd = released_mobanet(source)
    encoder, kwargs = TINY["mobanet"]
    model = load_official("mobanet", sd, encoder, K, **kwargs)
    gen = torch.Generator().manual_seed(2)
    x_rgb, x_dsm = torch.randn(2, 5, 32, generator=gen), torch.randn(2, 5, 32, generator=gen)
    c = "image_encoder.peft_cpia_blocks.1"
    # CPIABlock: x = U_fc1(P_fc2(cat(D_fc1(x_rgb), D_fc2(x_dsm)))); the encoder adds
    # x + (x·γ + β) of each modality to that modality's patch tokens.
    x = _lin(sd, f"{c}.U_fc1", _lin(sd, f"{c}.P_fc2", torch.cat(
        [_lin(sd, f"{c}.D_fc1", x_rgb), _lin(sd, f"{c}.D_fc2", x_dsm)], -1)))  # fmt: skip
    want_rgb = x_rgb + x + x * sd[f"{c}.tfts_gamma_rgb"] + sd[f"{c}.tfts_beta_rgb"]
    want_dsm = x_dsm + x + x * sd[f"{c}.tfts_gamma_dsm"] + sd[f"{c}.tfts_beta_dsm"]
    got_rgb, got_dsm = model.cpia[1](x_rgb, x_dsm)
    torch.testing.assert_close(got_rgb, want_rgb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_dsm, want_dsm, atol=1e-5, rtol=1e-5)

    f_rgb, f_dsm = torch.randn(2, 32, 3, 3, generator=gen), torch.randn(2, 32, 3, 3, generator=gen)
    g = "image_encoder.peft_dgfm_blocks.2"
    r = F.conv2d(f_rgb, sd[f"{g}.rgb_reduce.weight"])
    d = F.conv2d(f_dsm, sd[f"{g}.dsm_reduce.weight"])
    z = F.conv2d(torch.cat([r, d, (r - d).abs()], 1), sd[f"{g}.gate_net.0.weight"])
    z = F.gelu(F.group_norm(z, 1, sd[f"{g}.gate_net.1.weight"], sd[f"{g}.gate_net.1.bias"]))
    gate = torch.sigmoid(F.conv2d(z, sd[f"{g}.gate_net.3.weight"], sd[f"{g}.gate_net.3.bias"]))
    fused = (gate * f_rgb + (1 - gate) * f_dsm).permute(0, 2, 3, 1)
    n = "image_encoder.peft_fuse_norms.2"
    want = F.layer_norm(fused, (32,), sd[f"{n}.weight"], sd[f"{n}.bias"]).permute(0, 3, 1, 2)
    torch.testing.assert_close(model.dgfm[2](f_rgb, f_dsm), want, atol=1e-5, rtol=1e-5)


def test_dplnet_ada_and_prompt_attention_follow_the_released_forward():
    source = _perturbed("dplnet")
    sd = released_dplnet(source)
    encoder, kwargs = TINY["dplnet"]
    model = load_official("dplnet", sd, encoder, K, **kwargs)
    gen = torch.Generator().manual_seed(3)
    x, dep = torch.randn(2, 7, 64, generator=gen), torch.randn(2, 7, 64, generator=gen)
    # ADA.forward(p, x) = conv(conv0_0(p) + conv0_1(x)), called as ada2(d2, x2)
    want = _lin(sd, "ada2.conv", _lin(sd, "ada2.conv0_0", dep) + _lin(sd, "ada2.conv0_1", x))
    torch.testing.assert_close(model.mpg[1](x, dep), want, atol=1e-5, rtol=1e-5)

    # Attention's prompt branch of block4.0 (C = 256, 8 heads, C/32 = 8), from q = attn.q(x)
    b, n, c, h = 2, 5, 256, 8
    blk = "rgb.block4.0"
    q = torch.randn(b, n, c, generator=gen)
    prompt = F.layer_norm(sd["learnable_prompt"].expand(b, -1, -1), (32,),
                          sd[f"{blk}.norm_prompt.weight"], sd[f"{blk}.norm_prompt.bias"], 1e-6)  # fmt: skip
    kv = _lin(sd, f"{blk}.attn.kv_prompt", prompt).reshape(b, -1, 2, h, c // h)
    kv = kv.permute(2, 0, 3, 1, 4)
    k_p = _lin(sd, f"{blk}.attn.k_prompt", kv[0].transpose(-3, -2).flatten(2, 3))
    v_p = _lin(sd, f"{blk}.attn.v_prompt", kv[1].transpose(-3, -2).flatten(2, 3))
    q_p = _lin(sd, f"{blk}.attn.q_prompt", q)
    split = lambda t: t.reshape(b, -1, h, c // 32 // h).permute(0, 2, 1, 3)  # noqa: E731
    attn = (split(q_p) @ split(k_p).transpose(-2, -1)) * (c // h) ** -0.5
    y = (attn.softmax(-1) @ split(v_p)).transpose(1, 2).reshape(b, n, c // 32)
    want = _lin(sd, f"{blk}.attn.proj_prompt", y)
    mfa = model.mfa[3]
    torch.testing.assert_close(mfa(q, *mfa.prompt_kv(model.prompt)), want, atol=1e-5, rtol=1e-5)


def test_rpn_lpm_head_and_relation_follow_the_released_forward():
    source = _perturbed("rpn")
    sd = released_rpn(source)
    model = load_official("rpn", sd, "rsprompt-tiny-clip", K, img_size=64)
    gen = torch.Generator().manual_seed(4)
    p = F.normalize(torch.randn(2, 16, 32, generator=gen), dim=-1)
    g = F.normalize(torch.randn(2, 32, generator=gen), dim=-1)
    t = F.normalize(torch.randn(K, 32, generator=gen), dim=-1)
    # CLIPHeadSeg.forward_cascade with use_proj=False (input_proj, proj_norm = Identity)
    vis = _lin(sd, "decode_head.vis_proj_1", p)
    vis = F.layer_norm(vis, (32,), sd["decode_head.vis_norm_1.weight"],
                       sd["decode_head.vis_norm_1.bias"])  # fmt: skip
    gt = g[:, None] * t[None]
    cls = _lin(sd, "decode_head.cls_proj", torch.cat([gt, t[None].expand_as(gt)], -1))
    cls = F.layer_norm(_lin(sd, "decode_head.cls_proj_1", cls), (32,),
                       sd["decode_head.tex_norm_1.weight"], sd["decode_head.tex_norm_1.bias"])  # fmt: skip
    want = vis @ cls.transpose(1, 2) * 32**-0.5
    torch.testing.assert_close(model.head(p, g, t), want, atol=1e-5, rtol=1e-5)
    # get_mask_prompt: (p·(g⊙t)ᵀ)ᵀ @ prompt_proj, then the backbone's prompt_proj Linear
    assert torch.equal(model.relation_h, sd["prompt_proj"])
    assert torch.equal(model.vpt, sd["backbone.deep_prompt_embeddings"])


# --------------------------------------------------------------------------- rsprompt convert
def _options(method: str) -> list[str]:
    return [a for k, v in TINY[method][1].items() for a in ("--option", f"{k}={json.dumps(v)}")]


def _convert(official: Path, out: Path, method: str, *extra: str):
    args = ["convert", method, str(official), "-o", str(out), "-e", TINY[method][0]]
    return CliRunner().invoke(main, [*args, "-k", str(K), *_options(method), *extra])


@pytest.fixture(scope="module")
def converted_mobanet(tmp_path_factory):
    """A converted tiny MoBaNet (Vaihingen classes) and the in-memory model it came from."""
    tmp = tmp_path_factory.mktemp("convert")
    source = _perturbed("mobanet")
    official = tmp / "MoBaNet_vaihingen.pth"
    torch.save(released_mobanet(source), official)
    out = tmp / "run" / "model.ckpt"
    res = _convert(official, out, "mobanet", "--dataset", "vaihingen", "--patch-size", "56")
    assert res.exit_code == 0, res.output
    encoder, kwargs = TINY["mobanet"]
    model = load_official("mobanet", torch.load(official, weights_only=True), encoder, K, **kwargs)
    return out, model, official


def test_cli_writes_a_checkpoint_and_encoder_file(converted_mobanet):
    out, model, official = converted_mobanet
    sidecar = out.with_name("model.encoder.safetensors")
    loaded, meta = load_model_checkpoint(out)
    assert _max_diff(loaded, model, "mobanet") <= 1e-5
    assert meta["weights"] == {"path": str(sidecar.resolve()), "sha256": sha256_file(sidecar)}
    assert meta["encoder_fingerprint"] is None and meta["encoder_seed"] is None
    assert meta["classes"][0] == "impervious surfaces" and meta["aux_kind"] == "dsm"
    assert meta["datamodule"].endswith("VaihingenDataModule") and meta["patch_size"] == 56
    assert meta["converted_from"]["sha256"] == sha256_file(official)
    assert meta["converted_from"]["ignored_keys"] == ["image_encoder.backbone.mask_token"]
    obj = torch.load(out, weights_only=True)  # the encoder is in the sidecar, not the checkpoint
    assert not any(k.startswith("encoder.") for k in obj["state_dict"])


@pytest.mark.parametrize("method", ["dplnet", "rpn"])
def test_cli_dplnet_and_rpn_round_trip(tmp_path, method):
    source = _perturbed(method)
    official = tmp_path / "released.pth"
    torch.save({"state_dict": RELEASED[method](source), "meta": {"iter": 80000}}, official)
    out = tmp_path / "model.ckpt"
    res = _convert(official, out, method)
    assert res.exit_code == 0, res.output
    loaded, meta = load_model_checkpoint(out)
    assert _max_diff(loaded, source, method) <= 1e-5
    if method == "rpn":  # the released text prompt is recorded, so rebuilding uses it
        assert meta["model_kwargs"]["templates"] == ["a photo of a {}"]
        assert loaded.class_names == meta["classes"]


def test_cli_predict_matches_the_in_memory_model(tmp_path, converted_mobanet):
    import rasterio

    from rsprompt.data.synthetic import generate_scene, write_scene
    from rsprompt.inference.from_checkpoint import CheckpointPredictor

    out, model, _ = converted_mobanet
    scene = generate_scene("isprs", size=(60, 70), seed=0, resolution=0.1)
    paths = write_scene(scene, tmp_path / "scene")
    image, dsm = Path(paths["image"]), Path(paths["dsm"])
    args = ["predict", str(image), "-m", str(out), "--dem", str(dsm), "-o", str(tmp_path / "a.tif")]
    res = CliRunner().invoke(main, [*args, "-q"])
    assert res.exit_code == 0, res.output
    predictor = CheckpointPredictor(out)
    predictor.model = model  # the same pipeline around the in-memory model
    predictor.predict(image, tmp_path / "b.tif", aux=dsm, aux_kind="dsm", progress=False)
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        assert (a.read(1) == b.read(1)).all()


def test_cli_evaluate_accepts_the_checkpoint(tmp_path, converted_mobanet):
    from test_configs import _make

    out, _, _ = converted_mobanet
    root = _make("vaihingen", tmp_path)
    args = ["evaluate", "-m", str(out), "--root", str(root), "--window", "56", "--stride", "56"]
    res = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "eval"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "impervious surfaces" in res.output
    assert (tmp_path / "eval" / "metrics.json").is_file()


def test_cli_refuses_to_replace_outputs_without_overwrite(tmp_path, converted_mobanet):
    _, _, official = converted_mobanet
    out = tmp_path / "model.ckpt"
    out.write_bytes(b"older model")
    res = _convert(official, out, "mobanet")
    assert res.exit_code != 0 and "--overwrite" in res.output
    assert out.read_bytes() == b"older model"
    assert not out.with_name("model.encoder.safetensors").exists()
    res = _convert(official, out, "mobanet", "--overwrite")
    assert res.exit_code == 0, res.output
    assert load_model_checkpoint(out)[1]["method"] == "mobanet"


def test_cli_errors_are_one_line_and_write_nothing(tmp_path, converted_mobanet):
    _, _, official = converted_mobanet
    state = torch.load(official, weights_only=True)
    del state["decoder.fpn_bottleneck.0.weight"]
    state["image_encoder.fpn1x.0.weight"] = torch.zeros(1)
    broken = tmp_path / "broken.pth"
    torch.save(state, broken)
    out = tmp_path / "out" / "model.ckpt"
    res = _convert(broken, out, "mobanet")
    assert res.exit_code != 0
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert "decoder.fpn_bottleneck.0.weight" in lines[0] and "fpn1x" in lines[0]
    assert not out.parent.exists() or not any(out.parent.iterdir())

    res = _convert(tmp_path / "none.pth", out, "mobanet")
    assert res.exit_code != 0 and "not found" in res.output
    pickled = tmp_path / "object.pth"
    torch.save({"state_dict": {"a": datetime.date(2024, 1, 1)}}, pickled)
    res = _convert(pickled, out, "mobanet")
    assert res.exit_code != 0 and "never unpickles" in res.output
    assert len(res.output.strip().splitlines()) == 1
    res = _convert(official, out, "mobanet", "--classes", "a,b")
    assert res.exit_code != 0 and "2 class names" in res.output
    res = _convert(official, out, "mobanet", "--option", f"weights={official}")
    assert res.exit_code != 0 and "the released file carries the encoder" in res.output
    res = _convert(official, out, "mobanet", "--option", "aux_channels=1")
    assert res.exit_code != 0 and "--aux-channels" in res.output
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    res = _convert(garbage, out, "mobanet")
    assert res.exit_code != 0 and "not a readable safetensors file" in res.output
    assert not out.exists()


def test_cli_reads_safetensors(tmp_path, converted_mobanet):
    from safetensors.torch import save_file

    _, model, official = converted_mobanet
    released = tmp_path / "released.safetensors"
    save_file(torch.load(official, weights_only=True), str(released))
    res = _convert(released, tmp_path / "model.ckpt", "mobanet")
    assert res.exit_code == 0, res.output
    assert _max_diff(load_model_checkpoint(tmp_path / "model.ckpt")[0], model, "mobanet") <= 1e-5


def test_cli_input_is_never_the_output(tmp_path, converted_mobanet):
    _, _, official = converted_mobanet
    copy = tmp_path / "model.ckpt"
    shutil.copy(official, copy)
    before = copy.read_bytes()
    res = _convert(copy, copy, "mobanet", "--overwrite")
    assert res.exit_code != 0 and "input file" in res.output
    assert copy.read_bytes() == before


def test_logit_scale_of_the_clip_sidecar_is_clips_initial_value(tmp_path):
    """RPN's sidecar is a full open_clip file; its unused logit_scale is ln(1/0.07)."""
    from safetensors.torch import load_file

    source = _perturbed("rpn")
    official = tmp_path / "rpn.pth"
    torch.save(released_rpn(source), official)
    assert _convert(official, tmp_path / "m.ckpt", "rpn").exit_code == 0
    state = load_file(str(tmp_path / "m.encoder.safetensors"))
    assert math.isclose(float(state["logit_scale"]), math.log(1 / 0.07), rel_tol=1e-6)
    assert torch.equal(state["visual.proj"], source.image_encoder.proj)
