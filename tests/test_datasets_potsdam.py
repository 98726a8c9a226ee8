import logging
import shutil

import numpy as np
import pyproj
import pytest
import rasterio
from helpers import load_make, read_raster, write_plain_gtiff
from torchgeo.samplers import RandomPatchSampler

from rsprompt.data.datasets import Potsdam, find_tiles
from rsprompt.data.labels import IGNORE_INDEX, decode_isprs_rgb

#: Files as distributed carry no georeferencing; rasterio warns on every open.
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


@pytest.fixture(scope="module")
def potsdam(tmp_path_factory):
    root = tmp_path_factory.mktemp("potsdam")
    return root, load_make("potsdam").make(
        root, off_palette={"2_11": {(255, 255, 0): (252, 255, 0)}}
    )


def test_layout_splits_and_mobanet_variant(potsdam):
    root, _ = potsdam
    found = find_tiles("potsdam", root)
    assert list(found) == ["2_10", "2_11", "2_13", "7_10", "7_11"]
    assert {"image:RGB", "image:IRRG", "image:RGBIR", "aux", "ndsm", "label:full"} <= set(
        found["2_10"]
    )
    assert found["2_10"]["aux"].name == "dsm_potsdam_02_10.tif"
    assert Potsdam(root, "train").tile_names() == ["2_10", "2_11", "7_10"]
    assert Potsdam(root, "train", variant="mobanet").tile_names() == ["2_10", "2_11"]
    assert Potsdam(root, "val").tile_names() == ["7_11"]
    assert Potsdam(root, "test").tile_names() == ["2_13"]


@pytest.mark.parametrize(("optical", "bands"), [("RGB", 3), ("IRRG", 3), ("RGBIR", 4)])
def test_georeferenced_patches_match_the_files(potsdam, optical, bands):
    root, _ = potsdam
    ds = Potsdam(root, "train", optical=optical)
    assert ds.crs == pyproj.CRS.from_epsg(32633) and ds.res == pytest.approx((0.05, 0.05))
    assert {g.source for g in ds.grids} == {"georeferenced"}
    compared = 0
    for sl in RandomPatchSampler(ds, size=32, length=12, generator=3):
        sample = ds[sl]
        hits = [
            (t, g.image)
            for t, g in zip(ds.tiles, ds.grids)
            if g.image.bounds[0] <= sl[0].start < g.image.bounds[2]
            and g.image.bounds[1] < sl[1].stop <= g.image.bounds[3]
        ]
        tile, grid = hits[0]
        col = round((sl[0].start - grid.transform.c) / 0.05)
        row = round((grid.transform.f - sl[1].stop) / 0.05)
        if col + 32 > grid.width or row + 32 > grid.height:
            continue  # the patch straddles two adjacent tiles: checked below
        win = rasterio.windows.Window(col, row, 32, 32)
        assert sample["image"].shape == (bands, 32, 32)
        np.testing.assert_array_equal(sample["image"].numpy(), read_raster(tile.image, win))
        np.testing.assert_array_equal(sample["aux"].numpy(), read_raster(tile.aux, win))
        np.testing.assert_array_equal(
            sample["mask"].numpy(), decode_isprs_rgb(read_raster(tile.label, win))
        )
        compared += 1
    # The sampler is seeded: most patches lie inside one tile (10 of 12 with generator=3); a
    # test that skipped every patch would compare nothing.
    assert compared >= 12 // 2


def test_window_across_adjacent_tiles_is_mosaicked(potsdam):
    root, paths = potsdam
    ds = Potsdam(root, tiles=["2_10", "2_11"])  # 2_11 lies directly south of 2_10
    g10 = ds.grids[0].image
    x0 = g10.transform.c
    y_split = g10.bounds[1]
    sample = ds[x0 : x0 + 32 * 0.05, y_split - 16 * 0.05 : y_split + 16 * 0.05]
    top = read_raster(paths["2_10"]["dsm"])[:, -16:, :32]
    bottom = read_raster(paths["2_11"]["dsm"])[:, :16, :32]
    np.testing.assert_allclose(sample["aux"].numpy(), np.concatenate([top, bottom], axis=1))
    assert sample["aux_valid"].all()


def test_off_palette_cars_decode_within_tolerance(potsdam, caplog):
    root, paths = potsdam
    raw = read_raster(paths["2_11"]["label"])
    off = np.all(raw == np.array([252, 255, 0], np.uint8)[:, None, None], axis=0)
    assert off.any()
    ds = Potsdam(root, tiles=["2_11"])
    with caplog.at_level(logging.WARNING):
        mask = ds.read_tile("2_11")["mask"]
    assert (mask[off] == 4).all()  # car
    assert ds.unmatched == {} and "match no class colour" not in caplog.text


def test_eroded_and_flat_labels(tmp_path):
    load_make("potsdam").make(tmp_path, tiles=("2_10",), labels_flat=True)
    assert (tmp_path / "top_potsdam_2_10_label.tif").is_file()
    full = Potsdam(tmp_path, tiles=["2_10"]).read_tile("2_10")["mask"]
    eroded = Potsdam(tmp_path, tiles=["2_10"], labels="eroded").read_tile("2_10")["mask"]
    assert (eroded == IGNORE_INDEX).sum() > (full == IGNORE_INDEX).sum() == 0


