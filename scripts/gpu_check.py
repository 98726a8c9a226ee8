"""One-shot GPU checks for the fast path: device/precision resolution, bf16 agreement, training cost.

Prints, on the machine it runs on:

1. what ``--device auto`` and ``--precision auto`` resolve to (inference and training);
2. for each method at paper-like sizes with random frozen weights: the argmax agreement and the
   max |Δ score| of bf16 against fp32 forwards (eval mode), and the forward time of both;
3. ``bench_train.py`` for MoBaNet on ``vit_small_patch14_dinov2`` at 266² and DPLNet on
   ``mit_b0`` at 256², batch 4: fp32, bf16, and bf16 with frozen blocks checkpointed.

Example::

    python scripts/gpu_check.py            # everything
    python scripts/gpu_check.py --skip-bench
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CASES = [
    ("mobanet", "vit_small_patch14_dinov2", 266, {}),
    ("dplnet", "mit_b0", 256, {}),
    ("spm", "vit_base_patch16_224", 256, {}),
    ("gopt", "vit_base_patch16_224", 256, {}),
    ("mobanet", "tf_efficientnet_lite0", 256, {}),
]


def _resolution() -> None:
    from rsprompt.engine.device import resolve_device
    from rsprompt.engine.precision import resolve_precision, trainer_precision

    dev = resolve_device("auto")
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}; device auto -> {dev} ({name})")
    print(
        f"precision auto -> inference {resolve_precision('auto', dev)}, "
        f"training {trainer_precision('auto', 'auto')}"
    )


def _time(fn, repeat: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def _agreement(method: str, encoder: str, size: int, kw: dict, batch: int = 4) -> None:
    from rsprompt.engine.checkpoint import build_seeded
    from rsprompt.engine.precision import autocast

    dev = torch.device("cuda")
    model = build_seeded(method, encoder, 6, 1, None, 0, **kw).to(dev).eval()
    g = torch.Generator().manual_seed(0)
    image = torch.randn(batch, 3, size, size, generator=g).to(dev)
    aux = torch.randn(batch, 1, size, size, generator=g).to(dev)
    valid = torch.ones(batch, 1, size, size, device=dev)

    def run(precision: str):
        with torch.inference_mode(), autocast(dev, precision):
            return model(image, aux, valid).float()

    ref, low = run("32"), run("bf16")
    agree = (ref.argmax(1) == low.argmax(1)).float().mean().item()
    t32, t16 = _time(lambda: run("32")), _time(lambda: run("bf16"))
    print(
        f"{method:>8} {encoder:<26} {size:>4}²  agreement {agree:7.3%}  "
        f"max|Δ| {(ref - low).abs().max().item():.3g}  fp32 {t32 * 1e3:7.1f} ms  "
        f"bf16 {t16 * 1e3:7.1f} ms  ({t32 / t16:.2f}×)"
    )


def _bench() -> None:
    runs = [
        ("mobanet", "vit_small_patch14_dinov2", 266),
        ("dplnet", "mit_b0", 256),
    ]
    for method, encoder, size in runs:
        for extra in ([], ["--precision", "bf16"], ["--precision", "bf16", "--checkpoint-frozen"]):
            cmd = [
                sys.executable,
                str(ROOT / "scripts" / "bench_train.py"),
                "--method",
                method,
                "--encoder",
                encoder,
                "--size",
                str(size),
                "--batch",
                "4",
                "--steps",
                "10",
                "--warmup",
                "3",
                "--device",
                "cuda",
                *extra,
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
            print("\n".join(lines[-7:]) if out.returncode == 0 else out.stderr[-2000:])
            print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--predict-only", action="store_true", help="Only the predict check.")
    parser.add_argument("--size", type=int, default=1536, help="Scene side of the predict check.")
    args = parser.parse_args()
    _resolution()
    if args.predict_only:
        predict_check(args.size)
        return
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: nothing more to check")
    for method, encoder, size, kw in CASES:
        try:
            _agreement(method, encoder, size, kw)
        except Exception as exc:  # report and go on: one script, one device run
            print(f"{method} {encoder}: {type(exc).__name__}: {exc}")
    if not args.skip_bench:
        _bench()
    predict_check(args.size)


def predict_check(size: int = 1536, work: str = "/tmp/rsprompt-gpu-check") -> None:
    """End to end on the default device: ``rsprompt predict`` in fp32 and in auto precision.

    Builds a MoBaNet on a seeded random ``tf_efficientnet_lite0`` (no weights file needed), writes
    its checkpoint and a synthetic scene with a DSM, runs the CLI twice and prints the device,
    precision, time and the map agreement.
    """
    import json

    import numpy as np
    import rasterio

    from rsprompt.data import synthetic
    from rsprompt.data.labels import ISPRS_CLASSES
    from rsprompt.data.normalize import DSMNormalizer, Normalization, OpticalNormalizer
    from rsprompt.engine.checkpoint import build_seeded, model_meta, save_model_checkpoint

    root = Path(work)
    root.mkdir(parents=True, exist_ok=True)
    model = build_seeded("mobanet", "tf_efficientnet_lite0", 6, 1, None, 0)
    norm = Normalization(OpticalNormalizer((0.5,) * 3, (0.5,) * 3), DSMNormalizer("minmax"))
    meta = model_meta(
        model, weights=None, classes=ISPRS_CLASSES.names, colors=ISPRS_CLASSES.colors,
        normalization=norm, aux_kind="dsm", patch_size=256,
    )  # fmt: skip
    save_model_checkpoint(root / "model.ckpt", model, meta)
    scene = synthetic.generate_scene("isprs", size=(size, size), seed=0, resolution=0.1)
    paths = synthetic.write_scene(scene, root / "scene", overwrite=True)
    maps = {}
    for precision in ("32", "auto"):
        out = root / f"map_{precision}.tif"
        summary = root / f"summary_{precision}.json"
        cmd = [sys.executable, "-m", "rsprompt", "predict", str(paths["image"]), "--dem",
               str(paths["dsm"]), "-m", str(root / "model.ckpt"), "-o", str(out), "--window",
               "512", "--batch-size", "8", "--precision", precision, "--overwrite", "-q",
               "--summary-json", str(summary)]  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode:
            print(res.stdout[-2000:], res.stderr[-3000:])
            return
        record = json.loads(summary.read_text())[0]
        with rasterio.open(out) as src:
            maps[precision] = src.read(1)
        print(f"predict {size}² --precision {precision}: device {record['device']}, "
              f"precision {record['numeric_precision']}, {record['seconds']:.2f} s, "
              f"{record['mpix_per_s']:.2f} MPix/s")  # fmt: skip
    print(f"map agreement fp32 vs auto: {np.mean(maps['32'] == maps['auto']):.4%}")


if __name__ == "__main__":
    main()
