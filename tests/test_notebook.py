"""notebooks/quickstart.ipynb runs top to bottom (small setting) and writes a sound map."""

import re
from pathlib import Path

import nbformat
import numpy as np
import pytest
import rasterio
from nbclient import NotebookClient

from rsprompt.data.labels import ISPRS_CLASSES
from rsprompt.data.synthetic import generate_scene
from rsprompt.engine.checkpoint import load_model_checkpoint

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
#: The small setting's held-out scene, as the notebook makes it (SCENE = 128 when SMALL).
SMALL_SCENE = 128


def _outputs(nb) -> str:
    return "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )


def test_quickstart_notebook_runs(monkeypatch, tmp_path):
    monkeypatch.setenv("RSPROMPT_QUICKSTART_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's tempfile.mkdtemp lands here
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    try:
        client.execute()
    except Exception as err:  # pragma: no cover - the message says which cell failed
        pytest.fail(f"quickstart notebook failed: {err}")
    outputs = _outputs(nb)
    (work,) = tmp_path.glob("rsprompt-quickstart-*")
    # The map: the held-out scene's grid (the small setting), the image's CRS, ISPRS classes.
    with rasterio.open(work / "prediction.tif") as ds, rasterio.open(work / "scene.tif") as img:
        assert ds.shape == (SMALL_SCENE, SMALL_SCENE) == img.shape
        assert (ds.crs, ds.transform) == (img.crs, img.transform)
        pred = ds.read(1)
    assert set(np.unique(pred).tolist()) <= set(range(6))
    # The printed accuracy is the map's, against the scene's labels regenerated here.
    scene = generate_scene("isprs", SMALL_SCENE, 99, bands="rgb", resolution=0.2, scale=0.5)
    accuracy = float((pred == scene.labels).mean())
    printed = re.search(r"pixel accuracy on the held-out scene: ([\d.]+)%", outputs)
    assert printed and float(printed.group(1)) == pytest.approx(100 * accuracy, abs=0.05)
    # The printed parameter counts are those of the saved model, counted here.
    model, meta = load_model_checkpoint(work / "model.ckpt")
    assert meta["method"] == "mobanet" and meta["classes"] == list(ISPRS_CLASSES.names)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert f"frozen {frozen:,}  trainable {trainable:,}" in outputs
    assert "checkpoint:" in outputs and "(the frozen encoder is not in it)" in outputs
