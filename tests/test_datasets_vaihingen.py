import logging
import shutil

import numpy as np
import pytest
import rasterio
from helpers import load_make, read_raster
from torchgeo.samplers import GriddedPatchSampler, RandomPatchSampler

from rsprompt.data.datasets import LOCAL_CRS, Vaihingen, check_patch_fits, find_tiles
from rsprompt.data.labels import IGNORE_INDEX, decode_isprs_rgb

#: Files as distributed carry no georeferencing; rasterio warns on every open.
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


@pytest.fixture(scope="module")
def vaihingen(tmp_path_factory):
    root = tmp_path_factory.mktemp("vaihingen")
    return root, load_make("vaihingen").make(root)


def locate(ds, sl):
    """Tile and pixel offset of the sample at slice ``sl`` (float64; the sample's own bounds and
    transform are float32 and cannot locate a pixel at UTM coordinates)."""
    x0, y1 = sl[0].start, sl[1].stop
    for tile, grids in zip(ds.tiles, ds.grids):
        t = grids.image.transform
        c, r = round((x0 - t.c) / t.a), round((y1 - t.f) / t.e)
        if 0 <= c < grids.image.width and 0 <= r < grids.image.height:
            return tile, r, c
    raise AssertionError("sample outside every tile")


def assert_sample_matches_files(ds, sl, size):
    sample = ds[sl]
    tile, r, c = locate(ds, sl)
    win = rasterio.windows.Window(c, r, size, size)
    np.testing.assert_array_equal(
        sample["image"].numpy(), read_raster(tile.image, win).astype(np.float32)
    )
    np.testing.assert_array_equal(sample["aux"].numpy(), read_raster(tile.aux, win))
    assert sample["aux_valid"].all()
    expected = decode_isprs_rgb(read_raster(tile.label, win))
    np.testing.assert_array_equal(sample["mask"].numpy(), expected)
    return tile


def test_finds_official_layout_and_splits(vaihingen):
    root, _ = vaihingen
    found = find_tiles("vaihingen", root)
    assert list(found) == ["1", "2", "3", "32"]
    assert {"image", "aux", "label:full", "label:eroded"} <= set(found["1"])
    assert Vaihingen(root, "train").tile_names() == ["1", "3"]
    assert Vaihingen(root, "val").tile_names() == ["32"]
    assert Vaihingen(root, "test").tile_names() == ["2"]
    assert Vaihingen(root, "train", exclude_val=False).tile_names() == ["1", "3", "32"]


def test_random_patches_match_the_files_pixel_for_pixel(vaihingen):
    root, _ = vaihingen
    ds = Vaihingen(root, "train")  # no normalisation: raw values
    assert ds.crs == LOCAL_CRS and ds.res == (0.09, 0.09)
    assert {g.source for g in ds.grids} == {"local"}
    seen = set()
    for sl in RandomPatchSampler(ds, size=32, length=8, generator=1):
        sample = ds[sl]
        assert sample["image"].shape == (3, 32, 32) and sample["aux"].shape == (1, 32, 32)
        assert sample["mask"].dtype.is_floating_point is False
        seen.add(assert_sample_matches_files(ds, sl, 32).name)
    assert seen == {"1", "3"}
    # areas never overlap
    geoms = list(ds.index.geometry)
    assert geoms[0].intersection(geoms[1]).area == 0


def test_gridded_sampler_and_whole_tiles(vaihingen):
    root, paths = vaihingen
    ds = Vaihingen(root, "test")
    samples = [ds[sl] for sl in GriddedPatchSampler(ds, size=48)]
    assert samples and all(s["image"].shape == (3, 48, 48) for s in samples)
    tile = next(ds.iter_tiles())
    assert tile["name"] == "2"
    np.testing.assert_array_equal(tile["image"], read_raster(paths[2]["image"]).astype(np.float32))
    np.testing.assert_array_equal(tile["mask"], decode_isprs_rgb(read_raster(paths[2]["label"])))
    assert tile["transform"].a == pytest.approx(0.09)


def test_flat_labels_world_files_and_dsm_one_pixel_larger(tmp_path):
    paths = load_make("vaihingen").make(
        tmp_path, tiles=(1, 3), labels_flat=True, dsm_world_files=True, dsm_extra_px=1
    )
    assert (tmp_path / "top_mosaic_09cm_area1.tif").is_file()
    ds = Vaihingen(tmp_path, "train")
    assert {g.source for g in ds.grids} == {"world file"}
    x, y, _ = ds.bounds
    assert 490000 < x.start < 510000 and 5400000 < y.stop < 5430000  # the world file's place
    for sl in RandomPatchSampler(ds, size=32, length=4, generator=0):
        assert_sample_matches_files(ds, sl, 32)
    tile = ds.read_tile("1")
    dsm = read_raster(paths[1]["dsm"])
    assert dsm.shape[1:] == (tile["image"].shape[1] + 1, tile["image"].shape[2] + 1)
    np.testing.assert_array_equal(tile["aux"], dsm[:, :-1, :-1])  # cropped to the image


