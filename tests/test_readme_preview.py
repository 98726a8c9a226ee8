"""scripts/readme_preview.py: the README's preview image from a demo run's preview.png."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "readme_preview.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("readme_preview", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scales_to_the_width_as_a_palette_png_and_leaves_the_input(tmp_path):
    # Five flat colour blocks of 40×48 px (RGBA like matplotlib's output).
    colours = [(255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0)]
    rgb = np.concatenate([np.full((48, 40, 3), c, np.uint8) for c in colours], axis=1)
    src = tmp_path / "preview.png"
    Image.fromarray(rgb).convert("RGBA").save(src)
    before = src.read_bytes()
    dst = tmp_path / "docs" / "assets" / "demo-preview.png"

    size = load_script().make_preview(src, dst, width=100)

    assert src.read_bytes() == before
    assert size == dst.stat().st_size
    assert not list(dst.parent.glob(".*tmp*"))  # the temporary file was renamed away
    with Image.open(dst) as out:
        assert out.mode == "P"
        assert out.size == (100, 24)  # 200×48 scaled by 1/2
        pixels = np.asarray(out.convert("RGB"))
    # Block centres keep their colour (each block is 20 px wide after scaling).
    for i, c in enumerate(colours):
        assert tuple(pixels[12, 20 * i + 10]) == c


def test_a_narrow_image_is_not_enlarged(tmp_path):
    src = tmp_path / "preview.png"
    Image.new("RGB", (60, 20), (10, 20, 30)).save(src)
    load_script().make_preview(src, tmp_path / "out.png", width=100)
    with Image.open(tmp_path / "out.png") as out:
        assert out.size == (60, 20)


def test_a_missing_preview_names_the_file_and_the_demo(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing\.png.*rsprompt demo"):
        load_script().make_preview(tmp_path / "nothing.png", tmp_path / "out.png")
