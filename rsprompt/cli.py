"""The ``rsprompt`` command: a thin shell over the library.

Subcommands are imported lazily (only the one that runs), so ``rsprompt --help`` and
``rsprompt --version`` answer without importing torch. Each subcommand lives in
``rsprompt/commands/<name>.py`` as a click command; register it in :data:`COMMANDS`.
"""

from __future__ import annotations

import importlib

import click

from rsprompt import __version__

#: name -> (module path, attribute, one-line help shown by ``rsprompt --help``).
COMMANDS: dict[str, tuple[str, str, str]] = {}


def _register(name: str, module: str, attr: str, short_help: str) -> None:
    COMMANDS[name] = (module, attr, short_help)


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Return the registered command names, sorted."""
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """Import and return the command called ``cmd_name``."""
        if cmd_name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[cmd_name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List commands with their short help without importing them."""
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="rsprompt")
def main() -> None:
    """rsprompt: frozen encoders + trainable prompts for multimodal remote-sensing segmentation.

    Optical imagery is segmented together with a DSM or SAR raster; only small prompt/adapter
    modules and a decoder are trained. Run ``rsprompt COMMAND --help`` for each command.
    """


# Registered commands (keep alphabetical; one line each).
_register(
    "info",
    "rsprompt.commands.info",
    "info",
    "Print a method's frozen/trainable parameter table (no weights needed).",
)
_register(
    "synth",
    "rsprompt.commands.synth",
    "synth",
    "Write synthetic optical + DSM/SAR scenes (or an official dataset layout).",
)
_register(
    "predict",
    "rsprompt.commands.predict",
    "predict",
    "Segment whole scenes into QGIS-ready class maps (COG + style).",
)
_register(
    "train",
    "rsprompt.commands.train",
    "train",
    "Train a method from a YAML config (LightningCLI style; --help for options).",
)
_register(
    "data",
    "rsprompt.commands.data",
    "data",
    "Check dataset folders against the official layouts (rsprompt data check).",
)
_register(
    "demo",
    "rsprompt.commands.demo",
    "demo",
    "Train on synthetic data with a real frozen encoder and write a QGIS-ready map.",
)
_register(
    "evaluate",
    "rsprompt.commands.evaluate",
    "evaluate",
    "Evaluate a model checkpoint with the sliding-window protocol (metrics JSON + confusion PNG).",
)
_register(
    "convert",
    "rsprompt.commands.convert",
    "convert",
    "Convert the authors' released MoBaNet/DPLNet/RPN weights into an rsprompt model.ckpt.",
)
_register(
    "export",
    "rsprompt.commands.export",
    "export",
    "Export a model checkpoint to ONNX for QGIS's Deepness plugin (needs rsprompt[onnx]).",
)
_register(
    "stack",
    "rsprompt.commands.stack",
    "stack",
    "Stack a scene and its DSM/SAR (aligned as predict does) into one VRT layer.",
)
