"""Synthetic multimodal scenes: content, georeferencing and the official layouts."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning

from rsprompt.data.labels import (
    ISPRS_CLASSES,
    WHU_OPT_SAR_CLASSES,
    decode_isprs_rgb,
    decode_whu_labels,
)
from rsprompt.data.splits import get_tiles
from rsprompt.data.synthetic import (
    BAND_ORDERS,
    DEFAULT_TILES,
    convert_bands,
    generate_scene,
    sar_to_uint8,
    write_layout,
    write_scene,
)
from rsprompt.data.synthetic.noise import boundary_mask

IMPERVIOUS, BUILDING, LOW_VEG, TREE, CAR, CLUTTER = range(6)


def read(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return src.read(), src.profile.copy(), src.colorinterp, src


# ----------------------------------------------------------------------------- generation


@pytest.mark.parametrize("kind", ["isprs", "whu-opt-sar"])
def test_generate_is_seeded_and_deterministic(kind):
    a = generate_scene(kind, 96, seed=3, aux="both")
    b = generate_scene(kind, 96, seed=3, aux="both")
    c = generate_scene(kind, 96, seed=4, aux="both")
    for name in ("optical", "dsm", "sar", "labels"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.labels, c.labels)


@pytest.mark.parametrize(("kind", "k"), [("isprs", 6), ("whu-opt-sar", 7)])
def test_scene_arrays_dtypes_and_classes(kind, k):
    s = generate_scene(kind, (80, 112), seed=1, aux="both")
    assert s.shape == (80, 112)
    assert s.optical.dtype == np.uint8 and s.optical.shape[1:] == (80, 112)
    assert s.dsm.dtype == np.float32 and s.sar.dtype == np.float32
    assert s.labels.dtype == np.uint8 and s.labels.max() < k
    assert s.class_table.num_classes == k
    assert np.isfinite(s.dsm).all() and np.isfinite(s.sar).all()


@pytest.mark.parametrize("kind", ["isprs", "whu-opt-sar"])
def test_ndsm_is_the_dsm_minus_the_terrain(kind):
    """nDSM = DSM − DTM: the written DSM is terrain + heights + N(0, 0.05 m) sensor noise."""
    s = generate_scene(kind, (80, 112), seed=1, aux="dsm")
    noise = s.dsm.astype(np.float64) - s.ground - s.ndsm()
    assert abs(noise.mean()) < 0.005  # 8960 samples of sigma 0.05: the mean's sigma is 0.0005
    assert 0.045 < noise.std() < 0.055 and np.abs(noise).max() < 0.3  # 6 sigma
    assert s.ndsm().min() >= 0.0  # nothing below the terrain
    # The terrain is smooth where the heights jump: its steepest step between neighbouring
    # pixels (grade <= 3 % of 0.09 m, 0.4 % of 5 m pixels, plus low relief) is far below the
    # 4 m or more of a roof edge.
    step = max(np.abs(np.diff(s.ground, axis=a)).max() for a in (0, 1))
    assert step < 1.0 and s.ndsm().max() > 4.0
    nd = s.ndsm()
    nd[:] = -1  # a copy: changing it changes nothing in the scene
    assert s.ndsm().min() >= 0.0


def test_band_orders_share_content():
    rgbir = generate_scene("isprs", 64, seed=2, bands="rgbir")
    irrg = generate_scene("isprs", 64, seed=2, bands="irrg")
    rgb = generate_scene("isprs", 64, seed=2, bands="rgb")
    r, g, b, n = rgbir.optical
    np.testing.assert_array_equal(irrg.optical, np.stack([n, r, g]))
    np.testing.assert_array_equal(rgb.optical, np.stack([r, g, b]))
    np.testing.assert_array_equal(rgbir.optical_as("irrg"), irrg.optical)
    with pytest.raises(ValueError, match="missing"):
        convert_bands(rgb.optical, "rgb", "irrg")
    assert set(BAND_ORDERS) == {"irrg", "rgb", "rgbir"}


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="kind"):
        generate_scene("vaihingen")  # a dataset name, not a scene kind
    with pytest.raises(ValueError, match="band order"):
        generate_scene(bands="bgr")
    with pytest.raises(ValueError, match="at least 8"):
        generate_scene(size=4)
    with pytest.raises(ValueError, match="aux"):
        generate_scene(aux="lidar")


@pytest.fixture(scope="module")
def urban():
    return [generate_scene("isprs", 256, seed=s, bands="rgbir") for s in range(4)]


def test_isprs_heights_are_realistic(urban):
    for s in urban:
        nd, lab = s.ndsm(), s.labels
        roofs = nd[lab == BUILDING]
        assert roofs.size and roofs.min() >= 4.0 and roofs.max() <= 25.5
        assert np.abs(nd[lab == IMPERVIOUS]).max() < 0.01
        if (lab == CAR).any():
            np.testing.assert_allclose(nd[lab == CAR], 1.5, atol=0.11)
        assert nd[lab == LOW_VEG].max() < 1.0
        # Absolute DSM: terrain (Vaihingen-like ~265 m) plus objects, gently sloping ground.
        ground = s.dsm[lab == IMPERVIOUS]
        assert 240 < ground.min() and s.dsm.max() < 360
        assert ground.max() - ground.min() < 3.0
    trees = np.concatenate([s.ndsm()[s.labels == TREE] for s in urban])
    assert trees.size > 500 and trees.max() > 5 and trees.std() > 1.0  # rough crowns


def test_isprs_classes_present_and_optically_distinct_where_they_should_be(urban):
    labels = np.stack([s.labels for s in urban])
    opt = np.stack([s.optical for s in urban], axis=1)  # R, G, B, NIR × N × H × W
    fractions = np.bincount(labels.ravel(), minlength=6) / labels.size
    assert (fractions[:5] > 0.004).all() and fractions[CLUTTER] > 0  # every class occurs
    r, nir = opt[0].astype(float), opt[3].astype(float)
    ndvi = (nir - r) / (nir + r + 1e-6)
    assert ndvi[labels == LOW_VEG].mean() > 0.3 > ndvi[labels == IMPERVIOUS].mean()
    # Trees are textured: local variation well above that of lawns.
    dx = np.abs(np.diff(nir, axis=-1))
    lab = labels[..., 1:]
    assert dx[lab == TREE].mean() > 1.5 * dx[lab == LOW_VEG].mean()
    # Cars sit on impervious ground (streets, yards, parking lots).
    car = labels == CAR
    below = np.zeros_like(car)
    below[:, :-1] |= car[:, 1:]
    below[:, 1:] |= car[:, :-1]
    neighbours = labels[below & ~car]
    assert np.isin(neighbours, [IMPERVIOUS, TREE, CAR]).mean() > 0.9


def _colour_histogram_classifier(scenes_fit, scenes_eval, bits: int = 3) -> float:
    """Balanced accuracy of a per-pixel Bayes classifier on quantised colour (all 4 bands)."""

    def data(scenes):
        xs, ys = [], []
        for s in scenes:
            m = s.labels <= BUILDING
            xs.append(s.optical[:, m].T >> (8 - bits))
            ys.append(s.labels[m])
        x = np.concatenate(xs).astype(np.int64)
        code = ((x[:, 0] << bits | x[:, 1]) << bits | x[:, 2]) << bits | x[:, 3]
        return code, np.concatenate(ys)

    c_fit, y_fit = data(scenes_fit)
    c_eval, y_eval = data(scenes_eval)
    counts = np.zeros((2, 1 << (4 * bits)))
    np.add.at(counts, (y_fit, c_fit), 1)
    p = counts / counts.sum(axis=1, keepdims=True)
    pred = (p[1] > p[0]).astype(np.uint8)[c_eval]
    return float(np.mean([np.mean(pred[y_eval == c] == c) for c in (0, 1)]))


def _height_above_local_ground(dsm: np.ndarray, block: int = 32) -> np.ndarray:
    """DSM minus a morphological ground estimate (min over 3×3 blocks of ``block`` pixels)."""
    h, w = dsm.shape
    nh, nw = -(-h // block), -(-w // block)
    pad = np.pad(dsm, ((0, nh * block - h), (0, nw * block - w)), mode="edge")
    mins = pad.reshape(nh, block, nw, block).min(axis=(1, 3))
    p = np.pad(mins, 1, mode="edge")
    ground = np.min([p[i : i + nh, j : j + nw] for i in range(3) for j in range(3)], axis=0)
    return dsm - np.repeat(np.repeat(ground, block, 0), block, 1)[:h, :w]


def test_dsm_separates_roofs_from_impervious_but_colour_does_not(urban):
    fit, held_out = urban[:2], urban[2:]
    optical = _colour_histogram_classifier(fit, held_out)
    assert optical < 0.62, f"colour alone separates roofs from roads too well: {optical:.3f}"
    for s in held_out:
        m = s.labels <= BUILDING
        y = s.labels[m]
        pred = _height_above_local_ground(s.dsm)[m] > 2.5
        acc = np.mean([np.mean(pred[y == c] == c) for c in (0, 1)])
        assert acc > 0.98, f"DSM height should separate roofs from roads: {acc:.3f}"
        exact = s.ndsm()[m] > 2.0
        assert np.array_equal(exact, y == BUILDING)


def test_sar_backscatter_separates_roofs_and_shows_edges_and_water():
    s = generate_scene("isprs", 192, seed=5, aux="sar")
    roof = s.sar[s.labels == BUILDING].mean()
    road = s.sar[s.labels == IMPERVIOUS].mean()
    assert roof - road > 5  # dB
    w = generate_scene("whu-opt-sar", 192, seed=5)
    assert w.sar is not None and w.dsm is None
    water = w.sar[w.labels == 3]
    assert water.size and water.mean() < w.sar[w.labels == 1].mean() - 10
    # Speckle: a homogeneous class still varies from pixel to pixel.
    assert np.std(water) > 1.5
    # Bright double-bounce lines where a building rises (sensor in the west).
    rise = np.zeros(s.labels.shape, bool)
    rise[:, 1:] = ((s.height[:, 1:] - s.height[:, :-1]) > 2) & (s.labels[:, 1:] == BUILDING)
    assert s.sar[rise].mean() > roof + 5
    u8 = sar_to_uint8(w.sar)
    assert u8.dtype == np.uint8 and u8.min() >= 1


def test_whu_city_and_village_look_alike_but_differ_in_sar():
    scenes = [generate_scene("whu-opt-sar", 192, seed=s) for s in range(6)]
    city = np.concatenate([s.optical[:, s.labels == 1].T for s in scenes]).mean(0)
    village = np.concatenate([s.optical[:, s.labels == 2].T for s in scenes]).mean(0)
    assert np.abs(city - village).max() < 20
    sar_c = np.concatenate([s.sar[s.labels == 1] for s in scenes]).mean()
    sar_v = np.concatenate([s.sar[s.labels == 2] for s in scenes]).mean()
    assert sar_c - sar_v > 3
    classes = np.unique(np.concatenate([s.labels.ravel() for s in scenes]))
    assert set(classes) == set(range(7))
    for s in scenes:  # water is dark in NIR (band 4 of R, G, B, NIR)
        if (s.labels == 3).any():
            assert s.optical[3][s.labels == 3].mean() < 40


def test_boundary_mask_erodes_both_sides():
    lab = np.zeros((10, 10), np.uint8)
    lab[:, 5:] = 1
    m = boundary_mask(lab, 2)
    assert m[:, 3:7].all() and not m[:, :3].any() and not m[:, 7:].any()
    assert not boundary_mask(lab, 0).any()


# ----------------------------------------------------------------------------- write_scene

AUX_CRS = st.sampled_from([None, "EPSG:32632", "EPSG:32633", "EPSG:3035"])


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kind=st.sampled_from(["isprs", "whu-opt-sar"]),
    h=st.integers(16, 48),
    w=st.integers(16, 48),
    seed=st.integers(0, 2**16),
    bands=st.sampled_from(["irrg", "rgb", "rgbir"]),
    aux=st.sampled_from(["dsm", "sar", "both"]),
    aux_crs=AUX_CRS,
    aux_res_factor=st.sampled_from([None, 0.5, 2.0, 3.7]),
    coverage=st.sampled_from([1.0, 0.5, 0.81]),
    border=st.integers(0, 2),
)
def test_written_rasters_are_georeferenced_and_aligned(
    tmp_path_factory, kind, h, w, seed, bands, aux, aux_crs, aux_res_factor, coverage, border
):
    out = tmp_path_factory.mktemp("scene")
    res = 0.09 if kind == "isprs" else 5.0
    crs = "EPSG:32633" if kind == "isprs" else "EPSG:32649"
    s = generate_scene(kind, (h, w), seed, bands=bands, aux=aux, crs=crs, resolution=res)
    aux_res = None if aux_res_factor is None else res * aux_res_factor
    paths = write_scene(
        s,
        out,
        aux_crs=aux_crs,
        aux_resolution=aux_res,
        aux_coverage=coverage,
        aux_nodata_border=border,
    )
    assert sorted(paths) == sorted(
        ["image", "label", *(["dsm", "sar"] if aux == "both" else [aux])]
    )
    assert not list(out.glob(".*tmp*")), "temporary files left behind"

    img, prof, interp, _ = read(paths["image"])
    assert prof["crs"] == CRS.from_string(crs)
    assert prof["transform"] == s.transform and prof["transform"].a == pytest.approx(res)
    assert img.shape == (len(BAND_ORDERS[bands]), h, w) and img.dtype == np.uint8
    np.testing.assert_array_equal(img, s.optical)
    if bands == "rgbir":
        assert "alpha" not in {c.name for c in interp}

    lab, lprof, _, _ = read(paths["label"])
    assert lprof["crs"] == prof["crs"] and lprof["transform"] == prof["transform"]
    assert lab.shape == (1, h, w) and lab.dtype == np.uint8 and lprof["nodata"] == 255
    np.testing.assert_array_equal(lab[0], s.labels)
    with rasterio.open(paths["label"]) as src:
        assert src.colormap(1)[1][:3] == s.class_table.colors[1]

    for key in ("dsm", "sar"):
        if key not in paths:
            continue
        arr, aprof, _, _ = read(paths[key])
        assert arr.dtype == np.float32 and arr.shape[0] == 1 and aprof["nodata"] == -9999.0
        want_crs = CRS.from_string(aux_crs or crs)
        assert aprof["crs"] == want_crs
        want_res = aux_res or res
        assert aprof["transform"].a == pytest.approx(want_res)
        assert aprof["transform"].e == pytest.approx(-want_res)
        data = arr[0]
        valid = data != -9999.0
        if border:
            edge = np.ones_like(valid)
            edge[border:-border, border:-border] = False
            assert not valid[edge].any()
        same_grid = aux_crs in (None, crs) and aux_res is None and coverage == 1.0
        if same_grid:
            assert aprof["transform"] == s.transform and data.shape == (h, w)
            ref = s.dsm if key == "dsm" else s.sar
            np.testing.assert_array_equal(data[valid], ref[valid])
        else:
            # Footprint: inside the optical footprint (up to one aux pixel) and about
            # ``coverage`` of it when in the same CRS.
            with rasterio.open(paths[key]) as src:
                b = src.bounds
            if aux_crs in (None, crs):
                L, B, R, T = s.bounds
                tol = want_res + 1e-6
                assert b.left >= L - tol and b.top <= T + tol
                area = (b.right - b.left) * (b.top - b.bottom)
                assert (
                    area <= coverage * (R - L) * (T - B) * 1.0 + 4 * tol * (R - L + T - B) + tol**2
                )
        if valid.any() and key == "dsm":
            lo = s.dsm.min() - 0.01
            assert data[valid].min() >= lo and data[valid].max() <= s.dsm.max() + 0.01


def test_aux_on_other_grid_keeps_heights_where_it_overlaps(tmp_path):
    s = generate_scene("isprs", 96, seed=7)
    paths = write_scene(
        s, tmp_path, aux_crs="EPSG:32632", aux_resolution=0.2, aux_coverage=0.6, aux_nodata_border=3
    )
    with rasterio.open(paths["dsm"]) as src:
        assert src.crs.to_epsg() == 32632 and src.res == pytest.approx((0.2, 0.2))
        data = src.read(1, masked=True)
        assert 0.2 < data.mask.mean() < 0.9  # partial coverage, border and reprojection corners
        assert s.dsm.min() - 0.01 <= data.min() and data.max() <= s.dsm.max() + 0.01


def test_write_scene_refuses_to_overwrite_and_writes_nothing(tmp_path):
    s = generate_scene("isprs", 32, seed=0)
    write_scene(s, tmp_path)
    (tmp_path / "scene.tif").unlink()
    before = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    with pytest.raises(FileExistsError, match="overwrite"):
        write_scene(s, tmp_path)
    assert not (tmp_path / "scene.tif").exists()  # nothing written when any output exists
    assert {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before
    write_scene(generate_scene("isprs", 32, seed=1), tmp_path, overwrite=True)
    lab, _, _, _ = read(tmp_path / "labels.tif")
    np.testing.assert_array_equal(lab[0], generate_scene("isprs", 32, seed=1).labels)


def test_write_scene_without_crs_and_bad_aux(tmp_path):
    s = generate_scene("isprs", 32, seed=0, crs=None)
    paths = write_scene(s, tmp_path / "a", aux_resolution=0.18)
    _, prof, _, _ = read(paths["dsm"])
    assert prof["crs"] is None and prof["transform"].a == pytest.approx(0.18)
    with pytest.raises(ValueError, match="no CRS"):
        write_scene(s, tmp_path / "b", aux_crs="EPSG:32632")
    with pytest.raises(ValueError, match="coverage"):
        write_scene(generate_scene("isprs", 32), tmp_path / "c", aux_coverage=0)


# ----------------------------------------------------------------------------- layouts


def test_vaihingen_layout(tmp_path):
    out = write_layout(
        tmp_path,
        "vaihingen",
        tiles=[1, "area2", 32],
        size=40,
        seed=1,
        dsm_world_files=True,
        dsm_extra_px=1,
        eroded_for_participants=True,
    )
    assert list(out) == [1, 2, 32]
    root = tmp_path
    for area in (1, 2, 32):
        p = out[area]
        assert p["image"] == root / "top" / f"top_mosaic_09cm_area{area}.tif"
        assert p["dsm"] == root / "dsm" / f"dsm_09cm_matching_area{area}.tif"
        assert p["label"] == (
            root
            / "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE"
            / f"top_mosaic_09cm_area{area}.tif"
        )
        assert p["label_eroded"].name == f"top_mosaic_09cm_area{area}_noBoundary.tif"
        assert p["label_eroded"].parent.name == (
            "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE"
        )
        with pytest.warns(NotGeoreferencedWarning), rasterio.open(p["image"]) as src:
            assert src.crs is None and src.transform.is_identity
        img, _, _, _ = read(p["image"])
        assert img.shape[0] == 3 and img.dtype == np.uint8
        assert 40 <= img.shape[1] <= 44 and 40 <= img.shape[2] <= 44  # sizes vary per area
        dsm, dprof, _, _ = read(p["dsm"])
        assert dprof["crs"] is None and dsm.dtype == np.float32
        assert dsm.shape[1:] == (img.shape[1] + 1, img.shape[2] + 1)  # the 1-px quirk
        assert 240 < dsm.min() and dsm.max() < 360
        tfw = [float(v) for v in p["dsm_world"].read_text().split()]
        assert tfw[0] == pytest.approx(0.09) and tfw[3] == pytest.approx(-0.09)
        assert 400_000 < tfw[4] < 600_000 and 5_300_000 < tfw[5] < 5_500_000
        lab, _, _, _ = read(p["label"])
        idx = decode_isprs_rgb(lab)
        assert idx.max() <= 5
        ero, _, _, _ = read(p["label_eroded"])
        eidx = decode_isprs_rgb(ero)
        black = np.all(ero == 0, axis=0)
        assert black.any() and np.array_equal(eidx == 255, black)
        assert np.array_equal(eidx[~black], idx[~black])
        # Image NIR band (1st of IRRG) is high on low vegetation: band order NIR, R, G.
        veg = idx == 2
        assert veg.sum() > 20  # every area of this seed holds low vegetation (355-778 px)
        assert img[0][veg].mean() > img[1][veg].mean() + 30
    assert "label_participants" in out[1] and "label_participants" not in out[2]
    assert out[32]["label_eroded_participants"].parent.name == (
        "ISPRS_semantic_labeing_Vaihingen_ground_truth_eroded_for_participants"
    )
    # World files put the areas side by side without overlap.
    corners = [[float(v) for v in out[a]["dsm_world"].read_text().split()[4:]] for a in (1, 2, 32)]
    for i, (xa, ya) in enumerate(corners):
        for xb, yb in corners[i + 1 :]:
            assert abs(xa - xb) > 45 * 0.09 or abs(ya - yb) > 45 * 0.09


def test_vaihingen_labels_flat(tmp_path):
    out = write_layout(tmp_path, "vaihingen", tiles=[5], size=24, size_jitter=0)
    flat = write_layout(
        tmp_path / "flat", "vaihingen", tiles=[5], size=24, size_jitter=0, labels_flat=True
    )
    assert flat[5]["label"] == tmp_path / "flat" / "top_mosaic_09cm_area5.tif"
    assert flat[5]["label_eroded"] == tmp_path / "flat" / "top_mosaic_09cm_area5_noBoundary.tif"
    a, _, _, _ = read(out[5]["label"])
    b, _, _, _ = read(flat[5]["label"])
    np.testing.assert_array_equal(a, b)
    assert read(out[5]["image"])[0].shape == (3, 24, 24)


def test_potsdam_layout_grid_and_off_palette(tmp_path):
    out = write_layout(
        tmp_path,
        "potsdam",
        tiles=["2_10", "3_10", "2_11", "6_7"],
        size=32,
        off_palette={"6_7": {(255, 255, 0): (252, 255, 0)}},
    )
    p = out["2_10"]
    names = {k: v.relative_to(tmp_path).as_posix() for k, v in p.items()}
    assert names == {
        "image_rgb": "2_Ortho_RGB/top_potsdam_2_10_RGB.tif",
        "image_irrg": "3_Ortho_IRRG/top_potsdam_2_10_IRRG.tif",
        "image_rgbir": "4_Ortho_RGBIR/top_potsdam_2_10_RGBIR.tif",
        "dsm": "1_DSM/dsm_potsdam_02_10.tif",
        "ndsm": "1_DSM_normalisation/dsm_potsdam_02_10_normalized_lastools.jpg",
        "label": "5_Labels_all/top_potsdam_2_10_label.tif",
        "label_eroded": "5_Labels_all_noBoundary/top_potsdam_2_10_label_noBoundary.tif",
    }
    assert out["6_7"]["dsm"].name == "dsm_potsdam_06_07.tif"
    grids = {}
    for tile, paths in out.items():
        rgbir, prof, interp, _ = read(paths["image_rgbir"])
        assert rgbir.shape == (4, 32, 32) and prof["crs"].to_epsg() == 32633
        assert "alpha" not in {c.name for c in interp}
        rgb, _, _, _ = read(paths["image_rgb"])
        irrg, _, _, _ = read(paths["image_irrg"])
        np.testing.assert_array_equal(rgb, rgbir[:3])
        np.testing.assert_array_equal(irrg, rgbir[[3, 0, 1]])
        dsm, dprof, _, _ = read(paths["dsm"])
        assert dsm.dtype == np.float32 and dprof["transform"] == prof["transform"]
        lab, lprof, _, _ = read(paths["label"])
        assert lprof["transform"] == prof["transform"] and lab.shape == (3, 32, 32)
        grids[tile] = prof["transform"]
        from PIL import Image

        ndsm = np.asarray(Image.open(paths["ndsm"]))
        assert ndsm.shape == (32, 32) and ndsm.dtype == np.uint8
    t = grids["2_10"]
    assert (t.c, t.f) == pytest.approx((366976.5, 5808562.6)) and t.a == pytest.approx(0.05)
    assert grids["3_10"].c == pytest.approx(t.c + 32 * 0.05) and grids["3_10"].f == pytest.approx(
        t.f
    )
    assert grids["2_11"].f == pytest.approx(t.f - 32 * 0.05) and grids["2_11"].c == pytest.approx(
        t.c
    )
    lab67, _, _, _ = read(out["6_7"]["label"])
    colours = {tuple(c) for c in lab67.reshape(3, -1).T}
    assert (255, 255, 0) not in colours
    idx, report = decode_isprs_rgb(lab67, return_report=True)
    # Tile 6_7 of this seed holds cars: every off-palette car pixel is decoded as a car (4).
    off = np.all(lab67.transpose(1, 2, 0) == (252, 255, 0), axis=-1)
    assert off.sum() > 0
    assert report.near == int(off.sum()) and (idx[off] == 4).all()


def test_whu_layout_georeferenced_and_not(tmp_path):
    out = write_layout(tmp_path / "geo", "whu-opt-sar", size=(24, 36), seed=2)
    assert list(out) == list(DEFAULT_TILES["whu-opt-sar"])
    train, test = set(get_tiles("whu-opt-sar", "train")), set(get_tiles("whu-opt-sar", "test"))
    assert sum(t in train for t in out) == 2 and sum(t in test for t in out) == 1
    for name, p in out.items():
        assert p["image"] == tmp_path / "geo" / "optical" / f"{name}.tif"
        assert p["sar"] == tmp_path / "geo" / "sar" / f"{name}.tif"
        assert p["label"] == tmp_path / "geo" / "lbl" / f"{name}.tif"
        img, prof, interp, _ = read(p["image"])
        assert img.shape == (4, 24, 36) and img.dtype == np.uint8
        assert "alpha" not in {c.name for c in interp}
        assert prof["crs"].to_epsg() == 32600 + int(name[2:4])
        assert prof["transform"].a == pytest.approx(5.0)
        sar, sprof, _, _ = read(p["sar"])
        assert sar.shape == (1, 24, 36) and sar.dtype == np.uint8
        assert sprof["transform"] == prof["transform"]
        lab, _, _, _ = read(p["label"])
        assert set(np.unique(lab)) <= {10, 20, 30, 40, 50, 60, 70}
        assert decode_whu_labels(lab[0]).max() < WHU_OPT_SAR_CLASSES.num_classes
    plain = write_layout(
        tmp_path / "plain", "whu-opt-sar", tiles=["NH50E007002"], size=16, georeferenced=False
    )
    _, prof, _, _ = read(plain["NH50E007002"]["image"])
    assert prof["crs"] is None and prof["transform"].is_identity


def test_layout_defaults_cover_train_and_test(tmp_path):
    for layout, tiles in DEFAULT_TILES.items():
        splits = []
        for t in tiles:
            splits.append("test" if t in get_tiles(layout, "test") else "train")
        assert splits.count("train") == 2 and splits.count("test") == 1


def test_layout_is_deterministic_and_refuses_overwrite(tmp_path):
    a = write_layout(tmp_path / "a", "potsdam", tiles=["2_10"], size=16, seed=4)
    b = write_layout(tmp_path / "b", "potsdam", tiles=["2_10"], size=16, seed=4)
    np.testing.assert_array_equal(read(a["2_10"]["dsm"])[0], read(b["2_10"]["dsm"])[0])
    with pytest.raises(FileExistsError, match="overwrite"):
        write_layout(tmp_path / "a", "potsdam", tiles=["2_10", "2_11"], size=16, seed=4)
    assert not (tmp_path / "a" / "1_DSM" / "dsm_potsdam_02_11.tif").exists()
    write_layout(tmp_path / "a", "potsdam", tiles=["2_10"], size=16, seed=5, overwrite=True)
    assert not np.array_equal(read(a["2_10"]["dsm"])[0], read(b["2_10"]["dsm"])[0])
    assert not list((tmp_path / "a").rglob(".*tmp*"))


def test_layout_rejects_unknown_layout_and_tiles(tmp_path):
    with pytest.raises(ValueError, match="layout"):
        write_layout(tmp_path, "isprs")
    with pytest.raises(ValueError, match="not a potsdam tile"):
        write_layout(tmp_path, "potsdam", tiles=["9_9"])
    with pytest.raises(ValueError, match="Vaihingen area"):
        write_layout(tmp_path, "vaihingen", tiles=["top"])
    with pytest.raises(ValueError, match="not a vaihingen tile"):
        write_layout(tmp_path, "vaihingen", tiles=[9])


def test_isprs_class_table_matches_labels_module():
    assert generate_scene("isprs", 16).class_table is ISPRS_CLASSES
    assert math.isclose(generate_scene("isprs", 16).resolution[0], 0.09)
