"""`rsprompt predict` at scale: many inputs, --shard job arrays, --devices ranks (issue 17).

The reference of every scaled run is the plain single-process run of the same command: class
maps and probabilities must be pixel-identical (``np.array_equal``), the sidecars byte-identical.
Multi-process runs go through a subprocess (``tests/scale_runner.py`` = ``rsprompt`` with the
test-only ``tiny`` method registered), 2 CPU ranks with gloo, as tests/test_ddp.py does.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import engine_fixtures
import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from helpers import save_dsm_checkpoint
from rasterio.windows import Window

import rsprompt.data.synthetic as synthetic
from rsprompt.cli import main
from rsprompt.inference.inputs import expand_scenes, write_mosaic
from rsprompt.inference.jobs import JOB_DIR, Unit, assign, parse_shard, plan_units
from rsprompt.inference.reader import PredictError

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "tests" / "scale_runner.py"
#: (height, width) of the four small scenes and of the scene split into bands.
SIZES = [(96, 128), (120, 100), (80, 150), (200, 90)]
BIG = (190, 120)
#: Window options of every run (32 px windows, 8 px overlap: a few dozen windows per scene).
WIN = ["--window", "32", "--overlap", "8"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny DSM checkpoint (min–max DSM: scene-wide statistics), 4 scenes + DSMs, 1 big scene."""
    root = tmp_path_factory.mktemp("scale")
    with engine_fixtures.registered_tiny():
        torch.manual_seed(0)
        model = engine_fixtures.TinyModel("tinyconv", 6, 1)
        with torch.no_grad():  # decisive logits: several classes in every map
            model.decoder.weight.mul_(30)
            model.aux_stem.weight.mul_(30)
        save_dsm_checkpoint(root / "model.ckpt", model, patch_size=32)
    for i, size in enumerate([*SIZES, BIG]):
        name = f"s{i}" if i < len(SIZES) else "big"
        sc = synthetic.generate_scene("isprs", size=size, seed=i, resolution=0.1)
        paths = synthetic.write_scene(sc, root / f"raw{i}", aux_resolution=0.2)
        shutil.copy(paths["image"], root / f"{name}.tif")
        shutil.copy(paths["dsm"], root / f"{name}_dsm.tif")
    return root


def cli(cwd: Path, *args: object, timeout: int = 300) -> subprocess.CompletedProcess:
    """``rsprompt predict ARGS`` in a fresh process (1 torch thread), run in ``cwd``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "tests")}
    env.pop("PYTEST_CURRENT_TEST", None)
    return subprocess.run(
        [sys.executable, str(RUNNER), "predict", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )


def run(cwd: Path, *args: object):
    """``rsprompt predict ARGS`` in this process (``tiny`` registered), with ``cwd`` as cwd."""
    old = Path.cwd()
    os.chdir(cwd)
    try:
        with engine_fixtures.registered_tiny():
            return CliRunner().invoke(main, ["predict", *map(str, args)], catch_exceptions=False)
    finally:
        os.chdir(old)


def common(data: Path, out: Path) -> list[object]:
    """The options of every multi-scene run: DSM by pattern, probabilities, summary JSON."""
    return [
        "-m", data / "model.ckpt", "--dem", "{stem}_dsm.tif", "--out-dir", out,
        "--probabilities", "{stem}_p.tif", "-q", *WIN,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The single-process run of the 4 scenes and of the big scene."""
    out = tmp_path_factory.mktemp("reference")
    scenes = [data / f"s{i}.tif" for i in range(len(SIZES))]
    res = run(data, *scenes, *common(data, out / "four"), "--summary-json", out / "four.json")
    assert res.exit_code == 0, res.output
    res = run(data, data / "big.tif", *common(data, out / "big"))
    assert res.exit_code == 0, res.output
    return out


def assert_same_outputs(expected: Path, actual: Path) -> None:
    """Same files; rasters pixel-identical with the same grid; sidecars byte-identical."""
    names = sorted(p.name for p in expected.iterdir())
    assert sorted(p.name for p in actual.iterdir()) == names  # no job folder, no parts left
    for name in names:
        a, b = expected / name, actual / name
        if name.endswith(".tif"):
            with rasterio.open(a) as x, rasterio.open(b) as y:
                assert (x.crs, x.transform, x.shape, x.count) == (
                    y.crs,
                    y.transform,
                    y.shape,
                    y.count,
                )
                assert np.array_equal(x.read(), y.read()), name
                assert x.overviews(1) == y.overviews(1), name
                assert x.colorinterp == y.colorinterp
        else:
            assert a.read_bytes() == b.read_bytes(), name


