"""Tests of SPM (rsprompt's reconstruction; spec: docs/methods/spm.md)."""

from __future__ import annotations

import time

import pytest
import torch
from helpers import one_torch_thread, train_on_toy_batches

from rsprompt.models.methods.spm import SPM, build_spm, class_prototypes
from rsprompt.models.registry import available_methods, build_model

TINY_VIT = {"depth": 4, "embed_dim": 64, "num_heads": 2, "patch_size": 8, "img_size": 64}
M = 64


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine, 2 threads per process thrash."""
    with one_torch_thread():
        yield


def expected_prompt(widths: list[int], k: int, a: int, m: int = M) -> int:
    """Matcher parameters for stage widths ``widths`` (last stage unprompted).

    The per-stage table of docs/methods/spm.md, "Parameter budget", section "Derivation".
    """
    per_stage = 0
    for c in widths[:-1]:
        per_stage += c * k + k  # interim semantic map
        per_stage += 2 * (c * m + m)  # φ_s, ψ_s
        per_stage += 9 * a * m + m if a else 0  # α_s
        per_stage += m * c + c  # Δ_s
    return per_stage + 2 * (3 * m * m + m)  # W_z, W_h shared


def tiny_cnn(**kw) -> SPM:
    torch.manual_seed(0)
    return build_spm("test_resnet", kw.pop("num_classes", 3), kw.pop("aux_channels", 1), **kw)


def tiny_vit(**kw) -> SPM:
    torch.manual_seed(0)
    return build_spm("vit_base_patch16_224", 3, 1, encoder_kwargs=TINY_VIT, **kw)


def tiny_swin(**kw) -> SPM:
    torch.manual_seed(0)
    swin = {
        "img_size": 64,
        "embed_dim": 24,
        "depths": (1, 1, 1, 1),
        "num_heads": (1, 1, 1, 1),
        "window_size": 2,
    }
    return build_spm("swin_tiny_patch4_window7_224", 3, 1, encoder_kwargs=swin, **kw)


def perturb_prompts(model: SPM, seed: int = 1) -> None:
    """Give the zero-initialised prompt convs random weights (a "trained" model)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for matcher in model.matchers:
            w = matcher.prompt.weight
            w.copy_(torch.randn(w.shape, generator=g) * 0.2)


@pytest.mark.parametrize(
    ("encoder", "widths", "percent"),
    [
        ("resnet50", [256, 512, 1024, 2048], 1.63),
        ("vit_base_patch16_224", [768] * 4, 0.57),
    ],
)
def test_paper_budget_on_meta(encoder: str, widths: list[int], percent: float) -> None:
    model = build_model("spm", encoder, num_classes=6, device="meta")
    assert model.aux_channels == 1
    report = model.parameter_report()
    assert report["prompt"] == expected_prompt(widths, 6, 1)
    assert set(report["modules"]) == {"matchers", "cell", "decoder"}
    assert report["modules"]["cell"] == 2 * (3 * M * M + M)
    assert report["encoder_params"] == report["frozen"]
    assert report["encoder_fraction"] == pytest.approx(percent / 100, abs=2e-4)
    assert report["encoder_fraction"] <= 0.05
    # Without the aux modality the α_s stems disappear.
    no_aux = build_model("spm", encoder, num_classes=6, aux_channels=0, device="meta")
    assert no_aux.parameter_report()["prompt"] == expected_prompt(widths, 6, 0)


def test_paper_budget_mit_b2() -> None:
    # smp's MiT cannot be built on the meta device: random init on CPU (1–4 s), no forward.
    model = build_model("spm", "mit_b2", num_classes=6)
    report = model.parameter_report()
    assert report["prompt"] == expected_prompt([64, 128, 320, 512], 6, 1)
    assert report["encoder_fraction"] == pytest.approx(0.0053, abs=2e-4)


def test_registered_and_prototypes() -> None:
    assert "spm" in available_methods()
    feats = torch.arange(2 * 4 * 3.0).reshape(1, 2, 3, 4)
    probs = torch.zeros(1, 2, 3, 4)
    probs[:, 0, :, :2] = 1  # class 0 = left half, class 1 = right half
    probs[:, 1, :, 2:] = 1
    protos, reproj = class_prototypes(feats, probs)
    assert torch.allclose(protos[0, 0], feats[0, :, :, :2].mean(dim=(1, 2)), atol=1e-4)
    assert torch.allclose(protos[0, 1], feats[0, :, :, 2:].mean(dim=(1, 2)), atol=1e-4)
    assert torch.allclose(reproj[0, :, 0, 0], protos[0, 0]) and reproj.shape == feats.shape


