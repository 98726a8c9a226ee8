"""Accuracy guard of reduced precision: the demo's model predicted in fp32 and in bf16 (or fp16).

Loads the demo's checkpoint and held-out scene (``make demo`` writes them to ``demo_out/``; with
``--train`` a fresh demo is run first), predicts the scene through ``rsprompt predict``'s code path
in float32 and in the reduced precision, and prints the argmax agreement, the mIoU of both against
the labels (ISPRS convention) and the time ratio (best of ``--repeat`` runs each).

Goals: agreement >= 99.5 %, |ΔmIoU| <= 0.3 points. ``--precision auto`` keeps fp32 for any method
listed in ``rsprompt.engine.precision.FP32_ONLY`` (none so far).

Example::

    make demo && python scripts/check_precision.py --demo-dir demo_out
    python scripts/check_precision.py --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio


def _predict(predictor, demo: Path, out: Path, precision: str, repeat: int) -> float:
    best = float("inf")
    for i in range(repeat):
        t0 = time.perf_counter()
        predictor.predict(
            demo / "scene.tif",
            out,
            aux=demo / "dsm.tif",
            precision=precision,
            overwrite=i > 0,
            progress=False,
        )
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-dir", type=Path, default=Path("demo_out"))
    parser.add_argument("--train", action="store_true", help="Run the demo first (~5 min).")
    parser.add_argument("--precision", default="bf16", help="bf16 or 16 (against 32).")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--weights", help="Encoder weights file, if it moved since training.")
    args = parser.parse_args()

    from rsprompt.demo import _score, run_demo
    from rsprompt.engine.device import resolve_device
    from rsprompt.engine.precision import cpu_has_native_bf16, resolve_precision
    from rsprompt.inference.from_checkpoint import CheckpointPredictor

    demo = args.demo_dir
    if args.train:
        run_demo(demo, overwrite=True, progress=False)
    if not (demo / "model.ckpt").is_file():
        sys.exit(f"{demo}/model.ckpt not found: run `make demo` first or pass --train")
    device = resolve_device(args.device)
    low = resolve_precision(args.precision, device)
    with rasterio.open(demo / "labels.tif") as src:
        labels = src.read(1)
    predictor = CheckpointPredictor(demo / "model.ckpt", device=device, weights=args.weights)
    with tempfile.TemporaryDirectory() as tmp:
        t32 = _predict(predictor, demo, Path(tmp) / "fp32.tif", "32", args.repeat)
        tlow = _predict(predictor, demo, Path(tmp) / "low.tif", low, args.repeat)
        with rasterio.open(Path(tmp) / "fp32.tif") as a, rasterio.open(Path(tmp) / "low.tif") as b:
            m32, mlow = a.read(1), b.read(1)
        s32 = _score(Path(tmp) / "fp32.tif", labels)
        slow = _score(Path(tmp) / "low.tif", labels)
    agreement = float(np.mean(m32 == mlow))
    delta = 100 * (slow["miou"] - s32["miou"])
    print(f"device {device}; native CPU bf16: {cpu_has_native_bf16()}")
    print(f"{'':<12}{'fp32':>10}{low:>10}")
    print(f"{'mIoU %':<12}{100 * s32['miou']:>10.2f}{100 * slow['miou']:>10.2f}   Δ {delta:+.2f}")
    print(f"{'seconds':<12}{t32:>10.2f}{tlow:>10.2f}   fp32/{low} = {t32 / tlow:.2f}×")
    print(f"argmax agreement {100 * agreement:.3f} %")
    ok = agreement >= 0.995 and abs(delta) <= 0.3
    print("goals met" if ok else "goals MISSED (agreement >= 99.5 %, |ΔmIoU| <= 0.3)")


if __name__ == "__main__":
    main()
