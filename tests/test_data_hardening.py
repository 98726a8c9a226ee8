"""Hardening of the training-side reads, ``rsprompt data check`` and ``rsprompt synth``.

Issue 13 items 7 (aux nodata blended into valid pixels by the warp) and 13 (corrupt blocks,
``data check`` passing broken tiles), bad-input probe F8, F22, F27 and the set-up note (the default
``synth --layout`` output could not be trained on with the shipped configs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from helpers import load_make
from rasterio.transform import Affine

from rsprompt.data.datasets import Potsdam
from rsprompt.data.datasets._raster import CorruptRasterError
from rsprompt.data.normalize import DSMNormalizer, Normalization, OpticalNormalizer

HERE = Path(__file__).parent
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

NODATA = -9999.0
LOW, HIGH = 10.0, 20.0  # the only valid heights of the test DSMs


def potsdam_tile(root: Path, size: int = 48) -> dict[str, Path]:
    """One tiny Potsdam tile 2_10 (5 cm, EPSG:32633) under ``root``."""
    return load_make("potsdam").make(root, tiles=("2_10",), size=size)["2_10"]


def two_level_dsm(h: int, w: int, hole: tuple[slice, slice]) -> np.ndarray:
    """West half LOW, east half HIGH, a NODATA hole: every valid height is LOW or HIGH."""
    dsm = np.full((h, w), LOW, np.float32)
    dsm[:, w // 2 :] = HIGH
    dsm[hole] = NODATA
    return dsm


def write_dsm(path: Path, data: np.ndarray, transform: Affine, **profile) -> None:
    path.unlink()
    kw = {
        "driver": "GTiff",
        "width": data.shape[1],
        "height": data.shape[0],
        "count": 1,
        "dtype": "float32",
        "crs": "EPSG:32633",
        "transform": transform,
        **profile,
    }
    with rasterio.open(path, "w", **kw) as dst:
        dst.write(data[None])


def write_masked_dsm(
    path: Path, size: int, masked: tuple[slice, slice], transform: Affine
) -> np.ndarray:
    """A ``size``² two-level DSM, no nodata value, ``masked`` stored as 0 under an internal mask.

    Returns:
        The mask written (255 valid, 0 masked).
    """
    dsm = two_level_dsm(size, size, (slice(0, 0), slice(0, 0)))
    dsm[masked] = 0.0  # stored under the mask
    mask = np.full((size, size), 255, np.uint8)
    mask[masked] = 0
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        write_dsm(path, dsm, transform)
        with rasterio.open(path, "r+") as dst:
            dst.write_mask(mask)
    return mask


def minmax_dataset(root: Path) -> Potsdam:
    norm = Normalization(OpticalNormalizer(), DSMNormalizer(mode="minmax"))
    return Potsdam(root, tiles=["2_10"], normalization=norm)


def identity_dataset(root: Path) -> Potsdam:
    """Raw heights out (global mode with mean 0, std 1 is the identity)."""
    norm = Normalization(OpticalNormalizer(), DSMNormalizer(mode="global"))
    return Potsdam(root, tiles=["2_10"], normalization=norm)


# ------------------------------------------------------------------ item 7 / audit 2.3
def test_warped_aux_never_blends_the_nodata_value(tmp_path):
    """A DSM at 7 cm with a 1/3-pixel offset (not aligned with the 5 cm tile) and a -9999 hole."""
    paths = potsdam_tile(tmp_path)
    with rasterio.open(paths["image_rgb"]) as src:
        t = src.transform  # 5 cm, 48×48 px: 2.4 m a side
    # 7 cm pixels from 0.03 m west/north of the tile: 36×36 px (2.52 m) cover it.
    transform = Affine(0.07, 0, t.c - 0.03, 0, -0.07, t.f + 0.03)
    dsm = two_level_dsm(36, 36, (slice(10, 18), slice(12, 20)))  # hole across the LOW/HIGH edge
    write_dsm(paths["dsm"], dsm, transform, nodata=NODATA)
    valid_src = dsm[dsm != NODATA]
    expected = {"min": float(valid_src.min()), "max": float(valid_src.max())}
    assert expected == {"min": LOW, "max": HIGH}  # by construction

    ds = minmax_dataset(tmp_path)
    assert ds.grids[0].aux.res == pytest.approx((0.07, 0.07))
    assert ds.aux_stats(0) == pytest.approx(expected)

    tile = identity_dataset(tmp_path).read_tile("2_10")
    heights, valid = tile["aux"][0], tile["aux_valid"][0] > 0
    # Bilinear weights are convex: a valid pixel is a blend of LOW and HIGH only.
    assert heights[valid].min() >= LOW - 1e-4 and heights[valid].max() <= HIGH + 1e-4
    # The hole's centre (DSM pixel (14, 16), centre 14.5·0.07 - 0.03 = 0.985 m from the tile's
    # north edge, 16.5·0.07 - 0.03 = 1.125 m from its west edge) is invalid on the tile grid:
    # tile pixel (0.985 / 0.05, 1.125 / 0.05) = (19, 22).
    assert not valid[19, 22]
    # Far from the hole every pixel is valid.
    assert valid[:5].all() and valid[-5:].all()


def test_aligned_aux_honours_its_internal_mask(tmp_path):
    """A DSM on the tile's own grid, no nodata value, masked pixels stored as 0."""
    paths = potsdam_tile(tmp_path)
    with rasterio.open(paths["image_rgb"]) as src:
        transform = src.transform
    mask = write_masked_dsm(paths["dsm"], 48, (slice(20, 30), slice(5, 40)), transform)
    with rasterio.open(paths["dsm"]) as src:  # the mask is internal, not an .msk sidecar
        assert src.nodata is None and (src.read_masks(1) == mask).all()
    assert not paths["dsm"].with_name(paths["dsm"].name + ".msk").exists()

    assert minmax_dataset(tmp_path).aux_stats(0) == pytest.approx({"min": LOW, "max": HIGH})
    tile = identity_dataset(tmp_path).read_tile("2_10")
    np.testing.assert_array_equal(tile["aux_valid"][0] > 0, mask > 0)


