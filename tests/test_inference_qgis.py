"""QGIS as the real client: the written map opens with class names and colours (slow)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from helpers import skip_unless_required
from rasterio.transform import from_origin

from rsprompt.data.labels import ISPRS_CLASSES
from rsprompt.inference import predict_scene
from rsprompt.models.base import SegmentationModel

SYSTEM_PYTHON = Path("/usr/bin/python3")

CHECK = """
import json, sys
from qgis.core import QgsApplication, QgsRasterLayer
app = QgsApplication([], False)
app.initQgis()
layer = QgsRasterLayer(sys.argv[1], "map")
r = layer.renderer()
out = {"valid": layer.isValid(), "renderer": r.type() if r else None,
       "crs": layer.crs().authid(), "size": [layer.width(), layer.height()]}
if r is not None and r.type() == "paletted":
    out["classes"] = [[int(c.value), c.label, c.color.name()] for c in r.classes()]
prov = layer.dataProvider()
out["nodata"] = prov.sourceNoDataValue(1) if prov.sourceHasNoDataValue(1) else None
out["pyramids"] = prov.hasPyramids()
print("RESULT " + json.dumps(out))
app.exitQgis()
"""


def qgis_layer_info(path: Path, tmp_path: Path) -> dict:
    """Open ``path`` as a raster layer in QGIS (system python3, offscreen) and describe it."""
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    script = tmp_path / "qgis_check.py"
    script.write_text(CHECK)
    proc = subprocess.run(
        [str(SYSTEM_PYTHON), str(script), str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, proc.stdout + proc.stderr
    return json.loads(lines[0][7:])


def has_qgis() -> bool:
    if not SYSTEM_PYTHON.exists():
        return False
    r = subprocess.run([str(SYSTEM_PYTHON), "-c", "import qgis.core"], capture_output=True)
    return r.returncode == 0


def need_qgis() -> None:
    """Skip without PyQGIS, or fail where it is required (``RSPROMPT_REQUIRE_QGIS=1``: CI's
    ``.ci/run`` sets it once QGIS is installed, so these checks cannot silently skip there)."""
    if not has_qgis():
        skip_unless_required(
            f"PyQGIS not installed for the system Python {SYSTEM_PYTHON}", "RSPROMPT_REQUIRE_QGIS"
        )


def test_a_missing_qgis_skips_or_fails_where_required(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "has_qgis", lambda: False)
    monkeypatch.delenv("RSPROMPT_REQUIRE_QGIS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="PyQGIS not installed"):
        need_qgis()
    monkeypatch.setenv("RSPROMPT_REQUIRE_QGIS", "1")
    with pytest.raises(pytest.fail.Exception, match="RSPROMPT_REQUIRE_QGIS=1 requires it"):
        need_qgis()


class Stripes(SegmentationModel):
    def __init__(self):
        super().__init__("test", "none", 6, 0)

    def forward(self, image, aux=None, aux_valid=None):
        return torch.einsum(
            "kc,bchw->bkhw",
            torch.randn(6, 3, generator=torch.Generator().manual_seed(0)),
            image / 255,
        )


@pytest.mark.slow
def test_qgis_opens_map_with_class_names(tmp_path):
    need_qgis()
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (3, 1100, 900), dtype=np.uint8)
    scene = tmp_path / "scene.tif"
    with rasterio.open(
        scene,
        "w",
        driver="GTiff",
        height=1100,
        width=900,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(366000, 5808000, 0.1, 0.1),
    ) as dst:
        dst.write(img)
    out = tmp_path / "map.tif"
    predict_scene(
        scene, Stripes(), out, classes=ISPRS_CLASSES, window=256, overlap=64, progress=False
    )
    res = qgis_layer_info(out, tmp_path)
    assert res["valid"] and res["renderer"] == "paletted"
    assert res["crs"] == "EPSG:32633" and res["size"] == [900, 1100]
    assert res["nodata"] == 255
    assert res["pyramids"]  # internal overviews of the COG
    assert [c[1] for c in res["classes"]] == list(ISPRS_CLASSES.names)  # from the .qml
    assert res["classes"][1][2] == "#0000ff"
    # Without the .qml QGIS falls back to the colour table (values, no names): the style matters.
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(out, bare / "map.tif")
    res = qgis_layer_info(bare / "map.tif", tmp_path)
    assert res["renderer"] == "paletted"
    assert res["classes"][1][1] != "building"
