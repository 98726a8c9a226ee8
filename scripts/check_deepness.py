"""Does a Deepness run of the demo's model give the map of ``rsprompt predict``? (issue 19).

Takes a demo folder (``make demo`` writes ``demo_out/``: ``scene.tif``, its DSM on another grid
and CRS, ``model.ckpt``), then, as a QGIS user would:

1. ``rsprompt stack scene.tif --dem dsm.tif -m model.ckpt -o stacked.vrt`` (the demo's model is
   trained on an nDSM, so the DSM band holds heights above the scene-wide ground);
2. ``rsprompt export model.ckpt -o model.onnx`` (the graph takes those heights);
3. runs the ONNX file over the stacked layer the way Deepness does: square tiles read band by
   band, ``/ 255``, standardised with the metadata's mean and std, onnxruntime, argmax;
4. predicts the scene with ``rsprompt predict``'s code path with the same windows (the exported
   window, no overlap, so each predict window is one Deepness tile);

and prints the share of pixels whose class agrees inside the windows both share (a scene side
that is not a multiple of the window ends with a predict window flush with the edge, blended with
the one before it; those pixels are left out). A differing pixel whose two largest Deepness-side
probabilities are within :data:`TIE` is a float32 tie between the two runtimes; exit status 0 when
no pixel differs beyond such ties, 1 otherwise.

Example::

    make demo && python scripts/check_deepness.py demo_out
    python scripts/check_deepness.py demo_out --window 256 --work /tmp/deepness
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

#: Two class probabilities closer than this are a tie: onnxruntime and torch may order them
#: differently (the export's own check allows 1e-4 between their probabilities).
TIE = 1e-4


def deepness_metadata(onnx_path: Path) -> dict:
    """The metadata values Deepness reads (``json.loads`` of each), and the model's session."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    return {
        "session": session,
        "mean": np.array(json.loads(meta["standardization_mean"]), np.float32),
        "std": np.array(json.loads(meta["standardization_std"]), np.float32),
        "tile": int(json.loads(meta["tile_size"])),
    }


def deepness_classes(layer: Path, onnx_path: Path, tile: int | None = None) -> np.ndarray:
    """Classes of ``layer`` run the Deepness way (see :func:`deepness_run`)."""
    return deepness_run(layer, onnx_path, tile)[0]


def deepness_run(
    layer: Path, onnx_path: Path, tile: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``layer`` run the Deepness way: tiles, /255, standardise, onnxruntime, argmax.

    Tiles of ``tile`` pixels (default: the exported tile size) without overlap, over the whole
    tiles that fit in the layer (the rest is -1); each band is read raw in its own data type.

    Returns:
        ``(classes, gap)``: the argmax, and the gap between the two largest probabilities.
    """
    import rasterio

    m = deepness_metadata(onnx_path)
    tile = tile or m["tile"]
    with rasterio.open(layer) as src:
        data = np.stack([src.read(b + 1).astype(np.float32) for b in range(src.count)])
    c, h, w = data.shape
    mean, std = m["mean"].reshape(1, c, 1, 1), m["std"].reshape(1, c, 1, 1)
    out = np.full((h, w), -1, np.int64)
    gap = np.full((h, w), np.inf, np.float32)
    for r in range(0, h - tile + 1, tile):
        for q in range(0, w - tile + 1, tile):
            x = np.float32(data[None, :, r : r + tile, q : q + tile] * (1.0 / 255.0))
            x = (x - mean) / std
            probs = m["session"].run(None, {"input": x.astype(np.float32)})[0]
            out[r : r + tile, q : q + tile] = probs[0].argmax(0)
            top2 = np.sort(probs[0], axis=0)[-2:]
            gap[r : r + tile, q : q + tile] = top2[1] - top2[0]
    return out, gap


def shared_windows(length: int, window: int) -> np.ndarray:
    """Pixels of one axis inside a predict window that is exactly a Deepness tile.

    ``rsprompt predict`` with no overlap puts windows at 0, w, 2w, … and, when the side is not a
    multiple of ``w``, a last window flush with the edge that overlaps the one before it (their
    scores are blended there). Deepness tiles start at multiples of ``w``. Compared: pixels that
    one predict window alone covers and whose window starts at a multiple of ``w``.
    """
    from rsprompt.tiling import axis_offsets

    count = np.zeros(length, np.int64)
    aligned = np.zeros(length, bool)
    for start in axis_offsets(length, window, 0):
        count[start : start + window] += 1
        if start % window == 0:
            aligned[start : start + window] = True
    return (count == 1) & aligned


def compare(
    demo: Path, work: Path, window: int | None = None, resolution: float | None = None
) -> dict:
    """Stack, export, run both ways; return the agreement (see the module doc)."""
    import rasterio

    from rsprompt.export import export_onnx, stack_scene
    from rsprompt.inference import predict_from_checkpoint

    scene, dsm, ckpt = demo / "scene.tif", demo / "dsm.tif", demo / "model.ckpt"
    vrt, onnx_path, predicted = work / "stacked.vrt", work / "model.onnx", work / "map.tif"
    stacked = stack_scene(scene, vrt, aux=dsm, aux_kind="dsm", checkpoint=ckpt, overwrite=True)
    export = export_onnx(ckpt, onnx_path, window=window, resolution=resolution, overwrite=True)
    ours, gap = deepness_run(vrt, onnx_path)
    predict_from_checkpoint(
        scene, ckpt, predicted, aux=dsm, aux_kind="dsm", window=export.window, overlap=0,
        overwrite=True, progress=False,
    )  # fmt: skip
    with rasterio.open(predicted) as src:
        theirs = src.read(1).astype(np.int64)
    rows, cols = (
        shared_windows(theirs.shape[0], export.window),
        shared_windows(theirs.shape[1], export.window),
    )
    covered = rows[:, None] & cols[None, :] & (ours >= 0)
    differ = (ours != theirs) & covered
    return {
        "window": export.window,
        "ndsm": stacked.ndsm,
        "aux_input": export.aux_input,
        "pixels": int(covered.sum()),
        "differ": int(differ.sum()),
        "beyond_ties": int((differ & (gap > TIE)).sum()),
        "agreement": float(np.mean(ours[covered] == theirs[covered])),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module doc)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("demo_dir", type=Path, help="folder written by `rsprompt demo`")
    p.add_argument("--window", type=int, default=None, help="tile side [training patch size]")
    p.add_argument("--work", type=Path, default=None, help="folder for the outputs [temporary]")
    p.add_argument(
        "--resolution", type=float, default=None, help="cm/px, for a demo folder written "
        "before checkpoints recorded it [the checkpoint's]",
    )  # fmt: skip
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        r = compare(args.demo_dir, work, args.window, args.resolution)
    print(
        f"window {r['window']} px, DSM band {'heights above ground' if r['ndsm'] else 'raw'}, "
        f"graph input {r['aux_input']}: {r['pixels']} px compared, {r['differ']} differ "
        f"({r['beyond_ties']} where the two largest probabilities are more than {TIE:g} apart), "
        f"agreement {100 * r['agreement']:.3f} %"
    )
    return 0 if r["beyond_ties"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
