"""Process end: nothing queued vanishes without a word when a script returns or gets SIGTERM.

Real child processes (``sys.executable``), a real collector or a server that never answers on
127.0.0.1, and a real SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import WRITE_KEY

from lambda_analytics import Analytics
from lambda_analytics.collector import Collector

ROOT = Path(__file__).resolve().parent.parent


def child(code: str, **kwargs: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,  # type: ignore[call-overload]
    )


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections and reads, never answers; stops by itself."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []

    def serve() -> None:
        listener.settimeout(0.2)
        ends = time.monotonic() + 30
        while time.monotonic() < ends:
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            held.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()
    for conn in held:
        conn.close()


def test_a_script_that_forgets_close_still_delivers_its_queue(collector: Collector) -> None:
    process = child(
        f"""
        from lambda_analytics import Analytics
        analytics = Analytics({WRITE_KEY!r}, host={collector.url!r}, flush_at=10)
        for i in range(5):
            analytics.track(user_id="u", event="Queued", properties={{"i": i}})
        """
    )
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert sorted(m["properties"]["i"] for m in collector.messages) == [0, 1, 2, 3, 4]
    assert "WARNING" not in err


def test_with_the_api_down_the_exit_is_bounded_and_named_in_one_warning(silent_server: str) -> None:
    started = time.monotonic()
    process = child(
        f"""
        import logging
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        from lambda_analytics import Analytics
        analytics = Analytics({WRITE_KEY!r}, host={silent_server!r}, flush_at=10,
                              exit_timeout=1.0)
        for i in range(5):
            analytics.track(user_id="u", event="Queued")
        """
    )
    _, err = process.communicate(timeout=30)
    elapsed = time.monotonic() - started
    assert process.returncode == 0, err
    assert elapsed < 1.0 + 1.0 + 1.5  # exit_timeout + 1 s, + the interpreter's own start
    warnings = [line for line in err.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1, err
    assert "5 messages could not be delivered before interpreter exit" in warnings[0]


def test_sigterm_flushes_then_ends_the_process_as_sigterm_would(collector: Collector) -> None:
    process = child(
        f"""
        import sys, time
        import lambda_analytics
        from lambda_analytics import Analytics
        analytics = Analytics({WRITE_KEY!r}, host={collector.url!r}, flush_at=10)
        lambda_analytics.flush_on_sigterm(timeout=5)
        for i in range(5):
            analytics.track(user_id="u", event="Before SIGTERM", properties={{"i": i}})
        print("ready", flush=True)
        time.sleep(30)
        print("not reached", flush=True)
        """
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGTERM, err
    assert "not reached" not in out
    assert sorted(m["properties"]["i"] for m in collector.messages) == [0, 1, 2, 3, 4]


def test_sigterm_hands_over_to_the_handler_installed_before(collector: Collector) -> None:
    process = child(
        f"""
        import signal, sys, time
        import lambda_analytics
        from lambda_analytics import Analytics
        signal.signal(signal.SIGTERM, lambda n, f: (print("app handler", flush=True), sys.exit(3)))
        analytics = Analytics({WRITE_KEY!r}, host={collector.url!r}, flush_at=10)
        lambda_analytics.flush_on_sigterm()
        analytics.track(user_id="u", event="Handed Over")
        print("ready", flush=True)
        time.sleep(30)
        """
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 3, err
    assert "app handler" in out
    assert [m["event"] for m in collector.messages] == ["Handed Over"]


def test_close_without_a_timeout_is_bounded_by_exit_timeout(silent_server: str) -> None:
    analytics = Analytics(WRITE_KEY, host=silent_server, flush_at=10, exit_timeout=0.5)
    analytics.track(user_id="u", event="Stuck")
    started = time.monotonic()
    result = analytics.close()
    assert time.monotonic() - started < 1.0
    assert result.failed == 1 and result.sent == 0
