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
