import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from helpers import load_make

from rsprompt.cli import main
from rsprompt.data.check import check_folder

#: Files as distributed carry no georeferencing; rasterio warns on every open.
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


def run(*args):
    return CliRunner().invoke(main, ["data", "check", *map(str, args)])


def rewrite(path, data, **changes):
    with rasterio.open(path) as src:
        profile = src.profile
    profile.update(count=data.shape[0], height=data.shape[1], width=data.shape[2], **changes)
    path.unlink()
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


@pytest.mark.parametrize("name", ["vaihingen", "potsdam", "whu-opt-sar"])
def test_complete_generated_folders_pass(tmp_path, name):
    paths = load_make(name).make(tmp_path, size=48)
    result = run(name, tmp_path)
    assert result.exit_code == 0, result.output
    assert f"complete: {len(paths)} tile(s)" in result.output
    assert "official tile(s) absent" in result.output  # a tiny copy: warnings only
    assert "train:" in result.output and "test:" in result.output
    if name == "potsdam":
        assert "EPSG:32633" in result.output
    if name == "vaihingen":
        assert "no CRS" in result.output
        # the 3 validation areas are counted apart from the 13 training areas
        assert "of 13 official tiles (+3 held out for validation)" in result.output
        assert "val: " in result.output and "of 3 official tiles" in result.output


def test_cli_is_registered():
    result = CliRunner().invoke(main, ["--help"])
    assert "data" in result.output


def test_missing_modality_unreadable_file_and_disagreements_fail(tmp_path):
    paths = load_make("vaihingen").make(tmp_path, tiles=(1, 3, 5, 7, 11), size=48)
    paths[1]["dsm"].unlink()  # required modality missing
    paths[3]["image"].write_bytes(b"not a tiff")  # unreadable
    label = paths[5]["label"]
    with rasterio.open(label) as src:
        data = src.read()
    rewrite(label, data[:, :-5, :])  # label 5 px shorter than the image
    dsm = paths[7]["dsm"]
    with rasterio.open(dsm) as src:
        d = src.read()
    rewrite(dsm, d.astype(np.uint8), dtype="uint8")  # wrong dtype
    rewrite(paths[11]["dsm"], np.pad(d, ((0, 0), (0, 1), (0, 1)), mode="edge"))  # off by one: ok
    result = run("vaihingen", tmp_path)
    assert result.exit_code == 1
    out = result.output
    assert "tile 1: no aux file" in out and "dsm_09cm_matching_area1.tif" in out
    assert f"{paths[3]['image']}: unreadable" in out
    assert f"{label}:" in out and "px but the optical image" in out
    assert f"{dsm}: dtype uint8, aux needs float32" in out
    assert "off by one pixel, cropped/padded on reading" in out
    assert "INCOMPLETE: 4 error(s)" in out
    report = check_folder("vaihingen", tmp_path, progress=False)
    assert not report.ok and len(report.all_errors) == 4
    assert [t.name for t in report.tiles if not t.errors] == ["11"]


def test_band_count_optional_products_and_unknown_files(tmp_path):
    paths = load_make("potsdam").make(tmp_path, tiles=("2_10", "2_11"), size=48)
    paths["2_11"]["ndsm"].unlink()
    (tmp_path / "2_Ortho_RGB" / "top_potsdam_9_99_RGB_copy.tif").write_bytes(b"x")
    report = check_folder("potsdam", tmp_path, progress=False)
    assert report.ok
    assert any("tile 2_11: optional ndsm absent" in w for w in report.all_warnings)
    assert any("unknown file" in w and "RGB_copy" in w for w in report.all_warnings)
    rgbir = paths["2_10"]["image_rgbir"]
    with rasterio.open(rgbir) as src:
        data = src.read()
    rewrite(rgbir, data[:3], photometric="RGB")
    result = run("potsdam", tmp_path)
    assert result.exit_code == 1
    assert f"{rgbir}: 3 band(s), image:RGBIR needs 4" in result.output


def test_empty_folder_and_bad_arguments(tmp_path):
    result = run("whu-opt-sar", tmp_path)
    assert result.exit_code == 1 and "no whu-opt-sar tile found" in result.output
    result = run("potsdam", tmp_path / "nowhere")
    assert result.exit_code != 0 and "is not a folder" in result.output
    assert "Traceback" not in result.output
    result = run("bogus", tmp_path)
    assert result.exit_code == 2
