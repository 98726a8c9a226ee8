"""Activation checkpointing of frozen encoder blocks: equal gradients, fewer saved activations."""

from __future__ import annotations

import pytest
import torch

from rsprompt.models.checkpointing import checkpoint_units, set_frozen_checkpointing
from rsprompt.models.registry import build_model

DINO = {"depth": 4, "embed_dim": 32, "num_heads": 2, "img_size": 56}
VIT8 = {"depth": 4, "embed_dim": 64, "num_heads": 2, "patch_size": 8, "img_size": 64}
CASES = {
    "mobanet": (("mobanet", "vit_small_patch14_dinov2", 4), {"encoder_kwargs": DINO}, 56),
    "spm": (("spm", "vit_base_patch16_224", 4), {"encoder_kwargs": VIT8}, 64),
    "gopt": (("gopt", "vit_base_patch16_224", 4), {"encoder_kwargs": VIT8}, 64),
    "dplnet": (("dplnet", "mit_b0", 4), {"encoder_kwargs": {"depths": [1, 1, 1, 1]}}, 64),
    "rpn": (("rpn", "rsprompt-tiny-clip", 4), {"img_size": 64, "dropout": 0.0}, 64),
    "mobanet-cnn": (("mobanet", "resnet18", 4), {}, 64),
}


def _saved_bytes_and_grads(model, image, aux, target):
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same dropout/MCRM draws in both runs
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(image, aux, torch.ones_like(aux))
        loss = model.compute_loss(out, target)["loss"]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return sum(saved), grads


@pytest.mark.parametrize("case", list(CASES))
def test_same_gradients_and_fewer_saved_activations(case):
    args, kwargs, size = CASES[case]
    torch.manual_seed(0)
    model = build_model(*args, aux_channels=1, **kwargs).train()
    image = torch.randn(2, 3, size, size)
    aux = torch.randn(2, 1, size, size)
    target = torch.randint(0, 4, (2, size, size))
    plain_bytes, plain = _saved_bytes_and_grads(model, image, aux, target)
    n = set_frozen_checkpointing(model)
    assert n == len(checkpoint_units(model)) > 0
    ckpt_bytes, ckpt = _saved_bytes_and_grads(model, image, aux, target)
    assert plain.keys() == ckpt.keys() and plain
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)
    assert ckpt_bytes < plain_bytes
    # only frozen modules are checkpointed, and switching off restores the classes
    assert all(not p.requires_grad for u in checkpoint_units(model) for p in u.parameters())
    assert set_frozen_checkpointing(model, False) == n
    assert not any(
        getattr(type(u), "_rsprompt_checkpointed", False) for u in checkpoint_units(model)
    )


def test_state_dict_keys_unchanged():
    model = build_model("spm", "vit_base_patch16_224", 4, aux_channels=1, encoder_kwargs=VIT8)
    keys = list(model.state_dict())
    set_frozen_checkpointing(model)
    assert list(model.state_dict()) == keys


def test_frozen_prefix_holds_no_autograd_graph():
    """SPM prompts from the second stage on: the frozen first stage records no graph."""
    model = build_model("spm", "resnet18", 4, aux_channels=1).train()
    outputs = []
    stage0 = model.encoder.stage_modules(0)[-1]
    handle = stage0.register_forward_hook(lambda m, i, o: outputs.append(o))
    image = torch.randn(2, 3, 64, 64)
    aux = torch.randn(2, 1, 64, 64)
    model(image, aux, torch.ones_like(aux))
    handle.remove()
    assert outputs and outputs[0].grad_fn is None and not outputs[0].requires_grad
