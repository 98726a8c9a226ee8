"""Predict with an exported ONNX model (the onnxruntime backend of predict; issue 19 item 3).

The expected maps come from the *torch* backend (``predict_from_checkpoint``) on the checkpoint the
ONNX file was exported from, with the export's fixed DSM statistics equal to the scene-wide ones
that the torch backend computes (the DSM shares the scene's grid; its min and max are read here
with rasterio). Both run the same windows and blending, so the maps can differ only where the two
largest class probabilities tie to within float32 rounding of the two runtimes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from onnx_fixtures import WINDOW, one_thread, save_tiny  # noqa: F401 (autouse one_thread)

import rsprompt.data.synthetic as synthetic
from rsprompt.inference import PredictError, predict_from_checkpoint

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from rsprompt.export import OnnxPredictor, export_onnx, predict_onnx


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A 128×192 synthetic scene + DSM (same grid), a tiny MoBaNet (DSM min–max) and its export.

    The export's fixed statistics are the DSM's own min–max (``aux_stats`` on the DSM).
    """
    root = tmp_path_factory.mktemp("onnx_predict")
    sc = synthetic.generate_scene("isprs", size=(128, 192), seed=3, resolution=0.2)
    paths = synthetic.write_scene(sc, root / "raw")
    scene, dsm = root / "scene.tif", root / "dsm.tif"
    shutil.copy(paths["image"], scene)
    shutil.copy(paths["dsm"], dsm)
    torch.set_num_threads(1)
    ckpt = save_tiny(root / "m.ckpt", "mobanet")
    onnx_path = root / "m.onnx"
    summary = export_onnx(ckpt, onnx_path, aux_stats=dsm)
    rgb = root / "rgb.onnx"
    export_onnx(ckpt, rgb, optical_only=True)
    return {"root": root, "scene": scene, "dsm": dsm, "ckpt": ckpt, "onnx": onnx_path,
            "rgb": rgb, "stats": summary.aux_stats}  # fmt: skip


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def test_onnx_backend_gives_the_map_of_the_torch_backend(case, tmp_path):
    """Same scene, same windows (64 px, overlap 16 = the exported 25 %), same blending.

    Agreement must be at least 99.9 %, and every disagreeing pixel must be a near-tie in the
    torch run: its two largest uint8 probabilities (``round(255 p)``) at most 1 apart.
    """
    with rasterio.open(case["dsm"]) as d:
        heights = d.read(1, masked=True)
    assert case["stats"] == pytest.approx(
        {"min": float(heights.min()), "max": float(heights.max())}
    )
    ours = predict_onnx(
        case["scene"],
        case["onnx"],
        tmp_path / "onnx.tif",
        aux=case["dsm"],
        aux_kind="dsm",
        probabilities=tmp_path / "onnx_p.tif",
        progress=False,
    )
    theirs = predict_from_checkpoint(
        case["scene"],
        case["ckpt"],
        tmp_path / "torch.tif",
        aux=case["dsm"],
        aux_kind="dsm",
        window=WINDOW,
        overlap=WINDOW // 4,
        probabilities=tmp_path / "torch_p.tif",
        progress=False,
    )
    assert ours.windows == theirs.windows
    a, b = read(tmp_path / "onnx.tif")[0], read(tmp_path / "torch.tif")[0]
    assert a.shape == (128, 192)
    agree = float(np.mean(a == b))
    assert agree >= 0.999, agree
    p_torch = read(tmp_path / "torch_p.tif").astype(int)
    top2 = np.sort(p_torch, axis=0)[-2:]
    assert np.all((top2[1] - top2[0])[a != b] <= 1)
    assert np.abs(read(tmp_path / "onnx_p.tif").astype(int) - p_torch).max() <= 1
    assert ours.device == "cpu" and ours.numeric_precision == "32"
    assert ours.class_names == theirs.class_names
    assert (tmp_path / "onnx.qml").exists() and (tmp_path / "onnx.tif.aux.xml").exists()


