"""Benchmark `rsprompt predict` against the compute floor and a TorchGeo window-by-window loop.

On generated scenes (optical + DSM in another CRS and resolution, nodata border, partial
coverage; or with ``--dsm-grid same`` the DSM on the scene's grid) it measures, each in a fresh subprocess (so peak RSS is per run):

- ours: :func:`rsprompt.inference.predict_scene` end to end (scene-wide DSM statistics pre-pass,
  WarpedVRT reading, blending, COG + sidecars);
- floor: the pure batched forward pass (+ softmax) of the same model over the same number of
  windows of the same size, on tensors already in memory (the compute floor);
- baseline: a straightforward TorchGeo loop: RasterDataset ∩ RasterDataset (DSM resampled by
  TorchGeo), GriddedPatchSampler + DataLoader, forward, argmax, and a rasterio write per window
  into a tiled GeoTIFF (no blending).

It prints MPix/s and peak RSS side by side with the ratios, and peak RSS of `ours` at two scene
sizes (the second one twice as tall) to show memory does not grow with the scene.

Usage:
    python scripts/bench_predict.py [--size 2048] [--window 512] [--overlap 64] [--batch-size 4]
        [--dsm-grid other|same] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- model
MODEL = os.environ.get("RSPROMPT_BENCH_MODEL", "light")
#: glibc's mmap threshold in every run (bytes), or ``dynamic`` for glibc's default behaviour.
MMAP_THRESHOLD = os.environ.get("RSPROMPT_BENCH_MMAP_THRESHOLD", str(1 << 20))


def build_model(num_classes: int = 6):
    """The benchmark model (``RSPROMPT_BENCH_MODEL``: ``light`` or ``resnet18``)."""
    return build_resnet18(num_classes) if MODEL == "resnet18" else build_light(num_classes)


def build_light(num_classes: int = 6):
    """A small but non-trivial model: frozen 4-conv CNN encoder (stride 4, 64 ch) + DSM stem +
    a 3×3 decoder, about 1 GMAC per 512² window."""
    import torch
    from torch import nn

    from rsprompt.models.base import SegmentationModel

    class LightNet(SegmentationModel):
        def __init__(self) -> None:
            super().__init__("bench", "cnn4", num_classes, 1)
            self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.ReLU())
            self.encoder = nn.Sequential(
                nn.Conv2d(32, 64, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(64, 64, 3, padding=1),
                nn.ReLU(),
            )
            self.aux_stem = nn.Conv2d(1, 32, 3, stride=2, padding=1)
            self.decoder = nn.Sequential(
                nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, num_classes, 1)
            )
            self.freeze()

        frozen_modules = ("stem", "encoder")

        def forward(self, image, aux=None, aux_valid=None):
            x = self.stem(image)
            if aux is not None:
                v = aux_valid if aux_valid is not None else torch.ones_like(aux)
                x = x + self.aux_stem(aux * v)
            y = self.decoder(self.encoder(x))
            return nn.functional.interpolate(y, size=image.shape[-2:], mode="bilinear")

    torch.manual_seed(0)
    return LightNet().eval()


def build_resnet18(num_classes: int = 6):
    """A heavier model: frozen ResNet-18 trunk (to layer3) + DSM stem + light decoder."""
    import torch
    import torchvision
    from torch import nn

    from rsprompt.models.base import SegmentationModel

    class BenchNet(SegmentationModel):
        def __init__(self) -> None:
            super().__init__("bench", "resnet18", num_classes, 1)
            r = torchvision.models.resnet18(weights=None)
            self.encoder = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2)
            self.encoder_deep = nn.Sequential(r.layer3)
            self.aux_stem = nn.Conv2d(1, 64, 7, stride=2, padding=3)
            self.decoder = nn.Sequential(
                nn.Conv2d(256 + 128, 128, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(128, num_classes, 1),
            )
            self.freeze()

        frozen_modules = ("encoder", "encoder_deep")

        def forward(self, image, aux=None, aux_valid=None):
            x = self.encoder[0](image)
            if aux is not None:
                v = aux_valid if aux_valid is not None else torch.ones_like(aux)
                x = x + self.aux_stem(aux * v)
            for m in list(self.encoder)[1:]:
                x = m(x)
            d = self.encoder_deep(x)
            d = nn.functional.interpolate(d, size=x.shape[-2:], mode="bilinear")
            y = self.decoder(torch.cat([x, d], 1))
            return nn.functional.interpolate(y, size=image.shape[-2:], mode="bilinear")

    torch.manual_seed(0)
    return BenchNet().eval()


def warm_up(model, window: int, batch: int) -> None:
    """One forward pass of the batch shape (excluded from every timing)."""
    import torch

    with torch.inference_mode():
        x = torch.zeros(batch, 3, window, window)
        model(
            x,
            aux=torch.zeros(batch, 1, window, window),
            aux_valid=torch.ones(batch, 1, window, window),
        )


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mb() -> float:
    """Current resident set size (MB)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class RssSampler:
    """Samples the RSS every 10 ms in a thread: the peak *during* a run (not during warm-up)."""

    def __init__(self) -> None:
        import threading

        self.base = rss_mb()
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_mb())

    def stop(self) -> dict:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_mb())
        return {"rss_base": self.base, "rss_peak": self.peak}


