"""`rsprompt predict` end to end: checkpoint → synthetic scenes → COG + sidecars."""

from __future__ import annotations

import shutil
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import torch
from click.testing import CliRunner
from helpers import save_dsm_checkpoint
from rasterio.warp import Resampling, reproject

import rsprompt.data.normalize as normalize
import rsprompt.data.synthetic as synthetic
import rsprompt.engine.checkpoint as ckpt_mod
from rsprompt.cli import main
from rsprompt.data.labels import ISPRS_CLASSES
from rsprompt.models import registry
from rsprompt.models.base import SegmentationModel

METHOD = "inference-cli-tiny"


class Tiny(SegmentationModel):
    """Pixel-wise linear model on optical + DSM (DSM only where valid)."""

    def __init__(self, num_classes: int, aux_channels: int) -> None:
        super().__init__(METHOD, "none", num_classes, aux_channels)
        self.head = torch.nn.Conv2d(3 + aux_channels, num_classes, 1)
        self.freeze()

    def forward(self, image, aux=None, aux_valid=None):
        if aux is None:
            aux = torch.zeros_like(image[:, : self.aux_channels])
            aux_valid = torch.zeros_like(image[:, :1])
        return self.head(torch.cat([image, aux * aux_valid], 1))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    registry.METHOD_MODULES[METHOD] = __name__
    registry.register_method(METHOD)(lambda enc, k, a, weights=None, **kw: Tiny(k, a))
    torch.manual_seed(0)
    model = Tiny(6, 1)
    with torch.no_grad():
        model.head.weight.mul_(4)
        model.head.weight[:, 3, 0, 0] = torch.linspace(-6, 6, 6)  # the DSM matters
    yield save_dsm_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.ckpt", model, 48)
    registry.METHOD_MODULES.pop(METHOD, None)
    registry._BUILDERS.pop(METHOD, None)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Two scenes, DSMs in another CRS and resolution with nodata border and partial coverage."""
    root = tmp_path_factory.mktemp("scenes")
    out = {}
    for i, stem in enumerate(("north", "south")):
        sc = synthetic.generate_scene("isprs", size=(150, 200), seed=i, resolution=0.1)
        d = root / f"raw{i}"
        paths = synthetic.write_scene(
            sc,
            d,
            aux_crs="EPSG:32632",
            aux_resolution=0.25,
            aux_coverage=0.7,
            aux_nodata_border=3,
        )
        shutil.copy(paths["image"], root / f"{stem}.tif")
        shutil.copy(paths["dsm"], root / f"{stem}_dsm.tif")
        out[stem] = root / f"{stem}.tif"
    return root, out


def run(*args):
    return CliRunner().invoke(main, ["predict", *map(str, args)], catch_exceptions=False)


def _grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    """``mask`` dilated by ``pixels`` (4-neighbourhood)."""
    for _ in range(pixels):
        grown = mask.copy()
        grown[1:] |= mask[:-1]
        grown[:-1] |= mask[1:]
        grown[:, 1:] |= mask[:, :-1]
        grown[:, :-1] |= mask[:, 1:]
        mask = grown
    return mask


def _dsm_footprint(dsm: Path, scene: Path) -> np.ndarray:
    """The DSM's valid pixels on the scene's grid (rasterio's reprojection, nearest)."""
    with rasterio.open(dsm) as d, rasterio.open(scene) as s:
        valid = (d.read_masks(1) > 0).astype(np.uint8)
        out = np.zeros(s.shape, np.uint8)
        reproject(
            valid,
            out,
            src_transform=d.transform,
            src_crs=d.crs,
            dst_transform=s.transform,
            dst_crs=s.crs,
            resampling=Resampling.nearest,
        )
    return out > 0


def test_single_scene_with_dsm_on_another_grid(tmp_path, checkpoint, scenes):
    from rio_cogeo.cogeo import cog_validate

    root, sc = scenes
    out = tmp_path / "map.tif"
    res = run(
        sc["north"],
        "-m",
        checkpoint,
        "--dem",
        root / "north_dsm.tif",
        "-o",
        out,
        "--probabilities",
        tmp_path / "p.tif",
        "--vectors",
        tmp_path / "v.gpkg",
        "-q",
        "--summary-json",
        tmp_path / "s.json",
    )
    assert res.exit_code == 0, res.output
    assert "impervious surfaces" in res.output and "MPix/s" in res.output and "m²" in res.output
    with rasterio.open(sc["north"]) as src, rasterio.open(out) as ds:
        assert (ds.crs, ds.transform, ds.shape) == (src.crs, src.transform, src.shape)
        assert ds.colormap(1)[1][:3] == (0, 0, 255)
        cls = ds.read(1)
        crs, pixel_area = src.crs, abs(src.transform.a * src.transform.e)
    assert cog_validate(str(out))[0]
    assert cls.max() < 6 and len(np.unique(cls)) > 1
    labels = [e.get("label") for e in ET.parse(tmp_path / "map.qml").iter("paletteEntry")]
    assert labels == list(ISPRS_CLASSES.names)
    assert (tmp_path / "map.tif.aux.xml").exists()
    assert '"aux_stats"' in (tmp_path / "s.json").read_text()
    # Probabilities: one uint8 band per class, on the map's grid; each pixel's 6 values are
    # rounded probabilities summing to 255 (±3 from rounding), and the map's class has the
    # largest one (±1 where rounding ties them).
    with rasterio.open(tmp_path / "p.tif") as ds:
        assert ds.count == 6 and ds.dtypes == ("uint8",) * 6 and ds.shape == cls.shape
        assert ds.crs == crs and list(ds.descriptions) == list(ISPRS_CLASSES.names)
        prob = ds.read().astype(np.int64)
    total = prob.sum(0)
    assert total.min() >= 252 and total.max() <= 258
    chosen = np.take_along_axis(prob, cls[None].astype(np.int64), 0)[0]
    assert (chosen >= prob.max(0) - 1).all()
    # Vectors: the class polygons, in the scene's CRS, with the checkpoint's class names, that
    # cover each class's pixels exactly.
    assert pyogrio.list_layers(tmp_path / "v.gpkg")[:, 0].tolist() == ["classes"]
    frame = pyogrio.read_dataframe(tmp_path / "v.gpkg", layer="classes")
    assert frame.crs == crs
    names = ISPRS_CLASSES.names
    assert all(names[i] == n for i, n in zip(frame["class_id"], frame["class_name"], strict=True))
    area = frame.geometry.area.groupby(frame["class_id"]).sum()
    counts = np.bincount(cls.ravel(), minlength=6)
    for k in range(6):
        assert area.get(k, 0.0) == pytest.approx(counts[k] * pixel_area, rel=1e-6), names[k]
    # The DSM changed the map, and only where it covers the scene (so it was aligned): predicted
    # again without it, the maps differ inside its footprint and agree outside it (1 px margin
    # for bilinear resampling at its edge).
    assert run(sc["north"], "-m", checkpoint, "-o", tmp_path / "no_dsm.tif", "-q").exit_code == 0
    with rasterio.open(tmp_path / "no_dsm.tif") as ds:
        differs = ds.read(1) != cls
    footprint = _dsm_footprint(root / "north_dsm.tif", sc["north"])
    assert 0.4 < footprint.mean() < 0.9  # aux_coverage=0.7, less the nodata border
    assert differs[footprint].mean() > 0.05  # measured 0.17
    assert not differs[~_grow(footprint, 1)].any()


def test_several_scenes_with_pattern(tmp_path, checkpoint, scenes):
    _, sc = scenes
    res = run(
        sc["north"],
        sc["south"],
        "-m",
        checkpoint,
        "--dem",
        "{stem}_dsm.tif",
        "--out-dir",
        tmp_path / "maps",
        "--window",
        96,
        "--overlap",
        16,
        "-q",
    )
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in (tmp_path / "maps").iterdir())
    assert names == sorted(
        f"{s}_pred{ext}" for s in ("north", "south") for ext in (".qml", ".tif", ".tif.aux.xml")
    )
    a = rasterio.open(tmp_path / "maps" / "north_pred.tif").read(1)
    b = rasterio.open(tmp_path / "maps" / "south_pred.tif").read(1)
    assert not np.array_equal(a, b)
    # same output for every scene: refused
    res = run(sc["north"], sc["south"], "-m", checkpoint, "-o", tmp_path / "one.tif")
    assert res.exit_code != 0 and "same file for every scene" in res.output


