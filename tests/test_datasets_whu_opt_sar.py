import numpy as np
import pytest
import rasterio
from helpers import load_make, read_raster
from rasterio.enums import ColorInterp
from torchgeo.samplers import RandomPatchSampler

from rsprompt.data.datasets import LOCAL_CRS, WHUOptSar, held_out_val
from rsprompt.data.labels import IGNORE_INDEX, decode_whu_labels
from rsprompt.data.normalize import Normalization, OpticalNormalizer, SARNormalizer

#: Files as distributed carry no georeferencing; rasterio warns on every open.
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


@pytest.fixture(scope="module")
def whu(tmp_path_factory):
    root = tmp_path_factory.mktemp("whu")
    return root, load_make("whu-opt-sar").make(root)


def check_patches(ds, n=6, size=32):
    for sl in RandomPatchSampler(ds, size=size, length=n, generator=5):
        sample = ds[sl]
        for tile, grids in zip(ds.tiles, ds.grids):  # noqa: B007 (tile used after the loop)
            t = grids.image.transform
            col, row = round((sl[0].start - t.c) / t.a), round((sl[1].stop - t.f) / t.e)
            if 0 <= col < grids.image.width and 0 <= row < grids.image.height:
                break
        win = rasterio.windows.Window(col, row, size, size)
        np.testing.assert_array_equal(sample["image"].numpy(), read_raster(tile.image, win))
        np.testing.assert_array_equal(sample["aux"].numpy(), read_raster(tile.aux, win))
        labels = read_raster(tile.label, win)[0]
        np.testing.assert_array_equal(
            sample["mask"].numpy(), decode_whu_labels(labels, keep_background=ds.keep_background)
        )


def test_splits_hold_validation_out_of_training(whu):
    root, _ = whu
    assert "NH49E007024" in held_out_val("whu-opt-sar")
    assert len(held_out_val("whu-opt-sar")) == 8
    assert WHUOptSar(root, "train").tile_names() == ["NH49E004021", "NH49E005014"]
    assert WHUOptSar(root, "val").tile_names() == ["NH49E007024"]
    assert WHUOptSar(root, "test").tile_names() == ["NH49E001014"]


def test_georeferenced_scenes_align(whu):
    root, _ = whu
    ds = WHUOptSar(root, "train")
    assert {g.source for g in ds.grids} == {"georeferenced"}
    assert ds.crs.to_epsg() == 32649 and ds.res == (5.0, 5.0)
    check_patches(ds)


