"""Generate the CLI reference (docs/reference/cli.md) from the commands' own ``--help``.

Every command registered in :data:`rsprompt.cli.COMMANDS` (and every subcommand of a command
group, e.g. ``rsprompt data check``) is run as ``rsprompt CMD --help`` in a fresh Python process
with a fixed terminal width, and its output is pasted verbatim into the page. Nothing is written
by hand, so the reference cannot drift from the code; a command whose help fails stops the docs
build.

Two ways to use it:

- as a MkDocs hook (``hooks: [scripts/gen_cli_docs.py]`` in ``mkdocs.yml``): the marker
  ``<!-- rsprompt-cli-reference -->`` in ``docs/reference/cli.md`` is replaced at build time;
- as a script: ``python scripts/gen_cli_docs.py [-o FILE]`` prints (or writes) the generated
  Markdown, to read it without building the site.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- rsprompt-cli-reference -->"
#: Terminal width the help is formatted for (click and argparse both read COLUMNS).
WIDTH = "100"
_CACHE: dict[str, str] = {}


def _help(args: list[str]) -> str:
    """The ``--help`` output of ``rsprompt ARGS`` (raises with the output on failure)."""
    env = {**os.environ, "COLUMNS": WIDTH, "NO_COLOR": "1", "TERM": "dumb"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    code = f"from rsprompt.cli import main; main({[*args, '--help']!r}, prog_name='rsprompt')"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"`rsprompt {' '.join(args)} --help` failed ({proc.returncode}):\n"
            f"{proc.stdout}\n{proc.stderr}"
        )
    return proc.stdout.rstrip() + "\n"


def _subcommands(help_text: str) -> list[str]:
    """Names listed in the ``Commands:`` section of a click group's help."""
    match = re.search(r"^Commands:\n((?:  .*\n?)+)", help_text, flags=re.MULTILINE)
    if not match:
        return []
    return [m.group(1) for m in re.finditer(r"^  (\S+)", match.group(1), flags=re.MULTILINE)]


def _commands() -> dict[str, str]:
    """Registered command name -> its one-line help, in :mod:`rsprompt.cli`'s order."""
    sys.path.insert(0, str(ROOT))
    from rsprompt.cli import COMMANDS

    return {name: COMMANDS[name][2] for name in sorted(COMMANDS)}


def _section(name: str, short: str, text: str, level: str = "##") -> str:
    lead = f"{short}\n\n" if short else ""
    return f"{level} `rsprompt {name}`\n\n{lead}```text\n{text}```\n"


def generate() -> str:
    """The Markdown of the whole reference (cached for the build)."""
    if "page" in _CACHE:
        return _CACHE["page"]
    commands = _commands()
    with ThreadPoolExecutor(max_workers=2) as pool:
        helps = dict(zip(commands, pool.map(lambda n: _help([n]), commands), strict=True))
    parts = [
        "## `rsprompt`\n\n```text\n" + _help([]) + "```\n",
    ]
    for name, short in commands.items():
        parts.append(_section(name, short, helps[name]))
        for sub in _subcommands(helps[name]):
            parts.append(_section(f"{name} {sub}", "", _help([name, sub]), "###"))
    _CACHE["page"] = "\n".join(parts)
    return _CACHE["page"]


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs hook: replace the marker of the CLI reference page with the generated help."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, generate())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    args = parser.parse_args()
    text = generate()
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
