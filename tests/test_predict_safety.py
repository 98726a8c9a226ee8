"""What `rsprompt predict` writes: nothing lost, nothing partial, one-line errors (issue 13).

Covers probe F1, F4-F8, F13-F18, F21, F23-F25 and audit 2.9, 2.10, 2.14, 2.15 and item 15 of
issue 13. Each case checks that the inputs are byte-identical afterwards and that no temporary,
scratch or lock file is left behind.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from helpers import save_dsm_checkpoint
from rasterio.transform import from_origin

from rsprompt.cli import main
from rsprompt.data.labels import ISPRS_CLASSES
from rsprompt.inference import writers
from rsprompt.inference.predictor import predict_scene
from rsprompt.inference.reader import PredictError
from rsprompt.models import registry
from rsprompt.models.base import SegmentationModel

METHOD = "predict-safety-tiny"
CRS = "EPSG:32632"
TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

#: Set by a test: called at each forward pass of :class:`Tiny` (e.g. to send a signal).
ON_FORWARD = []


class Tiny(SegmentationModel):
    """Pixel-wise linear model on optical + DSM (DSM only where valid)."""

    def __init__(self, num_classes: int, aux_channels: int) -> None:
        super().__init__(METHOD, "none", num_classes, aux_channels)
        self.head = torch.nn.Conv2d(3 + aux_channels, num_classes, 1)
        self.freeze()

    def forward(self, image, aux=None, aux_valid=None):
        for hook in ON_FORWARD:
            hook()
        marker = os.environ.get("RSPROMPT_TEST_FORWARD_MARKER")
        if marker:  # the kill -9 test: say "running", then be slow
            Path(marker).touch()
            time.sleep(0.5)
        if aux is None:
            aux = torch.zeros_like(image[:, : self.aux_channels])
            aux_valid = torch.zeros_like(image[:, :1])
        return self.head(torch.cat([image, aux * aux_valid], 1))


def register() -> None:
    """Make METHOD buildable (also called by the subprocess of the kill -9 test)."""
    registry.METHOD_MODULES[METHOD] = __name__
    registry.register_method(METHOD)(lambda enc, k, a, weights=None, **kw: Tiny(k, a))


def write_raster(path, data, *, nodata=None, res=0.5):
    data = np.asarray(data)
    data = data[None] if data.ndim == 2 else data
    profile = {
        "driver": "GTiff",
        "height": data.shape[1],
        "width": data.shape[2],
        "count": data.shape[0],
        "dtype": data.dtype.name,
        "crs": CRS,
        "transform": from_origin(366000.0, 5808000.0, res, res),
        "nodata": nodata,
        "photometric": "MINISBLACK",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return Path(path)


def scene_data(h, w, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256])
    return np.clip(base + rng.integers(0, 40, (3, h, w)), 0, 255).astype(np.uint8)


def dsm_data(h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    return (30.0 + 0.2 * xx + 0.1 * yy).astype(np.float32)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    register()
    torch.manual_seed(0)
    model = Tiny(6, 1)
    with torch.no_grad():
        model.head.weight.mul_(4)
        model.head.weight[:, 3, 0, 0] = torch.linspace(-6, 6, 6)
    yield save_dsm_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.ckpt", model, 32)
    registry.METHOD_MODULES.pop(METHOD, None)
    registry._BUILDERS.pop(METHOD, None)


@pytest.fixture
def data(tmp_path):
    """``in/`` with two scenes (a, b) and a DSM; ``out/`` empty."""
    src = tmp_path / "in"
    src.mkdir()
    write_raster(src / "a.tif", scene_data(40, 48, 0))
    write_raster(src / "b.tif", scene_data(40, 48, 1))
    write_raster(src / "dsm.tif", dsm_data(40, 48))
    (tmp_path / "out").mkdir()
    return tmp_path


def run(*args):
    return CliRunner().invoke(main, ["predict", *map(str, args)], catch_exceptions=False)


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` (hidden ones included) with its sha256."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


def assert_one_line_error(res, *parts, code=None):
    """A clean failure: no traceback, an ``Error:`` line holding every part."""
    assert res.exit_code != 0, res.output
    if code is not None:
        assert res.exit_code == code, res.output
    assert "Traceback" not in res.output, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1, res.output
    for part in parts:
        assert str(part) in lines[0], (part, res.output)


def ok(res):
    assert res.exit_code == 0, res.output
    return res


# ------------------------------------------------------------------ planned outputs (item 6)
def test_summary_json_never_replaces_an_input_nor_an_existing_file(data, checkpoint):
    """F1: --summary-json is checked like every output (inputs, existence, extension)."""
    src = data / "in"
    (data / "out" / "scene.json").symlink_to(src / "a.tif")  # the scene under a .json name
    keep = data / "out" / "keep.json"
    keep.write_text('{"mine": 1}')
    before = snapshot(data)
    args = [src / "a.tif", "-m", checkpoint, "-o", data / "out" / "m.tif", "-q"]
    res = run(*args, "--summary-json", data / "out" / "scene.json", "--overwrite")
    assert_one_line_error(res, "--summary-json", "would overwrite an input", "a.tif")
    res = run(*args, "--summary-json", src / "a.tif", "--overwrite")
    assert_one_line_error(res, "--summary-json", ".json")
    res = run(*args, "--summary-json", keep)
    assert_one_line_error(res, "keep.json exists", "--overwrite")
    assert snapshot(data) == before
    ok(run(*args, "--summary-json", keep, "--overwrite"))
    summary = json.loads(keep.read_text())
    assert [s["scene"] for s in summary] == [str(src / "a.tif")]
    assert hidden(data) == []


def test_an_output_of_one_scene_never_replaces_another_scene(data, checkpoint):
    """F4: every output is checked against every scene of the job before anything is written."""
    src = data / "in"
    write_raster(src / "a_pred.tif", scene_data(40, 48, 2))
    before = snapshot(data)
    res = run(src / "a.tif", src / "a_pred.tif", "-m", checkpoint, "--out-dir", src, "--overwrite")
    assert_one_line_error(res, "would overwrite an input", "a_pred.tif")
    assert snapshot(data) == before


def test_probabilities_never_replace_the_checkpoint_weights_or_a_style(data, checkpoint, tmp_path):
    """F5: --probabilities must be a GeoTIFF and no input (symlinks and a/../a resolved)."""
    ck = data / "in" / "ck.tif"  # a checkpoint whose name a GeoTIFF output could take
    ck.write_bytes(checkpoint.read_bytes())
    weights = data / "in" / "w.tif"
    weights.write_bytes(b"encoder weights")
    before = snapshot(data)
    scene, out = data / "in" / "a.tif", data / "out" / "m.tif"
    base = [scene, "-m", ck, "-o", out, "-q", "--overwrite"]
    res = run(*base, "--probabilities", data / "in" / ".." / "in" / "ck.tif")
    assert_one_line_error(res, "--probabilities", "would overwrite an input", "checkpoint")
    res = run(*base, "--probabilities", weights, "--weights", weights)
    assert_one_line_error(res, "--probabilities", "would overwrite an input", "--weights file")
    res = run(*base, "--probabilities", data / "out" / "m.qml")
    assert_one_line_error(res, "--probabilities", "must be a GeoTIFF")
    res = run(*base, "--vectors", data / "out" / "v.shp")
    assert_one_line_error(res, "--vectors", "must be a GeoPackage")
    assert snapshot(data) == before


def test_existing_sidecars_are_replaced_only_with_overwrite(data, checkpoint):
    """F6: the map's .qml and .tif.aux.xml, and a stale probabilities .aux.xml, need --overwrite."""
    out = data / "out" / "m.tif"
    for sidecar in (out.with_suffix(".qml"), Path(f"{out}.aux.xml")):
        sidecar.write_text("<qgis>user</qgis>")
        before = snapshot(data)
        res = run(data / "in" / "a.tif", "-m", checkpoint, "-o", out, "-q")
        assert_one_line_error(res, f"{sidecar} exists", "--overwrite")
        assert snapshot(data) == before
        sidecar.unlink()
    stale = data / "out" / "p.tif.aux.xml"  # would describe the new p.tif with old metadata
    stale.write_text("<PAMDataset/>")
    before = snapshot(data)
    args = [data / "in" / "a.tif", "-m", checkpoint, "-o", out, "-q", "--probabilities"]
    res = run(*args, data / "out" / "p.tif")
    assert_one_line_error(res, f"{stale} exists", "--overwrite")
    assert snapshot(data) == before
    ok(run(*args, data / "out" / "p.tif", "--overwrite"))
    assert not stale.exists()
    assert "paletted" in out.with_suffix(".qml").read_text()
    assert hidden(data) == []


