"""The Lightning task that trains any registered method (:class:`SegmentationTask`).

The task builds the model with :func:`~rsprompt.models.registry.build_model` once the datamodule
is known (class names, normalisation and aux modality come from it), trains the trainable
parameters only with the method's own loss terms (``model.compute_loss``), validates with
:class:`~rsprompt.engine.metrics.SegmentationMetrics` and writes the metrics as JSON.

Checkpoints: Lightning's resume checkpoint (``last.ckpt``) is filtered in
:meth:`SegmentationTask.on_save_checkpoint` so it never holds the frozen encoder (it keeps the
trainable tensors incl. training-only heads, the optimiser, scheduler, loop state and the RNG
states); the model checkpoint ``model.ckpt`` (what ``evaluate`` and ``predict`` load) is written by
:class:`~rsprompt.engine.callbacks.ModelExport` at the end of every run.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor

from rsprompt.engine.checkpoint import (
    SPECIAL_WEIGHTS,
    CheckpointError,
    _fingerprints_match,
    build_seeded,
    encoder_fingerprint,
    model_meta,
    weights_record,
)
from rsprompt.engine.metrics import (
    SegmentationMetrics,
    isprs_mean_classes,
    scalar_metrics,
    write_metrics_json,
)
from rsprompt.engine.optim import build_optimizer, build_scheduler
from rsprompt.engine.zeroshot import split_classes, to_seen_targets
from rsprompt.models.base import SegmentationModel

log = logging.getLogger(__name__)


class WeightsNotFoundError(FileNotFoundError):
    """The encoder weights file named by a config does not exist."""


def check_weights(weights: str | None) -> None:
    """Raise :class:`WeightsNotFoundError` with instructions when ``weights`` names no file."""
    if weights is None or weights in SPECIAL_WEIGHTS:
        return
    if not Path(weights).expanduser().is_file():
        raise WeightsNotFoundError(
            f"encoder weights file not found: {weights}. Download the encoder's pretrained "
            f"weights and pass --model.weights PATH (or set model.weights in the "
            f"config), or pass --model.weights null to train on a randomly initialised encoder "
            f"(seeded by --model.encoder_seed; only useful for tests and smoke runs)."
        )


def _get(obj: Any, *names: str, default: Any = None) -> Any:
    """First attribute of ``obj`` among ``names`` that is set and not a method."""
    for n in names:
        v = getattr(obj, n, None)
        if v is not None and not callable(v):
            return v
    return default


def datamodule_info(dm: Any) -> dict[str, Any]:
    """What the task and the checkpoint need from a datamodule (read defensively).

    Works with :class:`rsprompt.data.datamodules.MultimodalDataModule` (class table, dataset name
    and aux kind from its dataset class, label variant from ``labels``) and with any datamodule
    that exposes ``class_table`` (a :class:`~rsprompt.data.labels.ClassTable`) or
    ``class_names``/``colors``, ``normalization``, ``aux_kind``, ``aux_channels``, ``bands``,
    ``dataset``, ``label_variant``, ``patch_size``, ``ignore_index`` and ``gsd_m`` (the
    training imagery's ground sampling distance in metres).
    """
    datasets = getattr(dm, "datasets", None)
    ds = next(iter(datasets.values()), None) if isinstance(datasets, dict) and datasets else None
    ds_cls = getattr(dm, "dataset_class", None)
    table = _get(dm, "class_table")
    for source in (ds, ds_cls):
        if table is None and source is not None:
            cand = getattr(source, "classes", None)
            table = cand if hasattr(cand, "names") else None
    names = _get(dm, "class_names")
    colors = _get(dm, "colors", "class_colors")
    if table is not None:
        names = names if names is not None else list(table.names)
        colors = colors if colors is not None else [list(c) for c in table.colors]
    norm = _get(dm, "normalization")
    aux_kind = _get(dm, "aux_kind") or _get(ds, "aux_kind") or _get(ds_cls, "aux_kind")
    if aux_kind is None and norm is not None and getattr(norm, "aux", None) is not None:
        aux_kind = norm.aux.to_dict().get("kind")
    aux_channels = _get(dm, "aux_channels")
    if aux_channels is None and aux_kind is not None:
        aux_channels = 1  # DSM and SAR rasters are single-band in every supported dataset
    bands = _get(dm, "bands")
    if bands is None and norm is not None:
        bands = getattr(getattr(norm, "optical", None), "bands", None)
    patch = _get(dm, "patch_size")
    if isinstance(patch, list | tuple):
        patch = int(patch[0])
    dataset = _get(dm, "dataset_name") or _get(ds, "dataset_name") or _get(ds_cls, "dataset_name")
    if dataset is None and isinstance(_get(dm, "dataset"), str):
        dataset = dm.dataset
    kwargs = getattr(dm, "dataset_kwargs", None) or {}
    label_variant = _get(dm, "label_variant") or kwargs.get("labels")
    if label_variant is None and dataset in ("vaihingen", "potsdam"):
        label_variant = "full"
    if label_variant is None and kwargs.get("keep_background"):
        label_variant = "keep_background"
    return {
        "classes": None if names is None else [str(n) for n in names],
        "colors": None if colors is None else [list(map(int, c)) for c in colors],
        "normalization": norm,
        "aux_kind": aux_kind,
        "aux_channels": aux_channels,
        "bands": None if bands is None else list(bands),
        "dataset": dataset,
        "label_variant": label_variant,
        "patch_size": patch,
        "ignore_index": int(_get(dm, "ignore_index", default=255)),
        "datamodule": f"{type(dm).__module__}.{type(dm).__qualname__}",
        "datamodule_kwargs": _datamodule_kwargs(dm),
        "gsd_m": _get(dm, "gsd_m"),
    }


def _datamodule_kwargs(dm: Any) -> dict[str, Any]:
    """JSON-safe dataset options of an rsprompt datamodule (to rebuild it for evaluation)."""
    out: dict[str, Any] = {}
    for key in ("variant", "georeference", "val_stride"):
        v = getattr(dm, key, None)
        if isinstance(v, str | int | float | bool):
            out[key] = v
    for k, v in (getattr(dm, "dataset_kwargs", None) or {}).items():
        if isinstance(v, str | int | float | bool) or v is None:
            out[k] = v
    return out


def _accepts(method: str, name: str) -> bool:
    """Whether ``method``'s model class takes the keyword ``name`` (e.g. RPN's class names)."""
    import inspect

    from rsprompt.models.registry import get_builder

    builder = get_builder(method)
    if name in inspect.signature(builder).parameters:
        return True
    cls = getattr(builder, "__annotations__", {}).get("return")
    mod = inspect.getmodule(builder)
    cls = getattr(mod, cls, None) if isinstance(cls, str) else cls
    return inspect.isclass(cls) and name in inspect.signature(cls.__init__).parameters


def _collect_rng() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
    }
    # The whole legacy state, incl. the cached second Gaussian of the Box-Muller pair.
    np_state = np.random.get_state()  # noqa: NPY002 — the global state is what we restore
    state["numpy"] = torch.from_numpy(np_state[1].astype(np.int64))
    state["numpy_pos"] = int(np_state[2])
    state["numpy_has_gauss"] = int(np_state[3])
    state["numpy_cached_gauss"] = float(np_state[4])
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(  # noqa: NPY002
        (
            "MT19937",
            state["numpy"].numpy().astype(np.uint32),
            state["numpy_pos"],
            int(state.get("numpy_has_gauss", 0)),  # older resume checkpoints lack these two
            float(state.get("numpy_cached_gauss", 0.0)),
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _check_resumed_weights(old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
    """Refuse a resume checkpoint whose encoder weights differ from this run's.

    A resume checkpoint written before "package" weights were hashed (``sha256`` null) resumes
    with the same weights name, with a warning.

    Raises:
        CheckpointError: Random vs. pretrained encoder, or another weights file / hash.
    """
    mismatch = CheckpointError(
        f"resume checkpoint used encoder weights {old}, this run uses {new}: the encoder does "
        f"not match"
    )
    if (old is None) != (new is None):
        raise mismatch
    if old is None or new is None or old.get("sha256") == new.get("sha256"):
        return
    if old.get("sha256") or old.get("path") != new.get("path"):
        raise mismatch
    log.warning(
        "the resume checkpoint records no sha256 for its %r encoder weights (older rsprompt): "
        "they cannot be verified against this run's (sha256 %s)",
        old.get("path"),
        new.get("sha256"),
    )


class SegmentationTask(pl.LightningModule):
    """Train a registered method with its own losses; validate with OA/IoU/F1.

    Args:
        method: Registered method (``mobanet``, ``dplnet``, ``gopt``, ``spm``, ``rpn``).
        encoder: Encoder library name (``vit_large_patch14_dinov2``, ``mit_b5``, ``resnet18``…).
        weights: Local weights file of the encoder; ``null`` = random init seeded by
            ``encoder_seed`` (the checkpoint records the seed, so the same encoder is rebuilt).
            A named file that does not exist stops the run with instructions.
        encoder_seed: Seed of the random encoder when ``weights`` is null.
        encoder_options: ``{encoder name: {option: value}}``: options given to ``build_model``
            only when ``encoder`` is that name (image size, taps…), so ``--model.encoder`` can
            switch to another family without touching them.
        model_kwargs: Method options given to ``build_model`` (e.g. MoBaNet's ``mcrm``).
        num_classes: Number of classes (default: the datamodule's class table).
        aux_channels: Aux channels (default: the datamodule's, else the method's paper default).
        optimizer: ``adamw`` or ``sgd``.
        lr: Base learning rate.
        weight_decay: Weight decay of ≥2-D parameters.
        no_decay_1d: No weight decay on 1-D parameters (biases, norms, scales).
        betas: AdamW betas.
        momentum: SGD momentum.
        lr_mult: ``{parameter-name pattern: lr factor}`` (e.g. RPN's 10× groups).
        schedule: ``cosine``, ``poly`` or ``constant`` after the warm-up (per optimiser step).
        warmup_steps: Linear warm-up steps.
        warmup_start_factor: lr factor at the first warm-up step.
        min_lr: Final learning rate of the schedule.
        poly_power: Exponent of the poly schedule.
        total_steps: Schedule length (default: the trainer's ``max_steps`` / estimated steps).
        isprs_convention: mIoU/mF1 without clutter (OA over all classes), as ISPRS papers report.
        mean_classes: Class indices averaged into mIoU/mF1 (overrides ``isprs_convention``).
        unseen_classes: Zero-shot protocol (RPN): these classes (names or indices) are ignored in
            training and never shown to the model; validation gives all names and reports
            mIoU seen/unseen and hIoU.
        metrics_dir: Where validation metrics JSON go (default: the trainer's
            ``default_root_dir``).
        eval_window: Sliding-window size of the test protocol (recorded in the checkpoint as
            ``rsprompt evaluate``'s default; default the patch size).
        eval_stride: Stride of the test protocol (default half the window).
        eval_blend: ``sum`` (raw logits summed over overlaps, as the papers) or ``cosine``.
        checkpoint_frozen: Recompute the frozen encoder's blocks in the backward pass instead of
            keeping their activations (:mod:`rsprompt.models.checkpointing`): the same gradients,
            less memory, about one more frozen forward per step.
    """

    def __init__(
        self,
        method: str,
        encoder: str,
        weights: str | None = None,
        encoder_seed: int = 0,
        encoder_options: dict[str, dict[str, Any]] | None = None,
        model_kwargs: dict[str, Any] | None = None,
        num_classes: int | None = None,
        aux_channels: int | None = None,
        optimizer: Literal["adamw", "sgd"] = "adamw",
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        no_decay_1d: bool = True,
        betas: tuple[float, float] = (0.9, 0.999),
        momentum: float = 0.9,
        lr_mult: dict[str, float] | None = None,
        schedule: Literal["cosine", "poly", "constant"] = "cosine",
        warmup_steps: int = 0,
        warmup_start_factor: float = 1e-3,
        min_lr: float = 0.0,
        poly_power: float = 0.9,
        total_steps: int | None = None,
        isprs_convention: bool = False,
        mean_classes: list[int] | None = None,
        unseen_classes: list[str | int] | None = None,
        metrics_dir: str | None = None,
        eval_window: int | None = None,
        eval_stride: int | None = None,
        eval_blend: Literal["sum", "cosine"] = "sum",
        checkpoint_frozen: bool = False,
    ) -> None:
        super().__init__()
        check_weights(weights)
        self.save_hyperparameters()
        self.model: SegmentationModel | None = None
        self.data_info: dict[str, Any] = {}
        self.build_kwargs: dict[str, Any] = {}
        self.weights_record: dict[str, Any] | None = None
        self._fingerprint: dict[str, float] | None = None
        self.metrics: SegmentationMetrics | None = None
        self.seen_ids: list[int] | None = None
        self.unseen_ids: list[int] | None = None
        self._pending_rng: dict[str, Any] | None = None
        self.last_metrics: dict[str, Any] | None = None
        # The frozen encoder is not in the resume checkpoint: load it non-strictly.
        self.strict_loading = False

    # ------------------------------------------------------------------ building
    def setup(self, stage: str) -> None:
        """Read the datamodule's class table, normalisation and aux modality."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and not self.data_info:
            self.data_info = datamodule_info(dm)

    def configure_model(self) -> None:
        """Build the model (once): ``build_model`` with the data's classes and aux channels."""
        if self.model is None:
            self.build()

    def build(self, data_info: dict[str, Any] | None = None) -> SegmentationModel:
        """Build the model now (done by Lightning in :meth:`configure_model`).

        Args:
            data_info: Overrides :attr:`data_info` (see :func:`datamodule_info`).
        """
        from rsprompt.models.registry import default_aux_channels

        hp = self.hparams
        if data_info is not None:
            self.data_info = dict(data_info)
        info = self.data_info
        classes = info.get("classes")
        k = hp.num_classes or (len(classes) if classes else None)
        if k is None:
            raise ValueError(
                "number of classes unknown: give model.num_classes or a datamodule with a class table"
            )
        if classes is None:
            classes = [f"class_{i}" for i in range(k)]
        if len(classes) != k:
            raise ValueError(f"model.num_classes={k} but the data has {len(classes)} classes")
        self.class_names = list(classes)
        aux = hp.aux_channels
        if aux is None:
            aux = info.get("aux_channels")
        if aux is None:
            aux = default_aux_channels(hp.method) if info.get("aux_kind") or not info else 0
        kwargs = dict(hp.model_kwargs or {})
        kwargs.update((hp.encoder_options or {}).get(hp.encoder, {}))
        if hp.unseen_classes:
            self.seen_ids, self.unseen_ids = split_classes(self.class_names, hp.unseen_classes)
        if _accepts(hp.method, "class_names"):  # open-vocabulary methods take the names
            kwargs.setdefault("class_names", list(self.class_names))
            if self.seen_ids is not None:
                kwargs.setdefault("seen_classes", [self.class_names[i] for i in self.seen_ids])
        self.build_kwargs = kwargs
        self.weights_record = weights_record(hp.weights)
        self.model = build_seeded(
            hp.method, hp.encoder, k, int(aux), hp.weights, hp.encoder_seed, **kwargs
        )
        self.aux_channels = int(aux)
        if hp.get("checkpoint_frozen"):
            from rsprompt.models.checkpointing import set_frozen_checkpointing

            set_frozen_checkpointing(self.model)
        if hp.unseen_classes:
            if not hasattr(self.model, "set_vocabulary"):
                raise ValueError(
                    f"unseen_classes needs an open-vocabulary method (rpn), not {hp.method}"
                )
        if hp.mean_classes is not None:
            mean = list(hp.mean_classes)
        elif hp.isprs_convention:
            mean = isprs_mean_classes(self.class_names)
        else:
            mean = None
        self.metrics = SegmentationMetrics(
            self.class_names,
            ignore_index=int(info.get("ignore_index", 255)),
            mean_classes=mean,
            seen=self.seen_ids,
            unseen=self.unseen_ids,
        )
        record = self.weights_record
        # The frozen encoder never changes: fingerprint it once (random or hub weights).
        unhashed = record is None or not record.get("sha256")
        self._fingerprint = encoder_fingerprint(self.model) if unhashed else None
        return self.model

    def meta(self) -> dict[str, Any]:
        """The ``meta`` of the model checkpoint (see :func:`~rsprompt.engine.checkpoint.model_meta`)."""
        if self.model is None:
            raise RuntimeError("the model is not built yet")
        info = self.data_info
        hp = self.hparams
        return model_meta(
            self.model,
            weights=self.weights_record,
            encoder_seed=hp.encoder_seed,
            model_kwargs=self.build_kwargs,
            classes=self.class_names,
            colors=info.get("colors"),
            normalization=info.get("normalization"),
            aux_kind=info.get("aux_kind"),
            bands=info.get("bands"),
            dataset=info.get("dataset"),
            label_variant=info.get("label_variant"),
            patch_size=info.get("patch_size"),
            ignore_index=int(info.get("ignore_index", 255)),
            fingerprint=self._fingerprint,
            mean_classes=self.metrics.mean_classes if self.metrics else None,
            unseen_classes=None
            if self.unseen_ids is None
            else [self.class_names[i] for i in self.unseen_ids],
            datamodule=info.get("datamodule"),
            datamodule_kwargs=info.get("datamodule_kwargs"),
            evaluation={
                "window": hp.eval_window,
                "stride": hp.eval_stride,
                "blend": hp.eval_blend,
            },
            training={"numeric_precision": self._precision()},
            gsd_m=info.get("gsd_m"),
        )

    def _precision(self) -> str | None:
        """The precision the trainer ran (``None`` outside a trainer)."""
        trainer = self._trainer
        return None if trainer is None else str(trainer.precision)

    # ------------------------------------------------------------------ steps
    def _inputs(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None, Tensor | None]:
        image = batch["image"]
        if self.aux_channels == 0:
            return image, None, None
        return image, batch.get("aux"), batch.get("aux_valid")

    def _set_vocabulary(self, training: bool) -> None:
        if self.seen_ids is None or self.model is None:
            return
        ids = self.seen_ids if training else range(len(self.class_names))
        self.model.set_vocabulary([self.class_names[i] for i in ids])

    def forward(self, image: Tensor, aux: Tensor | None = None, aux_valid: Tensor | None = None):
        """Run the model (logits in eval mode, a dict of outputs in training mode)."""
        return self.model(image, aux, aux_valid)

    def on_train_epoch_start(self) -> None:
        """Restore RNG states saved in a resume checkpoint; set the training vocabulary."""
        if self._pending_rng is not None:
            _restore_rng(self._pending_rng)
            self._pending_rng = None
        self._set_vocabulary(training=True)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """One step of the method's own loss terms."""
        image, aux, aux_valid = self._inputs(batch)
        target = batch["mask"].long()
        if self.seen_ids is not None:
            target = to_seen_targets(target, self.seen_ids, len(self.class_names))
        out = self.model(image, aux, aux_valid)
        if isinstance(out, Tensor):
            out = {"logits": out}
        losses = self.model.compute_loss(out, target)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {float(loss)} at step {self.global_step}")
        self.log_dict(
            {f"train/{k}": v.detach() for k, v in losses.items()},
            prog_bar=False,
            batch_size=image.shape[0],
        )
        return loss

    def on_validation_epoch_start(self) -> None:
        """Give the model every class name (zero-shot protocol)."""
        self._set_vocabulary(training=False)
        self.metrics.reset()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Accumulate the confusion matrix of a validation batch."""
        image, aux, aux_valid = self._inputs(batch)
        logits = self.model(image, aux, aux_valid)
        if isinstance(logits, dict):
            logits = logits["logits"]
        self.metrics.update(logits.argmax(1), batch["mask"].long())

    def on_validation_epoch_end(self) -> None:
        """Log the metrics and write them as JSON (``val_metrics.json`` + history)."""
        result = self.metrics.compute()
        self.last_metrics = result
        scalars = scalar_metrics(result, prefix="val/")
        self.log_dict(
            {k: torch.tensor(v if v == v else 0.0) for k, v in scalars.items()}, sync_dist=False
        )
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        out = Path(self.hparams.metrics_dir or self.trainer.default_root_dir)
        extra = {
            "step": int(self.global_step),
            "epoch": int(self.current_epoch),
            "split": "val",
            "numeric_precision": self._precision(),
        }
        write_metrics_json(out / "val_metrics.json", result, **extra)
        with open(out / "val_metrics.jsonl", "a") as f:
            f.write(
                json.dumps({**extra, **{k: (v if v == v else None) for k, v in scalars.items()}})
                + "\n"
            )
        self.metrics.reset()

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW/SGD over the trainable parameters with the warm-up + decay schedule."""
        hp = self.hparams
        lr_mult = hp.lr_mult
        if lr_mult is None:  # the method's own recipe (e.g. RPN's 10x groups), where it has one
            own = getattr(self.model, "lr_multipliers", None) or {}
            present = {
                n.split(".", 1)[0] for n, p in self.model.named_parameters() if p.requires_grad
            }
            lr_mult = {k: v for k, v in own.items() if k in present}
        opt = build_optimizer(
            self.model,
            hp.optimizer,
            lr=hp.lr,
            weight_decay=hp.weight_decay,
            no_decay_1d=hp.no_decay_1d,
            lr_mult=lr_mult,
            betas=tuple(hp.betas),
            momentum=hp.momentum,
        )
        total = hp.total_steps
        if total is None:
            total = int(self.trainer.max_steps) if self.trainer.max_steps > 0 else None
        if total is None:
            total = int(self.trainer.estimated_stepping_batches)
        sched = build_scheduler(
            opt,
            total_steps=total,
            schedule=hp.schedule,
            warmup_steps=hp.warmup_steps,
            warmup_start_factor=hp.warmup_start_factor,
            min_lr=hp.min_lr,
            power=hp.poly_power,
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop the frozen encoder from Lightning's checkpoint; add meta and RNG states."""
        keep = {f"model.{k}" for k in self.model.adapter_state_dict(include_training_only=True)}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["rsprompt_meta"] = self.meta()
        checkpoint["rsprompt_rng"] = _collect_rng()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a resume checkpoint of another model/encoder; keep its RNG states for later."""
        meta = checkpoint.get("rsprompt_meta")
        if meta is None:
            raise CheckpointError("not an rsprompt resume checkpoint (no rsprompt_meta)")
        mine = self.meta()
        for key in ("method", "encoder", "num_classes", "aux_channels"):
            if meta.get(key) != mine.get(key):
                raise CheckpointError(
                    f"resume checkpoint was trained with {key}={meta.get(key)!r}, this run has "
                    f"{mine.get(key)!r}"
                )
        _check_resumed_weights(meta.get("weights"), mine.get("weights"))
        fp_old, fp_new = meta.get("encoder_fingerprint"), mine.get("encoder_fingerprint")
        random_encoder = meta.get("weights") is None
        if random_encoder and meta.get("encoder_seed") != mine.get("encoder_seed"):
            raise CheckpointError(
                f"resume checkpoint's random encoder (seed {meta.get('encoder_seed')}) differs "
                f"from this run's (seed {mine.get('encoder_seed')})"
            )
        if fp_old and fp_new and not _fingerprints_match(fp_old, fp_new):
            raise CheckpointError(
                f"resume checkpoint's encoder (fingerprint {fp_old}) differs from this run's "
                f"({fp_new}): the encoder does not match"
            )
        missing = {f"model.{k}" for k in self.model.adapter_state_dict(include_training_only=True)}
        missing -= set(checkpoint["state_dict"])
        if missing:
            raise CheckpointError(
                f"resume checkpoint lacks trainable tensors {sorted(missing)[:5]}"
            )
        self._pending_rng = checkpoint.get("rsprompt_rng")
