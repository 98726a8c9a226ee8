"""How prediction reads its inputs: validity, aux statistics, checkpoint normalisation, errors.

Issue 13 items 8–10, 12 (nodata outside the dtype, south-up rasters), 13 (probe F8–F11, F25, F26)
and one validity rule for every read. Expected values are computed here by hand (numpy, a
spherical earth, the file's own pixels), never taken from the code under test.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine, from_origin

from rsprompt.data.labels import ISPRS_CLASSES
from rsprompt.data.normalize import DSMNormalizer, Normalization, OpticalNormalizer
from rsprompt.data.validity import representable, usable_nodata, valid_pixels
from rsprompt.engine import checkpoint as ckpt_mod
from rsprompt.inference import PredictError
from rsprompt.inference.from_checkpoint import CheckpointPredictor
from rsprompt.inference.reader import SceneReader
from rsprompt.inference.windows import Window
from rsprompt.models import registry
from rsprompt.models.base import SegmentationModel

METHOD = "predict-inputs-tiny"
CRS = "EPSG:32633"
ORIGIN = (366000.0, 5808000.0)


# ---------------------------------------------------------------------------------------- helpers
def write_raster(path, data, *, crs=CRS, transform=None, nodata=None, res=1.0, **extra):
    """A GeoTIFF of ``data`` (``C×H×W`` or ``H×W``), north-up at ORIGIN unless ``transform``."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    profile = {
        "driver": "GTiff",
        "height": data.shape[1],
        "width": data.shape[2],
        "count": data.shape[0],
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": transform or from_origin(*ORIGIN, res, res),
        "nodata": nodata,
        "photometric": "MINISBLACK",
        **extra,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
    return Path(path)


def write_masked(path, data, mask, *, transform=None, res=1.0):
    """A float32 GeoTIFF without nodata and with an internal mask (0 = no data)."""
    profile = {
        "driver": "GTiff",
        "height": data.shape[0],
        "width": data.shape[1],
        "count": 1,
        "dtype": "float32",
        "crs": CRS,
        "transform": transform or from_origin(*ORIGIN, res, res),
    }
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        dst.write(data[None].astype(np.float32))
        dst.write_mask(mask)
    return Path(path)


