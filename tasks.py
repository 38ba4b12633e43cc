#!/usr/bin/env python3
"""The project's two commands, needing nothing but Python 3.10+:

    python3 tasks.py demo    # set up .venv, run the example handler against the local collector
    python3 tasks.py test    # set up .venv, run lint, types and the whole test suite (what CI runs)

The virtual environment is created (and reinstalled when pyproject.toml changes) on demand.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"


def run(*command: str | Path, cwd: Path = ROOT, env: dict[str, str] | None = None) -> None:
    printable = " ".join(str(c) for c in command)
    print(f"\n$ {printable}", flush=True)
    started = time.monotonic()
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, check=False)
    if result.returncode != 0:
        sys.exit(f"FAILED ({result.returncode}): {printable}")
    print(f"  ok in {time.monotonic() - started:.1f}s", flush=True)


def ensure_venv() -> None:
    """Create .venv and install the package with its dev tools when pyproject.toml changed."""
    stamp = VENV / ".installed"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == wanted and PYTHON.exists():
        return
    if not PYTHON.exists():
        print("creating .venv", flush=True)
        venv.create(VENV, with_pip=True)
    run(PYTHON, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    run(PYTHON, "-m", "pip", "install", "--quiet", "-e", ".[dev]")
    stamp.write_text(wanted)


def demo() -> None:
    ensure_venv()
    run(PYTHON, "-m", "lambda_analytics", "demo")


def npm_ci(folder: str) -> None:
    """Install a test's pinned npm packages (Node 20 is on the CI machine)."""
    if shutil.which("npm") is None:
        print(f"npm not found: tests needing {folder} will be skipped", flush=True)
        return
    lock = ROOT / folder / "package-lock.json"
    stamp = ROOT / folder / "node_modules" / ".installed"
    wanted = hashlib.sha256(lock.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == wanted:
        return
    run("npm", "ci", "--no-audit", "--no-fund", "--prefix", folder)
    stamp.write_text(wanted)


def test() -> None:
    ensure_venv()
    started = time.monotonic()
    for folder in ("tests/pyodide",):
        npm_ci(folder)
    run(BIN / "ruff", "check", ".")
    run(BIN / "ruff", "format", "--check", ".")
    run(BIN / "mypy", "--strict", "lambda_analytics")
    run(PYTHON, "-m", "pytest", "-q")
    print(f"\nall checks passed in {time.monotonic() - started:.0f}s")


COMMANDS = {"demo": demo, "test": test}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: python3 {Path(__file__).name} {{{'|'.join(COMMANDS)}}}")
    COMMANDS[sys.argv[1]]()
