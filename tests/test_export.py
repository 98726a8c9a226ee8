"""`rsprompt export` (ONNX for QGIS's Deepness plugin) and `rsprompt stack` (issue 19).

Tiny random-encoder models of the five methods are exported and run with onnxruntime; the
expected probabilities come from the torch model behind normalisations written out here by hand
(the formulas of rsprompt.data.normalize), never from the export's own code.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from onnx_fixtures import (
    CLASSES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    WINDOW,
    one_thread,  # noqa: F401 (autouse fixture)
    raw_window,
    save_tiny,
)
from rasterio.transform import from_origin

import rsprompt.data.normalize as N
import rsprompt.data.synthetic as synthetic
import rsprompt.engine.checkpoint as ckpt_mod
from rsprompt.cli import main
from rsprompt.data.labels import ISPRS_CLASSES
from rsprompt.models import registry

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def torch_minmax(model, x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Softmax of the torch model on ``x`` normalised by hand: ImageNet on /255, DSM min–max.

    NaN heights are invalid: 0 in the aux and in its validity mask.
    """
    image = (x[:, :3] / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    h = x[:, 3:]
    valid = np.isfinite(h)
    aux = np.where(valid, (np.nan_to_num(h) - lo) / (hi - lo), 0.0)
    with torch.inference_mode():
        out = model(
            torch.from_numpy(image.astype(np.float32)),
            aux=torch.from_numpy(aux.astype(np.float32)),
            aux_valid=torch.from_numpy(valid.astype(np.float32)),
        )
    return torch.softmax(out, 1).numpy()


def torch_optical(model, x: np.ndarray) -> np.ndarray:
    image = (x[:, :3] / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    with torch.inference_mode():
        return torch.softmax(model(torch.from_numpy(image.astype(np.float32))), 1).numpy()


def session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------- equality per method
@pytest.mark.parametrize("method", ["mobanet", "dplnet", "gopt", "spm"])
def test_onnxruntime_equals_torch_with_a_dsm(tmp_path, method):
    """Each method: onnxruntime's probabilities equal torch's (max abs ≤ 1e-4), aux valid or not.

    The partial-aux window matters for MoBaNet, whose all-valid path is a branch on the data.
    """
    ckpt = save_tiny(tmp_path / "m.ckpt", method)
    out = tmp_path / "m.onnx"
    res = run("export", ckpt, "-o", out, "--aux-range", 200, 300)
    assert res.exit_code == 0, res.output
    model, _ = ckpt_mod.load_model_checkpoint(ckpt)
    sess = session(out)
    full = raw_window(2, seed=5)
    partial = full.copy()
    partial[:, 3, :20, :] = np.nan  # a nodata band across the top of both samples
    partial[1, 3, 40:, 30:] = np.nan
    for x in (full, partial):
        got = sess.run(None, {"input": x})[0]
        expected = torch_minmax(model, x, 200.0, 300.0)
        assert got.shape == (2, 3, WINDOW, WINDOW)
        assert np.abs(got - expected).max() <= 1e-4
    if method == "mobanet":  # the invalid rows reach the model: MoBaNet's gate moves
        diff = sess.run(None, {"input": partial})[0] - sess.run(None, {"input": full})[0]
        assert np.abs(diff).max() > 1e-3


def test_rpn_is_exported_with_its_vocabulary_frozen(tmp_path):
    """RPN (optical only): calibrated scores → softmax; --classes freezes another vocabulary."""
    ckpt = save_tiny(tmp_path / "rpn.ckpt", "rpn", aux=None, aux_channels=0)
    out = tmp_path / "rpn.onnx"
    res = run("export", ckpt, "-o", out, "--classes", "tree, building")
    assert res.exit_code == 0, res.output
    model, _ = ckpt_mod.load_model_checkpoint(ckpt)
    model.set_vocabulary(["tree", "building"])
    x = raw_window(2, seed=3)[:, :3]
    got = session(out).run(None, {"input": x})[0]
    assert got.shape == (2, 2, WINDOW, WINDOW)
    assert np.abs(got - torch_optical(model, x)).max() <= 1e-4
    meta = session(out).get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"]) == {"0": "tree", "1": "building"}
    # The checkpoint's own vocabulary when no --classes is given.
    res = run("export", ckpt, "-o", tmp_path / "own.onnx")
    assert res.exit_code == 0, res.output
    assert session(tmp_path / "own.onnx").get_outputs()[0].shape[1] == 3


def test_sar_and_ndsm_normalisations_are_baked(tmp_path):
    """SAR in dB (clip to [-25, 5] dB → [0, 1]) and a per-tile nDSM ground, against torch."""
    ckpt = save_tiny(tmp_path / "sar.ckpt", "dplnet", N.SARNormalizer("db"))
    out = tmp_path / "sar.onnx"
    assert run("export", ckpt, "-o", out).exit_code == 0
    model, _ = ckpt_mod.load_model_checkpoint(ckpt)
    x = raw_window(1, seed=2, lo=-40.0, hi=15.0)
    x[0, 3, 5, 5] = np.nan
    valid = np.isfinite(x[:, 3:])
    aux = np.where(valid, (np.clip(np.nan_to_num(x[:, 3:]), -25, 5) + 25) / 30, 0.0)
    image = (x[:, :3] / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    with torch.inference_mode():
        logits = model(
            torch.from_numpy(image.astype(np.float32)),
            aux=torch.from_numpy(aux.astype(np.float32)),
            aux_valid=torch.from_numpy(valid.astype(np.float32)),
        )
    expected = torch.softmax(logits, 1).numpy()
    assert np.abs(session(out).run(None, {"input": x})[0] - expected).max() <= 1e-4

    # nDSM: a flat ground at 250 m with one 10 m block; ground cell 1 m = 5 px at 20 cm/px,
    # opening window 6 m: the block (4 m wide) is removed from the ground, so its height above
    # ground is 10 m → 10 / 20 = 0.5, and 0 elsewhere. --raw-dsm: the graph takes that DSM and
    # estimates the ground on the tile; by default it takes the heights above ground themselves
    # (0 m, the block 10 m, one pixel 30 m → clipped to 20 m → 1.0, one NaN → invalid).
    ndsm = N.DSMNormalizer("ndsm", cell_m=1.0, window_m=6.0, max_height_m=20.0)
    ckpt = save_tiny(tmp_path / "ndsm.ckpt", "dplnet", ndsm, dataset=None)
    model, _ = ckpt_mod.load_model_checkpoint(ckpt)
    x = raw_window(1, seed=4)
    image = (x[:, :3] / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    aux = np.zeros((1, 1, WINDOW, WINDOW), np.float32)
    aux[0, 0, 20:40, 30:50] = 0.5
    valid = np.ones((1, 1, WINDOW, WINDOW), np.float32)

    def expected() -> np.ndarray:
        with torch.inference_mode():
            logits = model(
                torch.from_numpy(image.astype(np.float32)),
                aux=torch.from_numpy(aux),
                aux_valid=torch.from_numpy(valid),
            )
        return torch.softmax(logits, 1).numpy()

    raw_dsm = tmp_path / "ndsm_raw.onnx"
    res = run("export", ckpt, "-o", raw_dsm, "--resolution", 20, "--raw-dsm")
    assert res.exit_code == 0, res.output
    assert deepness_reads(raw_dsm)["all"]["rsprompt_aux_input"] == "raw"
    x[0, 3] = 250.0
    x[0, 3, 20:40, 30:50] = 260.0
    assert np.abs(session(raw_dsm).run(None, {"input": x})[0] - expected()).max() <= 1e-4

    heights = tmp_path / "ndsm.onnx"
    res = run("export", ckpt, "-o", heights, "--resolution", 20)
    assert res.exit_code == 0, res.output
    assert "heights above ground" in res.output and "stack --ndsm" in res.output
    assert deepness_reads(heights)["all"]["rsprompt_aux_input"] == "height_above_ground"
    x[0, 3] = 0.0
    x[0, 3, 20:40, 30:50] = 10.0
    x[0, 3, 5, 5], aux[0, 0, 5, 5] = 30.0, 1.0
    x[0, 3, 6, 6], aux[0, 0, 6, 6], valid[0, 0, 6, 6] = np.nan, 0.0, 0.0
    assert np.abs(session(heights).run(None, {"input": x})[0] - expected()).max() <= 1e-4


def test_ndsm_input_refusals(tmp_path):
    """--ndsm fits only nDSM checkpoints with their DSM input; messages name the option."""
    minmax = save_tiny(tmp_path / "mm.ckpt", "dplnet")
    res = run("export", minmax, "-o", tmp_path / "a.onnx", "--ndsm", "--aux-range", 0, 1)
    assert res.exit_code == 1 and "--ndsm" in res.output and "'minmax'" in res.output
    ndsm = N.DSMNormalizer("ndsm", cell_m=1.0, window_m=6.0, max_height_m=20.0)
    ckpt = save_tiny(tmp_path / "n.ckpt", "dplnet", ndsm, dataset=None)
    res = run(
        "export", ckpt, "-o", tmp_path / "b.onnx", "--ndsm", "--optical-only", "--resolution", 20
    )
    assert res.exit_code == 1 and "--optical-only" in res.output
    assert not list(tmp_path.glob("*.onnx"))


# --------------------------------------------------------------------------- Deepness metadata
def deepness_reads(path: Path) -> dict:
    """The metadata as Deepness's model_base.py reads it: json.loads, then its casts."""
    sess = session(path)
    meta = sess.get_modelmeta().custom_metadata_map
    names = json.loads(meta["class_names"])
    ordered = sorted(names.items(), key=lambda kv: int(kv[0]))
    assert [int(k) for k, _ in ordered] == list(range(len(ordered)))  # consecutive labels
    mean = [float(v) for v in json.loads(meta["standardization_mean"])]
    std = [float(v) for v in json.loads(meta["standardization_std"])]
    return {
        "model_type": str(json.loads(meta["model_type"])).capitalize(),
        "class_names": [v for _, v in ordered],
        "resolution": float(json.loads(meta["resolution"])),
        "tile_size": int(json.loads(meta["tile_size"])),
        "tiles_size": int(json.loads(meta["tiles_size"])),
        "tiles_overlap": int(json.loads(meta["tiles_overlap"])),
        "mean": np.array(mean, np.float32),
        "std": np.array(std, np.float32),
        "seg_thresh": float(json.loads(meta["seg_thresh"])),
        "seg_small_segment": int(json.loads(meta["seg_small_segment"])),
        "input": sess.get_inputs()[0].shape,
        "output": sess.get_outputs()[0].shape,
        "all": {k: json.loads(v) for k, v in meta.items()},
    }


def test_metadata_parses_as_deepness_parses_it(tmp_path):
    ckpt = save_tiny(tmp_path / "m.ckpt", "dplnet", dataset="potsdam")
    out = tmp_path / "m.onnx"
    assert run("export", ckpt, "-o", out, "--aux-range", 0, 50).exit_code == 0
    m = deepness_reads(out)
    assert m["model_type"] == "Segmentor"
    assert m["class_names"] == CLASSES
    assert m["resolution"] == 5.0  # ISPRS Potsdam: 5 cm per pixel
    assert m["tile_size"] == m["tiles_size"] == WINDOW
    assert m["tiles_overlap"] == 25  # rsprompt's default overlap: a quarter of the window
    assert m["mean"].tolist() == [0.0] * 4
    assert np.allclose(m["std"], 1 / 255)
    assert m["seg_thresh"] == 0.0 and m["seg_small_segment"] == 0
    assert m["input"][1:] == [4, WINDOW, WINDOW] and isinstance(m["input"][0], str)
    assert m["output"][1:] == [3, WINDOW, WINDOW] and isinstance(m["output"][0], str)
    own = m["all"]
    assert own["rsprompt_method"] == "dplnet" and own["rsprompt_encoder"] == "mit_b0"
    assert own["rsprompt_classes"] == CLASSES
    assert own["rsprompt_colors"] == [list(c) for c in ISPRS_CLASSES.colors[:3]]
    assert own["rsprompt_aux_kind"] == "dsm" and own["rsprompt_aux_channels"] == 1
    assert own["rsprompt_weights_sha256"] is None  # a random encoder: no weights file
    assert own["rsprompt_aux_normalization"]["fixed_stats"] == {"min": 0.0, "max": 50.0}
    # Deepness's preprocessing (x / 255, then (x - mean) / std in float32) gives back x.
    x = np.array([0, 1, 37, 200, 255, 1234.5], np.float32)
    back = (np.float32(x * (1.0 / 255.0)) - m["mean"][0]) / m["std"][0]
    assert np.allclose(back, x, rtol=1e-6)


def test_resolution_comes_from_the_dataset_or_the_option(tmp_path):
    ckpt = save_tiny(tmp_path / "v.ckpt", "dplnet", N.SARNormalizer("uint8"), dataset="vaihingen")
    assert run("export", ckpt, "-o", tmp_path / "v.onnx").exit_code == 0
    assert deepness_reads(tmp_path / "v.onnx")["resolution"] == 9.0  # Vaihingen: 9 cm
    ckpt = save_tiny(tmp_path / "w.ckpt", "dplnet", N.SARNormalizer("uint8"), dataset="whu-opt-sar")
    assert run("export", ckpt, "-o", tmp_path / "w.onnx").exit_code == 0
    assert deepness_reads(tmp_path / "w.onnx")["resolution"] == 500.0  # WHU-OPT-SAR: 5 m
    ckpt = save_tiny(tmp_path / "u.ckpt", "dplnet", N.SARNormalizer("uint8"), dataset="mine")
    res = run("export", ckpt, "-o", tmp_path / "u.onnx")
    assert res.exit_code == 1 and "--resolution" in res.output and "Traceback" not in res.output
    res = run("export", ckpt, "-o", tmp_path / "u.onnx", "--resolution", 12.5)
    assert res.exit_code == 0, res.output
    assert deepness_reads(tmp_path / "u.onnx")["resolution"] == 12.5


# --------------------------------------------------------------------------- refusals
def test_refusals_are_clear(tmp_path):
    ckpt = save_tiny(tmp_path / "m.ckpt", "dplnet")
    out = tmp_path / "m.onnx"
    res = run("export", ckpt, "-o", out)
    assert res.exit_code == 1
    assert "min–max" in res.output and "--aux-stats" in res.output and "--aux-range" in res.output
    assert not out.exists()
    res = run("export", ckpt, "-o", out, "--aux-range", 5, 5)
    assert res.exit_code == 1 and "MIN < MAX" in res.output
    res = run("export", ckpt, "-o", out, "--aux-range", 0, 5, "--aux-stats", ckpt)
    assert res.exit_code == 1 and "not both" in res.output
    res = run("export", ckpt, "-o", out, "--classes", "a,b")
    assert res.exit_code == 1 and "not open-vocabulary" in res.output
    res = run("export", tmp_path / "missing.ckpt", "-o", out)
    assert res.exit_code == 1 and "not found" in res.output
    sar = save_tiny(tmp_path / "s.ckpt", "dplnet", N.SARNormalizer("uint8"))
    res = run("export", sar, "-o", out, "--aux-range", 0, 5)
    assert res.exit_code == 1 and "needs no fixed statistics" in res.output
    rpn = save_tiny(tmp_path / "rpn.ckpt", "rpn", aux=None, aux_channels=0, resample_h=False)
    res = run("export", rpn, "-o", out, "--window", 96)
    assert res.exit_code == 1 and "--window 64" in res.output
    # An existing output is kept without --overwrite, replaced with it.
    out.write_text("keep")
    res = run("export", sar, "-o", out)
    assert res.exit_code == 1 and "--overwrite" in res.output
    assert out.read_text() == "keep"
    assert run("export", sar, "-o", out, "--overwrite").exit_code == 0
    assert session(out).get_inputs()[0].shape[1] == 4
    assert not list(tmp_path.glob(".*.tmp*"))  # no temporary file left behind


def test_missing_onnx_names_the_extra(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a)
    )
    ckpt = save_tiny(tmp_path / "m.ckpt", "dplnet", N.SARNormalizer("uint8"))
    res = run("export", ckpt, "-o", tmp_path / "m.onnx")
    assert res.exit_code == 1
    assert "onnx is not installed" in res.output and "rsprompt[onnx]" in res.output


def test_a_model_that_does_not_trace_is_refused(tmp_path):
    """A method whose forward uses an op ONNX lacks: one clear line, nothing written."""
    from rsprompt.models.base import SegmentationModel

    class Eig(SegmentationModel):
        def __init__(self, k: int, a: int) -> None:
            super().__init__("export-eig-tiny", "none", k, a)
            self.head = torch.nn.Conv2d(3, k, 1)
            self.freeze()

        def forward(self, image, aux=None, aux_valid=None):
            x = self.head(image)
            g = torch.einsum("bchw,bdhw->bcd", x, x)
            return x * torch.linalg.eigvalsh(g)[..., None, None]

    registry.METHOD_MODULES["export-eig-tiny"] = __name__
    registry.register_method("export-eig-tiny")(lambda e, k, a, weights=None, **kw: Eig(k, a))
    try:
        model = Eig(3, 0)
        meta = ckpt_mod.model_meta(
            model, weights=None, classes=CLASSES, normalization=N.Normalization(), patch_size=16
        )
        ckpt = ckpt_mod.save_model_checkpoint(tmp_path / "eig.ckpt", model, meta)
        res = run("export", ckpt, "-o", tmp_path / "eig.onnx", "--resolution", 10)
    finally:
        registry.METHOD_MODULES.pop("export-eig-tiny", None)
        registry._BUILDERS.pop("export-eig-tiny", None)
    assert res.exit_code == 1
    assert "does not export to ONNX opset 17" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "eig.onnx").exists()


# --------------------------------------------------------------------------- stack + Deepness run
@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 128×192 synthetic ISPRS scene and its DSM on the same grid."""
    root = tmp_path_factory.mktemp("scene")
    sc = synthetic.generate_scene("isprs", size=(128, 192), seed=3, resolution=0.2)
    paths = synthetic.write_scene(sc, root / "raw")
    shutil.copy(paths["image"], root / "scene.tif")
    shutil.copy(paths["dsm"], root / "dsm.tif")
    return root / "scene.tif", root / "dsm.tif"


def test_stack_writes_the_scene_bands_and_the_aligned_dsm(tmp_path, scene):
    from rsprompt.inference.reader import SceneReader
    from rsprompt.inference.windows import Window

    image, dsm = scene
    ckpt = save_tiny(tmp_path / "m.ckpt", "dplnet")
    out = tmp_path / "stacked.vrt"
    res = run("stack", image, "--dem", dsm, "-o", out, "-m", ckpt)
    assert res.exit_code == 0, res.output
    aux = tmp_path / "stacked_dsm.tif"
    with rasterio.open(out) as v, rasterio.open(image) as s:
        assert v.count == 4 and (v.width, v.height) == (s.width, s.height)
        assert v.crs == s.crs and v.transform == s.transform
        assert np.array_equal(v.read([1, 2, 3]), s.read([1, 2, 3]))
        stacked = v.read(4)
    with SceneReader(image, dsm) as reader:
        expected, valid = reader.read_aux(Window(0, 0, reader.height, reader.width))
    assert np.array_equal(np.isfinite(stacked), valid)
    assert np.array_equal(stacked[valid], expected[0][valid])
    # Relative paths: the three files move together.
    sources = [e.text for e in ET.parse(out).iter("SourceFilename")]
    assert sources[-1] == "stacked_dsm.tif" and not any(Path(s).is_absolute() for s in sources)
    assert all((tmp_path / s).resolve() == image.resolve() for s in sources[:3])
    assert aux.exists()
    # Existing outputs are kept without --overwrite.
    res = run("stack", image, "--dem", dsm, "-o", out)
    assert res.exit_code == 1 and "--overwrite" in res.output
    assert run("stack", image, "--dem", dsm, "-o", out, "--overwrite").exit_code == 0


def test_stack_refusals(tmp_path, scene):
    image, dsm = scene
    ckpt = save_tiny(tmp_path / "m.ckpt", "dplnet")
    res = run("stack", image, "--sar", dsm, "-o", tmp_path / "s.vrt", "-m", ckpt)
    assert res.exit_code == 1 and "use --dem" in res.output
    res = run("stack", image, "-o", tmp_path / "s.vrt", "-m", ckpt)
    assert res.exit_code == 1 and "pass --dem" in res.output
    res = run("stack", image, "--dem", dsm, "--sar", dsm, "-o", tmp_path / "s.vrt")
    assert res.exit_code == 2 and "not both" in res.output
    far = tmp_path / "far.tif"
    with rasterio.open(dsm) as src:
        profile = src.profile | {"transform": from_origin(10, 10, 1, 1)}
        data = src.read()
    with rasterio.open(far, "w", **profile) as dst:
        dst.write(data)
    res = run("stack", image, "--dem", far, "-o", tmp_path / "s.vrt")
    assert res.exit_code == 1 and "does not overlap" in res.output
    assert not (tmp_path / "s.vrt").exists() and not (tmp_path / "s_dsm.tif").exists()


def deepness_run(vrt: Path, onnx_path: Path, tile: int) -> np.ndarray:
    """Classes of the stacked layer the Deepness way (scripts/check_deepness.py's emulation).

    Square tiles without overlap read band by band in their own data type, ``/ 255``,
    standardised with the metadata's mean and std, onnxruntime, argmax.
    """
    script = Path(__file__).resolve().parents[1] / "scripts" / "check_deepness.py"
    spec = importlib.util.spec_from_file_location("check_deepness", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.deepness_classes(vrt, onnx_path, tile)


def test_deepness_style_run_gives_the_classes_of_rsprompt_predict(tmp_path, scene):
    """stack → export (--aux-stats on the stacked layer) → Deepness-style run == rsprompt predict.

    rsprompt predict runs with windows of the exported size and no overlap, so each window is
    exactly one Deepness tile; its scene-wide DSM min–max equals the min–max of the stacked
    layer's heights (the DSM shares the scene's grid).
    """
    from rsprompt.inference.from_checkpoint import CheckpointPredictor

    image, dsm = scene
    ckpt = save_tiny(tmp_path / "m.ckpt", "mobanet")
    vrt = tmp_path / "stacked.vrt"
    assert run("stack", image, "--dem", dsm, "-o", vrt, "-m", ckpt).exit_code == 0
    onnx_path = tmp_path / "m.onnx"
    res = run("export", ckpt, "-o", onnx_path, "--aux-stats", vrt)
    assert res.exit_code == 0, res.output
    with rasterio.open(dsm) as d:
        heights = d.read(1, masked=True)
    fixed = deepness_reads(onnx_path)["all"]["rsprompt_aux_normalization"]["fixed_stats"]
    assert fixed == pytest.approx({"min": float(heights.min()), "max": float(heights.max())})
    ours = deepness_run(vrt, onnx_path, WINDOW)
    predicted = tmp_path / "map.tif"
    CheckpointPredictor(ckpt).predict(
        image, predicted, aux=dsm, aux_kind="dsm", window=WINDOW, overlap=0, progress=False
    )
    with rasterio.open(predicted) as p:
        theirs = p.read(1)
    assert ours.shape == theirs.shape
    assert np.mean(ours == theirs) == 1.0


NDSM = N.DSMNormalizer("ndsm", cell_m=1.0, window_m=6.0, max_height_m=20.0)


def flat_scene(root: Path) -> tuple[Path, Path]:
    """60×80 px at 0.2 m: flat ground at 250 m, a 2 m × 3 m block 20 m tall, 3 missing heights.

    The ground of an nDSM with 1 m cells and a 6 m opening is 250 m everywhere (the block is
    narrower than the opening), so its heights above ground are the DSM minus 250 m.
    """
    profile = {
        "driver": "GTiff", "width": 80, "height": 60, "crs": "EPSG:32632",
        "transform": from_origin(500000, 5000000, 0.2, 0.2),
    }  # fmt: skip
    image = np.random.default_rng(0).integers(0, 255, (3, 60, 80)).astype(np.uint8)
    dsm = np.full((1, 60, 80), 250.0, np.float32)
    dsm[0, 20:30, 40:55] = 270.0
    dsm[0, 3, 4] = dsm[0, 50, 70] = -9999.0
    dsm[0, 10, 10] = np.nan
    paths = root / "flat.tif", root / "flat_dsm.tif"
    with rasterio.open(paths[0], "w", count=3, dtype="uint8", **profile) as dst:
        dst.write(image)
    with rasterio.open(paths[1], "w", count=1, dtype="float32", nodata=-9999, **profile) as dst:
        dst.write(dsm)
    return paths


def test_stack_ndsm_writes_heights_above_the_scene_ground(tmp_path):
    """--ndsm (the default for an nDSM checkpoint): DSM − 250 m, NaN where no height."""
    image, dsm = flat_scene(tmp_path)
    with rasterio.open(dsm) as src:
        heights = src.read(1, masked=True)
    expected = np.where(heights.mask, np.nan, heights.filled(0) - 250.0)
    ckpt = save_tiny(tmp_path / "n.ckpt", "dplnet", NDSM, dataset=None)
    for args in (["-m", ckpt], ["--ndsm"]):  # the checkpoint's ground, or the default one
        out = tmp_path / "stacked.vrt"
        res = run("stack", image, "--dem", dsm, "-o", out, "--overwrite", *args)
        assert res.exit_code == 0, res.output
        assert "height-above-ground" in res.output
        with rasterio.open(out) as v:
            assert v.count == 4 and v.descriptions[3] == "height above ground (m)"
            got = v.read(4)
        assert ET.parse(out).findall(".//SourceFilename")[-1].text == "stacked_ndsm.tif"
        assert np.array_equal(np.isnan(got), np.isnan(expected))
        ok = ~np.isnan(expected)
        np.testing.assert_allclose(got[ok], expected[ok], atol=1e-4)  # float32 interpolation
        assert got[25, 45] == pytest.approx(20.0, abs=1e-4)
    # --raw-dsm keeps the heights as they are, even for an nDSM checkpoint.
    res = run("stack", image, "--dem", dsm, "-o", tmp_path / "raw.vrt", "-m", ckpt, "--raw-dsm")
    assert res.exit_code == 0, res.output
    with rasterio.open(tmp_path / "raw_dsm.tif") as r:
        assert np.nanmax(r.read(1)) == 270.0


def test_stack_ndsm_refusals(tmp_path):
    image, dsm = flat_scene(tmp_path)
    minmax = save_tiny(tmp_path / "m.ckpt", "dplnet")
    res = run("stack", image, "--dem", dsm, "-o", tmp_path / "a.vrt", "-m", minmax, "--ndsm")
    assert res.exit_code == 1 and "'minmax'" in res.output and "--ndsm" in res.output
    res = run("stack", image, "--sar", dsm, "-o", tmp_path / "a.vrt", "--ndsm")
    assert res.exit_code == 1 and "pass --dem" in res.output
    res = run("stack", image, "-o", tmp_path / "a.vrt", "--ndsm")
    assert res.exit_code == 1 and "pass --dem" in res.output
    assert not list(tmp_path.glob("a*"))


def test_deepness_style_run_with_an_ndsm_checkpoint_gives_the_classes_of_predict(tmp_path, scene):
    """stack (heights above the scene's ground) → export (nDSM input) → Deepness == predict.

    The scene has rolling terrain and 6 m ground openings on 64 px (12.8 m) tiles: a ground
    estimated per tile would differ from predict's scene-wide ground; the stacked heights do not.
    """
    from rsprompt.inference.from_checkpoint import CheckpointPredictor

    image, dsm = scene
    ckpt = save_tiny(tmp_path / "n.ckpt", "dplnet", NDSM, dataset=None)
    vrt = tmp_path / "stacked.vrt"
    assert run("stack", image, "--dem", dsm, "-o", vrt, "-m", ckpt).exit_code == 0
    onnx_path = tmp_path / "n.onnx"
    res = run("export", ckpt, "-o", onnx_path, "--resolution", 20)
    assert res.exit_code == 0, res.output
    ours = deepness_run(vrt, onnx_path, WINDOW)
    predicted = tmp_path / "map.tif"
    CheckpointPredictor(ckpt).predict(
        image, predicted, aux=dsm, aux_kind="dsm", window=WINDOW, overlap=0, progress=False
    )
    with rasterio.open(predicted) as p:
        theirs = p.read(1)
    assert ours.shape == theirs.shape
    assert np.mean(ours == theirs) == 1.0


def test_onnx_model_is_callable_like_a_model(tmp_path):
    """OnnxModel(image, aux, aux_valid): log-probabilities; smaller inputs padded and cropped."""
    from rsprompt.export import OnnxModel

    ckpt = save_tiny(tmp_path / "m.ckpt", "dplnet")
    out = tmp_path / "m.onnx"
    assert run("export", ckpt, "-o", out, "--aux-range", 200, 300).exit_code == 0
    model = OnnxModel(out)
    assert (model.window, model.n_optical, model.aux_channels) == (WINDOW, 3, 1)
    assert model.classes == CLASSES and model.aux_kind == "dsm"
    x = raw_window(2, seed=9)
    valid = np.ones((2, 1, WINDOW, WINDOW), np.float32)
    valid[:, :, :10] = 0
    logp = model(torch.from_numpy(x[:, :3]), torch.from_numpy(x[:, 3:]), torch.from_numpy(valid))
    assert isinstance(logp, torch.Tensor)
    masked = x.copy()
    masked[:, 3:, :10] = np.nan
    torch_model, _ = ckpt_mod.load_model_checkpoint(ckpt)
    expected = torch_minmax(torch_model, masked, 200.0, 300.0)
    assert np.abs(torch.softmax(logp, 1).numpy() - expected).max() <= 1e-4
    small = model.probabilities(x[:1, :3, :40, :50], x[:1, 3:, :40, :50])
    assert small.shape == (1, 3, 40, 50)
    with pytest.raises(Exception, match="--window 64"):
        model.probabilities(np.zeros((1, 3, 65, 65)), np.zeros((1, 1, 65, 65)))


def test_aux_statistics_skip_nodata(tmp_path):
    """--aux-stats: min and max of the valid heights (nodata -9999 and NaN left out)."""
    from rsprompt.export.common import InputLayout
    from rsprompt.export.onnx_export import aux_statistics

    heights = np.array([[-9999, 12.5, 40.0], [np.nan, 7.25, 30.0]], np.float32)
    path = tmp_path / "dsm.tif"
    profile = {
        "driver": "GTiff", "width": 3, "height": 2, "count": 1, "dtype": "float32",
        "nodata": -9999.0, "crs": "EPSG:32632", "transform": from_origin(0, 2, 1, 1),
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(heights, 1)
    layout = InputLayout([1, 2, 3], 3, "dsm", 1)
    assert aux_statistics(path, layout) == {"min": 7.25, "max": 40.0}


def test_optical_only_export_runs_the_model_without_its_aux(tmp_path):
    """--optical-only: a 3-band graph (GeoDeep takes RGB only), the model's missing-aux path."""
    ckpt = save_tiny(tmp_path / "m.ckpt", "mobanet")
    out = tmp_path / "rgb.onnx"
    res = run("export", ckpt, "-o", out, "--optical-only")
    assert res.exit_code == 0, res.output
    model, _ = ckpt_mod.load_model_checkpoint(ckpt)
    x = raw_window(1, seed=6)[:, :3]
    got = session(out).run(None, {"input": x})[0]
    assert session(out).get_inputs()[0].shape[1] == 3
    assert np.abs(got - torch_optical(model, x)).max() <= 1e-4
    res = run("export", ckpt, "-o", out, "--optical-only", "--aux-range", 0, 1, "--overwrite")
    assert res.exit_code == 1 and "no aux modality" in res.output
