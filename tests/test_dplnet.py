"""DPLNet on smp's MiT: paper counts, shapes, frozen encoder, fold_kv, missing aux, learning."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers import miou as mean_iou
from helpers import one_torch_thread

from rsprompt.models.methods.dplnet import DPLNet, build_mit
from rsprompt.models.registry import build_model

K = 5


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """2 shared cores: one torch thread is much faster than two oversubscribed ones."""
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def mit_b5() -> torch.nn.Module:
    """One random MiT-B5 for the paper-configuration counts (shared, never run)."""
    return build_mit("mit_b5", init=False)


@pytest.mark.parametrize(
    ("num_classes", "trainable", "decoder"), [(41, 7_146_271, 3_271_877), (6, 7_140_986, 3_266_592)]
)
def test_paper_counts(mit_b5, num_classes: int, trainable: int, decoder: int) -> None:
    """The paper configuration's parameter counts, exactly.

    Derived in docs/methods/dplnet.md, "Parameter counts" and its "Derivations".
    """
    report = DPLNet(mit_b5, "mit_b5", num_classes, 1).parameter_report()
    assert report["frozen"] == 81_443_008
    assert report["trainable"] == trainable
    assert report["decoder"] == decoder
    assert report["prompt"] == 3_874_394
    assert report["modules"] == {
        "aux_patch_embed": 1_929_408,
        "mpg": 290_304,
        "mfa": 1_653_722,
        "prompt": 960,
        "decoder": decoder,
    }
    if num_classes == 41:  # the paper's "88.59M" whole model
        assert report["frozen"] + report["trainable"] == pytest.approx(88.59e6, abs=0.005e6)


def test_fold_kv_counts(mit_b5) -> None:
    """Folding shrinks MFA to about 0.36M (B5) and leaves everything else alone."""
    folded = DPLNet(mit_b5, "mit_b5", 41, 1, fold_kv=True).parameter_report()["modules"]
    assert 0.3e6 < folded["mfa"] < 0.4e6
    assert folded["mpg"] == 290_304 and folded["decoder"] == 3_271_877


@pytest.fixture(scope="module")
def model() -> DPLNet:
    """A MiT-B0 DPLNet (random encoder), 5 classes, DSM aux."""
    torch.manual_seed(0)
    return build_model("dplnet", "mit_b0", K)


def _inputs(b: int = 2, h: int = 64, w: int = 64, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, h, w, generator=g), torch.randn(b, 1, h, w, generator=g)


def test_structure(model: DPLNet) -> None:
    assert isinstance(model, DPLNet) and model.aux_channels == 1
    assert model.aux_in_channels == 3 and model.aux_patch_embed[0].proj.in_channels == 3
    assert len(model.mfa) == 8 and model.prompt.shape == (30, 32)
    assert model.decoder.linear_c[0].out_features == 256  # B0/B1 embedding
    assert model.decoder.pred.out_channels == 150 and model.decoder.classifier.out_channels == K
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("encoder"))


def test_meta_device_build() -> None:
    """``device="meta"`` (what ``rsprompt info`` asks for) gives a meta model with the same counts."""
    net = build_model("dplnet", "mit_b0", 6, device="meta")
    assert all(p.is_meta for p in net.parameters())
    report = net.parameter_report()
    assert report["frozen"] == 3_319_392  # smp's mit_b0
    # linear_c (with biases) + fuse conv + BN + 150-wide prediction + final conv, embedding 256
    head = (32 + 64 + 160 + 256 + 4) * 256 + 1024 * 256 + 2 * 256 + (256 * 150 + 150)
    assert report["decoder"] == head + 150 * 6 + 6


def test_shapes(model: DPLNet) -> None:
    model.eval()
    image, dsm = _inputs(h=64, w=96)
    with torch.no_grad():
        logits = model(image, dsm)
        odd = model(*_inputs(b=1, h=50, w=70))
        feats = model.forward_features(image, dsm)
    assert logits.shape == (2, K, 64, 96) and torch.isfinite(logits).all()
    assert odd.shape == (1, K, 50, 70)
    assert [tuple(f.shape[1:]) for f in feats] == [
        (32, 16, 24),
        (64, 8, 12),
        (160, 4, 6),
        (256, 2, 3),
    ]
    model.train()
    out = model(image, dsm)
    assert isinstance(out, dict) and out["logits"].shape == (2, K, 64, 96)


def test_gradients_only_where_intended() -> None:
    torch.manual_seed(0)
    net = build_model("dplnet", "mit_b0", K, encoder_kwargs={"depths": [1, 1, 1, 1]})
    before = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.1)
    net.train()
    assert net.encoder.training  # drop-path active inside the frozen blocks (authors' setting)
    image, dsm = _inputs()
    target = torch.randint(0, K, (2, 64, 64))
    target[:, :8] = 255
    loss = net.compute_loss(net(image, dsm), target)["loss"]
    loss.backward()
    opt.step()
    assert all(p.grad is None for p in net.encoder.parameters())
    for name, p in net.named_parameters():
        if not name.startswith("encoder"):
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for group in ("aux_patch_embed", "mpg", "mfa", "prompt", "decoder"):
        grads = [p.grad.abs().sum() for n, p in net.named_parameters() if n.startswith(group)]
        assert sum(grads) > 0, group
    after = net.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    adapter = net.adapter_state_dict()
    assert not any(k.startswith("encoder") for k in adapter)


def test_encoder_drop_path_option() -> None:
    net = build_model(
        "dplnet", "mit_b0", K, encoder_kwargs={"depths": [1, 1, 1, 1]}, encoder_drop_path=False
    )
    net.train()
    assert not net.encoder.training and net.decoder.training


def test_fold_kv_same_outputs(model: DPLNet) -> None:
    """Fold the (perturbed, i.e. 'trained') weights of an unfolded model: same logits to 1e-5."""
    trained = copy.deepcopy(model)
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        for p in trained.mfa.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    folded = copy.deepcopy(trained).fold_kv_()
    assert folded.folded and not trained.folded
    assert sum(p.numel() for p in folded.mfa.parameters()) < 0.3 * sum(
        p.numel() for p in trained.mfa.parameters()
    )
    trained.eval()
    folded.eval()
    image, dsm = _inputs()
    with torch.no_grad():
        ref, out = trained(image, dsm), folded(image, dsm)
    assert (ref - out).abs().max() < 1e-5
    # a model built with fold_kv=True has the folded layout: the folded weights load into it
    fresh = DPLNet(model.encoder, "mit_b0", K, 1, fold_kv=True)
    fresh.load_adapter_state_dict(folded.adapter_state_dict())
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(image, dsm), out)


def test_prompt_kv_cache(model: DPLNet) -> None:
    """Prompt keys/values are computed once at inference and recomputed after a change."""
    net = copy.deepcopy(model).eval()
    image, dsm = _inputs()
    with torch.no_grad():
        first = net.prompt_kv()
        assert net.prompt_kv() is first
        ref = net(image, dsm)
        net.prompt.add_(0.5)  # an in-place update (optimiser step, load_state_dict) invalidates
        second = net.prompt_kv()
        assert second is not first
        assert not torch.allclose(net(image, dsm), ref)
    with torch.inference_mode():
        assert net.prompt_kv() is second
        net.prompt.add_(0.5)  # recomputed under inference mode ...
        third = net.prompt_kv()
        assert third is not second and not third[0][0].is_inference()
    with torch.no_grad():  # ... and still usable outside it
        assert net.prompt_kv() is third and torch.isfinite(net(image, dsm)).all()
    assert net.prompt_kv() is not second  # autograd on: recomputed, with a graph
    assert net.prompt_kv()[0][0].requires_grad


def test_missing_aux(model: DPLNet) -> None:
    model.eval()
    image, dsm = _inputs()
    with torch.no_grad():
        normal = model(image, dsm)
        missing = model(image)
        ones = model(image, dsm, aux_valid=torch.ones(2, 1, 64, 64))
        zeros = model(image, dsm.fill_(float("nan")), aux_valid=torch.zeros(2, 1, 64, 64))
        zero_aux = model(image, torch.zeros(2, 1, 64, 64))
    assert torch.isfinite(missing).all()
    assert torch.equal(ones, normal)
    assert torch.equal(zeros, missing) and torch.equal(zero_aux, missing)
    assert not torch.allclose(missing, normal)


def test_aux_channels() -> None:
    tiny = {"encoder_kwargs": {"depths": [1, 1, 1, 1]}}
    sar = build_model("dplnet", "mit_b0", K, aux_channels=2, **tiny).eval()
    assert sar.aux_patch_embed[0].proj.in_channels == 2
    image, _ = _inputs()
    with torch.no_grad():
        assert sar(image, torch.randn(2, 2, 64, 64)).shape == (2, K, 64, 64)
        with pytest.raises(ValueError, match="2 aux channel"):
            sar(image, torch.randn(2, 3, 64, 64))
    dsm_model = build_model("dplnet", "mit_b0", K, **tiny).eval()
    dsm = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(dsm_model(image, dsm), dsm_model(image, dsm.expand(-1, 3, -1, -1)))
        with pytest.raises(ValueError, match="matching the image"):
            dsm_model(image, torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="aux_channels >= 1"):
        build_model("dplnet", "mit_b0", K, aux_channels=0, **tiny)
    with pytest.raises(ValueError, match="MiT encoder"):
        build_model("dplnet", "resnet18", K)


def test_class_weighted_loss(model: DPLNet) -> None:
    logits = torch.randn(2, K, 8, 8)
    target = torch.randint(0, K, (2, 8, 8))
    target[0, 0] = 255
    plain = model.compute_loss({"logits": logits}, target)["loss"]
    ref = torch.nn.functional.cross_entropy(logits, target, ignore_index=255)
    assert torch.allclose(plain, ref)
    weights = torch.arange(1.0, K + 1)
    net = DPLNet(model.encoder, "mit_b0", K, 1, class_weights=weights)
    weighted = net.compute_loss(logits, target)["loss"]
    ref_w = torch.nn.functional.cross_entropy(logits, target, weight=weights, ignore_index=255)
    assert torch.allclose(weighted, ref_w)
    assert "class_weights" not in net.adapter_state_dict()


# ------------------------------------------------------------------------------ learning
def _tensors(scene) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised optical (ImageNet statistics), standardised DSM and labels of a Scene."""
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    optical = (torch.from_numpy(scene.optical.astype(np.float32) / 255.0) - mean) / std
    dsm = torch.from_numpy(scene.dsm)[None]
    dsm = (dsm - dsm.mean()) / (dsm.std() + 1e-6)
    return optical, dsm, torch.from_numpy(scene.labels.astype(np.int64))


