"""The client end to end: real urllib3 transport, real collector on loopback."""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import WRITE_KEY

import lambda_analytics
from lambda_analytics import (
    Analytics,
    ClientClosedError,
    ConfigurationError,
    DeadlineExceededError,
    DeliveryError,
    HTTPStatusError,
    RequestInfo,
    RetryPolicy,
    TransportError,
    ValidationError,
)
from lambda_analytics.collector import Collector

MakeClient = Callable[..., Analytics]


def test_every_call_type_arrives_on_the_wire(collector: Collector, make_client: MakeClient) -> None:
    analytics = make_client()
    when = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    results = [
        analytics.identify(user_id="u1", traits={"plan": "pro"}, context={"ip": "1.2.3.4"}),
        analytics.track(
            user_id="u1",
            event="Order Completed",
            properties={"revenue": 9.99},
            integrations={"All": False, "Mixpanel": True},
            timestamp=when,
            message_id="order-1",
        ),
        analytics.page(anonymous_id="a1", category="Docs", name="API", properties={"url": "https://x"}),
        analytics.screen(user_id="u1", name="Settings"),
        analytics.group(user_id="u1", group_id="acme", traits={"employees": 150}),
        analytics.alias(user_id="u1", previous_id="a1"),
    ]  # fmt: skip
    assert all(r.delivered and r.error is None and not r.queued for r in results)
    requests = collector.requests
    assert len(requests) == 6  # flush_at=1: one request per call, before it returned
    for request, result in zip(requests, results, strict=True):
        assert request.status == 200
        assert request.path == "/v1/batch"
        assert (
            request.headers["authorization"]
            == "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
        )
        assert request.headers["content-type"] == "application/json"
        assert request.headers["user-agent"] == f"lambda_analytics/{lambda_analytics.__version__}"
        assert "x-retry-count" not in request.headers
        payload = request.payload
        assert payload is not None
        assert payload["writeKey"] == WRITE_KEY
        assert len(payload["sentAt"]) == 24 and payload["sentAt"].endswith("Z")
        [message] = payload["batch"]
        assert message["messageId"] == result.message_id
        assert message["context"]["library"] == {
            "name": "lambda_analytics",
            "version": lambda_analytics.__version__,
        }
    identify, track, page, screen, group, alias = (r.payload["batch"][0] for r in requests)  # type: ignore[index]
    assert identify["type"] == "identify" and identify["traits"] == {"plan": "pro"}
    assert identify["context"]["ip"] == "1.2.3.4"
    assert track["event"] == "Order Completed" and track["properties"] == {"revenue": 9.99}
    assert track["integrations"] == {"All": False, "Mixpanel": True}
    assert track["timestamp"] == "2024-01-02T03:04:05.000Z" and track["messageId"] == "order-1"
    assert page["anonymousId"] == "a1" and "userId" not in page
    assert (page["category"], page["name"], page["properties"]) == (
        "Docs",
        "API",
        {"url": "https://x"},
    )
    assert screen["name"] == "Settings"
    assert group["groupId"] == "acme" and group["traits"] == {"employees": 150}
    assert alias["previousId"] == "a1" and alias["userId"] == "u1"


def test_validation_errors_raise_at_the_call_site(make_client: MakeClient) -> None:
    analytics = make_client()
    with pytest.raises(ValidationError, match="user_id"):
        analytics.track(event="x")
    with pytest.raises(ValueError, match=r"properties\.price"):
        analytics.track(user_id="u", event="x", properties={"price": float("nan")})
    with pytest.raises(TypeError, match=r"properties\.raw"):
        analytics.track(user_id="u", event="x", properties={"raw": b"x"})
    with pytest.raises(ValueError, match="bytes serialized"):
        analytics.track(user_id="u", event="x", properties={"blob": "x" * 40_000})
    assert analytics.stats.sent == 0


