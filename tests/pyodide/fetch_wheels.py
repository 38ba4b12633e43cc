"""Download the wheels pinned in requirements.txt into tests/pyodide/.wheels (or DEST).

    python tests/pyodide/fetch_wheels.py [DEST]

Pyodide's npm package has no package wheels and their CDN may be out of reach, so the pure-Python
wheels come from PyPI through pip, checked against the pinned hashes. A no-op when every pinned
wheel is already there; wheels that are no longer pinned are removed, since run_worker.mjs
installs every wheel in the directory.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements.txt"


def pinned() -> dict[str, str]:
    """{normalized name: version} from requirements.txt."""
    pins = {}
    for line in REQUIREMENTS.read_text().splitlines():
        match = re.match(r"\s*([A-Za-z0-9_.-]+)==([^\s;]+)", line)
        if match:
            pins[re.sub(r"[-_.]+", "_", match[1]).lower()] = match[2]
    return pins


def fetch(dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    pins = pinned()
    wanted = {f"{name}-{version}-" for name, version in pins.items()}
    for wheel in dest.glob("*.whl"):
        if not any(wheel.name.lower().startswith(prefix) for prefix in wanted):
            wheel.unlink()
    have = [w for w in dest.glob("*.whl")]
    if len(have) < len(pins):
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
        command += ["--only-binary=:all:", "--require-hashes", "-r", str(REQUIREMENTS)]
        subprocess.run([*command, "-d", str(dest)], check=True)
        have = [w for w in dest.glob("*.whl")]
    return sorted(have)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / ".wheels"
    for path in fetch(target):
        print(path)