def class_counts(summary_json: Path) -> list[list[int]]:
    return [[c["pixels"] for c in s["classes"]] for s in json.loads(summary_json.read_text())]


# ------------------------------------------------------------------------ plan and inputs (fast)
def test_parse_shard():
    assert parse_shard("0/1") == (0, 1)
    assert parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(PredictError, match="--shard"):
            parse_shard(bad)


def test_assign_balances_largest_first():
    # Greedy, largest first: 10 → shard 0 (tie: lowest); 8 → 1; 6 → 1 (load 8 < 10, now 14);
    # 5 → 0 (10 < 14, now 15); 2 → 1 (14 < 15).
    units = [Unit(f"u{c}", i, None, c, 1) for i, c in enumerate((5, 10, 2, 8, 6))]
    shards = assign(units, 2)
    assert [[u.cost for u in s] for s in shards] == [[10, 5], [8, 6, 2]]
    assert sorted(u.id for s in shards for u in s) == sorted(u.id for u in units)


def test_plan_units_split_when_fewer_scenes_than_shards():
    from rsprompt.inference.jobs import SceneSpec

    big = SceneSpec("a.tif", None, "a_pred.tif", None, None, height=200, width=50)
    small = SceneSpec("b.tif", None, "b_pred.tif", None, None, height=40, width=50)
    # One scene, 2 shards: 2 bands. Window rows start every 24 px (0, 24, …, 168); the border
    # is the start nearest 200 / 2, i.e. 96. The band (96, 200) computes the windows starting at
    # 72 … 168 (128 rows), more than (0, 96) with 0 … 72 (104 rows): it comes first.
    units = plan_units([big], 2, 32, 8)
    assert [u.rows for u in units] == [(96, 200), (0, 96)]
    assert [u.cost for u in units] == [128 * 50, 104 * 50]
    assert [u.windows for u in units] == [5 * 2, 4 * 2]  # columns start at 0 and 18
    # Two scenes, 2 shards: whole scenes, the larger first.
    units = plan_units([small, big], 2, 32, 8)
    assert [(u.scene, u.rows) for u in units] == [(1, None), (0, None)]
    # A scene above split_pixels is split even with enough scenes.
    units = plan_units([big, small], 1, 32, 8, split_pixels=5000)
    assert sum(u.scene == 0 for u in units) == 2 and sum(u.scene == 1 for u in units) == 1


def test_scene_list_and_globs(tmp_path):
    (tmp_path / "tiles").mkdir()
    for name in ("a.tif", "b.tif", "c.tif", "notes.txt"):
        (tmp_path / "tiles" / name).write_bytes(b"")
    (tmp_path / "lists").mkdir()
    listing = tmp_path / "lists" / "scenes.txt"
    listing.write_text("# my scenes\n../tiles/c.tif\n\n  ../tiles/[ab].tif  # two of them\n")
    got = expand_scenes([f"@{listing}", str(tmp_path / "tiles" / "*.txt")])
    tiles = tmp_path / "lists" / ".." / "tiles"
    assert got == [tiles / "c.tif", tiles / "a.tif", tiles / "b.tif", tmp_path / "tiles/notes.txt"]
    with pytest.raises(PredictError, match=r"'\*\.jp2' matches no file"):
        expand_scenes(["*.jp2"])
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(PredictError, match="lists no scene"):
        expand_scenes([f"@{tmp_path / 'empty.txt'}"])
    with pytest.raises(PredictError, match=r"missing\.txt"):
        expand_scenes([f"@{tmp_path / 'missing.txt'}"])


def _split_into_tiles(scene: Path, folder: Path, rows: int, cols: int) -> list[Path]:
    folder.mkdir()
    tiles = []
    with rasterio.open(scene) as src:
        for r0 in range(0, src.height, rows):
            for c0 in range(0, src.width, cols):
                win = Window(c0, r0, min(cols, src.width - c0), min(rows, src.height - r0))
                profile = dict(
                    src.profile,
                    width=win.width,
                    height=win.height,
                    transform=src.window_transform(win),
                )
                tiles.append(folder / f"t{r0:04d}_{c0:04d}.tif")
                with rasterio.open(tiles[-1], "w", **profile) as dst:
                    dst.write(src.read(window=win))
    return tiles


