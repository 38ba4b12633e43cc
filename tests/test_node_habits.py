"""The Node SDK's habits, mapped (docs/migration/node.md): one test per row.

Against the real collector on 127.0.0.1.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from conftest import WRITE_KEY

from lambda_analytics import (
    Analytics,
    ConfigurationError,
    DeliveryError,
    FlushResult,
    RequestInfo,
    RetryPolicy,
    ValidationError,
    with_analytics,
)
from lambda_analytics.collector import Collector

MakeClient = Callable[..., Analytics]


# -- settings: seconds, not milliseconds ----------------------------------------------------------


@pytest.mark.parametrize("name", ["timeout", "connect_timeout", "flush_interval", "exit_timeout"])
def test_a_duration_in_milliseconds_is_refused_saying_so(name: str) -> None:
    with pytest.raises(ConfigurationError, match="seconds, not milliseconds") as raised:
        Analytics(WRITE_KEY, host="http://127.0.0.1:9", **{name: 10000})
    assert "did you mean 10?" in str(raised.value)
    Analytics(WRITE_KEY, host="http://127.0.0.1:9", **{name: 900})  # the longest Lambda: fine


def test_deadlines_in_milliseconds_are_refused_at_the_call(make_client: MakeClient) -> None:
    analytics = make_client()
    with pytest.raises(ConfigurationError, match="seconds, not milliseconds"):
        analytics.flush(timeout=5000)
    with (
        pytest.raises(ConfigurationError, match="seconds, not milliseconds"),
        analytics.deadline(10000),
    ):
        pass
    with pytest.raises(ConfigurationError, match="seconds, not milliseconds"):
        with_analytics(analytics, timeout=30000)


def test_max_retries_is_a_shortcut_for_the_retry_policy() -> None:
    analytics = Analytics(WRITE_KEY, host="http://127.0.0.1:9", max_retries=5)
    assert analytics.retry.max_retries == 5
    kept = Analytics(WRITE_KEY, host="http://127.0.0.1:9", max_retries=0)
    assert kept.retry == RetryPolicy(max_retries=0)
    with pytest.raises(ConfigurationError, match="not both"):
        Analytics(WRITE_KEY, host="http://127.0.0.1:9", retry=RetryPolicy(), max_retries=2)


# -- calls -----------------------------------------------------------------------------------------


def test_timestamp_as_iso_text_like_the_node_sdk(
    collector: Collector, make_client: MakeClient
) -> None:
    analytics = make_client()
    assert analytics.track(user_id="u", event="E", timestamp="2015-06-01T12:00:00.000Z").delivered
    assert analytics.page(user_id="u", timestamp="2015-06-01T14:00:00+02:00").delivered
    assert [m["timestamp"] for m in collector.messages] == ["2015-06-01T12:00:00.000Z"] * 2
    with pytest.raises(ValidationError, match="timestamp: not an ISO-8601") as raised:
        analytics.track(user_id="u", event="E", timestamp="yesterday")
    assert raised.value.field == "timestamp"
    assert analytics.track(user_id="u", event="E", timestamp=dt.datetime(2015, 6, 1)).delivered


# -- the event emitter: on() and off() -----------------------------------------------------------


def test_on_track_hears_each_delivered_track_and_nothing_else(
    collector: Collector, make_client: MakeClient
) -> None:
    analytics = make_client()
    heard: list[dict[str, Any]] = []
    stop = analytics.on("track", heard.append)
    analytics.track(user_id="u", event="Heard")
    analytics.identify(user_id="u")
    collector.fail_next(400)
    analytics.track(user_id="u", event="Refused")
    assert [m["event"] for m in heard] == ["Heard"]
    stop()
    analytics.track(user_id="u", event="After Off")
    assert [m["event"] for m in heard] == ["Heard"]


def test_on_error_flush_http_request_and_call_after_close(
    collector: Collector, make_client: MakeClient
) -> None:
    analytics = make_client(flush_at=2)
    errors: list[tuple[DeliveryError, list[dict[str, Any]]]] = []
    flushes: list[FlushResult] = []
    requests: list[RequestInfo] = []
    late: list[dict[str, Any]] = []
    analytics.on("error", lambda error, messages: errors.append((error, messages)))
    analytics.on("flush", flushes.append)
    analytics.on("http_request", requests.append)
    analytics.on("call_after_close", late.append)
    analytics.track(user_id="u", event="One")
    analytics.flush()
    collector.fail_next(400)
    analytics.track(user_id="u", event="Two")
    analytics.flush()
    analytics.close()
    analytics.track(user_id="u", event="Late")
    assert [(f.sent, f.failed) for f in flushes][:2] == [(1, 0), (0, 1)]
    assert [m["event"] for _, messages in errors for m in messages] == ["Two"]
    assert [(r.method, r.status) for r in requests] == [("POST", 200), ("POST", 400)]
    assert [m["event"] for m in late] == ["Late"]


def test_on_refuses_an_unknown_event() -> None:
    analytics = Analytics(WRITE_KEY, host="http://127.0.0.1:9")
    with pytest.raises(ValueError, match="event must be one of"):
        analytics.on("delivered", print)


# -- named plugins: register(), deregister() ------------------------------------------------------


class Lowercase:
    name = "Lowercase events"
    type = "enrichment"

    def __call__(self, message: dict[str, Any], *error: object) -> dict[str, Any]:
        if message["type"] == "track":
            message["event"] = message["event"].lower()
        return message


class DropTests:
    name = "Drop test users"
    type = "before"

    def __call__(self, message: dict[str, Any], *error: object) -> dict[str, Any] | None:
        return None if str(message.get("userId", "")).startswith("test-") else message


class Outcomes:
    name = "Outcomes"
    type = "after"

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []

    def __call__(self, message: dict[str, Any], *error: DeliveryError | None) -> None:
        failure = error[0] if error else None
        self.seen.append(
            (message["messageId"], None if failure is None else type(failure).__name__)
        )


def test_named_plugins_run_in_their_place_and_can_be_removed_by_name(
    collector: Collector, make_client: MakeClient
) -> None:
    analytics = make_client()
    outcomes = Outcomes()
    analytics.register(Lowercase(), DropTests(), outcomes)
    assert [p.name for p in analytics.plugins] == [
        "Drop test users",
        "Lowercase events",
        "Outcomes",
    ]
    kept = analytics.track(user_id="u", event="Order Completed")
    dropped = analytics.track(user_id="test-1", event="Ignored")
    collector.fail_next(400)
    refused = analytics.track(user_id="u", event="Refused")
    assert dropped.dropped and [m["event"] for m in collector.messages] == ["order completed"]
    assert outcomes.seen == [(kept.message_id, None), (refused.message_id, "HTTPStatusError")]
    assert analytics.plugin("Outcomes") is outcomes
    analytics.deregister("Lowercase events", "Drop test users")
    analytics.track(user_id="test-2", event="Now Sent")
    assert [m["event"] for m in collector.messages][-1] == "Now Sent"
    with pytest.raises(KeyError):
        analytics.deregister("Lowercase events")
    with pytest.raises(KeyError, match="no plugin named 'Lowercase events'"):
        analytics.plugin("Lowercase events")
    with pytest.raises(ValueError, match="already registered"):
        analytics.register(Outcomes())


def test_a_plugin_that_breaks_the_message_is_named_at_the_call(make_client: MakeClient) -> None:
    class Breaks:
        name = "Breaks"
        type = "enrichment"

        def __call__(self, message: dict[str, Any], *error: object) -> dict[str, Any]:
            del message["messageId"]
            return message

    analytics = make_client()
    analytics.register(Breaks())
    with pytest.raises(ValidationError, match="Breaks"):
        analytics.track(user_id="u", event="E")