@pytest.mark.parametrize("option", ["-o", "--probabilities", "--vectors", "--summary-json"])
def test_an_output_that_is_a_folder_is_a_clear_error(data, checkpoint, option):
    """F7: nothing is written, and no temporary file is left."""
    name = {"-o": "m.tif", "--probabilities": "p.tif", "--vectors": "v.gpkg"}.get(option, "s.json")
    (data / "out" / name).mkdir()
    before = snapshot(data)
    args = [data / "in" / "a.tif", "-m", checkpoint, "-q", "--overwrite", option]
    args.append(data / "out" / name)
    if option != "-o":
        args += ["-o", data / "out" / "m.tif"]
    res = run(*args)
    assert_one_line_error(res, option, "is a folder")
    assert snapshot(data) == before


def test_predict_scene_refuses_two_outputs_on_one_file(data):
    """Audit 2.9: the library checks its own outputs are distinct (also through a symlink)."""
    (data / "alias").symlink_to(data / "out")
    model = Tiny(6, 0)
    scene = data / "in" / "a.tif"
    before = snapshot(data)
    with pytest.raises(PredictError, match="out_path and probabilities name the same file"):
        predict_scene(
            scene,
            model,
            data / "out" / "m.tif",
            classes=ISPRS_CLASSES,
            probabilities=data / "alias" / "m.tif",
            window=32,
            overlap=8,
            progress=False,
        )
    with pytest.raises(PredictError, match=r"probabilities .* would overwrite an input"):
        predict_scene(
            scene,
            model,
            data / "out" / "m.tif",
            classes=ISPRS_CLASSES,
            probabilities=data / "out" / ".." / "in" / "a.tif",
            overwrite=True,
            progress=False,
        )
    assert snapshot(data) == before