def test_background_ignored_by_default_or_kept(whu):
    root, paths = whu
    raw = read_raster(paths["NH49E004021"]["label"])[0]
    default = WHUOptSar(root, tiles=["NH49E004021"]).read_tile("NH49E004021")["mask"]
    kept = WHUOptSar(root, tiles=["NH49E004021"], keep_background=True).read_tile("NH49E004021")
    np.testing.assert_array_equal(default == IGNORE_INDEX, raw == 0)
    np.testing.assert_array_equal(kept["mask"], raw // 10)
    assert WHUOptSar(root, tiles=["NH49E004021"]).classes.num_classes == 7


def test_scenes_without_georeferencing_use_the_local_grid(tmp_path):
    load_make("whu-opt-sar").make(
        tmp_path, georeferenced=False, tiles=("NH49E004021", "NH49E005014")
    )
    ds = WHUOptSar(tmp_path, "train")
    assert ds.crs == LOCAL_CRS and {g.source for g in ds.grids} == {"local"}
    check_patches(ds)


def test_scenes_in_two_utm_zones_are_not_resampled(tmp_path):
    load_make("whu-opt-sar").make(tmp_path, tiles=("NH49E004021", "NH50E003001"))
    ds = WHUOptSar(tmp_path, "train")
    assert {g.source for g in ds.grids} == {"local"}
    check_patches(ds, n=8)


def test_alpha_flagged_nir_zero_is_data_not_transparency(tmp_path):
    paths = load_make("whu-opt-sar").make(tmp_path, tiles=("NH49E004021",))
    optical = paths["NH49E004021"]["image"]
    with rasterio.open(optical) as src:
        data, profile = src.read(), src.profile
    data[3, 10:30, 10:30] = 0  # NIR of 0 on a block of pixels
    profile.update(photometric="RGB", alpha="YES")
    with rasterio.open(optical, "w", **profile) as dst:
        dst.write(data)
    with rasterio.open(optical) as src:
        assert src.colorinterp[3] == ColorInterp.alpha  # the fixture does flag band 4 as alpha
    norm = Normalization(OpticalNormalizer(bands=None, mean=(0.0,), std=(1.0,), scale=1.0), None)
    ds = WHUOptSar(tmp_path, tiles=["NH49E004021"], normalization=norm)
    tile = ds.read_tile("NH49E004021")
    np.testing.assert_array_equal(tile["image"], data.astype(np.float32))
    assert tile["image"][:3, 10:30, 10:30].any()  # RGB not zero-filled
    sample = ds[
        ds.bounds[0].start : ds.bounds[0].start + 160, ds.bounds[1].stop - 160 : ds.bounds[1].stop
    ]
    np.testing.assert_array_equal(sample["image"].numpy(), data[:, :32, :32].astype(np.float32))


def test_rgb_selection_and_sar_normalisation(whu):
    root, paths = whu
    norm = Normalization(OpticalNormalizer(bands=(0, 1, 2)), SARNormalizer(mode="uint8"))
    tile = WHUOptSar(root, tiles=["NH49E001014"], normalization=norm).read_tile("NH49E001014")
    assert tile["image"].shape[0] == 3
    sar = read_raster(paths["NH49E001014"]["sar"]).astype(np.float32)
    np.testing.assert_allclose(tile["aux"], sar / 255.0, rtol=1e-6)
    assert tile["aux_valid"].all()


def test_missing_sar_becomes_zeros_with_invalid_mask(tmp_path):
    paths = load_make("whu-opt-sar").make(tmp_path, tiles=("NH49E004021",))
    paths["NH49E004021"]["sar"].unlink()
    norm = Normalization(OpticalNormalizer(bands=(2, 1, 0)), SARNormalizer())
    ds = WHUOptSar(tmp_path, tiles=["NH49E004021"], normalization=norm)
    tile = ds.read_tile("NH49E004021")
    assert not tile["aux"].any() and not tile["aux_valid"].any()
    assert np.isfinite(tile["image"]).all()
    optical = read_raster(paths["NH49E004021"]["image"])[[2, 1, 0]]  # band order as selected
    np.testing.assert_allclose(tile["image"], norm.optical.apply(optical, selected=True), rtol=1e-6)


def test_sar_on_a_coarser_grid_is_warped_onto_the_optical_grid(tmp_path):
    paths = load_make("whu-opt-sar").make(tmp_path, tiles=("NH49E004021",))
    sar = paths["NH49E004021"]["sar"]
    with rasterio.open(sar) as src:
        profile, transform = src.profile, src.transform
    ramp = np.tile(np.arange(48, dtype=np.float32) * 2.0, (48, 1))[None]  # 10 m pixels
    coarse = transform * rasterio.Affine.scale(2.0)
    profile.update(width=48, height=48, transform=coarse, dtype="float32")
    with rasterio.open(sar, "w", **profile) as dst:
        dst.write(ramp)
    norm = Normalization(
        OpticalNormalizer(bands=(0, 1, 2)), SARNormalizer(mode="db", db_min=0, db_max=200)
    )
    ds = WHUOptSar(tmp_path, tiles=["NH49E004021"], normalization=norm)
    assert ds.grids[0].aux.res == (10.0, 10.0)
    tile = ds.read_tile("NH49E004021")
    assert tile["aux"].shape == (1, 96, 96) and tile["aux_valid"][0, 2:-2, 2:-2].all()
    # bilinear resampling of a linear ramp: value at 5 m pixel centre c is (c + 0.5) / 2 - 0.5, ×2
    cols = np.arange(96, dtype=np.float32)
    expected = ((cols + 0.5) / 2 - 0.5) * 2.0 / 200.0
    np.testing.assert_allclose(tile["aux"][0, 10, 4:-4], expected[4:-4], atol=2e-3)


def test_uint16_sar_keeps_full_precision(tmp_path):
    from rsprompt.data.normalize import DSMNormalizer

    paths = load_make("whu-opt-sar").make(tmp_path, tiles=("NH49E004021",))
    sar = paths["NH49E004021"]["sar"]
    with rasterio.open(sar) as src:
        profile = src.profile
    values = (np.arange(96 * 96, dtype=np.uint32).reshape(1, 96, 96) * 7 + 1).astype(np.uint16)
    profile.update(dtype="uint16")
    with rasterio.open(sar, "w", **profile) as dst:
        dst.write(values)
    identity = Normalization(
        OpticalNormalizer(bands=(0, 1, 2)),
        DSMNormalizer(mode="global"),  # identity on any aux
    )
    tile = WHUOptSar(tmp_path, tiles=["NH49E004021"], normalization=identity).read_tile(
        "NH49E004021"
    )
    np.testing.assert_array_equal(tile["aux"], values.astype(np.float32))
