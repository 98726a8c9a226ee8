"""Inference: tiled prediction of whole scenes and GIS-ready writers.

- :func:`predict_scene` streams a scene through a model and writes a Cloud-Optimised GeoTIFF
  class map with a colour table, a QGIS ``.qml`` style and a raster attribute table (and
  optionally probabilities and polygons);
- :func:`predict_from_checkpoint` does the same from an rsprompt checkpoint.
"""

from rsprompt.inference.from_checkpoint import CheckpointPredictor, predict_from_checkpoint
from rsprompt.inference.predictor import SceneNormalizer, predict_scene
from rsprompt.inference.reader import AuxStats, PredictError, SceneReader
from rsprompt.inference.summary import PredictSummary
from rsprompt.inference.windows import Window, window_grid, window_weight

__all__ = [
    "AuxStats",
    "CheckpointPredictor",
    "PredictError",
    "PredictSummary",
    "SceneNormalizer",
    "SceneReader",
    "Window",
    "predict_from_checkpoint",
    "predict_scene",
    "window_grid",
    "window_weight",
]
