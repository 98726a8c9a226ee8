"""Training precision: ``auto`` follows the hardware, is printed and recorded in the artefacts."""

from __future__ import annotations

import json

import pytest
import torch
from test_configs import _make, tiny_args

from rsprompt.engine import precision as prec
from rsprompt.engine.checkpoint import read_model_checkpoint
from rsprompt.engine.cli_train import resolve_train_precision, run_train


@pytest.mark.parametrize("native, expected", [(True, "bf16-mixed"), (False, "32-true")])
def test_auto_follows_the_cpu(monkeypatch, native, expected):
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_train_precision("auto", "auto") == expected
    assert resolve_train_precision(None, "cpu") == expected


def test_float16_without_gpu_falls_back_with_a_warning(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="float16"):
        assert resolve_train_precision("16-mixed", "auto") == "32-true"
    assert resolve_train_precision("bf16-mixed", "cpu") == "bf16-mixed"  # asked for: honoured


@pytest.mark.parametrize("native, expected", [(True, "bf16-mixed"), (False, "32-true")])
def test_precision_printed_and_recorded(tmp_path, monkeypatch, capsys, native, expected):
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    root = _make("vaihingen", tmp_path)
    args = tiny_args("mobanet_vaihingen.yaml", root, tmp_path / "run", steps=2)
    args += ["--trainer.precision", "auto", "--model.checkpoint_frozen", "true"]
    run_train(args)
    assert f"precision {expected} (asked: auto)" in capsys.readouterr().err
    meta = read_model_checkpoint(tmp_path / "run" / "model.ckpt")["meta"]
    assert meta["training"]["numeric_precision"] == expected
    metrics = json.loads((tmp_path / "run" / "val_metrics.json").read_text())
    assert metrics["numeric_precision"] == expected


def test_evaluate_records_and_applies_the_precision(tmp_path, monkeypatch):
    """evaluate --precision: auto resolves per hardware, bf16 agrees with fp32, both recorded."""
    from click.testing import CliRunner

    from rsprompt.cli import main

    root = _make("vaihingen", tmp_path)
    run_train(tiny_args("mobanet_vaihingen.yaml", root, tmp_path / "run", steps=2))
    ckpt = tmp_path / "run" / "model.ckpt"
    results = {}
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: False)
    for name in ("32", "bf16", "auto"):
        out = tmp_path / f"eval_{name}"
        args = ["evaluate", "-m", str(ckpt), "--data.root", str(root), "--quiet", "-o", str(out)]
        res = CliRunner().invoke(main, [*args, "--precision", name, "--device", "cpu"])
        assert res.exit_code == 0, res.output
        results[name] = json.loads((out / "metrics.json").read_text())
    assert results["32"]["numeric_precision"] == "32"
    assert results["bf16"]["numeric_precision"] == "bf16"
    assert results["auto"]["numeric_precision"] == "32"  # no native bf16 (faked)
    assert results["auto"]["device"] == "cpu"
    assert abs(results["bf16"]["oa"] - results["32"]["oa"]) < 0.02