def test_overwrite_flag(tmp_path, checkpoint, scenes):
    _, sc = scenes
    out = tmp_path / "m.tif"
    assert run(sc["south"], "-m", checkpoint, "-o", out, "-q").exit_code == 0
    first = out.stat().st_mtime_ns
    res = run(sc["south"], "-m", checkpoint, "-o", out, "-q")
    assert res.exit_code == 1 and "exists" in res.output and "--overwrite" in res.output
    assert out.stat().st_mtime_ns == first
    assert run(sc["south"], "-m", checkpoint, "-o", out, "-q", "--overwrite").exit_code == 0


def test_bad_inputs_write_nothing(tmp_path, checkpoint, scenes):
    root, sc = scenes
    plain = tmp_path / "plain.tif"
    warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
    with rasterio.open(sc["north"]) as src:
        data = src.read()
    with rasterio.open(
        plain,
        "w",
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=3,
        dtype="uint8",
    ) as dst:
        dst.write(data)
    out_dir = tmp_path / "maps"
    # the second scene is bad: the first is not written either
    res = run(sc["north"], plain, "-m", checkpoint, "--out-dir", out_dir, "-q")
    assert res.exit_code == 1
    assert "plain.tif is not georeferenced" in res.output and "Traceback" not in res.output
    assert not out_dir.exists()  # --out-dir is created only once everything is checked
    res = run(
        sc["north"], "-m", checkpoint, "--sar", root / "north_dsm.tif", "-o", tmp_path / "x.tif"
    )
    assert res.exit_code == 1 and "trained with DSM" in res.output
    res = run(
        sc["north"], "-m", checkpoint, "--dem", tmp_path / "missing.tif", "-o", tmp_path / "x.tif"
    )
    assert res.exit_code == 1 and "missing.tif: file not found" in res.output
    res = run(sc["north"], "-m", tmp_path / "nope.ckpt", "-o", tmp_path / "x.tif")
    assert res.exit_code == 1 and "nope.ckpt" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.tif"]


