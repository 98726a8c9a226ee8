"""The README's set-up works from a clean clone (slow: creates a fresh .venv)."""

import shutil
import subprocess
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    """``name -> version`` of every ``name==version`` line of constraints.txt."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and name.strip() and version.strip(), f"not a name==version pin: {line!r}"
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_constraints_pin_versions_the_project_accepts_and_the_venv_runs():
    """constraints.txt pins exact versions that satisfy pyproject.toml, and they are installed.

    The set-up script installs with them (``-c constraints.txt``), so the test environment runs
    exactly the pinned versions (a stale .venv fails here: ``make venv`` reinstalls it).
    """
    assert "-c constraints.txt" in (ROOT / "scripts" / "setup_venv.sh").read_text()
    pins = _pins()
    assert pins, "constraints.txt pins nothing"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}
    for name, version in pins.items():
        if name in required:
            assert required[name].specifier.contains(version), (name, version)
        assert metadata.version(name).split("+")[0] == version.split("+")[0], name


def _exe(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def _find_python(tmp_path: Path, fake_bin: Path, pyenv_root: Path) -> subprocess.CompletedProcess:
    """Run the set-up script's finder with only ``fake_bin`` and the system folders on PATH."""
    _exe(fake_bin / "pyenv", f'[ "$1" = root ] && echo {pyenv_root}')
    env = {"PATH": f"{fake_bin}:/usr/bin:/bin", "HOME": str(tmp_path)}
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "setup_venv.sh"), "--find-python"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def _fake_python(path: Path, version: str) -> Path:
    """A 'python' that answers the finder's version probe with ``version``."""
    return _exe(path, f'echo "{version}"')


def test_finder_skips_a_broken_shim_and_takes_pyenvs_newest_312(tmp_path):
    fake_bin, root = tmp_path / "bin", tmp_path / "pyenv"
    _exe(fake_bin / "python3.12", "echo 'pyenv: python3.12: command not found' >&2; exit 127")
    _fake_python(root / "versions" / "3.12.1" / "bin" / "python", "3.12")
    _fake_python(root / "versions" / "3.12.10" / "bin" / "python", "3.12")
    _fake_python(root / "versions" / "3.13.0" / "bin" / "python", "3.13")
    res = _find_python(tmp_path, fake_bin, root)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(root / "versions" / "3.12.10" / "bin" / "python")
    assert "no working Python 3.12" not in res.stderr


def test_finder_uses_313_only_without_a_312_and_says_so(tmp_path):
    fake_bin, root = tmp_path / "bin", tmp_path / "pyenv"
    _exe(fake_bin / "python3.12", "exit 127")
    _fake_python(root / "versions" / "3.13.0" / "bin" / "python", "3.13")
    res = _find_python(tmp_path, fake_bin, root)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(root / "versions" / "3.13.0" / "bin" / "python")
    assert "no working Python 3.12 found; trying 3.13" in res.stderr


def test_finder_fails_clearly_without_a_python(tmp_path):
    fake_bin, root = tmp_path / "bin", tmp_path / "pyenv"
    _exe(fake_bin / "python3.12", "exit 127")
    _fake_python(root / "versions" / "3.11.9" / "bin" / "python", "3.11")
    res = _find_python(tmp_path, fake_bin, root)
    assert res.returncode == 1
    assert "rsprompt needs Python >= 3.12" in res.stderr and "RSPROMPT_PYTHON" in res.stderr


#: A `make test` that shows what .ci/run requires of the suite.
SHOW_REQUIRED = (
    "@echo running tests qgis=$${RSPROMPT_REQUIRE_QGIS:-unset}"
    " data=$${RSPROMPT_REQUIRE_SHARED_DATA:-unset} pytest=$${PYTEST_ADDOPTS:-unset}"
)


def _ci_repo(tmp_path: Path, recipe: str = SHOW_REQUIRED) -> Path:
    """A repository holding only .ci/run and a Makefile whose ``test`` target runs ``recipe``."""
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / ".ci" / "run", repo / ".ci" / "run")
    (repo / "Makefile").write_text(f"test:\n\t{recipe}\ndocs:\n\t@echo docs built\n")
    return repo


def _run_ci(repo: Path, **env: str) -> subprocess.CompletedProcess:
    base = {"PATH": "/usr/bin:/bin", "HOME": str(repo), "RSPROMPT_CI_SKIP_QGIS": "1"}
    return subprocess.run(
        ["bash", str(repo / ".ci" / "run")],
        capture_output=True,
        text=True,
        env={**base, **env},
        timeout=60,
    )