@pytest.mark.parametrize("builder", [tiny_cnn, tiny_vit], ids=["cnn", "vit"])
def test_shapes_and_training_outputs(builder) -> None:
    model = builder().eval()
    image, aux = torch.randn(2, 3, 64, 64), torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert model(image, aux).shape == (2, 3, 64, 64)
        assert model(image[..., :50, :60], aux[..., :50, :60]).shape == (2, 3, 50, 60)
        assert model(image).shape == (2, 3, 64, 64)
    model.train()
    out = model(image, aux)
    assert out["logits"].shape == (2, 3, 64, 64)
    enc = model.encoder
    assert len(out["interim"]) == enc.num_stages - 1 == 3
    for seg, stride in zip(out["interim"], enc.strides, strict=False):
        assert seg.shape == (2, 3, 64 // stride, 64 // stride)
    target = torch.randint(0, 3, (2, 64, 64))
    target[:, :4] = 255  # ignored pixels
    losses = model.compute_loss(out, target)
    interim = [losses[f"interim_{i}"] for i in range(3)]
    assert all(torch.isfinite(t) and t > 0 for t in interim)
    assert torch.allclose(losses["loss"], losses["ce"] + 0.4 * sum(interim))
    # Odd sizes: the target is padded with the ignore index to the interim grids.
    odd = model(image[..., :50, :60], aux[..., :50, :60])
    assert torch.isfinite(model.compute_loss(odd, target[:, :50, :60])["loss"])


def test_gradients_only_where_intended_and_frozen_weights_unchanged() -> None:
    model = tiny_cnn().train()
    perturb_prompts(model)
    frozen = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    image, aux = torch.randn(2, 3, 64, 64), torch.randn(2, 1, 64, 64)
    loss = model.compute_loss(model(image, aux), torch.randint(0, 3, (2, 64, 64)))["loss"]
    loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in model.encoder.parameters())
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    opt.step()
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, frozen[k]), k  # incl. BatchNorm running statistics
    assert not model.encoder.training
    assert not any(k.startswith("encoder.") for k in model.adapter_state_dict())


@pytest.mark.parametrize("builder", [tiny_cnn, tiny_vit, tiny_swin], ids=["cnn", "vit", "swin"])
def test_step0_stage_features_equal_frozen(builder) -> None:
    model = builder().eval()
    image, aux = torch.randn(2, 3, 64, 64), torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        taps, _ = model.forward_features(image, aux)
        for got, want in zip(taps, model.encoder(image), strict=True):
            assert torch.equal(got, want)
        assert torch.equal(model(image, aux), model(image, None))


def test_missing_and_partial_aux() -> None:
    model = tiny_cnn()
    perturb_prompts(model)
    model.eval()
    image, aux = torch.randn(2, 3, 64, 64), torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        full, missing = model(image, aux), model(image, None)
        assert torch.isfinite(missing).all() and not torch.allclose(full, missing)
        ones, zeros = torch.ones(2, 1, 64, 64), torch.zeros(2, 1, 64, 64)
        assert torch.equal(model(image, aux, aux_valid=ones), full)
        assert torch.equal(model(image, aux, aux_valid=zeros), missing)
        half = ones.clone()
        half[..., 32:] = 0
        assert torch.isfinite(model(image, aux, aux_valid=half)).all()
        with pytest.raises(ValueError, match="channels"):
            model(image, torch.randn(2, 2, 64, 64))
    # A model without aux modality ignores an aux input.
    no_aux = tiny_cnn(aux_channels=0).eval()
    with torch.no_grad():
        assert torch.equal(no_aux(image, aux), no_aux(image))


def test_short_training_learns_from_the_dsm() -> None:
    start = time.perf_counter()
    model = tiny_cnn(decoder_channels=32)
    losses, with_dsm, without = train_on_toy_batches(model)
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    # Chance is about 1/3; roofs vs. roads need the DSM, which enters only through the matcher.
    assert with_dsm > 0.65, (with_dsm, without)
    assert with_dsm > without + 0.1
    print(
        f"SPM toy training: mIoU {with_dsm:.3f} (no DSM {without:.3f}), "
        f"{time.perf_counter() - start:.1f} s"
    )
