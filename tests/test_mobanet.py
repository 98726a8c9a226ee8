"""MoBaNet: paper sizes, modules, MCRM, hard-pixel loss, missing aux, other encoder families."""

from __future__ import annotations

import warnings

import pytest
import torch

from rsprompt.models.methods.mobanet import (
    CPIA,
    DGFM,
    MoBaNet,
    hard_pixel_target,
    mcrm_counts,
    mcrm_mask,
)
from rsprompt.models.registry import available_methods, build_model

TINY_VIT = {"encoder_kwargs": {"depth": 4, "embed_dim": 32, "num_heads": 2, "img_size": 56}}

# docs/methods/mobanet.md, "Parameter counts" (K = 6), each derived in its "Derivations".
PAPER = {
    "vit_small_patch14_dinov2": {
        "frozen": 22_056_192,
        "aux_patch_embed": 226_176,
        "cpia": 524_928,
        "dgfm": 253_824,
        "proj": 393_216,
        "decoder": 669_568,
        "aux_heads": 1_183_744,
        "trainable": 3_251_456,
        "trainable_inference": 2_067_712,
    },
    "vit_base_patch14_dinov2": {
        "frozen": 86_579_712,
        "aux_patch_embed": 452_352,
        "cpia": 2_082_048,
        "dgfm": 1_005_312,
        "proj": 786_432,
        "decoder": 669_568,
        "aux_heads": 1_183_744,
        "trainable": 6_179_456,
        "trainable_inference": 4_995_712,
    },
    "vit_large_patch14_dinov2": {
        "frozen": 304_367_616,
        "aux_patch_embed": 603_136,
        "cpia": 3_693_568,
        "dgfm": 1_782_784,
        "proj": 1_048_576,
        "decoder": 669_568,
        "aux_heads": 1_183_744,
        "trainable": 8_981_376,
        "trainable_inference": 7_797_632,
    },
}


def tiny(**kw) -> MoBaNet:
    opts = {**TINY_VIT, **kw}
    return build_model("mobanet", "vit_small_patch14_dinov2", 6, **opts)


def test_registered():
    assert "mobanet" in available_methods()


@pytest.mark.parametrize("encoder", sorted(PAPER))
def test_paper_parameter_counts(encoder):
    model = build_model("mobanet", encoder, 6, device="meta")
    report = model.parameter_report()
    expected = PAPER[encoder]
    assert report["frozen"] == expected["frozen"]
    assert report["trainable"] == expected["trainable"]
    assert report["trainable_inference"] == expected["trainable_inference"]
    assert report["decoder"] == expected["decoder"]
    for module in ("aux_patch_embed", "cpia", "dgfm", "proj", "decoder", "aux_heads"):
        assert report["modules"][module] == expected[module], module
    assert (
        model.encoder.taps
        == {
            "vit_small_patch14_dinov2": [2, 5, 8, 11],
            "vit_base_patch14_dinov2": [2, 5, 8, 11],
            "vit_large_patch14_dinov2": [5, 11, 17, 23],
        }[encoder]
    )
    assert model.encoder.model.patch_embed.img_size == (518, 518)


def test_paper_counts_k8_and_without_mcrm():
    model = build_model("mobanet", "vit_large_patch14_dinov2", 8, device="meta")
    report = model.parameter_report()
    assert (report["trainable"], report["trainable_inference"]) == (8_982_528, 7_797_760)
    model = build_model("mobanet", "vit_large_patch14_dinov2", 6, device="meta", mcrm=False)
    assert model.aux_heads is None
    report = model.parameter_report()
    assert report["trainable"] == report["trainable_inference"] == 7_797_632


def test_vit_giant_taps():
    model = build_model("mobanet", "vit_giant_patch14_dinov2", 6, device="meta")
    assert model.encoder.taps == [9, 19, 29, 39]
    assert model.dgfm[0].reduce_opt.out_channels == 192  # h for ViT-g (D = 1536)


