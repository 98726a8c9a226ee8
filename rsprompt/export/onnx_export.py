"""Export a model checkpoint to one ONNX file that QGIS's Deepness plugin runs.

The ONNX model takes one ``N×(C+A)×H×W`` float32 input of *raw* values, the layer
``rsprompt stack`` writes: the checkpoint's optical bands, then its aux band(s) (NaN where the aux
has no data). rsprompt's normalisation and value scaling run inside the graph
(:class:`~rsprompt.export.graph.RawInputModel`) and the output is ``N×K×H×W`` softmax
probabilities. The batch axis is dynamic; the spatial axes are fixed to the window (Deepness
tiles are square).

Deepness divides every value by 255 and then standardises with the model's metadata; the export
writes ``standardization_mean`` 0 and ``standardization_std`` 1/255 for every channel, so the two
steps cancel and the graph sees the raw values. Every metadata value is JSON-encoded (Deepness
reads each with ``json.loads``); see :func:`deepness_metadata`.

Aux normalisations that rsprompt fits over a whole training tile or scene cannot be fitted per
Deepness tile without seams between tiles:

- DSM ``minmax`` (MoBaNet) is baked with *fixed* statistics: ``aux_stats`` (a DSM raster, or a
  stacked layer, whose valid heights give the min and max) or ``aux_range`` (min, max). A range
  wider than one training tile's compresses the heights the model sees, as ``rsprompt predict``'s
  scene-wide min–max does; a narrower one clips nothing but maps heights outside it beyond
  [0, 1].
- DSM ``ndsm`` (heights above a ground fitted over the whole scene) takes, by default, the
  heights above ground themselves as its aux input (``ndsm``: the band ``rsprompt stack --ndsm``
  writes with the ground ``rsprompt predict`` fits); the graph only clips and scales them, so
  each tile gets exactly predict's values. With ``ndsm=False`` it takes the raw DSM and
  estimates the ground inside each input tile (the same algorithm, on the tile's pixels at the
  exported resolution): away from a tile's borders by the ground window this approaches the
  scene-wide estimate; near them the ground of a large building may come out too high.

Right after writing, the file is run with onnxruntime on a random window and compared with the
checkpoint's torch model behind rsprompt's own (numpy) normalisation: the largest absolute
difference of the probabilities must be at most ``tolerance`` (1e-4), else nothing is written.

Example:
    >>> from rsprompt.export import export_onnx  # doctest: +SKIP
    >>> summary = export_onnx("run/model.ckpt", "model.onnx", aux_range=(240.0, 300.0))  # doctest: +SKIP
    >>> summary.max_abs_diff <= 1e-4  # doctest: +SKIP
    True
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsprompt import __version__
from rsprompt.export.common import (
    ExportError,
    InputLayout,
    check_output,
    input_layout,
    ndsm_input,
    require_onnx,
    temp_path,
    training_resolution_cm,
)
from rsprompt.export.graph import RawInputModel

#: Largest absolute difference of the probabilities allowed between onnxruntime and torch.
TOLERANCE = 1e-4
#: Default ONNX opset.
OPSET = 17
#: Name of the graph's input and output.
INPUT, OUTPUT = "input", "output"


@dataclass
class ExportSummary:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: The ONNX file.
        window: Tile side (input and output ``H = W``).
        channels: Input channels (optical then aux).
        classes: Class names (output channel order).
        resolution_cm: Ground sampling distance written to the metadata (cm/px).
        aux_stats: Fixed aux statistics baked into the graph (``None``: none needed).
        max_abs_diff: Largest absolute difference onnxruntime vs torch on the check window.
        metadata: The metadata written (keys → JSON strings).
        aux_input: What the aux input holds: ``"raw"`` values, ``"height_above_ground"``
            (metres; an nDSM checkpoint's default) or ``None`` (no aux input).
    """

    path: Path
    window: int
    channels: int
    classes: list[str]
    resolution_cm: float
    aux_stats: dict[str, float] | None
    max_abs_diff: float
    metadata: dict[str, str] = field(default_factory=dict)
    aux_input: str | None = None