@pytest.mark.parametrize("fail_at", [1, 5, 6, 10])
def test_commit_is_all_or_nothing(data, monkeypatch, fail_at):
    """A failure while moving the outputs into place restores the previous set exactly."""
    model = Tiny(6, 0)
    scene, out = data / "in" / "a.tif", data / "out" / "m.tif"
    kwargs = {
        "classes": ISPRS_CLASSES,
        "probabilities": data / "out" / "p.tif",
        "vectors": data / "out" / "v.gpkg",
        "window": 32,
        "overlap": 8,
        "progress": False,
        "overwrite": True,
    }
    predict_scene(scene, model, out, **kwargs)
    before = snapshot(data)
    assert len([n for n in before if n.startswith("out/")]) == 5  # map, qml, aux.xml, p, v
    real = os.replace
    calls = []

    def replace(a, b):
        calls.append((a, b))
        if len(calls) == fail_at:
            raise OSError(errno.ENOSPC, "No space left on device", str(b))
        return real(a, b)

    monkeypatch.setattr(writers.os, "replace", replace)
    with torch.no_grad():
        model.head.weight.mul_(-1)  # a different map: the old set must survive unchanged
    with pytest.raises(writers.OutputError, match="no space left"):
        predict_scene(scene, model, out, **kwargs)
    monkeypatch.setattr(writers.os, "replace", real)
    # 5 old files are moved aside, then 5 new ones placed; after the failure, every old file
    # moved aside so far is moved back (and the new ones placed so far are deleted).
    restores = calls[fail_at:]
    assert len(restores) == min(fail_at - 1, 5)
    assert all(".bak" in Path(a).name for a, _ in restores)
    assert snapshot(data) == before


