"""Loading SegFormer/mmseg and ImageNet MiT checkpoints into smp's MiT (synthetic state dicts)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rsprompt.models.encoders.mit_weights import (
    convert_mit_state_dict,
    load_mit_weights,
    read_state_dict,
)
from rsprompt.models.methods.dplnet import build_mit

TINY = {"depths": [1, 1, 1, 1]}


@pytest.fixture(scope="module")
def source() -> dict[str, torch.Tensor]:
    """State dict of a tiny random MiT-B0 (seed 1)."""
    return {k: v.clone() for k, v in build_mit("mit_b0", seed=1, **TINY).state_dict().items()}


@pytest.fixture(scope="module")
def _fresh_model() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    model = build_mit("mit_b0", seed=2, **TINY)
    return model, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def fresh(_fresh_model) -> torch.nn.Module:
    """A tiny MiT-B0 with a different random init (seed 2), reset for every test."""
    model, initial = _fresh_model
    torch.nn.Module.load_state_dict(model, initial)
    return model


def _assert_equal(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    assert set(own) == set(state)
    for key, value in state.items():
        assert torch.equal(own[key], value), key


def test_segformer_checkpoint(tmp_path: Path, source, fresh) -> None:
    """mmseg layout: nested under state_dict, backbone. prefix, decode_head dropped."""
    assert not torch.equal(
        fresh.state_dict()["block1.0.attn.q.weight"], source["block1.0.attn.q.weight"]
    )
    ckpt = {f"backbone.{k}": v for k, v in source.items()}
    ckpt["decode_head.conv_seg.weight"] = torch.zeros(150, 768, 1, 1)
    ckpt["decode_head.linear_fuse.conv.weight"] = torch.zeros(768, 3072, 1, 1)
    path = tmp_path / "segformer.b0.pth"
    torch.save({"meta": {"epoch": 3, "note": "fake"}, "state_dict": ckpt}, path)
    info = load_mit_weights(fresh, path)
    _assert_equal(fresh, source)
    assert info["loaded"] == len(source)
    assert sorted(info["dropped"]) == [
        "decode_head.conv_seg.weight",
        "decode_head.linear_fuse.conv.weight",
    ]


def test_imagenet_checkpoint_and_module_prefix(tmp_path: Path, source, fresh) -> None:
    """ImageNet MiT layout: head.* dropped; DataParallel's module. prefix stripped."""
    ckpt = {f"module.{k}": v for k, v in source.items()}
    ckpt["module.head.weight"] = torch.zeros(1000, 256)
    ckpt["module.head.bias"] = torch.zeros(1000)
    path = tmp_path / "mit_b0.pth"
    torch.save(ckpt, path)
    info = load_mit_weights(fresh, path)
    _assert_equal(fresh, source)
    assert sorted(info["dropped"]) == ["module.head.bias", "module.head.weight"]


def _to_mmseg_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """smp/NVlabs MiT keys → mmseg 1.x keys (the layout of mmseg's ``mit2mmseg`` converter)."""
    out = {}
    for key, value in state.items():
        head, rest = key.split(".", 1)
        if head.startswith("patch_embed"):
            s = int(head.removeprefix("patch_embed")) - 1
            out[f"layers.{s}.0.{rest.replace('proj.', 'projection.')}"] = value
        elif head.startswith("norm"):
            out[f"layers.{int(head.removeprefix('norm')) - 1}.2.{rest}"] = value
        else:
            s = int(head.removeprefix("block")) - 1
            block, sub = rest.split(".", 1)
            new = f"layers.{s}.1.{block}."
            if sub.startswith("attn.q."):
                kind = sub.rsplit(".", 1)[1]
                kv = state[f"{head}.{block}.attn.kv.{kind}"]
                out[new + f"attn.attn.in_proj_{kind}"] = torch.cat([value, kv])
            elif sub.startswith("attn.kv."):
                continue
            elif sub.startswith("attn.proj."):
                out[new + sub.replace("attn.proj.", "attn.attn.out_proj.")] = value
            elif sub.startswith("mlp."):
                if sub in ("mlp.fc1.weight", "mlp.fc2.weight"):
                    value = value.reshape(*value.shape, 1, 1)
                sub = sub.replace("mlp.fc1.", "ffn.layers.0.").replace("mlp.fc2.", "ffn.layers.4.")
                out[new + sub.replace("mlp.dwconv.dwconv.", "ffn.layers.1.")] = value
            else:
                out[new + sub] = value
    return out


def test_mmseg_1x_checkpoint(tmp_path: Path, source, fresh) -> None:
    """OpenMMLab model-zoo layout (layers.*, fused in_proj, 1×1-conv FFN) maps back exactly."""
    mm = _to_mmseg_layout(source)
    assert (
        "layers.2.1.0.attn.attn.in_proj_weight" in mm and "layers.0.1.0.ffn.layers.1.weight" in mm
    )
    ckpt = {f"backbone.{k}": v for k, v in mm.items()}
    ckpt["decode_head.conv_seg.weight"] = torch.zeros(150, 256, 1, 1)
    path = tmp_path / "segformer_mit-b0_mmseg.pth"
    torch.save({"meta": {}, "state_dict": ckpt}, path)
    load_mit_weights(fresh, path)
    _assert_equal(fresh, source)


def test_safetensors(tmp_path: Path, source, fresh) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "mit.safetensors"
    save_file({k: v.contiguous() for k, v in source.items()}, str(path))
    load_mit_weights(fresh, path)
    _assert_equal(fresh, source)


def test_wrong_keys_give_a_clear_error(tmp_path: Path, source, fresh) -> None:
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    ckpt = dict(source)
    del ckpt["block2.0.attn.q.weight"]
    ckpt["block9.0.bogus"] = torch.zeros(3)
    ckpt["patch_embed1.proj.weight"] = torch.zeros(64, 3, 7, 7)  # a B1+ width in a B0
    path = tmp_path / "wrong.pth"
    torch.save(ckpt, path)
    with pytest.raises(ValueError) as err:
        load_mit_weights(fresh, path)
    msg = str(err.value)
    assert "block2.0.attn.q.weight" in msg and "Missing keys" in msg
    assert "block9.0.bogus" in msg and "Unexpected keys" in msg
    assert "patch_embed1.proj.weight (file (64, 3, 7, 7), model (32, 3, 7, 7))" in msg
    _assert_equal(fresh, before)  # nothing was loaded


def test_not_a_state_dict(tmp_path: Path, fresh) -> None:
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match="does not hold a state dict"):
        load_mit_weights(fresh, path)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_mit_weights(fresh, tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="weights_only=True"):
        read_state_dict(garbage)


def test_convert_keeps_plain_keys() -> None:
    state = {"block1.0.norm1.weight": torch.ones(2), "head.weight": torch.ones(1)}
    converted, dropped = convert_mit_state_dict(state)
    assert list(converted) == ["block1.0.norm1.weight"] and dropped == ["head.weight"]


def test_build_dplnet_with_weights(tmp_path: Path, source) -> None:
    """The registry's ``weights=`` loads a local file into DPLNet's frozen MiT."""
    from rsprompt.models.registry import build_model

    path = tmp_path / "segformer.pth"
    torch.save({f"backbone.{k}": v for k, v in source.items()}, path)
    model = build_model("dplnet", "mit_b0", 4, weights=str(path), encoder_kwargs=TINY)
    _assert_equal(model.encoder, source)
    assert not any(p.requires_grad for p in model.encoder.parameters())
