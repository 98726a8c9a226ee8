"""RPN on a tiny random open_clip CLIP (no download) and the paper configuration on meta."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from helpers import miou as helper_miou
from helpers import one_torch_thread
from torch import nn

from rsprompt.data.labels import ISPRS_CLASSES
from rsprompt.models.methods.rpn import RPN
from rsprompt.models.registry import available_methods, build_model, default_aux_channels

TINY = "rsprompt-tiny-clip"
ISPRS = list(ISPRS_CLASSES.names)


@pytest.fixture(autouse=True, scope="module")
def _one_thread_offline():
    """Tiny models run fastest on one thread on shared CPUs; nothing may reach a hub."""
    offline = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    with one_torch_thread():
        yield
    if offline is None:
        os.environ.pop("HF_HUB_OFFLINE", None)
    else:
        os.environ["HF_HUB_OFFLINE"] = offline


@pytest.fixture(scope="module")
def tiny() -> RPN:
    torch.manual_seed(0)
    model = build_model("rpn", TINY, 6, img_size=64)
    assert isinstance(model, RPN)
    return model


def _image(b: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_registered_with_no_aux_by_default():
    assert "rpn" in available_methods()
    assert default_aux_channels("rpn") == 0


def test_shapes_eval_and_train(tiny: RPN):
    x = _image()
    tiny.eval()
    with torch.no_grad():
        out = tiny(x)
    assert out.shape == (2, 6, 64, 64)
    assert tiny.class_names == ISPRS  # 6 classes without names → ISPRS names
    tiny.train()
    out = tiny(x)
    assert set(out) == {"logits"} and out["logits"].shape == (2, 6, 64, 64)
    assert not tiny.image_encoder.training and not tiny.text_encoder.training
    tiny.eval()


def test_generic_names_and_name_count_check():
    model = build_model("rpn", TINY, 3, img_size=64)
    assert model.class_names == ["class 0", "class 1", "class 2"]
    with pytest.raises(ValueError, match="2 class names"):
        build_model("rpn", TINY, 3, img_size=64, class_names=["a", "b"])


def test_only_prompt_modules_train_and_towers_stay_bit_identical(tiny: RPN):
    towers = {
        k: v.clone()
        for k, v in tiny.state_dict().items()
        if k.split(".")[0] in ("image_encoder", "text_encoder")
    }
    trainable = {n: p.detach().clone() for n, p in tiny.named_parameters() if p.requires_grad}
    assert {n.split(".")[0] for n in trainable} == {
        "vpt",
        "relation_h",
        "prompt_proj",
        "prompt_norm",
        "head",
    }
    assert not any(p.requires_grad for p in tiny.image_encoder.parameters())
    assert not any(p.requires_grad for p in tiny.text_encoder.parameters())
    opt = torch.optim.AdamW([p for p in tiny.parameters() if p.requires_grad], lr=1e-2)
    tiny.train()
    out = tiny(_image())
    loss = tiny.compute_loss(out, torch.randint(0, 6, (2, 64, 64)))["loss"]
    opt.zero_grad()
    loss.backward()
    for n, p in tiny.named_parameters():
        assert (p.grad is not None) == p.requires_grad, n
        if p.requires_grad:
            assert p.grad.abs().sum() > 0, n
    opt.step()
    tiny.eval()
    for k, v in tiny.state_dict().items():
        if k in towers:
            assert torch.equal(v, towers[k]), k
    for n, p in tiny.named_parameters():
        if n in trainable:
            assert not torch.equal(p, trainable[n]), n
    assert "image_encoder" not in {k.split(".")[0] for k in tiny.adapter_state_dict()}


def test_h_is_resampled_bilinearly_for_other_grids(tiny: RPN):
    grid = tiny.spec.grid_size
    assert tiny.relation_h.shape[0] == grid[0] * grid[1]
    h = tiny._relation_h((6, 8))
    d = tiny.relation_h.shape[1]
    ref = F.interpolate(
        tiny.relation_h.detach().reshape(1, *grid, d).permute(0, 3, 1, 2),
        size=(6, 8),
        mode="bilinear",
        align_corners=False,
    )
    assert torch.allclose(h.detach(), ref.permute(0, 2, 3, 1).reshape(48, d))
    assert tiny._relation_h(grid) is tiny.relation_h
    with torch.no_grad():
        out = tiny(torch.randn(1, 3, 96, 128))
    assert out.shape == (1, 6, 96, 128)


def test_h_without_resampling_raises_a_clear_error():
    model = build_model("rpn", TINY, 2, img_size=64, class_names=["tree", "car"], resample_h=False)
    model.eval()
    with pytest.raises(ValueError, match="h has 16 rows"):
        model(_image(1, 96))
    with pytest.raises(ValueError, match="multiple of the patch"):
        model(_image(1, 70))


def test_vocabulary_change_at_inference(tiny: RPN):
    """What the model guarantees when the vocabulary changes.

    A class's scores do NOT stay the same when the rest of the vocabulary changes: every class's
    text embedding feeds the relationship prompts that all patch tokens attend to. What holds:
    the vocabulary is a set (reordering it reorders the scores and nothing else; the relation
    tokens carry no position), and a call-time vocabulary equals the same set_vocabulary.
    """
    x = _image(1)
    tiny.eval()
    tiny.set_seen_classes(None)  # no calibration: raw sigmoid scores
    try:
        with torch.no_grad():
            three = tiny(x, class_names=["water", "forest", "road"])
            assert three.shape == (1, 3, 64, 64)
            assert tiny.num_classes == 6  # a call-time vocabulary does not change the model's
            tiny.set_vocabulary(["building", "tree", "car", "solar panel"])
            assert tiny.num_classes == 4
            four = tiny(x)
            assert four.shape == (1, 4, 64, 64)
            same = tiny(x, class_names=["building", "tree", "car", "solar panel"])
            a = tiny(x, class_names=["tree", "car", "water"])
            b = tiny(x, class_names=["water", "tree", "car"])  # a permutation of a
            c = tiny(x, class_names=["tree", "road"])  # another vocabulary around "tree"
        torch.testing.assert_close(same, four, atol=0, rtol=0)
        torch.testing.assert_close(b, a[:, [2, 0, 1]], atol=1e-5, rtol=1e-5)
        assert torch.isfinite(a).all() and ((a >= 0) & (a <= 1)).all()
        assert not torch.allclose(c[:, 0], a[:, 0], atol=1e-6)  # "tree" depends on the rest
    finally:
        tiny.set_vocabulary(ISPRS)
        tiny.set_seen_classes(ISPRS)
    with pytest.raises(ValueError, match="empty"):
        tiny.set_vocabulary([])


def test_calibration_subtracts_exactly_0_1_from_seen_scores(tiny: RPN):
    x = _image(1, seed=3)
    tiny.eval()
    tiny.set_seen_classes(["building", "tree"])
    try:
        with torch.no_grad():
            raw = tiny.forward_logits(x)
            scores = tiny(x)
        seen = torch.tensor([n in ("building", "tree") for n in ISPRS])
        diff = raw.sigmoid() - scores
        assert torch.allclose(diff[:, seen], torch.full_like(diff[:, seen], 0.1), atol=1e-6)
        assert torch.equal(diff[:, ~seen], torch.zeros_like(diff[:, ~seen]))
        expected = (raw.sigmoid() - 0.1 * seen.float().view(1, -1, 1, 1)).argmax(1)
        assert torch.equal(scores.argmax(1), expected)
        assert tiny.seen_mask(["Tree", "water"]).tolist() == [True, False]
        # calibration 0 → plain sigmoid
        tiny.calibration = 0.0
        with torch.no_grad():
            assert torch.allclose(tiny(x), raw.sigmoid(), atol=1e-6)
    finally:
        tiny.calibration = 0.1
        tiny.set_seen_classes(ISPRS)


def test_text_embeddings_are_computed_once_per_vocabulary():
    model = build_model("rpn", TINY, 2, img_size=64, class_names=["tree", "building"])
    model.eval()
    calls = []
    model.text_encoder.register_forward_hook(lambda *a: calls.append(1))
    x = _image(1)
    with torch.no_grad():
        model(x)
        model(x)
        assert len(calls) == 1
        model(x, class_names=["water", "road"])
        assert len(calls) == 2
        model.set_vocabulary(["tree", "building"])
        model(x)
        model(x, class_names=["water", "road"])
    assert len(calls) == 2
    assert model.text_cache.encoder_calls == 2
    emb = model.text_embeddings()
    assert emb.shape == (2, model.spec.embed_dim)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_quick_gelu_is_set_and_recorded():
    from open_clip.transformer import QuickGELU

    qg = build_model("rpn", TINY, 2, img_size=64, quick_gelu=True)
    assert isinstance(qg.image_encoder.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert isinstance(qg.text_encoder.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert qg.config()["quick_gelu"] is True and qg.config()["clip"]["quick_gelu"] is True
    plain = build_model("rpn", TINY, 2, img_size=64, quick_gelu=False)
    act = plain.image_encoder.transformer.resblocks[0].mlp.gelu
    assert isinstance(act, nn.GELU) and not isinstance(act, QuickGELU)
    assert plain.config()["quick_gelu"] is False


def test_paper_configuration_counts_on_meta():
    """ViT-B/16 at 512 (N = 1024), T = 10, 15 classes, no aux.

    The counts and their derivations: docs/methods/rpn.md, "Parameter counts".
    """
    from open_clip.transformer import QuickGELU

    model = build_model("rpn", "ViT-B-16", 15, aux_channels=0, device="meta")
    report = model.parameter_report()
    assert report["trainable"] == 2_522_880
    assert report["modules"] == {
        "vpt": 92_160,
        "prompt_proj": 590_592,
        "prompt_norm": 1_536,
        "relation_h": 786_432,
        "head": 1_052_160,
    }
    assert report["decoder"] == 1_052_160
    assert model.relation_h.shape == (1024, 768)
    assert model.image_encoder.positional_embedding.shape == (1025, 768)  # 32×32 + CLS
    assert abs(report["frozen"] - 150_256_640) <= 0.001 * 150_256_640
    assert sum(p.numel() for p in model.image_encoder.parameters()) == 86_828_544
    assert sum(p.numel() for p in model.text_encoder.parameters()) == 63_428_096
    assert model.relation_h.device.type == "meta"
    # OpenAI CLIP needs QuickGELU: on by default for ViT-B-16, recorded in the config
    assert isinstance(model.image_encoder.transformer.resblocks[0].mlp.gelu, QuickGELU)
    cfg = model.config()
    assert cfg["quick_gelu"] is True and cfg["img_size"] == 512 and cfg["vpt_tokens"] == 10


def test_weights_from_a_local_file(tmp_path):
    import open_clip

    from rsprompt.models.encoders.clip import register_tiny_configs

    register_tiny_configs()
    torch.manual_seed(123)
    src = open_clip.create_model(TINY, force_quick_gelu=True)
    path = tmp_path / "tiny_clip.pt"
    torch.save(src.state_dict(), path)
    model = build_model("rpn", TINY, 2, img_size=64, weights=str(path))
    assert torch.equal(model.image_encoder.conv1.weight, src.visual.conv1.weight)
    assert torch.equal(model.text_encoder.token_embedding.weight, src.token_embedding.weight)
    assert model.spec.weights == "tiny_clip.pt" and len(model.spec.weights_sha256) == 64
    # other crop size: open_clip resizes the position embedding of the file (4×4 → 6×6)
    big = build_model("rpn", TINY, 2, img_size=96, weights=str(path))
    assert big.image_encoder.positional_embedding.shape == (37, 64)
    assert big.relation_h.shape == (36, 64)
    with pytest.raises(FileNotFoundError):
        build_model("rpn", TINY, 2, img_size=64, weights=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="meta"):
        build_model("rpn", TINY, 2, img_size=64, weights=str(path), device="meta")


def test_aux_stem_is_its_own_module():
    model = build_model("rpn", TINY, 3, aux_channels=1, img_size=64)
    report = model.parameter_report()
    assert report["aux_channels"] == 1 and report["modules"]["aux_stem"] > 0
    x, aux = _image(2), torch.randn(2, 1, 64, 64)
    valid = torch.ones(2, 1, 64, 64)
    valid[1] = 0
    model.train()
    out = model(x, aux, valid)
    loss = model.compute_loss(out, torch.randint(0, 3, (2, 64, 64)))["loss"]
    loss.backward()
    assert model.aux_stem.convs[0].weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 3, 64, 64)  # aux absent
    with pytest.raises(ValueError, match="channels"):
        model(x, torch.randn(2, 2, 64, 64))


COLOURS = torch.tensor([[0.9, 0.9, 0.9], [0.8, 0.2, 0.2], [0.2, 0.7, 0.2], [0.1, 0.1, 0.6]])


def _blocky_scenes(n: int, seed: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic land cover: 16-pixel cells of 4 classes, each with its own colour + noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n, size // 16, size // 16), generator=g)
    labels = labels.repeat_interleave(16, 1).repeat_interleave(16, 2)
    image = COLOURS[labels].permute(0, 3, 1, 2) + 0.1 * torch.randn(n, 3, size, size, generator=g)
    return (image - 0.45) / 0.25, labels


def _train(
    model: RPN, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor
) -> tuple[list[float], torch.Tensor]:
    """100 AdamW steps (lr 1e-3) on random batches of 4; the losses and the predictions on x_val."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(100):
        idx = torch.randint(0, len(x_train), (4,), generator=g)
        loss = model.compute_loss(model(x_train[idx]), y_train[idx])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        return losses, model(x_val).argmax(1)


