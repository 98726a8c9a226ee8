"""The prediction stages one by one, and a scene predicted in row parts and merged.

Every expected value below is worked out by hand from the stage's rule (window starts every
``window - overlap`` pixels, the last one shifted inside; rows flushed at the first output row
plus multiples of the write alignment; argmax of weighted sums, first class on ties; uint8
probabilities ``round(255 · sum / weight)``), never read back from the code.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest
import rasterio
import torch
from test_inference_predict import CRS, ORIGIN, scene_array, write_raster

from rsprompt.data.labels import ClassTable
from rsprompt.inference import PredictError, merge_row_parts, predict_scene, row_bands
from rsprompt.inference.blender import (
    Blender,
    StripAccumulator,
    argmax_classes,
    probabilities_u8,
)
from rsprompt.inference.model_step import ModelStep, ScoredBatch
from rsprompt.inference.reader import SceneReader
from rsprompt.inference.sink import MapSink, MapTargets, RasterGrid, count_classes
from rsprompt.inference.source import SceneSource, SourceBatch
from rsprompt.inference.windows import Batch, Window, WindowPlan
from rsprompt.inference.writers import AtomicOutputs
from rsprompt.models.base import SegmentationModel
from rsprompt.tiling import WeightCache, axis_offsets, row_windows

THREE = ClassTable(("a", "b", "c"), ((255, 0, 0), (0, 255, 0), (0, 0, 255)))


# ------------------------------------------------------------------ the window plan
def test_row_bands_cut_at_the_window_rows_nearest_an_equal_split():
    # window 64, overlap 16: window rows start every 48 px, the last at 200 - 64 = 136
    assert axis_offsets(200, 64, 16) == [0, 48, 96, 136]
    assert row_bands(200, 1, 64, 16) == [(0, 200)]
    assert row_bands(200, 2, 64, 16) == [(0, 96), (96, 200)]  # 100 → 96
    # 66.7 → 48 (18.7 away; 96 is 29.3), 133.3 → 136
    assert row_bands(200, 3, 64, 16) == [(0, 48), (48, 136), (136, 200)]
    # more bands than window rows: one band per window row
    assert row_bands(200, 10, 64, 16) == [(0, 48), (48, 96), (96, 136), (136, 200)]
    assert row_bands(50, 4, 64, 16) == [(0, 50)]  # one window row
    with pytest.raises(ValueError, match="bands"):
        row_bands(200, 0, 64, 16)


def test_plan_batches_rows_and_flush_boundaries():
    # 100 × 70 scene, window 64, overlap 16: rows at 0 and 36, columns at 0 and 6
    plan = WindowPlan(100, 70, 64, 16, num_classes=3, batch_size=3)
    wins = [Window(0, 0, 64, 64), Window(0, 6, 64, 64), Window(36, 0, 64, 64)]
    assert plan.batches == [Batch(0, tuple(wins)), Batch(0, (Window(36, 6, 64, 64),))]
    assert (plan.n_windows, plan.is_part, plan.align, plan.strip_rows) == (4, False, 16, 16)
    assert plan.strip_span(0, 36) == (0, 70)
    assert plan.flush_boundary(36) == 32  # 36 // 16 · 16
    # rows [0, 30): the row-36 windows are not needed; the first batch is kept whole
    top = WindowPlan(100, 70, 64, 16, num_classes=3, batch_size=3, row_range=(0, 30))
    assert top.batches == plan.batches[:1] and top.n_windows == 3 and top.is_part
    assert [top.needed(w) for w in wins] == [True, True, False]
    # rows [80, 100): only the row-36 windows are needed, but the first batch holds one
    low = WindowPlan(100, 70, 64, 16, num_classes=3, batch_size=3, row_range=(80, 100))
    assert low.batches == plan.batches and low.band_extent(0) == (36, 0, 70)
    assert low.flush_boundary(36) == 32  # 80 + floor(-44 / 16) · 16 = 80 - 48
    assert low.flush_boundary(97) == 96
    with pytest.raises(ValueError, match="row range"):
        WindowPlan(100, 70, 64, 16, num_classes=3, row_range=(50, 101))
    assert row_windows(plan.windows, 80, 100) == [Window(36, 0, 64, 64), Window(36, 6, 64, 64)]


def test_plan_in_column_bands_writes_tiles():
    # 1100 columns, window 128: a budget of 1 MB leaves one 512-column core per band
    plan = WindowPlan(140, 1100, 128, 32, num_classes=6, memory_mb=1.0)
    assert plan.col_bands == [(0, 512), (512, 1024), (1024, 1100)]
    assert (plan.align, plan.strip_rows) == (512, None)
    # band 1 blends the windows touching columns 512..1023: starts 480 … 960 (every 96) and
    # the last one, shifted to 1100 - 128 = 972, which ends on the scene's edge
    assert plan.band_extent(1) == (0, 480, 1100)


def test_weight_cache_sum_and_cosine():
    cache = WeightCache(100, 100, 16, "sum")
    np.testing.assert_array_equal(cache(Window(36, 36, 64, 64)), np.ones((64, 64), np.float32))
    cos = WeightCache(100, 100, 16)
    w = cos(Window(36, 0, 64, 64))
    # starts inside (row 36 > 0): first row is sin²(π/2 · 0.5/16); ends on the edge: last row 1
    assert w[0, 0] == pytest.approx(np.sin(np.pi / 4 / 16) ** 2, rel=1e-6)
    assert w[-1, 0] == 1.0 and w[32, 0] == 1.0
    assert cos(Window(36, 0, 64, 64)) is w  # computed once
    with pytest.raises(ValueError, match="blend"):
        WeightCache(10, 10, 2, "max")


# ------------------------------------------------------------------ the blender
def test_strip_accumulator_starting_below_the_top():
    acc = StripAccumulator(40, 4, 2, capacity=20, row0=16)
    ones = np.ones((2, 16, 4), np.float32)
    acc.add(Window(16, 0, 16, 4), ones, np.ones((16, 4), np.float32), np.ones((16, 4), bool))
    top, psum, wsum, valid = acc.pop(4)
    assert top == 16 and psum.shape == (2, 4, 4) and wsum.sum() == 16 and valid.all()
    with pytest.raises(RuntimeError, match="outside the live strip"):
        acc.add(Window(8, 0, 16, 4), ones, np.ones((16, 4), np.float32), np.ones((16, 4), bool))


def test_argmax_and_uint8_probabilities_by_hand():
    psum = np.array([[[1.0, 0.2, 0.5]], [[0.5, 0.6, 0.5]]], np.float32)  # K=2, 1×3
    np.testing.assert_array_equal(argmax_classes(psum, "uint8"), [[0, 1, 0]])  # tie → first
    wsum = np.array([[1.5, 0.8, 1.0]], np.float32)
    p8 = probabilities_u8(psum, wsum, np.array([[True, True, False]]))
    # 255·1/1.5 = 170, 255·0.5/1.5 = 85; 255·0.2/0.8 = 63.75 → 64, 255·0.6/0.8 = 191.25 → 191
    np.testing.assert_array_equal(p8[:, 0], [[170, 64, 0], [85, 191, 0]])
    assert count_classes(np.array([[0, 2, 255, 2]], np.uint8), 255, 3).tolist() == [1, 0, 2]


class RecordingSink:
    wants_probabilities = True

    def __init__(self):
        self.writes = []

    def write(self, row, col, classes, probs):
        self.writes.append((row, col, classes.copy(), probs.copy()))


def _blend(rows):
    """A 40 × 8 scene, window 16 without overlap (rows at 0, 16, 24; weights all 1)."""
    plan = WindowPlan(40, 8, 16, 0, num_classes=2, batch_size=8, row_range=rows)
    sink = RecordingSink()
    blender = Blender(plan, sink, dtype="uint8", nodata=255, num_classes=2)
    for batch in plan.batches:
        probs = np.zeros((len(batch.windows), 2, 16, 8), np.float32)  # K = 2
        for i, w in enumerate(batch.windows):
            probs[i, 0 if w.row < 24 else 1] = 1.0  # rows 0 and 16 say class 0, row 24 class 1
        valid = np.ones((len(batch.windows), 16, 8), bool)
        valid[:, -1, -1] = False  # the last pixel of each window has no data…
        blender.add(ScoredBatch(batch, probs, valid))
    blender.finish()
    return sink.writes


def test_blender_hands_on_rows_in_write_blocks():
    writes = _blend(None)
    # window 16 triggers a flush of rows 0..15; the end flushes rows 16..39
    assert [(r, c, cls.shape) for r, c, cls, _ in writes] == [(0, 0, (16, 8)), (16, 0, (24, 8))]
    cls = np.concatenate([w[2] for w in writes])
    probs = np.concatenate([w[3] for w in writes], axis=1)
    assert (cls[:24] == 0).sum() == 24 * 8 - 1  # (row 15, col 7): nodata of window 0 …
    assert cls[15, 7] == 255
    # rows 24..31: windows 16 (class 0) and 24 (class 1) tie → class 0, probabilities 127.5 → 128
    assert (cls[24:31] == 0).all() and (probs[:, 24:31] == 128).all()
    assert (cls[32:39] == 1).all() and (probs[1, 32:39] == 255).all()
    # … a later window's validity wins where windows overlap: (31, 7) is valid in window 24
    assert cls[31, 7] == 0 and cls[39, 7] == 255


def test_blender_part_gives_the_same_rows():
    whole = np.concatenate([w[2] for w in _blend(None)])
    part = _blend((20, 40))
    # the window at row 16 starts the strip; rows 16..19 are dropped, rows 20..39 written at once
    assert [(r, cls.shape) for r, _, cls, _ in part] == [(20, (20, 8))]
    np.testing.assert_array_equal(part[0][2], whole[20:])


# ------------------------------------------------------------------ the model step
class Echo(SegmentationModel):
    """Logits = the first ``k`` image channels; records the input sizes."""

    def __init__(self, k=3):
        super().__init__("test", "none", k, 0)
        self.k, self.shapes = k, []

    def forward(self, image, aux=None, aux_valid=None):
        self.shapes.append(tuple(image.shape))
        return image[:, : self.k]


def test_model_step_pads_small_windows_and_checks_classes():
    img = np.zeros((1, 3, 5, 5), np.float32)
    img[0, 1] = np.log(2.0)  # logits (0, ln 2, 0): softmax (1/4, 1/2, 1/4)
    item = SourceBatch(Batch(0, (Window(0, 0, 5, 5),)), img, None, None, np.ones((1, 5, 5), bool))
    seen = []
    model = Echo()
    step = ModelStep(
        model,
        THREE,
        device=torch.device("cpu"),
        precision="32",
        window=8,  # the model takes 8 × 8: the 5 × 5 window is padded and cropped back
        on_batch=seen.append,
    )
    out = step(item)
    assert model.shapes == [(1, 3, 8, 8)] and out.probs.shape == (1, 3, 5, 5) and seen == [1]
    np.testing.assert_allclose(out.probs[0, :, 2, 2], [0.25, 0.5, 0.25], rtol=1e-6)
    wrong = ModelStep(Echo(2), THREE, device=torch.device("cpu"), precision="32")
    with pytest.raises(PredictError, match="outputs 2 classes but the class table has 3"):
        wrong(item)


# ------------------------------------------------------------------ the scene source
def test_source_normalises_strips_once_or_windows_one_by_one(tmp_path):
    scene = write_raster(tmp_path / "s.tif", scene_array(100, 70))
    plan = WindowPlan(100, 70, 64, 16, num_classes=3, batch_size=3)
    for pixelwise, calls in ((True, 2), (False, 4)):  # 2 window rows, 4 windows
        offsets = []

        def norm(image, aux, aux_valid, offset, offsets=offsets):
            offsets.append(offset)
            return image / 2, aux, aux_valid

        norm.pixelwise = pixelwise
        with SceneReader(scene) as reader:
            items = list(SceneSource(reader, norm, plan).batches())
        assert len(offsets) == calls
        assert [len(i.batch.windows) for i in items] == [3, 1]
        assert items[0].image.shape == (3, 3, 64, 64) and items[0].aux is None
        raw = scene_array(100, 70)
        np.testing.assert_array_equal(items[1].image[0], raw[:, 36:100, 6:70] / 2)


# ------------------------------------------------------------------ the map sink
def test_sink_writes_a_part_with_shifted_transform(tmp_path):
    out = tmp_path / "part.tif"
    transform = rasterio.transform.from_origin(*ORIGIN, 1.0, 1.0)
    grid = RasterGrid(32, 8, rasterio.crs.CRS.from_string(CRS), transform, row0=48)
    with AtomicOutputs(overwrite=False) as outputs:
        sink = MapSink(outputs, MapTargets(out), grid, THREE, strip_rows=16)
        cls = np.full((16, 8), 2, np.uint8)
        cls[0, 0] = 255
        sink.write(48, 0, cls, None)  # scene row 48 = the part's row 0
        sink.write(64, 0, np.ones((16, 8), np.uint8), None)
        sink.close(True)
        assert sink.finish(part=True) == []
    assert sink.counts.tolist() == [0, 128, 127] and sink.nodata_pixels == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part.tif"]  # no sidecars
    with rasterio.open(out) as ds:
        assert ds.shape == (32, 8) and ds.transform == transform
        assert ds.block_shapes[0] == (512, 512)
        assert ds.compression.name.lower() == "deflate" and ds.nodata == 255
        assert ds.colormap(1)[2] == (0, 0, 255, 255)
        np.testing.assert_array_equal(ds.read(1)[16:], 1)


# ------------------------------------------------------------------ parts of a scene, merged
class Context(SegmentationModel):
    """A 3×3 convolution over the image and the aux (windowing changes its output)."""

    def __init__(self, k=6):
        super().__init__("test", "none", k, 1)
        g = torch.Generator().manual_seed(1)
        self.conv = torch.nn.Conv2d(5, k, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.copy_(torch.randn(self.conv.bias.shape, generator=g))

    def forward(self, image, aux=None, aux_valid=None):
        b, _, h, w = image.shape
        if aux is None:
            aux, aux_valid = torch.zeros(b, 1, h, w), torch.zeros(b, 1, h, w)
        return self.conv(torch.cat([image / 255.0, aux * aux_valid, aux_valid], 1))


class MinMax:
    """Aux scaled by its scene-wide min and max (needs the scene's statistics)."""

    needs_aux_stats = True
    stats_compress_with_scene_size = False

    def fit(self, stats):
        self.lo, self.hi = stats.min[0], stats.max[0]

    def __call__(self, image, aux, aux_valid, offset):
        return image, (aux - self.lo) / (self.hi - self.lo), aux_valid


@pytest.fixture
def scene_and_dsm(tmp_path):
    image = scene_array(150, 130, seed=3)
    image[:, 140:, :20] = 0  # a corner without data
    scene = write_raster(tmp_path / "scene.tif", image, nodata=0)
    yy, xx = np.mgrid[0:60, 0:55]
    dsm = (30 + 20 * np.sin(yy / 7.0) + xx * 0.5).astype(np.float32)
    dsm[:5] = -9999  # a band of nodata at the top of the DSM
    # DSM on a 2.5× coarser grid, origin half a coarse pixel off: warped and upsampled
    tr = rasterio.transform.from_origin(ORIGIN[0] - 1.25, ORIGIN[1] + 1.25, 2.5, 2.5)
    dsm_path = write_raster(tmp_path / "dsm.tif", dsm, transform=tr, nodata=-9999)
    return scene, dsm_path


def _predict(scene, dsm, out, probs, **kw):
    return predict_scene(
        scene, Context(), out, aux=dsm, normalize=MinMax(), classes=_SIX, probabilities=probs,
        window=48, overlap=12, batch_size=3, progress=False, **kw,
    )  # fmt: skip


_SIX = ClassTable(
    ("s0", "s1", "s2", "s3", "s4", "s5"),
    ((1, 2, 3), (40, 50, 60), (70, 80, 90), (100, 110, 120), (130, 140, 150), (160, 170, 180)),
)


def _rat_counts(path):
    rows = ET.parse(f"{path}.aux.xml").getroot().iter("Row")
    return [int(r.findall("F")[5].text) for r in rows]


@pytest.mark.parametrize(
    "bands",
    [[(0, 50), (50, 150)], [(0, 41), (41, 97), (97, 150)], row_bands(150, 3, 48, 12)],
    ids=["2 parts", "3 parts", "row_bands"],
)
def test_parts_merged_equal_the_whole_scene(tmp_path, scene_and_dsm, bands):
    scene, dsm = scene_and_dsm
    whole = _predict(scene, dsm, tmp_path / "whole.tif", tmp_path / "whole_p.tif")
    parts, pparts, counts = [], [], np.zeros(6, np.int64)
    for i, rows in enumerate(bands):
        part, ppart = tmp_path / f"part{i}.tif", tmp_path / f"part{i}_p.tif"
        s = _predict(scene, dsm, part, ppart, row_range=rows)
        assert s.height == rows[1] - rows[0] and s.aux_stats == whole.aux_stats
        counts += s.counts
        parts.append(part)
        pparts.append(ppart)
    assert counts.tolist() == whole.counts  # the parts' counts sum to the scene's
    merged = tmp_path / "merged.tif"
    m = merge_row_parts(
        parts, merged, classes=_SIX, probability_parts=pparts, probabilities=tmp_path / "m_p.tif"
    )
    assert m.counts == whole.counts and m.nodata_pixels == whole.nodata_pixels
    assert whole.nodata_pixels >= 10 * 20  # the corner without data
    with rasterio.open(tmp_path / "whole.tif") as a, rasterio.open(merged) as b:
        assert (a.profile, a.overviews(1)) == (b.profile, b.overviews(1))
        np.testing.assert_array_equal(a.read(1), b.read(1))
        np.testing.assert_array_equal(a.read(1, out_shape=(75, 65)), b.read(1, out_shape=(75, 65)))
        assert a.colormap(1) == b.colormap(1)
    with rasterio.open(tmp_path / "whole_p.tif") as a, rasterio.open(tmp_path / "m_p.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
        assert a.descriptions == b.descriptions
    assert _rat_counts(merged) == whole.counts == _rat_counts(tmp_path / "whole.tif")
    qml = (tmp_path / "whole.qml").read_text()
    assert (tmp_path / "merged.qml").read_text() == qml
    assert all(p.is_file() for p in parts + pparts)  # parts are left to the caller


def test_progress_callable_counts_every_window_batch_by_batch(tmp_path, scene_and_dsm):
    """A callable ``progress`` (a job's counter) gets each batch's windows: 150×130 px, window 48,
    stride 36 → ceil((150-48)/36)+1 = 4 rows × ceil((130-48)/36)+1 = 4 columns = 16 windows,
    in batches of at most 3; no tqdm bar is drawn."""
    scene, dsm = scene_and_dsm
    calls: list[int] = []
    s = predict_scene(
        scene, Context(), tmp_path / "m.tif", aux=dsm, normalize=MinMax(), classes=_SIX,
        window=48, overlap=12, batch_size=3, progress=calls.append,
    )  # fmt: skip
    assert sum(calls) == 16 == s.windows
    assert all(1 <= n <= 3 for n in calls)


def test_parts_in_column_bands_merge_to_the_whole_scene(tmp_path):
    scene = write_raster(tmp_path / "s.tif", scene_array(140, 1100, seed=5))
    kw = {"classes": _SIX, "window": 128, "overlap": 32, "progress": False, "memory_mb": 1.0}
    predict_scene(scene, Context(), tmp_path / "whole.tif", **kw)
    parts = [tmp_path / "a.tif", tmp_path / "b.tif"]
    for part, rows in zip(parts, [(0, 70), (70, 140)], strict=True):
        predict_scene(scene, Context(), part, row_range=rows, **kw)
    merge_row_parts(parts, tmp_path / "m.tif", classes=_SIX, vectors=tmp_path / "m.gpkg",
                    remove_parts=True)  # fmt: skip
    with rasterio.open(tmp_path / "whole.tif") as a, rasterio.open(tmp_path / "m.tif") as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
    assert not any(p.exists() for p in parts) and (tmp_path / "m.gpkg").is_file()


def test_part_and_merge_refusals(tmp_path, scene_and_dsm):
    scene, dsm = scene_and_dsm
    with pytest.raises(PredictError, match="no vectors"):
        _predict(
            scene, dsm, tmp_path / "a.tif", None, row_range=(0, 50), vectors=tmp_path / "v.gpkg"
        )
    with pytest.raises(PredictError, match=r"row range \[100, 151\) is not inside"):
        _predict(scene, dsm, tmp_path / "a.tif", None, row_range=(100, 151))
    assert list(tmp_path.glob("a*")) == []
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    _predict(scene, dsm, a, None, row_range=(0, 50))
    _predict(scene, dsm, b, None, row_range=(50, 150))
    with pytest.raises(PredictError, match="does not start where"):
        merge_row_parts([b, a], tmp_path / "m.tif", classes=_SIX)
    with pytest.raises(PredictError, match="does not start where"):
        merge_row_parts([a, a], tmp_path / "m.tif", classes=_SIX)  # a gap/overlap of rows
    with pytest.raises(PredictError, match="give both or neither"):
        merge_row_parts([a, b], tmp_path / "m.tif", classes=_SIX, probabilities=tmp_path / "p.tif")
    pa, pb = tmp_path / "pa.tif", tmp_path / "pb.tif"  # probabilities split at another row
    _predict(scene, dsm, tmp_path / "c.tif", pa, row_range=(0, 60))
    _predict(scene, dsm, tmp_path / "d.tif", pb, row_range=(60, 150))
    with pytest.raises(PredictError, match="do not cover the rows"):
        merge_row_parts([a, b], tmp_path / "m.tif", classes=_SIX, probability_parts=[pa, pb],
                        probabilities=tmp_path / "p.tif")  # fmt: skip
    narrow = write_raster(tmp_path / "n.tif", np.zeros((100, 120), np.uint8))
    with pytest.raises(PredictError, match="does not match"):
        merge_row_parts([a, narrow], tmp_path / "m.tif", classes=_SIX)
    with pytest.raises(PredictError, match="file not found"):
        merge_row_parts([a, tmp_path / "none.tif"], tmp_path / "m.tif", classes=_SIX)
    assert not (tmp_path / "m.tif").exists() and a.is_file() and b.is_file()