# ----------------------------------------------------------------------------- workers
def run_ours(scene_dir: Path, out: Path, window: int, overlap: int, batch: int) -> dict:
    from rsprompt.data.labels import ISPRS_CLASSES
    from rsprompt.data.normalize import DSMNormalizer, Normalization, OpticalNormalizer
    from rsprompt.inference import predict_scene
    from rsprompt.inference.from_checkpoint import CheckpointNormalizer

    model = build_model()
    warm_up(model, window, batch)
    norm = CheckpointNormalizer(Normalization(OpticalNormalizer(), DSMNormalizer("minmax")), 0.1)
    import gc

    gc.collect()
    mem = RssSampler()
    t = time.perf_counter()
    s = predict_scene(
        scene_dir / "scene.tif",
        model,
        out,
        aux=scene_dir / "dsm.tif",
        aux_channels=1,
        normalize=norm,
        classes=ISPRS_CLASSES,
        window=window,
        overlap=overlap,
        batch_size=batch,
        overwrite=True,
        progress=False,
    )
    secs = time.perf_counter() - t
    return {"seconds": secs, "mpix": s.megapixels, "windows": s.windows, **mem.stop()}


def run_floor(scene_dir: Path, window: int, overlap: int, batch: int) -> dict:
    import rasterio
    import torch

    from rsprompt.inference.windows import window_grid

    with rasterio.open(scene_dir / "scene.tif") as src:
        h, w = src.height, src.width
    n = len(window_grid(h, w, window, overlap))
    model = build_model()
    warm_up(model, window, batch)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, window, window, generator=g)
    a = torch.rand(batch, 1, window, window, generator=g)
    v = torch.ones(batch, 1, window, window)
    mem = RssSampler()
    t = time.perf_counter()
    with torch.inference_mode():
        done = 0
        while done < n:
            b = min(batch, n - done)
            torch.softmax(model(x[:b], aux=a[:b], aux_valid=v[:b]), 1)
            done += b
    secs = time.perf_counter() - t
    return {"seconds": secs, "mpix": h * w / 1e6, "windows": n, **mem.stop()}