# --------------------------------------------------------------------------- statistics
def aux_statistics(path: str | Path, layout: InputLayout) -> dict[str, float]:
    """Min and max of the valid values of an aux raster's first aux band (a DSM's heights).

    ``path`` is the DSM itself (``A`` bands) or a stacked layer (``C + A`` bands, the aux bands
    last, as ``rsprompt stack`` writes). A value is valid where it is finite, differs from the
    file's nodata value and the file's internal mask allows it (:mod:`rsprompt.data.validity`);
    the values are streamed in strips with the scene reader's statistics code.

    Raises:
        ExportError: If the file is unreadable, has another band count or no valid value.
    """
    from rsprompt.data.validity import valid_pixels
    from rsprompt.inference.reader import (
        PredictError,
        _internal_mask,
        _open,
        _read_errors,
        _RunningStats,
        _usable_nodata,
    )

    path = Path(path)
    a = layout.aux_channels
    try:
        src = _open(path, "aux statistics raster")
    except PredictError as exc:
        raise ExportError(str(exc)) from None
    with src:
        if src.count == a:
            bands = list(range(1, a + 1))
        elif layout.channels is not None and src.count == layout.channels:
            bands = list(range(src.count - a + 1, src.count + 1))
        else:
            want = f"{a}" + (f" (the aux) or {layout.channels} (a stacked layer)" * bool(a))
            raise ExportError(
                f"aux statistics raster {path} has {src.count} band(s); expected {want}"
            )
        nodata = _usable_nodata(src, path, "aux statistics raster")
        masked = _internal_mask(src)
        stats = _RunningStats(1)
        rows = max(1, (1 << 22) // max(1, src.width))
        for r in range(0, src.height, rows):
            win = ((r, min(r + rows, src.height)), (0, src.width))
            try:
                with _read_errors(path, "aux statistics raster"):
                    raw = src.read(bands, window=win)
                    mask = src.read_masks(bands[0], window=win) if masked else None
            except PredictError as exc:
                raise ExportError(str(exc)) from None
            ok = valid_pixels(raw, nodata, mask=mask)
            stats.add(raw[:1, ok].astype(np.float32))
    if stats.count == 0:
        raise ExportError(f"aux statistics raster {path} has no valid pixel")
    return {"min": float(stats.min[0]), "max": float(stats.max[0])}


def _fixed_stats(
    aux_norm: Any,
    layout: InputLayout,
    aux_stats: str | Path | None,
    aux_range: Sequence[float] | None,
    source: Path,
) -> dict[str, float] | None:
    """The fixed statistics the aux normaliser needs (checked against what was given)."""
    mode = f"{getattr(aux_norm, 'kind', '')}:{getattr(aux_norm, 'mode', '')}"
    given = aux_stats is not None or aux_range is not None
    if aux_stats is not None and aux_range is not None:
        raise ExportError("give --aux-stats or --aux-range, not both")
    if mode != "dsm:minmax":
        if given:
            what = "no aux modality" if not layout.aux_channels else f"aux normalisation {mode}"
            raise ExportError(
                f"checkpoint {source} has {what}, which needs no fixed statistics: drop "
                "--aux-stats/--aux-range"
            )
        return None
    if not given:
        raise ExportError(
            f"checkpoint {source} normalises its DSM with a min–max fitted per training tile, "
            "which cannot be fitted per QGIS tile without seams: give fixed statistics with "
            "--aux-stats DSM_OR_STACKED_RASTER (min and max of its heights) or --aux-range MIN MAX"
        )
    if aux_range is not None:
        lo, hi = (float(v) for v in aux_range)
        if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
            raise ExportError(f"--aux-range needs finite MIN < MAX, got {lo:g} {hi:g}")
        return {"min": lo, "max": hi}
    assert aux_stats is not None
    stats = aux_statistics(aux_stats, layout)
    if stats["max"] <= stats["min"]:
        raise ExportError(
            f"aux statistics raster {aux_stats}: every valid height is {stats['min']:g}; "
            "give --aux-range MIN MAX"
        )
    return stats


def _aux_input(aux_norm: Any, layout: InputLayout, ndsm: bool | None, source: Path) -> str | None:
    """What the graph's aux input holds: ``"height_above_ground"``, ``"raw"`` or ``None``.

    Raises:
        ExportError: ``ndsm`` without an aux input, or for a checkpoint not trained on an nDSM.
    """
    if not layout.aux_channels:
        if ndsm:
            raise ExportError(
                f"--ndsm needs the DSM input, but checkpoint {source} is exported without an aux "
                "input (--optical-only, or a model trained on optical imagery only)"
            )
        return None
    return "height_above_ground" if ndsm_input(aux_norm, ndsm, source, "--ndsm") else "raw"


# --------------------------------------------------------------------------- sample windows
def sample_window(
    norm: Any,
    layout: InputLayout,
    window: int,
    *,
    batch: int = 2,
    aux_stats: dict[str, float] | None = None,
    invalid: int = 3,
    seed: int = 0,
    height_input: bool = False,
) -> np.ndarray:
    """A random raw ``batch×(C+A)×window×window`` float32 input in the checkpoint's value range.

    Optical values cover the range its normalisation expects; aux values the range of its
    normaliser (heights above ground from below 0 to above the clip with ``height_input``);
    ``invalid`` aux pixels of every sample are NaN (no data).
    """
    assert layout.n_optical is not None
    rng = np.random.default_rng(seed)
    shape = (batch, layout.n_optical, window, window)
    opt = norm.optical
    if opt.fitted == "percentile":
        lo, hi = np.asarray(opt.low), np.asarray(opt.high)
        span = hi - lo
        low, high = lo - 0.1 * span, hi + 0.1 * span
    elif opt.fitted == "meanstd":
        mean, std = np.asarray(opt.mean), np.asarray(opt.std)
        low, high = mean - 2 * std, mean + 2 * std
    else:
        low, high = np.zeros(1), np.full(1, opt.scale)
    c = layout.n_optical
    low = np.broadcast_to(low, (c,)).reshape(1, c, 1, 1)
    high = np.broadcast_to(high, (c,)).reshape(1, c, 1, 1)
    x = low + (high - low) * rng.random(shape)
    if not layout.aux_channels:
        return x.astype(np.float32)
    a = rng.random((batch, layout.aux_channels, window, window))
    aux = norm.aux
    mode = f"{getattr(aux, 'kind', '')}:{getattr(aux, 'mode', '')}"
    if mode == "dsm:minmax":
        assert aux_stats is not None
        a = aux_stats["min"] + (aux_stats["max"] - aux_stats["min"]) * a
    elif mode == "dsm:global":
        a = aux.mean + aux.std * (4 * a - 2)
    elif mode == "dsm:ndsm":
        a = (1.5 * a - 0.25 + (0.0 if height_input else 250.0)) * aux.max_height_m
    elif mode == "sar:uint8":
        a = 255.0 * a
    elif mode in ("sar:db", "sar:linear"):
        db = aux.db_min - 5 + (aux.db_max - aux.db_min + 10) * a
        a = 10 ** (db / 10) if mode == "sar:linear" else db
    else:
        a = 50.0 * a
    a = a.astype(np.float32)
    for i in range(batch):
        rows = rng.integers(0, window, invalid)
        cols = rng.integers(0, window, invalid)
        a[i, :, rows, cols] = np.nan
    return np.concatenate([x.astype(np.float32), a], axis=1)


def reference_probabilities(
    model: Any,
    norm: Any,
    layout: InputLayout,
    x: np.ndarray,
    *,
    aux_stats: dict[str, float] | None = None,
    res_m: float | None = None,
    height_input: bool = False,
) -> np.ndarray:
    """Probabilities of the torch model behind rsprompt's numpy normalisers (the check's truth).

    Each sample is normalised as ``rsprompt predict`` normalises a window
    (:class:`rsprompt.inference.from_checkpoint.CheckpointNormalizer`): non-finite optical values
    read as 0, the aux is 0 with validity 0 where any aux band is not finite, a DSM ``minmax``
    takes ``aux_stats`` and a DSM ``ndsm`` fits its ground on the sample itself, or with
    ``height_input`` takes the sample as heights above ground (:meth:`DSMNormalizer.scale_height`).
    """
    c = int(layout.n_optical or 0)
    optical = dataclasses.replace(norm.optical, bands=None)
    images, auxes, valids = [], [], []
    for sample in x:
        img = np.nan_to_num(sample[:c], nan=0.0, posinf=0.0, neginf=0.0)
        images.append(optical.apply(img, selected=True))
        if not layout.aux_channels:
            continue
        raw = sample[c:]
        ok = np.isfinite(raw).all(axis=0)
        a = np.where(ok[None], raw, np.float32(0.0)).astype(np.float32)
        if norm.aux is None:
            auxes.append(a)
            valids.append(ok.astype(np.float32)[None])
            continue
        if height_input:
            auxes.append(np.where(ok[None], norm.aux.scale_height(a), np.float32(0.0)))
            valids.append(ok.astype(np.float32)[None])
            continue
        stats = aux_stats
        if getattr(norm.aux, "mode", None) == "ndsm":
            stats = norm.aux.fit(a, ok, res=float(res_m or 1.0))
        out, av = norm.aux.apply(a, stats, valid=ok)
        auxes.append(np.asarray(out, np.float32))
        valids.append(np.asarray(av, np.float32))
    image = torch.from_numpy(np.stack(images).astype(np.float32))
    with torch.inference_mode():
        if layout.aux_channels:
            aux = torch.from_numpy(np.stack(auxes))
            valid = torch.from_numpy(np.stack(valids))
            out = model(image, aux=aux * valid, aux_valid=valid)
        else:
            out = model(image)
        if isinstance(out, dict):
            out = out["logits"]
        return torch.softmax(out.float(), dim=1).numpy()


# --------------------------------------------------------------------------- metadata
def deepness_metadata(
    *,
    classes: Sequence[str],
    colors: Sequence[Sequence[int]],
    window: int,
    overlap_percent: int,
    resolution_cm: float,
    channels: int,
    meta: dict[str, Any],
    layout: InputLayout,
    aux_normalization: dict[str, Any] | None,
    checkpoint_sha256: str,
    aux_input: str | None = None,
) -> dict[str, str]:
    """The ONNX metadata: Deepness's keys and rsprompt's own (``rsprompt_…``), JSON-encoded.

    Deepness reads ``model_type``, ``class_names`` (``{"0": name, …}``), ``resolution`` (cm/px),
    ``tile_size`` (its docs say ``tiles_size``: both are written), ``tiles_overlap`` (percent),
    ``standardization_mean``/``standardization_std`` (per channel: 0 and 1/255, which cancel its
    division by 255), ``seg_thresh`` (0: no probability threshold, the argmax is kept) and
    ``seg_small_segment`` (0: no small-segment removal).
    """
    weights = meta.get("weights") or {}
    values: dict[str, Any] = {
        "model_type": "Segmentor",
        "class_names": {str(i): str(n) for i, n in enumerate(classes)},
        "resolution": float(resolution_cm),
        "tile_size": int(window),
        "tiles_size": int(window),
        "tiles_overlap": int(overlap_percent),
        "standardization_mean": [0.0] * channels,
        "standardization_std": [1.0 / 255.0] * channels,
        "seg_thresh": 0.0,
        "seg_small_segment": 0,
        "rsprompt_version": __version__,
        "rsprompt_method": meta.get("method"),
        "rsprompt_encoder": meta.get("encoder"),
        "rsprompt_weights_sha256": weights.get("sha256") if isinstance(weights, dict) else None,
        "rsprompt_checkpoint_sha256": checkpoint_sha256,
        "rsprompt_classes": [str(n) for n in classes],
        "rsprompt_colors": [[int(v) for v in c[:3]] for c in colors],
        "rsprompt_bands": layout.bands,
        "rsprompt_optical_channels": layout.n_optical,
        "rsprompt_aux_kind": layout.aux_kind,
        "rsprompt_aux_channels": layout.aux_channels,
        "rsprompt_aux_normalization": aux_normalization,
        "rsprompt_aux_input": aux_input,
        "rsprompt_input": (
            "raw optical bands, then the DSM as heights above ground in metres, NaN = no data "
            "(rsprompt stack --ndsm)"
            if aux_input == "height_above_ground"
            else "raw values: optical bands, then aux bands (NaN = no data)"
        ),
        "rsprompt_output": "softmax probabilities",
    }
    return {k: json.dumps(v) for k, v in values.items()}


# --------------------------------------------------------------------------- export
def _load(checkpoint: Path, weights: str | None, classes: Sequence[str] | None) -> Any:
    from rsprompt.inference.reader import PredictError

    try:
        from rsprompt.inference.from_checkpoint import CheckpointPredictor

        return CheckpointPredictor(checkpoint, weights=weights, device="cpu", classes=classes)
    except PredictError as exc:
        raise ExportError(str(exc)) from None


def _resolution(meta: dict[str, Any], resolution: float | None, source: Path) -> float:
    if resolution is not None:
        if not (math.isfinite(resolution) and resolution > 0):
            raise ExportError(f"--resolution must be a positive number of cm/px, got {resolution}")
        return float(resolution)
    found = training_resolution_cm(meta)
    if found is None:
        raise ExportError(
            f"checkpoint {source} does not record the ground sampling distance of its training "
            f"data (dataset {meta.get('dataset')!r}); pass --resolution CM_PER_PIXEL"
        )
    return found


def _plain(value: Any, cast: type) -> Any:
    """A traced size (0-dim tensor), or a tuple/list of them, as plain Python numbers."""
    if isinstance(value, torch.Tensor) and value.ndim == 0:
        return cast(value)
    if isinstance(value, tuple | list | torch.Size):
        return (
            type(value)(_plain(v, cast) for v in value)
            if not isinstance(value, torch.Size)
            else tuple(_plain(v, cast) for v in value)
        )
    return value


def _static(fn: Any, **casts: type) -> Any:
    """``fn`` with the keyword/positional arguments named in ``casts`` made plain numbers.

    Under the TorchScript tracer every ``tensor.shape`` entry is a traced value, so output sizes
    and paddings computed from shapes reach ``F.interpolate``/``F.pad``/adaptive pooling as
    graph values, which the ONNX exporter refuses ("output_size is not constant"). The export
    fixes the spatial axes, so these are constants: plain numbers trace as constants.
    """
    import inspect

    names = list(inspect.signature(fn).parameters)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        args = tuple(
            _plain(a, casts[names[i]]) if i < len(names) and names[i] in casts else a
            for i, a in enumerate(args)
        )
        kwargs = {k: _plain(v, casts[k]) if k in casts else v for k, v in kwargs.items()}
        return fn(*args, **kwargs)

    return wrapper


#: ``torch.nn.functional`` functions whose size arguments are made constant while tracing.
STATIC_ARGUMENTS: dict[str, dict[str, type]] = {
    "interpolate": {"size": int, "scale_factor": float},
    "pad": {"pad": int},
    "adaptive_avg_pool2d": {"output_size": int},
    "adaptive_max_pool2d": {"output_size": int},
}


def _average_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """``n_out × n_in`` matrix of adaptive average pooling along one axis (PyTorch's bins)."""
    m = torch.zeros(n_out, n_in)
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def adaptive_average(x: torch.Tensor, size: Sequence[int | None]) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, size)`` as two constant matrix products (no shape lookups).

    Adaptive average pooling averages rectangles, so it separates into a row and a column
    average. The ONNX exporter needs the input's static shape for adaptive pooling, which it
    loses behind a padding; two MatMuls with constant matrices need none.
    """
    h, w = int(x.shape[-2]), int(x.shape[-1])
    oh = h if size[0] is None else int(size[0])
    ow = w if size[-1] is None else int(size[-1])
    rows = _average_matrix(h, oh).to(x.dtype)
    cols = _average_matrix(w, ow).to(x.dtype).T.contiguous()
    return torch.matmul(torch.matmul(rows, x), cols)


def _traceable(name: str, fn: Any) -> Any:
    """The patched ``F.<name>`` used while tracing (area resizing as :func:`adaptive_average`)."""
    static = _static(fn, **STATIC_ARGUMENTS[name])
    if name == "adaptive_avg_pool2d":

        def pool(x: torch.Tensor, output_size: Any) -> torch.Tensor:
            size = _plain(output_size, int)
            size = (size, size) if isinstance(size, int) else tuple(size)
            return adaptive_average(x, size) if x.ndim == 4 else static(x, output_size)

        return pool
    if name == "interpolate":

        def interpolate(
            x: torch.Tensor,
            size: Any = None,
            scale_factor: Any = None,
            mode: str = "nearest",
            *args: Any,
            **kwargs: Any,
        ) -> torch.Tensor:
            if mode == "area" and x.ndim == 4:
                if size is None:
                    sf = _plain(scale_factor, float)
                    sf = (sf, sf) if isinstance(sf, float) else tuple(sf)
                    size = tuple(
                        math.floor(int(n) * f) for n, f in zip(x.shape[-2:], sf, strict=True)
                    )
                size = _plain(size, int)
                return adaptive_average(x, (size, size) if isinstance(size, int) else tuple(size))
            return static(x, size, scale_factor, mode, *args, **kwargs)

        return interpolate
    return static


@contextmanager
def _static_spatial() -> Iterator[None]:
    """Patch :data:`STATIC_ARGUMENTS` with their traceable forms while tracing (restored after)."""
    import torch.nn.functional as F

    saved = {name: getattr(F, name) for name in STATIC_ARGUMENTS}
    try:
        for name in STATIC_ARGUMENTS:
            setattr(F, name, _traceable(name, saved[name]))
        yield
    finally:
        for name, fn in saved.items():
            setattr(F, name, fn)


def _trace(net: torch.nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    """``torch.onnx.export`` (TorchScript tracer: data-dependent branches follow ``example``)."""
    with warnings.catch_warnings(), _static_spatial():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
            do_constant_folding=True,
        )


def _finish_graph(path: Path, metadata: dict[str, str], classes: int, window: int) -> None:
    """Write the metadata and the output's static shape ``batch×K×window×window``.

    The tracer leaves the output's dimensions symbolic; Deepness reads the number of classes
    from the output shape and refuses outputs whose last two dimensions differ.
    """
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    dims = model.graph.output[0].type.tensor_type.shape.dim
    for dim, value in zip(dims, ("batch", classes, window, window), strict=True):
        if isinstance(value, str):
            dim.dim_param = value
        else:
            dim.dim_value = value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _verify(path: Path, reference: np.ndarray, x: np.ndarray, tolerance: float) -> float:
    from rsprompt.export.onnx_runtime import OnnxModel

    got = OnnxModel(path).run(x)
    if got.shape != reference.shape:
        raise ExportError(f"onnxruntime returned {got.shape}, torch {reference.shape}")
    diff = float(np.max(np.abs(got - reference)))
    if not diff <= tolerance:
        raise ExportError(
            f"the exported model differs from the torch model by {diff:.3g} (max abs of the "
            f"probabilities on a random window; tolerance {tolerance:g}): not written"
        )
    return diff


def _prepare(predictor: Any, window: int, source: Path) -> None:
    """Checks and warm-ups before tracing (RPN: the vocabulary's text embeddings are cached)."""
    model = predictor.model
    if hasattr(model, "text_embeddings"):
        model.text_embeddings()  # cached: the traced graph holds them as constants
    method = predictor.meta.get("method")
    if method == "rpn" and not getattr(model, "resample_h", True):
        if window != getattr(model, "img_size", window):
            raise ExportError(
                f"checkpoint {source} (RPN built with resample_h=False) runs on "
                f"{model.img_size}-pixel windows only: pass --window {model.img_size}"
            )


def _export_layout(predictor: Any, source: Path, optical_only: bool) -> tuple[Any, InputLayout]:
    """The checkpoint's normalisation and the graph's input layout (checked exportable)."""
    meta, norm = predictor.meta, predictor.normalization
    if norm is None:
        raise ExportError(
            f"checkpoint {source} records no normalisation: its value scaling cannot be baked "
            "into the graph"
        )
    layout = input_layout(meta, source)
    if optical_only:
        layout = dataclasses.replace(layout, aux_kind=None, aux_channels=0)
    if layout.n_optical is None:
        raise ExportError(
            f"checkpoint {source} does not tell how many optical bands the model reads (no band "
            "selection and one mean value): it cannot be exported with a fixed input"
        )
    return norm, layout


def _window(meta: dict[str, Any], window: int | None) -> int:
    """The tile side: ``window``, else the training patch size, else 512 (at least 8)."""
    win = int(window if window is not None else (meta.get("patch_size") or 512))
    if win < 8:
        raise ExportError(f"--window must be at least 8 pixels, got {win}")
    return win


def _raw_input_model(
    predictor: Any,
    layout: InputLayout,
    stats: dict[str, float] | None,
    win: int,
    res_cm: float,
    source: Path,
    heights: bool = False,
) -> tuple[RawInputModel, torch.Tensor]:
    """The graph to trace and its example input, after a dry run on one ``win×win`` window."""
    meta, norm = predictor.meta, predictor.normalization
    net = RawInputModel(
        predictor.model,
        norm.optical,
        norm.aux,
        n_optical=layout.n_optical,
        aux_channels=layout.aux_channels,
        aux_stats=stats,
        size=(win, win),
        res=res_cm / 100.0,
        height_input=heights,
    ).eval()
    example = torch.from_numpy(
        sample_window(norm, layout, win, batch=1, aux_stats=stats, height_input=heights)
    )
    try:
        with torch.no_grad():
            net(example)
    except (ValueError, RuntimeError) as exc:
        raise ExportError(
            f"checkpoint {source} ({meta.get('method')}) does not run on {win}×{win} windows: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    return net, example


def _export_metadata(
    predictor: Any,
    layout: InputLayout,
    stats: dict[str, float] | None,
    win: int,
    res_cm: float,
    source: Path,
    aux_input: str | None = None,
) -> dict[str, str]:
    """The metadata of the export (:func:`deepness_metadata` with the checkpoint's values)."""
    from rsprompt.models.weights import sha256_file

    norm = predictor.normalization
    aux_record = None
    if norm.aux is not None and layout.aux_channels:
        aux_record = {**norm.aux.to_dict(), **({"fixed_stats": stats} if stats else {})}
    return deepness_metadata(
        classes=list(predictor.classes.names),
        colors=list(predictor.classes.colors),
        window=win,
        overlap_percent=round(100 * (win // 4) / win),
        resolution_cm=res_cm,
        channels=layout.n_optical + layout.aux_channels,
        meta=predictor.meta,
        layout=layout,
        aux_normalization=aux_record,
        checkpoint_sha256=sha256_file(source),
        aux_input=aux_input,
    )


def _first_line(exc: Exception) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _write_checked(
    predictor: Any,
    layout: InputLayout,
    graph: tuple[RawInputModel, torch.Tensor],
    metadata: dict[str, str],
    *,
    stats: dict[str, float] | None,
    win: int,
    res_cm: float,
    opset: int,
    tolerance: float,
    source: Path,
    out: Path,
    heights: bool = False,
) -> float:
    """Trace to a temporary file, finish and verify it, then move it to ``out`` atomically.

    Returns:
        The largest absolute difference of the probabilities, onnxruntime vs torch.
    """
    meta, norm = predictor.meta, predictor.normalization
    net, example = graph
    tmp = temp_path(out)
    try:
        try:
            _trace(net, example, tmp, opset)
        except Exception as exc:  # the exporter raises many types; the message says which op
            raise ExportError(
                f"checkpoint {source} ({meta.get('method')}, {meta.get('encoder')}) does not "
                f"export to ONNX opset {opset}: {_first_line(exc)}"
            ) from None
        try:
            _finish_graph(tmp, metadata, len(predictor.classes.names), win)
        except Exception as exc:  # onnx raises its own types (e.g. a model over 2 GB)
            raise ExportError(f"cannot finish the ONNX file {out}: {_first_line(exc)}") from None
        check = sample_window(
            norm, layout, win, batch=2, aux_stats=stats, seed=1, height_input=heights
        )
        expected = reference_probabilities(
            predictor.model,
            norm,
            layout,
            check,
            aux_stats=stats,
            res_m=res_cm / 100.0,
            height_input=heights,
        )
        diff = _verify(tmp, expected, check, tolerance)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return diff


def export_onnx(
    checkpoint: str | Path,
    out: str | Path,
    *,
    window: int | None = None,
    opset: int = OPSET,
    aux_stats: str | Path | None = None,
    aux_range: Sequence[float] | None = None,
    resolution: float | None = None,
    classes: Sequence[str] | None = None,
    weights: str | None = None,
    optical_only: bool = False,
    ndsm: bool | None = None,
    overwrite: bool = False,
    tolerance: float = TOLERANCE,
) -> ExportSummary:
    """Export ``checkpoint`` to an ONNX file for QGIS's Deepness plugin (see the module doc).

    Args:
        checkpoint: ``model.ckpt`` written by ``rsprompt train``.
        out: The ONNX file to write.
        window: Tile side (default: the training patch size, else 512, as ``rsprompt predict``).
        opset: ONNX opset.
        aux_stats: Raster whose valid aux values give a DSM min–max's fixed statistics.
        aux_range: Fixed ``(min, max)`` of a DSM min–max instead.
        resolution: Ground sampling distance in cm/px (default: the training data's, where the
            checkpoint tells it).
        classes: An open-vocabulary model's class names (RPN), frozen into the graph.
        weights: Encoder weights file, when it moved since training.
        optical_only: Export an optical + aux model without its aux input (the model runs with
            the aux missing everywhere, as ``rsprompt predict`` without ``--dem``): a
            3-band graph for runners that take RGB only (GeoDeep).
        ndsm: The aux input holds heights above ground in metres (``rsprompt stack --ndsm``)
            instead of the raw DSM. Default: exactly for a checkpoint whose DSM normalisation is
            ``ndsm``; ``False`` makes the graph estimate the ground per tile from the raw DSM.
        overwrite: Replace an existing ``out``.
        tolerance: Largest absolute difference of the probabilities onnxruntime vs torch.

    Raises:
        ExportError: Missing dependency, bad input or option, a model that does not export or an
            export that does not match the torch model; nothing is written then.
    """
    require_onnx("onnx", "onnxruntime")
    source, out = Path(checkpoint), Path(out)
    check_output(out, overwrite)
    if opset < 14:
        raise ExportError(f"--opset {opset} is too old: rsprompt models need opset 14 or newer")
    predictor = _load(source, weights, classes)
    norm, layout = _export_layout(predictor, source, optical_only)
    win = _window(predictor.meta, window)
    res_cm = _resolution(predictor.meta, resolution, source)
    stats = _fixed_stats(
        norm.aux if layout.aux_channels else None, layout, aux_stats, aux_range, source
    )
    aux_input = _aux_input(norm.aux, layout, ndsm, source)
    heights = aux_input == "height_above_ground"
    _prepare(predictor, win, source)
    graph = _raw_input_model(predictor, layout, stats, win, res_cm, source, heights)
    metadata = _export_metadata(predictor, layout, stats, win, res_cm, source, aux_input)
    diff = _write_checked(
        predictor,
        layout,
        graph,
        metadata,
        stats=stats,
        win=win,
        res_cm=res_cm,
        opset=opset,
        tolerance=tolerance,
        source=source,
        out=out,
        heights=heights,
    )
    return ExportSummary(
        path=out,
        window=win,
        channels=layout.n_optical + layout.aux_channels,
        classes=list(predictor.classes.names),
        resolution_cm=res_cm,
        aux_stats=stats,
        max_abs_diff=diff,
        metadata=metadata,
        aux_input=aux_input,
    )