def scene_array(h, w, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(20, 236, size=(3, h, w)).astype(np.uint8)


def ramp_dsm(h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    return (100.0 + 0.25 * xx + 0.5 * yy).astype(np.float32)


def corrupt_middle_block(path):
    """Overwrite the compressed data of block (1, 1) of a tiled deflate GeoTIFF with garbage."""
    with rasterio.open(path) as src:
        off = int(src.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=1))
        size = int(src.get_tag_item("BLOCK_SIZE_1_1", "TIFF", bidx=1))
    raw = bytearray(Path(path).read_bytes())
    raw[off : off + size] = np.random.default_rng(7).integers(0, 256, size, np.uint8).tobytes()
    Path(path).write_bytes(bytes(raw))
    return path


class Spy(SegmentationModel):
    """1×1 conv on optical + aux that records every aux input it is given."""

    def __init__(self, num_classes: int, aux_channels: int) -> None:
        super().__init__(METHOD, "none", num_classes, aux_channels)
        self.head = torch.nn.Conv2d(3 + aux_channels, num_classes, 1)
        self.freeze()
        self.seen: list[tuple[torch.Tensor | None, torch.Tensor | None]] = []

    def forward(self, image, aux=None, aux_valid=None):
        self.seen.append((aux, aux_valid))
        if aux is None:
            aux = torch.zeros_like(image[:, : self.aux_channels])
            aux_valid = torch.zeros_like(image[:, :1])
        return self.head(torch.cat([image, aux * aux_valid], 1))


@pytest.fixture(scope="module")
def make_checkpoint(tmp_path_factory):
    """``make_checkpoint(normalization, patch_size=48)`` → a DSM checkpoint of the Spy model."""
    registry.METHOD_MODULES[METHOD] = __name__
    registry.register_method(METHOD)(lambda enc, k, a, weights=None, **kw: Spy(k, a))
    root = tmp_path_factory.mktemp("ckpts")
    made: list[Path] = []

    def make(normalization, patch_size=48):
        torch.manual_seed(0)
        model = Spy(6, 1)
        meta = ckpt_mod.model_meta(
            model,
            weights=None,
            classes=ISPRS_CLASSES.names,
            colors=ISPRS_CLASSES.colors,
            normalization=normalization,
            aux_kind="dsm",
            patch_size=patch_size,
        )
        path = root / f"model{len(made)}.ckpt"
        ckpt_mod.save_model_checkpoint(path, model, meta)
        made.append(path)
        return path

    yield make
    registry.METHOD_MODULES.pop(METHOD, None)
    registry._BUILDERS.pop(METHOD, None)


@pytest.fixture(scope="module")
def minmax_ckpt(make_checkpoint):
    return make_checkpoint(Normalization(OpticalNormalizer(), DSMNormalizer("minmax")))


def predict(ckpt, scene, out, aux=None, **kw):
    """Predict with a fresh CheckpointPredictor; returns ``(predictor, summary, warnings)``."""
    predictor = CheckpointPredictor(ckpt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = predictor.predict(
            scene, out, aux=aux, aux_kind="dsm" if aux else None, progress=False, **kw
        )
    return predictor, summary, [str(w.message) for w in caught]


def read_map(path):
    with rasterio.open(path) as ds:
        return ds.read(1), ds.nodata, ds.transform


# ------------------------------------------------------------ item 6: one validity rule (unit)
def test_validity_rule_nodata_outside_the_dtype_nan_inf_and_mask():
    u8 = np.array([[[0, 25, 255]]], np.uint8)
    # uint8 cannot hold 256, 25.5 or -9999: such a nodata value matches no pixel.
    for nodata in (256.0, 25.5, -9999.0):
        assert not representable(nodata, "uint8") and usable_nodata(nodata, "uint8") is None
        assert valid_pixels(u8, nodata).tolist() == [[True, True, True]]
    assert valid_pixels(u8, 255.0).tolist() == [[True, True, False]]
    i16 = np.array([[-9999, 3]], np.int16)
    assert valid_pixels(i16, -9999.0).tolist() == [[False, True]]  # H×W
    assert not representable(1e40, "float32") and representable(-3.4e38, "float32")
    f = np.array([[[1.0, np.inf, -np.inf, np.nan, -9999.0]]], np.float32)
    assert valid_pixels(f, -9999.0).tolist() == [[True, False, False, False, False]]
    # Bands: every band valid (aux) versus any band valid (scene).
    two = np.array([[[1.0, np.nan]], [[np.nan, np.nan]]], np.float32)
    assert valid_pixels(two).tolist() == [[False, False]]
    assert valid_pixels(two, every_band=False).tolist() == [[True, False]]
    mask = np.array([[255, 0]], np.uint8)
    assert valid_pixels(np.ones((1, 1, 2), np.uint8), mask=mask).tolist() == [[True, False]]


# ---------------------------------------------------------- item 8 / audit 2.4: internal mask
def test_scene_wide_aux_statistics_honour_the_aux_internal_mask(tmp_path, minmax_ckpt):
    """A DSM with an internal mask, no nodata, 0 under the mask: 0 never enters the min."""
    h, w = 40, 48
    scene = write_raster(tmp_path / "s.tif", scene_array(h, w))  # no nodata: the source route
    # The DSM at 0.5 m covers the scene exactly (not on the scene's grid).
    dsm = ramp_dsm(2 * h, 2 * w)
    mask = np.full(dsm.shape, 255, np.uint8)
    mask[:, :30] = 0  # masked: lowest heights of the ramp, filled with 0
    mask[70:, 60:] = 0
    dsm[mask == 0] = 0.0
    aux = write_masked(tmp_path / "d.tif", dsm, mask, res=0.5)
    kept = dsm[mask > 0]
    with SceneReader(scene, aux, aux_channels=1) as r:
        stats = r.aux_statistics()
    assert stats.min[0] == pytest.approx(float(kept.min()))  # 100 + 0.25·30
    assert stats.max[0] == pytest.approx(float(kept.max()))
    assert stats.count == kept.size
    assert stats.mean[0] == pytest.approx(float(kept.mean()), rel=1e-5)
    # Through a checkpoint with the DSM min–max normalisation: the recorded statistics.
    _, summary, _ = predict(minmax_ckpt, scene, tmp_path / "m.tif", aux=aux)
    assert summary.aux_stats["min"][0] == pytest.approx(float(kept.min()))


def test_aux_internal_mask_on_the_warped_and_ground_grid_routes(tmp_path):
    """The warped route (another CRS) and the ground-grid route never see the masked zeros."""
    from pyproj import Transformer

    h, w = 40, 48
    scene = write_raster(tmp_path / "s.tif", scene_array(h, w))
    tr = Transformer.from_crs(CRS, "EPSG:32632", always_xy=True)
    x0, y0 = tr.transform(ORIGIN[0] - 10, ORIGIN[1] + 10)
    dsm = ramp_dsm(80, 80)
    mask = np.full(dsm.shape, 255, np.uint8)
    mask[:, :40] = 0
    dsm[mask == 0] = 0.0
    path = tmp_path / "d.tif"
    profile = {
        "driver": "GTiff",
        "height": 80,
        "width": 80,
        "count": 1,
        "dtype": "float32",
        "crs": "EPSG:32632",
        "transform": from_origin(x0, y0, 1.0, 1.0),
    }
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        dst.write(dsm[None])
        dst.write_mask(mask)
    lowest = float(dsm[mask > 0].min())  # bilinear warping never goes below the valid minimum
    with SceneReader(scene, path, aux_channels=1) as r:
        for stats in (r.aux_statistics(), r.aux_statistics(ground_cell=4)):
            assert stats.min[0] >= lowest - 1e-3 and stats.count > 0


# ---------------------------------------------------- item 9 / audit 2.5: no aux normaliser
def test_checkpoint_without_aux_normaliser_feeds_the_raw_aux(tmp_path, make_checkpoint):
    """Training fed raw heights (0 where invalid) when the normalisation has no aux part."""
    ckpt = make_checkpoint(Normalization(OpticalNormalizer(), None), patch_size=32)
    h, w = 32, 40
    scene = write_raster(tmp_path / "s.tif", scene_array(h, w))
    dsm = ramp_dsm(h, w)
    dsm[5:9, 10:20] = -9999.0
    aux = write_raster(tmp_path / "d.tif", dsm, nodata=-9999.0)
    predictor = CheckpointPredictor(ckpt)
    predictor.model.seen = []
    predictor.predict(
        scene, tmp_path / "m.tif", aux=aux, aux_kind="dsm", window=64, overlap=0, progress=False
    )
    (a, av), *_ = predictor.model.seen
    assert a is not None and av is not None  # the old code dropped the DSM
    expected_valid = dsm != -9999.0
    expected = np.where(expected_valid, dsm, 0.0)
    np.testing.assert_array_equal(av[0, 0, :h, :w].numpy(), expected_valid.astype(np.float32))
    np.testing.assert_allclose(a[0, 0, :h, :w].numpy(), expected, rtol=0, atol=1e-4)


# --------------------------------------------- item 10 / audit 2.6: nDSM on a geographic scene
def test_ndsm_ground_grid_on_a_geographic_scene_is_sized_in_metres(tmp_path, make_checkpoint):
    """EPSG:4326 scene, ~0.3 m pixels: the ground cell and opening are computed in metres."""
    cell_m, window_m = 2.0, 30.0
    ckpt = make_checkpoint(
        Normalization(OpticalNormalizer(), DSMNormalizer("ndsm", cell_m=cell_m, window_m=window_m)),
        patch_size=64,
    )
    lat = 48.0
    earth_r = 6371008.8  # mean earth radius (m)
    dlat = math.degrees(0.3 / earth_r)  # 0.3 m north–south on a sphere
    dlon = dlat / math.cos(math.radians(lat))  # 0.3 m east–west at this latitude
    h = w = 120
    transform = from_origin(11.0, lat + h / 2 * dlat, dlon, dlat)
    scene = write_raster(
        tmp_path / "s.tif", scene_array(h, w), crs="EPSG:4326", transform=transform
    )
    aux = write_raster(tmp_path / "d.tif", ramp_dsm(h, w), crs="EPSG:4326", transform=transform)
    predictor = CheckpointPredictor(ckpt)
    norm = predictor._scene_args(scene, aux, "dsm")["normalize"]
    # Spherical estimate 0.3 m; the WGS84 ellipsoid differs from the sphere by well under 1 %.
    assert norm.pixel_size == pytest.approx(0.3, rel=0.01)
    assert norm.ground_cell_px == round(cell_m / 0.3) == 7  # the old code: round(2 / 1.0) = 2
    # And the whole prediction runs (the ground grid is fitted with metres).
    _, summary, _ = predict(ckpt, scene, tmp_path / "m.tif", aux=aux)
    assert summary.nodata_pixels == 0


def test_ndsm_refuses_a_scene_whose_crs_has_no_metric_unit(tmp_path, make_checkpoint):
    ckpt = make_checkpoint(Normalization(OpticalNormalizer(), DSMNormalizer("ndsm")))
    crs = rasterio.crs.CRS.from_wkt(
        'LOCAL_CS["local",LOCAL_DATUM["d",0],UNIT["pixel",1],AXIS["x",EAST],AXIS["y",NORTH]]'
    )
    scene = write_raster(tmp_path / "s.tif", scene_array(16, 16), crs=crs)
    aux = write_raster(tmp_path / "d.tif", ramp_dsm(16, 16), crs=crs)
    with pytest.raises(PredictError, match=r"s\.tif.*metres"):
        CheckpointPredictor(ckpt)._scene_args(scene, aux, "dsm")


# ----------------------------------------------------- item 12: nodata outside the scene dtype
def test_scene_nodata_the_dtype_cannot_hold_is_ignored_with_a_warning(tmp_path):
    """A uint8 scene tagged nodata = 25.5: pixels of 25 (and 0) stay valid, a warning names it."""
    data = scene_array(16, 16)
    data[:, :4, :] = 25
    data[:, 4:8, :] = 0
    base = write_raster(tmp_path / "base.tif", data)
    vrt = tmp_path / "scene.vrt"
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><NoDataValue>25.5</NoDataValue>'
        f"<SimpleSource><SourceFilename>{base}</SourceFilename><SourceBand>{b}</SourceBand>"
        "</SimpleSource></VRTRasterBand>"
        for b in (1, 2, 3)
    )
    vrt.write_text(
        f'<VRTDataset rasterXSize="16" rasterYSize="16"><SRS>{CRS}</SRS>'
        f"<GeoTransform>{ORIGIN[0]}, 1, 0, {ORIGIN[1]}, 0, -1</GeoTransform>{bands}</VRTDataset>"
    )
    with rasterio.open(vrt) as src:
        assert src.nodata == 25.5  # GDAL keeps the tag as it is
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with SceneReader(vrt) as reader:
            _, valid = reader.read_scene(Window(0, 0, 16, 16))
    assert valid.all()  # the old code cast 25.5 to 25 and lost the top 4 rows
    msgs = [str(w.message) for w in caught]
    assert any(str(vrt) in m and "25.5" in m and "uint8" in m for m in msgs), msgs


# ----------------------------------------------------------- item 12 / probe F9: south-up
def _south_up(transform_north_up: Affine, height: int) -> Affine:
    """The south-up transform of the same footprint (origin at the bottom edge, e > 0)."""
    t = transform_north_up
    return Affine(t.a, 0.0, t.c, 0.0, -t.e, t.f + t.e * height)


def test_south_up_aux_overlaps_and_reads_flipped(tmp_path, minmax_ckpt):
    h, w = 36, 44
    scene = write_raster(tmp_path / "s.tif", scene_array(h, w))
    dsm = ramp_dsm(h, w)  # heights on the scene's (north-up) rows
    south = _south_up(from_origin(*ORIGIN, 1.0, 1.0), h)
    aux = write_raster(tmp_path / "d.tif", np.flipud(dsm).copy(), transform=south)
    with SceneReader(scene, aux, aux_channels=1) as r:
        a, v = r.read_aux(Window(0, 0, h, w))
        stats = r.aux_statistics()
    assert v.all()
    np.testing.assert_allclose(a[0], dsm, atol=1e-3)
    assert stats.min[0] == pytest.approx(float(dsm.min()))
    assert stats.max[0] == pytest.approx(float(dsm.max()))
    _, summary, _ = predict(minmax_ckpt, scene, tmp_path / "m.tif", aux=aux)
    assert summary.nodata_pixels == 0


def test_south_up_scene_with_a_north_up_dsm_predicts(tmp_path, minmax_ckpt):
    h, w = 36, 44
    dsm = ramp_dsm(h, w)
    aux = write_raster(tmp_path / "d.tif", dsm)
    south = _south_up(from_origin(*ORIGIN, 1.0, 1.0), h)
    scene = write_raster(tmp_path / "s.tif", scene_array(h, w), transform=south)
    with SceneReader(scene, aux, aux_channels=1) as r:
        a, v = r.read_aux(Window(0, 0, h, w))
    assert v.all()
    np.testing.assert_allclose(a[0], np.flipud(dsm), atol=1e-3)  # row r is north-up row h-1-r
    _, summary, _ = predict(minmax_ckpt, scene, tmp_path / "m.tif", aux=aux)
    cls, _, transform = read_map(tmp_path / "m.tif")
    assert transform == south and cls.shape == (h, w) and summary.nodata_pixels == 0


# -------------------------------------------------------- probe F8: corrupt middle blocks
def _tiled(path, data, **kw):
    return write_raster(
        path, data, tiled=True, blockxsize=64, blockysize=64, compress="deflate", **kw
    )


@pytest.mark.parametrize("broken", ["scene", "dsm_stats", "dsm_read"])
def test_corrupt_middle_block_is_a_predict_error_naming_the_file(
    tmp_path, make_checkpoint, minmax_ckpt, broken
):
    """Header and first/last blocks fine, block (1, 1) garbage: one clear error, nothing left."""
    scene = _tiled(tmp_path / "s.tif", scene_array(256, 256))
    aux = _tiled(tmp_path / "d.tif", ramp_dsm(256, 256))
    bad = corrupt_middle_block(scene if broken == "scene" else aux)
    # dsm_read: a checkpoint that needs no aux statistics, so the DSM is first read mid-run
    # (in the reading thread of the overlapped pipeline).
    ckpt = (
        make_checkpoint(Normalization(OpticalNormalizer(), DSMNormalizer("global")))
        if broken == "dsm_read"
        else minmax_ckpt
    )
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(PredictError) as err:
        CheckpointPredictor(ckpt).predict(
            scene, out / "m.tif", aux=aux, aux_kind="dsm", window=64, overlap=0, progress=False
        )
    msg = str(err.value)
    assert msg.startswith("cannot read pixels of") and str(bad) in msg and "corrupt" in msg
    assert "\n" not in msg
    assert list(out.iterdir()) == []


# ------------------------------------------------------------- probe F10: all-nodata scene
def test_all_nodata_scene_with_a_dsm_blames_the_scene(tmp_path, minmax_ckpt):
    scene = write_raster(tmp_path / "s.tif", np.zeros((3, 32, 32), np.uint8), nodata=0)
    aux = write_raster(tmp_path / "d.tif", ramp_dsm(32, 32))
    with pytest.raises(PredictError) as err:
        predict(minmax_ckpt, scene, tmp_path / "m.tif", aux=aux)
    msg = str(err.value)
    assert msg.startswith(f"scene {scene} has no valid pixel") and "aux raster" not in msg


def test_all_nodata_scene_without_dsm_warns_that_the_map_is_all_nodata(tmp_path, minmax_ckpt):
    scene = write_raster(tmp_path / "s.tif", np.zeros((3, 32, 32), np.uint8), nodata=0)
    _, summary, msgs = predict(minmax_ckpt, scene, tmp_path / "m.tif")
    assert summary.nodata_pixels == 32 * 32
    assert any(str(scene) in m and "entirely nodata" in m for m in msgs)
    # An all-NaN float scene (no nodata tag) with a DSM: refused, the scene named.
    nan_scene = write_raster(tmp_path / "n.tif", np.full((3, 32, 32), np.nan, np.float32))
    aux = write_raster(tmp_path / "d.tif", ramp_dsm(32, 32))
    with pytest.raises(PredictError, match=r"scene .*n\.tif has no valid pixel"):
        predict(minmax_ckpt, nan_scene, tmp_path / "n_map.tif", aux=aux)


# ------------------------------------------------------- probe F11: values outside the range
@pytest.mark.parametrize(
    ("dtype", "top", "warns"),
    [
        ("uint16", 10200, True),
        ("float32", 1.0, True),
        ("float32", 20500.0, True),
        ("uint8", 255, False),
    ],
)
def test_scene_far_from_the_training_range_warns(tmp_path, minmax_ckpt, dtype, top, warns):
    """The checkpoint divides by 255 (8-bit imagery): uint16 or 0..1 reflectance is far off."""
    rng = np.random.default_rng(3)
    data = (rng.random((3, 40, 40)) * top).astype(dtype)
    scene = write_raster(tmp_path / "s.tif", data)
    _, _, msgs = predict(minmax_ckpt, scene, tmp_path / "m.tif")
    hits = [m for m in msgs if "far from the range" in m]
    if warns:
        assert len(hits) == 1 and dtype in hits[0] and "0 to 255" in hits[0]
        assert str(scene) in hits[0]
    else:
        assert hits == []


# ------------------------------------------------------------------- probe F26: +inf optical
def test_infinite_optical_values_are_nodata(tmp_path, minmax_ckpt):
    data = np.random.default_rng(4).random((3, 32, 32)).astype(np.float32) * 255
    data[:, :12, :] = np.inf
    data[0, 20:, :] = -np.inf  # one band only: the pixel still has data
    scene = write_raster(tmp_path / "s.tif", data)
    _, summary, _ = predict(minmax_ckpt, scene, tmp_path / "m.tif")
    cls, nodata, _ = read_map(tmp_path / "m.tif")
    assert summary.nodata_pixels == 12 * 32
    assert (cls[:12] == nodata).all() and (cls[12:] != nodata).all()


# ---------------------------------------------------------------- probe F25: warning wording
def test_scene_wide_minmax_warning_names_the_patch_as_a_patch(tmp_path, minmax_ckpt):
    scene = write_raster(tmp_path / "s.tif", scene_array(100, 210))
    aux = write_raster(tmp_path / "d.tif", ramp_dsm(100, 210))
    _, _, msgs = predict(minmax_ckpt, scene, tmp_path / "m.tif", aux=aux)
    hits = [m for m in msgs if "min–max" in m]
    assert len(hits) == 1
    assert "48 px patches" in hits[0] and "(210×100 px)" in hits[0] and "nDSM" in hits[0]
    assert "training tile (48 px)" not in hits[0]  # 48 is the patch, not the tile


# ----------------------------------------------------------- probe F23: window 0 is an error
def test_window_zero_is_refused_not_replaced_by_the_default(tmp_path, minmax_ckpt):
    scene = write_raster(tmp_path / "s.tif", scene_array(32, 32))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(PredictError, match="window"):
        CheckpointPredictor(minmax_ckpt).predict(scene, out / "m.tif", window=0, progress=False)
    assert list(out.iterdir()) == []