def test_short_training_learns_on_synthetic_scenes():
    torch.manual_seed(0)
    names = ["impervious surfaces", "building", "low vegetation", "tree"]
    model = build_model("rpn", TINY, 4, img_size=64, class_names=names)
    x_train, y_train = _blocky_scenes(48, seed=0)
    x_val, y_val = _blocky_scenes(16, seed=1)
    losses, pred = _train(model, x_train, y_train, x_val)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)
    miou = helper_miou(pred, y_val, 4)
    assert miou > 0.6, miou  # chance (uniform random prediction) is about 1/7; measured 0.85


def test_embeddings_cached_under_inference_mode_still_train():
    model = build_model("rpn", TINY, 2, img_size=64, class_names=["tree", "car"])
    model.eval()
    with torch.inference_mode():
        model(_image(1))  # validation first: the vocabulary's embeddings get cached here
    model.train()
    out = model(_image(1))
    model.compute_loss(out, torch.randint(0, 2, (1, 64, 64)))["loss"].backward()
    assert model.vpt.grad is not None


def test_config_round_trip_with_adapter_state(tmp_path):
    import json

    import open_clip

    from rsprompt.models.encoders.clip import register_tiny_configs
    from rsprompt.models.methods.rpn import rpn_from_config

    register_tiny_configs()
    torch.manual_seed(1)
    path = tmp_path / "clip.pt"
    torch.save(open_clip.create_model(TINY, force_quick_gelu=True).state_dict(), path)
    names = ["building", "tree", "car"]
    model = build_model(
        "rpn", TINY, 3, img_size=64, class_names=names, aux_channels=1, weights=str(path)
    )
    model.set_seen_classes(["building", "tree"])
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    cfg = json.loads(json.dumps(model.config()))  # a checkpoint stores plain JSON
    torch.manual_seed(2)
    clone = rpn_from_config(cfg, weights=str(path))
    clone.load_adapter_state_dict(model.adapter_state_dict())
    assert clone.seen_classes == ["building", "tree"] and clone.class_names == names
    x, aux = _image(1), torch.randn(1, 1, 64, 64)
    aux[..., :8] = float("nan")  # non-finite aux pixels count as missing
    model.eval()
    clone.eval()
    with torch.no_grad():
        a, b = model(x, aux), clone(x, aux)
    assert torch.isfinite(a).all() and a.shape == (1, 3, 64, 64)
    assert torch.allclose(a, b, atol=1e-6)
    other = tmp_path / "other.pt"
    torch.save(open_clip.create_model(TINY, force_quick_gelu=True).state_dict(), other)
    with pytest.raises(ValueError, match="differ"):
        rpn_from_config(cfg, weights=str(other))