# ------------------------------------------------------------------ one-line errors (item 13)
def test_read_only_output_folder(data, checkpoint):
    """F14: a folder where nothing can be created is a one-line error (chattr +i: even root)."""
    ro = data / "ro"
    ro.mkdir()
    if subprocess.run(["chattr", "+i", str(ro)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        res = run(data / "in" / "a.tif", "-m", checkpoint, "-o", ro / "m.tif", "-q")
        assert_one_line_error(res, f"cannot create files in {ro}")
        assert list(ro.iterdir()) == []
    finally:
        subprocess.run(["chattr", "-i", str(ro)], check=True)


def test_scratch_file_that_cannot_be_created(data, checkpoint, monkeypatch):
    """F14 as the probe saw it: GDAL refuses to create the temporary raster."""
    from rasterio.errors import RasterioIOError

    def refuse(*args, **kwargs):
        raise RasterioIOError(f"Attempt to create new tiff file '{args[0]}' failed")

    monkeypatch.setattr(writers.StripWriter, "__init__", refuse)
    before = snapshot(data)
    res = run(data / "in" / "a.tif", "-m", checkpoint, "-o", data / "out" / "m.tif", "-q")
    assert_one_line_error(res, "cannot write the class map", "m.tif", "Attempt to create")
    assert snapshot(data) == before


def _cple(msg):
    from rasterio._err import CPLE_AppDefinedError

    return CPLE_AppDefinedError(1, 1, msg)


@pytest.mark.parametrize("where", ["strip", "cog", "sidecar", "vectors", "close"])
def test_full_disk_is_a_one_line_error_and_keeps_the_old_outputs(data, checkpoint, where):
    """F15: GDAL's and the OS's write errors, wherever they strike, leave the previous set."""
    out = data / "out" / "m.tif"
    args = [data / "in" / "a.tif", "-m", checkpoint, "-o", out, "-q", "--overwrite"]
    args += ["--probabilities", data / "out" / "p.tif", "--vectors", data / "out" / "v.gpkg"]
    ok(run(*args))
    before = snapshot(data)
    enospc = OSError(errno.ENOSPC, "No space left on device")
    raising = {
        "strip": ("StripWriter.write", _cple("TIFFWriteDirectoryTagData:IO error")),
        "close": ("StripWriter.close", _cple("TIFFAppendToStrip:Write error")),
        "cog": ("to_cog", enospc),
        "sidecar": ("Path.write_text", enospc),
        "vectors": ("write_vectors", enospc),
    }
    target, exc = raising[where]

    def fail(*a, **k):
        raise exc

    from rsprompt.inference import predictor

    real_write_text = Path.write_text

    def write_text(self, *a, **k):  # only the style: a sidecar written as text
        if self.name.endswith(".tmp.qml"):
            raise exc
        return real_write_text(self, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        if target == "Path.write_text":
            mp.setattr(Path, "write_text", write_text)
        elif "." in target:
            cls, attr = target.split(".")
            mp.setattr(getattr(writers, cls), attr, fail)
        else:
            mp.setattr(predictor, target, fail)
        res = run(*args)
    assert_one_line_error(res, "cannot write")
    assert snapshot(data) == before


def test_full_disk_on_a_real_tiny_file_system(data, checkpoint):
    """F15 for real: a 600 kB tmpfs (needs root; skipped where it cannot be mounted)."""
    full = data / "full"
    full.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(full)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        scene = write_raster(data / "in" / "big.tif", scene_data(400, 400, 3))
        before = snapshot(data / "in")
        # 6 bands of noisy probabilities (~1 MB) cannot fit in 600 kB
        res = run(scene, "-m", checkpoint, "-o", full / "m.tif", "-q", "--window", 128,
                  "--probabilities", full / "p.tif")  # fmt: skip
        assert_one_line_error(res, "cannot write", "no space left")
        assert list(full.iterdir()) == []
        assert snapshot(data / "in") == before
    finally:
        subprocess.run(["umount", str(full)], check=True)


def test_summary_json_folder_is_checked_before_running(data, checkpoint):
    """F16."""
    before = snapshot(data)
    res = run(
        data / "in" / "a.tif", "-m", checkpoint, "-o", data / "out" / "m.tif", "-q",
        "--summary-json", data / "out" / "nope" / "s.json",
    )  # fmt: skip
    assert_one_line_error(res, "output folder", "nope", "does not exist")
    assert snapshot(data) == before


def test_out_dir_that_is_a_file(data, checkpoint):
    """F17."""
    (data / "out" / "f").write_text("x")
    before = snapshot(data)
    res = run(data / "in" / "a.tif", "-m", checkpoint, "--out-dir", data / "out" / "f")
    assert_one_line_error(res, "--out-dir", "is a file")
    res = run(data / "in" / "a.tif", "-m", checkpoint, "--out-dir", data / "out" / "f" / "sub")
    assert_one_line_error(res, "--out-dir", "is a file")
    assert snapshot(data) == before


def test_unusable_devices(data, checkpoint, monkeypatch):
    """F18: --device foo, and --device cuda on a machine without a GPU."""
    before = snapshot(data)
    args = [data / "in" / "a.tif", "-m", checkpoint, "-o", data / "out" / "m.tif", "-q"]
    assert_one_line_error(run(*args, "--device", "foo"), "--device", "'foo'", code=2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert_one_line_error(run(*args, "--device", "cuda"), "no CUDA GPU", code=2)
    assert snapshot(data) == before


def test_a_second_run_on_the_same_outputs_refuses(data, checkpoint):
    """F13: each output is locked for the run; a stale lock (dead holder) does not block."""
    out = data / "out" / "m.tif"
    args = [data / "in" / "a.tif", "-m", checkpoint, "-o", out, "-q"]
    for locked in (out, data / "out" / "p.tif"):
        lock = locked.with_name(f".{locked.name}.lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another run holds it
        try:
            before = snapshot(data)
            res = run(*args, "--probabilities", data / "out" / "p.tif")
            assert_one_line_error(res, f"output {locked} is being written by another run")
            assert snapshot(data) == before
        finally:
            os.close(fd)
        lock.unlink()
    # A lock file left by a killed run (nobody holds it) is taken over and removed.
    stale = data / "out" / ".m.tif.lock"
    stale.write_text("999999\n")
    ok(run(*args))
    assert hidden(data) == []


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_scratch_files_of_a_dead_process_are_removed(data, checkpoint):
    """F21: a later run of the same output removes what a killed run left, nothing else."""
    out = data / "out" / "m.tif"
    dead, live = _dead_pid(), os.getpid()
    stale = [
        data / "out" / f".m.tif.{dead}-0123abcd.scratch.tif",
        data / "out" / f".m.tif.{dead}-0123abcd.scratch.tif.aux.xml",
        data / "out" / f".m.tif.{dead}-4567abcd.tmp.tif",
        data / "out" / f".m.qml.{dead}-89abcdef.tmp.qml",
    ]
    kept = [
        data / "out" / f".m.tif.{live}-0123abcd.scratch.tif",  # a live process's file
        data / "out" / f".other.tif.{dead}-0123abcd.scratch.tif",  # another output's
    ]
    for p in stale + kept:
        p.write_bytes(b"x")
    ok(run(data / "in" / "a.tif", "-m", checkpoint, "-o", out, "-q"))
    assert hidden(data) == sorted(p.name for p in kept)


def test_kill_9_leftovers_are_removed_by_the_next_run(data, checkpoint):
    """F21 for real: kill -9 halfway leaves scratch files; the next run removes them."""
    marker = data / "running"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        import test_predict_safety
        test_predict_safety.register()
        from rsprompt.cli import main
        main(sys.argv[1:])
        """
    )
    out = data / "out" / "m.tif"
    args = ["predict", data / "in" / "a.tif", "-m", checkpoint, "-o", out, "-q"]
    args += ["--probabilities", data / "out" / "p.tif", "--window", 16, "--batch-size", 1]
    env = {**os.environ, "RSPROMPT_TEST_FORWARD_MARKER": str(marker)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)], env=env, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), proc.communicate()[0] if proc.poll() is not None else "no start"
    finally:
        proc.kill()
        proc.wait()
    left = hidden(data / "out")
    assert any(".scratch.tif" in n for n in left), left  # what the probe saw
    assert not out.exists()
    ok(run(*args[1:]))
    assert hidden(data) == []


def test_sigterm_removes_every_temporary_file(data, checkpoint):
    """F21: SIGTERM is handled like Ctrl-C: exit 143, nothing left, handler restored."""

    class Escaped(Exception):
        pass

    def guard(signum, frame):  # only reached if predict does not handle SIGTERM itself
        raise Escaped

    previous = signal.signal(signal.SIGTERM, guard)
    ON_FORWARD.append(lambda: os.kill(os.getpid(), signal.SIGTERM))
    before = snapshot(data)
    try:
        res = run(
            data / "in" / "a.tif", "-m", checkpoint, "-o", data / "out" / "m.tif", "-q",
            "--probabilities", data / "out" / "p.tif",
        )  # fmt: skip
        assert signal.getsignal(signal.SIGTERM) is guard
    finally:
        ON_FORWARD.clear()
        signal.signal(signal.SIGTERM, previous)
    assert res.exit_code == 143, res.output
    assert "terminated" in res.output and "Traceback" not in res.output
    assert snapshot(data) == before


@pytest.mark.parametrize(
    ("option", "value"),
    [("--window", 0), ("--window", -16), ("--overlap", -1), ("--batch-size", 0)],
)
def test_invalid_numbers_are_refused(data, checkpoint, option, value):
    """F23: zero or negative values are errors, not the defaults."""
    before = snapshot(data)
    args = [data / "in" / "a.tif", "-m", checkpoint, "-o", data / "out" / "m.tif", "-q"]
    assert_one_line_error(run(*args, option, value), option, code=2)
    res = run(*args, "--window", 16, "--overlap", 16)
    assert_one_line_error(res, "--overlap 16 must be less than --window 16", code=2)
    assert snapshot(data) == before


def test_out_dir_is_created_only_once_everything_is_checked(data, checkpoint):
    """F24: a bad checkpoint or scene leaves no new folder."""
    text = data / "in" / "text.tif"
    text.write_text("not a checkpoint")
    before = snapshot(data)
    new = data / "out" / "new" / "deeper"
    res = run(data / "in" / "a.tif", "-m", text, "--out-dir", new)
    assert_one_line_error(res, "text.tif")
    res = run(data / "in" / "a.tif", text, "-m", checkpoint, "--out-dir", new)
    assert_one_line_error(res, "text.tif")
    assert snapshot(data) == before
    ok(run(data / "in" / "a.tif", "-m", checkpoint, "--out-dir", new, "-q"))
    assert (new / "a_pred.tif").is_file()


@pytest.mark.parametrize("error", ["rasterio", "os"])
def test_a_read_error_midway_names_the_scene(data, checkpoint, monkeypatch, error):
    """F8: a block that cannot be read in the middle of the run (raw GDAL/OS error)."""
    from rasterio.errors import RasterioIOError

    from rsprompt.inference.reader import SceneReader

    real = SceneReader.row_reader

    def row_reader(self, prepare=None):
        strips = real(self, prepare)
        calls = []

        class Failing:
            def read(self, *a, **k):
                calls.append(1)
                if len(calls) == 2:
                    if error == "rasterio":
                        raise RasterioIOError("Read failed. See previous exception for details.")
                    raise OSError(errno.EIO, "Input/output error")
                return strips.read(*a, **k)

        return Failing()

    monkeypatch.setattr(SceneReader, "row_reader", row_reader)
    scene = data / "in" / "a.tif"
    before = snapshot(data)
    res = run(scene, "-m", checkpoint, "--dem", data / "in" / "dsm.tif", "-q", "--window", 16,
              "-o", data / "out" / "m.tif")  # fmt: skip
    assert_one_line_error(res, f"cannot read scene {scene}", "dsm.tif")
    assert snapshot(data) == before


def test_collision_messages_name_the_options_and_give_working_advice(data, checkpoint):
    """F25: one file named by two options; two scenes with the same stem."""
    out = data / "out" / "m.tif"
    res = run(data / "in" / "a.tif", "-m", checkpoint, "-o", out, "--probabilities", out)
    assert_one_line_error(res, f"-o/--output and --probabilities name the same file {out}")
    for sub in ("x", "y"):
        (data / "in" / sub).mkdir()
        write_raster(data / "in" / sub / "scene.tif", scene_data(40, 48))
    before = snapshot(data)
    scenes = [data / "in" / "x" / "scene.tif", data / "in" / "y" / "scene.tif"]
    res = run(*scenes, "-m", checkpoint, "--out-dir", data / "out")
    assert_one_line_error(res, "same file name stem 'scene'", "{dir}", code=2)
    assert "use {stem}" not in res.output
    assert snapshot(data) == before
    # The advice works: {dir} writes each map beside its scene.
    ok(run(*scenes, "-m", checkpoint, "-o", "{dir}/{stem}_pred.tif", "-q"))
    assert all((s.parent / "scene_pred.tif").is_file() for s in scenes)


# ------------------------------------------------------------------ items 12 and 15
def test_importing_the_command_changes_nothing_in_the_process():
    """Item 15: no environment variable and no mallopt at import; both when the command runs."""
    probe = textwrap.dedent(
        """
        import ctypes, json, os
        calls = []
        class Recorder:
            def __init__(self, *a, **k):
                calls.append(a)
            def __getattr__(self, name):
                return lambda *a: calls.append((name, a))
        ctypes.CDLL = Recorder
        before = dict(os.environ)
        import rsprompt.commands.predict
        changed = sorted(k for k in set(before) | set(os.environ)
                         if before.get(k) != os.environ.get(k))
        print(json.dumps({"changed": changed, "calls": len(calls)}))
        """
    )
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env,
        cwd=ROOT,
    )  # fmt: skip
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"changed": [], "calls": 0}


def test_run_environment_is_set_while_the_command_runs_and_restored(data, checkpoint, monkeypatch):
    from rsprompt.commands import predict as cmd
    from rsprompt.inference.from_checkpoint import CheckpointPredictor

    for key in cmd.RUN_ENVIRONMENT:
        monkeypatch.delenv(key, raising=False)
    seen = {}
    real = CheckpointPredictor.predict

    def predict(self, *a, **k):
        seen.update({key: os.environ.get(key) for key in cmd.RUN_ENVIRONMENT})
        return real(self, *a, **k)

    monkeypatch.setattr(CheckpointPredictor, "predict", predict)
    ok(run(data / "in" / "a.tif", "-m", checkpoint, "-o", data / "out" / "m.tif", "-q"))
    assert seen == {
        "OMP_WAIT_POLICY": "PASSIVE",
        "GDAL_CACHEMAX": "32",
        "THP_MEM_ALLOC_ENABLE": "1",
    }
    assert not any(key in os.environ for key in cmd.RUN_ENVIRONMENT)


def test_every_warning_category_is_printed_once(data, checkpoint, monkeypatch):
    """Audit 2.15: RuntimeWarnings (and others) are not swallowed; repeats print once."""
    from rsprompt.inference.from_checkpoint import CheckpointPredictor

    real = CheckpointPredictor.predict

    def predict(self, *a, **k):
        for _ in range(3):
            warnings.warn("invalid value encountered in cast", RuntimeWarning, stacklevel=1)
        warnings.warn("a future change", FutureWarning, stacklevel=1)
        return real(self, *a, **k)

    monkeypatch.setattr(CheckpointPredictor, "predict", predict)
    res = ok(run(data / "in" / "a.tif", "-m", checkpoint, "-o", data / "out" / "m.tif", "-q"))
    assert res.output.count("warning (RuntimeWarning): invalid value encountered in cast") == 1
    assert res.output.count("warning (FutureWarning): a future change") == 1


def test_scene_normalizer_without_ground_cell_px_is_fitted(data):
    """Item 12 / audit 2.10: ``ground_cell_px`` is optional for a SceneNormalizer."""
    from rsprompt.inference import SceneNormalizer

    class MinMax:
        needs_aux_stats = True  # no ground_cell_px attribute

        def __init__(self):
            self.fitted = []

        def fit(self, stats):
            self.fitted.append(stats)

        def __call__(self, image, aux, aux_valid, offset):
            lo, hi = self.fitted[0].min[0], self.fitted[0].max[0]
            return image, (aux - lo) / (hi - lo), aux_valid

    norm = MinMax()
    assert isinstance(norm, SceneNormalizer)
    predict_scene(
        data / "in" / "a.tif",
        Tiny(6, 1),
        data / "out" / "m.tif",
        classes=ISPRS_CLASSES,
        aux=data / "in" / "dsm.tif",
        normalize=norm,
        window=32,
        overlap=8,
        progress=False,
    )
    dsm = dsm_data(40, 48)  # the DSM on the scene's grid: its min and max
    assert len(norm.fitted) == 1
    assert norm.fitted[0].min[0] == pytest.approx(float(dsm.min()))
    assert norm.fitted[0].max[0] == pytest.approx(float(dsm.max()))


@pytest.mark.parametrize("memory_mb", [512.0, 0.5])
def test_temporary_raster_writes_fill_whole_blocks(tmp_path, monkeypatch, memory_mb):
    """Audit 2.14: every write covers whole blocks of the temporary raster (rows and columns).

    One column band (512 MB) writes full-width strips; 0.5 MB forces column bands of 512
    columns. A block written in pieces is compressed, evicted and rewritten by GDAL.
    """
    scene = write_raster(tmp_path / "s.tif", scene_data(530, 1100))
    writes = []
    real_write = writers.StripWriter.write

    def write(self, data, row, col=0):
        h, w = data.shape[-2:]
        bh, bw = self.ds.block_shapes[0]
        writes.append((row, col, h, w, bh, bw, self.ds.height, self.ds.width))
        return real_write(self, data, row, col)

    monkeypatch.setattr(writers.StripWriter, "write", write)
    predict_scene(
        scene, Tiny(6, 0), tmp_path / "m.tif", classes=ISPRS_CLASSES,
        probabilities=tmp_path / "p.tif", window=128, overlap=32, progress=False,
        memory_mb=memory_mb,
    )  # fmt: skip
    assert writes
    if memory_mb < 1:
        assert len({c for _, c, *_ in writes}) > 1  # column bands were used
    for row, col, h, w, bh, bw, height, width in writes:
        assert row % bh == 0 and (h % bh == 0 or row + h == height), (row, h, bh)
        assert col % bw == 0 and (w % bw == 0 or col + w == width), (col, w, bw)


def test_temporary_raster_does_not_grow_with_a_small_gdal_cache(tmp_path):
    """Audit 2.14: with GDAL_CACHEMAX=1 MB the scratch rasters stay the size of a one-go write.

    Measured on the old layout (512-px tiles, 16-row flushes): 16× larger than needed.
    """
    probe = textwrap.dedent(
        f"""
        import os, sys, json
        os.environ["GDAL_CACHEMAX"] = "1"
        sys.path.insert(0, {str(TESTS)!r})
        import numpy as np, rasterio
        import test_predict_safety as t
        from rsprompt.data.labels import ISPRS_CLASSES
        from rsprompt.inference import predictor
        sizes = []
        real = predictor.to_cog
        def to_cog(src, dst, **kw):
            with rasterio.open(src) as ds:
                profile, data = ds.profile, ds.read()
            once = str(src) + ".once.tif"
            with rasterio.open(once, "w", zstd_level=1, **profile) as out:
                out.write(data)
            sizes.append((os.path.getsize(src), os.path.getsize(once)))
            os.unlink(once)
            return real(src, dst, **kw)
        predictor.to_cog = to_cog
        root = sys.argv[1]
        scene = t.write_raster(root + "/s.tif", t.scene_data(520, 2048))
        predictor.predict_scene(scene, t.Tiny(6, 0), root + "/m.tif",
            classes=ISPRS_CLASSES, probabilities=root + "/p.tif", window=256, overlap=64,
            progress=False)
        print(json.dumps(sizes))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-3000:]
    sizes = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(sizes) == 2  # class map, probabilities
    for scratch, once in sizes:
        assert scratch <= 1.1 * once + 4096, (scratch, once)
