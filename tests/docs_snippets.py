"""The fenced code blocks of the README and of ``docs/``, for the tests that run them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = (ROOT / "README.md", *sorted(DOCS.rglob("*.md")))
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.DOTALL | re.MULTILINE)


@dataclass(frozen=True)
class Snippet:
    """One fenced block: where it is (for the test id and tracebacks) and its text."""

    path: Path
    line: int
    language: str
    code: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    def compiled(self, code: str | None = None) -> object:
        """The block (or an edited copy) compiled with its page and line in tracebacks."""
        source = "\n" * self.line + (self.code if code is None else code)
        return compile(source, str(self.path.relative_to(ROOT)), "exec")


def blocks(*pages: Path, language: str = "python") -> list[Snippet]:
    """The blocks of ``language`` in ``pages`` (all of them by default), in page order."""
    found = []
    for page in pages or PAGES:
        text = page.read_text(encoding="utf-8")
        for match in _FENCE.finditer(text):
            if match.group(1) == language:
                line = text.count("\n", 0, match.start()) + 1
                found.append(Snippet(page, line, language, match.group(2)))
    return found
