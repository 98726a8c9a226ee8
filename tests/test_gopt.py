"""Tests of GoPT (rsprompt's reconstruction; spec: docs/methods/gopt.md)."""

from __future__ import annotations

import time

import pytest
import torch
from helpers import one_torch_thread, train_on_toy_batches

from rsprompt.models.encoders import build_encoder
from rsprompt.models.methods.gopt import (
    GoPT,
    build_gopt,
    default_tap_indices,
    hard_assignment,
)
from rsprompt.models.registry import available_methods, build_model

TINY = {"depth": 4, "embed_dim": 64, "num_heads": 2, "patch_size": 8, "img_size": 64}


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine, 2 threads per process thrash."""
    with one_torch_thread():
        yield


def tiny(num_classes: int = 3, aux_channels: int = 1, **kw) -> GoPT:
    torch.manual_seed(0)
    return build_gopt("vit_base_patch16_224", num_classes, aux_channels, encoder_kwargs=TINY, **kw)


def perturb_prompts(model: GoPT, seed: int = 1) -> None:
    """Give the zero-initialised injection linears random weights (a "trained" model)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.prompters:
            for lin in (p.up_o, p.up_a):
                if lin is not None:
                    lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.5)


def frozen_taps(model: GoPT, image: torch.Tensor) -> list[torch.Tensor]:
    """Tap features of the frozen ViT alone (no prompts)."""
    enc = model.vit
    x = enc.norm_pre(enc.patch_drop(enc._pos_embed(enc.patch_embed(image))))
    out = []
    for i, block in enumerate(enc.blocks):
        x = block(x)
        if i in model.tap_indices:
            out.append(x[:, enc.num_prefix_tokens :])
    return out


def test_registered_and_default_taps() -> None:
    assert "gopt" in available_methods()
    assert default_tap_indices(12) == [2, 5, 8, 11]
    assert default_tap_indices(24) == [5, 11, 17, 23]
    assert default_tap_indices(4) == [0, 1, 2, 3]


def test_paper_configuration_count_on_meta() -> None:
    model = build_model("gopt", "vit_base_patch16_224", num_classes=40, device="meta")
    assert model.aux_channels == 3
    report = model.parameter_report()
    modules = report["modules"]
    assert report["frozen"] == 85_798_656
    assert modules["aux_patch_embed"] == 3 * 16 * 16 * 768 + 768 == 590_592
    # 11 prompters of 29,792 parameters, minus the last one's unused aux projection (8·768 + 768).
    assert modules["prompters"] == 11 * 29_792 - 6_912
    assert modules["acp"] == 3 * (8 * 8 + 8)
    assert modules["class_tokens"] == 40 * 8
    assert report["prompt"] == report["trainable"] - report["decoder"] == 911_928
    assert report["prompt"] <= 1_000_000
    assert set(modules) == {"aux_patch_embed", "prompters", "acp", "class_tokens", "decoder"}
    assert next(model.parameters()).device.type == "meta"


def test_shapes_and_aux_channels() -> None:
    model = tiny(num_classes=5, aux_channels=3).eval()
    image, aux3 = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert model(image, aux3).shape == (2, 5, 64, 64)
        # A 1-channel aux (a DSM) is replicated into the 3-channel aux embedding.
        assert model(image, aux3[:, :1]).shape == (2, 5, 64, 64)
        # Sizes that are not a multiple of the patch size are padded and cropped back.
        assert model(image[..., :60, :52], aux3[..., :60, :52]).shape == (2, 5, 60, 52)
        with pytest.raises(ValueError, match="channels"):
            model(image, aux3[:, :2])
    model.train()
    out = model(image, aux3)
    assert isinstance(out, dict) and out["logits"].shape == (2, 5, 64, 64)
    loss = model.compute_loss(out, torch.randint(0, 5, (2, 64, 64)))
    assert loss["loss"].ndim == 0 and torch.isfinite(loss["loss"])
    # No aux modality at all.
    model0 = tiny(num_classes=5, aux_channels=0).eval()
    assert model0.aux_patch_embed is None
    with torch.no_grad():
        assert model0(image).shape == (2, 5, 64, 64)


def test_gradients_only_where_intended_and_frozen_weights_unchanged() -> None:
    model = tiny().train()
    perturb_prompts(model)  # so gradients reach every prompter module
    frozen = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    assert all(not p.requires_grad for p in model.encoder.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    image, aux = torch.randn(2, 3, 64, 64), torch.randn(2, 1, 64, 64)
    loss = model.compute_loss(model(image, aux), torch.randint(0, 3, (2, 64, 64)))["loss"]
    loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
    assert model.aux_patch_embed.weight.grad.abs().sum() > 0
    assert model.class_tokens.grad.abs().sum() > 0
    assert model.acp.q.weight.grad.abs().sum() > 0
    opt.step()
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, frozen[k]), k
    # The frozen encoder stays in eval mode in training, and never enters the adapter state.
    assert not model.encoder.training
    assert not any(k.startswith("encoder.") for k in model.adapter_state_dict())


