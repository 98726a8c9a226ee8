"""Training hardening (issue 13): nothing lost on a refused or failed run, full RNG resume."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import engine_fixtures as ef
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_configs import _make, tiny_args

import rsprompt.models.weights as weights_mod
from rsprompt.cli import main
from rsprompt.engine.checkpoint import (
    CheckpointError,
    _check_fingerprint,
    build_seeded,
    load_model_checkpoint,
    model_meta,
    resolve_encoder_weights,
    save_model_checkpoint,
    weights_record,
)
from rsprompt.engine.cli_train import run_train
from rsprompt.engine.task import _collect_rng, _restore_rng
from rsprompt.models.weights import efficientnet_lite0_package_path


def test_rng_resume_keeps_numpys_cached_gaussian():
    """The legacy numpy stream resumes exactly, also between the two draws of a Gaussian pair."""
    np.random.seed(123)  # noqa: NPY002 — the global legacy state is what resume restores
    np.random.normal()  # noqa: NPY002 — draws a Box-Muller pair, caches the second value
    assert np.random.get_state()[3] == 1  # noqa: NPY002 — a cached Gaussian is pending
    state = _collect_rng()
    expected = [np.random.normal(), np.random.normal(), np.random.rand()]  # noqa: NPY002
    np.random.seed(999)  # noqa: NPY002 — another process / another stream
    np.random.normal()  # noqa: NPY002
    _restore_rng(state)
    got = [np.random.normal(), np.random.normal(), np.random.rand()]  # noqa: NPY002
    assert got == expected


# --------------------------------------------------------------------------- encoder weights hash
def _sha256(path) -> str:
    """Reference sha256 straight from hashlib (independent of rsprompt's helper)."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _package_meta(record):
    return {"method": "mobanet", "encoder": "tf_efficientnet_lite0", "weights": record}


def test_package_weights_are_recorded_with_the_shipped_files_sha256():
    shipped = efficientnet_lite0_package_path()
    assert shipped.is_file()
    assert weights_record("package") == {"path": "package", "sha256": _sha256(shipped)}


def test_package_checkpoint_refuses_another_weights_file(tmp_path):
    shipped = efficientnet_lite0_package_path()
    meta = _package_meta(weights_record("package"))  # as training records it
    other = tmp_path / "other.pth"
    torch.save({"w": torch.ones(3)}, other)
    with pytest.raises(CheckpointError, match="do not match"):
        resolve_encoder_weights(meta, str(other), source="m.ckpt")
    copy = tmp_path / "lite0_copy.pth"
    shutil.copyfile(shipped, copy)
    assert resolve_encoder_weights(meta, str(copy), source="m.ckpt") == str(copy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a hashed record loads without any warning
        assert resolve_encoder_weights(meta, source="m.ckpt") == "package"


def test_package_checkpoint_refuses_a_changed_package_file(tmp_path, monkeypatch):
    shipped = efficientnet_lite0_package_path()
    meta = _package_meta(weights_record("package"))  # as training records it
    changed = tmp_path / "efficientnet_lite0.pth"
    data = shipped.read_bytes()
    changed.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # the last byte differs
    monkeypatch.setattr(weights_mod, "efficientnet_lite0_package_path", lambda: changed)
    with pytest.raises(CheckpointError, match=r"m\.ckpt.*install the package version"):
        resolve_encoder_weights(meta, source="m.ckpt")


def test_old_package_checkpoint_without_hash_loads_with_a_warning(tmp_path):
    meta = _package_meta({"path": "package", "sha256": None})
    with pytest.warns(UserWarning, match="records no sha256"):
        assert resolve_encoder_weights(meta, source="old.ckpt") == "package"
    other = tmp_path / "any.pth"
    other.write_bytes(b"x")
    with pytest.warns(UserWarning, match="cannot be verified"):
        assert resolve_encoder_weights(meta, str(other), source="old.ckpt") == str(other)


def test_hub_weights_record_a_fingerprint_that_is_checked():
    """'hub' weights have no local file: the checkpoint fingerprints the loaded encoder."""
    model = ef.TinyModel("tinyconv", 3, 1, encoder_seed=4)
    meta = model_meta(model, weights={"path": "hub", "sha256": None}, classes=["a", "b", "c"])
    fp = meta["encoder_fingerprint"]
    # reference: sum and |sum| of the frozen encoder conv (weight + bias), in float64
    enc = [model.encoder.weight.double(), model.encoder.bias.double()]
    assert fp["numel"] == sum(t.numel() for t in enc)
    assert fp["sum"] == pytest.approx(sum(float(t.sum()) for t in enc), rel=1e-9)
    assert fp["abs_sum"] == pytest.approx(sum(float(t.abs().sum()) for t in enc), rel=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_encoder_weights(meta, source="hub.ckpt") == "hub"
    other = ef.TinyModel("tinyconv", 3, 1, encoder_seed=5)  # "the hub served other weights"
    with pytest.raises(CheckpointError, match="downloaded weights have changed"):
        _check_fingerprint("hub.ckpt", meta, other)
    _check_fingerprint("hub.ckpt", meta, model)


def test_package_model_checkpoint_roundtrip_and_wrong_weights(tmp_path):
    model = build_seeded("mobanet", "tf_efficientnet_lite0", 3, 1, "package", 0)
    meta = model_meta(model, weights="package", classes=["a", "b", "c"])
    path = save_model_checkpoint(tmp_path / "model.ckpt", model, meta)
    other = tmp_path / "other.pth"
    torch.save({"w": torch.ones(3)}, other)
    with pytest.raises(CheckpointError, match="do not match"):
        load_model_checkpoint(path, weights=str(other))
    copy = tmp_path / "lite0.pth"
    shutil.copyfile(efficientnet_lite0_package_path(), copy)
    loaded, got = load_model_checkpoint(path, weights=str(copy))
    assert got["weights"]["sha256"] == _sha256(copy)
    sd, sd2 = model.state_dict(), loaded.state_dict()
    for k in sd:
        torch.testing.assert_close(sd2[k], sd[k])


# --------------------------------------------------------------------------- run folders
class CrashInFirstStep(pl.Callback):
    """Fail inside the first training step (as a bad batch or an OOM would)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        raise RuntimeError("crash in the first step")


def _digest(folder: Path) -> dict[str, str]:
    """sha256 of every file of a run folder (the resume and model checkpoints included)."""
    return {
        str(p.relative_to(folder)): _sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A finished 3-step MobaNet run (tiny resnet18) on the Vaihingen fixture folder."""
    base = tmp_path_factory.mktemp("trained")
    root = _make("vaihingen", base)
    out = base / "run"
    run_train(tiny_args("mobanet_vaihingen.yaml", root, out, steps=3))
    assert (out / "model.ckpt").is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    return root, out


def _copy_run(trained_run, tmp_path) -> tuple[Path, Path]:
    root, out = trained_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    return root, run


def _train_cli(*args: str):
    return CliRunner().invoke(main, ["train", *args])


def test_refused_resume_leaves_the_run_byte_identical(trained_run, tmp_path):
    """Item 1: resuming with another encoder seed is refused and model.ckpt is not replaced."""
    root, run = _copy_run(trained_run, tmp_path)
    before = _digest(run)
    args = tiny_args("mobanet_vaihingen.yaml", root, run, steps=6)
    with pytest.raises(CheckpointError, match="seed"):
        run_train([*args, "--ckpt_path", "last", "--model.encoder_seed", "1"])
    assert _digest(run) == before


def test_crash_in_the_first_step_keeps_the_existing_model(trained_run, tmp_path, monkeypatch):
    """Item 1: a run that ran no optimiser step never writes model.ckpt."""
    monkeypatch.setenv("RSPROMPT_ALLOW_IMPORTS", __name__)  # this test's own callback
    root, run = _copy_run(trained_run, tmp_path)
    before = _digest(run)
    args = tiny_args("mobanet_vaihingen.yaml", root, run, steps=3)
    crash = f"--trainer.callbacks+={__name__}.CrashInFirstStep"
    with pytest.raises(RuntimeError, match="first step"):
        run_train([*args, "--overwrite", crash])
    assert _digest(run) == before


@pytest.mark.parametrize("kind", ["random", "model_ckpt", "pickle_bomb", "foreign"])
def test_bad_resume_checkpoint_is_one_line_and_touches_nothing(trained_run, tmp_path, kind):
    """Items 1/6 (probe F2, F19, F25): a --ckpt_path that is no resume checkpoint is refused
    before training, in one line naming the file; nothing is executed or replaced."""
    root, run = _copy_run(trained_run, tmp_path)
    marker = tmp_path / "MARKER"
    bad = tmp_path / f"{kind}.ckpt"
    if kind == "random":
        bad.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "model_ckpt":
        shutil.copyfile(run / "model.ckpt", bad)
    elif kind == "pickle_bomb":
        torch.save({"state_dict": {}, "x": _Bomb(str(marker))}, bad)
    else:
        torch.save({"state_dict": {}, "epoch": 3}, bad)
    before = _digest(run)
    args = tiny_args("mobanet_vaihingen.yaml", root, run, steps=6)
    res = _train_cli(*args, "--ckpt_path", str(bad))
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("Error:")]
    assert len(errors) == 1 and str(bad) in errors[0], res.output
    assert "Traceback" not in res.output and "weights_only=False" not in res.output
    assert "weights_only` set to `False" not in res.output
    expected = {
        "random": "not a readable, trusted rsprompt resume checkpoint",
        "model_ckpt": "this is a model checkpoint (model.ckpt)",
        "pickle_bomb": "not a readable, trusted rsprompt resume checkpoint",
        "foreign": "not a Lightning resume checkpoint",
    }[kind]
    assert expected in errors[0]
    assert not marker.exists()
    assert _digest(run) == before


class _Bomb:
    """Unpickling it would create a marker file (it never must be)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_training_into_a_run_folder_needs_overwrite(trained_run, tmp_path):
    """Item 6 (probe F3): an existing run is refused without --ckpt_path/--overwrite."""
    root, run = _copy_run(trained_run, tmp_path)
    before = _digest(run)
    args = tiny_args("mobanet_vaihingen.yaml", root, run, steps=2)
    res = _train_cli(*args)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "already holds a training run" in res.output and "--overwrite" in res.output
    assert str(run / "model.ckpt") in res.output
    assert _digest(run) == before
    # with --overwrite the folder is trained into: a 2-step run replaces the 3-step one
    result = run_train([*args, "--overwrite"])
    assert result["model_ckpt"] == run / "model.ckpt"
    assert json.loads((run / "val_metrics.json").read_text())["step"] == 2
    assert _sha256(run / "model.ckpt") != before["model.ckpt"]


def test_only_a_resume_checkpoint_also_needs_overwrite(trained_run, tmp_path):
    root, run = _copy_run(trained_run, tmp_path)
    (run / "model.ckpt").unlink()
    res = _train_cli(*tiny_args("mobanet_vaihingen.yaml", root, run, steps=2))
    assert res.exit_code == 1 and "last.ckpt" in res.output


@pytest.mark.parametrize("case", ["missing_root", "patch_too_big"])
def test_failure_before_training_leaves_no_log_folder(trained_run, tmp_path, case):
    """Probe F24: a run that fails before training leaves no empty lightning_logs/version_0."""
    root, _ = trained_run
    out = tmp_path / "new"
    args = tiny_args("mobanet_vaihingen.yaml", root, out, steps=2)
    i = args.index("--trainer.logger")
    del args[i : i + 2]  # Lightning's default logger (CSV) creates lightning_logs/version_N
    if case == "missing_root":
        args[args.index("--data.root") + 1] = str(tmp_path / "nonexistent")
    else:
        args[args.index("--data.patch_size") + 1] = "4096"
    res = _train_cli(*args)
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert not (out / "lightning_logs").exists()
    assert not (out / "model.ckpt").exists()


def test_raster_read_error_during_training_is_one_line(trained_run, tmp_path, monkeypatch):
    """Probe F8: a read error mid-training is one line (the data layer names the file); the run
    trained no step, so no model.ckpt is written."""
    from rasterio.errors import RasterioIOError

    from rsprompt.data.datasets.base import MultimodalTileDataset

    def corrupt(self, index):
        raise RasterioIOError(f"Read failed. {self.tiles[0].image}: corrupt block")

    monkeypatch.setattr(MultimodalTileDataset, "__getitem__", corrupt)
    root, _ = trained_run
    out = tmp_path / "new"
    res = _train_cli(*tiny_args("mobanet_vaihingen.yaml", root, out, steps=2))
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "Read failed" in errors[0] and "top_mosaic" in errors[0]
    assert not (out / "model.ckpt").exists()


def test_refused_resume_message_names_the_checkpoint(trained_run, tmp_path):
    root, run = _copy_run(trained_run, tmp_path)
    args = tiny_args("mobanet_vaihingen.yaml", root, run, steps=6)
    res = _train_cli(*args, "--ckpt_path", "last", "--model.encoder_seed", "1")
    assert res.exit_code == 1 and "Traceback" not in res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and str(run / "checkpoints" / "last.ckpt") in errors[0]
    assert "seed 0" in errors[0] and "seed 1" in errors[0]


def test_resume_compares_weights_hashes():
    """Item 4 on resume: another hash is refused; an old unhashed 'package' record resumes with
    a warning (same weights name), an unhashed record of another name is refused."""
    from rsprompt.engine.task import _check_resumed_weights

    lite = {"path": "package", "sha256": "a" * 64}
    _check_resumed_weights(lite, dict(lite))
    _check_resumed_weights(None, None)
    with pytest.raises(CheckpointError, match="does not match"):
        _check_resumed_weights({"path": "package", "sha256": "b" * 64}, lite)
    with pytest.raises(CheckpointError, match="does not match"):
        _check_resumed_weights(None, lite)
    with pytest.raises(CheckpointError, match="does not match"):
        _check_resumed_weights({"path": "/w.pth", "sha256": None}, lite)
    _check_resumed_weights({"path": "package", "sha256": None}, lite)  # warns (logged)