def test_5xx_and_429_are_retried_then_delivered_once(
    collector: Collector, make_client: MakeClient
) -> None:
    collector.fail_next(503)
    collector.fail_next(429, headers={"Retry-After": "0"})
    collector.fail_next(500)
    analytics = make_client()
    result = analytics.track(user_id="u1", event="Retried")
    assert result.delivered
    requests = collector.requests
    assert [r.status for r in requests] == [503, 429, 500, 200]
    assert [r.headers.get("x-retry-count") for r in requests] == [None, "1", "2", "3"]
    assert len({r.payload["sentAt"] for r in requests if r.payload}) >= 2  # type: ignore[index]
    assert collector.message_ids() == [result.message_id]  # delivered once, nothing lost


def test_retry_after_as_an_http_date(collector: Collector, make_client: MakeClient) -> None:
    import email.utils

    collector.fail_next(
        429, headers={"Retry-After": email.utils.formatdate(time.time(), usegmt=True)}
    )
    result = make_client().track(user_id="u1", event="Later")
    assert result.delivered and [r.status for r in collector.requests] == [429, 200]


def test_400_is_final_and_reaches_the_error_hook(
    collector: Collector, make_client: MakeClient
) -> None:
    failures: list[tuple[DeliveryError, list[dict[str, Any]]]] = []
    calls: list[tuple[DeliveryError | None, str]] = []
    collector.fail_next(400, body=b'{"error": "bad things"}')
    analytics = make_client(on_error=lambda e, m: failures.append((e, m)))
    result = analytics.track(
        user_id="u1", event="Refused", callback=lambda e, m: calls.append((e, m["messageId"]))
    )
    assert not result.delivered
    assert isinstance(result.error, HTTPStatusError) and result.error.status == 400
    assert "bad things" in str(result.error)
    assert len(collector.requests) == 1  # not retried
    [(error, messages)] = failures
    assert error is result.error
    assert [m["messageId"] for m in messages] == [result.message_id]
    assert messages[0]["event"] == "Refused" and messages[0]["userId"] == "u1"
    assert calls == [(error, result.message_id)]
    assert analytics.stats.failed == 1


def test_a_redirect_is_an_error_not_followed(collector: Collector, make_client: MakeClient) -> None:
    collector.fail_next(307, headers={"Location": "http://127.0.0.1:1/elsewhere"})
    result = make_client().track(user_id="u1", event="x")
    assert isinstance(result.error, HTTPStatusError) and result.error.status == 307
    assert "not followed" in str(result.error) and len(collector.requests) == 1


def test_flush_with_1s_deadline_against_a_server_that_always_answers_503(
    collector: Collector, make_client: MakeClient
) -> None:
    collector.fail_next(503, times=10_000)
    failures: list[list[dict[str, Any]]] = []
    analytics = make_client(
        flush_at=100,
        retry=RetryPolicy(max_retries=1_000),  # the deadline, not the count, must stop it
        on_error=lambda e, m: failures.append(m),
    )
    ids = [analytics.track(user_id="u", event=f"e{i}").message_id for i in range(5)]
    started = time.monotonic()
    summary = analytics.flush(timeout=1.0)
    elapsed = time.monotonic() - started
    assert elapsed < 1.2
    assert (summary.sent, summary.failed) == (0, 5)
    assert [m["messageId"] for m in summary.failed_messages] == ids
    assert isinstance(summary.errors[0], DeadlineExceededError)
    assert "503" in str(summary.errors[0])
    assert [m["messageId"] for m in failures[0]] == ids
    assert len(collector.requests) > 2  # it did retry while there was time


def test_retry_after_beyond_the_deadline_stops_at_once(
    collector: Collector, make_client: MakeClient
) -> None:
    collector.fail_next(429, headers={"Retry-After": "30"})
    analytics = make_client(flush_at=10)
    analytics.track(user_id="u", event="x")
    started = time.monotonic()
    summary = analytics.flush(timeout=2.0)
    assert time.monotonic() - started < 0.5
    assert summary.failed == 1 and isinstance(summary.errors[0], DeadlineExceededError)