def test_warped_aux_honours_its_internal_mask(tmp_path):
    paths = potsdam_tile(tmp_path)
    with rasterio.open(paths["image_rgb"]) as src:
        t = src.transform
    transform = Affine(0.07, 0, t.c - 0.03, 0, -0.07, t.f + 0.03)
    write_masked_dsm(paths["dsm"], 36, (slice(10, 18), slice(12, 20)), transform)
    assert minmax_dataset(tmp_path).aux_stats(0) == pytest.approx({"min": LOW, "max": HIGH})


# ------------------------------------------------------------------ probe F8
def corrupt_middle_block(path: Path, block: tuple[int, int] = (1, 1)) -> None:
    """Overwrite one inner block of a tiled GeoTIFF with garbage (header untouched)."""
    with rasterio.open(path) as src:
        assert src.block_shapes[0] == (64, 64)
        i, j = block
        offset = int(src.get_tag_item(f"BLOCK_OFFSET_{i}_{j}", "TIFF", bidx=1))
        size = int(src.get_tag_item(f"BLOCK_SIZE_{i}_{j}", "TIFF", bidx=1))
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * size)


def rewrite_tiled(path: Path) -> None:
    """Rewrite ``path`` deflate-compressed with 64×64 blocks (same pixels and georeferencing)."""
    with rasterio.open(path) as src:
        data, profile = src.read(), src.profile
    profile.update(tiled=True, blockxsize=64, blockysize=64, compress="deflate")
    path.unlink()
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


@pytest.mark.parametrize("role", ["image_rgb", "dsm", "label"])
def test_corrupt_middle_block_is_a_clear_error_naming_the_file(tmp_path, role):
    paths = potsdam_tile(tmp_path, size=192)  # 3×3 blocks of 64 px
    rewrite_tiled(paths[role])
    corrupt_middle_block(paths[role])
    with rasterio.open(paths[role]) as src:  # header, first and last blocks still read
        src.read(window=((0, 64), (0, 64)))
        src.read(window=((128, 192), (128, 192)))
    ds = Potsdam(tmp_path, tiles=["2_10"])
    with pytest.raises(CorruptRasterError) as err:
        ds.read_tile("2_10")
    assert isinstance(err.value, ValueError)
    assert str(err.value).startswith(f"cannot read {paths[role]}: the file is corrupt (")
    # a window away from the damaged block still reads
    g = ds.grids[0].image
    x0, y1 = g.transform.c, g.transform.f
    sample = ds[x0 : x0 + 32 * 0.05, y1 - 32 * 0.05 : y1]
    assert sample["image"].shape[-2:] == (32, 32)


