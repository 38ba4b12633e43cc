"""Soak: tens of thousands of events against a server that fails a third of the time.

The accounting (``fault_server.SoakReport.problems``) proves that every message is either
accepted by the server or handed to ``on_error``, never lost, never reported twice, and that
the only server-side duplicates come from requests the server accepted and then stalled past
the client's read timeout (the client cannot know they arrived, so it retries; the copies share
their messageId and content, so the backend deduplicates them).

The first tests pin each injected fault's effect on one request, so the soak's numbers mean
what they claim.  The long run is ``python bench/soak.py --events 1000000``.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fault_server import SOAK_FAULTS, FaultServer, SoakReport, run_soak

from lambda_analytics import (
    Analytics,
    DeliveryError,
    HTTPStatusError,
    RetryPolicy,
    TransportError,
)

FAST = RetryPolicy(backoff_initial=0.001, backoff_max=0.005, max_retries=3)


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer(stall=0.4, max_lifetime=60) as fault:
        yield fault


@pytest.fixture(autouse=True)
def _quiet_warnings() -> Iterator[None]:
    # Thousands of "messages not delivered" WARNING lines would only slow the soak down.
    logger = logging.getLogger("lambda_analytics")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def client(server: FaultServer, **settings: Any) -> Analytics:
    settings.setdefault("timeout", 0.2)
    settings.setdefault("retry", FAST)
    return Analytics("soak-write-key", host=server.url, **settings)


# -- each fault, one request at a time ------------------------------------------------------------


@pytest.mark.parametrize("fault", ["500", "502", "503", "429", "429-date"])
def test_retryable_answers_are_retried_and_delivered_once(server: FaultServer, fault: str) -> None:
    server.script(fault, fault)
    started = time.monotonic()
    result = client(server).track(user_id="u", event="x")
    assert result.delivered, result.error
    assert server.accepted == {result.message_id: 1}
    assert server.outcomes == {fault: 2, "ok": 1}
    assert server.retry_headers == {"0": 1, "1": 1, "2": 1}
    assert time.monotonic() - started < 1.0  # Retry-After "0" and a past HTTP date: no wait


@pytest.mark.parametrize("fault", ["429", "429-date"])
def test_retry_after_is_obeyed_in_seconds_and_as_an_http_date(fault: str) -> None:
    # An HTTP date has whole seconds: "now + 2 s" waits between 1 and 2 s.
    with FaultServer(retry_after="1", retry_after_date=2.0) as server:
        server.script(fault)
        started = time.monotonic()
        result = client(server).track(user_id="u", event="x")
        waited = time.monotonic() - started
    assert result.delivered and server.outcomes == {fault: 1, "ok": 1}
    assert 0.9 <= waited < 2.5


def test_a_slow_answer_within_the_timeout_is_one_delivery(server: FaultServer) -> None:
    server.script("slow")
    result = client(server).track(user_id="u", event="x")
    assert result.delivered and server.accepted == {result.message_id: 1}
    assert server.outcomes == {"slow": 1}


@pytest.mark.parametrize("fault", ["400", "413"])
def test_final_answers_are_reported_once_and_not_retried(server: FaultServer, fault: str) -> None:
    failures: list[tuple[DeliveryError, list[dict[str, Any]]]] = []
    server.script(fault)
    result = client(server, on_error=lambda e, m: failures.append((e, m))).track(
        user_id="u", event="x"
    )
    assert isinstance(result.error, HTTPStatusError) and result.error.status == int(fault)
    assert server.outcomes == {fault: 1} and not server.accepted
    [(error, messages)] = failures
    assert error is result.error and [m["messageId"] for m in messages] == [result.message_id]


@pytest.mark.parametrize("fault", ["reset-before", "reset-after"])
def test_a_reset_connection_is_sent_again(server: FaultServer, fault: str) -> None:
    server.script(fault, fault, fault)
    analytics = client(server)
    result = analytics.track(user_id="u", event="x")
    assert result.delivered, result.error
    assert server.accepted == {result.message_id: 1}  # never accepted while being reset
    # Each reset is on a fresh connection: an ordinary retry, counted and backed off (only a
    # reused keep-alive connection gets an immediate resend, which the delivery loop counts).
    assert server.outcomes == {fault: 3, "ok": 1}
    assert server.retry_headers == {"0": 1, "1": 1, "2": 1, "3": 1}
    assert server.connections == 4


def test_a_stall_is_the_one_legitimate_duplicate(server: FaultServer) -> None:
    server.script("stall")
    result = client(server).track(user_id="u", event="x")
    assert result.delivered
    assert server.accepted == {result.message_id: 2}  # accepted, timed out, sent again
    assert server.stalled == {result.message_id: 1}
    assert server.content_mismatches == []


def test_a_stall_then_permanent_failure_is_both_accepted_and_reported(server: FaultServer) -> None:
    failures: list[str] = []
    server.script("stall", "503", "503", "503")
    result = client(server, on_error=lambda e, m: failures.extend(x["messageId"] for x in m)).track(
        user_id="u", event="x"
    )
    assert isinstance(result.error, HTTPStatusError) and result.error.status == 503
    assert failures == [result.message_id]
    assert server.accepted == {result.message_id: 1} == server.stalled  # the soak allows this


def test_a_stall_beyond_max_retries_reports_a_timeout(server: FaultServer) -> None:
    server.script("stall", "stall", "stall", "stall")
    result = client(server, timeout=0.1).track(user_id="u", event="x")
    assert isinstance(result.error, TransportError) and "timed out" in str(result.error)
    assert server.accepted == {result.message_id: 4} == server.stalled


def test_the_server_stops_by_itself_and_stop_wakes_stalled_handlers() -> None:
    with FaultServer(max_lifetime=0.3) as server:
        port = int(server.url.rsplit(":", 1)[1])
        time.sleep(0.6)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    server = FaultServer(stall=30).start()
    server.script("stall")
    result = client(server, timeout=0.1, retry=RetryPolicy(max_retries=0)).track(
        user_id="u", event="x"
    )
    assert isinstance(result.error, TransportError)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 1.0


def test_schedule_is_reproducible_and_validated() -> None:
    with pytest.raises(ValueError, match="unknown"):
        FaultServer({"418": 0.1})
    with pytest.raises(ValueError, match="sum"):
        FaultServer({"500": 0.7, "503": 0.7})
    draws = []
    for _ in range(2):
        fault = FaultServer(SOAK_FAULTS, seed=7)
        draws.append([fault._next_outcome() for _ in range(2_000)])
    assert draws[0] == draws[1]
    shares = {name: draws[0].count(name) / 2_000 for name in SOAK_FAULTS}
    assert all(abs(shares[name] - p) < 0.02 for name, p in SOAK_FAULTS.items())


# -- the soak ---------------------------------------------------------------------------------


def _show(report: SoakReport, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():  # visible with or without -s, so CI logs keep the numbers
        print()
        print("\n".join(report.lines()))


def _check(report: SoakReport) -> None:
    assert report.problems() == []
    # The faults really happened, so the invariants were tested against them.
    outcomes = report.outcomes
    for fault in ("500", "502", "503", "429", "429-date", "reset-before", "reset-after"):
        assert outcomes[fault] > 0, fault
    assert outcomes["stall"] > 0 and any(n > 1 for n in report.accepted.values())


def test_soak_20k_events_one_request_each(capsys: pytest.CaptureFixture[str]) -> None:
    # flush_at=1: one request per event (plus retries).  Eight clients in eight threads, so
    # the 1 % of requests that stall (0.2 s each) overlap instead of adding up.
    report = run_soak(20_000, flush_at=1, threads=8, seed=20_000)
    _show(report, capsys)
    _check(report)
    assert report.requests > 20_000 * 1.3  # about 30 % of attempts fail
    assert report.reported  # and with max_retries=3, some events fail for good


def test_soak_100k_events_in_batches_of_500(capsys: pytest.CaptureFixture[str]) -> None:
    # ~260 requests: a 1 % fault may not come up by chance, so each rare one is scripted once.
    rare = ("stall", "reset-before", "reset-after", "429-date", "stall")
    report = run_soak(100_000, flush_at=500, threads=2, seed=100_000, script=rare)
    _show(report, capsys)
    _check(report)
    assert report.requests >= 200