def test_hard_assignment_one_hot_in_training_and_argmax_in_eval() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 30)
    train = hard_assignment(logits, tau=1.0, training=True)
    assert set(train.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(train.sum(dim=1), torch.ones(2, 30))
    # Gumbel noise: different draws differ; eval is the plain argmax, deterministic.
    assert not torch.equal(train, hard_assignment(logits, training=True))
    evaluation = hard_assignment(logits, training=False)
    assert torch.equal(evaluation.argmax(dim=1), logits.argmax(dim=1))
    assert torch.equal(evaluation.sum(dim=1), torch.ones(2, 30))
    # Straight-through: the one-hot sample carries gradients.
    logits.requires_grad_(True)
    (hard_assignment(logits, training=True) * torch.randn(2, 5, 30)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # The same inside the model: every prompter's assignment is one-hot over the K classes.
    model = tiny(num_classes=4)
    image, aux = torch.randn(1, 3, 64, 64), torch.randn(1, 1, 64, 64)
    for mode in (True, False):
        model.train(mode)
        with torch.no_grad():
            _, _, assignments = model.forward_features(image, aux)
        assert len(assignments) == len(model.prompters) == 3
        for a in assignments:
            assert a.shape == (1, 4, 64) and torch.equal(a.sum(dim=1), torch.ones(1, 64))
    with pytest.raises(ValueError, match="gumbel_tau"):
        tiny(gumbel_tau=0.0)


def test_step0_equals_frozen_path() -> None:
    model = tiny().eval()
    image, aux = torch.randn(2, 3, 64, 64), torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        taps, grid, _ = model.forward_features(image, aux)
        reference = frozen_taps(model, image)
        assert grid == (8, 8)
        for got, want in zip(taps, reference, strict=True):
            assert torch.equal(got, want)
        # At step 0 the aux cannot change anything.
        assert torch.equal(model(image, aux), model(image, None))


def test_missing_and_partial_aux() -> None:
    model = tiny()
    perturb_prompts(model)
    model.eval()
    image, aux = torch.randn(2, 3, 64, 64), torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        full = model(image, aux)
        missing = model(image, None)
        assert torch.isfinite(missing).all()
        assert not torch.allclose(full, missing)  # the aux matters once prompts are trained
        ones, zeros = torch.ones(2, 1, 64, 64), torch.zeros(2, 1, 64, 64)
        assert torch.equal(model(image, aux, aux_valid=ones), full)
        assert torch.equal(model(image, aux, aux_valid=zeros), missing)
        half = ones.clone()
        half[..., 32:] = 0
        partial = model(image, aux, aux_valid=half)
        assert torch.isfinite(partial).all()
        assert not torch.allclose(partial, full) and not torch.allclose(partial, missing)


def test_short_training_learns_from_the_dsm() -> None:
    start = time.perf_counter()
    model = tiny(num_classes=3, aux_channels=1, pyramid_channels=32, decoder_channels=32)
    losses, with_dsm, without = train_on_toy_batches(model)
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    # Chance is about 1/3; roofs vs. roads need the DSM, which enters only through the prompts.
    assert with_dsm > 0.7, (with_dsm, without)
    assert with_dsm > without + 0.1
    print(
        f"GoPT toy training: mIoU {with_dsm:.3f} (no DSM {without:.3f}), "
        f"{time.perf_counter() - start:.1f} s"
    )


def test_rejects_non_vit_and_records_the_encoder() -> None:
    with pytest.raises(TypeError, match="ViT"):
        GoPT(build_encoder("test_resnet"), 3, 1)
    with pytest.raises(TypeError, match="ViT"):
        build_gopt("test_resnet", 3, 1)
    model = tiny()
    assert model.encoder.describe()["taps"] == model.tap_indices == [0, 1, 2, 3]
    assert model.normalization["mean"] == tuple(model.encoder.mean)
    # The random encoder is reproducible from encoder_seed.
    other = build_gopt("vit_base_patch16_224", 3, 1, encoder_kwargs=TINY, encoder_seed=0)
    for a, b in zip(model.encoder.parameters(), other.encoder.parameters(), strict=True):
        assert torch.equal(a, b)
