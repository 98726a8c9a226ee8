"""Seeded synthetic multimodal geo-scenes: the project's stand-in for data no machine here has.

A scene is an optical raster (IRRG, RGB or RGB+NIR uint8), a DSM (float32 metres: terrain,
buildings with flat or pitched roofs 4–25 m high, tree crowns with rough tops, 1.5 m cars) and/or a
SAR image (float32 dB with speckle, bright building edges, dark water), and labels in the ISPRS or
WHU-OPT-SAR classes, georeferenced in UTM. Roofs and impervious surfaces look alike optically on
purpose: the DSM (or SAR) is needed to tell them apart, as in real data.

- :func:`generate_scene` makes a :class:`Scene` in memory (all arrays on the optical grid);
- :func:`write_scene` writes ``scene.tif``, ``dsm.tif``/``sar.tif`` and ``labels.tif``, with the
  DSM/SAR optionally on another grid (CRS, resolution, partial coverage, nodata border);
- :func:`write_layout` writes tiles in the exact layout of ISPRS Vaihingen, ISPRS Potsdam or
  WHU-OPT-SAR (real folder and file names), for fixtures and the demo.

Example:
    >>> import tempfile
    >>> from rsprompt.data.synthetic import generate_scene, write_scene
    >>> scene = generate_scene("isprs", size=64, seed=0)
    >>> sorted(write_scene(scene, tempfile.mkdtemp()))
    ['dsm', 'image', 'label']
"""

from rsprompt.data.synthetic.io import aux_grid, write_scene
from rsprompt.data.synthetic.layouts import (
    DEFAULT_TILES,
    LAYOUT_KIND,
    LAYOUTS,
    VAL_TILES,
    potsdam_paths,
    tile_seed,
    trainable_tiles,
    vaihingen_paths,
    whu_paths,
    write_layout,
)
from rsprompt.data.synthetic.scene import (
    BAND_ORDERS,
    KINDS,
    SAR_MEAN_DB,
    Scene,
    convert_bands,
    generate_scene,
    ndsm_to_uint8,
    sar_to_uint8,
)

__all__ = [
    "BAND_ORDERS",
    "DEFAULT_TILES",
    "KINDS",
    "LAYOUTS",
    "LAYOUT_KIND",
    "SAR_MEAN_DB",
    "VAL_TILES",
    "Scene",
    "aux_grid",
    "convert_bands",
    "generate_scene",
    "ndsm_to_uint8",
    "potsdam_paths",
    "sar_to_uint8",
    "tile_seed",
    "trainable_tiles",
    "vaihingen_paths",
    "whu_paths",
    "write_layout",
    "write_scene",
]
