"""Griffe extension for the docs build: rsprompt's docstrings as mkdocstrings should read them.

:class:`RsPromptDocstrings` is named in ``mkdocs.yml`` (``extensions:`` of the python handler).
Before each docstring is parsed it

- renders the Sphinx cross-reference roles (``:class:`~rsprompt.engine.task.SegmentationTask```)
  as code, as Sphinx would show them (a leading ``~`` keeps only the last component): Markdown
  would show the raw role, and the Returns parser would read ``A :class:`X``` as a type ``A``;
- reads a Google-style ``Example:`` section as ``Examples:``, so its ``>>>`` lines render as code
  (the singular form is an admonition whose text Markdown would reflow, and whose ``x[:1]`` it
  would take for a link);
- ends a reStructuredText literal-block lead-in (``Usage::``) with one colon: the indented block
  after it is a Markdown code block already.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(
    r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const|term|ref):`(~?)([^`]+)`"
)
EXAMPLE = re.compile(r"^([ \t]*)Example:[ \t]*$", flags=re.MULTILINE)
LITERAL = re.compile(r"(\S)::[ \t]*\n([ \t]*\n)", flags=re.MULTILINE)


def _code(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def clean_docstring(text: str) -> str:
    r"""Sphinx roles as code spans, ``Example:`` as ``Examples:``, ``Usage::`` as ``Usage:``.

    Example:
        >>> clean_docstring("A :class:`~a.b.C` or :func:`a.f`.")
        'A `C` or `a.f`.'
        >>> clean_docstring("Usage::\n\n    run it\n")
        'Usage:\n\n    run it\n'
    """
    text = EXAMPLE.sub(r"\1Examples:", ROLE.sub(_code, text))
    return LITERAL.sub(r"\1:\n\2", text)


class RsPromptDocstrings(griffe.Extension):
    """Griffe extension: clean every loaded object's docstring with :func:`clean_docstring`."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite the docstring of ``obj`` before it is parsed."""
        if obj.docstring is not None:
            obj.docstring.value = clean_docstring(obj.docstring.value)
