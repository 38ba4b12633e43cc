"""The Google Cloud Functions example, served by the real ``functions-framework`` CLI.

The framework runs gunicorn (a master process and a forked worker) on 127.0.0.1 and calls
``examples/google_cloud_functions/main.py:record_visit``, which sends to a collector on
loopback.  The collector is made slow on purpose: a function that answered before (or while)
flushing would have its HTTP response back before the collector recorded anything.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import IO

import pytest
from conftest import missing_prerequisite

from lambda_analytics.collector import Collector

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "google_cloud_functions"
WRITE_KEY = "gcf-example-key"
SERVICE = "record-visit"
COLLECTOR_DELAY = 0.3  # seconds the collector takes before it records and answers a batch
READY_WITHIN = 10.0


@pytest.fixture(autouse=True)
def framework_installed() -> None:
    if importlib.util.find_spec("functions_framework") is None:
        missing_prerequisite("functions-framework is not installed (pip install -e '.[dev]')")


class SlowCollector(Collector):
    """A collector that takes COLLECTOR_DELAY seconds before recording and answering a POST."""

    def _handle(
        self, method: str, target: str, headers: Message, body: bytes, conn_id: int
    ) -> tuple[int, dict[str, str], bytes]:
        if method == "POST":
            time.sleep(COLLECTOR_DELAY)
        return super()._handle(method, target, headers, body, conn_id)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def serve(collector: Collector, log: IO[str]) -> Iterator[int]:
    """Run ``functions-framework`` until ready; yield its port; stop it and its workers."""
    port = free_port()
    cli = Path(sys.executable).parent / "functions-framework"
    command = [str(cli)] if cli.exists() else [sys.executable, "-m", "functions_framework"]
    command += ["--target", "record_visit", "--source", "main.py"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    prefixes = ("ANALYTICS_", "AWS_", "K_", "FUNCTION_", "CLOUD_RUN_", "GUNICORN_", "WORKERS")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env |= {
        "ANALYTICS_WRITE_KEY": WRITE_KEY,
        "ANALYTICS_HOST": collector.url,
        "K_SERVICE": SERVICE,  # set by Cloud Run, as is CLOUD_RUN_TIMEOUT_SECONDS
        "CLOUD_RUN_TIMEOUT_SECONDS": "10",
        "THREADS": "2",
    }
    process = subprocess.Popen(
        command, cwd=EXAMPLE, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the gunicorn worker goes with it
    )  # fmt: skip
    try:
        deadline = time.monotonic() + READY_WITHIN
        while True:
            assert process.poll() is None, f"functions-framework exited with {process.returncode}"
            try:  # a route the framework answers itself (404) without calling the function
                if request(port, "GET", "/robots.txt")[0] == 404:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"not ready within {READY_WITHIN}s"
            time.sleep(0.05)
        yield port
    finally:
        process.send_signal(signal.SIGINT)  # gunicorn: quick shutdown of master and workers
        try:
            process.wait(timeout=15)  # seconds on a loaded 2-core machine, not a bug
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        stop = time.monotonic() + 30  # a worker finishing its exit on a busy CI machine
        while group_alive(process.pid) and time.monotonic() < stop:
            time.sleep(0.02)  # the worker notices its master is gone
        if group_alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail("functions-framework left a process behind")


def test_events_reach_the_collector_before_the_http_response(tmp_path: Path) -> None:
    log_path = tmp_path / "functions-framework.log"
    with SlowCollector(write_key=WRITE_KEY) as collector, log_path.open("w") as log:
        with serve(collector, log) as port:
            body = json.dumps({"user_id": "u-9", "path": "/pricing"}).encode()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                sent_at = time.time()
                connection.request("POST", "/", body, {"Content-Type": "application/json"})
                response = connection.getresponse()  # status line and headers are in
                answered_at = time.time()
                count_at_response = collector.message_count
                status, payload = response.status, response.read()
            finally:
                connection.close()
        requests = collector.requests
        messages = collector.messages
    output = log_path.read_text()

    assert (status, json.loads(payload)) == (200, {"user": "u-9", "recorded": 2}), output
    # Both events had been accepted when the response arrived, in one (batch) request...
    assert count_at_response == 2, output
    assert [r.status for r in requests] == [200], output
    # ... that the collector recorded, after its delay, before the response was received.
    assert sent_at + COLLECTOR_DELAY <= requests[0].received_at <= answered_at
    assert answered_at - sent_at >= COLLECTOR_DELAY  # the function waited for the collector
    assert [(m["type"], m.get("name"), m.get("event")) for m in messages] == [
        ("page", "/pricing", None),
        ("track", None, "Pricing Viewed"),
    ]
    faas = {"platform": "gcp_cloud_functions", "name": SERVICE, "coldstart": True}
    assert all(m["context"]["faas"] == faas for m in messages), messages[0]["context"]
    assert "not delivered" not in output, output
