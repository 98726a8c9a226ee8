"""Resume through `rsprompt train` on fixture folders (real datamodule, sampler and augmentation)."""

import json

import pytest
import torch
from test_configs import _make, tiny_args

from rsprompt.engine.cli_train import run_train


def _state(path):
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.slow  # ~10 s idle, up to a minute on a loaded machine; the fast variant is in
# test_engine_task.py (tiny datamodule)
def test_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("RSPROMPT_ALLOW_IMPORTS", "engine_fixtures")  # the test's own callback
    root = _make("vaihingen", tmp_path)

    def args(out, *extra):
        a = tiny_args("mobanet_vaihingen.yaml", root, out, steps=3)  # epochs of 3 steps
        a[a.index("--trainer.max_steps") + 1] = "6"
        return [*a, *extra]

    run_train(args(tmp_path / "a"))
    with pytest.raises(SystemExit):  # Lightning exits after a KeyboardInterrupt
        run_train(args(tmp_path / "b", "--trainer.callbacks+=engine_fixtures.InterruptAtEpoch"))
    assert (tmp_path / "b" / "model.ckpt").is_file()  # written although interrupted
    assert json.loads((tmp_path / "b" / "val_metrics.json").read_text())["step"] == 3
    run_train(args(tmp_path / "b", "--ckpt_path", "last"))
    a, b = _state(tmp_path / "a" / "model.ckpt"), _state(tmp_path / "b" / "model.ckpt")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0)
    ma = json.loads((tmp_path / "a" / "val_metrics.json").read_text())
    mb = json.loads((tmp_path / "b" / "val_metrics.json").read_text())
    assert ma["step"] == mb["step"] == 6
    assert mb["miou"] == pytest.approx(ma["miou"], abs=1e-6)
