"""`rsprompt demo` at a tiny size: every output file is checked."""

import json

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from PIL import Image

from rsprompt.cli import main
from rsprompt.data.labels import ISPRS_CLASSES
from rsprompt.demo import TINY_SETTINGS, DemoError, run_demo


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = CliRunner().invoke(
        main, ["demo", "--out", str(out), "--tiny", "--minutes", "0.5", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    return out, result.output


def test_demo_writes_every_output(demo_run):
    out, _ = demo_run
    for name in (
        "scene.tif",
        "dsm.tif",
        "labels.tif",
        "model.ckpt",
        "prediction.tif",
        "prediction.qml",
        "prediction.tif.aux.xml",
        "prediction.gpkg",
        "preview.png",
        "metrics.json",
    ):
        assert (out / name).is_file(), name
        assert (out / name).stat().st_size > 0, name


def test_demo_rasters_are_georeferenced_as_documented(demo_run):
    out, _ = demo_run
    s = TINY_SETTINGS.scene_size
    with rasterio.open(out / "scene.tif") as scene, rasterio.open(out / "dsm.tif") as dsm:
        assert scene.count == 3 and scene.dtypes[0] == "uint8"
        assert (scene.width, scene.height) == (s, s)
        assert scene.crs.to_epsg() == 32633
        # The DSM comes in another CRS and at another resolution.
        assert dsm.count == 1 and dsm.dtypes[0] == "float32"
        assert dsm.crs.to_epsg() == 32632
        assert dsm.res[0] == pytest.approx(TINY_SETTINGS.dsm_resolution, rel=0.05)
        with rasterio.open(out / "prediction.tif") as pred:
            assert pred.crs == scene.crs
            assert pred.transform.almost_equals(scene.transform)
            assert (pred.width, pred.height) == (scene.width, scene.height)
            assert pred.count == 1 and pred.dtypes[0] == "uint8"
            classes = np.unique(pred.read(1))
            assert set(classes.tolist()) <= set(range(ISPRS_CLASSES.num_classes)) | {pred.nodata}
            cmap = pred.colormap(1)
            assert cmap[1][:3] == ISPRS_CLASSES.colors[1]
    qml = (out / "prediction.qml").read_text()
    assert "paletted" in qml and "building" in qml


def test_demo_metrics_and_preview(demo_run):
    out, output = demo_run
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("miou_with_dsm", "miou_optical_only", "per_class", "seconds"):
        assert key in metrics
    assert 0.0 <= metrics["miou_with_dsm"] <= 1.0
    assert 0.0 <= metrics["miou_optical_only"] <= 1.0
    assert set(metrics["per_class"]) == set(ISPRS_CLASSES.names)
    assert metrics["seconds"] > 0
    with Image.open(out / "preview.png") as im:
        assert list(im.size) == metrics["preview_size"]
        assert im.size[0] > 4 * im.size[1]  # five panels side by side
    assert "QGIS" in output and "prediction.tif" in output


def test_demo_refuses_to_replace_outputs_without_overwrite(demo_run):
    out, _ = demo_run
    with pytest.raises(DemoError, match="--overwrite"):
        run_demo(out, settings=TINY_SETTINGS, progress=False, log=lambda s: None)
    result = CliRunner().invoke(main, ["demo", "--out", str(out), "--tiny"])
    assert result.exit_code != 0 and "--overwrite" in result.output


@pytest.mark.slow
def test_full_demo_dsm_beats_optical_only(tmp_path):
    """The default demo as `make demo` runs it: the DSM must help.

    (Its wall time, 3–5 min on 2 cores, is reported in metrics.json's "seconds", not asserted.)
    """
    metrics = run_demo(tmp_path / "demo", progress=False, log=lambda _msg: None)
    assert metrics["miou_with_dsm"] > metrics["miou_optical_only"], metrics
    assert metrics["miou_with_dsm"] > 0.4, metrics
    assert json.loads((tmp_path / "demo" / "metrics.json").read_text())["seconds"] > 0


@pytest.mark.slow
def test_demo_prediction_opens_in_qgis_as_a_paletted_class_named_layer(demo_run, tmp_path):
    from test_inference_qgis import has_qgis, qgis_layer_info

    if not has_qgis():
        pytest.skip("PyQGIS (system python3) not installed")
    out, _ = demo_run
    res = qgis_layer_info(out / "prediction.tif", tmp_path)
    assert res["valid"] and res["renderer"] == "paletted", res
    assert [c[1] for c in res["classes"]] == list(ISPRS_CLASSES.names)
    with rasterio.open(out / "scene.tif") as src:
        assert res["crs"] == src.crs.to_string() and res["size"] == [src.width, src.height]
