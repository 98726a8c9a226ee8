"""``rsprompt synth`` through click's CliRunner; outputs checked with rasterio (as `rio info`)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.errors import NotGeoreferencedWarning

from rsprompt.cli import main
from rsprompt.data.synthetic import generate_scene


def run(*args: str, ok: bool = True):
    result = CliRunner().invoke(main, ["synth", *args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def rio_info(path) -> dict:
    """What `rio info` reports (run in-process through rasterio's own CLI)."""
    from rasterio.rio.main import main_group

    result = CliRunner().invoke(main_group, ["info", str(path)])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_default_scene(tmp_path):
    out = tmp_path / "s"
    result = run("--out", str(out), "--size", "48", "--seed", "3")
    assert "scene.tif" in result.output
    info = rio_info(out / "scene.tif")
    assert info["crs"] == "EPSG:32633" and info["count"] == 3 and info["dtype"] == "uint8"
    assert info["shape"] == [48, 48] and info["res"] == pytest.approx([0.09, 0.09])
    dsm = rio_info(out / "dsm.tif")
    assert dsm["dtype"] == "float32" and dsm["nodata"] == -9999.0
    assert dsm["transform"] == info["transform"]
    lab = rio_info(out / "labels.tif")
    assert lab["nodata"] == 255 and lab["colorinterp"] == ["palette"]
    with rasterio.open(out / "labels.tif") as src:
        np.testing.assert_array_equal(src.read(1), generate_scene("isprs", 48, 3).labels)


def test_whu_scene_with_aux_on_other_grid(tmp_path):
    out = tmp_path / "w"
    run(
        "--kind",
        "whu-opt-sar",
        "--out",
        str(out),
        "--size",
        "32,40",
        "--aux-crs",
        "EPSG:32650",
        "--aux-resolution",
        "10",
        "--aux-coverage",
        "0.5",
        "--aux-nodata-border",
        "1",
    )
    img = rio_info(out / "scene.tif")
    assert img["count"] == 4 and img["crs"] == "EPSG:32649" and img["shape"] == [32, 40]
    assert "alpha" not in img["colorinterp"]
    sar = rio_info(out / "sar.tif")
    assert sar["crs"] == "EPSG:32650" and sar["res"] == pytest.approx([10.0, 10.0])
    assert sar["dtype"] == "float32" and sar["nodata"] == -9999.0
    assert not (out / "dsm.tif").exists()


def test_bands_resolution_crs_and_both_aux(tmp_path):
    out = tmp_path / "b"
    run(
        "--out",
        str(out),
        "--size",
        "24",
        "--bands",
        "rgbir",
        "--resolution",
        "0.2",
        "--crs",
        "EPSG:32632",
        "--aux",
        "both",
    )
    info = rio_info(out / "scene.tif")
    assert info["count"] == 4 and info["crs"] == "EPSG:32632"
    assert info["res"] == pytest.approx([0.2, 0.2])
    assert (out / "dsm.tif").exists() and (out / "sar.tif").exists()


def test_refuses_to_overwrite_then_overwrites(tmp_path):
    out = tmp_path / "s"
    run("--out", str(out), "--size", "16")
    before = (out / "scene.tif").read_bytes()
    result = run("--out", str(out), "--size", "16", "--seed", "9", ok=False)
    assert result.exit_code != 0 and "--overwrite" in result.output
    assert (out / "scene.tif").read_bytes() == before
    run("--out", str(out), "--size", "16", "--seed", "9", "--overwrite")
    assert (out / "scene.tif").read_bytes() != before


@pytest.mark.parametrize(
    ("layout", "tiles", "expect"),
    [
        (
            "vaihingen",
            "1,2",
            [
                "top/top_mosaic_09cm_area1.tif",
                "dsm/dsm_09cm_matching_area2.tif",
                "gts_for_participants/top_mosaic_09cm_area1.tif",
            ],
        ),
        (
            "potsdam",
            "2_10",
            [
                "4_Ortho_RGBIR/top_potsdam_2_10_RGBIR.tif",
                "1_DSM/dsm_potsdam_02_10.tif",
                "5_Labels_all/top_potsdam_2_10_label.tif",
            ],
        ),
        (
            "whu-opt-sar",
            "NH49E001014",
            ["optical/NH49E001014.tif", "sar/NH49E001014.tif", "lbl/NH49E001014.tif"],
        ),
    ],
)
def test_layouts(tmp_path, layout, tiles, expect):
    result = run("--layout", layout, "--out", str(tmp_path), "--size", "24", "--tiles", tiles)
    for rel in expect:
        assert (tmp_path / rel).is_file(), (rel, result.output)
        assert rel.split("/")[-1] in result.output
    if layout == "vaihingen":
        with pytest.warns(NotGeoreferencedWarning), rasterio.open(tmp_path / expect[0]) as src:
            assert src.crs is None
    else:
        assert rio_info(tmp_path / expect[0])["crs"] in ("EPSG:32633", "EPSG:32649")


def test_potsdam_off_palette_tile(tmp_path):
    from rsprompt.data.labels import decode_isprs_rgb

    run(
        "--layout",
        "potsdam",
        "--out",
        str(tmp_path),
        "--size",
        "64",
        "--tiles",
        "6_7,2_10",
        "--off-palette",
        "6_7",
    )
    for tile, odd in (("6_7", True), ("2_10", False)):
        with rasterio.open(tmp_path / "5_Labels_all" / f"top_potsdam_{tile}_label.tif") as src:
            rgb = src.read()
        colours = {tuple(int(v) for v in c) for c in rgb.reshape(3, -1).T}
        assert ((252, 255, 0) in colours) == odd and ((255, 255, 0) in colours) != odd
        assert (decode_isprs_rgb(rgb) == 4).any()


def test_layout_default_tiles_and_options(tmp_path):
    run(
        "--layout",
        "vaihingen",
        "--out",
        str(tmp_path / "v"),
        "--size",
        "16",
        "--labels-flat",
        "--dsm-world-files",
    )
    v = tmp_path / "v"
    for area in (1, 3, 2):
        assert (v / f"top_mosaic_09cm_area{area}.tif").is_file()
        assert (v / f"top_mosaic_09cm_area{area}_noBoundary.tif").is_file()
        assert (v / "dsm" / f"dsm_09cm_matching_area{area}.tfw").is_file()
    run(
        "--layout",
        "whu-opt-sar",
        "--out",
        str(tmp_path / "w"),
        "--size",
        "16",
        "--no-georef",
        "--tiles",
        "NH50E007002",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(tmp_path / "w" / "sar" / "NH50E007002.tif") as src:
            assert src.crs is None and src.dtypes[0] == "uint8"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layout", "potsdam", "--kind", "whu-opt-sar"], "holds isprs"),
        (["--layout", "potsdam", "--aux-crs", "EPSG:32632"], "--aux-crs"),
        (["--layout", "potsdam", "--bands", "rgb"], "--bands"),
        (["--tiles", "1"], "need --layout"),
        (["--layout", "vaihingen", "--off-palette", "1"], "applies to --layout potsdam"),
        (["--layout", "potsdam", "--tiles", "9_9"], "not a potsdam tile"),
        (["--size", "3"], "at least 8"),
        (["--size", "ab"], "expected N"),
    ],
)
def test_usage_errors(tmp_path, args, message):
    result = run("--out", str(tmp_path / "x"), *args, ok=False)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_help():
    result = run("--help")
    assert "--layout" in result.output and "--aux-nodata-border" in result.output
