"""Inference: tiled prediction of whole scenes and GIS-ready writers.

- :func:`predict_scene` streams a scene through a model and writes a Cloud-Optimised GeoTIFF
  class map with a colour table, a QGIS ``.qml`` style and a raster attribute table (and
  optionally probabilities and polygons);
- :func:`predict_from_checkpoint` does the same from an rsprompt checkpoint;
- :func:`row_bands` splits a scene into horizontal bands for separate workers
  (``predict_scene(row_range=…)``), and :func:`merge_row_parts` stitches their parts into the
  same map a single run writes.

The stages behind :func:`predict_scene` (window plan, scene source, model step, blender, map
sink) are the modules :mod:`~rsprompt.inference.windows`, :mod:`~rsprompt.inference.source`,
:mod:`~rsprompt.inference.model_step`, :mod:`~rsprompt.inference.blender` and
:mod:`~rsprompt.inference.sink`; the grid and blending weights are shared with evaluation in
:mod:`rsprompt.tiling`.
"""

from rsprompt.inference.from_checkpoint import CheckpointPredictor, predict_from_checkpoint
from rsprompt.inference.parts import merge_row_parts
from rsprompt.inference.predictor import SceneNormalizer, predict_scene
from rsprompt.inference.reader import AuxStats, PredictError, SceneReader
from rsprompt.inference.summary import PredictSummary
from rsprompt.inference.windows import Window, row_bands, window_grid, window_weight

__all__ = [
    "AuxStats",
    "CheckpointPredictor",
    "PredictError",
    "PredictSummary",
    "SceneNormalizer",
    "SceneReader",
    "Window",
    "merge_row_parts",
    "predict_from_checkpoint",
    "predict_scene",
    "row_bands",
    "window_grid",
    "window_weight",
]
