"""Your own data (issue 14): RasterDataModule, polygon labels, splits, scaling, bands, predict.

Every input is generated here (tiny rasters, a few polygons drawn by hand); every expected value
is derived by hand from how the data were drawn, never copied from the code's output.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.features
import shapely
import torch
from click.testing import CliRunner
from helpers import load_make
from pyproj import Transformer
from rasterio.transform import from_origin

from rsprompt.cli import main
from rsprompt.data.datamodules import RasterDataModule, WHUOptSarDataModule
from rsprompt.data.datasets.custom_labels import CustomDataError, VectorLabels
from rsprompt.data.labels import IGNORE_INDEX
from rsprompt.engine.cli_train import run_train
from rsprompt.export.common import training_resolution_cm
from rsprompt.inference.from_checkpoint import CheckpointPredictor
from rsprompt.inference.reader import AuxSource, SceneReader

ROOT = Path(__file__).resolve().parents[1]
UTM = "EPSG:32633"
ORIGIN = (500_000.0, 5_800_000.0)
RES = 0.5


# ------------------------------------------------------------------------------------ helpers
def write_raster(path, data, *, crs=UTM, origin=ORIGIN, res=RES, nodata=None):
    """Write ``C×H×W`` (or ``H×W``) data as a GeoTIFF whose top-left corner is ``origin``."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    c, h, w = data.shape
    xres, yres = (res, res) if np.isscalar(res) else res
    profile = {
        "driver": "GTiff",
        "width": w,
        "height": h,
        "count": c,
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": from_origin(*origin, xres, yres),
    }
    if nodata is not None:
        profile["nodata"] = nodata
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def pix_box(c0, r0, c1, r1, origin=ORIGIN, res=RES):
    """The UTM box of image pixels ``[c0, c1) × [r0, r1)`` (edges on pixel boundaries)."""
    x0, y0 = origin
    return shapely.box(x0 + c0 * res, y0 - r1 * res, x0 + c1 * res, y0 - r0 * res)


def write_polygons(path, records, *, crs=UTM, to_crs=None, layer=None):
    """Write ``[(attributes, geometry), ...]`` (geometries in ``crs``) as a vector file."""
    gdf = gpd.GeoDataFrame([a for a, _ in records], geometry=[g for _, g in records], crs=crs)
    if to_crs is not None:
        gdf = gdf.to_crs(to_crs)
    path.parent.mkdir(parents=True, exist_ok=True)
    gdf.to_file(path, layer=layer) if layer else gdf.to_file(path)
    return path


def uint16_image(seed, shape=(4, 64, 64)):
    rng = np.random.default_rng(seed)
    return rng.integers(200, 9000, shape).astype(np.uint16)


def two_images(root, *, size=64, origins=None):
    """Two 4-band uint16 images side by side (a 10 m gap) and polygons covering both."""
    origins = origins or [ORIGIN, (ORIGIN[0] + size * RES + 10, ORIGIN[1])]
    paths = []
    for i, origin in enumerate(origins):
        paths.append(
            write_raster(
                root / "scenes" / f"s{i}.tif", uint16_image(i, (4, size, size)), origin=origin
            )
        )
    records = []
    for origin in origins:
        half = size // 2
        records.append(({"landcover": "water"}, pix_box(0, 0, size, half, origin)))
        records.append(({"landcover": "forest"}, pix_box(0, half, size, size, origin)))
    write_polygons(root / "labels.gpkg", records)
    return paths


@pytest.fixture
def tiny_train(tiny_method):
    """``tiny_train(out, data_args, steps)``: train the tiny method through ``rsprompt train``."""

    def train(out, data_args, steps=2, patch=32, workers=0):
        args = [
            "--model.method",
            tiny_method,
            "--model.encoder",
            "tinyconv",
            "--model.lr",
            "0.01",
            "--data.class_path",
            "rsprompt.data.datamodules.RasterDataModule",
            *data_args,
            "--data.patch_size",
            str(patch),
            "--data.batch_size",
            "2",
            "--data.num_workers",
            str(workers),
            "--data.length",
            str(2 * steps),
            "--trainer.max_steps",
            str(steps),
            "--trainer.default_root_dir",
            str(out),
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
            "--trainer.num_sanity_val_steps",
            "0",
            "--trainer.limit_val_batches",
            "1",
        ]
        run_train(args)
        return out / "model.ckpt"

    return train


# ------------------------------------------------------------------------------------ labels
def test_vector_labels_in_another_crs_land_on_the_right_pixels(tmp_path):
    """Polygons stored in EPSG:4326 are rasterised on the UTM image's pixels they were drawn on."""
    img = write_raster(tmp_path / "a.tif", uint16_image(0, (3, 40, 40)))
    water, forest = pix_box(2, 3, 10, 8), pix_box(20, 20, 35, 30)
    gpkg = write_polygons(
        tmp_path / "l.gpkg",
        [({"landcover": "water"}, water), ({"landcover": "forest"}, forest)],
        to_crs="EPSG:4326",
    )
    assert gpd.read_file(gpkg).crs.to_epsg() == 4326
    labels = VectorLabels(gpkg, "landcover")
    assert labels.table.names == ("forest", "water")  # sorted attribute values
    from rsprompt.data.datasets.custom import image_info

    mask = labels.rasterize(image_info(img).grid)
    expected = np.full((40, 40), IGNORE_INDEX, np.uint8)
    expected[3:8, 2:10] = 1  # water: columns 2..9, rows 3..7
    expected[20:30, 20:35] = 0  # forest
    np.testing.assert_array_equal(mask, expected)
    # The labelled footprint is the polygons' extent: columns 2..34, rows 3..29.
    assert labels.footprint(image_info(img).grid) == (2, 3, 35, 30)