def run_baseline(scene_dir: Path, out: Path, window: int, overlap: int, batch: int) -> dict:
    import numpy as np
    import rasterio
    import torch
    from rasterio.windows import from_bounds
    from torch.utils.data import DataLoader
    from torchgeo.datasets import RasterDataset, stack_samples
    from torchgeo.samplers import GriddedPatchSampler

    class Scene(RasterDataset):
        filename_glob = "scene.tif"
        is_image = True

    class DSM(RasterDataset):
        filename_glob = "dsm.tif"
        is_image = True

    def rename(sample):
        sample["aux"] = sample.pop("image")
        return sample

    model = build_model()
    warm_up(model, window, batch)
    mem = RssSampler()
    t = time.perf_counter()
    scene = Scene(str(scene_dir))
    dsm = DSM(str(scene_dir), crs=scene.crs, res=scene.res, transforms=rename)
    ds = scene & dsm
    sampler = GriddedPatchSampler(ds, size=window, stride=window - overlap)
    # Keep the sampler's float64 slices to georeference the writes (the samples' "bounds" are
    # float32 tensors that round UTM northings).
    slices = list(sampler)
    loader = DataLoader(ds, sampler=slices, batch_size=batch, collate_fn=stack_samples)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with rasterio.open(scene_dir / "scene.tif") as src:
        profile = {
            "driver": "GTiff",
            "height": src.height,
            "width": src.width,
            "count": 1,
            "dtype": "uint8",
            "crs": src.crs,
            "transform": src.transform,
            "nodata": 255,
            "tiled": True,
            "blockxsize": 512,
            "blockysize": 512,
            "compress": "deflate",
        }
        height, width = src.height, src.width
    n = 0
    with rasterio.open(out, "w", **profile) as dst, torch.inference_mode():
        for bi, batch_ in enumerate(loader):
            img = (batch_["image"] / 255.0 - mean) / std
            aux = batch_["aux"]
            valid = (aux > -9999).float()
            lo = torch.where(valid > 0, aux, torch.inf).amin((1, 2, 3), keepdim=True)
            hi = torch.where(valid > 0, aux, -torch.inf).amax((1, 2, 3), keepdim=True)
            aux = torch.where(valid > 0, (aux - lo) / (hi - lo).clamp_min(1e-6), 0)
            pred = model(img, aux=aux, aux_valid=valid).argmax(1).numpy().astype(np.uint8)
            for i in range(pred.shape[0]):
                xs, ys = slices[bi * batch + i][:2]
                win = from_bounds(
                    float(xs.start),
                    float(ys.start),
                    float(xs.stop),
                    float(ys.stop),
                    transform=dst.transform,
                )
                r0, c0 = round(win.row_off), round(win.col_off)
                r1, c1 = min(r0 + pred.shape[1], height), min(c0 + pred.shape[2], width)
                pr0, pc0 = max(0, -r0), max(0, -c0)
                r0, c0 = max(r0, 0), max(c0, 0)
                if r1 <= r0 or c1 <= c0:
                    continue
                dst.write(
                    pred[i, pr0 : pr0 + r1 - r0, pc0 : pc0 + c1 - c0],
                    1,
                    window=rasterio.windows.Window(c0, r0, c1 - c0, r1 - r0),
                )
                n += 1
    secs = time.perf_counter() - t
    return {"seconds": secs, "mpix": height * width / 1e6, "windows": n, **mem.stop()}


def worker(args: argparse.Namespace) -> None:
    scene_dir = Path(args.scene)
    out = Path(args.out) if args.out else scene_dir / f"pred_{args.worker}.tif"
    fn = {"ours": run_ours, "floor": run_floor, "baseline": run_baseline}[args.worker]
    kw = {"window": args.window, "overlap": args.overlap, "batch": args.batch_size}
    res = fn(scene_dir, **kw) if args.worker == "floor" else fn(scene_dir, out, **kw)
    res["rss_max_process"] = peak_rss_mb()
    print("RESULT " + json.dumps(res))


# ----------------------------------------------------------------------------- driver
def make_scene(dirpath: Path, height: int, width: int, dsm_grid: str = "other") -> Path:
    """Generate (once) a scene and its DSM.

    ``dsm_grid="other"``: the DSM in EPSG:32632 at 0.25 m (scene: EPSG:32633, 0.1 m), 80%
    coverage, nodata border. ``"same"``: the DSM on the scene's grid (as ISPRS delivers it).
    """
    if (dirpath / "scene.tif").exists() and (dirpath / "dsm.tif").exists():
        return dirpath
    from rsprompt.data.synthetic import generate_scene, write_scene

    sc = generate_scene("isprs", size=(height, width), seed=0, resolution=0.1)
    if dsm_grid == "same":
        write_scene(sc, dirpath, aux_nodata_border=4, overwrite=True)
        return dirpath
    write_scene(
        sc,
        dirpath,
        aux_crs="EPSG:32632",
        aux_resolution=0.25,
        aux_coverage=0.8,
        aux_nodata_border=4,
        overwrite=True,
    )
    return dirpath


def measure(kind: str, scene: Path, args: argparse.Namespace) -> dict:
    """Best (fastest) of ``args.repeat`` runs, each in a fresh process (shared machines are noisy)."""
    runs = [measure_once(kind, scene, args) for _ in range(max(1, args.repeat))]
    return min(runs, key=lambda r: r["seconds"])