def test_scene_wide_minmax_warning(tmp_path, checkpoint, scenes):
    root, sc = scenes
    args = [sc["north"], "-m", checkpoint, "--dem", root / "north_dsm.tif", "-q"]
    res = run(*args, "-o", tmp_path / "m.tif")
    assert res.exit_code == 0
    # 200×150 px scene vs the checkpoint's 48 px training patches: the min–max is fitted once
    # over the whole scene. The warning names the scene, both sizes and what to prefer.
    text = " ".join(res.output.split())
    assert text.count("warning:") == 1
    for part in ("min–max", "north.tif", "200×150 px", "48 px", "Prefer an nDSM"):
        assert part in text, part
    # A scene no larger than the training patches gets no such warning.
    with rasterio.open(sc["north"]) as src:
        profile, data = src.profile, src.read(window=((0, 48), (0, 48)))
        profile.update(width=48, height=48, transform=src.window_transform(((0, 48), (0, 48))))
    small = tmp_path / "small.tif"
    with rasterio.open(small, "w", **{**profile, "tiled": False}) as dst:
        dst.write(data)
    res = run(
        small, "-m", checkpoint, "--dem", root / "north_dsm.tif", "-q", "-o", tmp_path / "s.tif"
    )
    assert res.exit_code == 0, res.output
    assert "min–max" not in res.output


def test_vaihingen_crop_errors_cleanly(tmp_path, checkpoint, shared_data):
    crops = sorted((shared_data / "isprs/vaihingen/derived").glob("*_img.tif"))
    if not crops:
        pytest.skip("no Vaihingen crop")
    res = run(crops[0], "-m", checkpoint, "-o", tmp_path / "v.tif")
    assert res.exit_code == 1 and f"{crops[0].name} is not georeferenced" in res.output
    assert list(tmp_path.iterdir()) == []


