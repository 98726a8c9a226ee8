"""Points where rsprompt follows the authors' released code (docs/methods: departures listed there)."""

from __future__ import annotations

import math

import torch

from rsprompt.models.methods.dplnet import MultimodalFeatureAdapter
from rsprompt.models.methods.mobanet import _rectangle


def test_mcrm_rectangle_aspect_is_width_over_height():
    """Released MoBaNet: ar ~ U(0.5, 2), h = sqrt(A / ar), w = sqrt(A · ar).

    With a fixed ratio of 2 and area fraction 1/8 of a 64×64 crop (A = 512 px²), the rectangle
    is h = sqrt(256) = 16 rows by w = sqrt(1024) = 32 columns: wider than tall.
    """
    gen = torch.Generator().manual_seed(0)
    top, left, rh, rw = _rectangle(64, 64, (1 / 8, 1 / 8), (2.0, 2.0), gen)
    assert (rh, rw) == (16, 32)
    assert 0 <= top <= 64 - 16 and 0 <= left <= 64 - 32


def test_mcrm_rectangle_orientation_statistics():
    """Over many draws E[w/h] = E[ar] = (0.5 + 2) / 2 = 1.25 and E[h/w] = E[1/ar] = ln 4 / 1.5."""
    gen = torch.Generator().manual_seed(1)
    ratios, inverse = [], []
    for _ in range(4000):
        _, _, rh, rw = _rectangle(400, 400, (0.25, 0.25), (0.5, 2.0), gen)
        ratios.append(rw / rh)
        inverse.append(rh / rw)
    mean_wh = sum(ratios) / len(ratios)
    mean_hw = sum(inverse) / len(inverse)
    assert abs(mean_wh - 1.25) < 0.03
    assert abs(mean_hw - math.log(4) / 1.5) < 0.03  # ≈ 0.924


def test_dplnet_mfa_prompt_norm_eps_is_the_blocks():
    """The released MFA normalises the prompt with the block's own LayerNorm (eps 1e-6)."""
    mfa = MultimodalFeatureAdapter(dim=64, num_heads=1, scale=0.125)
    assert mfa.norm.eps == 1e-6
    x = torch.randn(3, 32) * 1e-3  # tiny variance: eps matters
    ref = torch.nn.functional.layer_norm(x, (32,), mfa.norm.weight, mfa.norm.bias, eps=1e-6)
    torch.testing.assert_close(mfa.norm(x), ref)
