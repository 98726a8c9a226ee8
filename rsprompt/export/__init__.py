"""Run rsprompt models outside rsprompt: ONNX export (QGIS Deepness) and stacked-input rasters.

- :func:`export_onnx` (``rsprompt export``): a checkpoint → one ONNX file taking the raw stacked
  bands (optical, then aux) and returning softmax probabilities, with Deepness's metadata;
- :class:`OnnxModel`: that file run by onnxruntime, callable like a model at prediction time;
- :func:`predict_onnx` / :class:`OnnxPredictor` (``rsprompt predict --backend onnxruntime``):
  whole scenes predicted with that file through rsprompt's own prediction pipeline;
- :func:`stack_scene` (``rsprompt stack``): a scene and its DSM/SAR → one VRT layer (the aux
  aligned onto the scene's grid exactly as ``rsprompt predict`` aligns it).

onnx and onnxruntime come with the optional extra ``rsprompt[onnx]``; the functions that need
them say so when they are missing.

Example:
    >>> from rsprompt.export import InputLayout
    >>> InputLayout(bands=[1, 2, 3], n_optical=3, aux_kind="dsm", aux_channels=1).channels
    4
"""

from rsprompt.export.common import DATASET_GSD_CM, ExportError, InputLayout, input_layout
from rsprompt.export.onnx_export import ExportSummary, export_onnx
from rsprompt.export.onnx_predict import OnnxPredictor, onnx_precision, predict_onnx
from rsprompt.export.onnx_runtime import OnnxModel, onnx_device, read_metadata
from rsprompt.export.stack import StackSummary, stack_scene

__all__ = [
    "DATASET_GSD_CM",
    "ExportError",
    "ExportSummary",
    "InputLayout",
    "OnnxModel",
    "OnnxPredictor",
    "StackSummary",
    "export_onnx",
    "input_layout",
    "onnx_device",
    "onnx_precision",
    "predict_onnx",
    "read_metadata",
    "stack_scene",
]
