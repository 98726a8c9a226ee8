"""Training hardening (issue 13): nothing lost on a refused or failed run, full RNG resume."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import engine_fixtures as ef
import numpy as np
import pytest
import torch

import rsprompt.models.weights as weights_mod
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
    meta = _package_meta({"path": "package", "sha256": _sha256(shipped)})
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
    meta = _package_meta({"path": "package", "sha256": _sha256(shipped)})
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
