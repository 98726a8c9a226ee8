"""Write a tiny synthetic copy of the official WHU-OPT-SAR layout.

Uses :func:`rsprompt.data.synthetic.write_layout` (``optical/``, ``sar/``, ``lbl/``; 4-band
optical, 8-bit SAR, labels 0–70). Tiles: training NH49E004021 and NH49E005014, validation
NH49E007024 (held out of the training list), test NH49E001014. ``georeferenced=False`` writes the
files without CRS/transform.

Run ``python tests/data/whu-opt-sar/make.py OUT_DIR``; the tests call :func:`make` on a temporary
folder (nothing binary is committed).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rsprompt.data.synthetic import write_layout

TILES = ("NH49E004021", "NH49E005014", "NH49E007024", "NH49E001014")
SIZE = 96


def make(root: str | Path, *, size: int = SIZE, seed: int = 0, **kwargs: Any) -> dict:
    """Write the fixture under ``root`` and return ``{tile: {modality: path}}``."""
    kwargs.setdefault("tiles", TILES)
    return write_layout(root, "whu-opt-sar", size=size, seed=seed, overwrite=True, **kwargs)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--size", type=int, default=SIZE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-georef", action="store_true")
    args = parser.parse_args()
    made = make(args.out_dir, size=args.size, seed=args.seed, georeferenced=not args.no_georef)
    for tile, paths in made.items():
        print(tile, *sorted(str(p.relative_to(args.out_dir)) for p in paths.values()))