def test_600_messages_of_1kb_go_out_as_two_requests(
    collector: Collector, make_client: MakeClient
) -> None:
    analytics = make_client(flush_at=1_000)
    pad = "x" * 870
    results = [
        analytics.track(user_id="u", event="Big", properties={"i": i, "pad": pad})
        for i in range(600)
    ]
    assert all(r.queued for r in results)  # the 500 KB limit sent a batch before overfilling
    assert analytics.flush().failed == 0
    assert analytics.stats.sent == 600
    requests = collector.requests
    assert len(requests) == 2
    assert all(len(r.body) < 500_000 for r in requests)
    assert sum(len(r.payload["batch"]) for r in requests) == 600  # type: ignore[index]
    assert collector.message_ids() == [
        m for r in requests for m in (x["messageId"] for x in r.payload["batch"])
    ]  # type: ignore[index]


def test_flush_at_batches_and_a_full_batch_goes_at_once(
    collector: Collector, make_client: MakeClient
) -> None:
    analytics = make_client(flush_at=3)
    results = [analytics.track(user_id="u", event=f"e{i}") for i in range(7)]
    # A full batch is sent at once; its answer is read by the next flush (pipelining).
    assert all(r.queued and not r.delivered for r in results)
    assert collector.wait_for_messages(6)
    assert analytics.stats.queued == 4 and analytics.stats.sent == 3  # 3 in flight + 1 queued
    summary = analytics.flush()
    assert (summary.sent, summary.failed) == (4, 0)
    assert [len(r.payload["batch"]) for r in collector.requests] == [3, 3, 1]  # type: ignore[index]
    assert analytics.stats.sent == 7 and analytics.stats.queued == 0


def test_a_pipelined_batch_is_retried_or_reported_by_the_next_flush(
    collector: Collector, make_client: MakeClient
) -> None:
    reported: list[list[dict[str, Any]]] = []
    analytics = make_client(flush_at=2, on_error=lambda e, m: reported.append(m))
    collector.fail_next(503)  # the first batch: retried when its answer is read
    collector.fail_next(400)  # its retry is refused for good: reported with its messages
    ids = [analytics.track(user_id="u", event=f"e{i}").message_id for i in range(2)]
    summary = analytics.flush()
    assert (summary.sent, summary.failed) == (0, 2)
    assert [m["messageId"] for m in summary.failed_messages] == ids
    assert [[m["messageId"] for m in batch] for batch in reported] == [ids]
    assert [r.status for r in collector.requests] == [503, 400]
    assert collector.requests[1].headers["x-retry-count"] == "1"


def test_flush_at_1_never_pipelines(collector: Collector, make_client: MakeClient) -> None:
    collector.fail_next(503)
    result = make_client().track(user_id="u", event="now")
    assert result.delivered and not result.queued  # delivered (after a retry) before return


def test_flush_interval_without_a_thread(collector: Collector, make_client: MakeClient) -> None:
    analytics = make_client(flush_at=100, flush_interval=0.05)
    assert analytics.track(user_id="u", event="first").queued
    time.sleep(0.06)
    assert analytics.track(user_id="u", event="second").delivered
    assert [len(r.payload["batch"]) for r in collector.requests] == [2]  # type: ignore[index]


def test_a_full_queue_flushes_rather_than_drops(
    collector: Collector, make_client: MakeClient
) -> None:
    analytics = make_client(flush_at=100, max_queue_size=4)
    for i in range(10):
        analytics.track(user_id="u", event=f"e{i}")
    analytics.flush()
    assert len(collector.message_ids()) == 10
    assert [len(r.payload["batch"]) for r in collector.requests] == [4, 4, 2]  # type: ignore[index]