def test_potsdam_crop_aux_missing(tmp_path, checkpoint, shared_data):
    crops = sorted((shared_data / "isprs/potsdam/derived").glob("*_img.tif"))
    if not crops:
        pytest.skip("no Potsdam crop")
    out = tmp_path / "p.tif"
    res = run(crops[0], "-m", checkpoint, "-o", out, "-q", "--window", 256)
    assert res.exit_code == 0, res.output
    with rasterio.open(crops[0]) as src, rasterio.open(out) as ds:
        assert (ds.crs, ds.transform, ds.shape) == (src.crs, src.transform, src.shape)
    assert Path(f"{out}.aux.xml").exists()


def test_palette_and_classes_options(tmp_path, checkpoint, scenes):
    from rsprompt.inference.from_checkpoint import parse_palette
    from rsprompt.inference.reader import PredictError

    assert parse_palette("potsdam", 2) == [(255, 255, 255), (0, 0, 255)]
    assert parse_palette("#ff0000, #00ff00", 2) == [(255, 0, 0), (0, 255, 0)]
    f = tmp_path / "pal.txt"
    f.write_text("#010203\n#040506\n")
    assert parse_palette(str(f), 1) == [(1, 2, 3)]
    with pytest.raises(PredictError, match="2 colours for 3 classes"):
        parse_palette("#ff0000,#00ff00", 3)
    with pytest.raises(PredictError, match="not a #rrggbb"):
        parse_palette("red,green", 2)
    _, sc = scenes
    out = tmp_path / "m.tif"
    pal = ",".join(["#102030"] * 6)
    res = run(sc["south"], "-m", checkpoint, "-o", out, "-q", "--palette", pal)
    assert res.exit_code == 0, res.output
    assert rasterio.open(out).colormap(1)[0][:3] == (16, 32, 48)
    res = run(sc["south"], "-m", checkpoint, "-o", tmp_path / "x.tif", "--classes", "a,b")
    assert res.exit_code == 1 and "not open-vocabulary" in res.output


def test_open_vocabulary_checkpoint_predicts_with_other_class_names(tmp_path, scenes):
    """RPN (tiny random CLIP): `--classes` replaces the vocabulary; known names keep their colours."""
    torch.manual_seed(0)
    model = registry.build_model("rpn", "rsprompt-tiny-clip", 6, aux_channels=0, img_size=64)
    norm = normalize.Normalization(normalize.OpticalNormalizer(), None)
    meta = ckpt_mod.model_meta(
        model,
        weights=None,
        encoder_seed=0,
        model_kwargs={"img_size": 64},
        classes=ISPRS_CLASSES.names,
        colors=ISPRS_CLASSES.colors,
        normalization=norm,
        patch_size=64,
    )
    ckpt = ckpt_mod.save_model_checkpoint(tmp_path / "rpn.ckpt", model, meta)
    _, sc = scenes

    def predict_with(classes, out):
        return run(
            sc["north"], "-m", ckpt, "-o", out, "-q", "--window", 64, "--overlap", 16,
            "--classes", classes,
        )  # fmt: skip

    out = tmp_path / "ov.tif"
    res = predict_with("tree, building ,road", out)
    assert res.exit_code == 0, res.output
    with rasterio.open(out) as ds:
        values = np.unique(ds.read(1))
        cmap = ds.colormap(1)
    assert set(values.tolist()) <= {0, 1, 2, 255}
    assert cmap[0][:3] == ISPRS_CLASSES.colors[3]  # "tree" keeps the checkpoint's colour
    assert cmap[1][:3] == ISPRS_CLASSES.colors[1]  # "building" too
    qml = out.with_suffix(".qml").read_text()
    assert all(f'label="{n}"' in qml for n in ("tree", "building", "road"))
    assert "low vegetation" not in qml
    # The vocabulary decides the output: a single-class vocabulary gives one class everywhere.
    res = predict_with("tree", tmp_path / "one.tif")
    assert res.exit_code == 0, res.output
    with rasterio.open(tmp_path / "one.tif") as ds:
        assert set(np.unique(ds.read(1)).tolist()) <= {0, 255}