def test_overlapping_polygons_the_smaller_wins_then_the_later(tmp_path):
    img = write_raster(tmp_path / "a.tif", uint16_image(0, (3, 40, 50)))
    records = [
        ({"landcover": "building"}, pix_box(10, 10, 14, 14)),  # first in the file, small
        ({"landcover": "grass"}, pix_box(0, 0, 30, 30)),  # later, large: loses the overlap
        ({"landcover": "road"}, pix_box(32, 0, 38, 6)),  # equal areas (36 px) ...
        ({"landcover": "water"}, pix_box(35, 3, 41, 9)),  # ... the later one wins
    ]
    labels = VectorLabels(write_polygons(tmp_path / "l.gpkg", records), "landcover")
    names = labels.table.names
    assert names == ("building", "grass", "road", "water")
    from rsprompt.data.datasets.custom import image_info

    mask = labels.rasterize(image_info(img).grid)
    expected = np.full((40, 50), IGNORE_INDEX, np.uint8)
    expected[0:30, 0:30] = 1
    expected[10:14, 10:14] = 0
    expected[0:6, 32:38] = 2
    expected[3:9, 35:41] = 3
    np.testing.assert_array_equal(mask, expected)
    # The rule does not depend on the file order of differently sized polygons.
    swapped = [records[1], records[0], records[2], records[3]]
    again = VectorLabels(write_polygons(tmp_path / "l2.gpkg", swapped), "landcover")
    np.testing.assert_array_equal(again.rasterize(image_info(img).grid), expected)


def test_text_and_integer_label_fields(tmp_path):
    img = write_raster(tmp_path / "a.tif", uint16_image(0, (3, 30, 30)))
    records = [
        ({"name": "urban", "code": 20}, pix_box(0, 0, 10, 10)),
        ({"name": "crops", "code": 3}, pix_box(10, 0, 20, 10)),
        ({"name": "lake", "code": 10}, pix_box(20, 0, 30, 10)),
    ]
    gpkg = write_polygons(tmp_path / "l.gpkg", records)
    from rsprompt.data.datasets.custom import image_info

    grid = image_info(img).grid
    text = VectorLabels(gpkg, "name")
    assert text.table.names == ("crops", "lake", "urban")  # alphabetical
    codes = VectorLabels(gpkg, "code")
    assert codes.table.names == ("3", "10", "20")  # numeric order, not "10" < "20" < "3"
    for labels, order in ((text, (2, 0, 1)), (codes, (2, 0, 1))):
        mask = labels.rasterize(grid)
        assert mask[0:10, 0:10].tolist() == np.full((10, 10), order[0]).tolist()
        assert (mask[0:10, 10:20] == order[1]).all() and (mask[0:10, 20:30] == order[2]).all()
        assert (mask[10:] == IGNORE_INDEX).all()
    # Explicit classes set the order; integer values are named by their digits.
    ordered = VectorLabels(gpkg, "code", classes=["20", "3", "10"])
    assert (ordered.rasterize(grid)[0, [0, 10, 20]] == [0, 1, 2]).all()


def test_background_class_and_label_rasters_with_ignore_index(tmp_path):
    img = write_raster(tmp_path / "scenes" / "a.tif", uint16_image(0, (3, 20, 20)))
    gpkg = write_polygons(tmp_path / "l.gpkg", [({"landcover": "water"}, pix_box(0, 0, 5, 5))])
    from rsprompt.data.datasets.custom import image_info

    labels = VectorLabels(gpkg, "landcover", background="land")
    assert labels.table.names == ("land", "water")
    mask = labels.rasterize(image_info(img).grid)
    assert (mask[0:5, 0:5] == 1).all() and (mask[5:] == 0).all() and (mask[:, 5:] == 0).all()
    # Label rasters: values are class indices; ignore_index and nodata are ignored.
    values = np.zeros((20, 20), np.uint8)
    values[:, 10:] = 2
    values[0, :] = 9  # "unlabelled" in this file
    write_raster(tmp_path / "lbl" / "a_lbl.tif", values)
    dm = RasterDataModule(
        tmp_path,
        images="scenes/*.tif",
        labels="lbl/{stem}_lbl.tif",
        ignore_index=9,
        patch_size=8,
        split="spatial",
        block_size=10,
        scaling="meanstd",
    )
    assert dm.class_table.names == ("0", "1", "2")  # 0 … the largest labelled value
    mask = dm.dataset("train").read_tile(0)["mask"]
    region = dm.dataset("train").regions_px[0]
    inside = shapely.contains_xy(region, np.arange(20)[None] + 0.5, np.arange(20)[:, None] + 0.5)
    expected = np.where(values == 9, IGNORE_INDEX, values)
    np.testing.assert_array_equal(mask[inside], expected[inside])
    assert (mask[~inside] == IGNORE_INDEX).all()


def test_one_dsm_mosaic_in_another_crs_is_aligned_on_each_image(tmp_path, monkeypatch):
    """A DSM mosaic (a plane) in EPSG:32632 at 1 m serves both UTM-33 images, read on their grids.

    Blocks of 8 px (instead of 256) make every read cross the blocks the warped aux and the
    rasterised polygons are cached in.
    """
    from rsprompt.data.datasets.custom import RasterScenes

    monkeypatch.setattr(RasterScenes, "LABEL_BLOCK", 8)
    two_images(tmp_path, size=32)
    to32 = Transformer.from_crs(UTM, "EPSG:32632", always_xy=True)
    x0, y1 = to32.transform(ORIGIN[0] - 20, ORIGIN[1] + 20)
    x1, y0 = to32.transform(ORIGIN[0] + 80, ORIGIN[1] - 40)
    left, top = math.floor(min(x0, x1)) - 20, math.ceil(max(y0, y1)) + 20
    w, h = int(abs(x1 - x0)) + 60, int(abs(y1 - y0)) + 60
    cols, rows = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    plane = (100 + 0.3 * cols + 0.2 * rows).astype(np.float32)  # height of each pixel centre
    write_raster(tmp_path / "mosaic.tif", plane, crs="EPSG:32632", origin=(left, top), res=1.0)
    dm = RasterDataModule(
        tmp_path,
        images="scenes/*.tif",
        aux="mosaic.tif",
        aux_scaling="global",  # mean 0, std 1: the raw heights
        labels="labels.gpkg",
        label_field="landcover",
        val=["s1"],
        patch_size=16,
        scaling="meanstd",
    )

    def plane_at(origin, r, c):
        """The plane at the centres of image pixels (rows r, columns c), bilinear-exact."""
        x, y = to32.transform(origin[0] + (c + 0.5) * RES, origin[1] - (r + 0.5) * RES)
        return 100 + 0.3 * (x - left) + 0.2 * (top - y)

    r, c = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    water_top = np.where(r < 16, 1, 0)  # classes (forest, water): water over the top half
    for split, origin in (("train", ORIGIN), ("val", (ORIGIN[0] + 32 * RES + 10, ORIGIN[1]))):
        tile = dm.dataset(split).read_tile(0)
        np.testing.assert_allclose(tile["aux"][0], plane_at(origin, r, c), atol=1e-3)
        assert tile["aux_valid"].all()
        np.testing.assert_array_equal(tile["mask"], water_top)
    # A patch at an odd offset, across four blocks.
    ds = dm.dataset("train")
    r0, c0, n = 5, 7, 16
    sample = ds[slice(c0, c0 + n), slice(-(r0 + n), -r0)]  # image 0's pixels in index space
    rr, cc = r[r0 : r0 + n, c0 : c0 + n], c[r0 : r0 + n, c0 : c0 + n]
    np.testing.assert_allclose(sample["aux"][0].numpy(), plane_at(ORIGIN, rr, cc), atol=1e-3)
    np.testing.assert_array_equal(sample["mask"].numpy(), water_top[r0 : r0 + n, c0 : c0 + n])


