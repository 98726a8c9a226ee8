"""Every shipped config trains a few steps on generated fixture folders with a tiny encoder."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from helpers import make_fixture_folder as _make  # also imported from here by other tests

from rsprompt.cli import main
from rsprompt.engine import task as task_module
from rsprompt.engine.cli_train import run_train
from rsprompt.models.base import SegmentationModel

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
#: Configs of the benchmark datasets (fixture folders in their official layouts); the configs for
#: the user's own data (custom_*.yaml) train end to end in test_custom_data.py.
BENCHMARK_CONFIGS = [c for c in CONFIGS if not c.startswith("custom_")]
EXPECTED = {
    "mobanet_vaihingen.yaml",
    "mobanet_potsdam.yaml",
    "dplnet_vaihingen.yaml",
    "dplnet_potsdam.yaml",
    "gopt_whu-opt-sar.yaml",
    "gopt_vaihingen.yaml",
    "spm_vaihingen.yaml",
    "rpn_potsdam.yaml",
}
TINY_VIT = {"depth": 4, "embed_dim": 64, "num_heads": 2, "patch_size": 8, "img_size": 64}
#: method -> (encoder, encoder_options for it) small enough for a CPU test.
TINY = {
    "mobanet": ("resnet18", {}),
    "spm": ("resnet18", {}),
    "dplnet": ("mit_b0", {"encoder_kwargs": {"depths": [1, 1, 1, 1]}}),
    "gopt": ("vit_base_patch16_224", {"encoder_kwargs": TINY_VIT}),
    "rpn": ("rsprompt-tiny-clip", {"img_size": 64}),
}


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("fixtures")
    return {d: _make(d, base) for d in ("vaihingen", "potsdam", "whu-opt-sar")}


def tiny_args(config: str, data_root: Path, out: Path, steps: int = 3) -> list[str]:
    cfg = yaml.safe_load((ROOT / "configs" / config).read_text())
    encoder, options = TINY[cfg["model"]["method"]]
    return [
        "--config",
        str(ROOT / "configs" / config),
        "--model.encoder",
        encoder,
        "--model.weights",
        "null",
        "--model.encoder_options",
        json.dumps({encoder: options}),
        "--data.root",
        str(data_root),
        "--data.patch_size",
        "64",
        "--data.batch_size",
        "4",
        "--data.num_workers",
        "0",
        "--data.length",
        str(4 * steps),
        "--trainer.max_steps",
        str(steps),
        "--trainer.default_root_dir",
        str(out),
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.num_sanity_val_steps",
        "0",
        "--trainer.limit_val_batches",
        "2",
    ]


def _dataset_of(config: str) -> str:
    return config.split("_", 1)[1].removesuffix(".yaml")


def test_all_configs_shipped():
    assert EXPECTED <= set(CONFIGS)
    for name in CONFIGS:
        cfg = yaml.safe_load((ROOT / "configs" / name).read_text())
        assert cfg["model"]["weights"], f"{name} names no weights file"
        assert cfg["trainer"]["max_steps"] > 0 and cfg["data"]["init_args"]["batch_size"] > 0
        text = (ROOT / "configs" / name).read_text()
        assert "Departures" in text or "CHOSEN recipe" in text, (
            f"{name} does not say how it departs"
        )


@pytest.fixture
def built_models(monkeypatch) -> list[tuple[SegmentationModel, dict[str, torch.Tensor]]]:
    """Every model the training task builds, with a copy of its state as built (untrained)."""
    built = []
    original = task_module.build_seeded

    def spy(*args, **kwargs):
        model = original(*args, **kwargs)
        built.append((model, {k: v.detach().clone() for k, v in model.state_dict().items()}))
        return model

    monkeypatch.setattr(task_module, "build_seeded", spy)
    return built


@pytest.mark.parametrize("config", BENCHMARK_CONFIGS)
def test_config_trains_with_tiny_encoder(config, fixtures, tmp_path, built_models):
    out = tmp_path / "run"
    result = run_train(tiny_args(config, fixtures[_dataset_of(config)], out))
    ckpt = out / "model.ckpt"
    assert ckpt.is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    obj = torch.load(ckpt, weights_only=True)
    meta = obj["meta"]
    assert meta["weights"] is None and meta["encoder_seed"] == 0
    assert meta["dataset"] == _dataset_of(config) and meta["patch_size"] == 64
    # Training changed the trainable parameters and left the frozen ones bit-identical.
    (trained, initial), *_ = built_models
    params = dict(trained.named_parameters())
    trainable = {k for k, p in params.items() if p.requires_grad}
    frozen = set(params) - trainable
    assert frozen and trainable
    final = trained.state_dict()
    encoder = tuple(f"{m}." for m in type(trained).frozen_modules)
    frozen |= {k for k in final if k.startswith(encoder) and k not in trainable}  # + BN stats
    for key in frozen:
        assert torch.equal(final[key], initial[key]), f"frozen {key} changed"
    changed = {k for k in trainable if not torch.equal(final[k], initial[k])}
    # All of them for most methods; in 3 steps about 20 of GoPT's 142 get no gradient (e.g.
    # attention key biases, which the softmax ignores, and zero-initialised branches).
    assert len(changed) >= 0.8 * len(trainable), sorted(trainable - changed)
    # model.ckpt holds exactly the trained inference tensors: trainable parameters but the
    # training-only modules', plus their modules' buffers, never the frozen encoder.
    saved = obj["state_dict"]
    skip = tuple(f"{m}." for m in type(trained).training_only_modules)
    assert {k for k in saved if k in params} == {k for k in trainable if not k.startswith(skip)}
    for key, value in saved.items():
        assert torch.equal(value, final[key].cpu()), key
    n = sum(v.numel() for v in saved.values())
    assert ckpt.stat().st_size <= 4 * n * 1.01 + 512_000
    metrics = json.loads((out / "val_metrics.json").read_text())
    assert metrics["step"] == 3 and 0.0 <= metrics["oa"] <= 1.0
    if meta["method"] == "rpn":
        assert meta["unseen_classes"] == ["tree", "car"] and "hiou" in metrics
    assert result["model_ckpt"] == ckpt


def test_missing_weights_and_print_config(tmp_path):
    runner = CliRunner()
    res = runner.invoke(
        main,
        [
            "train",
            "--config",
            str(ROOT / "configs" / "spm_vaihingen.yaml"),
            "--data.root",
            str(tmp_path),
            "--model.encoder",
            "resnet18",
        ],
    )
    assert res.exit_code != 0
    assert "--model.weights null" in res.output and "weights/resnet50_a1_in1k.pth" in res.output
    res = runner.invoke(
        main,
        [
            "train",
            "--config",
            str(ROOT / "configs" / "mobanet_vaihingen.yaml"),
            "--model.encoder",
            "resnet18",
            "--print_config",
        ],
    )
    assert res.exit_code == 0, res.output
    printed = yaml.safe_load(res.output)
    assert printed["model"]["encoder"] == "resnet18"
    assert printed["model"]["encoder_options"]["vit_large_patch14_dinov2"]["img_size"] == 518
