"""The README's set-up works from a clean clone (slow: creates a fresh .venv)."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_setup_script_finds_a_working_python():
    """The Python finder in scripts/setup_venv.sh picks a Python >= 3.12 that actually runs."""
    script = ROOT / "scripts" / "setup_venv.sh"
    text = script.read_text()
    assert "--compile-bytecode" in text and "-c constraints.txt" in text
    pins = (ROOT / "constraints.txt").read_text()
    assert "torch==2.14.1" in pins and "torchvision==0.29.1" in pins


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make demo" in readme
    assert "make test" in ci and "set -e" in ci


@pytest.mark.slow
def test_clean_clone_installs_and_runs(tmp_path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout")
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "check_clean_clone.sh"), "venv"],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "rsprompt, version" in out.stdout
