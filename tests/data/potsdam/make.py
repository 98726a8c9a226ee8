"""Write a tiny synthetic copy of the official ISPRS Potsdam layout.

Uses :func:`rsprompt.data.synthetic.write_layout` (real folder and file names, EPSG:32633 at 5 cm,
RGB/IRRG/RGBIR, DSM, nDSM jpg, full and noBoundary labels). Tiles: training 2_10, 2_11 and 7_10
(left out by the ``mobanet`` variant), validation 7_11, test 2_13.

Run ``python tests/data/potsdam/make.py OUT_DIR``; the tests call :func:`make` on a temporary
folder (nothing binary is committed).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rsprompt.data.synthetic import write_layout

TILES = ("2_10", "2_11", "7_10", "7_11", "2_13")
SIZE = 96


def make(root: str | Path, *, size: int = SIZE, seed: int = 0, **kwargs: Any) -> dict:
    """Write the fixture under ``root`` and return ``{tile: {modality: path}}``."""
    kwargs.setdefault("tiles", TILES)
    return write_layout(root, "potsdam", size=size, seed=seed, overwrite=True, **kwargs)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--size", type=int, default=SIZE)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for tile, paths in make(args.out_dir, size=args.size, seed=args.seed).items():
        print(tile, *sorted(str(p.relative_to(args.out_dir)) for p in paths.values()))
