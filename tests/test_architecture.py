"""The package's architecture, checked on its source: who may import what, what ``import
lambda_analytics`` costs, module size and docstrings, and the public surface.

These read the files with :mod:`ast` (every import counts, including those inside functions
and ``if TYPE_CHECKING:`` blocks), so a rule broken anywhere in a module fails here.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import lambda_analytics

PACKAGE = Path(lambda_analytics.__file__).resolve().parent
ROOT = PACKAGE.parent
MODULES = sorted(PACKAGE.glob("*.py"))

PURE_CORE = (
    "messages.py",
    "batching.py",
    "queue.py",
    "retry.py",
    "delivery.py",
    "scope.py",
    "outcome.py",
    "settings.py",
)
"""No I/O: they may import neither the network nor the OAuth libraries."""
IO_LIBRARIES = frozenset({"urllib3", "jwt", "cryptography", "socket", "http"})
ONLY_IN = {"urllib3": {"transport.py"}, "jwt": {"oauth.py"}, "cryptography": {"oauth.py"}}
"""Third-party libraries and the one module allowed to import each."""
NOT_AT_IMPORT = ("urllib3", "jwt", "cryptography", "inspect", "dataclasses", "uuid", "decimal")
"""Never loaded by ``import lambda_analytics``: cold-start time most programs never use."""
MAX_LINES = 400
LONGER_ALLOWED = {"cli.py", "collector.py"}
"""Tools shipped beside the SDK, not part of the client."""
TESTING_SIDE = ("testing.py", "serverless.py", "_assertions.py")
"""What ``import lambda_analytics.testing`` brings: it uses the client's public surface only."""


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def imported(path: Path) -> Iterator[tuple[int, str]]:
    """(line, top-level module name) of every absolute import in ``path``, wherever it is."""
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0]
        elif (
            isinstance(node, ast.Call)
            and _called_name(node.func) in ("__import__", "import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and not node.args[0].value.startswith(".")
        ):
            yield node.lineno, node.args[0].value.split(".")[0]


def _called_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def module_ids(paths: list[Path]) -> list[str]:
    return [path.name for path in paths]


def test_the_package_has_modules() -> None:
    names = {path.name for path in MODULES}
    assert {"__init__.py", "transport.py", "oauth.py", *PURE_CORE} <= names


# -- who imports what ------------------------------------------------------------------------


@pytest.mark.parametrize("path", MODULES, ids=module_ids(MODULES))
def test_third_party_libraries_are_imported_by_their_one_module(path: Path) -> None:
    wrong = [
        f"{path.name}:{line} imports {name} (only {', '.join(sorted(ONLY_IN[name]))} may)"
        for line, name in imported(path)
        if name in ONLY_IN and path.name not in ONLY_IN[name]
    ]
    assert not wrong, wrong


def test_urllib3_is_imported_by_transport_alone_even_as_text() -> None:
    pattern = re.compile(r"^\s*(import urllib3|from urllib3)\b", re.MULTILINE)
    found = [path.name for path in MODULES if pattern.search(path.read_text(encoding="utf-8"))]
    assert found == ["transport.py"]


@pytest.mark.parametrize("name", PURE_CORE)
def test_the_pure_core_imports_no_io(name: str) -> None:
    path = PACKAGE / name
    wrong = [f"{name}:{line} imports {module}" for line, module in imported(path)
             if module in IO_LIBRARIES]  # fmt: skip
    assert not wrong, wrong


def test_import_loads_no_library_the_first_call_does_not_need() -> None:
    # -S: no site, so no .pth file of the environment loads anything before the package.
    code = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import lambda_analytics\n"
        f"print(json.dumps(sorted(n for n in {list(NOT_AT_IMPORT)!r} if n in sys.modules)))\n"
        "print(lambda_analytics.__file__)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYTHON"))}
    done = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    loaded, where = done.stdout.splitlines()
    assert Path(where).resolve().parent == PACKAGE
    assert json.loads(loaded) == []


# -- size and docstrings ---------------------------------------------------------------------


SIZED = [path for path in MODULES if path.name not in LONGER_ALLOWED]


@pytest.mark.parametrize("path", SIZED, ids=module_ids(SIZED))
def test_modules_stay_small(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.name} has {lines} lines, over {MAX_LINES}: split it"


@pytest.mark.parametrize("path", MODULES, ids=module_ids(MODULES))
def test_every_module_says_its_job_in_its_first_line(path: Path) -> None:
    docstring = ast.get_docstring(parse(path))
    assert docstring, f"{path.name} has no docstring"
    lines = docstring.splitlines()
    summary = lines[0].strip()
    assert summary, f"{path.name}: the docstring's first line is empty"
    assert summary.endswith((".", ":")), f"{path.name}: {summary!r} is not a whole statement"
    assert len(lines) == 1 or not lines[1].strip(), (
        f"{path.name}: the statement of its job runs past the first line"
    )


# -- the public surface ----------------------------------------------------------------------


def _isort_style(name: str) -> tuple[int, str]:
    """ruff's RUF022 order: SCREAMING_CASE, then CamelCase, then everything else."""
    if name.isupper() and len(name) > 1:
        return 0, name
    if name[:1].isupper():
        return 1, name
    return 2, name


def test_all_names_exist_are_unique_and_sorted() -> None:
    names = lambda_analytics.__all__
    assert all(isinstance(name, str) for name in names)
    missing = [name for name in names if not hasattr(lambda_analytics, name)]
    assert not missing, missing
    duplicated = sorted({name for name in names if names.count(name) > 1})
    assert not duplicated, duplicated
    assert list(names) == sorted(names, key=_isort_style)


def private_uses(path: Path) -> Iterator[str]:
    """Where ``path`` reaches into another object's or module's private names."""
    dunder = re.compile(r"__\w+__")
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Attribute):
            private = node.attr.startswith("_") and not dunder.fullmatch(node.attr)
            owner = node.value
            mine = isinstance(owner, ast.Name) and owner.id in ("self", "cls")
            if private and not mine:
                yield f"{path.name}:{node.lineno} {ast.unparse(node)}"
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and node.args[1].value.startswith("_")
            and not dunder.fullmatch(node.args[1].value)
        ):
            yield f"{path.name}:{node.lineno} {ast.unparse(node)}"
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name.startswith("_") and not dunder.fullmatch(alias.name):
                    yield f"{path.name}:{node.lineno} imports {alias.name}"


@pytest.mark.parametrize("name", TESTING_SIDE)
def test_the_testing_side_uses_only_public_attributes(name: str) -> None:
    path = PACKAGE / name
    if not path.exists():
        pytest.skip(f"no {name}")
    found = list(private_uses(path))
    assert not found, found