# ------------------------------------------------------------------------------------ splits
def test_spatial_split_never_lets_training_and_validation_pixels_touch(tmp_path):
    two_images(tmp_path, size=96)
    buffer_m = 2.0  # 4 pixels of 0.5 m
    dm = RasterDataModule(
        tmp_path,
        images="scenes/*.tif",
        labels="labels.gpkg",
        label_field="landcover",
        split="spatial",
        val_fraction=0.3,
        buffer=buffer_m,
        block_size=40,
        patch_size=16,
        batch_size=8,
        length=256,
        scaling="meanstd",
        augment=False,
    )
    gap = math.ceil(buffer_m / RES)
    train_px = np.zeros((2, 96, 96), bool)
    val_px = np.zeros((2, 96, 96), bool)
    dm.setup("fit")
    train = dm.dataset("train")
    for batch in dm.train_dataloader():
        for t in batch["transform"]:
            k, r, c = train.locate(rasterio.Affine(*t.tolist()[:6]))
            k = train.label_positions[k]
            train_px[k, max(r, 0) : r + 16, max(c, 0) : c + 16] = True  # the whole patch
    val = dm.dataset("val")
    for batch in dm.val_dataloader():
        for t, m in zip(batch["transform"], batch["mask"], strict=True):
            k, r, c = val.locate(rasterio.Affine(*t.tolist()[:6]))
            k = val.label_positions[k]
            labelled = (m != IGNORE_INDEX).numpy()
            h, w = min(16, 96 - r), min(16, 96 - c)
            val_px[k, r : r + h, c : c + w] |= labelled[:h, :w]
    assert train_px.any() and val_px.any()
    # Grow the validation pixels by `gap` pixels (Chebyshev): no training pixel may fall inside.
    grown = val_px.copy()
    for dr in range(-gap, gap + 1):
        for dc in range(-gap, gap + 1):
            grown |= np.roll(np.roll(val_px, dr, axis=1), dc, axis=2) & _no_wrap(dr, dc)
    assert not (grown & train_px).any()
    # The held-out share is about val_fraction of the labelled area (whole 40-px blocks).
    share = val_px.sum() / (2 * 96 * 96)
    assert 0.25 <= share <= 0.5, share


def _no_wrap(dr, dc):
    """Mask of the pixels a roll by (dr, dc) fills from inside the array (not wrapped around)."""
    m = np.ones((2, 96, 96), bool)
    if dr > 0:
        m[:, :dr] = False
    if dr < 0:
        m[:, dr:] = False
    if dc > 0:
        m[:, :, :dc] = False
    if dc < 0:
        m[:, :, dc:] = False
    return m


def test_named_val_and_test_images(tmp_path):
    for i in range(3):
        origin = (ORIGIN[0] + i * 50, ORIGIN[1])
        write_raster(tmp_path / "scenes" / f"s{i}.tif", uint16_image(i, (3, 40, 40)), origin=origin)
    records = [
        (
            {"landcover": "a" if i % 2 else "b"},
            pix_box(0, 0, 40, 40, (ORIGIN[0] + i * 50, ORIGIN[1])),
        )
        for i in range(3)
    ]
    write_polygons(tmp_path / "l.gpkg", records)
    listing = tmp_path / "list.txt"
    listing.write_text("scenes/s0.tif\nscenes/s1.tif\n# a comment\nscenes/s2.tif\n")
    dm = RasterDataModule(
        tmp_path,
        images="list.txt",
        labels="l.gpkg",
        label_field="landcover",
        val="s1",
        test=["s2"],
        patch_size=16,
        scaling="meanstd",
    )
    assert [i.name for i in dm.dataset("train").images] == ["s0"]
    assert [i.name for i in dm.dataset("val").images] == ["s1"]
    assert [i.name for i in dm.dataset("test").images] == ["s2"]
    with pytest.raises(CustomDataError, match=r"no image named 'nope'.*s0, s1, s2"):
        RasterDataModule(
            tmp_path, images="list.txt", labels="l.gpkg", label_field="landcover", val=["nope"]
        )