def test_cpia_size_and_init():
    cpia = CPIA(1024)
    assert sum(p.numel() for p in cpia.parameters()) == 923_392
    assert cpia.down_opt.out_features == 256
    assert (
        abs(cpia.gamma_opt.mean().item() - 1) < 0.01 and 0.01 < cpia.gamma_opt.std().item() < 0.03
    )
    assert abs(cpia.beta_aux.mean().item()) < 0.01 and 0.01 < cpia.beta_aux.std().item() < 0.03
    assert cpia.up.weight.abs().sum() > 0  # not zero-initialised


def test_dgfm_initial_gate_is_half():
    dgfm = DGFM(64)
    assert dgfm.reduce_opt.out_channels == 32  # max(32, 64 // 8)
    f_opt, f_aux = torch.randn(2, 64, 5, 5), torch.randn(2, 64, 5, 5)
    gate = dgfm.gate_map(f_opt, f_aux)
    assert torch.allclose(gate, torch.full_like(gate, 0.5))
    expected = torch.nn.functional.layer_norm(
        (0.5 * (f_opt + f_aux)).permute(0, 2, 3, 1), (64,), eps=dgfm.out_norm.eps
    ).permute(0, 3, 1, 2)
    assert torch.allclose(dgfm(f_opt, f_aux), expected, atol=1e-5)
    # aux invalid everywhere: the optical stream alone
    only_opt = dgfm(f_opt, f_aux, torch.zeros(2, 1, 5, 5))
    assert torch.allclose(only_opt, dgfm.out_norm(f_opt), atol=1e-5)


def test_model_gates_start_at_half():
    model = tiny()
    for dgfm in model.dgfm:
        assert (
            torch.count_nonzero(dgfm.gate.weight) == 0 and torch.count_nonzero(dgfm.gate.bias) == 0
        )


# ----------------------------------------------------------------------------------- MCRM
def test_mcrm_counts():
    assert mcrm_counts(24) == (3, 3, False)
    assert mcrm_counts(8) == (1, 1, False)
    assert mcrm_counts(4) == (1, 1, True)  # paper: 0 optical, 1 aux
    assert mcrm_counts(2) == (1, 1, True)  # paper: nothing
    assert mcrm_counts(1)[0] + mcrm_counts(1)[1] == 1


def test_mcrm_statistics_over_many_batches():
    gen = torch.Generator().manual_seed(0)
    b, size, n_batches = 24, 140, 300
    opt_counts = torch.zeros(b)
    aux_counts = torch.zeros(b)
    fractions = []
    for _ in range(n_batches):
        x, a = torch.ones(b, 1, size, size), torch.ones(b, 1, size, size)
        xm, am, info = mcrm_mask(x, a, generator=gen)
        assert len(info["optical"]) == 3 and len(info["aux"]) == 3
        assert not set(info["optical"]) & set(info["aux"])  # never both modalities of a sample
        lost_opt = (xm == 0).flatten(1).any(1)
        lost_aux = (am == 0).flatten(1).any(1)
        assert not bool((lost_opt & lost_aux).any())
        assert lost_opt.nonzero().flatten().tolist() == sorted(info["optical"])
        assert lost_aux.nonzero().flatten().tolist() == sorted(info["aux"])
        for i in info["optical"]:
            fractions.append((xm[i, 0] == 0).float().mean().item())
            # one axis-aligned rectangle, same on every channel
            rows = (xm[i, 0] == 0).any(1).nonzero().flatten()
            cols = (xm[i, 0] == 0).any(0).nonzero().flatten()
            box = xm[i, :, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
            assert bool((box == 0).all())
        opt_counts[info["optical"]] += 1
        aux_counts[info["aux"]] += 1
    fractions_t = torch.tensor(fractions)
    assert fractions_t.min() >= 0.09 and fractions_t.max() <= 0.31
    assert abs(fractions_t.mean().item() - 0.2) < 0.02  # U(0.1, 0.3)
    # every sample position is picked equally often (expected 300·3/24 = 37.5 each)
    assert opt_counts.min() > 15 and opt_counts.max() < 65
    assert aux_counts.min() > 15 and aux_counts.max() < 65


def test_mcrm_small_batches_are_not_silent():
    gen = torch.Generator().manual_seed(1)
    x, a = torch.ones(2, 3, 28, 28), torch.ones(2, 3, 28, 28)
    for _ in range(20):
        _, _, info = mcrm_mask(x, a, generator=gen)
        assert len(info["optical"]) == 1 and len(info["aux"]) == 1 and info["adjusted"]
    seen = set()
    for _ in range(40):
        _, _, info = mcrm_mask(x[:1], a[:1], generator=gen)
        assert len(info["optical"]) + len(info["aux"]) == 1
        seen.add("optical" if info["optical"] else "aux")
    assert seen == {"optical", "aux"}
    model = tiny()
    model.train()
    with pytest.warns(UserWarning, match="MCRM: a batch of 2"):
        model(torch.randn(2, 3, 28, 28), torch.rand(2, 1, 28, 28))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.randn(2, 3, 28, 28), torch.rand(2, 1, 28, 28))  # warned once only
    assert model.last_mcrm is not None and len(model.last_mcrm["aux"]) == 1