def test_corrupt_error_keeps_its_message_first_through_a_dataloader_worker(tmp_path):
    from torch._utils import ExceptionWrapper

    from rsprompt.data.datasets._raster import corrupt_error

    path = tmp_path / "dsm.tif"
    try:
        raise corrupt_error(path, OSError("IReadBlock failed at X offset 1, Y offset 1"))
    except CorruptRasterError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(CorruptRasterError) as err:
        wrapped.reraise()  # what the DataLoader does in the main process
    first = str(err.value).splitlines()[0]
    assert first == (
        f"cannot read {path}: the file is corrupt (IReadBlock failed at X offset 1, Y offset 1)"
    )


# ------------------------------------------------------------------ probe F22: data check
def data_check(*args):
    from click.testing import CliRunner

    from rsprompt.cli import main

    return CliRunner().invoke(main, ["data", "check", *map(str, args)])


def rewrite_band_data(path: Path, data: np.ndarray, **changes) -> None:
    """Replace the pixels (and optionally profile entries) of ``path``, keeping the rest."""
    with rasterio.open(path) as src:
        profile = src.profile
    profile.update(**changes)
    path.unlink()
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


@pytest.mark.parametrize("role", ["image_rgb", "dsm", "label_eroded"])
def test_data_check_decodes_every_block(tmp_path, role):
    paths = potsdam_tile(tmp_path, size=192)
    assert data_check("potsdam", tmp_path).exit_code == 0  # intact: complete
    rewrite_tiled(paths[role])
    corrupt_middle_block(paths[role])
    result = data_check("potsdam", tmp_path)
    assert result.exit_code == 1, result.output
    assert f"cannot read {paths[role]}: the file is corrupt (" in result.output
    assert "INCOMPLETE: 1 error(s)" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("fill", "nodata"), [(np.nan, None), (NODATA, NODATA), (np.inf, None)], ids=str
)
def test_data_check_refuses_a_dsm_without_valid_pixels(tmp_path, fill, nodata):
    paths = potsdam_tile(tmp_path)
    rewrite_band_data(paths["dsm"], np.full((1, 48, 48), fill, np.float32), nodata=nodata)
    result = data_check("potsdam", tmp_path)
    assert result.exit_code == 1, result.output
    assert f"{paths['dsm']}: no valid DSM pixel" in result.output


def test_data_check_refuses_labels_without_a_class_colour(tmp_path):
    paths = potsdam_tile(tmp_path)
    magenta = np.zeros((3, 48, 48), np.uint8)
    magenta[0], magenta[2] = 255, 255  # (255, 0, 255) is no ISPRS class colour
    rewrite_band_data(paths["label"], magenta)
    result = data_check("potsdam", tmp_path)
    assert result.exit_code == 1, result.output
    assert f"{paths['label']}: no pixel holds an ISPRS class colour (found (255, 0, 255))" in (
        result.output
    )
    # A few magenta pixels in a good label are a warning only: 48·2 of 48·48 = 4.2 %.
    paths = potsdam_tile(tmp_path / "b")
    with rasterio.open(paths["label"]) as src:
        rgb = src.read()
    rgb[:, :2] = magenta[:, :2]
    rewrite_band_data(paths["label"], rgb)
    result = data_check("potsdam", tmp_path / "b")
    assert result.exit_code == 0, result.output
    assert f"{paths['label']}: 96 pixel(s) (4.2%) hold no class" in result.output


def test_data_check_refuses_a_label_georeferenced_off_its_image(tmp_path):
    paths = potsdam_tile(tmp_path, size=96)
    with rasterio.open(paths["label"]) as src:
        t = src.transform
    shifted = Affine(t.a, t.b, t.c + 50 * t.a, t.d, t.e, t.f)  # 50 px east
    with rasterio.open(paths["label"], "r+") as dst:
        dst.transform = shifted
    result = data_check("potsdam", tmp_path)
    assert result.exit_code == 1, result.output
    assert f"{paths['label']}: georeferenced 50 px off the optical image" in result.output
    assert "+50.0 px east, +0.0 px north" in result.output


def test_data_check_reports_a_dsm_off_its_image(tmp_path):
    paths = potsdam_tile(tmp_path, size=96)
    with rasterio.open(paths["dsm"]) as src:
        t = src.transform
    # 24 px east: the DSM covers 72 of the image's 96 columns, i.e. 75 % of it (a warning).
    with rasterio.open(paths["dsm"], "r+") as dst:
        dst.transform = Affine(t.a, 0, t.c + 24 * t.a, 0, t.e, t.f)
    result = data_check("potsdam", tmp_path)
    assert result.exit_code == 0, result.output
    assert f"{paths['dsm']}: covers 75% of the optical image" in result.output
    # 200 px east: nothing of the tile is covered (an error).
    with rasterio.open(paths["dsm"], "r+") as dst:
        dst.transform = Affine(t.a, 0, t.c + 200 * t.a, 0, t.e, t.f)
    result = data_check("potsdam", tmp_path)
    assert result.exit_code == 1, result.output
    assert f"{paths['dsm']}: georeferenced outside the optical image" in result.output


