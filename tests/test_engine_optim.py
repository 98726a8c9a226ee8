import pytest
import torch
from torch import nn

from rsprompt.engine.optim import build_optimizer, build_scheduler, lr_factor, param_groups


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(4, 4)
        self.encoder.requires_grad_(False)
        self.lpm = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.h = nn.Parameter(torch.zeros(3, 4))


def test_groups_decay_and_multipliers():
    net = Net()
    groups = param_groups(net, lr=1e-3, weight_decay=0.05, lr_mult={"lpm": 10, "norm.*": 10})
    by_name = {n: g for g in groups for n in g["names"]}
    assert "encoder.weight" not in by_name  # frozen: never optimised
    assert by_name["lpm.weight"]["weight_decay"] == 0.05 and by_name["lpm.weight"][
        "lr"
    ] == pytest.approx(1e-2)
    assert by_name["lpm.bias"]["weight_decay"] == 0.0 and by_name["lpm.bias"][
        "lr"
    ] == pytest.approx(1e-2)
    assert by_name["norm.weight"]["weight_decay"] == 0.0 and by_name["norm.weight"][
        "lr"
    ] == pytest.approx(1e-2)
    assert by_name["h"]["weight_decay"] == 0.05 and by_name["h"]["lr"] == pytest.approx(1e-3)
    n = sum(p.numel() for g in groups for p in g["params"])
    assert n == sum(p.numel() for p in net.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="match no"):
        param_groups(net, 1e-3, 0.0, lr_mult={"nothing": 2})
    opt = build_optimizer(net, "sgd", lr=0.04, weight_decay=5e-4, no_decay_1d=False)
    assert {g["weight_decay"] for g in opt.param_groups} == {5e-4}
    assert isinstance(build_optimizer(net, "adamw"), torch.optim.AdamW)


def test_schedules():
    assert lr_factor(0, 100, "cosine", warmup_steps=10, warmup_start_factor=0.0) == 0.0
    assert lr_factor(5, 100, "cosine", warmup_steps=10, warmup_start_factor=0.0) == pytest.approx(
        0.5
    )
    assert lr_factor(10, 100, "cosine", warmup_steps=10) == pytest.approx(1.0)
    assert lr_factor(55, 100, "cosine", warmup_steps=10) == pytest.approx(0.5)
    assert lr_factor(100, 100, "cosine", warmup_steps=10, min_factor=0.01) == pytest.approx(0.01)
    assert lr_factor(50, 100, "poly", power=0.9) == pytest.approx(0.5**0.9)
    assert lr_factor(70, 100, "constant", warmup_steps=10) == 1.0
    net = Net()
    opt = build_optimizer(net, "adamw", lr=1e-3, lr_mult={"lpm": 10})
    sched = build_scheduler(opt, 10, "poly", min_lr=1e-6)
    for _ in range(10):
        opt.step()
        sched.step()
    lrs = sorted(g["lr"] for g in opt.param_groups)
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(1e-5)
