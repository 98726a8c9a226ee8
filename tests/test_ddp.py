"""Lightning DDP on 2 CPU processes (gloo): both ranks end with the same weights and metrics."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from rsprompt.engine.checkpoint import load_model_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_ddp_two_cpu_processes_agree(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "tests")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "ddp_smoke.py"), str(tmp_path), "3"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["world"] == 2 and r0["step"] == r1["step"] == 3
    for k, v in r0["state"].items():
        torch.testing.assert_close(r1["state"][k], v, atol=0, rtol=0)
    assert r0["miou"] == r1["miou"]  # metrics synchronised across ranks
    import engine_fixtures

    with engine_fixtures.registered_tiny():  # the tiny method rebuilds the checkpoint
        model, _ = load_model_checkpoint(tmp_path / "model.ckpt")
    torch.testing.assert_close(model.decoder.weight, r0["state"]["decoder.weight"])
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