def test_data_check_refuses_an_unknown_variant(tmp_path):
    potsdam_tile(tmp_path)
    result = data_check("potsdam", tmp_path, "--variant", "bogus")
    assert result.exit_code == 2, result.output
    assert "unknown split variant 'bogus' for potsdam; expected one of: official, mobanet" in (
        result.output
    )
    assert "complete" not in result.output
    result = data_check("vaihingen", tmp_path, "--variant", "mobanet")
    assert result.exit_code == 2 and "expected one of: official, deepnets" in result.output


# ------------------------------------------------------------------ probe F27: synth aux CRS
def synth(*args):
    from click.testing import CliRunner

    from rsprompt.cli import main

    return CliRunner().invoke(main, ["synth", *map(str, args)])


def ground_pixel_size(path: Path) -> tuple[float, float, int]:
    """East and north size (metres, geodesic) of the centre pixel of a EPSG:4326 raster."""
    import pyproj

    with rasterio.open(path) as src:
        assert src.crs.to_epsg() == 4326
        t, h, w = src.transform, src.height, src.width
        valid = int((src.read(1) != src.nodata).sum())
    lon, lat = t @ (w / 2, h / 2)
    geod = pyproj.Geod(ellps="WGS84")
    east = geod.inv(lon, lat, lon + t.a, lat)[2]
    north = geod.inv(lon, lat, lon, lat + t.e)[2]
    return east, north, valid


@pytest.mark.parametrize("extra", [[], ["--aux-resolution", "0.36"]])
def test_synth_aux_in_degrees_gets_a_ground_resolution(tmp_path, extra):
    out = tmp_path / "s"
    result = synth(
        "--out", out, "--size", 64, "--aux-crs", "EPSG:4326", "--aux-coverage", 0.5, *extra
    )
    assert result.exit_code == 0, result.output
    want = 0.36 if extra else 0.09  # metres: the asked one, else the scene's (isprs: 0.09 m)
    with rasterio.open(out / "scene.tif") as src:
        assert src.res == pytest.approx((0.09, 0.09))
    east, north, valid = ground_pixel_size(out / "dsm.tif")
    assert want / 2 < east < want * 2 and want / 2 < north < want * 2
    # ~half the 64² scene's area on the ground in pixels of ``want`` metres; most valid
    expected = 0.5 * (64 * 0.09 / want) ** 2
    assert valid > 0.5 * expected


# ------------------------------------------------------------------ probe set-up: synth → train
CONFIG_LAYOUT = {
    "VaihingenDataModule": "vaihingen",
    "PotsdamDataModule": "potsdam",
    "WHUOptSarDataModule": "whu-opt-sar",
}


@pytest.mark.parametrize(
    "config",
    # the custom_*.yaml configs (the user's own data) train in test_custom_data.py
    sorted(p for p in (HERE.parent / "configs").glob("*.yaml") if not p.stem.startswith("custom_")),
    ids=lambda p: p.stem,
)
def test_default_synth_layout_trains_with_every_shipped_config(tmp_path, config):
    """``rsprompt synth --layout L`` (default tiles) has every split the config's data needs."""
    import yaml

    from rsprompt.data import datamodules

    data = yaml.safe_load(config.read_text())["data"]
    module, _, name = data["class_path"].rpartition(".")
    assert module == "rsprompt.data.datamodules"
    root = tmp_path / "root"
    result = synth("--layout", CONFIG_LAYOUT[name], "--out", root, "--size", 32)
    assert result.exit_code == 0, result.output
    init = {k: v for k, v in data["init_args"].items() if k in ("variant",)}
    dm = getattr(datamodules, name)(
        root,
        patch_size=16,
        batch_size=2,
        length=4,
        augment=False,
        **init,
        **data.get("dict_kwargs", {}),
    )
    dm.setup("fit")  # was: "no potsdam tile of split 'val' (mobanet) found"
    dm.setup("test")
    sizes = {split: len(dm.dataset(split).tiles) for split in ("train", "val", "test")}
    assert sizes == {"train": 2, "val": 1, "test": 1}
