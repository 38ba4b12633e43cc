"""The segment-analytics-python module-level style layer, against the collector."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import WRITE_KEY

import lambda_analytics.compat as analytics
from lambda_analytics.collector import Collector


@pytest.fixture(autouse=True)
def settings(collector: Collector, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(analytics, "write_key", WRITE_KEY)
    monkeypatch.setattr(analytics, "host", collector.url)
    monkeypatch.setattr(analytics, "default_client", None)
    yield
    analytics.shutdown()


def test_positional_calls_in_the_incumbents_order(collector: Collector) -> None:
    analytics.track("u1", "Order Completed", {"revenue": 9.99})
    analytics.identify("u1", {"plan": "pro"})
    analytics.group("u1", "acme", {"employees": 150})
    analytics.alias("a1", "u1")
    analytics.page("u1", "Docs", "API", {"url": "https://x"})
    analytics.screen("u1", "App", "Settings")
    messages = collector.messages
    assert [m["type"] for m in messages] == [
        "track",
        "identify",
        "group",
        "alias",
        "page",
        "screen",
    ]
    assert messages[0]["event"] == "Order Completed" and messages[0]["properties"] == {
        "revenue": 9.99
    }
    assert messages[2]["groupId"] == "acme"
    assert (messages[3]["previousId"], messages[3]["userId"]) == ("a1", "u1")
    assert (messages[4]["category"], messages[4]["name"]) == ("Docs", "API")


def test_calls_return_what_the_incumbents_return(collector: Collector) -> None:
    success, msg = analytics.track(42, "Order Completed")
    assert success and (msg["userId"], msg["anonymousId"], msg["properties"]) == ("42", None, {})
    assert msg["messageId"] == collector.messages[0]["messageId"]
    assert isinstance(analytics.default_client, analytics.Client)


def test_settings_are_read_at_the_first_call(
    collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(analytics, "sync_mode", False)
    monkeypatch.setattr(analytics, "upload_size", 10)
    analytics.track("u1", "queued")
    assert collector.request_count == 0
    assert analytics.flush().sent == 1
    analytics.track("u1", "queued for join")
    assert analytics.join().sent == 1
    monkeypatch.setattr(analytics, "send", False)
    analytics.shutdown()
    assert analytics.default_client is None
    analytics.track("u1", "not sent")
    assert collector.request_count == 2
