"""Evaluation hardening (issue 13): nothing imported from a checkpoint, clear one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from rasterio.errors import RasterioIOError
from test_configs import _make, tiny_args

import rsprompt.engine.evaluate as evaluate_mod
from rsprompt.cli import main
from rsprompt.data.datasets.base import MultimodalTileDataset
from rsprompt.data.datasets.layouts import find_tiles
from rsprompt.engine.checkpoint import CheckpointError
from rsprompt.engine.cli_train import run_train
from rsprompt.engine.evaluate import (
    EvaluateError,
    check_output_folder,
    datamodule_from_meta,
    evaluate_checkpoint,
    evaluate_tiles,
)

# A module that creates a marker file when it is imported (it never must be).
EVIL_MODULE = """
from pathlib import Path
Path({marker!r}).touch()


class Thing:
    def __init__(self, *args, **kwargs):
        Path({marker!r}).touch()


def system(*args, **kwargs):
    Path({marker!r}).touch()
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-step MobaNet run (tiny resnet18) on the Vaihingen fixture folder."""
    base = tmp_path_factory.mktemp("evaluate")
    root = _make("vaihingen", base)
    out = base / "run"
    run_train(tiny_args("mobanet_vaihingen.yaml", root, out, steps=3))
    return root, out / "model.ckpt"


def _evaluate(ckpt, root, *extra: str):
    args = ["evaluate", "-m", str(ckpt), "--data.root", str(root), "--quiet"]
    return CliRunner().invoke(main, [*args, "--window", "64", "--stride", "64", *extra])


def _one_line_error(res, *needles: str) -> str:
    """Exit 1 with one `Error:` line (no traceback) that holds every needle."""
    assert res.exit_code == 1, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, res.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _craft(ckpt: Path, dest: Path, **meta_changes) -> Path:
    """A copy of a model checkpoint with changed meta (as an attacker or a bug would write)."""
    obj = torch.load(ckpt, weights_only=True)
    obj["meta"].update(meta_changes)
    torch.save(obj, dest)
    return dest


# --------------------------------------------------------------------------- item 2: allow-list
@pytest.mark.parametrize("name", ["evilmod.Thing", "evilmod.system", "os.system"])
def test_checkpoint_cannot_make_evaluate_import_a_module(trained, tmp_path, monkeypatch, name):
    root, ckpt = trained
    marker = tmp_path / "MARKER"
    (tmp_path / "evilmod.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    bad = _craft(ckpt, tmp_path / "crafted.ckpt", datamodule=name)
    res = _evaluate(bad, root, "-o", str(tmp_path / "ev"))
    _one_line_error(res, str(bad), "not an rsprompt datamodule", repr(name))
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="not an rsprompt datamodule"):
        datamodule_from_meta({"datamodule": name}, root)
    assert not marker.exists()


def test_recorded_datamodule_still_resolves(trained):
    root, ckpt = trained
    meta = torch.load(ckpt, weights_only=True)["meta"]
    assert meta["datamodule"] == "rsprompt.data.datamodules.VaihingenDataModule"
    dm = datamodule_from_meta(meta, root)
    assert type(dm).__name__ == "VaihingenDataModule" and dm.augment is None
    assert dm.patch_size == 64


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"bogus": 1}, "takes no option(s) 'bogus'"),
        ({"transforms": "os.system"}, "takes no option(s) 'transforms'"),
        ({"tiles": ["2"]}, "must be plain values"),
        ({"root": "/"}, "takes no option(s) 'root'"),
    ],
)
def test_datamodule_options_are_checked(trained, kwargs, needle):
    root, ckpt = trained
    meta = torch.load(ckpt, weights_only=True)["meta"]
    meta["datamodule_kwargs"] = {**meta["datamodule_kwargs"], **kwargs}
    with pytest.raises(CheckpointError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        datamodule_from_meta(meta, root, source="x.ckpt")


def test_labels_option_is_refused_for_a_dataset_without_variants(trained):
    root, _ = trained
    meta = {"datamodule": "rsprompt.data.datamodules.WHUOptSarDataModule"}
    with pytest.raises(CheckpointError, match="takes no option"):
        datamodule_from_meta(meta, root, labels="eroded")


# --------------------------------------------------------------------------- item 13 / probe
def test_missing_labels_fail_instead_of_null_metrics(trained, tmp_path):
    """Probe F12: a test tile without labels is an error, not an all-n/a table with exit 0."""
    root, ckpt = trained
    data = tmp_path / "vaihingen"
    shutil.copytree(root, data)
    for role, path in find_tiles("vaihingen", data)["2"].items():
        if role.startswith("label"):
            path.unlink()
    out = tmp_path / "ev"
    _one_line_error(_evaluate(ckpt, data, "-o", str(out)), "no labels for tile 2")
    assert not out.exists()


def test_metrics_json_records_out_of_range_labels(trained, tmp_path):
    root, ckpt = trained
    out = tmp_path / "ev"
    res = _evaluate(ckpt, root, "-o", str(out))
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["out_of_range_pixels"] == 0 and metrics["out_of_range_values"] == []
    assert metrics["tiles"][0]["out_of_range_pixels"] == 0


def test_evaluate_tiles_counts_out_of_range_labels():
    """Item 11: 3 pixels labelled 9 (2 classes) are counted, per tile and in total."""

    class Oracle(torch.nn.Module):
        aux_channels = 0

        def forward(self, image, aux=None, aux_valid=None):
            return torch.cat([-image[:, :1], image[:, :1]], 1)

    mask = np.zeros((8, 8), np.int64)
    mask[:, 4:] = 1
    mask[0, :3] = 9
    tile = {"name": "t", "image": np.stack([mask * 2.0 - 1] * 3), "mask": mask}
    result, cm = evaluate_tiles(Oracle(), [tile], ["a", "b"], window=8, stride=8, progress=False)
    assert result["out_of_range_pixels"] == 3 and result["out_of_range_values"] == [9]
    assert result["tiles"][0]["out_of_range_pixels"] == 3
    assert int(cm.sum()) == 64 - 3


@pytest.mark.parametrize("kind", ["file", "under_a_file"])
def test_output_that_is_not_a_folder_is_one_line(trained, tmp_path, kind):
    """Probe F17: -o naming a file (or a folder below a file) is a clear error; the file stays."""
    root, ckpt = trained
    f = tmp_path / "f"
    f.write_text("keep me")
    out = f if kind == "file" else f / "sub"
    _one_line_error(_evaluate(ckpt, root, "-o", str(out)), str(f), "not a folder")
    assert f.read_text() == "keep me"


def test_read_only_output_folder_is_one_line(trained, tmp_path, monkeypatch):
    """Probe F14: an output folder that cannot be written is refused before any work."""
    root, ckpt = trained
    ro = tmp_path / "ro"
    ro.mkdir()
    # Tests run as root in CI (permissions do not bind root): fake what os.access reports.
    real = evaluate_mod.os.access
    monkeypatch.setattr(evaluate_mod.os, "access", lambda p, mode: Path(p) != ro and real(p, mode))
    with pytest.raises(EvaluateError, match="cannot be written"):
        check_output_folder(ro / "ev")
    _one_line_error(_evaluate(ckpt, root, "-o", str(ro / "ev")), str(ro / "ev"), "read-only")


def test_write_error_at_the_end_is_one_line(trained, tmp_path, monkeypatch):
    """An OSError while writing the results (full disk, folder made read-only) is one line."""
    root, ckpt = trained

    def full(path, *args, **kwargs):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(evaluate_mod, "write_metrics_json", full)
    _one_line_error(_evaluate(ckpt, root, "-o", str(tmp_path / "ev")), "No space left on device")


def test_raster_read_error_mid_evaluation_is_one_line(trained, tmp_path, monkeypatch):
    """Probe F8: a read error while evaluating is one line (the data layer names the file)."""
    root, ckpt = trained

    def corrupt(self, tile):
        raise RasterioIOError(f"Read failed. {self.tiles[0].image}: corrupt block")

    monkeypatch.setattr(MultimodalTileDataset, "read_tile", corrupt)
    _one_line_error(_evaluate(ckpt, root, "-o", str(tmp_path / "ev")), "Read failed")
    assert not (tmp_path / "ev").exists()


@pytest.mark.parametrize("device", ["foo", "cuda:99"])
def test_bad_device_is_one_line(trained, tmp_path, device):
    """Probe F18: an unknown or absent device is a one-line error before any work."""
    root, ckpt = trained
    _one_line_error(_evaluate(ckpt, root, "--device", device, "-o", str(tmp_path / "e")), device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu_is_one_line(trained, tmp_path):
    root, ckpt = trained
    res = _evaluate(ckpt, root, "--device", "cuda", "-o", str(tmp_path / "e"))
    _one_line_error(res, "no CUDA GPU")


@pytest.mark.parametrize(
    "option", [("--window", "0"), ("--stride", "0"), ("--batch-size", "0"), ("--labels", "bogus")]
)
def test_zero_sizes_and_unknown_labels_are_refused(trained, tmp_path, option):
    """Probe F23: zero is never replaced by the default; an unknown label variant is refused."""
    root, ckpt = trained
    res = CliRunner().invoke(main, ["evaluate", "-m", str(ckpt), "--data.root", str(root), *option])
    assert res.exit_code == 2 and option[0] in res.output and "Traceback" not in res.output


@pytest.mark.parametrize(("name", "value"), [("window", 0), ("stride", 0), ("batch_size", 0)])
def test_library_refuses_zero_sizes(trained, tmp_path, name, value):
    root, ckpt = trained
    with pytest.raises(EvaluateError, match="positive integer"):
        evaluate_checkpoint(ckpt, root, output=tmp_path / "e", progress=False, **{name: value})


@pytest.mark.parametrize(
    "norm",
    ["bad", {"optical": "x"}, {"optical": {"mean": [0.5]}}, {"optical": {}, "aux": 3}],
)
def test_malformed_normalization_is_one_line_naming_the_checkpoint(trained, tmp_path, norm):
    """Probe F20: a crafted normalisation record is a one-line error naming the checkpoint."""
    root, ckpt = trained
    bad = _craft(ckpt, tmp_path / "bad_norm.ckpt", normalization=norm)
    _one_line_error(_evaluate(bad, root, "-o", str(tmp_path / "e")), str(bad), "normalization")


class _Bomb:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


@pytest.mark.parametrize("kind", ["random", "pickle_bomb"])
def test_untrusted_checkpoint_message_is_honest(trained, tmp_path, kind):
    """Probe F25: no advice to retry with weights_only=False; nothing is unpickled."""
    root, _ = trained
    marker = tmp_path / "MARKER"
    bad = tmp_path / f"{kind}.ckpt"
    if kind == "random":
        bad.write_bytes(np.random.default_rng(1).bytes(2048))
    else:
        torch.save({"format": "rsprompt-model", "meta": _Bomb(str(marker))}, bad)
    line = _one_line_error(_evaluate(bad, root, "-o", str(tmp_path / "e")), str(bad))
    assert "not a readable, trusted rsprompt checkpoint" in line
    assert "weights_only" not in line and "will likely succeed" not in line
    assert not marker.exists()
