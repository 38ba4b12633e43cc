"""A griffe extension for the API reference: the docstrings' reST bits, shown as Markdown.

The package's docstrings are written for ``help()`` and IDEs, with Sphinx roles
(``:meth:`flush```) and ``::`` literal blocks. mkdocstrings renders Markdown, where those would
show as ``:meth:flush`` and a stray ``::``; this turns them into inline code and a colon.
Loaded by mkdocs.yml (``extensions``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:meth|attr|class|func|data|exc|mod|obj):`~?([^`]+)`")
_LITERAL = re.compile(r"(?<=\S)::$", flags=re.MULTILINE)  # "Example::" ends a paragraph
_ALONE = re.compile(r"^(\s*)::$", flags=re.MULTILINE)  # "::" on a line of its own


class RestToMarkdown(griffe.Extension):
    """Rewrite each docstring once, when its object is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            text = _ROLE.sub(r"`\1`", obj.docstring.value)
            text = _ALONE.sub("", _LITERAL.sub(":", text))
            obj.docstring.value = text