def test_mcrm_variants():
    gen = torch.Generator().manual_seed(2)
    x, a = torch.ones(8, 3, 28, 28), torch.ones(8, 3, 28, 28)
    _, am, info = mcrm_mask(x, a, variant="modality", generator=gen)
    assert bool((am[info["aux"]] == 0).all())
    xm, _, info = mcrm_mask(x, a, variant="patches", cell=7, generator=gen)
    holes = (xm[info["optical"][0], 0] == 0).float()
    assert 0 < holes.mean() <= 0.35
    with pytest.raises(ValueError, match="variant"):
        mcrm_mask(x, a, variant="nope")


def test_no_masking_in_eval_or_without_mcrm():
    model = tiny()
    model.eval()
    model(torch.randn(4, 3, 28, 28), torch.rand(4, 1, 28, 28))
    assert model.last_mcrm is None
    model = tiny(mcrm=False)
    model.train()
    out = model(torch.randn(4, 3, 28, 28), torch.rand(4, 1, 28, 28))
    assert set(out) == {"logits"} and model.last_mcrm is None


# ----------------------------------------------------------------------------------- losses
def test_hard_pixel_target_hand_made():
    target = torch.tensor([[[0, 1], [2, 255]]])
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 0, 0, 0] = 5  # right (0)
    logits[0, 2, 0, 1] = 5  # wrong (2 for 1)
    logits[0, 2, 1, 0] = 5  # right (2)
    logits[0, 1, 1, 1] = 5  # ignore stays ignore
    hard = hard_pixel_target(logits, target)
    assert hard.tolist() == [[[255, 1], [255, 255]]]


def test_loss_terms_and_weights():
    model = tiny()
    model.train()
    out = model(torch.randn(4, 3, 28, 28), torch.rand(4, 1, 28, 28))
    assert set(out) == {"logits", "aux_opt", "aux_aux"}
    assert all(v.shape == (4, 6, 28, 28) for v in out.values())
    target = torch.randint(0, 6, (4, 28, 28))
    terms = model.compute_loss(out, target)
    expected = terms["loss_main"] + 0.01 * (terms["loss_hard_opt"] + terms["loss_hard_aux"])
    assert torch.allclose(terms["loss"], expected)
    # every pixel right: the hard loss is 0, not NaN
    perfect = {k: v.detach().clone() for k, v in out.items()}
    perfect["logits"] = torch.nn.functional.one_hot(target, 6).permute(0, 3, 1, 2).float() * 10
    terms = model.compute_loss(perfect, target)
    assert terms["loss_hard_opt"].item() == 0 and torch.isfinite(terms["loss"])


