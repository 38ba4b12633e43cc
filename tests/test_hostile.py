"""Hostile servers and transports: every call returns in time, raises nothing and loses nothing.

Each test drives the public API against ``tests/hostile_server.py`` (or a custom transport)
and checks three things: the call returned within its bound (run in a watchdog thread, so a
hung call fails the test instead of hanging the suite), nothing was raised, and every
messageId was either accepted by the server or reported (``on_error``, ``failed_messages``, the
message callback), with no message claimed delivered that the server did not accept.
"""

from __future__ import annotations

import datetime as dt
import email.message
import itertools
import json
import subprocess
import sys
import threading
import time
import urllib.error
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hostile_server import HostileServer

import lambda_analytics
from lambda_analytics import (
    Analytics,
    DeliveryError,
    HTTPStatusError,
    Response,
    RetryPolicy,
)

TESTS_DIR = Path(__file__).resolve().parent
# Retries that fit several times into a one-second flush, so the hostile answer is met again.
FAST = RetryPolicy(backoff_initial=0.02, backoff_max=0.1, max_retries=3)
GRACE = 0.6
"""How long the watchdog waits past a call's bound before failing the test as hung."""
HOSTILE_MODES = [
    "trickle-body",
    "trickle-headers",
    "continue-stream",
    "garbage-status",
    "many-headers",
    "retry-after-superscript",
    "reset-fresh",
    "never",
]
"""Every hostile mode but ``huge-error``, which runs in a subprocess to measure its memory."""


# -- helpers ----------------------------------------------------------------------------------