def test_gzip(collector: Collector, make_client: MakeClient) -> None:
    make_client(gzip=True).track(user_id="u", event="Zipped")
    [request] = collector.requests
    assert request.headers["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(request.body))["batch"][0]["event"] == "Zipped"


def test_request_hook_sees_each_attempt_with_authorization_redacted(
    collector: Collector, make_client: MakeClient
) -> None:
    seen: list[RequestInfo] = []
    collector.fail_next(502)
    make_client(on_request=seen.append).track(user_id="u", event="x")
    assert [(i.attempt, i.status) for i in seen] == [(1, 502), (2, 200)]
    assert all(i.headers["Authorization"] == "<redacted>" for i in seen)
    assert WRITE_KEY not in repr(seen)
    assert seen[0].message_count == 1 and seen[0].body_bytes > 0


def test_close_refuses_and_reports_later_calls(
    collector: Collector, make_client: MakeClient
) -> None:
    late: list[dict[str, Any]] = []
    analytics = make_client(flush_at=10, on_call_after_close=late.append)
    analytics.track(user_id="u", event="before")
    summary = analytics.close(timeout=2.0)
    assert summary.sent == 1 and analytics.closed
    result = analytics.track(user_id="u", event="after")
    assert isinstance(result.error, ClientClosedError) and not result.delivered
    assert [m["event"] for m in late] == ["after"]
    assert [m["event"] for m in collector.messages] == ["before"]
    assert analytics.stats.after_close == 1


def test_middleware_changes_drops_and_can_be_removed(
    collector: Collector, make_client: MakeClient
) -> None:
    analytics = make_client()

    def enrich(message: dict[str, Any]) -> dict[str, Any] | None:
        if message.get("event") == "Noise":
            return None
        message.setdefault("properties", {})["enriched"] = True
        return message

    analytics.add_middleware(enrich)
    assert analytics.track(user_id="u", event="Noise").dropped
    analytics.track(user_id="u", event="Kept")
    analytics.remove_middleware(enrich)
    analytics.track(user_id="u", event="Plain")
    assert [(m["event"], m.get("properties")) for m in collector.messages] == [
        ("Kept", {"enriched": True}),
        ("Plain", None),
    ]
    assert analytics.stats.dropped == 1


def test_middleware_works_on_a_copy_so_caller_dicts_are_never_mutated(
    collector: Collector, make_client: MakeClient
) -> None:
    analytics = make_client()

    def meddle(message: dict[str, Any]) -> dict[str, Any]:
        message["properties"]["items"][0]["price"] = 0
        message["context"]["ip"] = "0.0.0.0"
        return message

    analytics.add_middleware(meddle)
    properties = {"items": [{"price": 9.5, "when": dt.date(2024, 1, 1)}]}
    context = {"ip": "1.2.3.4"}
    analytics.track(user_id="u", event="x", properties=properties, context=context)
    assert properties == {"items": [{"price": 9.5, "when": dt.date(2024, 1, 1)}]}
    assert context == {"ip": "1.2.3.4"}
    [message] = collector.messages
    assert message["properties"]["items"][0] == {"price": 0, "when": "2024-01-01"}


def test_hook_exceptions_never_reach_the_caller(
    collector: Collector, make_client: MakeClient
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("hook bug")

    collector.fail_next(400)
    analytics = make_client(on_error=broken, on_request=broken)
    result = analytics.track(user_id="u", event="x", callback=broken)
    assert isinstance(result.error, HTTPStatusError)


def test_unreachable_host_is_reported_not_raised(make_client: MakeClient) -> None:
    errors: list[DeliveryError] = []
    analytics = make_client(host="http://127.0.0.1:9", on_error=lambda e, m: errors.append(e))
    result = analytics.track(user_id="u", event="x")
    assert not result.delivered and isinstance(result.error, TransportError)
    assert errors == [result.error]
    assert WRITE_KEY not in str(result.error)


def test_disable_validates_and_counts_but_sends_nothing(collector: Collector) -> None:
    analytics = Analytics(disable=True, host=collector.url)
    result = analytics.track(user_id="u", event="x")
    assert not result.delivered and result.error is None
    with pytest.raises(ValidationError):
        analytics.track(event="x")
    assert analytics.stats.disabled == 1 and collector.requests == []


def test_hosts_paths_and_regions() -> None:
    assert Analytics("k").url == "https://api.segment.io/v1/batch"
    assert Analytics("k", region="eu").url == "https://events.eu1.segmentapis.com/v1/batch"
    assert (
        Analytics("k", host="https://x.test/prefix/", path="v1/batch").url
        == "https://x.test/prefix/v1/batch"
    )
    with pytest.raises(ConfigurationError):
        Analytics("k", region="mars")
    with pytest.raises(ConfigurationError):
        Analytics()


def test_secrets_stay_out_of_repr_and_logs(
    collector: Collector, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="lambda_analytics")
    collector.fail_next(500)
    collector.fail_next(401, body=f"bad key {WRITE_KEY}".encode())
    analytics = make_client()
    result = analytics.track(user_id="u", event="x")
    assert WRITE_KEY not in repr(analytics)
    assert WRITE_KEY not in str(result.error) and "<redacted>" in str(result.error)
    assert caplog.records and WRITE_KEY not in caplog.text
    encoded = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    assert encoded not in caplog.text


def test_threads_share_one_client_without_loss_or_duplicates(
    collector: Collector, make_client: MakeClient
) -> None:
    analytics = make_client(flush_at=7)

    def work(n: int) -> None:
        for i in range(50):
            analytics.track(user_id=f"t{n}", event=f"e{i}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    analytics.flush()
    ids = collector.message_ids()
    assert len(ids) == 400 and len(set(ids)) == 400


def test_default_client_from_the_environment(
    collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANALYTICS_WRITE_KEY", WRITE_KEY)
    monkeypatch.setenv("ANALYTICS_HOST", collector.url)
    monkeypatch.setenv("ANALYTICS_FLUSH_AT", "2")
    monkeypatch.setattr(lambda_analytics.default, "_client", None)
    lambda_analytics.track(user_id="u", event="one")
    lambda_analytics.identify(user_id="u", traits={"a": 1})
    assert lambda_analytics.get_client().flush_at == 2
    assert collector.wait_for_messages(2)  # the full batch went out (pipelined)
    assert [m["type"] for m in collector.messages] == ["track", "identify"]
    configured = lambda_analytics.configure(flush_at=1)
    assert lambda_analytics.get_client() is configured
    lambda_analytics.alias(user_id="u", previous_id="a")
    assert collector.messages[-1]["type"] == "alias"
    lambda_analytics.close()
    monkeypatch.setenv("ANALYTICS_FLUSH_AT", "many")
    with pytest.raises(ConfigurationError, match="ANALYTICS_FLUSH_AT"):
        lambda_analytics.configure()


def test_release_held_sends_one_requests_calls_later(
    collector: Collector, make_client: MakeClient
) -> None:
    analytics = make_client(flush_at=1)
    with analytics.hold():
        analytics.track(user_id="u", event="One")
        analytics.track(user_id="u", event="Two")
        send = analytics.release_held()
    assert collector.requests == [] and analytics.stats.queued == 0  # not re-queued
    analytics.track(user_id="other", event="Meanwhile")  # someone else's call goes at once
    result = send(1.0)
    assert (result.sent, result.failed) == (2, 0)
    batches = [[m["event"] for m in r.payload["batch"]] for r in collector.requests]  # type: ignore[index]
    assert batches == [["Meanwhile"], ["One", "Two"]]


def test_release_held_outside_a_hold_block_is_refused(make_client: MakeClient) -> None:
    with pytest.raises(RuntimeError, match="inside a hold"):
        make_client().release_held()
