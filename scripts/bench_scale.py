"""Benchmark `rsprompt predict` scaled out over processes (issue 17 item 7).

On ``--scenes`` generated scenes (optical + DSM, a seeded random MoBaNet on
``tf_efficientnet_lite0``: a compute-bound model, no weights file needed) it runs, each as fresh
``python -m rsprompt predict`` processes with one torch thread each (``OMP_NUM_THREADS=1``):

- ``1 process``: the plain single-process run;
- ``--devices 2``: two Lightning DDP ranks on the CPU (gloo), merged by rank 0;
- ``2 --shard``: ``--shard 0/2`` and ``--shard 1/2`` started together (a job array on one
  machine); the last one to finish merges.

Each is timed end to end (process start, model load, prediction, merge) and repeated
``--repeat`` times; the best time counts (the machine may be shared). The maps of every run are
checked to be pixel-identical to the single-process run, then the speed-ups are printed (goal on
a 2-core machine: >= 1.8×).

Usage:
    python scripts/bench_scale.py [--scenes 8] [--size 768] [--window 256] [--repeat 2]
        [--work /tmp/rsprompt-bench-scale] [--json result.json]

``run_scale(args)`` returns the measurements as a dict (``scripts/bench_predict.py --scale``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

#: One torch/BLAS thread per process: the processes, not the threads, use the cores.
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def make_inputs(work: Path, scenes: int, size: int, window: int) -> tuple[Path, list[Path]]:
    """The checkpoint and the scenes (each with ``{stem}_dsm.tif``), made once under ``work``."""
    from rsprompt.data import synthetic
    from rsprompt.data.labels import ISPRS_CLASSES
    from rsprompt.data.normalize import DSMNormalizer, Normalization, OpticalNormalizer
    from rsprompt.engine.checkpoint import build_seeded, model_meta, save_model_checkpoint

    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "model.ckpt"
    if not ckpt.exists():
        model = build_seeded("mobanet", "tf_efficientnet_lite0", 6, 1, None, 0)
        norm = Normalization(OpticalNormalizer((0.5,) * 3, (0.5,) * 3), DSMNormalizer("minmax"))
        meta = model_meta(
            model, weights=None, classes=ISPRS_CLASSES.names, colors=ISPRS_CLASSES.colors,
            normalization=norm, aux_kind="dsm", patch_size=window,
        )  # fmt: skip
        save_model_checkpoint(ckpt, model, meta)
    paths = []
    for i in range(scenes):
        image = work / f"scene{i}_{size}.tif"
        if not image.exists():
            sc = synthetic.generate_scene("isprs", size=(size, size), seed=i, resolution=0.1)
            made = synthetic.write_scene(sc, work / f"raw{i}_{size}", overwrite=True)
            shutil.copy(made["dsm"], work / f"scene{i}_{size}_dsm.tif")
            shutil.copy(made["image"], image)
        paths.append(image)
    return ckpt, paths


def predict_cmd(ckpt: Path, scenes: list[Path], out: Path, window: int, *extra: str) -> list[str]:
    """The ``rsprompt predict`` command line of one run."""
    return [
        sys.executable, "-m", "rsprompt", "predict", *map(str, scenes), "-m", str(ckpt),
        "--dem", "{stem}_dsm.tif", "--out-dir", str(out), "--window", str(window),
        "--batch-size", "4", "--precision", "32", "-q", *extra,
    ] + ([] if "--devices" in extra else ["--device", "cpu"])  # fmt: skip


def timed(cmds: list[list[str]], out: Path) -> float:
    """Seconds until every command (started together) has exited; raises on a failure."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, **ENV}
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in cmds
    ]
    outputs = [p.communicate() for p in procs]
    seconds = time.perf_counter() - t0
    for p, (_, err) in zip(procs, outputs, strict=True):
        if p.returncode:
            raise RuntimeError(f"{' '.join(p.args[:6])} … failed:\n{err[-3000:]}")
    return seconds


def same_maps(a: Path, b: Path) -> bool:
    """Whether every class map in ``a`` is pixel-identical to the one of that name in ``b``."""
    import numpy as np
    import rasterio

    names = sorted(p.name for p in a.glob("*_pred.tif"))
    if not names or names != sorted(p.name for p in b.glob("*_pred.tif")):
        return False
    for name in names:
        with rasterio.open(a / name) as x, rasterio.open(b / name) as y:
            if not np.array_equal(x.read(), y.read()):
                return False
    return True


def run_scale(args: argparse.Namespace) -> dict:
    """Measure the three set-ups (best of ``args.repeat``); returns seconds and speed-ups."""
    work = Path(args.work)
    ckpt, scenes = make_inputs(work, args.scenes, args.size, args.window)
    runs = {
        "1 process": lambda out: [predict_cmd(ckpt, scenes, out, args.window)],
        "--devices 2": lambda out: [
            predict_cmd(ckpt, scenes, out, args.window, "--devices", "2", "--accelerator", "cpu")
        ],
        "2 --shard": lambda out: [
            predict_cmd(ckpt, scenes, out, args.window, "--shard", f"{i}/2") for i in range(2)
        ],
    }
    best: dict[str, float] = {}
    for rep in range(args.repeat):
        for name, cmds in runs.items():
            out = work / f"out_{name.strip('-').replace(' ', '_')}"
            seconds = timed(cmds(out), out)
            best[name] = min(best.get(name, float("inf")), seconds)
            print(f"  repeat {rep + 1}: {name:12s} {seconds:7.1f} s", flush=True)
    reference = work / "out_1_process"
    identical = {
        name: same_maps(reference, work / f"out_{name.strip('-').replace(' ', '_')}")
        for name in runs
        if name != "1 process"
    }
    mpix = args.scenes * args.size * args.size / 1e6
    return {
        "scenes": args.scenes,
        "size": args.size,
        "window": args.window,
        "megapixels": mpix,
        "cpus": os.cpu_count(),
        "seconds": best,
        "speedup": {k: best["1 process"] / v for k, v in best.items()},
        "identical_to_1_process": identical,
    }


def print_result(result: dict) -> None:
    """The table: best seconds, MPix/s and speed-up per set-up."""
    print(
        f"\n{result['scenes']} scenes of {result['size']}² px ({result['megapixels']:.1f} MPix), "
        f"window {result['window']}, {result['cpus']} CPUs, 1 thread per process, best of runs:"
    )
    print(f"  {'set-up':12s} {'seconds':>8s} {'MPix/s':>8s} {'speed-up':>9s}  identical maps")
    for name, seconds in result["seconds"].items():
        same = result["identical_to_1_process"].get(name)
        mark = "(reference)" if same is None else ("yes" if same else "NO")
        print(
            f"  {name:12s} {seconds:8.1f} {result['megapixels'] / seconds:8.3f} "
            f"{result['speedup'][name]:8.2f}×  {mark}"
        )
    print("  goal: >= 1.8× with 2 processes on a 2-core machine")


def parser() -> argparse.ArgumentParser:
    """The command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=int, default=8)
    p.add_argument("--size", type=int, default=768, help="scene side in pixels")
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--repeat", type=int, default=2, help="runs per set-up (the best counts)")
    p.add_argument("--work", default="/tmp/rsprompt-bench-scale")
    p.add_argument("--json", help="also write the result as JSON")
    return p


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print (and optionally save) the result."""
    args = parser().parse_args(argv)
    result = run_scale(args)
    print_result(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
