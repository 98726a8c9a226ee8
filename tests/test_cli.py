import json
import os
import subprocess
import sys

from click.testing import CliRunner

import rsprompt
from rsprompt.cli import COMMANDS, main


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert rsprompt.__version__ in result.output


def test_help_lists_registered_commands():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output


def test_every_registered_command_imports_and_has_help():
    for name in COMMANDS:
        result = CliRunner().invoke(main, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)


def test_unknown_command_fails_cleanly():
    result = CliRunner().invoke(main, ["no-such-command"])
    assert result.exit_code != 0
    assert "No such command" in result.output


def test_console_script_runs():
    out = subprocess.run(
        [sys.executable, "-m", "rsprompt", "--version"], capture_output=True, text=True, check=True
    )
    assert rsprompt.__version__ in out.stdout


def test_importing_the_commands_changes_nothing_in_the_process():
    """Importing the command modules (as `rsprompt --help` and this suite do) leaves the
    process's environment alone: settings for a run are made when the command runs."""
    probe = (
        "import importlib, json, os\n"
        "before = dict(os.environ)\n"
        "from rsprompt.cli import COMMANDS\n"
        "for module, _, _ in COMMANDS.values():\n"
        "    importlib.import_module(module)\n"
        "keys = set(before) | set(os.environ)\n"
        "print(json.dumps(sorted(k for k in keys if before.get(k) != os.environ.get(k))))\n"
    )
    # A minimal environment: whatever an import sets shows, even if this process has it set.
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