def test_only_intended_parameters_train_and_encoder_is_bit_identical():
    torch.manual_seed(0)
    model = tiny()
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    names = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert names == {"aux_patch_embed", "cpia", "dgfm", "proj", "decoder", "aux_heads"}
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    out = model(torch.randn(4, 3, 28, 28), torch.rand(4, 1, 28, 28))
    model.compute_loss(out, torch.randint(0, 6, (4, 28, 28)))["loss"].backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    opt.step()
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, encoder_before[k]), k
    with_grad = {
        n for n, p in model.named_parameters() if p.requires_grad and p.grad.abs().sum() > 0
    }
    changed = {
        n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])
    }
    assert with_grad and with_grad <= changed
    assert not any(m.training for m in model.encoder.modules())
    adapter = model.adapter_state_dict()
    assert not any(k.startswith("encoder.") for k in adapter)
    assert not any(k.startswith("aux_heads.") for k in adapter)


def test_aux_patch_embed_is_a_trainable_copy():
    model = tiny()
    enc_w = model.encoder.model.patch_embed.proj.weight
    aux_w = model.aux_patch_embed.proj.weight
    assert torch.equal(enc_w, aux_w) and aux_w.requires_grad and not enc_w.requires_grad
    assert aux_w.data_ptr() != enc_w.data_ptr()


# ----------------------------------------------------------------------------------- inference
def test_padding_to_patch_multiple_and_crop_back():
    model = tiny()
    model.eval()
    y = model(torch.randn(1, 3, 30, 33), torch.rand(1, 1, 30, 33))
    assert y.shape == (1, 6, 30, 33)


def test_missing_and_partial_aux():
    torch.manual_seed(0)
    model = tiny()
    model.eval()
    for dgfm in model.dgfm:  # a non-trivial gate, as after training
        torch.nn.init.normal_(dgfm.gate.weight, std=0.5)
    x, a = torch.randn(2, 3, 28, 28), torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        normal = model(x, a)
        ones = model(x, a, torch.ones(2, 1, 28, 28))
        missing = model(x, None)
        zeros = model(x, a, torch.zeros(2, 1, 28, 28))
        garbage = model(x, torch.full_like(a, 1e6), torch.zeros(2, 1, 28, 28))
        valid = torch.ones(2, 1, 28, 28)
        valid[:, :, :, 14:] = 0
        partial = model(x, a, valid)
    assert torch.equal(normal, ones)
    for y in (missing, zeros, partial, garbage):
        assert y.shape == (2, 6, 28, 28) and bool(torch.isfinite(y).all())
    assert torch.allclose(missing, zeros, atol=1e-5)
    assert torch.allclose(garbage, zeros, atol=1e-5)  # invalid aux values never enter
    assert not torch.allclose(partial, normal)


def test_aux_channels_validation():
    with pytest.raises(ValueError, match="aux_channels"):
        build_model("mobanet", "vit_small_patch14_dinov2", 6, aux_channels=0, device="meta")
    model = build_model("mobanet", "vit_small_patch14_dinov2", 6, aux_channels=2, **TINY_VIT)
    assert model.aux_patch_embed.proj.in_channels == 2
    model.eval()
    assert model(torch.randn(1, 3, 28, 28), torch.rand(1, 2, 28, 28)).shape == (1, 6, 28, 28)
    with pytest.raises(ValueError, match="aux channels"):
        model(torch.randn(1, 3, 28, 28), torch.rand(1, 1, 28, 28))


