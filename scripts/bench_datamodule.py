"""Training samples per second: RasterDataModule (your own data) against WHUOptSarDataModule.

Both read generated data of the same size: ``--count`` scenes of ``--size`` pixels, 4-band uint8
optical, one aux band, patches of ``--patch`` pixels in batches of ``--batch``. The WHU-OPT-SAR
data are the official layout (SAR on the optical grid, label rasters); the own data are
``rsprompt synth --layout custom`` (labels as GeoPackage polygons rasterised per patch) with the
DSM on the scenes' grid, and again with the DSM in another CRS and resolution (warped per patch).
Each is timed over ``--samples`` training patches, best of ``--repeats`` epochs (the first epoch
includes the once-per-image DSM statistics; the best is the steady state), plus the time to build
the datamodule (RasterDataModule reads the polygons and fits the value scaling then).

Usage::

    python scripts/bench_datamodule.py [--size 1024] [--count 4] [--patch 256] [--batch 8]
        [--samples 256] [--repeats 3] [--workers 0]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path


def _epoch(dm) -> tuple[float, int]:
    """Seconds to iterate one training epoch, and the samples it held."""
    start = time.perf_counter()
    n = 0
    for batch in dm.train_dataloader():
        n += int(batch["image"].shape[0])
    return time.perf_counter() - start, n


def bench(name: str, make, repeats: int) -> dict:
    """Build a datamodule with ``make()``, then time ``repeats`` epochs; print and return."""
    t0 = time.perf_counter()
    dm = make()
    dm.setup("fit")
    build = time.perf_counter() - t0
    times = []
    n = 0
    for _ in range(repeats):
        seconds, n = _epoch(dm)
        times.append(seconds)
    best = min(times)
    row = {
        "datamodule": name,
        "build_s": round(build, 3),
        "first_epoch_sps": round(n / times[0], 1),
        "best_sps": round(n / best, 1),
        "samples": n,
    }
    print(
        f"{name:<44} build {build:6.2f} s   first epoch {n / times[0]:7.1f} samples/s   "
        f"best {n / best:7.1f} samples/s   ({n} samples, best of {repeats})"
    )
    return row


def main() -> None:
    """Write the data, time the three datamodules, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--patch", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, help="Keep the generated data here (reused when already there)."
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    from rsprompt.data.datamodules import RasterDataModule, WHUOptSarDataModule
    from rsprompt.data.splits import WHU_OPT_SAR_TEST, WHU_OPT_SAR_TRAIN
    from rsprompt.data.synthetic import write_layout
    from rsprompt.data.synthetic.custom import write_custom

    root = args.out or Path(tempfile.mkdtemp(prefix="bench_dm_"))
    train_tiles = [t for t in WHU_OPT_SAR_TRAIN if t not in WHU_OPT_SAR_TRAIN[9::10]]
    tiles = (*train_tiles[: args.count], WHU_OPT_SAR_TRAIN[9], WHU_OPT_SAR_TEST[0])
    t0 = time.perf_counter()
    if not (args.out and (root / "own_warped" / "labels.gpkg").is_file()):
        write_layout(root / "whu", "whu-opt-sar", tiles=tiles, size=args.size, overwrite=True)
        common = {
            "count": args.count + 1,
            "size": args.size,
            "kind": "whu-opt-sar",
            "dtype": "uint8",
        }
        write_custom(root / "own", overwrite=True, **common)
        write_custom(
            root / "own_warped", aux_crs="EPSG:32650", aux_resolution=10.0, overwrite=True, **common
        )
        print(f"data written under {root} in {time.perf_counter() - t0:.1f} s")
    else:
        print(f"data already under {root} (same --size and --count assumed)")
    loader = {
        "patch_size": args.patch,
        "batch_size": args.batch,
        "length": args.samples,
        "num_workers": args.workers,
        "augment": False,
    }
    # Own data: the last scene is validation, as WHU-OPT-SAR holds one scene out.
    own = {
        "images": "scenes/*.tif",
        "aux": "dsm/{stem}_dsm.tif",
        "labels": "labels.gpkg",
        "label_field": "landcover",
        "bands": [1, 2, 3],
        "val": [f"scene_{args.count + 1}"],
    }
    print(
        f"{args.count} training scenes of {args.size}x{args.size} px, patches {args.patch}, "
        f"batch {args.batch}, {args.workers} worker(s)"
    )
    bench(
        "WHUOptSarDataModule (label rasters, SAR)",
        lambda: WHUOptSarDataModule(root / "whu", **loader),
        args.repeats,
    )
    bench(
        "RasterDataModule (polygons, DSM same grid)",
        lambda: RasterDataModule(root / "own", **own, **loader),
        args.repeats,
    )
    bench(
        "RasterDataModule (polygons, DSM warped)",
        lambda: RasterDataModule(root / "own_warped", **own, **loader),
        args.repeats,
    )


if __name__ == "__main__":
    main()
