"""The write key never leaks: not in logs (DEBUG included), reprs, exceptions or hook payloads.

Every error path is exercised against servers that echo the key back (in the body of a 400, a
401, a 5xx and a 429): final and retried statuses, an unreachable host, a read timeout, an
exceeded deadline, calls after close, middleware drops, validation and configuration errors,
hooks that raise.  Everything the application can see is collected and searched for the key
and for its base64 Basic-auth form.  (OAuth secrets are tested in the OAuth suites.)
"""

from __future__ import annotations

import base64
import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from fault_server import FaultServer

import lambda_analytics
from lambda_analytics import (
    Analytics,
    ClientClosedError,
    ConfigurationError,
    DeadlineExceededError,
    HTTPStatusError,
    InvalidTypeError,
    MessageTooLargeError,
    RequestInfo,
    RetryPolicy,
    TransportError,
    ValidationError,
)
from lambda_analytics.collector import Collector

KEY = "wk_live_9c1f0e7d3b2a4c6815ee"
BASIC = base64.b64encode(f"{KEY}:".encode()).decode()  # what the Authorization header carries
FORMS = {"the write key": KEY, "its Basic form": BASIC}
FAST = RetryPolicy(backoff_initial=0.001, backoff_max=0.002, max_retries=2)


class Seen:
    """Everything the application could print: hook payloads, results, exceptions, reprs."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.exceptions: list[BaseException] = []
        self.requests: list[RequestInfo] = []

    def add(self, *values: Any) -> None:
        for value in values:
            if isinstance(value, BaseException):
                self.exceptions.append(value)
            self.texts.append(repr(value))
            self.texts.append(str(value))

    def on_error(self, error: BaseException, messages: list[dict[str, Any]]) -> None:
        self.add(error, messages)

    def on_request(self, info: RequestInfo) -> None:
        self.requests.append(info)
        self.add(info, info.error, dict(info.headers), dict(info.response_headers))

    def callback(self, error: BaseException | None, message: dict[str, Any]) -> None:
        self.add(error, message)

    def on_call_after_close(self, message: dict[str, Any]) -> None:
        self.add(message)

    def chains(self) -> Iterator[BaseException]:
        """Each exception and its causes and contexts (a traceback prints them all)."""
        pending, done = list(self.exceptions), set()
        while pending:
            exc = pending.pop()
            if id(exc) in done:
                continue
            done.add(id(exc))
            yield exc
            pending += [e for e in (exc.__cause__, exc.__context__) if e is not None]
            pending += [a for a in exc.args if isinstance(a, BaseException)]

    def leaks(self, log_text: str) -> list[str]:
        texts = [*self.texts, log_text]
        for exc in self.chains():
            texts += [str(exc), repr(exc), *map(repr, exc.args)]
        return [
            f"{name} in: ...{text[max(0, at - 100) : at + 40]!r}"
            for text in texts
            for name, secret in FORMS.items()
            if (at := text.find(secret)) >= 0
        ]


@pytest.fixture
def seen() -> Seen:
    return Seen()


@pytest.fixture
def collector() -> Iterator[Collector]:
    with Collector(write_key=KEY) as server:
        yield server


@pytest.fixture(autouse=True)
def _debug_logging(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # root: urllib3's own DEBUG lines too
    caplog.set_level(logging.DEBUG, logger="lambda_analytics")


def make(seen: Seen, host: str, **settings: Any) -> Analytics:
    settings.setdefault("retry", FAST)
    client = Analytics(
        KEY,
        host=host,
        on_error=seen.on_error,
        on_request=seen.on_request,
        **settings,
    )
    seen.add(client)
    return client


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # nothing listens once the probe is closed


def test_no_error_path_shows_the_write_key(
    collector: Collector, seen: Seen, caplog: pytest.LogCaptureFixture
) -> None:
    echo = f'{{"success":false,"error":"invalid write key {KEY}"}}'.encode()
    analytics = make(seen, collector.url)

    def track(**extra: Any) -> None:
        seen.add(analytics.track(user_id="u", event="e", callback=seen.callback, **extra))

    collector.fail_next(400, body=echo)  # final
    track()
    collector.fail_next(401, body=f"bad key {KEY}".encode())  # final, the key echoed
    track()
    collector.fail_next(500, times=2, body=echo)  # retried, then delivered
    track()
    collector.fail_next(503, times=3, body=echo)  # retried until max_retries
    track()
    collector.fail_next(429, headers={"Retry-After": "0"}, body=echo)
    track()
    collector.fail_next(307, headers={"Location": "https://elsewhere.test/v1/batch"})
    track()

    # A deadline that runs out while the server keeps failing.
    batching = make(seen, collector.url, flush_at=10, retry=RetryPolicy(max_retries=1_000))
    collector.fail_next(503, times=1_000, body=echo)
    for _ in range(3):
        seen.add(batching.track(user_id="u", event="e", callback=seen.callback))
    summary = batching.flush(timeout=0.3)
    seen.add(summary, *summary.errors)
    assert summary.errors and isinstance(summary.errors[0], DeadlineExceededError)
    collector.reset()

    # Nothing listening.
    unreachable = make(seen, f"http://127.0.0.1:{closed_port()}")
    seen.add(unreachable.track(user_id="u", event="e"))

    # A read timeout.
    with FaultServer(stall=1.0) as stalling:
        stalling.script("stall", "stall", "stall")
        slow = make(seen, stalling.url, timeout=0.1)
        seen.add(slow.track(user_id="u", event="e"))

    # Hooks that raise are logged with their traceback, never raised.
    def broken(*args: Any) -> None:
        raise RuntimeError("hook bug")

    fragile = Analytics(KEY, host=collector.url, on_error=broken, on_request=broken, retry=FAST)
    collector.fail_next(400, body=echo)
    seen.add(fragile.track(user_id="u", event="e", callback=broken))

    # Middleware that drops, then calls after close(), with and without their hook.
    analytics.add_middleware(lambda message: None)
    track()
    seen.add(analytics.close(timeout=1.0))
    track()
    hooked = make(seen, collector.url, on_call_after_close=seen.on_call_after_close)
    hooked.close()
    seen.add(hooked.track(user_id="u", event="e", callback=seen.callback))
    seen.add(analytics, hooked, analytics.stats)

    # Validation and configuration errors.
    live = make(seen, collector.url)
    bad_calls: list[dict[str, Any]] = [
        {"event": "e"},
        {"user_id": "u", "event": "e", "properties": {"x": float("nan")}},
        {"user_id": "u", "event": "e", "properties": {"x": b"raw"}},
        {"user_id": "u", "event": "e", "properties": {"x": "y" * 40_000}},
        {"user_id": True, "event": "e"},
    ]
    for arguments in bad_calls:
        with pytest.raises((ValidationError, InvalidTypeError, MessageTooLargeError)) as raised:
            live.track(**arguments)
        seen.add(raised.value)
    for settings in ({"flush_at": 0}, {"region": "mars"}, {"timeout": -1}):
        with pytest.raises(ConfigurationError) as config:
            Analytics(KEY, **settings)
        seen.add(config.value)

    kinds = {type(e) for e in seen.exceptions}
    assert {HTTPStatusError, TransportError, DeadlineExceededError, ClientClosedError} <= kinds
    assert any(r.status == 401 for r in seen.requests)
    assert any("timed out" in str(r.error) for r in seen.requests)
    assert "hook bug" in caplog.text and "POST" in caplog.text  # DEBUG and tracebacks captured
    assert seen.leaks(caplog.text) == []


def test_the_default_client_from_the_environment_does_not_echo_the_key(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(lambda_analytics.default, "_client", None)
    monkeypatch.setenv("ANALYTICS_WRITE_KEY", KEY)
    monkeypatch.setenv("ANALYTICS_HOST", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("ANALYTICS_MAX_RETRIES", "0")
    seen = Seen()
    seen.add(lambda_analytics.track(user_id="u", event="e"), lambda_analytics.get_client())
    lambda_analytics.close()
    monkeypatch.setattr(lambda_analytics.default, "_client", None)
    for name, value in (("ANALYTICS_FLUSH_AT", "many"), ("ANALYTICS_TIMEOUT", KEY)):
        monkeypatch.setenv(name, value)
        with pytest.raises(ConfigurationError) as raised:
            lambda_analytics.configure()
        monkeypatch.delenv(name)
        if name == "ANALYTICS_TIMEOUT":  # a value that was never meant to be a secret: fine
            continue
        seen.add(raised.value)
    assert seen.leaks(caplog.text) == []


# -- servers that echo the credentials in other shapes ------------------------------------------


def test_a_401_echoing_the_authorization_header_does_not_leak_it(
    collector: Collector, seen: Seen, caplog: pytest.LogCaptureFixture
) -> None:
    # Gateways and debugging proxies answer 401 with the header they received; the Basic
    # value is the write key in base64, as good as the key itself.
    collector.fail_next(401, body=f"rejected Authorization: Basic {BASIC}".encode())
    result = make(seen, collector.url).track(user_id="u", event="e", callback=seen.callback)
    seen.add(result)
    assert isinstance(result.error, HTTPStatusError) and result.error.status == 401
    assert seen.leaks(caplog.text) == []


def test_a_key_cut_by_the_300_byte_reason_limit_does_not_leak_its_prefix(
    collector: Collector, seen: Seen, caplog: pytest.LogCaptureFixture
) -> None:
    # The reason keeps the first 300 bytes of the body; redacting after the cut misses a key
    # that straddles byte 300, and its first 25 characters go out.
    body = b"x" * (300 - len(KEY) + 3) + KEY.encode()
    collector.fail_next(400, body=body)
    result = make(seen, collector.url).track(user_id="u", event="e")
    seen.add(result)
    prefix = KEY[:-3]
    shown = [t for t in [*seen.texts, caplog.text] if prefix in t]
    assert shown == [], f"{len(prefix)} of {len(KEY)} key characters shown: {shown[0][-80:]!r}"


def test_response_headers_echoing_the_key_are_redacted_in_on_request(
    collector: Collector, seen: Seen, caplog: pytest.LogCaptureFixture
) -> None:
    # The SDK redacts a key echoed in a response body (the error's reason) and in a redirect's
    # Location (the reason again), but on_request gets every response header as it came.
    collector.fail_next(
        401,
        headers={"X-Echo-Authorization": f"Basic {BASIC}", "X-Write-Key": KEY},
        body=b'{"success":false}',
    )
    collector.fail_next(307, headers={"Location": f"https://x.test/v1/batch?writeKey={KEY}"})
    analytics = make(seen, collector.url)
    for _ in range(2):
        result = analytics.track(user_id="u", event="e")
        assert KEY not in str(result.error)
    assert [info.status for info in seen.requests] == [401, 307]
    assert seen.leaks(caplog.text) == []