def test_optical_only_export_predicts_without_the_aux(case, tmp_path):
    """An --optical-only export: no aux raster; the torch backend without --dem gives the map."""
    predict_onnx(case["scene"], case["rgb"], tmp_path / "o.tif", progress=False)
    predict_from_checkpoint(
        case["scene"], case["ckpt"], tmp_path / "t.tif", window=WINDOW, progress=False
    )
    a, b = read(tmp_path / "o.tif")[0], read(tmp_path / "t.tif")[0]
    assert float(np.mean(a == b)) >= 0.999
    with pytest.raises(PredictError, match="takes no aux raster"):
        predict_onnx(case["scene"], case["rgb"], tmp_path / "x.tif", aux=case["dsm"])


def test_refusals_are_clear(case, tmp_path):
    out = tmp_path / "m.tif"
    kw = {"aux": case["dsm"], "progress": False}
    with pytest.raises(PredictError, match=r"exported for 64×64 windows.*--window 32"):
        predict_onnx(case["scene"], case["onnx"], out, window=32, **kw)
    with pytest.raises(PredictError, match=r"takes a DSM.*--dem FILE"):
        predict_onnx(case["scene"], case["onnx"], out, progress=False)
    with pytest.raises(PredictError, match=r"exported with DSM.*use --dem"):
        predict_onnx(case["scene"], case["onnx"], out, aux_kind="sar", **kw)
    with pytest.raises(PredictError, match=r"float32 graph only.*--precision bf16"):
        predict_onnx(case["scene"], case["onnx"], out, precision="bf16", **kw)
    with pytest.raises(PredictError, match="takes 3 optical band"):
        predict_onnx(case["scene"], case["onnx"], out, bands=[1, 2], **kw)
    with pytest.raises(PredictError, match="file not found"):
        predict_onnx(case["scene"], tmp_path / "missing.onnx", out, **kw)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx file")
    with pytest.raises(PredictError, match="not a readable ONNX file"):
        predict_onnx(case["scene"], garbage, out, **kw)
    assert not out.exists()


