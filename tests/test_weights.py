"""Loading real weights from local files (no network anywhere)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rsprompt.models.encoders import build_encoder
from rsprompt.models.weights import (
    efficientnet_lite0_package_path,
    load_state_dict_file,
    load_timm_state_file,
    rename_efficientnet_lite0_keys,
    sha256_file,
)

MILITARY_UNIFORM = 652  # ImageNet-1k class of matplotlib's grace_hopper.jpg


def test_lite0_package_keys_rename_strictly():
    import timm

    raw = load_state_dict_file(efficientnet_lite0_package_path())
    renamed = rename_efficientnet_lite0_keys(raw)
    model = timm.create_model("tf_efficientnet_lite0")
    result = model.load_state_dict(renamed, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    assert set(renamed) == expected


def test_rename_refuses_unknown_keys():
    with pytest.raises(KeyError, match="unknown"):
        rename_efficientnet_lite0_keys({"_mystery.weight": torch.zeros(1)})


def test_lite0_classifies_a_real_photo():
    import timm
    from matplotlib import cbook
    from PIL import Image

    try:
        path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    except Exception as exc:  # pragma: no cover - matplotlib without sample data
        pytest.skip(f"matplotlib's sample photo is not available: {exc}")
    model = timm.create_model("tf_efficientnet_lite0")
    model.load_state_dict(load_timm_state_file(efficientnet_lite0_package_path()), strict=True)
    model.eval()
    img = Image.open(path).convert("RGB")
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    img = img.resize((224, 224), Image.BICUBIC)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
    x = (x - 0.5) / 0.5  # tf_efficientnet_lite0 statistics
    with torch.no_grad():
        probs = model(x[None]).softmax(-1)[0]
    assert int(probs.argmax()) == MILITARY_UNIFORM
    assert float(probs.max()) > 0.2


def test_encoder_from_package_weights_is_fingerprinted():
    enc = build_encoder("tf_efficientnet_lite0", weights="package")
    path = efficientnet_lite0_package_path()
    assert enc.weights == str(path)
    assert enc.weights_sha256 == sha256_file(path) and len(enc.weights_sha256) == 64
    assert enc.describe()["weights_sha256"] == enc.weights_sha256
    assert enc.mean == (0.5, 0.5, 0.5)
    ref = load_timm_state_file(path)
    assert torch.equal(enc.model.conv_stem.weight, ref["conv_stem.weight"])
    assert all(not p.requires_grad for p in enc.parameters())


def test_encoder_from_local_timm_file(tmp_path: Path):
    a = build_encoder("resnet18", encoder_seed=7)
    sd = {k.replace("model.", "", 1): v for k, v in a.state_dict().items()}
    path = tmp_path / "resnet18.pth"
    torch.save(sd, path)
    b = build_encoder("resnet18", weights=str(path), encoder_seed=0)
    assert torch.equal(a.model.conv1.weight, b.model.conv1.weight)
    assert b.weights_sha256 == sha256_file(path)


def test_missing_file_says_how_to_pass_one(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="local weights file"):
        build_encoder("resnet18", weights=str(tmp_path / "nope.pth"))


def test_failed_download_says_how_to_pass_a_file(monkeypatch):
    import timm

    def offline(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise OSError("Network is unreachable")
        return real(*args, **kwargs)

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError, match=r"pass its path instead.*weights="):
        build_encoder("resnet18", weights="hub")


def test_package_alias_only_for_lite0():
    with pytest.raises(ValueError, match="tf_efficientnet_lite0"):
        build_encoder("resnet18", weights="package")


def test_meta_device_refuses_weights():
    with pytest.raises(ValueError, match="meta"):
        build_encoder("tf_efficientnet_lite0", weights="package", device="meta")


def test_state_dict_file_unwraps_and_rejects(tmp_path: Path):
    p = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {"a": torch.ones(2)}}, p)
    assert torch.equal(load_state_dict_file(p)["a"], torch.ones(2))
    torch.save({"a": 1}, p)
    with pytest.raises(ValueError, match="state dict"):
        load_state_dict_file(p)


def test_mit_encoder_from_local_file(tmp_path: Path):
    a = build_encoder("mit_b0", depths=[1, 1, 1, 1], encoder_seed=5)
    path = tmp_path / "mit_b0.pth"
    torch.save({k.replace("model.", "", 1): v for k, v in a.state_dict().items()}, path)
    b = build_encoder("mit_b0", weights=str(path), depths=[1, 1, 1, 1], encoder_seed=0)
    assert torch.equal(a.model.patch_embed1.proj.weight, b.model.patch_embed1.proj.weight)
    assert b.weights == str(path) and b.weights_sha256 == sha256_file(path)
    assert b.encoder_seed is None
    assert all(not p.requires_grad for p in b.parameters())
