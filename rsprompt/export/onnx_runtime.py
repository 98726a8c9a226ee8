"""Run an ONNX file written by :func:`rsprompt.export.export_onnx` with onnxruntime.

:class:`OnnxModel` is a drop-in for a :class:`~rsprompt.models.base.SegmentationModel` in eval
mode at prediction time, with one difference: it takes the *raw* values of the optical bands and
the aux (the graph normalises them), so a caller skips rsprompt's own normalisation.

``model(image, aux, aux_valid)`` returns the **log**-probabilities ``B×K×H×W`` as a torch tensor:
the caller's ``softmax`` (what ``rsprompt predict`` applies to any model's logits) then gives back
exactly the exported probabilities, and the argmax is unchanged. :meth:`OnnxModel.probabilities`
returns the probabilities themselves. Inputs smaller than the exported window are padded (edge
values; the aux padding is marked invalid) and the output is cropped back; larger ones are refused.

Example:
    >>> from rsprompt.export import OnnxModel  # doctest: +SKIP
    >>> model = OnnxModel("model.onnx")  # doctest: +SKIP
    >>> model.window, model.classes, model.bands, model.aux_kind  # doctest: +SKIP
    (512, ['impervious surfaces', ...], [1, 2, 3], 'dsm')
    >>> logp = model(image_raw, aux_raw, aux_valid)  # B×3×512×512, B×1×512×512, B×1×512×512  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsprompt.export.common import ExportError, require_onnx


def read_metadata(session: Any) -> dict[str, Any]:
    """The ONNX file's metadata, every value decoded with ``json.loads`` (as Deepness does).

    Raises:
        ExportError: If a value is not JSON.
    """
    out = {}
    for key, value in session.get_modelmeta().custom_metadata_map.items():
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            raise ExportError(f"ONNX metadata {key!r} is not JSON: {value[:80]!r}") from None
    return out


def onnx_device(device: str | torch.device | None = "cpu") -> str:
    """Where onnxruntime runs: ``"cpu"`` or ``"cuda"``/``"cuda:N"`` (its CUDA provider).

    ``auto`` (or ``None``) takes CUDA when onnxruntime has its CUDA provider (the
    ``onnxruntime-gpu`` package), else the CPU. Torch's own CUDA build does not matter.

    Raises:
        ExportError: An unknown device, ``mps``, or ``cuda`` without the CUDA provider.
    """
    name = "auto" if device is None else str(device).strip().lower()
    if name == "auto":
        return "cuda" if "CUDAExecutionProvider" in _available_providers() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ExportError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return "cpu"
    if dev.type != "cuda":
        raise ExportError(f"onnxruntime runs on cpu or cuda, not {dev.type}: pass --device cpu")
    if "CUDAExecutionProvider" not in _available_providers():
        raise ExportError(
            "onnxruntime on this machine has no CUDA provider (install onnxruntime-gpu), "
            "or pass --device cpu"
        )
    return str(dev)


def _available_providers() -> list[str]:
    require_onnx("onnxruntime")
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _providers(device: str | torch.device) -> list[Any]:
    dev = torch.device(onnx_device(device))
    if dev.type == "cuda":
        return [("CUDAExecutionProvider", {"device_id": dev.index or 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxModel:
    """An exported rsprompt model run by onnxruntime, callable like a model in eval mode.

    Args:
        path: ONNX file written by ``rsprompt export``.
        device: ``cpu``, ``cuda``/``cuda:N`` (onnxruntime's CUDA provider) or ``auto``.
        threads: Intra-op threads (``None``: onnxruntime's default).

    Attributes:
        window: Input side (``H = W``) the graph was exported for.
        channels: Input channels (optical then aux).
        n_optical: Optical channels.
        aux_channels: Aux channels.
        aux_kind: ``"dsm"``, ``"sar"`` or ``None``.
        aux_input: ``"height_above_ground"`` when the aux input holds metres above the ground
            (an nDSM checkpoint's export; see :mod:`rsprompt.inference.ground`), else
            ``"raw"`` (``None`` without an aux input).
        bands: 1-based scene bands of the optical input (``None``: every band).
        classes: Class names; ``num_classes`` their count.
        colors: RGB colour per class.
        metadata: Every metadata key, decoded.

    Raises:
        ExportError: onnxruntime missing, the file unreadable or not written by rsprompt export.
    """

    training = False

    def __init__(
        self, path: str | Path, device: str | torch.device = "cpu", threads: int | None = None
    ) -> None:
        require_onnx("onnxruntime")
        import onnxruntime as ort

        device = onnx_device(device)
        self.path = Path(path)
        if not self.path.is_file():
            raise ExportError(f"ONNX model {self.path}: file not found")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=_providers(device)
            )
        except ExportError:
            raise
        except Exception as exc:  # onnxruntime raises its own types
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ExportError(
                f"ONNX model {self.path}: not a readable ONNX file ({first})"
            ) from None
        self.metadata = read_metadata(self.session)
        if "rsprompt_classes" not in self.metadata:
            raise ExportError(
                f"ONNX model {self.path} was not written by `rsprompt export` (no rsprompt "
                "metadata): its input conventions are unknown"
            )
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.channels, self.window = int(inp.shape[1]), int(inp.shape[2])
        m = self.metadata
        self.aux_channels = int(m.get("rsprompt_aux_channels") or 0)
        self.n_optical = self.channels - self.aux_channels
        self.aux_kind = m.get("rsprompt_aux_kind")
        self.aux_input = m.get("rsprompt_aux_input") or ("raw" if self.aux_channels else None)
        self.bands = m.get("rsprompt_bands")
        self.classes = list(m["rsprompt_classes"])
        self.colors = [tuple(c) for c in m.get("rsprompt_colors") or []]
        self.num_classes = len(self.classes)
        self.device = torch.device(device)

    def eval(self) -> OnnxModel:
        """No-op (the graph is an inference graph)."""
        return self

    def train(self, mode: bool = True) -> OnnxModel:
        """Refuse training mode.

        Raises:
            ExportError: If ``mode`` is true.
        """
        if mode:
            raise ExportError("an ONNX model cannot be trained")
        return self

    def run(self, x: np.ndarray) -> np.ndarray:
        """Probabilities ``N×K×H×W`` of a raw stacked input ``N×(C+A)×window×window`` (numpy).

        Raises:
            ExportError: If the input does not have the exported shape.
        """
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[1:] != (self.channels, self.window, self.window):
            raise ExportError(
                f"ONNX model {self.path} takes N×{self.channels}×{self.window}×{self.window} "
                f"inputs, got {x.shape}"
            )
        return self.session.run(None, {self.input_name: x})[0]

    def stack(
        self,
        image: np.ndarray | torch.Tensor,
        aux: np.ndarray | torch.Tensor | None = None,
        aux_valid: np.ndarray | torch.Tensor | None = None,
    ) -> np.ndarray:
        """The raw stacked input of a batch: ``image``, then ``aux`` with NaN where not valid.

        Args:
            image: Raw optical values ``B×C×H×W``.
            aux: Raw aux values ``B×A×H×W`` (``None``: the aux is missing everywhere).
            aux_valid: ``B×1×H×W`` (or ``B×H×W``), nonzero = valid (``None``: all valid).
        """
        img = _numpy(image)
        if img.shape[1] != self.n_optical:
            raise ExportError(
                f"ONNX model {self.path} takes {self.n_optical} optical band(s), got {img.shape[1]}"
            )
        if not self.aux_channels:
            return img
        b, _, h, w = img.shape
        if aux is None:
            a = np.full((b, self.aux_channels, h, w), np.nan, np.float32)
        else:
            a = _numpy(aux).copy()
            if aux_valid is not None:
                v = _numpy(aux_valid).reshape(b, 1, h, w) > 0
                a = np.where(v, a, np.float32(np.nan))
        return np.concatenate([img, a], axis=1)

    def probabilities(
        self,
        image: np.ndarray | torch.Tensor,
        aux: np.ndarray | torch.Tensor | None = None,
        aux_valid: np.ndarray | torch.Tensor | None = None,
    ) -> np.ndarray:
        """Probabilities ``B×K×H×W`` (numpy) of raw inputs of at most the exported window."""
        x = self.stack(image, aux, aux_valid)
        h, w = x.shape[-2:]
        if h > self.window or w > self.window:
            raise ExportError(
                f"ONNX model {self.path} was exported for {self.window}×{self.window} windows; "
                f"got {h}×{w}: predict with --window {self.window}"
            )
        if (h, w) != (self.window, self.window):
            pad = ((0, 0), (0, 0), (0, self.window - h), (0, self.window - w))
            x = np.pad(x, pad, mode="edge")
            if self.aux_channels:
                x[:, self.n_optical :, h:, :] = np.nan
                x[:, self.n_optical :, :, w:] = np.nan
        return self.run(x)[..., :h, :w]

    def __call__(
        self,
        image: np.ndarray | torch.Tensor,
        aux: np.ndarray | torch.Tensor | None = None,
        aux_valid: np.ndarray | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Log-probabilities ``B×K×H×W`` (torch, on ``image``'s device) of raw inputs."""
        probs = self.probabilities(image, aux, aux_valid)
        out = torch.from_numpy(np.log(np.maximum(probs, np.float32(1e-30))))
        return out.to(image.device) if isinstance(image, torch.Tensor) else out


def _numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float32).numpy()
    return np.asarray(x, np.float32)