def test_mosaic_vrt_reads_like_the_scene(data, tmp_path):
    tiles = _split_into_tiles(data / "s0.tif", tmp_path / "tiles", 40, 50)
    vrt = write_mosaic(tiles, tmp_path / "m.vrt")
    with rasterio.open(data / "s0.tif") as src, rasterio.open(vrt) as m:
        assert (m.crs, m.transform, m.shape) == (src.crs, src.transform, src.shape)
        assert np.array_equal(m.read(), src.read())
        assert (m.read_masks(1) == 255).all()
    assert write_mosaic(tiles, tmp_path / "m.vrt") == vrt  # same tiles again: unchanged
    # Without one tile its pixels are masked (no data), the others valid.
    part = write_mosaic([t for t in tiles if t.name != "t0000_0000.tif"], tmp_path / "p.vrt")
    with rasterio.open(part) as m:
        mask = m.read_masks(1)
    assert mask.shape == (96, 128)
    assert (mask[:40, :50] == 0).all() and (mask[40:, :] == 255).all()
    with pytest.raises(PredictError, match="exists with other tiles"):
        write_mosaic(tiles[:2], tmp_path / "m.vrt")


def test_mosaic_option_predicts_like_the_whole_scene(data, reference, tmp_path):
    tiles = _split_into_tiles(data / "s0.tif", tmp_path / "tiles", 40, 50)
    (tmp_path / "s0mosaic_dsm.tif").symlink_to(data / "s0_dsm.tif")
    res = run(
        tmp_path,
        "tiles/*.tif",
        "--mosaic",
        "s0mosaic.vrt",
        "-m",
        data / "model.ckpt",
        "--dem",
        "{stem}_dsm.tif",
        "-o",
        tmp_path / "map.tif",
        "-q",
        *WIN,
    )
    assert res.exit_code == 0, res.output
    with (
        rasterio.open(reference / "four" / "s0_pred.tif") as a,
        rasterio.open(tmp_path / "map.tif") as b,
    ):
        assert np.array_equal(a.read(), b.read()) and a.transform == b.transform
    assert [p.name for p in tiles] == sorted(p.name for p in (tmp_path / "tiles").iterdir())


# ------------------------------------------------------------------------------------- shards
def four_scenes(data: Path) -> list[Path]:
    return [data / f"s{i}.tif" for i in range(len(SIZES))]


def manifests(out: Path) -> dict[str, int]:
    """Unit name → modification time (ns) of its manifest."""
    folder = out / JOB_DIR / "manifests"
    return {p.stem: p.stat().st_mtime_ns for p in folder.glob("*.json")}