@pytest.mark.slow  # the same counts are checked by test_paper_configuration_counts_on_meta
def test_info_command_reports_the_paper_counts():
    """`rsprompt info --method rpn --encoder ViT-B-16 --num-classes 15 --aux-channels 0 --json`."""
    import json

    from click.testing import CliRunner

    from rsprompt.cli import main

    args = ["info", "--method", "rpn", "--encoder", "ViT-B-16", "--num-classes", "15"]
    result = CliRunner().invoke(main, [*args, "--aux-channels", "0", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["trainable"] == 2_522_880
    assert report["modules"]["relation_h"] == 786_432
    assert abs(report["frozen"] - 150_256_640) <= 0.001 * 150_256_640


def test_seen_classes_follow_the_training_vocabulary():
    names = ["building", "tree", "car", "water"]
    model = build_model("rpn", TINY, 4, img_size=64, class_names=names)
    assert model.seen_classes == names  # before training: the build vocabulary
    model.train()
    model.set_vocabulary(["building", "tree"])  # zero-shot training: seen names only
    model(_image(1))
    assert model.seen_classes == ["building", "tree"]
    model(_image(1), class_names=["tree", "car"])
    assert model.seen_classes == ["building", "tree", "car"]
    model.eval()
    model.set_vocabulary(names)  # test: all names; calibration on the seen ones
    assert model.seen_mask().tolist() == [True, True, True, False]
    model(_image(1))
    assert model.seen_classes == ["building", "tree", "car"]  # eval forwards do not record
    model.set_seen_classes(["water"])
    model.train()
    model(_image(1))
    assert model.seen_classes == ["water"]  # explicit seen classes are kept


def test_encoder_seed_makes_the_random_towers_reproducible():
    a = build_model("rpn", TINY, 2, img_size=64, encoder_seed=5)
    b = build_model("rpn", TINY, 2, img_size=64, encoder_seed=5)
    c = build_model("rpn", TINY, 2, img_size=64, encoder_seed=6)
    w = [m.image_encoder.conv1.weight for m in (a, b, c)]
    assert torch.equal(w[0], w[1]) and not torch.equal(w[0], w[2])
    assert a.config()["encoder_seed"] == 5


def test_lr_multipliers_match_the_trainable_modules(tiny: RPN):
    mult = tiny.lr_multipliers
    assert mult["relation_h"] == 1.0 and mult["vpt"] == mult["head"] == 10.0
    assert set(mult) == set(tiny.trainable_parameters())


@pytest.mark.slow  # ~5 s CPU; the fast suite has test_short_training_learns_on_synthetic_scenes
def test_short_training_on_synthetic_isprs_scenes_beats_the_majority_class():
    """The project's synthetic ISPRS scenes; the random tiny CLIP learns colours/texture only."""
    import numpy as np

    from rsprompt.data.synthetic import generate_scene

    def scenes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        made = [generate_scene("isprs", size=64, seed=seed + i) for i in range(n)]
        x = torch.from_numpy(np.stack([s.optical for s in made]).astype(np.float32) / 255.0)
        y = torch.from_numpy(np.stack([s.labels for s in made]).astype(np.int64))
        return x, y

    x_train, y_train = scenes(48, 0)
    x_val, y_val = scenes(16, 1000)
    mean, std = x_train.mean((0, 2, 3), keepdim=True), x_train.std((0, 2, 3), keepdim=True)
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    torch.manual_seed(0)
    model = build_model("rpn", TINY, 6, img_size=64)  # ISPRS names
    losses, pred = _train(model, x_train, y_train, x_val)
    assert sum(losses[-5:]) < 0.6 * sum(losses[:5]), losses
    miou = helper_miou(pred, y_val, 6)
    majority = int(torch.bincount(y_train.flatten(), minlength=6).argmax())
    base = helper_miou(torch.full_like(y_val, majority), y_val, 6)
    assert miou > 1.5 * base, (miou, base)  # measured 0.119 vs 0.054
