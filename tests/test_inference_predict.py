"""predict_scene with tiny models: georeferencing, seams, aux alignment, nodata, bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from rasterio.warp import Resampling, reproject

from rsprompt.data.labels import ISPRS_CLASSES, ClassTable
from rsprompt.inference import PredictError, predict_scene
from rsprompt.inference.reader import SceneReader
from rsprompt.inference.windows import window_grid
from rsprompt.models.base import SegmentationModel

CRS = "EPSG:32633"
ORIGIN = (366000.0, 5808000.0)


def write_raster(path, data, *, crs=CRS, transform=None, nodata=None, res=1.0, origin=ORIGIN):
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    transform = transform or from_origin(origin[0], origin[1], res, res)
    profile = {
        "driver": "GTiff",
        "height": data.shape[1],
        "width": data.shape[2],
        "count": data.shape[0],
        "dtype": data.dtype.name,
        "transform": transform,
        "nodata": nodata,
        "photometric": "MINISBLACK",
    }
    if crs is not None:
        profile["crs"] = crs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
    return Path(path)


def scene_array(h, w, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), (xx + yy) % 256])
    noise = rng.integers(0, 40, size=(3, h, w))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


class Pixelwise(SegmentationModel):
    """1×1 conv on the image (+ aux where valid): tiling must not change its output at all."""

    def __init__(self, k=6, aux_channels=1, seed=0):
        super().__init__("test", "none", k, aux_channels)
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(k, 3, generator=g) * 3)
        self.wa = torch.nn.Parameter(torch.randn(k, max(aux_channels, 1), generator=g) * 3)
        self.calls = 0

    def forward(self, image, aux=None, aux_valid=None):
        self.calls += 1
        out = torch.einsum("kc,bchw->bkhw", self.w, image / 255.0)
        if aux is not None:
            out = out + torch.einsum("kc,bchw->bkhw", self.wa, aux) * aux_valid
        return out


class Constant(SegmentationModel):
    def __init__(self, k=6):
        super().__init__("test", "none", k, 0)
        self.logits = torch.linspace(-1, 1, k)

    def forward(self, image, aux=None, aux_valid=None):
        b, _, h, w = image.shape
        return self.logits.view(1, -1, 1, 1).expand(b, -1, h, w).clone()


class AuxFootprint(SegmentationModel):
    """Class 1 where the aux is valid, class 0 elsewhere (reveals the warped aux footprint)."""

    def __init__(self):
        super().__init__("test", "none", 2, 1)

    def forward(self, image, aux=None, aux_valid=None):
        b, _, h, w = image.shape
        v = aux_valid if aux_valid is not None else torch.zeros(b, 1, h, w)
        return torch.cat([1 - v, v], 1) * 10


@pytest.fixture
def scene(tmp_path):
    return write_raster(tmp_path / "scene.tif", scene_array(300, 410))


def read(path):
    with rasterio.open(path) as ds:
        return ds.read(1), ds.profile, ds


def test_output_grid_cog_and_colour_table(tmp_path, scene):
    from rio_cogeo.cogeo import cog_validate

    out = tmp_path / "out" / "map.tif"
    out.parent.mkdir()
    s = predict_scene(
        scene,
        Pixelwise(aux_channels=0),
        out,
        classes=ISPRS_CLASSES,
        window=128,
        overlap=32,
        progress=False,
    )
    with rasterio.open(scene) as src, rasterio.open(out) as ds:
        assert ds.crs == src.crs
        assert ds.transform == src.transform
        assert (ds.width, ds.height) == (src.width, src.height)
        assert ds.bounds == src.bounds
        assert ds.dtypes[0] == "uint8" and ds.nodata == 255 and ds.count == 1
        assert ds.block_shapes[0] == (512, 512)
        assert ds.compression.name.lower() == "deflate"
        cmap = ds.colormap(1)
        for i, c in enumerate(ISPRS_CLASSES.colors):
            assert cmap[i][:3] == c
        assert cmap[255][3] == 0  # nodata transparent
    valid, errors, _ = cog_validate(str(out))
    assert valid, errors
    assert sorted(p.name for p in out.parent.iterdir()) == ["map.qml", "map.tif", "map.tif.aux.xml"]
    assert sum(s.counts) == 300 * 410 and s.nodata_pixels == 0
    assert s.windows == 12
    assert abs(sum(s.percentages()) - 100) < 1e-6
    assert s.areas_m2() == [float(c) for c in s.counts]  # 1 m pixels
    assert "MPix/s" in s.format()


def test_constant_model_has_no_seams(tmp_path, scene):
    out, probs = tmp_path / "c.tif", tmp_path / "p.tif"
    predict_scene(
        scene,
        Constant(),
        out,
        classes=ISPRS_CLASSES,
        window=96,
        overlap=40,
        probabilities=probs,
        progress=False,
    )
    cls, _, _ = read(out)
    assert np.all(cls == 5)
    with rasterio.open(probs) as ds:
        p = ds.read()
        assert ds.descriptions == ISPRS_CLASSES.names
    expected = np.rint(torch.softmax(torch.linspace(-1, 1, 6), 0).numpy() * 255)
    for k in range(6):
        assert np.all(p[k] == expected[k])  # identical everywhere: no seam, no edge effect


def test_tiling_equals_untiled_forward(tmp_path, scene):
    """A pixel-wise model gives the same probabilities tiled and blended as on the whole scene."""
    model = Pixelwise(aux_channels=0)
    out, probs = tmp_path / "m.tif", tmp_path / "p.tif"
    predict_scene(
        scene,
        model,
        out,
        classes=ISPRS_CLASSES,
        window=100,
        overlap=30,
        batch_size=3,
        probabilities=probs,
        progress=False,
    )
    with rasterio.open(scene) as src:
        img = torch.from_numpy(src.read().astype(np.float32))[None]
    with torch.no_grad():
        full = torch.softmax(model(img), 1)[0].numpy()
    with rasterio.open(probs) as ds:
        p = ds.read().astype(np.float32) / 255
    assert np.abs(p - full).max() <= 0.5 / 255 + 1e-4
    cls, _, _ = read(out)
    agree = (cls == full.argmax(0)).mean()
    assert agree > 0.999  # only near-ties may flip


def test_tta_with_flip_equivariant_model(tmp_path, scene):
    model = Pixelwise(aux_channels=0)
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    predict_scene(scene, model, a, classes=ISPRS_CLASSES, window=128, overlap=32, progress=False)
    model.calls = 0
    predict_scene(
        scene, model, b, classes=ISPRS_CLASSES, window=128, overlap=32, tta=True, progress=False
    )
    assert model.calls == 4 * 3  # 12 windows in batches of 4, four flips each
    assert (read(a)[0] == read(b)[0]).mean() > 0.999


def test_scene_smaller_than_window(tmp_path):
    scene = write_raster(tmp_path / "s.tif", scene_array(37, 53))
    seen = []

    class Recorder(Pixelwise):
        def forward(self, image, aux=None, aux_valid=None):
            seen.append(tuple(image.shape[-2:]))
            return super().forward(image, aux, aux_valid)

    out = tmp_path / "o.tif"
    predict_scene(
        scene,
        Recorder(aux_channels=0),
        out,
        classes=ISPRS_CLASSES,
        window=64,
        overlap=16,
        progress=False,
    )
    assert seen == [(64, 64)]  # padded inside the model input
    cls, _, _ = read(out)
    assert cls.shape == (37, 53) and cls.max() < 6


def test_aux_other_crs_resolution_extent_and_partial_coverage(tmp_path):
    # Scene: 1 m UTM 33N. Aux: 2.5 m in EPSG:3035 (LAEA Europe), covering part of the scene,
    # with a nodata strip inside.
    scene = write_raster(tmp_path / "s.tif", scene_array(240, 320))
    from pyproj import Transformer

    tr = Transformer.from_crs(CRS, "EPSG:3035", always_xy=True)
    x0, y0 = tr.transform(ORIGIN[0] + 100, ORIGIN[1] - 40)
    dsm = np.full((80, 60), 30.0, np.float32) + np.random.default_rng(1).random(
        (80, 60), np.float32
    )
    dsm[:, 20:24] = -9999.0
    aux = write_raster(
        tmp_path / "dsm.tif",
        dsm,
        crs="EPSG:3035",
        transform=from_origin(x0, y0, 2.5, 2.5),
        nodata=-9999.0,
    )
    out = tmp_path / "o.tif"
    s = predict_scene(
        scene,
        AuxFootprint(),
        out,
        aux=aux,
        aux_channels=1,
        window=96,
        overlap=24,
        classes=ClassTable(("no aux", "aux"), ((0, 0, 0), (255, 0, 0))),
        progress=False,
    )
    cls, _, _ = read(out)
    # Independent footprint: reproject the aux validity onto the scene grid.
    valid = np.zeros((240, 320), np.float32)
    with rasterio.open(aux) as a, rasterio.open(scene) as sc:
        reproject(
            (a.read(1) != -9999).astype(np.float32),
            valid,
            src_transform=a.transform,
            src_crs=a.crs,
            dst_transform=sc.transform,
            dst_crs=sc.crs,
            resampling=Resampling.nearest,
        )
    assert 0.1 < cls.mean() < 0.9  # partial coverage
    assert (cls == (valid > 0.5)).mean() > 0.97
    assert s.counts[1] > 0 and s.counts[0] > 0


def test_scene_nodata_becomes_output_nodata(tmp_path):
    img = scene_array(200, 200)
    img[:, :, :30] = 0
    scene = write_raster(tmp_path / "s.tif", img, nodata=0)
    out = tmp_path / "o.tif"
    s = predict_scene(
        scene,
        Pixelwise(aux_channels=0),
        out,
        classes=ISPRS_CLASSES,
        window=64,
        overlap=16,
        progress=False,
    )
    cls, _, _ = read(out)
    assert np.all(cls[:, :30] == 255) and np.all(cls[:, 30:] < 6)
    assert s.nodata_pixels == 200 * 30


def test_scene_wide_aux_statistics_not_per_window(tmp_path):
    scene = write_raster(tmp_path / "s.tif", scene_array(200, 260))
    dsm = np.linspace(0, 100, 200 * 260, dtype=np.float32).reshape(200, 260)
    dsm[:10] = -1
    aux = write_raster(tmp_path / "d.tif", dsm, nodata=-1)
    seen = []

    class MinMax:
        needs_aux_stats = True
        ground_cell_px = None

        def fit(self, stats):
            self.lo, self.hi = stats.min[0], stats.max[0]

        def __call__(self, image, aux, aux_valid, offset):
            seen.append(offset)
            return image, (aux - self.lo) / (self.hi - self.lo), aux_valid

    norm = MinMax()
    with pytest.warns(UserWarning, match="nDSM"):
        s = predict_scene(
            scene,
            Pixelwise(),
            tmp_path / "o.tif",
            aux=aux,
            normalize=norm,
            classes=ISPRS_CLASSES,
            window=64,
            overlap=16,
            train_patch_size=32,
            progress=False,
        )
    assert norm.lo == pytest.approx(dsm[10:].min()) and norm.hi == pytest.approx(100.0)
    assert s.aux_stats["count"] == 190 * 260
    assert len(seen) == s.windows and (0, 0) in seen


def test_uint16_for_many_classes(tmp_path):
    scene = write_raster(tmp_path / "s.tif", scene_array(40, 50))
    k = 300
    table = ClassTable(tuple(f"c{i}" for i in range(k)), tuple((i % 256, 0, 0) for i in range(k)))
    out = tmp_path / "o.tif"
    predict_scene(
        scene,
        Pixelwise(k=k, aux_channels=0),
        out,
        classes=table,
        window=32,
        overlap=8,
        progress=False,
    )
    with rasterio.open(out) as ds:
        assert ds.dtypes[0] == "uint16" and ds.nodata == 65535
        assert ds.read(1).max() < k


def test_qml_and_rat_sidecars(tmp_path, scene):
    out = tmp_path / "m.tif"
    s = predict_scene(
        scene,
        Pixelwise(aux_channels=0),
        out,
        classes=ISPRS_CLASSES,
        window=128,
        overlap=32,
        progress=False,
    )
    qml = ET.parse(out.with_suffix(".qml")).getroot()
    renderer = qml.find("./pipe/rasterrenderer")
    assert renderer.get("type") == "paletted" and renderer.get("band") == "1"
    entries = renderer.findall("./colorPalette/paletteEntry")
    assert [e.get("label") for e in entries] == list(ISPRS_CLASSES.names)
    assert [e.get("value") for e in entries] == [str(i) for i in range(6)]
    assert entries[1].get("color") == "#0000ff"
    pam = ET.parse(f"{out}.aux.xml").getroot()
    rat = pam.find("./PAMRasterBand/GDALRasterAttributeTable")
    assert rat.get("tableType") == "thematic"
    names = [f.findtext("Name") for f in rat.findall("FieldDefn")]
    assert names == ["Value", "Class", "Red", "Green", "Blue", "Count"]
    usages = [f.findtext("Usage") for f in rat.findall("FieldDefn")]
    assert usages == ["5", "2", "6", "7", "8", "1"]
    rows = [[c.text for c in r.findall("F")] for r in rat.findall("Row")]
    assert [r[1] for r in rows] == list(ISPRS_CLASSES.names)
    assert [int(r[5]) for r in rows] == s.counts
    assert rows[1][2:5] == ["0", "0", "255"]


def test_probabilities_and_vectors(tmp_path):
    import geopandas as gpd  # a dependency of rsprompt: missing is a failure, not a skip

    scene = write_raster(tmp_path / "s.tif", scene_array(120, 150))
    out, probs, vec = tmp_path / "m.tif", tmp_path / "p.tif", tmp_path / "v.gpkg"
    s = predict_scene(
        scene,
        Pixelwise(aux_channels=0),
        out,
        classes=ISPRS_CLASSES,
        window=64,
        overlap=16,
        probabilities=probs,
        vectors=vec,
        progress=False,
    )
    with rasterio.open(probs) as ds:
        p = ds.read().astype(int)
        assert ds.count == 6 and ds.dtypes[0] == "uint8"
        assert ds.descriptions == ISPRS_CLASSES.names
        assert ds.transform == rasterio.open(scene).transform
    assert np.abs(p.sum(0) - 255).max() <= 4
    frame = gpd.read_file(vec)
    assert {"class_id", "class_name"} <= set(frame.columns)
    assert frame.crs == rasterio.crs.CRS.from_string(CRS)
    assert abs(frame.area.sum() - 120 * 150) < 1e-6
    for cid, name in zip(frame.class_id, frame.class_name):
        assert ISPRS_CLASSES.names[cid] == name
    area = frame.assign(a=frame.area).groupby("class_id").a.sum()
    for cid, a in area.items():
        assert a == pytest.approx(s.counts[cid])


# --------------------------------------------------------------------------- bad inputs
def _listing(d):
    return sorted(p.name for p in Path(d).iterdir())


def test_not_georeferenced_scene(tmp_path):
    bad = write_raster(
        tmp_path / "plain.tif", scene_array(50, 50), crs=None, transform=rasterio.Affine.identity()
    )
    before = _listing(tmp_path)
    with pytest.raises(PredictError, match=r"plain\.tif.*not georeferenced"):
        predict_scene(bad, Constant(), tmp_path / "o.tif", classes=ISPRS_CLASSES, progress=False)
    assert _listing(tmp_path) == before


def test_corrupt_and_missing_files(tmp_path, scene):
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"II*\x00" + b"\x00garbage" * 50)
    trunc = tmp_path / "trunc.tif"
    trunc.write_bytes(scene.read_bytes()[: scene.stat().st_size // 2])
    before = _listing(tmp_path)
    for bad, msg in [
        (junk, "junk.tif"),
        (trunc, "trunc.tif"),
        (tmp_path / "nope.tif", "not found"),
    ]:
        with pytest.raises(PredictError, match=msg):
            predict_scene(
                bad, Constant(), tmp_path / "o.tif", classes=ISPRS_CLASSES, progress=False
            )
        with pytest.raises(PredictError, match=msg):
            predict_scene(
                scene,
                Pixelwise(),
                tmp_path / "o.tif",
                aux=bad,
                classes=ISPRS_CLASSES,
                progress=False,
            )
    assert _listing(tmp_path) == before


def test_no_overlap_and_band_counts(tmp_path, scene):
    far = write_raster(
        tmp_path / "far.tif", np.ones((20, 20), np.float32), origin=(ORIGIN[0] + 10_000, ORIGIN[1])
    )
    two = write_raster(tmp_path / "two.tif", np.ones((2, 20, 20), np.float32))
    before = _listing(tmp_path)
    with pytest.raises(PredictError, match=r"far\.tif does not overlap"):
        predict_scene(
            scene, Pixelwise(), tmp_path / "o.tif", aux=far, classes=ISPRS_CLASSES, progress=False
        )
    with pytest.raises(PredictError, match=r"two\.tif has 2 band\(s\) but the model takes 1"):
        predict_scene(
            scene,
            Pixelwise(),
            tmp_path / "o.tif",
            aux=two,
            aux_channels=1,
            classes=ISPRS_CLASSES,
            progress=False,
        )
    with pytest.raises(PredictError, match=r"scene\.tif has 3 band\(s\) but the model takes 4"):
        predict_scene(
            scene,
            Pixelwise(),
            tmp_path / "o.tif",
            expected_bands=4,
            classes=ISPRS_CLASSES,
            progress=False,
        )
    with pytest.raises(PredictError, match="outputs 6 classes but the class table has 2"):
        predict_scene(
            scene,
            Pixelwise(),
            tmp_path / "o.tif",
            classes=ClassTable(("a", "b"), ((0, 0, 0), (1, 1, 1))),
            progress=False,
        )
    assert _listing(tmp_path) == before


def test_overwrite_and_stale_sidecars(tmp_path, scene):
    out = tmp_path / "m.tif"
    predict_scene(
        scene, Constant(), out, classes=ISPRS_CLASSES, window=128, overlap=32, progress=False
    )
    out.with_suffix(".qml").write_text("stale")
    Path(f"{out}.ovr").write_text("stale overviews")
    with pytest.raises(PredictError, match=r"m\.tif exists"):
        predict_scene(scene, Constant(), out, classes=ISPRS_CLASSES, progress=False)
    assert out.with_suffix(".qml").read_text() == "stale"
    predict_scene(
        scene,
        Pixelwise(aux_channels=0),
        out,
        classes=ISPRS_CLASSES,
        window=128,
        overlap=32,
        overwrite=True,
        progress=False,
    )
    assert "paletted" in out.with_suffix(".qml").read_text()
    assert not Path(f"{out}.ovr").exists()
    assert len(np.unique(read(out)[0])) > 1  # the new map, not the constant one


def test_error_midway_leaves_nothing(tmp_path, scene):
    class Fails(Pixelwise):
        def forward(self, image, aux=None, aux_valid=None):
            if self.calls >= 2:
                raise RuntimeError("boom")
            return super().forward(image, aux, aux_valid)

    old = tmp_path / "m.tif"
    old.write_bytes(b"previous map")
    before = _listing(tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        predict_scene(
            scene,
            Fails(aux_channels=0),
            old,
            classes=ISPRS_CLASSES,
            window=64,
            overlap=16,
            batch_size=2,
            probabilities=tmp_path / "p.tif",
            overwrite=True,
            progress=False,
        )
    assert _listing(tmp_path) == before  # no temp file, no partial output
    assert old.read_bytes() == b"previous map"  # the old output is untouched

    def bad_norm(image, aux, aux_valid, offset):
        raise ValueError("normaliser failed")

    with pytest.raises(ValueError, match="normaliser failed"):
        predict_scene(
            scene,
            Pixelwise(aux_channels=0),
            tmp_path / "n.tif",
            normalize=bad_norm,
            classes=ISPRS_CLASSES,
            progress=False,
        )
    assert _listing(tmp_path) == before


def test_memory_does_not_grow_with_scene_height(tmp_path):
    """Peak Python/numpy allocations barely change for a scene 8× taller.

    A whole-scene probability buffer would add ``K·256·3584·4`` bytes (22 MB for
    6 classes) between the two scenes; the streaming writer must stay within a
    small fraction of that. (The absolute peak varies by ~0.5 MB from run to run
    with thread timing, so the bound is on growth, not on a ratio.)
    """
    peaks = []
    for h in (512, 4096):
        scene = write_raster(tmp_path / f"s{h}.tif", scene_array(h, 256))
        tracemalloc.start()
        predict_scene(
            scene,
            Pixelwise(aux_channels=0),
            tmp_path / f"o{h}.tif",
            classes=ISPRS_CLASSES,
            window=64,
            overlap=16,
            progress=False,
        )
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    whole_scene_probs = len(ISPRS_CLASSES.colors) * 256 * (4096 - 512) * 4
    assert peaks[1] - peaks[0] < 0.1 * whole_scene_probs, peaks


#: Run in a fresh process: predict a scene of ``H×W`` px and print the growth of the peak RSS
#: (everything: numpy, torch's CPU allocator, GDAL) above the RSS just before predict_scene.
RSS_PROBE = """
import gc, json, sys
from pathlib import Path
from test_inference_predict import Pixelwise, scene_array, write_raster
from rsprompt.data.labels import ISPRS_CLASSES
from rsprompt.inference import predict_scene


