"""Inference: tiled prediction of whole scenes and GIS-ready writers."""