def bounded(call: Callable[[], Any], limit: float, what: str) -> Any:
    """Run ``call()`` in a watchdog thread; fail unless it returns, raising nothing, within
    ``limit`` seconds.  A call still running ``GRACE`` s later is abandoned (the fixtures stop
    its server, which unblocks it)."""
    box: dict[str, Any] = {}

    def run() -> None:
        started = time.monotonic()
        try:
            box["value"] = call()
        except BaseException as exc:
            box["error"] = exc
        box["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=run, name=f"bounded {what}", daemon=True)
    thread.start()
    thread.join(limit + GRACE)
    if thread.is_alive():
        pytest.fail(
            f"{what} still running {limit + GRACE:.1f} s after it started (bound {limit} s)"
        )
    if "error" in box:
        error = box["error"]
        raise AssertionError(
            f"{what} raised {type(error).__name__}: {error} (after {box['elapsed']:.2f} s)"
        ) from error
    assert box["elapsed"] < limit, f"{what} took {box['elapsed']:.2f} s, over its {limit} s bound"
    return box["value"]


class Ledger:
    """What the client reported, through ``on_error`` and the message callbacks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.errors: list[tuple[DeliveryError, list[str]]] = []
        self.callbacks: dict[str, list[DeliveryError | None]] = {}

    def on_error(self, error: DeliveryError, messages: list[dict[str, Any]]) -> None:
        ids = [message["messageId"] for message in messages]
        with self._lock:
            self.errors.append((error, ids))

    def callback(self, error: DeliveryError | None, message: dict[str, Any]) -> None:
        with self._lock:
            self.callbacks.setdefault(message["messageId"], []).append(error)

    def on_error_ids(self) -> list[str]:
        with self._lock:
            return [mid for _, ids in self.errors for mid in ids]

    def problems(
        self,
        ids: list[str],
        accepted: set[str],
        results: tuple[Any, ...] = (),
        *,
        callbacks: bool = True,
    ) -> list[str]:
        """Every accounting rule the client broke, in words (empty: all accounted for).

        ``results`` are the ``FlushResult`` and ``CallResult`` values the calls returned.
        """
        failed_ids = {
            message["messageId"]
            for result in results
            if hasattr(result, "failed_messages")
            for message in result.failed_messages
        }
        delivered_ids = {r.message_id for r in results if getattr(r, "delivered", False)}
        errored_ids = {r.message_id for r in results if getattr(r, "error", None) is not None}
        with self._lock:
            on_error = [mid for _, ids_ in self.errors for mid in ids_]
            calls = {mid: list(outcomes) for mid, outcomes in self.callbacks.items()}
        called_error = {
            mid for mid, outcomes in calls.items() if any(o is not None for o in outcomes)
        }
        called_ok = {mid for mid, outcomes in calls.items() if any(o is None for o in outcomes)}
        reported = set(on_error) | failed_ids | called_error | errored_ids
        found = []
        if len(set(ids)) != len(ids):
            found.append("the client gave two calls the same messageId")
        lost = [mid for mid in ids if mid not in accepted and mid not in reported]
        if lost:
            found.append(f"{len(lost)} of {len(ids)} messages neither accepted nor reported")
        false_success = (called_ok | delivered_ids) - accepted
        if false_success:
            found.append(f"{len(false_success)} messages claimed delivered, not accepted")
        twice = {mid for mid in on_error if on_error.count(mid) > 1}
        if twice:
            found.append(f"{len(twice)} messages reported to on_error more than once")
        if callbacks:
            counts = {mid: len(calls.get(mid, [])) for mid in ids}
            wrong = {mid: n for mid, n in counts.items() if n != 1}
            if wrong:
                found.append(f"callback not called exactly once: {sorted(wrong.values())}")
        return found


class Servers:
    """``servers(mode, script=...)`` starts a HostileServer; :meth:`stop_all` stops them."""

    def __init__(self) -> None:
        self.started: list[HostileServer] = []

    def __call__(self, mode: str = "ok", *, script: tuple[str, ...] = ()) -> HostileServer:
        server = HostileServer(mode, script=script, max_lifetime=60.0).start()
        self.started.append(server)
        return server

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()


@pytest.fixture
def servers() -> Iterator[Servers]:
    factory = Servers()
    yield factory
    factory.stop_all()


@pytest.fixture
def clients(servers: Servers) -> Iterator[Callable[..., Analytics]]:
    """``clients(**settings)`` builds an Analytics (flush_at=10, timeout=10, FAST retries)."""
    made: list[Analytics] = []

    def make(**settings: Any) -> Analytics:
        settings.setdefault("flush_at", 10)
        settings.setdefault("timeout", 10.0)
        settings.setdefault("connect_timeout", 3.0)
        settings.setdefault("retry", FAST)
        client = Analytics("wk", **settings)
        made.append(client)
        return client

    yield make
    # A call abandoned by the watchdog may still be using its client: stopping the servers
    # first unblocks it; each close then runs in a thread that is not waited for long.
    servers.stop_all()
    for client in made:
        closer = threading.Thread(target=client.close, kwargs={"timeout": 0.2}, daemon=True)
        closer.start()
        closer.join(2.0)


def queue_three(client: Analytics, ledger: Ledger) -> list[str]:
    return [
        client.track(user_id="u", event=f"E{n}", callback=ledger.callback).message_id
        for n in range(3)
    ]


# -- every hostile mode: flush(timeout=1.0) and a flush_at=1 call under a deadline --------------


@pytest.mark.parametrize("mode", HOSTILE_MODES)
def test_flush_returns_in_time_and_accounts_for_everything(
    mode: str, servers: Servers, clients: Callable[..., Analytics]
) -> None:
    server = servers(mode)
    ledger = Ledger()
    client = clients(host=server.url, flush_at=10, on_error=ledger.on_error)
    ids = queue_three(client, ledger)
    assert server.request_count == 0, "flush_at=10 sent before the flush"

    result = bounded(lambda: client.flush(timeout=1.0), 1.3, f"flush(timeout=1.0) against {mode}")

    assert server.request_count >= 1
    assert ledger.problems(ids, set(server.accepted_ids), (result,)) == []
    assert result.sent + result.failed + result.spooled == len(ids)
    assert len(result.failed_messages) == result.failed
    stats = client.stats
    assert stats.queued == 0
    assert stats.sent + stats.failed == len(ids)


@pytest.mark.parametrize("mode", HOSTILE_MODES)
def test_call_under_deadline_returns_in_time_and_is_accounted(
    mode: str, servers: Servers, clients: Callable[..., Analytics]
) -> None:
    server = servers(mode)
    ledger = Ledger()
    client = clients(host=server.url, flush_at=1, on_error=ledger.on_error)

    def call() -> Any:
        with client.deadline(1.0):
            return client.track(user_id="u", event="E", callback=ledger.callback)

    result = bounded(call, 1.3, f"track() under deadline(1.0) against {mode}")

    assert not result.queued
    assert result.delivered or result.error is not None
    assert ledger.problems([result.message_id], set(server.accepted_ids), (result,)) == []


@pytest.mark.parametrize("mode", ["garbage-status", "many-headers"])
def test_pipelined_batches_return_in_time_and_account_for_everything(
    mode: str, servers: Servers, clients: Callable[..., Analytics]
) -> None:
    """flush_at=3 and 7 calls: a full batch goes out and its answer is read by a later call."""
    server = servers(mode)
    ledger = Ledger()
    client = clients(host=server.url, flush_at=3, on_error=ledger.on_error)
    returned: list[Any] = []

    def seven() -> None:
        for n in range(7):
            returned.append(client.track(user_id="u", event=f"E{n}", callback=ledger.callback))

    # Full batches are sent by the calls, with retries but no deadline: a generous bound.
    bounded(seven, 5.0, f"7 track() calls (flush_at=3) against {mode}")
    result = bounded(lambda: client.flush(timeout=1.0), 1.3, f"flush(timeout=1.0) against {mode}")

    ids = [r.message_id for r in returned]
    assert server.request_count >= 2
    assert ledger.problems(ids, set(server.accepted_ids), (result, *returned)) == []
    assert client.stats.queued == 0
    assert client.stats.sent + client.stats.failed == len(ids)


# -- huge-error: in a subprocess, for a clean memory baseline --------------------------------

HUGE_ERROR_SCRIPT = r"""
import json, resource, sys, threading, time, traceback
sys.path.insert(0, sys.argv[1])
from hostile_server import HostileServer
from lambda_analytics import Analytics, RetryPolicy

path = sys.argv[2]
lock = threading.Lock()
on_error, callbacks = [], {}

def hook(error, messages):
    with lock:
        on_error.extend(m["messageId"] for m in messages)

def callback(error, message):
    with lock:
        callbacks.setdefault(message["messageId"], []).append(None if error is None else str(error))

out = {}
with HostileServer("huge-error", script=["ok"]) as server:
    client = Analytics(
        "wk", host=server.url, flush_at=1 if path == "track" else 10, timeout=10.0,
        connect_timeout=3.0, on_error=hook,
        retry=RetryPolicy(backoff_initial=0.02, backoff_max=0.1, max_retries=3),
    )
    client.track(user_id="u", event="warm-up")  # answered ok: imports and pools are warm
    client.flush(timeout=5.0)
    ids = []
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    try:
        if path == "track":
            with client.deadline(1.0):
                r = client.track(user_id="u", event="E", callback=callback)
            ids.append(r.message_id)
            out["delivered"] = r.delivered
        else:
            ids = [client.track(user_id="u", event="E", callback=callback).message_id
                   for _ in range(3)]
            result = client.flush(timeout=1.0)
            out["failed_ids"] = [m["messageId"] for m in result.failed_messages]
    except BaseException as exc:
        out["exception"] = "".join(traceback.format_exception(exc))
    out["elapsed"] = time.monotonic() - started
    out["growth_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    out["ids"] = ids
    out["accepted"] = server.accepted_ids
    out["requests"] = server.request_count
with lock:
    out["on_error"], out["callbacks"] = list(on_error), dict(callbacks)
print(json.dumps(out))
"""


@pytest.mark.parametrize("path", ["flush", "track"])
def test_huge_error_body_is_not_read_into_memory(path: str) -> None:
    """A 400 announcing a 200 MB body, streamed fast: bounded time and < 20 MiB more RSS."""
    run = subprocess.run(
        [sys.executable, "-c", HUGE_ERROR_SCRIPT, str(TESTS_DIR), path],
        capture_output=True,
        text=True,
        timeout=40,
        cwd=TESTS_DIR,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert "exception" not in out, out["exception"]
    assert out["elapsed"] < 1.3, f"{path} took {out['elapsed']:.2f} s"
    growth_mib = out["growth_kib"] / 1024  # Linux: ru_maxrss is in KiB
    assert growth_mib < 20, f"peak RSS grew {growth_mib:.0f} MiB reading a 400's body"
    assert out["requests"] >= 2  # the warm-up, then at least one huge error
    ids, accepted = out["ids"], set(out["accepted"])
    reported = set(out["on_error"]) | set(out.get("failed_ids", ()))
    reported |= {mid for mid, errors in out["callbacks"].items() if any(errors)}
    assert ids and all(mid in reported or mid in accepted for mid in ids), out
    assert all(len(out["callbacks"].get(mid, [])) == 1 for mid in ids), out["callbacks"]
    assert not out.get("delivered") or set(ids) <= accepted, "a 400 claimed as delivered"


# -- Retry-After: ² ---------------------------------------------------------------------------


def test_retry_after_superscript_is_ignored(
    servers: Servers, clients: Callable[..., Analytics]
) -> None:
    """``Retry-After: ²`` (a non-ASCII digit) is no number: normal backoff, a 503 reported."""
    server = servers("retry-after-superscript")
    ledger = Ledger()
    policy = RetryPolicy(backoff_initial=0.05, backoff_max=0.1, max_retries=2)
    client = clients(host=server.url, flush_at=10, retry=policy, on_error=ledger.on_error)
    ids = queue_three(client, ledger)

    result = bounded(lambda: client.flush(timeout=1.0), 1.3, "flush against Retry-After: ²")

    assert ledger.problems(ids, set(), (result,)) == []
    assert result.failed == 3
    for error in (*result.errors, *(e for e, _ in ledger.errors)):
        assert isinstance(error, HTTPStatusError), f"{type(error).__name__}: {error}"
        assert error.status == 503
    requests = server.requests
    assert [r.retry_count or "0" for r in requests] == ["0", "1", "2"]
    gaps = [b.arrival_monotonic - a.arrival_monotonic for a, b in itertools.pairwise(requests)]
    assert all(gap < 0.5 for gap in gaps), f"backoff waited {gaps}: the header was read as a delay"


class ScriptedTransport:
    """A custom transport: ``answer()`` is called for every send (it may raise)."""

    def __init__(self, answer: Callable[[], Response]) -> None:
        self.answer = answer
        self.sends = 0
        self.timeouts: list[float | None] = []

    def send(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float | None
    ) -> Response:
        self.sends += 1
        self.timeouts.append(timeout)
        return self.answer()

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_retry_after_superscript_from_a_transport_is_ignored(
    clients: Callable[..., Analytics],
) -> None:
    """The same header as a transport decoding UTF-8 hands it over: ``"²"``, which
    ``str.isdigit()`` accepts and ``float()`` refuses."""
    transport = ScriptedTransport(lambda: Response(503, {"retry-after": "\u00b2"}, b"{}"))
    ledger = Ledger()
    policy = RetryPolicy(backoff_initial=0.05, backoff_max=0.1, max_retries=2)
    client = clients(
        host="http://127.0.0.1:9", retry=policy, transport=transport, on_error=ledger.on_error
    )
    ids = queue_three(client, ledger)

    result = bounded(lambda: client.flush(timeout=1.0), 1.3, "flush with Retry-After '²'")

    assert ledger.problems(ids, set(), (result,)) == []
    assert transport.sends == 3
    assert all(isinstance(e, HTTPStatusError) and e.status == 503 for e in result.errors)


# -- a custom transport that raises -----------------------------------------------------------


def _http_error() -> Exception:
    url = "http://127.0.0.1:9/v1/batch"
    return urllib.error.HTTPError(url, 500, "boom", email.message.Message(), None)


RAISED: dict[str, Callable[[], Exception]] = {
    "ConnectionError": lambda: ConnectionError("boom"),
    "OSError": lambda: OSError("boom"),
    "ValueError": lambda: ValueError("boom"),
    "RuntimeError": lambda: RuntimeError("boom"),
    "HTTPError": _http_error,
}


@pytest.mark.parametrize("name", RAISED)
@pytest.mark.parametrize("path", ["flush", "track"])
def test_transport_exception_is_reported_not_raised(
    name: str, path: str, clients: Callable[..., Analytics]
) -> None:
    make = RAISED[name]

    def answer() -> Response:
        raise make()

    transport = ScriptedTransport(answer)
    ledger = Ledger()
    client = clients(
        host="http://127.0.0.1:9",
        flush_at=1 if path == "track" else 10,
        transport=transport,
        on_error=ledger.on_error,
    )
    if path == "track":
        result = bounded(
            lambda: client.track(user_id="u", event="E", callback=ledger.callback),
            1.3,
            f"track() with a transport raising {name}",
        )
        ids, results = [result.message_id], (result,)
        assert result.error is not None and not result.delivered
        assert name in str(result.error) and "boom" in str(result.error), str(result.error)
    else:
        ids = bounded(lambda: queue_three(client, ledger), 1.3, "three queued track() calls")
        flushed = bounded(
            lambda: client.flush(timeout=1.0), 1.3, f"flush, transport raising {name}"
        )
        results = (flushed,)
        assert flushed.failed == 3
    assert transport.sends >= 1
    assert ledger.problems(ids, set(), results) == []
    assert sorted(ledger.on_error_ids()) == sorted(ids), "every message goes to on_error"
    for error, _ in ledger.errors:
        assert isinstance(error, DeliveryError)
        assert name in str(error) and "boom" in str(error), f"{type(error).__name__}: {error}"


# -- deadlines, concurrency, limits -----------------------------------------------------------


def test_deadline_bounds_a_call_while_another_thread_waits_on_a_stalled_request(
    servers: Servers, clients: Callable[..., Analytics]
) -> None:
    """Thread A's request stalls 5 s; thread B, under deadline(0.5), must not wait behind it
    (its request can go on a second pooled connection)."""
    server = servers("ok", script=("stall:5",))
    ledger = Ledger()
    client = clients(host=server.url, flush_at=1, timeout=10.0, on_error=ledger.on_error)
    a_result: list[Any] = []
    a = threading.Thread(
        target=lambda: a_result.append(
            client.track(user_id="a", event="A", callback=ledger.callback)
        ),
        daemon=True,
    )
    a.start()
    assert server.wait_for_requests(1, 3.0), "thread A's request never reached the server"
    time.sleep(0.2)

    def b_call() -> Any:
        with client.deadline(0.5):
            return client.track(user_id="b", event="B", callback=ledger.callback)

    b_result = bounded(b_call, 0.7, "thread B's track() under deadline(0.5)")
    # Accounted for by the time it returned: delivered, or reported through its callback.
    assert b_result.delivered or b_result.error is not None
    assert ledger.problems([b_result.message_id], set(server.accepted_ids), (b_result,)) == []

    a.join(8.0)
    assert not a.is_alive(), "thread A never returned"
    assert a_result and a_result[0].delivered, a_result
    ids = [a_result[0].message_id, b_result.message_id]
    assert ledger.problems(ids, set(server.accepted_ids), (a_result[0], b_result)) == []


def test_flush_with_zero_timeout_sends_nothing_and_reports_everything(
    servers: Servers, clients: Callable[..., Analytics]
) -> None:
    server = servers("ok")
    ledger = Ledger()
    client = clients(host=server.url, flush_at=10, on_error=ledger.on_error)
    ids = queue_three(client, ledger)

    result = bounded(lambda: client.flush(timeout=0), 0.3, "flush(timeout=0)")

    assert server.request_count == 0
    assert result.sent == 0 and result.failed == 3
    assert sorted(m["messageId"] for m in result.failed_messages) == sorted(ids)
    assert ledger.problems(ids, set(), (result,)) == []
    assert client.stats.queued == 0


def test_deadline_bounds_a_call_to_a_server_that_never_answers(
    servers: Servers, clients: Callable[..., Analytics]
) -> None:
    server = servers("never")
    ledger = Ledger()
    client = clients(host=server.url, flush_at=1, timeout=10.0, on_error=ledger.on_error)

    def call() -> Any:
        with client.deadline(0.5):
            return client.track(user_id="u", event="E", callback=ledger.callback)

    result = bounded(call, 0.7, "track() under deadline(0.5), server never answers")

    assert server.request_count >= 1
    assert result.error is not None and not result.delivered
    assert ledger.problems([result.message_id], set(), (result,)) == []
    assert ledger.on_error_ids() == [result.message_id]


def _wire_size(message: dict[str, Any]) -> int:
    return len(json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode())


def test_message_of_32000_bytes_is_sent_and_32001_refused(
    servers: Servers, clients: Callable[..., Analytics]
) -> None:
    server = servers("ok")
    ledger = Ledger()
    client = clients(host=server.url, flush_at=1, on_error=ledger.on_error)
    # A caller's timestamp: every message below has the same length but for the padding.
    when = dt.datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=dt.timezone.utc)

    def track(padding: int) -> Any:
        return client.track(
            user_id="u", event="Sized", properties={"pad": "x" * padding}, timestamp=when
        )

    probe = track(100)
    assert probe.delivered, probe
    base = _wire_size(server.requests[-1].messages[0])
    exact = 100 + 32_000 - base

    fits = track(exact)
    assert fits.delivered, fits
    received = server.requests[-1].messages[0]
    assert received["messageId"] == fits.message_id
    assert _wire_size(received) == 32_000

    count = server.request_count
    with pytest.raises(lambda_analytics.MessageTooLargeError) as refused:
        track(exact + 1)
    assert isinstance(refused.value, ValueError)
    assert refused.value.size == 32_001
    assert server.request_count == count, "an oversized message reached the server"
    assert ledger.errors == []


def _unix(sent_at: str) -> float:
    return dt.datetime.fromisoformat(sent_at.replace("Z", "+00:00")).timestamp()


def test_sent_at_is_the_clock_of_every_attempt(
    servers: Servers, clients: Callable[..., Analytics]
) -> None:
    server = servers("ok", script=("503", "503"))
    ledger = Ledger()
    policy = RetryPolicy(backoff_initial=0.3, backoff_max=0.5, max_retries=3)
    client = clients(host=server.url, flush_at=1, retry=policy, on_error=ledger.on_error)

    result = bounded(
        lambda: client.track(user_id="u", event="E", callback=ledger.callback),
        3.0,
        "track() through two 503s",
    )

    assert result.delivered, result
    requests = server.requests
    assert [r.mode for r in requests] == ["503", "503", "ok"]
    assert all(r.message_ids == (result.message_id,) for r in requests)
    assert [r.retry_count or "0" for r in requests] == ["0", "1", "2"]
    previous_arrival = None
    for r in requests:
        assert r.sent_at is not None and r.sent_at.endswith("Z"), r.sent_at
        sent = _unix(r.sent_at)
        assert abs(sent - r.arrival) < 5.0, (r.sent_at, r.arrival)
        if previous_arrival is not None:  # recomputed for this attempt, not the first one's
            assert sent >= previous_arrival - 0.002, (r.sent_at, previous_arrival)
        previous_arrival = r.arrival
    assert ledger.problems([result.message_id], set(server.accepted_ids), (result,)) == []


def test_reset_on_a_fresh_connection_is_a_counted_retry(
    servers: Servers, clients: Callable[..., Analytics]
) -> None:
    """A connection reset on a *fresh* connection is the server's answer, not a stale pooled
    connection: resending at once with the same ``X-Retry-Count`` is a hidden, uncounted retry."""
    server = servers("reset-fresh")
    ledger = Ledger()
    policy = RetryPolicy(backoff_initial=0.02, backoff_max=0.05, max_retries=2)
    client = clients(host=server.url, flush_at=10, retry=policy, on_error=ledger.on_error)
    ids = queue_three(client, ledger)

    result = bounded(lambda: client.flush(timeout=1.0), 1.3, "flush against reset-fresh")

    assert ledger.problems(ids, set(), (result,)) == []
    counts = [r.retry_count or "0" for r in server.requests]
    assert counts == ["0", "1", "2"], f"X-Retry-Count of the requests the server saw: {counts}"
