"""notebooks/quickstart.ipynb runs top to bottom (small setting)."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs(monkeypatch, tmp_path):
    monkeypatch.setenv("RSPROMPT_QUICKSTART_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    try:
        client.execute()
    except Exception as err:  # pragma: no cover - the message says which cell failed
        pytest.fail(f"quickstart notebook failed: {err}")
    outputs = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "frozen" in outputs and "trainable" in outputs
    assert "checkpoint:" in outputs and "pixel accuracy" in outputs
    assert os.environ.get("RSPROMPT_QUICKSTART_SMALL") == "1"
