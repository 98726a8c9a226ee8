import json

import engine_fixtures as ef
import lightning.pytorch as pl
import pytest
import torch

from rsprompt.engine.callbacks import ModelExport, ResumeCheckpoint
from rsprompt.engine.checkpoint import CheckpointError, load_model_checkpoint
from rsprompt.engine.task import SegmentationTask, WeightsNotFoundError

pytestmark = pytest.mark.usefixtures("tiny_method")


class Stop(pl.Callback):
    """Interrupt (Ctrl+C) at the start of epoch 1, i.e. right after the boundary."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise KeyboardInterrupt


def _fit(root, ckpt=None, stop=False, seed_enc=0, max_steps=6):
    pl.seed_everything(0)
    task = SegmentationTask(
        "tiny", "tinyconv", encoder_seed=seed_enc, lr=1e-2, warmup_steps=2, isprs_convention=True
    )
    trainer = pl.Trainer(
        max_steps=max_steps,
        default_root_dir=str(root),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        callbacks=[ModelExport(), ResumeCheckpoint(), *([Stop()] if stop else [])],
    )
    try:
        trainer.fit(task, ef.TinyDataModule(), ckpt_path=ckpt)
    except SystemExit:  # Lightning exits after a KeyboardInterrupt
        pass
    return task


def test_train_interrupt_resume_matches(tmp_path):
    a = _fit(tmp_path / "a")
    # artefacts of a complete run
    assert (tmp_path / "a" / "model.ckpt").is_file()
    assert (tmp_path / "a" / "checkpoints" / "last.ckpt").is_file()
    val = json.loads((tmp_path / "a" / "val_metrics.json").read_text())
    assert val["step"] == 6 and val["mean_classes"] == [0, 1] and 0 <= val["miou"] <= 1
    assert len((tmp_path / "a" / "val_metrics.jsonl").read_text().splitlines()) == 2
    # resume checkpoint: no frozen encoder, but training-only heads and loop/optimizer/RNG state
    last = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)
    assert not any(k.startswith("model.encoder.") for k in last["state_dict"])
    assert "model.aux_head.weight" in last["state_dict"]
    assert {"optimizer_states", "lr_schedulers", "loops", "rsprompt_rng", "rsprompt_meta"} <= set(
        last
    )

    # interrupted at the epoch boundary: model.ckpt is still written, then resume
    b_root = tmp_path / "b"
    b = _fit(b_root, stop=True)
    assert b.global_step == 3 and (b_root / "model.ckpt").is_file()
    b = _fit(b_root, ckpt=str(b_root / "checkpoints" / "last.ckpt"))
    assert b.global_step == 6
    sa, sb = a.model.adapter_state_dict(True), b.model.adapter_state_dict(True)
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], atol=1e-6, rtol=0)
    assert b.last_metrics["miou"] == pytest.approx(a.last_metrics["miou"], abs=1e-6)
    m, _meta = load_model_checkpoint(b_root / "model.ckpt")
    torch.testing.assert_close(m.decoder.weight, a.model.decoder.weight, atol=1e-6, rtol=0)

    # another encoder (seed) refuses the resume checkpoint
    with pytest.raises(CheckpointError, match="seed"):
        _fit(tmp_path / "c", ckpt=str(b_root / "checkpoints" / "last.ckpt"), seed_enc=1)


def test_missing_weights_file_says_what_to_do(tmp_path):
    with pytest.raises(WeightsNotFoundError, match=r"--model\.weights null"):
        SegmentationTask("tiny", "tinyconv", weights=str(tmp_path / "absent.pth"))


def test_optimizer_sees_trainable_only():
    task = SegmentationTask("tiny", "tinyconv", weight_decay=0.05, total_steps=10, warmup_steps=2)
    task.build({"classes": ["a", "b"], "aux_channels": 1})
    conf = task.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    trainable = {id(p) for p in task.model.parameters() if p.requires_grad}
    assert ids == trainable
    assert not any(id(p) in ids for p in task.model.encoder.parameters())
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 0.05}
    assert conf["lr_scheduler"]["interval"] == "step" and sched.get_last_lr()[0] < task.hparams.lr