def test_a_foreign_onnx_file_is_refused(tmp_path, case):
    """An ONNX model not written by rsprompt export: its input conventions are unknown."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 64, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 64, 64])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "foreign.onnx"
    onnx.save(model, str(path))
    with pytest.raises(PredictError, match="not written by `rsprompt export`"):
        predict_onnx(case["scene"], path, tmp_path / "m.tif", aux=case["dsm"])


def test_cuda_without_the_provider_is_refused(case):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime has its CUDA provider here")
    with pytest.raises(PredictError, match="onnxruntime-gpu"):
        OnnxPredictor(case["onnx"], device="cuda")
    assert OnnxPredictor(case["onnx"], device="auto").device == "cpu"


def test_existing_outputs_are_kept_without_overwrite(case, tmp_path):
    """Outputs go through predict_scene: an existing map is refused, then replaced atomically."""
    out = tmp_path / "m.tif"
    out.write_bytes(b"keep")
    with pytest.raises(PredictError, match="--overwrite"):
        predict_onnx(case["scene"], case["onnx"], out, aux=case["dsm"], progress=False)
    assert out.read_bytes() == b"keep"
    predict_onnx(case["scene"], case["onnx"], out, aux=case["dsm"], overwrite=True, progress=False)
    assert read(out).shape == (1, 128, 192)
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name or ".lock" in p.name]


def test_ndsm_export_equals_torch_with_the_ground_fitted_per_window(case, tmp_path):
    """``--raw-dsm``: the ground is fitted per window; torch fitting it so == onnxruntime.

    That graph estimates the ground on each input tile; ``rsprompt predict`` on the whole scene.
    A torch run whose normaliser fits the ground on each window with
    ``rsprompt.data.normalize.ground_estimate`` (numpy, not the graph's torch code) gives the
    map of the ONNX backend with the same windows (64 px, no overlap).
    """
    import dataclasses

    import rsprompt.data.normalize as N
    from rsprompt.inference import CheckpointPredictor, predict_scene

    ndsm = N.DSMNormalizer("ndsm", cell_m=1.0, window_m=6.0, max_height_m=20.0)
    ckpt = save_tiny(tmp_path / "n.ckpt", "dplnet", ndsm, dataset=None)
    onnx_path = tmp_path / "n.onnx"
    export_onnx(ckpt, onnx_path, resolution=20.0, ndsm=False)  # raw DSM; 0.2 m pixels
    pred = CheckpointPredictor(ckpt)
    optical = dataclasses.replace(pred.normalization.optical, bands=None)

    def per_window(image, aux, aux_valid, offset):
        ok = aux_valid.astype(bool)
        grid, cell = N.ground_estimate(aux[0], ok, 0.2, 1.0, 6.0)
        stats = {"ground": grid.astype(np.float32), "cell": cell}
        a, v = ndsm.apply(aux, stats, valid=ok)
        return optical.apply(image), a, v[0]

    common = {"aux": case["dsm"], "window": WINDOW, "overlap": 0, "progress": False}
    predict_scene(
        case["scene"], pred.model, tmp_path / "t.tif", classes=pred.classes,
        normalize=per_window, bands=[1, 2, 3], expected_bands=3, aux_channels=1, **common,
    )  # fmt: skip
    predict_onnx(case["scene"], onnx_path, tmp_path / "o.tif", **common)
    a, b = read(tmp_path / "o.tif")[0], read(tmp_path / "t.tif")[0]
    assert float(np.mean(a == b)) >= 0.999


def test_ndsm_export_predicts_the_map_of_the_torch_backend(case, tmp_path):
    """Default nDSM export (heights above ground in): fed the scene-wide ground, as torch is.

    The same windows and blending as the torch backend (64 px, overlap 16); agreement at least
    99.9 % and every disagreeing pixel a near-tie of the torch run's uint8 probabilities.
    """
    import rsprompt.data.normalize as N

    ndsm = N.DSMNormalizer("ndsm", cell_m=1.0, window_m=6.0, max_height_m=20.0)
    ckpt = save_tiny(tmp_path / "n.ckpt", "dplnet", ndsm, dataset=None)
    onnx_path = tmp_path / "n.onnx"
    assert export_onnx(ckpt, onnx_path, resolution=20.0).aux_input == "height_above_ground"
    common = {"aux": case["dsm"], "aux_kind": "dsm", "progress": False}
    predict_onnx(case["scene"], onnx_path, tmp_path / "o.tif", **common)
    predict_from_checkpoint(
        case["scene"], ckpt, tmp_path / "t.tif", window=WINDOW, overlap=WINDOW // 4,
        probabilities=tmp_path / "t_p.tif", **common,
    )  # fmt: skip
    a, b = read(tmp_path / "o.tif")[0], read(tmp_path / "t.tif")[0]
    assert float(np.mean(a == b)) >= 0.999
    top2 = np.sort(read(tmp_path / "t_p.tif").astype(int), axis=0)[-2:]
    assert np.all((top2[1] - top2[0])[a != b] <= 1)


def test_a_scene_smaller_than_the_window_is_padded_like_the_torch_backend(case, tmp_path):
    """A 40×50 crop: both backends pad it to the 64 px window the same way, then crop the map.

    With the export's statistics from the full scene's DSM instead, 2.3 % of the crop's pixels
    changed class in this test's first version: the fixed statistics matter, not the padding.
    """
    from rasterio.windows import Window

    crop = Window(30, 20, 50, 40)
    small = {}
    for key in ("scene", "dsm"):
        with rasterio.open(case[key]) as src:
            profile = src.profile | {
                "width": 50, "height": 40, "transform": src.window_transform(crop),
            }  # fmt: skip
            profile.pop("blockxsize", None), profile.pop("blockysize", None)
            profile["tiled"] = False
            small[key] = tmp_path / f"{key}.tif"
            with rasterio.open(small[key], "w", **profile) as dst:
                dst.write(src.read(window=crop))
    # Fixed statistics of the crop's own heights (the torch backend fits them on the crop).
    onnx_path = tmp_path / "crop.onnx"
    export_onnx(case["ckpt"], onnx_path, aux_stats=small["dsm"])
    predict_onnx(small["scene"], onnx_path, tmp_path / "o.tif", aux=small["dsm"], progress=False)
    predict_from_checkpoint(
        small["scene"], case["ckpt"], tmp_path / "t.tif", aux=small["dsm"], window=WINDOW,
        progress=False,
    )  # fmt: skip
    a, b = read(tmp_path / "o.tif")[0], read(tmp_path / "t.tif")[0]
    assert a.shape == (40, 50)
    assert float(np.mean(a == b)) >= 0.999


# ----------------------------------------------------------------------------- command line
def _cli(*args):
    from click.testing import CliRunner

    from rsprompt.cli import main

    return CliRunner().invoke(main, ["predict", *map(str, args)], catch_exceptions=False)


def test_cli_backend_onnxruntime_writes_the_library_map(case, tmp_path):
    """`rsprompt predict -m model.onnx` (backend auto -> onnxruntime) writes the map that
    predict_onnx writes (same pipeline, same file: pixel-identical), with its sidecars, and
    reports where it ran; --backend onnxruntime spelled out gives the same map again."""
    lib = tmp_path / "lib.tif"
    predict_onnx(case["scene"], case["onnx"], lib, aux=case["dsm"], progress=False)
    out = tmp_path / "cli.tif"
    res = _cli(case["scene"], "--dem", case["dsm"], "-m", case["onnx"], "-o", out, "--threads", 1)
    assert res.exit_code == 0, res.output
    assert "(onnxruntime), precision 32" in res.output
    np.testing.assert_array_equal(read(out), read(lib))
    assert out.with_suffix(".qml").is_file() and Path(f"{out}.aux.xml").is_file()
    again = tmp_path / "again.tif"
    res = _cli(case["scene"], "--dem", case["dsm"], "-m", case["onnx"], "-o", again, "--backend",
               "onnxruntime", "-q")  # fmt: skip
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(read(again), read(lib))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--weights", "w.pth"], "--weights need a checkpoint"),
        (["--classes", "a,b"], "--classes need a checkpoint"),
        (["--backend", "torch"], "is an ONNX file"),
        (["--precision", "bf16"], "float32 graph only"),
        (["--window", "32"], "exported for 64×64 windows"),
    ],
)
def test_cli_onnx_refusals_are_one_line_errors(case, tmp_path, extra, message):
    out = tmp_path / "m.tif"
    res = _cli(case["scene"], "--dem", case["dsm"], "-m", case["onnx"], "-o", out, *extra)
    assert res.exit_code != 0
    assert message in res.output
    assert "Traceback" not in res.output
    assert not out.exists()


def test_cli_threads_needs_the_onnx_backend(case, tmp_path):
    res = _cli(case["scene"], "-m", case["root"] / "m.ckpt", "-o", tmp_path / "m.tif",
               "--threads", 2)  # fmt: skip
    assert res.exit_code == 2
    assert "--threads applies to --backend onnxruntime only" in res.output


def test_cli_onnx_shards_and_merge_give_the_single_run_map(case, tmp_path):
    """Job mode runs the ONNX model too: two shards of one scene (split into row bands, since
    there are fewer scenes than shards), the last one merging, give the single run's map."""
    single = tmp_path / "single"
    res = _cli(case["scene"], "--dem", case["dsm"], "-m", case["onnx"], "--out-dir", single, "-q")
    assert res.exit_code == 0, res.output
    job = tmp_path / "job"
    for shard in ("0/2", "1/2"):
        res = _cli(case["scene"], "--dem", case["dsm"], "-m", case["onnx"], "--out-dir", job,
                   "--shard", shard, "-q")  # fmt: skip
        assert res.exit_code == 0, res.output
    produced = sorted(p.name for p in single.iterdir())
    assert sorted(p.name for p in job.iterdir()) == produced  # no job folder or parts left
    maps = list(single.glob("*.tif"))
    assert len(maps) == 1
    np.testing.assert_array_equal(read(job / maps[0].name), read(maps[0]))
    for sidecar in (".qml", ".tif.aux.xml"):
        name = maps[0].name.replace(".tif", sidecar)
        assert (job / name).read_text() == (single / name).read_text()