def measure_once(kind: str, scene: Path, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--scene",
        str(scene),
        "--window",
        str(args.window),
        "--overlap",
        str(args.overlap),
        "--batch-size",
        str(args.batch_size),
    ]
    # The same OpenMP setting for every run; `rsprompt predict` sets it too (passive waiting
    # keeps torch's idle OpenMP threads from spinning against the reader/writer threads).
    env = {
        **os.environ,
        "PYTHONWARNINGS": "ignore",
        "OMP_WAIT_POLICY": "PASSIVE",
        "GDAL_CACHEMAX": "32",  # as `rsprompt predict` sets it
        "THP_MEM_ALLOC_ENABLE": "1",  # as `rsprompt predict` sets it
    }
    if MMAP_THRESHOLD != "dynamic":
        env["MALLOC_MMAP_THRESHOLD_"] = MMAP_THRESHOLD
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{kind} failed:\n{proc.stdout}\n{proc.stderr}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048, help="scene side (the 2nd scene is 2× taller)")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--repeat", type=int, default=2, help="runs per measurement (best is kept)")
    p.add_argument("--work", default="/tmp/rsprompt_bench_predict", help="scene cache folder")
    p.add_argument(
        "--dsm-grid",
        choices=["other", "same"],
        default="other",
        help="DSM in another CRS and resolution (default) or on the scene's grid",
    )
    p.add_argument("--worker", choices=["ours", "floor", "baseline"], help=argparse.SUPPRESS)
    p.add_argument("--scene", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    work = Path(args.work)
    tag = "" if args.dsm_grid == "other" else "_same"
    s1 = make_scene(work / f"s{args.size}x{args.size}{tag}", args.size, args.size, args.dsm_grid)
    s2 = make_scene(
        work / f"s{2 * args.size}x{args.size}{tag}", 2 * args.size, args.size, args.dsm_grid
    )
    print(
        f"model: {MODEL}; window {args.window}, overlap {args.overlap}, batch "
        f"{args.batch_size}, DSM grid: {args.dsm_grid}, "
        f"torch threads {os.cpu_count()} cores, OMP_WAIT_POLICY=PASSIVE, "
        f"GDAL_CACHEMAX=32, THP_MEM_ALLOC_ENABLE=1, MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}"
    )
    rows = {k: measure(k, s1, args) for k in ("floor", "ours", "baseline")}
    big = measure("ours", s2, args)
    big_base = measure("baseline", s2, args)
    print(
        f"\nscene {args.size}×{args.size} ({rows['ours']['mpix']:.2f} MPix, "
        f"{rows['ours']['windows']} windows)"
    )
    print(f"{'run':<34} {'seconds':>8} {'MPix/s':>8} {'+RSS MB':>12}")
    names = {
        "floor": "compute floor (forward only)",
        "ours": "rsprompt predict (end to end)",
        "baseline": "TorchGeo sampler + DataLoader loop",
    }
    for k in ("floor", "ours", "baseline"):
        r = rows[k]
        print(
            f"{names[k]:<34} {r['seconds']:8.2f} {r['mpix'] / r['seconds']:8.3f} "
            f"{r['rss_peak'] - r['rss_base']:12.0f}"
        )
    print(
        f"\nratio ours / floor (time):     {rows['ours']['seconds'] / rows['floor']['seconds']:.3f}"
        "  (goal <= 1.15)"
    )
    print(
        f"speed-up ours vs baseline:      {rows['baseline']['seconds'] / rows['ours']['seconds']:.2f}×"
        "  (goal >= 2)"
    )
    print("\n+RSS MB = peak RSS during the run minus RSS at its start (model loaded, warmed up)")
    print("peak RSS of rsprompt predict by scene size (MB; start of run -> peak during run):")
    for label, r in (
        (f"{args.size}×{args.size}", rows["ours"]),
        (f"{2 * args.size}×{args.size}", big),
    ):
        print(
            f"  {label:<12} {r['rss_base']:7.0f} -> {r['rss_peak']:7.0f}  "
            f"(+{r['rss_peak'] - r['rss_base']:.0f}), {r['mpix'] / r['seconds']:.3f} MPix/s"
        )
    print("peak RSS of the TorchGeo baseline by scene size (MB):")
    for label, r in (
        (f"{args.size}×{args.size}", rows["baseline"]),
        (f"{2 * args.size}×{args.size}", big_base),
    ):
        print(
            f"  {label:<12} {r['rss_base']:7.0f} -> {r['rss_peak']:7.0f}  "
            f"(+{r['rss_peak'] - r['rss_base']:.0f})"
        )


if __name__ == "__main__":
    main()