def test_eroded_labels_and_misspelled_participants_folder(tmp_path):
    load_make("vaihingen").make(tmp_path, tiles=(1,), eroded_for_participants=True)
    full = Vaihingen(tmp_path, tiles=[1]).read_tile("1")["mask"]
    eroded = Vaihingen(tmp_path, tiles=[1], labels="eroded").read_tile("1")["mask"]
    assert (eroded == IGNORE_INDEX).sum() > (full == IGNORE_INDEX).sum()
    keep = eroded != IGNORE_INDEX
    np.testing.assert_array_equal(eroded[keep], full[keep])
    # only the misspelled training-only folder left
    shutil.rmtree(tmp_path / "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE")
    found = find_tiles("vaihingen", tmp_path)["1"]["label:eroded"]
    assert "labeing" in str(found)
    again = Vaihingen(tmp_path, tiles=[1], labels="eroded").read_tile("1")["mask"]
    np.testing.assert_array_equal(again, eroded)


def test_patch_too_large_fails_loudly(vaihingen):
    root, _ = vaihingen
    ds = Vaihingen(root, "train")
    with pytest.raises(ValueError, match=r"no 128×128 px patch.*train.*1: \d+×\d+ px"):
        check_patch_fits(ds, 128, "train")
    check_patch_fits(ds, 48)


def test_unmatched_label_colours_are_counted_and_ignored(tmp_path, caplog):
    paths = load_make("vaihingen").make(tmp_path, tiles=(1,))
    label = paths[1]["label"]
    with rasterio.open(label) as src:
        data, profile = src.read(), src.profile
    data[:, :4, :5] = np.array([100, 50, 200], np.uint8)[:, None, None]
    with rasterio.open(label, "w", **profile) as dst:
        dst.write(data)
    ds = Vaihingen(tmp_path, tiles=[1])
    with caplog.at_level(logging.WARNING):
        mask = ds.read_tile("1")["mask"]
    assert (mask[:4, :5] == IGNORE_INDEX).all()
    assert ds.unmatched == {"1": 20}
    assert "match no class colour" in caplog.text


def test_real_vaihingen_crop_as_an_official_tile(shared_data, tmp_path):
    """The real area-1 crop (no CRS) read through the dataset decodes to its index file."""
    from PIL import Image

    real = shared_data / "isprs" / "vaihingen"
    derived = real / "derived"
    (tmp_path / "top").mkdir()
    (tmp_path / "dsm").mkdir()
    shutil.copy(
        derived / "area1_0_0_512_512_img.tif", tmp_path / "top" / "top_mosaic_09cm_area1.tif"
    )
    shutil.copy(
        derived / "area1_0_0_512_512_label_isprs_rgb_noBoundary.tif",
        tmp_path / "top_mosaic_09cm_area1_noBoundary.tif",
    )
    dsm = np.full((1, 512, 512), 265.0, np.float32)
    with rasterio.open(
        tmp_path / "dsm" / "dsm_09cm_matching_area1.tif",
        "w",
        driver="GTiff",
        width=512,
        height=512,
        count=1,
        dtype="float32",
    ) as dst:
        dst.write(dsm)
    tile = Vaihingen(tmp_path, tiles=[1], labels="eroded").read_tile("1")
    expected = np.asarray(Image.open(derived / "area1_0_0_512_512_label_idx0-5_ignore255.png"))
    np.testing.assert_array_equal(tile["mask"], expected)
    img = np.moveaxis(np.asarray(Image.open(real / "img_dir" / "area1_0_0_512_512.png")), -1, 0)
    np.testing.assert_array_equal(tile["image"], img.astype(np.float32))


def test_world_files_for_some_areas_only_fall_back_to_local_grids(tmp_path, caplog):
    paths = load_make("vaihingen").make(tmp_path, tiles=(1, 3), dsm_world_files=True)
    paths[3]["dsm_world"].unlink()
    with caplog.at_level(logging.WARNING):
        ds = Vaihingen(tmp_path, "train")
    assert {g.source for g in ds.grids} == {"local"}
    assert "all tiles use the local grid" in caplog.text
    for sl in RandomPatchSampler(ds, size=32, length=4, generator=2):
        assert_sample_matches_files(ds, sl, 32)
    with pytest.raises(ValueError, match="georeference must be"):
        Vaihingen(tmp_path, "train", georeference="maybe")


def test_image_world_file_is_used_when_present(tmp_path):
    paths = load_make("vaihingen").make(tmp_path, tiles=(1,), dsm_world_files=True)
    tfw = paths[1]["dsm_world"]
    image_tfw = paths[1]["image"].with_suffix(".tfw")
    image_tfw.write_text(tfw.read_text())
    tfw.unlink()  # only the image has a world file now
    ds = Vaihingen(tmp_path, tiles=[1])
    assert (
        ds.grids[0].source == "world file"
        and ds.grids[0].aux.transform == ds.grids[0].image.transform
    )
    x, _, _ = ds.bounds
    assert 490000 < x.start < 510000
    tile = ds.read_tile("1")
    np.testing.assert_array_equal(tile["aux"], read_raster(paths[1]["dsm"]))