def test_shards_then_merge_match_the_single_run(data, reference, tmp_path):
    out = tmp_path / "maps"
    args = [*four_scenes(data), *common(data, out), "--summary-json", tmp_path / "s.json"]
    res = run(data, *args, "--shard", "0/2")
    assert res.exit_code == 0, res.output
    first = manifests(out)
    assert len(first) == 2 and not (out / "s0_pred.tif").exists()  # nothing final yet
    # Shard 1 finishes last but finds the merge lock held: it leaves the merge to its holder.
    with open(out / JOB_DIR / "merge.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        res = run(data, *args, "--shard", "1/2")
    assert res.exit_code == 0, res.output
    assert len(manifests(out)) == 4 and manifests(out).items() >= first.items()
    res = run(data, "--merge", out)
    assert res.exit_code == 0, res.output
    assert_same_outputs(reference / "four", out)
    assert class_counts(tmp_path / "s.json") == class_counts(reference / "four.json")
    assert "job: 4 scene(s)" in res.output
    res = run(data, "--merge", out)  # merged: the job folder is gone
    assert res.exit_code == 1 and "holds no unfinished prediction job" in res.output


def test_job_progress_counts_windows_batch_by_batch(data, reference, tmp_path, monkeypatch):
    """The job's progress (one bar over all ranks) is fed per batch of windows, not per unit,
    and ends at the windows the single-process run predicted (its summary JSON)."""
    from rsprompt.inference.scale import JobProgress

    calls: list[int] = []
    real_add = JobProgress.add

    def add(self, windows):
        calls.append(windows)
        real_add(self, windows)

    monkeypatch.setattr(JobProgress, "add", add)
    res = run(data, *four_scenes(data), *common(data, tmp_path / "maps"), "--shard", "0/1")
    assert res.exit_code == 0, res.output
    scenes = json.loads((reference / "four.json").read_text())  # one summary per scene
    assert sum(calls) == sum(s["windows"] for s in scenes)
    assert len(calls) > len(scenes)  # several batches per scene


def test_rerun_after_a_killed_shard_redoes_only_unfinished_units(data, reference, tmp_path):
    out = tmp_path / "maps"
    args = [*four_scenes(data), *common(data, out)]
    with open(_lock_file(out), "w") as lock:  # keep the job (no merge) until the end
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert run(data, *args, "--shard", "0/2").exit_code == 0
        assert run(data, *args, "--shard", "1/2").exit_code == 0
        shard1 = _units_of(out, 1)
        assert len(shard1) == 2
        # What a shard killed in its second unit leaves: the first unit finished (manifest),
        # the second a partial part file and no manifest (the manifest is written last).
        killed = out / JOB_DIR / "units" / shard1[1]
        (out / JOB_DIR / "manifests" / f"{shard1[1]}.json").unlink()
        with open(killed / "map.tif", "r+b") as f:
            f.truncate(500)
        before = manifests(out)
        parts = {
            p: p.stat().st_mtime_ns
            for p in (out / JOB_DIR / "units").rglob("*.tif")
            if p.parent.name != shard1[1]
        }
        assert len(before) == 3 and len(parts) == 6  # 3 units × (map, probabilities)
        res = run(data, *args, "--shard", "1/2")
        assert res.exit_code == 0, res.output
        assert "shard 1/2: 1 unit(s) predicted, 1 finished before" in res.output
        after = manifests(out)
        assert set(after) == set(before) | {shard1[1]}
        assert {k: after[k] for k in before} == before  # finished units not redone
        assert {p: p.stat().st_mtime_ns for p in parts} == parts
    res = run(data, "--merge", out)
    assert res.exit_code == 0, res.output
    assert_same_outputs(reference / "four", out)


def test_sigkill_after_the_first_manifest_then_rerun(data, reference, tmp_path):
    """A real kill: shard 0/1 (all 4 units) is SIGKILLed once its first manifest appears."""
    import signal
    import time

    out = tmp_path / "maps"
    args = [*four_scenes(data), *common(data, out), "--shard", "0/1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "tests")}
    cmd = [sys.executable, str(RUNNER), "predict", *map(str, args)]
    proc = subprocess.Popen(cmd, env=env, cwd=data, stderr=subprocess.DEVNULL)
    folder = out / JOB_DIR / "manifests"
    deadline = time.monotonic() + 240
    while not (folder.is_dir() and any(folder.glob("*.json"))) and proc.poll() is None:
        assert time.monotonic() < deadline, "no manifest appeared"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if proc.returncode == 0:
        pytest.skip("the shard finished before it could be killed")
    killed = manifests(out)
    assert killed  # at least one unit finished before the kill
    # Hold the merge lock so that the finished units can be checked after the rerun.
    with open(_lock_file(out), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        res = run(data, *args)
        assert res.exit_code == 0, res.output
        assert f"{len(killed)} finished before" in res.output
        after = manifests(out)
        assert len(after) == 4 and {k: after[k] for k in killed} == killed
    assert run(data, "--merge", out).exit_code == 0
    assert_same_outputs(reference / "four", out)


def test_a_partial_unit_is_never_taken_as_finished(data, tmp_path):
    out = tmp_path / "maps"
    args = [*four_scenes(data), *common(data, out)]
    with open(_lock_file(out), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert run(data, *args, "--shard", "0/2").exit_code == 0
        assert run(data, *args, "--shard", "1/2").exit_code == 0
        times = manifests(out)
        unit = sorted(times)[0]
        part = out / JOB_DIR / "units" / unit / "map.tif"
        with open(part, "ab") as f:  # the part changed after its manifest: not finished
            f.write(b"x")
        res = run(data, "--merge", out)
        assert res.exit_code == 1 and f"({unit})" in res.output and "not finished" in res.output
        shard = "0/2" if unit in _units_of(out, 0) else "1/2"
        res = run(data, *args, "--shard", shard)
        assert res.exit_code == 0, res.output
        assert "1 unit(s) predicted, 1 finished before" in res.output
        after = manifests(out)
    assert after[unit] > times[unit]
    assert {k: v for k, v in after.items() if k != unit} == {
        k: v for k, v in times.items() if k != unit
    }


def _lock_file(out: Path) -> Path:
    (out / JOB_DIR).mkdir(parents=True, exist_ok=True)
    return out / JOB_DIR / "merge.lock"


def _units_of(out: Path, shard: int) -> list[str]:
    from rsprompt.inference.jobs import JobPlan

    plan = JobPlan.from_json((out / JOB_DIR / "plan.json").read_text())
    return [u.id for u in assign(plan.units, plan.shards)[shard]]


def test_bad_input_fails_its_shard_only(data, tmp_path):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for i in range(len(SIZES)):
        for name in (f"s{i}.tif", f"s{i}_dsm.tif"):
            (scenes / name).symlink_to(data / name)
    (scenes / "s1_dsm.tif").unlink()  # scene s1 has no DSM
    out = tmp_path / "maps"
    args = [*(scenes / f"s{i}.tif" for i in range(len(SIZES))), *common(data, out)]
    results = {k: run(scenes, *args, "--shard", f"{k}/2") for k in (0, 1)}
    bad = 0 if any(u.startswith("s0001") for u in _units_of(out, 0)) else 1
    good = 1 - bad
    assert results[good].exit_code == 0, results[good].output
    res = results[bad]
    assert res.exit_code == 1
    lines = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "s1_dsm.tif: file not found" in lines[0], res.output
    assert f"shard {bad}/2: 1 unit(s) failed" in res.output
    assert "Traceback" not in res.output
    # The other units of both shards are finished and kept; nothing was merged.
    assert sorted(manifests(out)) == sorted(
        u for u in _units_of(out, 0) + _units_of(out, 1) if not u.startswith("s0001")
    )
    assert not list(out.glob("*.tif"))


def test_job_option_errors(data, tmp_path):
    scene, ckpt = data / "s0.tif", data / "model.ckpt"
    res = run(data, scene, "-m", ckpt, "-o", tmp_path / "x.tif", "--shard", "0/2")
    assert res.exit_code == 2 and "need --out-dir" in res.output
    res = run(data, scene, "-m", ckpt, "--out-dir", tmp_path / "o", "--shard", "2/2")
    assert res.exit_code == 1 and "need 0 <= i < N" in res.output
    res = run(
        data, scene, "-m", ckpt, "--out-dir", tmp_path / "o", "--devices", 2, "--device", "cpu"
    )
    assert res.exit_code == 2 and "use --accelerator" in res.output
    res = run(data, scene, "--merge", tmp_path / "o")
    assert res.exit_code == 2 and "takes no SCENES" in res.output
    assert not (tmp_path / "o").exists()
    # Final outputs that exist are refused before anything is predicted, as in a single run.
    out = tmp_path / "maps"
    assert run(data, scene, "-m", ckpt, "--out-dir", out, "-q", *WIN).exit_code == 0
    res = run(data, scene, "-m", ckpt, "--out-dir", out, "-q", *WIN, "--shard", "0/1")
    assert res.exit_code == 1 and "exists" in res.output and "--overwrite" in res.output
    assert not (out / JOB_DIR).exists()
    res = run(
        data, scene, "-m", ckpt, "--out-dir", out, "-q", *WIN, "--shard", "0/1", "--overwrite"
    )
    assert res.exit_code == 0 and not (out / JOB_DIR).exists()


# ------------------------------------------------------------------- Lightning ranks (2 × gloo)
def test_two_cpu_ranks_match_the_single_run(data, reference, tmp_path):
    out = tmp_path / "maps"
    scenes = [p.name for p in four_scenes(data)]
    res = cli(
        data, *scenes, *common(data, out), "--summary-json", tmp_path / "s.json",
        "--devices", 2, "--accelerator", "cpu",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "rank 0 of 2:" in res.stderr and "unit(s) predicted" in res.stderr  # rank 0 reports
    assert "distributed_backend" not in res.stderr  # no Lightning banner
    assert res.stdout.count("job: 4 scene(s)") == 1  # one summary, from rank 0
    assert_same_outputs(reference / "four", out)
    assert class_counts(tmp_path / "s.json") == class_counts(reference / "four.json")


def test_one_scene_in_two_bands_on_two_ranks(data, reference, tmp_path):
    from rsprompt.commands._predict_job import _can_split

    if not _can_split():
        pytest.skip("predict_scene has no row_range / merge_row_parts yet")
    out = tmp_path / "maps"
    args = [a for a in common(data, out) if a != "-q"]  # the plan's line is shown
    res = cli(data, "big.tif", *args, "--devices", 2, "--accelerator", "cpu")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 unit(s) of 1 scene(s) over 2 shard(s)" in res.stderr  # two row bands
    assert_same_outputs(reference / "big", out)


def test_bad_input_on_one_rank_fails_the_launch(data, tmp_path):
    out = tmp_path / "maps"
    (tmp_path / "s0.tif").symlink_to(data / "s0.tif")
    (tmp_path / "s1.tif").symlink_to(data / "s1.tif")
    (tmp_path / "s0_dsm.tif").symlink_to(data / "s0_dsm.tif")  # s1 has no DSM
    res = cli(
        tmp_path, "s0.tif", "s1.tif", *common(data, out), "--devices", 2, "--accelerator", "cpu"
    )
    assert res.returncode != 0
    assert "s1_dsm.tif: file not found" in res.stderr and "Traceback" not in res.stderr
    assert len(manifests(out)) == 1  # s0's unit finished on the other rank, and is kept
    assert not list(out.glob("*.tif"))
