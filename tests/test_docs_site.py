"""The documentation site builds with ``mkdocs build --strict`` and has every page it promises.

``python3 tasks.py test`` builds the site once before the tests and names it in
``LAMBDA_ANALYTICS_SITE``; run alone, this file builds it itself. MkDocs comes with the ``dev``
extra, so the matrix (``test`` extra) leaves this file out; under ``CI=true`` a missing MkDocs
fails it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import missing_prerequisite
from docs_snippets import DOCS, ROOT

import lambda_analytics

SITE_VARIABLE = "LAMBDA_ANALYTICS_SITE"  # set by tasks.py
PAGES = (
    "index.html",
    "getting-started/index.html",
    "serverless/index.html",
    "serverless/aws-lambda/index.html",
    "serverless/google-cloud-functions/index.html",
    "serverless/cloudflare-workers/index.html",
    "serverless/web-servers/index.html",
    "batching/index.html",
    "delivery/index.html",
    "oauth/index.html",
    "testing/index.html",
    "cli/index.html",
    "migration/incumbent/index.html",
    "migration/node/index.html",
    "troubleshooting/index.html",
    "performance/index.html",
    "api/index.html",
    "changelog/index.html",
)
# The default client's functions are Analytics methods, documented there.
DEFAULT_CLIENT_FUNCTIONS = frozenset(
    ["identify", "track", "page", "screen", "group", "alias", "flush", "close"]
)


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec("mkdocs") is None:
        missing_prerequisite("MkDocs is missing: the dev extra brings it (pip install -e .[dev])")
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=config.parent, capture_output=True, text=True, check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # Material's notice about its end of life
    )  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    built = os.environ.get(SITE_VARIABLE)
    if built:
        yield Path(built)
        return
    site = tmp_path_factory.mktemp("site")
    done = mkdocs_build(ROOT / "mkdocs.yml", site)
    assert done.returncode == 0, done.stderr[-5000:]
    yield site


def test_the_site_has_every_page(site: Path) -> None:
    missing = [page for page in PAGES if not (site / page).is_file()]
    assert not missing


def test_every_page_of_the_docs_folder_is_built(site: Path) -> None:
    for page in DOCS.rglob("*.md"):
        relative = page.relative_to(DOCS).with_suffix("")
        built = site / (relative.parent if relative.name == "index" else relative) / "index.html"
        assert built.is_file(), page


def test_the_api_reference_covers_every_public_name(site: Path) -> None:
    text = (site / "api" / "index.html").read_text(encoding="utf-8")
    documented = set(re.findall(r'id="lambda_analytics\.(\w+)"', text))
    public = set(lambda_analytics.__all__) - DEFAULT_CLIENT_FUNCTIONS - {"__version__"}
    assert public <= documented, sorted(public - documented)
    methods = set(re.findall(r'id="lambda_analytics\.Analytics\.(\w+)"', text))
    assert DEFAULT_CLIENT_FUNCTIONS | {"on", "off", "register", "deregister"} <= methods


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    """What --strict adds: the same site with one broken link does not build."""
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(DOCS, tmp_path / "docs")
    with (tmp_path / "docs" / "index.md").open("a", encoding="utf-8") as page:
        page.write("\nSee [the missing page](no-such-page.md).\n")
    done = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0
    assert "no-such-page.md" in done.stderr