@pytest.mark.parametrize("pytest_code", [1, 5])
def test_ci_run_fails_when_the_tests_fail_or_none_ran(tmp_path, pytest_code):
    """.ci/run propagates a failing `make test` (pytest's 5, "no tests", included)."""
    repo = _ci_repo(tmp_path, f"@echo running tests; exit {pytest_code}")
    res = _run_ci(repo)
    assert res.returncode != 0 and "running tests" in res.stdout
    res = _run_ci(_ci_repo(tmp_path))
    assert res.returncode == 0 and "running tests" in res.stdout


def _fake_ci_tools(tmp_path: Path, *, uid: int, apt_ok: bool = True) -> tuple[Path, Path, Path]:
    """Fake ``id``, ``apt-get`` (logs its arguments) and a system Python whose ``import
    qgis.core`` works once apt-get installed python3-qgis."""
    fake_bin, log, installed = tmp_path / "bin", tmp_path / "apt.log", tmp_path / "installed"
    _exe(fake_bin / "id", f'[ "$1" = -u ] && echo {uid}')
    status = 0 if apt_ok else 100
    _exe(
        fake_bin / "apt-get",
        f'echo "$@" >> {log}\n'
        f'case "$*" in *python3-qgis*) [ {status} = 0 ] && touch {installed};; esac\n'
        f"exit {status}",
    )
    python = _exe(tmp_path / "sys" / "python3", f"[ -e {installed} ]")
    return fake_bin, log, python


def test_ci_run_installs_qgis_as_root_before_the_tests(tmp_path):
    fake_bin, log, python = _fake_ci_tools(tmp_path, uid=0)
    repo = _ci_repo(tmp_path)
    res = _run_ci(
        repo,
        PATH=f"{fake_bin}:/usr/bin:/bin",
        RSPROMPT_CI_SKIP_QGIS="0",
        RSPROMPT_QGIS_PYTHON=str(python),
    )
    assert res.returncode == 0, res.stderr
    assert log.read_text().splitlines() == [
        "update",
        "install -y --no-install-recommends qgis python3-qgis",
    ]
    assert res.stdout.index("QGIS: installed") < res.stdout.index("running tests")
    assert "running tests qgis=1 data=1 pytest=-v" in res.stdout  # both run; the log names all
    # Found: nothing installed again.
    log.unlink()
    res = _run_ci(
        repo,
        PATH=f"{fake_bin}:/usr/bin:/bin",
        RSPROMPT_CI_SKIP_QGIS="0",
        RSPROMPT_QGIS_PYTHON=str(python),
    )
    assert res.returncode == 0 and "PyQGIS found" in res.stdout and not log.exists()


def test_ci_run_fails_when_the_qgis_install_fails_as_root(tmp_path):
    fake_bin, _, python = _fake_ci_tools(tmp_path, uid=0, apt_ok=False)
    res = _run_ci(
        _ci_repo(tmp_path),
        PATH=f"{fake_bin}:/usr/bin:/bin",
        RSPROMPT_CI_SKIP_QGIS="0",
        RSPROMPT_QGIS_PYTHON=str(python),
    )
    assert res.returncode != 0 and "running tests" not in res.stdout


def test_ci_run_without_root_says_the_qgis_tests_will_skip_and_runs_them_all(tmp_path):
    fake_bin, log, python = _fake_ci_tools(tmp_path, uid=1000)
    res = _run_ci(
        _ci_repo(tmp_path),
        PATH=f"{fake_bin}:/usr/bin:/bin",
        RSPROMPT_CI_SKIP_QGIS="0",
        RSPROMPT_QGIS_PYTHON=str(python),
    )
    assert res.returncode == 0 and "running tests qgis=unset data=1" in res.stdout
    assert "the QGIS tests will skip" in res.stderr and not log.exists()


def test_ci_runs_the_readme_test_command_and_it_runs_every_test():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make demo" in readme
    assert "make test" in ci and "set -e" in ci
    # `make test` runs plain pytest: nothing is deselected by default (slow tests included)...
    recipe = _make_recipe("test")
    assert recipe.endswith(("-m pytest", "-m pytest --durations=15")), recipe
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert " -m " not in f" {config['addopts']} " and "--doctest-modules" in config["addopts"]
    assert config["testpaths"] == ["tests", "rsprompt"]
    # ...and `make test-fast` is the everyday subset.
    assert '-m "not slow"' in _make_recipe("test-fast")


def _make_recipe(target: str) -> str:
    """The command of a one-line Makefile target."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    return lines[start + 1].strip()


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