def status_bytes(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024


h, w, out = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
kw = dict(classes=ISPRS_CLASSES, window=64, overlap=16, progress=False)
# Warm-up: lazy imports, GDAL drivers and torch kernels load before the measure.
warm = write_raster(out / "warm.tif", scene_array(128, 128))
predict_scene(warm, Pixelwise(aux_channels=0), out / "warm_map.tif", **kw)
scene = write_raster(out / "scene.tif", scene_array(h, w))
model = Pixelwise(aux_channels=0)
gc.collect()
before = status_bytes("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current RSS
predict_scene(scene, model, out / "map.tif", **kw)
print("RESULT " + json.dumps({"growth": status_bytes("VmHWM:") - before}))
"""


def _peak_rss_growth(tmp_path: Path, height: int, width: int) -> int:
    """Bytes the peak RSS of a fresh process grows by while it predicts a ``height×width`` scene."""
    folder = tmp_path / f"rss{height}"
    folder.mkdir()
    tests = str(Path(__file__).resolve().parent)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "GDAL_CACHEMAX": "1",  # 1 MB: GDAL's block cache (5 % of RAM by default) stays out of it
        "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [sys.executable, "-c", RSS_PROBE, str(height), str(width), str(folder)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(lines[0][7:])["growth"]


@pytest.mark.skipif(sys.platform != "linux", reason="reads the peak RSS from /proc/self (Linux)")
def test_peak_memory_with_torch_does_not_grow_with_scene_height(tmp_path):
    """The peak RSS of predict_scene barely changes for a scene 4× taller.

    tracemalloc (above) sees numpy, not torch's CPU allocator; the process's peak RSS sees both.
    A whole-scene probability tensor kept in torch (``K·W·ΔH·4`` = 6·512·3072·4 bytes = 38 MB
    more for the taller scene) would add all of it; what streaming adds (GDAL writing the COG
    and its overviews, measured 5-8 MB) stays well under half of it.
    """
    width, small, tall = 512, 1024, 4096
    growth = [_peak_rss_growth(tmp_path, h, width) for h in (small, tall)]
    whole_scene_probs = len(ISPRS_CLASSES.colors) * width * (tall - small) * 4
    assert growth[1] - growth[0] < 0.4 * whole_scene_probs, growth


def test_reader_validity_and_alpha_is_not_a_mask(tmp_path):
    img = np.concatenate([scene_array(30, 30), np.zeros((1, 30, 30), np.uint8)])
    path = tmp_path / "rgbn.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=30,
        width=30,
        count=4,
        dtype="uint8",
        crs=CRS,
        transform=from_origin(*ORIGIN, 1, 1),
    ) as dst:  # alpha by default
        dst.write(img)
    with SceneReader(path) as r:
        from rsprompt.inference.windows import Window

        image, valid = r.read_scene(Window(0, 0, 30, 30))
        assert image.shape == (4, 30, 30) and valid.all()


def test_potsdam_crop_without_dsm(tmp_path, shared_data):
    """Real Potsdam crop, no DSM: the aux-missing path; the map has the scene's grid."""
    from rio_cogeo.cogeo import cog_validate

    scenes = sorted((shared_data / "isprs/potsdam/derived").glob("*_img.tif"))
    if not scenes:
        pytest.skip("no Potsdam crop")
    out = tmp_path / "potsdam.tif"
    model = Pixelwise(aux_channels=1)
    s = predict_scene(
        scenes[0], model, out, classes=ISPRS_CLASSES, window=256, overlap=64, progress=False
    )
    with rasterio.open(scenes[0]) as src, rasterio.open(out) as ds:
        assert (ds.crs, ds.transform, ds.shape) == (src.crs, src.transform, src.shape)
        assert ds.colormap(1)[1][:3] == (0, 0, 255)
    assert cog_validate(str(out))[0]
    assert sum(s.counts) == 512 * 512
    assert s.pixel_area_m2 == pytest.approx(0.05 * 0.05)


def test_vaihingen_crop_is_not_georeferenced(tmp_path, shared_data):
    scenes = sorted((shared_data / "isprs/vaihingen/derived").glob("*_img.tif"))
    if not scenes:
        pytest.skip("no Vaihingen crop")
    with pytest.raises(PredictError, match=rf"{scenes[0].name} is not georeferenced"):
        predict_scene(
            scenes[0], Constant(), tmp_path / "v.tif", classes=ISPRS_CLASSES, progress=False
        )
    assert list(tmp_path.iterdir()) == []


def test_column_bands_give_the_same_map(tmp_path):
    """A scene too wide for the memory budget is split in column bands: identical output."""
    from rsprompt.inference.windows import column_bands

    assert column_bands(1300, 128, 8 * 4 * 640, 15 * 2**20) == [(0, 512), (512, 1024), (1024, 1300)]
    assert column_bands(1300, 128, 8 * 4 * 640, 512 * 2**20) == [(0, 1300)]
    scene = write_raster(tmp_path / "s.tif", scene_array(140, 1300))
    model = Pixelwise(aux_channels=0)
    outs = {}
    for mb in (512, 15):
        out, probs = tmp_path / f"m{mb}.tif", tmp_path / f"p{mb}.tif"
        s = predict_scene(
            scene,
            model,
            out,
            classes=ISPRS_CLASSES,
            window=128,
            overlap=32,
            probabilities=probs,
            memory_mb=mb,
            progress=False,
        )
        outs[mb] = (read(out)[0], rasterio.open(probs).read(), s)
    np.testing.assert_array_equal(outs[512][0], outs[15][0])
    assert np.abs(outs[512][1].astype(int) - outs[15][1]).max() <= 1
    assert outs[512][2].counts == outs[15][2].counts
    assert outs[15][2].windows > outs[512][2].windows  # border windows computed per band


def test_source_and_warped_aux_statistics_agree(tmp_path):
    scene = write_raster(tmp_path / "s.tif", scene_array(200, 240))
    from pyproj import Transformer

    tr = Transformer.from_crs(CRS, "EPSG:32632", always_xy=True)
    x0, y0 = tr.transform(ORIGIN[0] - 20, ORIGIN[1] + 20)
    dsm = np.linspace(10, 90, 140 * 140, dtype=np.float32).reshape(140, 140)
    aux = write_raster(
        tmp_path / "d.tif", dsm, crs="EPSG:32632", transform=from_origin(x0, y0, 2.0, 2.0)
    )
    with SceneReader(scene, aux, aux_channels=1) as r:
        fast = r.aux_statistics()  # the aux's own pixels inside the scene footprint
        warped = r.aux_statistics(ground_cell=4)  # the warped aux on the scene grid
    span = 80.0
    assert abs(fast.min[0] - warped.min[0]) < 0.02 * span
    assert abs(fast.max[0] - warped.max[0]) < 0.02 * span
    assert 10.0 < fast.min[0] and fast.max[0] < 90.0  # only pixels inside the scene
    assert warped.cell_min.shape == (50, 60)


def test_checkpoint_ndsm_ground_is_scene_wide(tmp_path):
    """nDSM normalisation: the ground grid is built once from streamed cell minima."""
    from rsprompt.data.normalize import DSMNormalizer, Normalization, OpticalNormalizer
    from rsprompt.inference.from_checkpoint import CheckpointNormalizer

    scene = write_raster(tmp_path / "s.tif", scene_array(160, 200), res=0.5)
    yy, xx = np.mgrid[0:160, 0:200]
    dsm = (100 + 0.02 * xx).astype(np.float32)  # sloping ground
    building = (yy // 40 % 2 == 1) & (xx // 50 % 2 == 1)
    dsm[building] += 12.0
    aux = write_raster(tmp_path / "d.tif", dsm, res=0.5)

    class Tall(SegmentationModel):
        def __init__(self):
            super().__init__("test", "none", 2, 1)

        def forward(self, image, aux=None, aux_valid=None):
            return torch.cat([0.15 - aux, aux - 0.15], 1) * 100  # class 1 above 6 m

    norm = CheckpointNormalizer(
        Normalization(OpticalNormalizer(), DSMNormalizer("ndsm", cell_m=2.0, window_m=40.0)), 0.5
    )
    assert norm.ground_cell_px == 4 and norm.needs_aux_stats
    out = tmp_path / "o.tif"
    predict_scene(
        scene,
        Tall(),
        out,
        aux=aux,
        normalize=norm,
        window=64,
        overlap=16,
        classes=ClassTable(("ground", "tall"), ((0, 0, 0), (255, 0, 0))),
        progress=False,
    )
    cls = read(out)[0]
    assert (cls == building).mean() > 0.98


def test_row_strip_reader_gives_the_windows_of_direct_reads(tmp_path):
    """Windows cut from a row strip (read and warped once) equal windows read one by one."""
    from pyproj import Transformer

    from rsprompt.inference.windows import window_grid

    scene = write_raster(tmp_path / "s.tif", scene_array(200, 240))
    tr = Transformer.from_crs(CRS, "EPSG:32632", always_xy=True)
    x0, y0 = tr.transform(ORIGIN[0] - 20, ORIGIN[1] + 20)
    rng = np.random.default_rng(1)
    dsm = rng.normal(50, 10, (120, 140)).astype(np.float32)
    aux = write_raster(
        tmp_path / "d.tif", dsm, crs="EPSG:32632", transform=from_origin(x0, y0, 2.0, 2.0)
    )
    with SceneReader(scene, aux, aux_channels=1) as r:
        strips = r.row_reader()
        wins = window_grid(r.height, r.width, 64, 16)
        span = {}
        for w in wins:
            lo, hi = span.get(w.row, (w.col, w.col_end))
            span[w.row] = (min(lo, w.col), max(hi, w.col_end))
        for w in wins:
            img, valid, a, av = strips.read(w, *span[w.row])
            img_d, valid_d = r.read_scene(w)
            a_d, av_d = r.read_aux(w)
            np.testing.assert_array_equal(img, img_d)
            np.testing.assert_array_equal(valid, valid_d)
            np.testing.assert_array_equal(av, av_d)
            np.testing.assert_allclose(a, a_d, atol=1e-3 * 50)
            img[:] = -1  # a normaliser working in place must not touch the next window
        img, *_ = strips.read(wins[1], *span[wins[1].row])
        assert (img >= 0).all()


def _minmax_checkpoint_normalizer():
    from rsprompt.data.normalize import DSMNormalizer, Normalization, OpticalNormalizer
    from rsprompt.inference.from_checkpoint import CheckpointNormalizer

    return CheckpointNormalizer(Normalization(OpticalNormalizer(), DSMNormalizer("minmax")), 1.0)


def _dsm_scene(tmp_path, h=200, w=260):
    scene = write_raster(tmp_path / "s.tif", scene_array(h, w))
    yy, xx = np.mgrid[0:h, 0:w]
    dsm = (20 + 0.1 * xx + 8 * ((yy // 30 + xx // 40) % 2)).astype(np.float32)
    dsm[:12, :50] = -9999.0
    return scene, write_raster(tmp_path / "d.tif", dsm, nodata=-9999.0)


def _dsm_scene_maps(tmp_path, scene, aux, stem, **kw):
    """Predict ``scene`` + ``aux`` with a Pixelwise model (window 64, overlap 16).

    Returns:
        ``(summary, class map, probabilities)``.
    """
    out, probs = tmp_path / f"{stem}.tif", tmp_path / f"{stem}_p.tif"
    s = predict_scene(
        scene,
        Pixelwise(),
        out,
        aux=aux,
        aux_channels=1,
        classes=ISPRS_CLASSES,
        window=64,
        overlap=16,
        probabilities=probs,
        progress=False,
        **kw,
    )
    with rasterio.open(probs) as ds:
        return s, read(out)[0], ds.read()


def test_pixelwise_normaliser_runs_once_per_window_row_with_the_same_result(tmp_path):
    """A pixelwise normaliser is applied per row strip; the maps equal per-window normalisation."""
    scene, aux = _dsm_scene(tmp_path)
    calls = {"strip": 0, "window": 0}

    class Counting:
        """The checkpoint normaliser, counted; ``pixelwise`` decides how predict_scene calls it."""

        def __init__(self, pixelwise, key):
            self.inner = _minmax_checkpoint_normalizer()
            self.pixelwise, self.key = pixelwise, key
            self.needs_aux_stats, self.ground_cell_px = True, None

        def fit(self, stats):
            self.inner.fit(stats)

        def __call__(self, image, aux, aux_valid, offset):
            calls[self.key] += 1
            return self.inner(image, aux, aux_valid, offset)

    outs = {}
    for key, pixelwise in (("strip", True), ("window", False)):
        s, *outs[key] = _dsm_scene_maps(
            tmp_path, scene, aux, key, normalize=Counting(pixelwise, key)
        )
    rows = len({w.row for w in window_grid(200, 260, 64, 16)})
    assert calls == {"strip": rows, "window": s.windows}
    np.testing.assert_array_equal(outs["strip"][0], outs["window"][0])
    assert np.abs(outs["strip"][1].astype(int) - outs["window"][1].astype(int)).max() <= 1


def test_inline_pipeline_equals_overlapped(tmp_path):
    """overlap_io=False (everything on the calling thread) writes the same maps."""
    scene, aux = _dsm_scene(tmp_path)
    maps = []
    for overlap_io in (True, False):
        _, *m = _dsm_scene_maps(
            tmp_path,
            scene,
            aux,
            str(overlap_io),
            normalize=_minmax_checkpoint_normalizer(),
            batch_size=3,
            overlap_io=overlap_io,
        )
        maps.append(m)
    np.testing.assert_array_equal(maps[0][0], maps[1][0])
    np.testing.assert_array_equal(maps[0][1], maps[1][1])


def test_coarse_aux_is_upsampled_from_a_coarser_warp(tmp_path):
    """A DSM 2.5× coarser in another CRS: warped onto a 2× coarser grid, then upsampled.

    On a planar DSM bilinear interpolation is exact, so both routes give the same heights; the
    validity of the upsampled route never leaks values from nodata pixels.
    """
    from pyproj import Transformer

    from rsprompt.inference.windows import Window

    scene = write_raster(tmp_path / "s.tif", scene_array(180, 220))
    tr = Transformer.from_crs(CRS, "EPSG:32632", always_xy=True)
    x0, y0 = tr.transform(ORIGIN[0] - 15, ORIGIN[1] + 15)
    yy, xx = np.mgrid[0:90, 0:110]
    plane = (40 + 0.5 * xx - 0.25 * yy).astype(np.float32)
    plane[30:40, 50:60] = -9999.0
    aux = write_raster(
        tmp_path / "d.tif",
        plane,
        crs="EPSG:32632",
        transform=from_origin(x0, y0, 2.5, 2.5),
        nodata=-9999.0,
    )
    win = Window(0, 0, 180, 220)
    with SceneReader(scene, aux, aux_channels=1) as coarse_route:
        assert coarse_route.aux_factor == 2
        a_up, v_up = coarse_route.read_aux(win)
        part, part_valid = coarse_route.read_aux(Window(37, 51, 64, 80))
    with SceneReader(scene, aux, aux_channels=1, upsample_coarse_aux=False) as direct:
        assert direct.aux_factor == 1
        a_d, v_d = direct.read_aux(win)
    both = v_up & v_d
    assert both.mean() > 0.9
    diff = np.abs(a_up[0] - a_d[0])[both]  # heights 12 to 95
    # Equal (to float rounding) except next to the edges of the aux's coverage and nodata,
    # where GDAL renormalises over the valid neighbours.
    assert np.percentile(diff, 99) < 1e-3 and diff.max() < 0.2
    assert (v_up & ~v_d).sum() <= 0.002 * v_up.size  # no leak from nodata
    assert (a_up[0][v_up] > 1.0).all() and (a_up[0][~v_up] == 0).all()
    # A window read on its own equals the same window cut from a bigger read.
    np.testing.assert_array_equal(part_valid, v_up[37:101, 51:131])
    np.testing.assert_allclose(part, a_up[:, 37:101, 51:131], atol=1e-3)


def test_aux_at_scene_resolution_or_nearest_is_warped_directly(tmp_path):
    scene = write_raster(tmp_path / "s.tif", scene_array(60, 60))
    aux = write_raster(tmp_path / "d.tif", np.ones((60, 60), np.float32), res=1.5)
    with SceneReader(scene, aux) as r:
        assert r.aux_factor == 1  # 1.5× coarser: not a whole factor of 2 or more
    coarse = write_raster(tmp_path / "c.tif", np.ones((20, 20), np.float32), res=4.0)
    with SceneReader(scene, coarse) as r:
        assert r.aux_factor == 4
    with SceneReader(scene, coarse, aux_resampling=Resampling.nearest) as r:
        assert r.aux_factor == 1


def test_aux_on_the_scene_grid_is_read_without_warping(tmp_path):
    """Same CRS and pixel size, origin whole pixels away: read as is, placed by the offset."""
    from rsprompt.inference.windows import Window

    scene = write_raster(tmp_path / "s.tif", scene_array(80, 100))
    rng = np.random.default_rng(3)
    same = rng.normal(50, 10, (80, 100)).astype(np.float32)
    same[5, 7] = -1.0
    aux = write_raster(tmp_path / "d.tif", same, nodata=-1.0)
    with SceneReader(scene, aux) as r:
        assert r._aligned == (0, 0)
        a, v = r.read_aux(Window(0, 0, 80, 100))
    np.testing.assert_array_equal(a[0][v], same[v])
    assert not v[5, 7] and v.sum() == 80 * 100 - 1 and a[0, 5, 7] == 0
    # Smaller aux starting 10 px right and 6 px down of the scene's origin.
    part = rng.normal(50, 10, (40, 50)).astype(np.float32)
    shifted = write_raster(
        tmp_path / "p.tif", part, origin=(ORIGIN[0] + 10.0, ORIGIN[1] - 6.0), nodata=-1.0
    )
    with SceneReader(scene, shifted) as r:
        assert r._aligned == (-6, -10)
        a, v = r.read_aux(Window(0, 0, 80, 100))
        a2, v2 = r.read_aux(Window(30, 40, 30, 40))  # crosses the aux's bottom-right corner
    assert v.sum() == 40 * 50 and v[6:46, 10:60].all()
    np.testing.assert_array_equal(a[0, 6:46, 10:60], part)
    np.testing.assert_array_equal(v2, v[30:60, 40:80])
    np.testing.assert_array_equal(a2, a[:, 30:60, 40:80])
    # Half a pixel off the grid: warped (bilinear) instead.
    half = write_raster(tmp_path / "h.tif", same, origin=(ORIGIN[0] + 0.5, ORIGIN[1]))
    with SceneReader(scene, half) as r:
        assert r._aligned is None


def test_aux_on_the_scene_grid_honours_an_internal_mask(tmp_path):
    from rsprompt.inference.windows import Window

    scene = write_raster(tmp_path / "s.tif", scene_array(32, 32))
    path = tmp_path / "m.tif"
    profile = {
        "driver": "GTiff",
        "height": 32,
        "width": 32,
        "count": 1,
        "dtype": "float32",
        "crs": CRS,
        "transform": from_origin(*ORIGIN, 1.0, 1.0),
    }
    mask = np.full((32, 32), 255, np.uint8)
    mask[:, :8] = 0
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        dst.write(np.full((1, 32, 32), 7.0, np.float32))
        dst.write_mask(mask)
    with SceneReader(scene, path) as r:
        assert r._aligned == (0, 0)
        a, v = r.read_aux(Window(0, 0, 32, 32))
    assert not v[:, :8].any() and v[:, 8:].all() and (a[0, :, 8:] == 7).all()


def test_running_aux_statistics_match_numpy_over_chunks():
    """Streamed per-band statistics equal numpy's on the whole array, even with std ≪ mean."""
    from rsprompt.inference.reader import _RunningStats

    rng = np.random.default_rng(0)
    offsets = np.array([[3000.0], [-20.0]])
    data = (rng.normal(0, 0.05, (2, 100_000)) + offsets).astype(np.float32)
    stats = _RunningStats(2)
    for chunk in np.array_split(data, [0, 7, 40_000, 40_001, 99_000], axis=1):
        stats.add(chunk)  # includes empty and one-value chunks
    out = stats.result()
    ref = data.astype(np.float64)
    assert out.count == 100_000
    np.testing.assert_allclose(out.mean, ref.mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(out.std, ref.std(axis=1), rtol=1e-4)
    assert out.min == ref.min(axis=1).tolist() and out.max == ref.max(axis=1).tolist()


@pytest.mark.parametrize("failing", ["read", "compute", "blend"])
def test_overlapped_pipeline_raises_the_first_error_and_never_hangs(failing):
    """An error in any stage stops all three threads and is raised, even with full queues."""
    import threading
    import time

    from rsprompt.inference.predictor import _run_overlapped

    def read_batches():
        for i in range(100):
            if failing == "read" and i == 5:
                raise RuntimeError("read failed")
            yield i

    def compute(i):
        if failing == "compute" and i == 5:
            raise RuntimeError("compute failed")
        return i

    def blend(i):
        time.sleep(0.05)  # slower than the other stages: the queues fill up first
        if failing == "blend" and i == 3:
            raise RuntimeError("blend failed")

    outcome = {}

    def run():
        try:
            _run_overlapped(read_batches, compute, blend, 2)
            outcome["error"] = None
        except RuntimeError as exc:
            outcome["error"] = str(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), "the pipeline hung"
    assert outcome["error"] == f"{failing} failed"
    assert not [th for th in threading.enumerate() if th.name.startswith("rsprompt-")]


@pytest.mark.parametrize(("side", "f"), [(256, 16), (61, 3)])
def test_coarse_aux_covering_the_scene_leaves_no_pixel_without_aux(tmp_path, side, f):
    """A DSM with exactly the scene's footprint, f× coarser: every pixel gets a height."""
    from rsprompt.inference.windows import Window

    scene = write_raster(tmp_path / "s.tif", scene_array(side, side))
    cells = -(-side // f)
    dsm = np.random.default_rng(0).normal(30, 5, (cells, cells)).astype(np.float32)
    aux = write_raster(tmp_path / "d.tif", dsm, res=float(f))
    with SceneReader(scene, aux) as r:
        assert r.aux_factor == f
        a, v = r.read_aux(Window(0, 0, side, side))
    assert v.all()
    assert dsm.min() - 1e-3 <= a.min() and a.max() <= dsm.max() + 1e-3  # no leak from outside
    out = tmp_path / "o.tif"
    predict_scene(
        scene,
        AuxFootprint(),
        out,
        aux=aux,
        aux_channels=1,
        window=min(128, side),
        overlap=16,
        classes=ClassTable(("no aux", "aux"), ((0, 0, 0), (255, 0, 0))),
        progress=False,
    )
    assert (read(out)[0] == 1).all()


@pytest.mark.parametrize("ratio", [4.0, 4.12, 2.2, 1.0, 1.03])
@pytest.mark.parametrize("upsample", [True, False])
def test_aux_window_reads_equal_the_same_pixels_of_a_whole_read(tmp_path, ratio, upsample):
    """Heights do not depend on the window they are read in (GDAL's kernel scale pinned)."""
    from rsprompt.inference.windows import Window

    scene = write_raster(tmp_path / "s.tif", scene_array(97, 83))
    dsm = np.random.default_rng(1).normal(100, 20, (1, 110, 100)).astype(np.float32)
    aux = write_raster(
        tmp_path / "d.tif",
        dsm,
        res=ratio,
        origin=(ORIGIN[0] - 7.3, ORIGIN[1] + 5.1),
        nodata=-9999.0,
    )
    with SceneReader(scene, aux, upsample_coarse_aux=upsample) as r:
        full, full_valid = r.read_aux(Window(0, 0, 97, 83))
        assert full_valid.mean() > 0.95
        for win in window_grid(97, 83, 32, 8):
            a, v = r.read_aux(win)
            rs, cs = slice(win.row, win.row_end), slice(win.col, win.col_end)
            np.testing.assert_array_equal(v, full_valid[rs, cs])
            np.testing.assert_allclose(a, full[:, rs, cs], atol=1e-3)
