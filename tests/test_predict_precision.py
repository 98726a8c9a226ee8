"""predict --precision/--device: auto resolution, bf16 against fp32 on a trained tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from test_configs import _make, tiny_args

from rsprompt.cli import main
from rsprompt.data import synthetic
from rsprompt.engine import precision as prec
from rsprompt.engine.cli_train import run_train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A briefly trained MoBaNet (tiny resnet18) and a synthetic scene with its DSM."""
    base = tmp_path_factory.mktemp("precision")
    root = _make("vaihingen", base)
    run_train(tiny_args("mobanet_vaihingen.yaml", root, base / "run", steps=4))
    scene = synthetic.generate_scene("isprs", size=(160, 200), seed=3, resolution=0.1)
    paths = synthetic.write_scene(scene, base / "scene")
    return base / "run" / "model.ckpt", paths


def _predict(ckpt, paths, out, *extra):
    args = ["predict", str(paths["image"]), "-m", str(ckpt), "--dem", str(paths["dsm"])]
    res = CliRunner().invoke(main, [*args, "-o", str(out), "-q", *extra])
    assert res.exit_code == 0, res.output
    with rasterio.open(out) as src:
        return src.read(1)


def test_bf16_agrees_with_fp32_and_is_recorded(trained, tmp_path):
    ckpt, paths = trained
    maps = {}
    for name in ("32", "bf16"):
        out = tmp_path / f"{name}.tif"
        summary = tmp_path / f"{name}.json"
        maps[name] = _predict(ckpt, paths, out, "--precision", name, "--summary-json", str(summary))
        record = json.loads(summary.read_text())[0]
        assert record["numeric_precision"] == name and record["device"] == "cpu"
    agreement = float(np.mean(maps["32"] == maps["bf16"]))
    assert agreement >= 0.98  # a 4-step model: logits are close to ties; the demo guard is 99.5%


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "32")])
def test_auto_follows_the_hardware(trained, tmp_path, monkeypatch, native, expected):
    ckpt, paths = trained
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: native)
    summary = tmp_path / "s.json"
    _predict(ckpt, paths, tmp_path / "m.tif", "--summary-json", str(summary))  # defaults: auto
    assert json.loads(summary.read_text())[0]["numeric_precision"] == expected


def test_float16_on_the_cpu_is_a_clear_error(trained, tmp_path):
    ckpt, paths = trained
    res = CliRunner().invoke(
        main,
        ["predict", str(paths["image"]), "-m", str(ckpt), "-o", str(tmp_path / "m.tif"),
         "--precision", "16", "--device", "cpu"],
    )  # fmt: skip
    assert res.exit_code == 2 and "only on a GPU" in res.output
    assert not (tmp_path / "m.tif").exists()


def test_library_resolves_auto_and_keeps_outputs_float32(trained, tmp_path, monkeypatch):
    from rsprompt.inference.from_checkpoint import CheckpointPredictor

    ckpt, paths = trained
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: True)
    predictor = CheckpointPredictor(ckpt, device="cpu")
    summary = predictor.predict(
        paths["image"], tmp_path / "m.tif", aux=paths["dsm"], precision="auto",
        probabilities=tmp_path / "p.tif", progress=False,
    )  # fmt: skip
    assert summary.numeric_precision == "bf16"
    with rasterio.open(tmp_path / "p.tif") as src:
        assert src.dtypes[0] == "uint8"
        total = src.read().astype(int).sum(0)
    assert total.min() >= 250 and total.max() <= 260  # probabilities still sum to 255


def test_demo_reports_its_precision(tmp_path, monkeypatch):
    """The fp32 case (bf16 training is emulated, slow, on CPUs without it; the bf16 code paths
    are covered by test_train_precision.py and the predict tests above)."""
    from rsprompt.demo import TINY_SETTINGS, run_demo

    native, expected = False, "32"

    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: native)
    lines = []
    metrics = run_demo(tmp_path, settings=TINY_SETTINGS, progress=False, log=lines.append)
    assert metrics["numeric_precision"] == expected
    assert json.loads((tmp_path / "metrics.json").read_text())["numeric_precision"] == expected
    assert any(f"precision {expected}" in line for line in lines)
