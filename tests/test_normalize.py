import json

import numpy as np
import pytest
import torch

from rsprompt.data.normalize import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DSMNormalizer,
    Normalization,
    OpticalNormalizer,
    SARNormalizer,
    ground_estimate,
    missing_aux,
)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_optical_imagenet_and_band_selection(rng):
    img = rng.integers(0, 256, (4, 8, 8)).astype(np.uint8)
    norm = OpticalNormalizer(bands=(0, 1, 2))
    out = norm.apply(img)
    assert out.shape == (3, 8, 8) and out.dtype == np.float32
    expected = (img[:3] / 255.0 - np.array(IMAGENET_MEAN)[:, None, None]) / np.array(IMAGENET_STD)[
        :, None, None
    ]
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    # all four bands need four (or one) mean values
    with pytest.raises(ValueError, match="4 bands"):
        OpticalNormalizer().apply(img)
    four = OpticalNormalizer(mean=(0.5,), std=(0.5,))
    assert four.apply(img).shape == (4, 8, 8)
    with pytest.raises(ValueError, match="needs more than"):
        OpticalNormalizer(bands=(0, 5), mean=(0.5,), std=(0.5,)).apply(img)


def test_optical_torch_matches_numpy_and_no_nan(rng):
    img = rng.random((3, 5, 5)).astype(np.float32) * 255
    img[0, 0, 0] = np.nan
    norm = OpticalNormalizer()
    a = norm.apply(img)
    b = norm.apply(torch.from_numpy(img)).numpy()
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert np.isfinite(a).all() and a[0, 0, 0] == 0


def test_dsm_minmax_fit_once_apply_per_window_has_no_seams(rng):
    dsm = (rng.random((40, 50)) * 100 + 240).astype(np.float32)
    dsm[3, 4] = np.nan
    norm = DSMNormalizer(mode="minmax")
    stats = norm.fit(dsm)
    valid = np.isfinite(dsm)
    assert stats == {"min": float(dsm[valid].min()), "max": float(dsm[valid].max())}
    whole, whole_valid = norm.apply(dsm, stats)
    assert whole.shape == (1, 40, 50) and np.isfinite(whole).all()
    assert whole.min() == 0.0 and whole.max() == pytest.approx(1.0)
    assert whole[0, 3, 4] == 0 and whole_valid[0, 3, 4] == 0 and whole_valid.sum() == 40 * 50 - 1
    win, win_valid = norm.apply(dsm[10:30, 20:45], stats, offset=(10, 20))
    np.testing.assert_array_equal(win, whole[:, 10:30, 20:45])
    np.testing.assert_array_equal(win_valid, whole_valid[:, 10:30, 20:45])
    with pytest.raises(ValueError, match="needs stats"):
        norm.apply(dsm)


def test_dsm_constant_and_all_invalid_tiles_give_zeros():
    norm = DSMNormalizer(mode="minmax")
    flat = np.full((4, 4), 250.0, np.float32)
    out, valid = norm.apply(flat, norm.fit(flat))
    assert (out == 0).all() and (valid == 1).all()
    nodata = np.full((4, 4), -9999.0, np.float32)
    n2 = DSMNormalizer(mode="minmax", nodata=-9999.0)
    out, valid = n2.apply(nodata, n2.fit(nodata))
    assert (out == 0).all() and (valid == 0).all()


def test_ndsm_recovers_building_height_and_windows_match():
    h, w = 120, 120
    _yy, xx = np.mgrid[0:h, 0:w]
    dsm = (250.0 + 0.01 * xx).astype(np.float32)  # gently sloping ground
    dsm[40:60, 50:75] += 12.0  # a 12 m building, 20×25 px = 2.0×2.5 m at 0.1 m
    norm = DSMNormalizer(mode="ndsm", cell_m=0.5, window_m=6.0, max_height_m=40.0)
    stats = norm.fit(dsm, res=0.1)
    out, valid = norm.apply(dsm, stats)
    assert valid.all()
    assert out[0, 45:55, 55:70].mean() * 40 == pytest.approx(12.0, abs=1.0)
    assert out[0, 90:, :].mean() * 40 < 0.5
    win, _ = norm.apply(dsm[30:90, 40:100], stats, offset=(30, 40))
    np.testing.assert_allclose(win, out[:, 30:90, 40:100], atol=1e-6)
    # serialisable statistics: a JSON round trip gives the same normalisation
    back = json.loads(json.dumps(stats))
    again, _ = norm.apply(dsm, back)
    np.testing.assert_array_equal(again, out)
    grid, cell = ground_estimate(dsm, None, 0.1, 0.5, 6.0)
    assert cell == 5 and grid.shape == (24, 24)


def test_dsm_global_fit():
    a = np.array([[1.0, 2.0], [3.0, np.nan]], np.float32)
    b = np.array([[4.0, 5.0]], np.float32)
    norm = DSMNormalizer().fit_global([a, b])
    assert norm.mode == "global" and norm.mean == pytest.approx(3.0)
    out, _valid = norm.apply(b)
    np.testing.assert_allclose(out[0, 0], (b[0] - 3.0) / np.sqrt(2.0), rtol=1e-5)


def test_sar_modes_and_nodata():
    raw8 = np.array([[0, 255], [128, 10]], np.uint8)
    out, valid = SARNormalizer(mode="uint8").apply(raw8)
    np.testing.assert_allclose(out[0], raw8 / 255.0, rtol=1e-6)
    assert valid.all()
    db = np.array([[-30.0, -10.0], [np.nan, 10.0]], np.float32)
    out, valid = SARNormalizer(mode="db", db_min=-25, db_max=5).apply(db)
    np.testing.assert_allclose(out[0], [[0.0, 0.5], [0.0, 1.0]], atol=1e-6)
    np.testing.assert_array_equal(valid[0], [[1, 1], [0, 1]])
    lin = np.array([[0.1, 1.0], [0.0, -1.0]], np.float32)  # 0 and negatives are invalid
    out, valid = SARNormalizer(mode="linear", db_min=-20, db_max=0).apply(lin)
    np.testing.assert_allclose(out[0, 0], [0.5, 1.0], atol=1e-6)
    np.testing.assert_array_equal(valid[0], [[1, 1], [0, 0]])
    assert np.isfinite(out).all()
    t_out, t_valid = SARNormalizer(mode="db", nodata=-10.0).apply(torch.from_numpy(db))
    assert torch.isfinite(t_out).all() and t_valid[0, 0, 1] == 0


def test_missing_aux_and_serialisation_roundtrip():
    aux, valid = missing_aux((3, 4))
    assert aux.shape == (1, 3, 4) and not aux.any() and not valid.any()
    t_aux, t_valid = missing_aux((3, 4), like=torch.zeros(1))
    assert isinstance(t_aux, torch.Tensor) and t_valid.sum() == 0
    for norm in (
        Normalization(OpticalNormalizer(bands=(0, 1, 2)), SARNormalizer(mode="db", db_min=-20)),
        Normalization(OpticalNormalizer(mean=(0.5,), std=(0.5,)), DSMNormalizer(mode="ndsm")),
        Normalization(),
    ):
        d = json.loads(json.dumps(norm.to_dict()))
        assert Normalization.from_dict(d) == norm
    with pytest.raises(ValueError, match="unknown aux"):
        Normalization.from_dict({"optical": OpticalNormalizer().to_dict(), "aux": {"kind": "x"}})
    with pytest.raises(ValueError, match="mode"):
        DSMNormalizer(mode="bogus")  # type: ignore[arg-type]