# ----------------------------------------------------------------------------------- families
@pytest.mark.parametrize(
    ("encoder", "kw"),
    [
        ("tf_efficientnet_lite0", {"weights": "package"}),
        ("mit_b0", {"encoder_kwargs": {"depths": [1, 1, 1, 1]}}),
        ("resnet18", {}),
        (
            "swin_tiny_patch4_window7_224",
            {
                "img_size": 64,
                "encoder_kwargs": {
                    "window_size": 2,
                    "depths": (1, 1, 1, 1),
                    "embed_dim": 24,
                    "num_heads": (1, 1, 1, 1),
                },
            },
        ),
    ],
)
def test_builds_and_trains_on_hierarchical_and_cnn_encoders(encoder, kw):
    torch.manual_seed(0)
    model = build_model("mobanet", encoder, 6, **kw)
    enc = model.encoder
    assert [c.down_opt.in_features for c in model.cpia] == list(enc.in_widths)
    assert [d.reduce_opt.in_channels for d in model.dgfm] == list(enc.widths)
    assert [d.reduce_opt.out_channels for d in model.dgfm] == [max(32, c // 8) for c in enc.widths]
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    x, a = torch.randn(4, 3, 64, 64), torch.rand(4, 1, 64, 64)
    a = torch.nn.functional.avg_pool2d(a, 9, 1, 4)  # smooth, learnable targets from both inputs
    y = (a[:, 0] > a.mean()).long() + 2 * (x[:, 0] > 0).long()

    losses = []
    model.train()
    for _ in range(8):
        loss = model.compute_loss(model(x, a), y)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-2:]) / 2 < losses[0], losses
    for k, v in enc.state_dict().items():
        assert torch.equal(v, before[k]), k
    model.eval()
    with torch.no_grad():
        assert model(x[:, :, :50, :50], None).shape == (4, 6, 50, 50)


def test_paper_size_mit_b5_counts():
    """MiT-B5: frozen count derived in docs/methods/dplnet.md, decoder in docs/methods/mobanet.md."""
    report = build_model("mobanet", "mit_b5", 6, device="meta").parameter_report()
    assert report["frozen"] == 81_443_008
    assert report["modules"]["decoder"] == 669_568


# ----------------------------------------------------------------------------------- learning
def _scenes(seeds, size, mean, std):
    import numpy as np

    from rsprompt.data.synthetic import generate_scene

    xs, ds, ys = [], [], []
    for seed in seeds:
        scene = generate_scene(kind="isprs", size=size, seed=seed)
        x = torch.from_numpy(scene.optical.astype(np.float32) / 255)
        x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
        d = torch.from_numpy(scene.dsm.astype(np.float32))
        d = (d - d.min()) / (d.max() - d.min()).clamp_min(1e-6)  # per-tile min-max, as the paper
        xs.append(x)
        ds.append(d[None])
        ys.append(torch.from_numpy(scene.labels.astype(np.int64)))
    return torch.stack(xs), torch.stack(ds), torch.stack(ys)


def _train_and_score(use_aux: bool, data, steps: int = 30) -> tuple[float, float]:
    torch.manual_seed(0)
    model = build_model("mobanet", "tf_efficientnet_lite0", 6, weights="package", proj_channels=64)
    (x, d, y), (xt, dt, yt) = data(model.encoder)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for _ in range(steps):
        idx = torch.randperm(len(x))[:6]
        out = model(x[idx], d[idx] if use_aux else None)
        loss = model.compute_loss(out, y[idx])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(xt, dt if use_aux else None).argmax(1)
    road_or_roof = yt <= 1  # impervious surfaces and buildings look alike optically
    return (pred == yt).float().mean().item(), (pred == yt)[road_or_roof].float().mean().item()


def test_dsm_matters_short_training_on_synthetic_scenes():
    """MoBaNet fed optical + DSM beats the same model fed optical only (aux missing)."""
    cache = {}

    def data(encoder):
        if not cache:
            cache["train"] = _scenes(range(10), 64, encoder.mean, encoder.std)
            cache["test"] = _scenes(range(100, 103), 64, encoder.mean, encoder.std)
        return cache["train"], cache["test"]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        acc_both, rr_both = _train_and_score(True, data)
        acc_opt, rr_opt = _train_and_score(False, data)
    assert rr_both > rr_opt + 0.05, (rr_both, rr_opt)
    assert acc_both > acc_opt, (acc_both, acc_opt)
