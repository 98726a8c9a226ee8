"""CLIP weights are read as tensors only: TorchScript archives need the user's explicit trust."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F

from rsprompt.models.encoders.clip import (
    TRUST_TORCHSCRIPT_ENV,
    build_clip,
    is_torchscript_archive,
    register_tiny_configs,
)

TINY = "rsprompt-tiny-clip"  # 64 px images, 16 px patches: a 4×4 native grid, width 64


@pytest.fixture(scope="module")
def source():
    import open_clip

    register_tiny_configs()
    torch.manual_seed(7)
    return open_clip.create_model(TINY, force_quick_gelu=True)


@pytest.fixture(scope="module")
def jit_file(source, tmp_path_factory):
    path = tmp_path_factory.mktemp("jit") / "clip_jit.pt"
    with pytest.warns(FutureWarning):  # torch.jit.script is deprecated upstream
        torch.jit.script(source).save(str(path))
    return path


def test_torchscript_archive_refused_without_trust(jit_file, monkeypatch):
    monkeypatch.delenv(TRUST_TORCHSCRIPT_ENV, raising=False)
    calls = []
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: calls.append(a))
    assert is_torchscript_archive(jit_file)
    with pytest.raises(ValueError, match=r"TorchScript archive.*RSPROMPT_TRUST_TORCHSCRIPT=1") as e:
        build_clip(TINY, weights=jit_file)
    assert str(jit_file) in str(e.value)
    assert calls == []  # the program was never loaded


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_trusted_torchscript_archive_loads_its_weights(jit_file, source, monkeypatch, how):
    kwargs = {}
    if how == "argument":
        monkeypatch.delenv(TRUST_TORCHSCRIPT_ENV, raising=False)
        kwargs["trust_torchscript"] = True
    else:
        monkeypatch.setenv(TRUST_TORCHSCRIPT_ENV, "1")
    visual, text, spec = build_clip(TINY, weights=jit_file, **kwargs)
    assert torch.equal(visual.conv1.weight, source.visual.conv1.weight)
    assert torch.equal(text.text_projection, source.text_projection)
    assert spec.quick_gelu


def test_argument_false_overrides_the_environment(jit_file, monkeypatch):
    monkeypatch.setenv(TRUST_TORCHSCRIPT_ENV, "1")
    with pytest.raises(ValueError, match="TorchScript"):
        build_clip(TINY, weights=jit_file, trust_torchscript=False)


class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_pickle_with_code_refused_and_never_run(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    with path.open("wb") as f:
        pickle.dump({"visual.conv1.weight": _Marker(marker)}, f)
    with pytest.raises(ValueError, match="not a plain tensor file"):
        build_clip(TINY, weights=path)
    assert not marker.exists()


def test_plain_state_dict_nested_and_prefixed(tmp_path, source):
    path = tmp_path / "clip.pt"
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"state_dict": state}, path)
    visual, _, spec = build_clip(TINY, weights=path)
    assert torch.equal(visual.proj, source.visual.proj)
    assert spec.weights == "clip.pt"


def test_wrong_shapes_are_a_clear_error(tmp_path, source):
    state = dict(source.state_dict())
    state["visual.proj"] = torch.zeros(3, 3)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"bad\.pt do not fit the model"):
        build_clip(TINY, weights=path)


def test_position_embedding_resampled_bilinearly_at_load(tmp_path, source):
    """A 4×4 native grid built at 96 px (6×6) is resized bilinearly, align_corners=False."""
    path = tmp_path / "clip.pt"
    torch.save(source.state_dict(), path)
    visual, _, _ = build_clip(TINY, img_size=96, weights=path)
    pos = source.visual.positional_embedding.detach()  # (1 + 16) × 64
    grid = pos[1:].reshape(1, 4, 4, 64).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(6, 6), mode="bilinear", align_corners=False)
    expected = expected.permute(0, 2, 3, 1).reshape(36, 64)
    got = visual.positional_embedding.detach()
    assert got.shape == (37, 64)
    torch.testing.assert_close(got[0], pos[0])
    torch.testing.assert_close(got[1:], expected)
    bicubic = F.interpolate(grid, size=(6, 6), mode="bicubic", antialias=True, align_corners=False)
    assert not torch.allclose(got[1:], bicubic.permute(0, 2, 3, 1).reshape(36, 64))