def test_label_without_georeferencing_takes_the_image_grid(tmp_path):
    paths = load_make("potsdam").make(tmp_path, tiles=("2_10",))
    label = paths["2_10"]["label"]
    data = read_raster(label)
    label.unlink()
    write_plain_gtiff(label, data)
    tile = Potsdam(tmp_path, tiles=["2_10"]).read_tile("2_10")
    np.testing.assert_array_equal(tile["mask"], decode_isprs_rgb(data))


def test_real_potsdam_crop_labels(shared_data, tmp_path):
    """The real 2_10 crop (EPSG:32633 grid) read as an official tile decodes to its index file."""
    from PIL import Image

    derived = shared_data / "isprs" / "potsdam" / "derived"
    for d in ("2_Ortho_RGB", "1_DSM", "5_Labels_all_noBoundary"):
        (tmp_path / d).mkdir()
    shutil.copy(
        derived / "2_10_0_0_512_512_img.tif", tmp_path / "2_Ortho_RGB" / "top_potsdam_2_10_RGB.tif"
    )
    shutil.copy(
        derived / "2_10_0_0_512_512_label_isprs_rgb_noBoundary.tif",
        tmp_path / "5_Labels_all_noBoundary" / "top_potsdam_2_10_label_noBoundary.tif",
    )
    with rasterio.open(derived / "2_10_0_0_512_512_img.tif") as src:
        profile = {**src.profile, "count": 1, "dtype": "float32"}
    with rasterio.open(tmp_path / "1_DSM" / "dsm_potsdam_02_10.tif", "w", **profile) as dst:
        dst.write(np.full((1, 512, 512), 35.0, np.float32))
    ds = Potsdam(tmp_path, tiles=["2_10"], labels="eroded")
    assert ds.grids[0].source == "georeferenced"
    tile = ds.read_tile("2_10")
    expected = np.asarray(Image.open(derived / "2_10_0_0_512_512_label_idx0-5_ignore255.png"))
    np.testing.assert_array_equal(tile["mask"], expected)
    assert tile["transform"].c == pytest.approx(366976.5)


@pytest.mark.parametrize("mode", ["minmax", "ndsm"])
def test_tile_statistics_make_windows_seamless(potsdam, mode):
    from rsprompt.data.normalize import DSMNormalizer, Normalization, OpticalNormalizer

    root, _ = potsdam
    norm = Normalization(OpticalNormalizer(), DSMNormalizer(mode=mode, cell_m=0.25, window_m=2.0))
    ds = Potsdam(root, tiles=["2_13"], normalization=norm)
    whole = ds.read_tile("2_13")
    t = whole["transform"]
    for r, c in ((0, 0), (40, 24), (64, 64)):
        x0, y1 = t.c + c * t.a, t.f + r * t.e
        sample = ds[x0 : x0 + 32 * t.a, y1 - 32 * 0.05 : y1]
        np.testing.assert_allclose(
            sample["aux"].numpy(), whole["aux"][:, r : r + 32, c : c + 32], atol=1e-6
        )
        np.testing.assert_allclose(
            sample["image"].numpy(), whole["image"][:, r : r + 32, c : c + 32], atol=1e-6
        )
    assert 0.0 <= whole["aux"].min() and whole["aux"].max() <= 1.0


def test_distributed_ndsm_as_the_aux(potsdam):
    root, paths = potsdam
    ds = Potsdam(root, tiles=["2_13"], dsm="ndsm")
    assert ds.tiles[0].aux.name == "dsm_potsdam_02_13_normalized_lastools.jpg"
    tile = ds.read_tile("2_13")
    with rasterio.open(paths["2_13"]["ndsm"]) as src:
        expected = src.read(1).astype(np.float32)
    np.testing.assert_array_equal(tile["aux"][0], expected)
    with pytest.raises(ValueError, match="dsm must be"):
        Potsdam(root, tiles=["2_13"], dsm="lidar")


def test_duplicate_tiles_are_refused_unless_on_local_grids(tmp_path):
    from rsprompt.data.datasets import MultimodalTileDataset, Tile

    class Plain(MultimodalTileDataset):
        def decode_label(self, raw, tile):
            return decode_isprs_rgb(raw)

    paths = load_make("potsdam").make(tmp_path, tiles=("2_10",), size=48)
    p = paths["2_10"]
    copy = tmp_path / "copy.tif"
    copy.write_bytes(p["image_rgb"].read_bytes())
    tiles = [Tile("a", p["image_rgb"], p["dsm"], p["label"]), Tile("b", copy, p["dsm"], p["label"])]
    with pytest.raises(ValueError, match="overlap by 100%"):
        Plain(tiles)
    ds = Plain(tiles, georeference="never", local_res=0.05)
    assert len(ds) == 2
    np.testing.assert_array_equal(ds.read_tile("b")["mask"], ds.read_tile("a")["mask"])