def test_learns_on_synthetic_optical_dsm() -> None:
    """20 seeded steps on 64×64 crops of a synthetic ISPRS scene (MiT-B0, random encoder): the
    loss falls, mIoU on another scene is far above chance, and the DSM prompts matter."""
    from rsprompt.data.synthetic import generate_scene

    image, dsm, labels = _tensors(generate_scene(kind="isprs", size=128, seed=0))
    test_image, test_dsm, test_labels = _tensors(generate_scene(kind="isprs", size=128, seed=1))
    torch.manual_seed(0)
    net = build_model("dplnet", "mit_b0", 6)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=2e-3)
    rng = np.random.default_rng(0)
    losses = []
    net.train()
    for _ in range(20):
        corners = rng.integers(0, 64, (4, 2))
        crop = [(slice(None), slice(a, a + 64), slice(b, b + 64)) for a, b in corners]
        x = torch.stack([image[c] for c in crop])
        d = torch.stack([dsm[c] for c in crop])
        y = torch.stack([labels[c[1:]] for c in crop])
        loss = net.compute_loss(net(x, d), y)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    net.eval()
    with torch.no_grad():
        pred = net(test_image[None], test_dsm[None]).argmax(1)[0]
        pred_no_dsm = net(test_image[None]).argmax(1)[0]
    miou, miou_no_dsm = mean_iou(pred, test_labels, 6), mean_iou(pred_no_dsm, test_labels, 6)
    accuracy = (pred == test_labels).float().mean().item()
    majority = np.bincount(test_labels.numpy().ravel()).max() / test_labels.numel()
    assert np.mean(losses[-5:]) < 0.4 * losses[0], losses
    assert miou > 0.3, miou  # predicting the majority class everywhere: about 0.06
    assert accuracy > majority + 0.2, (accuracy, majority)
    assert miou_no_dsm < miou - 0.05, (miou, miou_no_dsm)  # the DSM prompts carry information