# ------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"labels": "far.gpkg"}, r"labels .*far\.gpkg do not overlap any image .*s0\.tif"),
        ({"label_field": "nope"}, r"labels .*labels\.gpkg: no field 'nope'; its fields: landcover"),
        (
            {"classes": ["water", "lava"]},
            r"classes 'lava' are not values of 'landcover' in .*labels\.gpkg",
        ),
        ({"bands": [1, 5]}, r"image .*s0\.tif has 4 band\(s\): bands \[5\] of \[1, 5\]"),
        (
            {"patch_size": 128},
            r"patch_size 128 is larger than every training image: .*s0\.tif \(64×64\)",
        ),
        (
            {"aux": "dsm/{stem}.tif"},
            r"aux raster .*dsm/s0\.tif \(for image .*s0\.tif\): file not found",
        ),
        ({"images": "none/*.tif"}, r"images: no file matches 'none/\*\.tif'"),
        ({"labels": "two.gpkg"}, r"labels .*two\.gpkg has 2 layers \(a, b\): choose one"),
        ({"labels": "two.gpkg", "label_layer": "c"}, r"two\.gpkg has no layer 'c'"),
        ({"labels": "lbl/{stem}.gpkg"}, r"one vector file per image is not supported"),
        ({"labels": "bad/{stem}.tif"}, r"label raster .*bad/s0\.tif: not a readable raster"),
        ({"background": "land", "labels": "bad/{stem}.tif"}, r"background applies to vector"),
    ],
)
def test_clear_errors_name_the_file(tmp_path, change, message):
    two_images(tmp_path)
    far = ORIGIN[0] + 50_000, ORIGIN[1]
    write_polygons(tmp_path / "far.gpkg", [({"landcover": "x"}, pix_box(0, 0, 9, 9, far))])
    for layer in ("a", "b"):
        write_polygons(
            tmp_path / "two.gpkg", [({"landcover": "x"}, pix_box(0, 0, 9, 9))], layer=layer
        )
    (tmp_path / "bad").mkdir()
    for stem in ("s0", "s1"):
        (tmp_path / "bad" / f"{stem}.tif").write_text("not a raster")
    kwargs = {
        "images": "scenes/*.tif",
        "labels": "labels.gpkg",
        "label_field": "landcover",
        "val": ["s1"],
        "patch_size": 16,
        "scaling": "meanstd",
        **change,
    }
    with pytest.raises(CustomDataError, match=message):
        RasterDataModule(tmp_path, **kwargs)


def test_train_command_errors_are_one_line(tmp_path, tiny_method):
    """`rsprompt train` shows the datamodule's own error (naming the file), not jsonargparse's."""
    two_images(tmp_path)
    res = CliRunner().invoke(
        main,
        [
            "train",
            "--model.method",
            tiny_method,
            "--model.encoder",
            "x",
            "--data.class_path",
            "rsprompt.data.datamodules.RasterDataModule",
            "--data.root",
            str(tmp_path),
            "--data.images",
            "scenes/*.tif",
            "--data.labels",
            "labels.gpkg",
            "--data.label_field",
            "nope",
            "--trainer.default_root_dir",
            str(tmp_path / "run"),
        ],
    )
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "labels.gpkg: no field 'nope'; its fields: landcover" in res.output


