"""Train the tiny test model for a few steps with Lightning DDP on 2 CPU processes (gloo).

Run as a subprocess (DDP re-executes ``sys.argv``): ``python scripts/ddp_smoke.py OUT_DIR``.
Each rank writes ``OUT_DIR/rank{r}.pt`` with its trainable tensors and validation metrics after
training; rank 0 also writes ``model.ckpt``. Used by ``tests/test_ddp.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("OMP_NUM_THREADS", "1")


def main(out: Path, steps: int = 3) -> None:
    import engine_fixtures as ef
    import lightning.pytorch as pl
    import torch

    from rsprompt.engine.callbacks import ModelExport, ResumeCheckpoint
    from rsprompt.engine.task import SegmentationTask

    class Dump(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            state = {k: v.cpu() for k, v in pl_module.model.adapter_state_dict(True).items()}
            torch.save(
                {
                    "state": state,
                    "miou": pl_module.last_metrics["miou"],
                    "step": trainer.global_step,
                    "world": trainer.world_size,
                },
                out / f"rank{trainer.global_rank}.pt",
            )

    pl.seed_everything(0)
    task = SegmentationTask("tiny", "tinyconv", lr=1e-2, warmup_steps=1)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=steps,
        default_root_dir=str(out),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        callbacks=[ModelExport(), ResumeCheckpoint(), Dump()],
    )
    trainer.fit(task, ef.TinyDataModule(n_train=12, batch_size=2))


if __name__ == "__main__":
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    main(target, int(sys.argv[2]) if len(sys.argv) > 2 else 3)
