"""Make the README's preview image from a demo run's ``preview.png``.

The demo (``make demo`` or ``rsprompt demo --out DIR``) writes ``DIR/preview.png``: the held-out
scene, its DSM, both predictions and the ground truth side by side (2000 × 480 px, about 0.7 MB).
This script scales it down and reduces it to a 256-colour palette so that the copy committed at
``docs/assets/demo-preview.png`` stays under 300 KB::

    .venv/bin/rsprompt demo --out /tmp/demo
    .venv/bin/python scripts/readme_preview.py /tmp/demo/preview.png

The output is written atomically (a temporary file, then a rename); the input is only read.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from PIL import Image

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "assets" / "demo-preview.png"
#: Width of the committed image: sharp on a README column (about 900 px) and on HiDPI screens.
WIDTH = 1400
MAX_BYTES = 300_000


def make_preview(src: Path, dst: Path, width: int = WIDTH, colors: int = 256) -> int:
    """Scale ``src`` to ``width`` px (keeping its aspect) as a palette PNG at ``dst``.

    Returns:
        The size of the written file in bytes.

    Raises:
        FileNotFoundError: ``src`` does not exist.
    """
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such preview (run `rsprompt demo --out DIR` first)")
    with Image.open(src) as im:
        rgb = im.convert("RGB")
    if rgb.width > width:
        rgb = rgb.resize((width, round(rgb.height * width / rgb.width)), Image.Resampling.LANCZOS)
    small = rgb.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    small.save(tmp, format="PNG", optimize=True)
    os.replace(tmp, dst)
    return dst.stat().st_size


def main() -> None:
    """Command line: ``readme_preview.py PREVIEW [--out PATH] [--width PX]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preview", type=Path, help="the demo's preview.png")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output PNG")
    parser.add_argument("--width", type=int, default=WIDTH, help="output width in pixels")
    args = parser.parse_args()
    size = make_preview(args.preview, args.out, args.width)
    note = "" if size <= MAX_BYTES else f" (over {MAX_BYTES:,} bytes: try a smaller --width)"
    print(f"{args.out}: {size:,} bytes{note}")


if __name__ == "__main__":
    main()