# ------------------------------------------------------------------------------------ checkpoints
def test_bands_and_scaling_round_trip_through_the_checkpoint(tmp_path, tiny_train):
    two_images(tmp_path)
    ckpt = tiny_train(
        tmp_path / "run",
        [
            "--data.root",
            str(tmp_path),
            "--data.images",
            "scenes/*.tif",
            "--data.labels",
            "labels.gpkg",
            "--data.label_field",
            "landcover",
            "--data.bands",
            "[4,3,1]",
            "--data.scaling",
            "meanstd",
            "--data.val",
            "[s1]",
        ],
    )
    meta = torch.load(ckpt, weights_only=True)["meta"]
    assert meta["classes"] == ["forest", "water"] and meta["dataset"] == "custom"
    assert meta["bands"] == [3, 2, 0]  # 0-based, as every checkpoint records them
    # The images' pixel size (RES metres in a UTM CRS) is the ground sampling distance that
    # `rsprompt export` writes as Deepness's resolution, in cm/px.
    assert meta["gsd_m"] == pytest.approx(RES)
    assert training_resolution_cm(meta) == pytest.approx(100 * RES)
    optical = meta["normalization"]["optical"]
    assert optical["fitted"] == "meanstd" and optical["dtype"] == "uint16"
    # Fitted on the training image only (s0; s1 is validation): its bands 4, 3, 1.
    raw = uint16_image(0)[[3, 2, 0]].reshape(3, -1).astype(np.float64)
    np.testing.assert_allclose(optical["mean"], raw.mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(optical["std"], raw.std(axis=1), rtol=1e-9)
    np.testing.assert_allclose(optical["low"], np.percentile(raw, 2, axis=1))
    # Prediction reads the same bands and applies the same scaling.
    pred = CheckpointPredictor(ckpt)
    scene = tmp_path / "scenes" / "s1.tif"
    args = pred._scene_args(scene, None, None)
    assert args["bands"] == [4, 3, 1] and args["expected_bands"] == 3
    with SceneReader(scene, bands=args["bands"]) as reader:
        from rsprompt.inference.windows import Window

        image, _ = reader.read_scene(Window(0, 0, 64, 64))
    normalized, _, _ = args["normalize"](image, None, None, (0, 0))
    want = (uint16_image(1)[[3, 2, 0]] - raw.mean(axis=1)[:, None, None]) / raw.std(axis=1)[
        :, None, None
    ]
    np.testing.assert_allclose(normalized, want, rtol=1e-4, atol=1e-4)
    # --bands replaces the recorded bands (same count); evaluate rebuilds the data from the meta.
    assert CheckpointPredictor(ckpt, bands=[1, 2, 3])._scene_args(scene, None, None)["bands"] == [
        1,
        2,
        3,
    ]
    res = CliRunner().invoke(
        main,
        [
            "evaluate",
            "-m",
            str(ckpt),
            "--data.root",
            str(tmp_path),
            "--split",
            "val",
            "--quiet",
            "--device",
            "cpu",
            "--window",
            "32",
            "--stride",
            "32",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "forest" in res.output and "water" in res.output
    written = json.loads((tmp_path / "run" / "eval_val" / "metrics.json").read_text())
    assert written["classes"] == ["forest", "water"]
    assert sum(written["support"]) == 64 * 64  # all of s1 is labelled


def test_value_range_warning_uses_the_recorded_statistics(tmp_path, tiny_train):
    two_images(tmp_path)
    ckpt = tiny_train(
        tmp_path / "run",
        [
            "--data.root",
            str(tmp_path),
            "--data.images",
            "scenes/*.tif",
            "--data.labels",
            "labels.gpkg",
            "--data.label_field",
            "landcover",
            "--data.bands",
            "[1,2,3]",
            "--data.val",
            "[s1]",
        ],
    )
    pred = CheckpointPredictor(ckpt)
    # A scene like the training images (the validation image): no such warning.
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        pred.predict(tmp_path / "scenes" / "s1.tif", tmp_path / "ok.tif", progress=False)
    assert not [w for w in record if "far from" in str(w.message)]
    # The same scene as 8-bit (values / 40): far from the uint16 training images.
    eight = write_raster(tmp_path / "eight.tif", (uint16_image(1) // 40).astype(np.uint8))
    with pytest.warns(UserWarning) as record:
        pred.predict(eight, tmp_path / "far.tif", progress=False)
    text = " ".join(str(w.message) for w in record if "far from" in str(w.message))
    assert "eight.tif (uint8" in text and "(uint16" in text, text
    assert "2nd–98th percentile" in text


def test_13_band_int16_scene_and_2_band_float_sar_in_4326(tmp_path, tiny_train, monkeypatch):
    """Sentinel-2-like L1C (13 bands, int16) + Sentinel-1-like VV/VH (float dB, NaN off-swath)."""
    size, res = 64, 10.0
    rng = np.random.default_rng(3)
    s2 = rng.integers(0, 4000, (13, size, size)).astype(np.int16)
    write_raster(tmp_path / "s2" / "tile.tif", s2, res=res)
    # SAR in EPSG:4326 over the scene (a margin around it), left third off the swath (NaN).
    to4326 = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
    lon0, lat1 = to4326.transform(ORIGIN[0] - 50, ORIGIN[1] + 50)
    lon1, lat0 = to4326.transform(ORIGIN[0] + size * res + 50, ORIGIN[1] - size * res - 50)
    n = 80
    step = ((lon1 - lon0) / n, (lat1 - lat0) / n)
    sar = np.empty((2, n, n), np.float32)
    sar[0] = -12.0  # VV
    sar[1] = -20.0  # VH
    sar[:, :, : n // 3] = np.nan
    write_raster(
        tmp_path / "sar" / "tile_s1.tif", sar, crs="EPSG:4326", origin=(lon0, lat1), res=step
    )
    records = [
        ({"landcover": "water"}, pix_box(0, 0, size, size // 2, res=res)),
        ({"landcover": "field"}, pix_box(0, size // 2, size, size, res=res)),
    ]
    write_polygons(tmp_path / "labels.geojson", records, to_crs="EPSG:4326")
    ckpt = tiny_train(
        tmp_path / "run",
        [
            "--data.root",
            str(tmp_path),
            "--data.images",
            "s2/*.tif",
            "--data.labels",
            "labels.geojson",
            "--data.label_field",
            "landcover",
            "--data.bands",
            "[4,3,2]",
            "--data.aux",
            "sar/{stem}_s1.tif",
            "--data.aux_kind",
            "sar",
            "--data.aux_bands",
            "[2]",
            "--data.split",
            "spatial",
            "--data.block_size",
            "40",
        ],
        patch=16,
    )
    meta = torch.load(ckpt, weights_only=True)["meta"]
    assert meta["aux_kind"] == "sar" and meta["aux_channels"] == 1
    assert meta["normalization"]["aux"]["mode"] == "db" and meta["bands"] == [3, 2, 1]
    seen = []
    original = SceneReader.read_aux

    def spy(self, win):
        aux, valid = original(self, win)
        seen.append((list(self.aux_bands), aux[0][valid].copy(), valid.copy()))
        return aux, valid

    monkeypatch.setattr(SceneReader, "read_aux", spy)
    out = tmp_path / "map.tif"
    res_cli = CliRunner().invoke(
        main,
        [
            "predict",
            str(tmp_path / "s2" / "tile.tif"),
            "-m",
            str(ckpt),
            "--sar",
            str(tmp_path / "sar" / "tile_s1.tif"),
            "--bands",
            "4,3,2",
            "--aux-bands",
            "2",
            "-o",
            str(out),
            "-q",
        ],
    )
    assert res_cli.exit_code == 0, res_cli.output
    assert out.is_file()
    bands, values, valid = seen[0]
    assert bands == [2] and np.allclose(values, -20.0)  # VH, not VV
    assert not valid.all() and valid.any()  # the NaN part of the swath is missing aux
    # The recorded aux band is the default; a band the file lacks is refused, naming it.
    seen.clear()
    CheckpointPredictor(ckpt).predict(
        tmp_path / "s2" / "tile.tif",
        tmp_path / "map2.tif",
        aux=tmp_path / "sar" / "tile_s1.tif",
        aux_kind="sar",
        progress=False,
    )
    assert seen[0][0] == [2]
    res_cli = CliRunner().invoke(
        main,
        [
            "predict",
            str(tmp_path / "s2" / "tile.tif"),
            "-m",
            str(ckpt),
            "--sar",
            str(tmp_path / "sar" / "tile_s1.tif"),
            "--aux-bands",
            "3",
            "-o",
            str(tmp_path / "x.tif"),
        ],
    )
    assert res_cli.exit_code == 1 and "tile_s1.tif has 2 band(s)" in res_cli.output
    # Without --bands the recorded bands are read.
    assert CheckpointPredictor(ckpt)._scene_args(tmp_path / "s2" / "tile.tif", None, None)[
        "bands"
    ] == [4, 3, 2]


def test_aux_source_reads_the_chosen_band(tmp_path):
    scene = write_raster(tmp_path / "s.tif", uint16_image(0, (3, 16, 16)))
    data = np.stack([np.full((16, 16), 1.0), np.full((16, 16), 2.0)]).astype(np.float32)
    aux = write_raster(tmp_path / "a.tif", data)
    from rsprompt.inference.windows import Window

    with SceneReader(scene, AuxSource(aux, bands=[2]), aux_channels=1) as r:
        values, valid = r.read_aux(Window(0, 0, 16, 16))
    assert values.shape == (1, 16, 16) and (values == 2.0).all() and valid.all()


# ------------------------------------------------------------------------------------ benchmarks
def test_partial_benchmark_download_trains_with_val_auto(tmp_path):
    """WHU-OPT-SAR without its validation scene: the error offers val=auto, which trains."""
    make = load_make("whu-opt-sar")
    root = tmp_path / "whu"
    make.make(root, size=96, tiles=("NH49E004021", "NH49E005014", "NH49E001014"))
    dm = WHUOptSarDataModule(root, patch_size=64)
    with pytest.raises(FileNotFoundError, match=r"--data\.val auto"):
        dm.setup("fit")
    auto = WHUOptSarDataModule(root, patch_size=64, val="auto")
    # Two training scenes present, in the published order NH49E004021, NH49E005014; every 10th
    # is none, so the last one is held out.
    assert auto.auto_val_tiles() == (["NH49E004021"], ["NH49E005014"])
    assert auto.dataset("train").tile_names() == ["NH49E004021"]
    assert auto.dataset("val").tile_names() == ["NH49E005014"]
    assert auto.dataset("test").tile_names() == ["NH49E001014"]
    # The documented fallback through `rsprompt train` with the shipped WHU-OPT-SAR config.
    tiny_vit = {"depth": 4, "embed_dim": 64, "num_heads": 2, "patch_size": 8, "img_size": 64}
    out = tmp_path / "run"
    run_train(
        [
            "--config",
            str(ROOT / "configs" / "gopt_whu-opt-sar.yaml"),
            "--model.weights",
            "null",
            "--model.encoder_options",
            json.dumps({"vit_base_patch16_224": {"encoder_kwargs": tiny_vit}}),
            "--data.root",
            str(root),
            "--data.val",
            "auto",
            "--data.patch_size",
            "64",
            "--data.batch_size",
            "2",
            "--data.num_workers",
            "0",
            "--data.length",
            "4",
            "--trainer.max_steps",
            "2",
            "--trainer.default_root_dir",
            str(out),
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
            "--trainer.num_sanity_val_steps",
            "0",
            "--trainer.limit_val_batches",
            "1",
        ]
    )
    assert (out / "model.ckpt").is_file()


# ------------------------------------------------------------------------------------ tools
def test_data_check_custom_reports_images_aux_and_class_pixels(tmp_path):
    write_raster(tmp_path / "scenes" / "a.tif", uint16_image(0, (4, 40, 40)), res=1.0)
    # A DSM over the left half only (columns 0..19), same grid.
    write_raster(tmp_path / "dsm" / "a_dsm.tif", np.full((40, 20), 5.0, np.float32), res=1.0)
    records = [
        ({"landcover": "water"}, pix_box(2, 3, 10, 8, res=1.0)),  # 8 × 5 = 40 px
        ({"landcover": "forest"}, pix_box(20, 20, 35, 30, res=1.0)),  # 15 × 10 = 150 px
    ]
    write_polygons(tmp_path / "labels.gpkg", records)
    res = CliRunner().invoke(
        main,
        [
            "data",
            "check",
            "custom",
            str(tmp_path),
            "--images",
            "scenes/*.tif",
            "--aux",
            "dsm/{stem}_dsm.tif",
            "--labels",
            "labels.gpkg",
            "--label-field",
            "landcover",
        ],
    )
    assert res.exit_code == 0, res.output
    out = res.output
    assert "40×40 px, 4 band(s) uint16, EPSG:32633, pixel 1 m" in out
    assert "covers 50.0% of the image" in out
    assert "labelled: 190 px" in out and "190 m²" in out
    assert re_line(out, "forest", "150") and re_line(out, "water", "40")
    res = CliRunner().invoke(
        main,
        [
            "data",
            "check",
            "custom",
            str(tmp_path),
            "--images",
            "scenes/*.tif",
            "--labels",
            "labels.gpkg",
            "--label-field",
            "kind",
        ],
    )
    assert res.exit_code == 1 and "no field 'kind'" in res.output and "Traceback" not in res.output


def re_line(text, name, count):
    return any(line.split() == [name, count] for line in text.splitlines())


def test_synth_custom_layout_writes_scenes_dsms_and_polygons(tmp_path):
    from rsprompt.data.synthetic import generate_scene

    res = CliRunner().invoke(
        main,
        [
            "synth",
            "--layout",
            "custom",
            "--out",
            str(tmp_path / "d"),
            "--size",
            "48",
            "--count",
            "2",
            "--aux-crs",
            "EPSG:32632",
            "--aux-resolution",
            "0.25",
        ],
    )
    assert res.exit_code == 0, res.output
    d = tmp_path / "d"
    for i in (1, 2):
        with rasterio.open(d / "scenes" / f"scene_{i}.tif") as src:
            assert src.count == 4 and src.dtypes[0] == "uint16"
            optical, grid = src.read(), (src.crs, src.transform, src.width, src.height)
        scene = generate_scene("isprs", 48, i - 1, bands="rgbir")
        np.testing.assert_array_equal(optical, np.rint(scene.optical * (10000 / 255)))
        with rasterio.open(d / "dsm" / f"scene_{i}_dsm.tif") as src:
            assert src.crs.to_epsg() == 32632
        # The polygons rasterised back on the scene's grid give its labels exactly.
        labels = VectorLabels(d / "labels.gpkg", "landcover", classes=list(scene.class_table.names))
        from rsprompt.data.datasets._raster import Grid

        mask = labels.rasterize(Grid(grid[0], grid[1], grid[2], grid[3]))
        np.testing.assert_array_equal(mask, scene.labels)
    gdf = gpd.read_file(d / "labels.gpkg", layer="labels")
    assert all(isinstance(v, str) for v in gdf["landcover"])  # a text attribute


# ------------------------------------------------------------------------------------ done when
def test_done_when_train_evaluate_predict_with_the_custom_config(tmp_path):
    """Issue 14's "Done when", end to end through the three commands."""
    from rsprompt.data.synthetic.custom import write_custom

    data = tmp_path / "mydata"
    write_custom(data, count=2, size=128, aux_crs="EPSG:32632", aux_resolution=0.25)
    with rasterio.open(data / "scenes" / "scene_1.tif") as src:
        assert src.dtypes[0] == "uint16" and src.count == 4
    with rasterio.open(data / "dsm" / "scene_1_dsm.tif") as src:
        assert src.crs.to_epsg() == 32632 and src.res[0] == pytest.approx(0.25)
    out = tmp_path / "run"
    res = CliRunner().invoke(
        main,
        [
            "train",
            "--config",
            str(ROOT / "configs" / "custom_mobanet.yaml"),
            "--data.root",
            str(data),
            "--data.images",
            "scenes/*.tif",
            "--data.aux",
            "dsm/{stem}_dsm.tif",
            "--data.labels",
            "labels.gpkg",
            "--data.label_field",
            "landcover",
            "--data.bands",
            "[3,2,1]",
            "--model.encoder",
            "resnet18",
            "--model.weights",
            "null",
            "--data.patch_size",
            "64",
            "--data.batch_size",
            "2",
            "--data.num_workers",
            "0",
            "--data.length",
            "4",
            "--trainer.max_steps",
            "2",
            "--trainer.default_root_dir",
            str(out),
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.num_sanity_val_steps",
            "0",
            "--trainer.limit_val_batches",
            "1",
            "--model.eval_window",
            "64",
            "--model.eval_stride",
            "64",
        ],
    )
    assert res.exit_code == 0, res.output + repr(res.exception)
    ckpt = out / "model.ckpt"
    names = sorted(gpd.read_file(data / "labels.gpkg")["landcover"].unique())
    assert torch.load(ckpt, weights_only=True)["meta"]["classes"] == names
    res = CliRunner().invoke(
        main,
        [
            "evaluate",
            "-m",
            str(ckpt),
            "--data.root",
            str(data),
            "--split",
            "val",
            "--quiet",
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    table = [line.split() for line in res.output.splitlines()]
    for name in names:  # one IoU row per attribute value, under its name
        assert any(" ".join(row[: len(name.split())]) == name for row in table), name
    metrics = json.loads((out / "eval_val" / "metrics.json").read_text())
    assert metrics["classes"] == names and len(metrics["iou"]) == len(names)
    res = CliRunner().invoke(
        main,
        [
            "predict",
            str(data / "scenes" / "scene_2.tif"),
            "-m",
            str(ckpt),
            "--dem",
            str(data / "dsm" / "{stem}_dsm.tif"),
            "-o",
            str(tmp_path / "map.tif"),
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    qml = (tmp_path / "map.qml").read_text()
    for name in names:
        assert f'label="{name}"' in qml


def test_custom_dplnet_config_trains_with_a_sar_aux(tmp_path):
    """The second own-data config (DPLNet), with a SAR raster as aux, through `rsprompt train`."""
    from rsprompt.data.synthetic import generate_scene, write_scene

    data = tmp_path / "d"
    for i in (1, 2):
        scene = generate_scene("whu-opt-sar", 96, i, origin=(300_000.0 + i * 600, 3_400_000.0))
        written = write_scene(scene, data / f"raw{i}")
        (data / "scenes").mkdir(exist_ok=True)
        (data / "sar").mkdir(exist_ok=True)
        written["image"].rename(data / "scenes" / f"t{i}.tif")
        written["sar"].rename(data / "sar" / f"t{i}.tif")
        names = scene.class_table.names
        with rasterio.open(written["label"]) as src:
            shapes = list(rasterio.features.shapes(src.read(1), transform=src.transform))
        records = [({"cls": names[int(v)]}, shapely.geometry.shape(g)) for g, v in shapes if v < 7]
        write_polygons(data / f"l{i}.gpkg", records, crs=scene.crs)
    merged = pd_concat([gpd.read_file(data / f"l{i}.gpkg") for i in (1, 2)])
    merged.to_file(data / "labels.gpkg")
    out = tmp_path / "run"
    run_train(
        [
            "--config",
            str(ROOT / "configs" / "custom_dplnet.yaml"),
            "--model.encoder",
            "mit_b0",
            "--model.weights",
            "null",
            "--model.encoder_options",
            json.dumps({"mit_b0": {"encoder_kwargs": {"depths": [1, 1, 1, 1]}}}),
            "--data.root",
            str(data),
            "--data.aux",
            "sar/{stem}.tif",
            "--data.aux_kind",
            "sar",
            "--data.label_field",
            "cls",
            "--data.val",
            "[t2]",
            "--data.patch_size",
            "64",
            "--data.batch_size",
            "2",
            "--data.num_workers",
            "0",
            "--data.length",
            "4",
            "--trainer.max_steps",
            "2",
            "--trainer.default_root_dir",
            str(out),
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
            "--trainer.num_sanity_val_steps",
            "0",
            "--trainer.limit_val_batches",
            "1",
        ]
    )
    meta = torch.load(out / "model.ckpt", weights_only=True)["meta"]
    assert meta["method"] == "dplnet" and meta["aux_kind"] == "sar"
    assert meta["normalization"]["aux"] == {
        "kind": "sar",
        "mode": "db",
        "db_min": -25.0,
        "db_max": 5.0,
        "nodata": None,
    }


def pd_concat(frames):
    import pandas as pd

    return gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=frames[0].crs)


def walkthrough_commands(text):
    """The ``rsprompt`` commands of docs/own-data.md's walkthrough, continuation lines joined."""
    import shlex

    part = text.split("<!-- walkthrough:start -->")[1].split("<!-- walkthrough:end -->")[0]
    commands, in_bash, current = [], False, ""
    for line in part.splitlines():
        if line.startswith("```"):
            in_bash = line.strip() == "```bash"
            continue
        if not in_bash:
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            if current.strip().startswith("rsprompt "):
                commands.append(shlex.split(current)[1:])
            current = ""
    return commands


@pytest.mark.slow
def test_own_data_walkthrough_runs_as_written(tmp_path, monkeypatch):
    """docs/own-data.md, steps 1–6, in order; training with the smoke-run encoder it documents."""
    commands = walkthrough_commands((ROOT / "docs" / "own-data.md").read_text())
    assert [c[0] for c in commands] == ["synth", "data", "train", "evaluate", "predict"]
    monkeypatch.chdir(tmp_path)
    smoke = [
        "--model.weights",
        "null",
        "--model.encoder",
        "resnet18",
        "--data.patch_size",
        "64",
        "--data.batch_size",
        "2",
        "--data.num_workers",
        "0",
        "--data.length",
        "4",
        "--trainer.max_steps",
        "2",
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.limit_val_batches",
        "1",
        "--model.eval_window",
        "64",
        "--model.eval_stride",
        "64",
    ]
    for args in commands:
        args = [str(ROOT / a) if a.startswith("configs/") else a for a in args]
        if args[0] == "train":
            args += smoke
        if args[0] in ("evaluate", "predict"):
            args += ["--quiet"] if args[0] == "evaluate" else ["-q"]
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, (args, res.output, res.exception)
    names = sorted(gpd.read_file(tmp_path / "mydata" / "labels.gpkg")["landcover"].unique())
    qml = (tmp_path / "maps" / "scene_3_pred.qml").read_text()
    assert all(f'label="{n}"' in qml for n in names)
    assert (tmp_path / "runs" / "mydata" / "eval_val" / "metrics.json").is_file()


def test_optical_only_training_records_no_aux(tmp_path, tiny_train):
    two_images(tmp_path)
    ckpt = tiny_train(
        tmp_path / "run",
        [
            "--data.root",
            str(tmp_path),
            "--data.images",
            "scenes/*.tif",
            "--data.labels",
            "labels.gpkg",
            "--data.label_field",
            "landcover",
            "--data.bands",
            "[1,2,3]",
            "--data.val",
            "[s1]",
        ],
        workers=1,  # a worker process: the dataset (polygons, caches) is pickled to it
    )
    meta = torch.load(ckpt, weights_only=True)["meta"]
    assert meta["aux_kind"] is None and meta["aux_channels"] == 0
    assert meta["normalization"]["aux"] is None


def test_square_filter_and_streamed_ndsm_statistics():
    """The separable min/max filter (nDSM ground) equals a brute-force square filter."""
    from rsprompt.data.normalize import _filter

    x = np.random.default_rng(0).normal(size=(13, 17))
    padded = np.pad(x, 2, mode="edge")
    for op in (np.min, np.max):
        brute = np.array([[op(padded[i : i + 5, j : j + 5]) for j in range(17)] for i in range(13)])
        np.testing.assert_array_equal(_filter(x, 2, op), brute)


def test_streamed_ndsm_ground_equals_the_whole_image_fit(tmp_path, monkeypatch):
    """The nDSM ground fitted by row strips (from cached blocks) equals the whole-DSM fit."""
    from rsprompt.data.datasets.custom import RasterScenes
    from rsprompt.data.normalize import DSMNormalizer

    two_images(tmp_path, size=64)
    rng = np.random.default_rng(1)
    dsm = (250 + rng.normal(0, 3, (64, 64))).astype(np.float32)
    dsm[10:30, 5:25] += 12  # a building
    # Half a pixel off the image grid: warped (in cached 16-px blocks), not read as it is.
    shifted = (ORIGIN[0] - RES / 2, ORIGIN[1] + RES / 2)
    write_raster(tmp_path / "dsm" / "s0_dsm.tif", dsm, origin=shifted)
    write_raster(tmp_path / "dsm" / "s1_dsm.tif", dsm, origin=shifted)
    monkeypatch.setattr(RasterScenes, "LABEL_BLOCK", 16)
    dm = RasterDataModule(
        tmp_path,
        images="scenes/*.tif",
        aux="dsm/{stem}_dsm.tif",
        labels="labels.gpkg",
        label_field="landcover",
        val=["s1"],
        patch_size=16,
        scaling="meanstd",
    )
    norm = DSMNormalizer(mode="ndsm", window_m=6.0)
    ds = dm.dataset("train")
    from rasterio.enums import Resampling

    from rsprompt.data.datasets._raster import Grid, read_on_grid

    with rasterio.open(tmp_path / "dsm" / "s0_dsm.tif") as src:
        dgrid = Grid(src.crs, src.transform, src.width, src.height)
        warped, ok = read_on_grid(
            src, dgrid, ds.images[0].grid, [1], Resampling.bilinear, np.nan, valid_only=True
        )
    assert ok[:-1, :-1].all()  # the last row and column lie beyond the DSM's pixel centres
    whole = norm.fit(warped[0], ok, res=RES)  # the whole DSM warped at once
    streamed = ds._fit_aux(0, norm)
    assert streamed["cell"] == whole["cell"] == 2  # 1 m cells of 0.5 m pixels
    np.testing.assert_allclose(streamed["ground"], np.asarray(whole["ground"]), rtol=1e-6)


def test_image_nodata_is_ignored_in_masks_and_statistics(tmp_path):
    data = uint16_image(0, (3, 40, 40))
    data[:, :10, :] = 0  # the top 10 rows are nodata (0 in every band)
    write_raster(tmp_path / "scenes" / "a.tif", data, nodata=0)
    write_polygons(tmp_path / "l.gpkg", [({"landcover": "water"}, pix_box(0, 0, 40, 40))])
    dm = RasterDataModule(
        tmp_path,
        images="scenes/*.tif",
        labels="l.gpkg",
        label_field="landcover",
        split="spatial",
        block_size=20,
        patch_size=8,
        scaling="meanstd",
    )
    valid = data[:, 10:, :].reshape(3, -1).astype(np.float64)
    np.testing.assert_allclose(dm.normalization.optical.mean, valid.mean(axis=1), rtol=1e-9)
    for split in ("train", "val"):
        tile = dm.dataset(split).read_tile(0)
        assert (tile["mask"][:10] == IGNORE_INDEX).all()
        assert (tile["image"][:, :10] == 0).all()
