"""The frozen-encoder interface over every family (tiny variants; no network)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rsprompt.models.encoders import FrozenEncoder, build_encoder, default_taps, encoder_family

TINY = {
    "vit": ("vit_tiny_patch16_224", {"depth": 4, "embed_dim": 32, "num_heads": 2}, 64),
    "dinov2": (
        "vit_small_patch14_dinov2",
        {"depth": 4, "embed_dim": 32, "num_heads": 2, "img_size": 56},
        70,
    ),
    "resnet": ("resnet18", {}, 64),
    "efficientnet": ("tf_efficientnet_lite0", {}, 64),
    "mit": ("mit_b0", {"depths": [1, 1, 1, 1]}, 64),
    "swin": (
        "swin_tiny_patch4_window7_224",
        {
            "img_size": 64,
            "window_size": 2,
            "depths": (1, 1, 1, 1),
            "embed_dim": 24,
            "num_heads": (1, 1, 1, 1),
        },
        64,
    ),
}


@pytest.fixture(scope="module", params=sorted(TINY))
def tiny(request) -> tuple[FrozenEncoder, int]:
    name, kw, size = TINY[request.param]
    return build_encoder(name, **kw), size


def test_shapes_widths_strides(tiny):
    enc, size = tiny
    x = torch.randn(2, enc.in_chans, size, size)
    taps = enc(x)
    assert len(taps) == enc.num_stages == len(enc.widths) == len(enc.in_widths) == len(enc.strides)
    for f, c, s in zip(taps, enc.widths, enc.strides):
        assert f.shape == (2, c, size // s, size // s)
    # stage inputs have the declared widths
    state = enc.begin(enc.embed(x))
    for i in range(enc.num_stages):
        assert enc.stage_map(state).shape[1] == enc.in_widths[i]
        state = enc.run_stage(i, state)
        assert enc.readout(i, state).shape[1] == enc.widths[i]
        assert enc.stage_modules(i)


def test_frozen_by_construction(tiny):
    enc, size = tiny
    assert all(not p.requires_grad for p in enc.parameters())
    enc.train()
    assert not any(m.training for m in enc.modules())
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    enc(torch.randn(2, enc.in_chans, size, size))  # BN running stats must not move
    for k, v in enc.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_stage_map_round_trip(tiny):
    enc, size = tiny
    state = enc.begin(enc.embed(torch.randn(1, enc.in_chans, size, size)))
    same = enc.with_stage_map(state, enc.stage_map(state))
    assert torch.equal(same.x, state.x)


def test_gradients_reach_inputs_and_encoder_weights_stay_identical(tiny):
    enc, size = tiny
    prompt = nn.Parameter(torch.zeros(1, enc.in_widths[0], 1, 1))
    opt = torch.optim.SGD([prompt], lr=1.0)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    state = enc.begin(enc.embed(torch.randn(2, enc.in_chans, size, size)))
    state = enc.with_stage_map(state, enc.stage_map(state) + prompt)
    for i in range(enc.num_stages):
        state = enc.run_stage(i, state)
    enc.readout(enc.num_stages - 1, state).square().mean().backward()
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.parameters())
    opt.step()
    for k, v in enc.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_stem_copy_is_trainable_and_equal(tiny):
    enc, size = tiny
    copy = enc.stem_copy()
    assert all(p.requires_grad for p in copy.parameters())
    copy.eval()
    x = torch.randn(1, enc.in_chans, size, size)
    assert torch.allclose(copy(x), enc.embed(x))
    assert not any(p.requires_grad for p in enc.parameters())


def test_encoder_seed_reproducible():
    name, kw, _ = TINY["resnet"]
    a = build_encoder(name, encoder_seed=3, **kw)
    b = build_encoder(name, encoder_seed=3, **kw)
    c = build_encoder(name, encoder_seed=4, **kw)
    wa, wb, wc = (e.model.conv1.weight for e in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert a.describe()["encoder_seed"] == 3 and a.weights is None and a.weights_sha256 is None


def test_vit_matches_timm_intermediates():
    name, kw, size = TINY["dinov2"]
    # timm's forward_intermediates resamples the position embedding with timm's rule; DINOv2's
    # own rule (the default for *dinov2 names) is tested in test_released_code.py.
    enc = build_encoder(name, taps=[0, 1, 3], pos_interp="timm", **kw)
    assert enc.taps == [0, 1, 3] and enc.num_stages == 3
    x = torch.randn(1, 3, size, size)
    ref = enc.model.forward_intermediates(x, indices=[0, 1, 3], norm=True, intermediates_only=True)
    for a, b in zip(enc(x), ref):
        assert torch.allclose(a, b, atol=1e-5)


def test_cnn_matches_timm_features():
    import timm

    enc = build_encoder("resnet18", encoder_seed=0)
    ref = timm.create_model("resnet18", features_only=True, out_indices=(1, 2, 3, 4))
    ref.load_state_dict(
        {k.replace("model.", "", 1): v for k, v in enc.state_dict().items()}, strict=False
    )
    ref.eval()
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(enc(x), ref(x)):
        assert torch.allclose(a, b, atol=1e-5)


def test_default_taps():
    assert default_taps(12) == [2, 5, 8, 11]
    assert default_taps(24) == [5, 11, 17, 23]
    assert default_taps(40) == [9, 19, 29, 39]
    assert default_taps(2) == [0, 0, 1, 1]


def test_bad_taps_rejected():
    name, kw, _ = TINY["vit"]
    with pytest.raises(ValueError, match="out of range"):
        build_encoder(name, taps=[1, 9], **kw)
    with pytest.raises(ValueError, match="only applies to plain ViTs"):
        build_encoder("resnet18", taps=[1, 2])


def test_family_and_unknown_name():
    assert encoder_family("vit_large_patch14_dinov2") == "vit"
    assert encoder_family("swin_tiny_patch4_window7_224") == "swin"
    assert encoder_family("mit_b5") == "mit"
    assert encoder_family("tf_efficientnet_lite0") == "cnn"
    with pytest.raises(ValueError, match="unknown encoder"):
        build_encoder("no_such_model_xyz")


@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("vit_small_patch14_dinov2", 22_056_192),
        ("vit_base_patch14_dinov2", 86_579_712),
        ("vit_large_patch14_dinov2", 304_367_616),
    ],
)
def test_paper_size_dinov2_on_meta(name, count):
    enc = build_encoder(name, device="meta")
    assert sum(p.numel() for p in enc.parameters()) == count
    assert enc.model.patch_embed.img_size == (518, 518)
    assert enc.patch_size == 14
    assert enc.mean == pytest.approx((0.485, 0.456, 0.406))


def test_normalisation_statistics():
    assert build_encoder("tf_efficientnet_lite0", device="meta").mean == (0.5, 0.5, 0.5)
    assert build_encoder("tf_efficientnet_lite0", device="meta").std == (0.5, 0.5, 0.5)
    enc = build_encoder("mit_b0", depths=[1, 1, 1, 1])
    assert enc.mean == pytest.approx((0.485, 0.456, 0.406))
    assert enc.std == pytest.approx((0.229, 0.224, 0.225))


def test_stochastic_depth_mode():
    name, kw, _ = TINY["mit"]
    enc = build_encoder(name, drop_path_rate=0.1, **kw)
    enc.stochastic_depth = True
    enc.train()
    assert any(m.training for m in enc.modules())
    enc.eval()
    assert not any(m.training for m in enc.modules())
