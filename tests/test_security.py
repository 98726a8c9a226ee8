"""Nothing from a config, checkpoint or input file runs code unless the user asks for it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from rsprompt.cli import main

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "mobanet_potsdam.yaml"


def _evil_module(folder: Path, name: str) -> Path:
    marker = folder / f"{name}.MARKER"
    (folder / f"{name}.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\n"
        "import lightning.pytorch as pl\n\n\n"
        "class Evil(pl.LightningDataModule):\n"
        "    pass\n"
    )
    return marker


def _config_naming(folder: Path, class_path: str) -> Path:
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["data"]["class_path"] = class_path
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def on_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("rsprompt_evil")]:
        sys.modules.pop(name)


@pytest.mark.parametrize("where", ["config", "command line"])
def test_train_refuses_a_class_from_an_unlisted_package(on_path, monkeypatch, where):
    monkeypatch.delenv("RSPROMPT_ALLOW_IMPORTS", raising=False)
    marker = _evil_module(on_path, "rsprompt_evil_a")
    if where == "config":
        args = ["--config", str(_config_naming(on_path, "rsprompt_evil_a.Evil"))]
    else:
        args = ["--config", str(CONFIG), "--data", "rsprompt_evil_a.Evil"]
    res = CliRunner().invoke(
        main, ["train", *args, "--trainer.default_root_dir", str(on_path / "run")]
    )
    assert res.exit_code != 0
    assert "Importing 'rsprompt_evil_a.Evil' is not allowed" in res.output
    assert not marker.exists()
    assert not (on_path / "run").exists()


def test_the_user_can_allow_a_package(on_path, monkeypatch):
    """RSPROMPT_ALLOW_IMPORTS is the user's explicit switch: then the class is imported."""
    from rsprompt.engine.cli_train import restrict_imports

    monkeypatch.setenv("RSPROMPT_ALLOW_IMPORTS", "rsprompt_evil_b")
    marker = _evil_module(on_path, "rsprompt_evil_b")
    assert "rsprompt_evil_b" in restrict_imports()
    from jsonargparse._util import import_object

    import_object("rsprompt_evil_b.Evil")
    assert marker.exists()


def test_jsonargparse_guard_covers_rsprompts_own_classes(monkeypatch):
    monkeypatch.delenv("RSPROMPT_ALLOW_IMPORTS", raising=False)
    from jsonargparse._common import check_import_path

    from rsprompt.engine.cli_train import restrict_imports

    restrict_imports()
    check_import_path("rsprompt.data.datamodules.PotsdamDataModule")  # allowed: no error
    check_import_path("lightning.pytorch.callbacks.EarlyStopping")
    with pytest.raises(Exception, match="not allowed"):
        check_import_path("subprocess.Popen")
