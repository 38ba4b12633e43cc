"""Tests of the local Segment-protocol collector, spoken to with raw urllib3."""

from __future__ import annotations

import base64
import gzip
import io
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3

from lambda_analytics.collector import Collector, ReceivedRequest, main

WRITE_KEY = "test-write-key-123"
SENT_AT = "2024-05-01T12:00:00.000Z"


def msg(**fields: Any) -> dict[str, Any]:
    """A valid track message; a field set to None is removed."""
    message: dict[str, Any] = {
        "type": "track",
        "event": "Signed Up",
        "userId": "user-1",
        "messageId": str(uuid.uuid4()),
        "timestamp": "2024-05-01T11:59:59.000Z",
        "properties": {},
    }
    message.update(fields)
    return {key: value for key, value in message.items() if value is not None}


def envelope(*messages: Any, **extra: Any) -> dict[str, Any]:
    return {"batch": list(messages), "sentAt": SENT_AT, **extra}


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def post(
    http: urllib3.PoolManager,
    collector: Collector,
    payload: Any = None,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    auth: str | None = basic(WRITE_KEY),
    path: str = "/v1/batch",
) -> urllib3.BaseHTTPResponse:
    all_headers = {"Content-Type": "application/json"}
    if auth is not None:
        all_headers["Authorization"] = auth
    all_headers.update(headers or {})
    data = json.dumps(payload).encode() if body is None else body
    return http.request("POST", collector.url + path, body=data, headers=all_headers)


def error_of(response: urllib3.BaseHTTPResponse) -> str:
    answer = json.loads(response.data)  # not .json(): urllib3 1.26 has none
    assert answer["success"] is False
    return str(answer["error"])


@pytest.fixture
def collector() -> Iterator[Collector]:
    with Collector(WRITE_KEY) as server:
        yield server


@pytest.fixture
def http() -> Iterator[urllib3.PoolManager]:
    pool = urllib3.PoolManager(retries=False, timeout=5.0)
    yield pool
    pool.clear()


def test_accepts_batch_and_records_it(collector: Collector, http: urllib3.PoolManager) -> None:
    first, second = msg(), msg(type="identify", event=None, traits={"plan": "pro"})
    before = time.time()
    response = post(http, collector, envelope(first, second))
    assert response.status == 200
    assert json.loads(response.data) == {"success": True}
    assert response.headers["Content-Type"] == "application/json"
    assert collector.messages == [first, second]
    assert collector.message_ids() == [first["messageId"], second["messageId"]]
    assert (collector.request_count, collector.accepted_count, collector.rejected_count) == (
        1,
        1,
        0,
    )
    assert collector.message_count == 2
    [request] = collector.requests
    assert isinstance(request, ReceivedRequest)
    assert (request.method, request.path, request.status) == ("POST", "/v1/batch", 200)
    assert request.headers["authorization"] == basic(WRITE_KEY)
    assert request.headers["content-type"] == "application/json"
    assert request.payload == envelope(first, second)
    assert json.loads(request.body) == request.payload
    assert before <= request.received_at <= time.time()
    assert request.connection_id == 1
    assert collector.url.startswith("http://127.0.0.1:")
    assert not collector.url.endswith("/")


@pytest.mark.parametrize(
    ("auth", "body_key", "status"),
    [
        (basic(WRITE_KEY), None, 200),
        (None, WRITE_KEY, 200),
        (basic("wrong"), WRITE_KEY, 200),  # either credential is enough, like the real API
        (basic("wrong"), None, 401),
        (None, "wrong", 401),
        (None, None, 401),
        ("Basic !!not-base64!!", None, 401),
        (basic(WRITE_KEY + "x"), None, 401),
    ],
)
def test_write_key_auth(
    collector: Collector,
    http: urllib3.PoolManager,
    auth: str | None,
    body_key: str | None,
    status: int,
) -> None:
    extra = {} if body_key is None else {"writeKey": body_key}
    response = post(http, collector, envelope(msg(), **extra), auth=auth)
    assert response.status == status
    assert WRITE_KEY not in response.data.decode()
    assert collector.requests[0].status == status
    assert len(collector.messages) == (1 if status == 200 else 0)


def test_without_write_key_any_request_is_accepted(http: urllib3.PoolManager) -> None:
    with Collector() as open_collector:
        assert post(http, open_collector, envelope(msg()), auth=None).status == 200


def test_bearer_token_validator(http: urllib3.PoolManager) -> None:
    seen: list[str] = []

    def validator(token: str) -> bool:
        seen.append(token)
        return token == "good-token"

    with Collector(WRITE_KEY, token_validator=validator) as server:
        assert post(http, server, envelope(msg()), auth="Bearer good-token").status == 200
        # A rejected bearer token does not fall back to the (correct) body writeKey.
        payload = envelope(msg(), writeKey=WRITE_KEY)
        assert post(http, server, payload, auth="Bearer bad-token").status == 401
        assert post(http, server, envelope(msg()), auth=basic(WRITE_KEY)).status == 200
        assert seen == ["good-token", "bad-token"]
        assert len(server.messages) == 2


def test_crashing_validator_means_401(http: urllib3.PoolManager) -> None:
    def validator(token: str) -> bool:
        raise RuntimeError("validator bug")

    with Collector(token_validator=validator) as server:
        assert post(http, server, envelope(msg()), auth="Bearer t").status == 401
        assert post(http, server, envelope(msg()), auth="Bearer t").status == 401  # still serving


def test_bearer_without_validator_is_rejected(
    collector: Collector, http: urllib3.PoolManager
) -> None:
    payload = envelope(msg(), writeKey=WRITE_KEY)
    assert post(http, collector, payload, auth="Bearer anything").status == 401


def test_gzip_body(collector: Collector, http: urllib3.PoolManager) -> None:
    payload = envelope(msg(), msg())
    compressed = gzip.compress(json.dumps(payload).encode())
    response = post(http, collector, body=compressed, headers={"Content-Encoding": "gzip"})
    assert response.status == 200
    assert len(collector.messages) == 2
    [request] = collector.requests
    assert request.body == compressed  # recorded as received
    assert request.payload == payload


def test_invalid_gzip_is_400(collector: Collector, http: urllib3.PoolManager) -> None:
    response = post(http, collector, body=b"not gzip", headers={"Content-Encoding": "gzip"})
    assert response.status == 400
    assert "gzip" in error_of(response)


def test_chunked_body(collector: Collector, http: urllib3.PoolManager) -> None:
    data = json.dumps(envelope(msg(), msg())).encode()
    chunks = iter([data[:10], data[10:]])
    response = http.request(
        "POST",
        collector.url + "/v1/batch",
        body=chunks,
        headers={"Authorization": basic(WRITE_KEY)},
        chunked=True,
    )
    assert response.status == 200
    assert "chunked" in collector.requests[0].headers["transfer-encoding"]
    # The connection is still in a sane state afterwards.
    assert post(http, collector, envelope(msg())).status == 200
    assert collector.connection_count == 1


@pytest.mark.parametrize(
    ("payload", "fragments"),
    [
        ({"sentAt": SENT_AT}, ["batch"]),
        (envelope(), ["batch"]),
        ({"batch": [msg()]}, ["sentAt"]),
        ([msg()], ["JSON object"]),
        (envelope(msg(), "nope"), ["batch[1]", "object"]),
        (envelope(msg(type="purchase")), ["batch[0].type"]),
        (envelope(msg(messageId=None)), ["batch[0].messageId"]),
        (envelope(msg(messageId="")), ["batch[0].messageId"]),
        (envelope(msg(messageId="m" * 100)), ["batch[0].messageId"]),
        (envelope(msg(timestamp=None)), ["batch[0].timestamp"]),
        (envelope(msg(), msg(userId=None)), ["batch[1]", "userId or anonymousId"]),
        (envelope(msg(userId="", anonymousId="")), ["batch[0]", "userId or anonymousId"]),
        (envelope(msg(userId=42)), ["batch[0].userId"]),
        (envelope(msg(), msg(), msg(event=None)), ["batch[2].event", "track"]),
        (envelope(msg(type="group", event=None)), ["batch[0].groupId", "group"]),
        (envelope(msg(type="alias", event=None)), ["batch[0].previousId", "alias"]),
        (envelope(msg(type="alias", userId=None, anonymousId="a", previousId="p")), ["userId"]),
    ],
)
def test_invalid_batches_are_rejected_whole(
    collector: Collector, http: urllib3.PoolManager, payload: Any, fragments: list[str]
) -> None:
    response = post(http, collector, payload)
    assert response.status == 400
    error = error_of(response)
    for fragment in fragments:
        assert fragment in error
    assert collector.messages == []
    assert (collector.accepted_count, collector.rejected_count) == (0, 1)


def test_valid_message_types(collector: Collector, http: urllib3.PoolManager) -> None:
    batch = [
        msg(type="identify", event=None, userId=None, anonymousId="anon-1"),
        msg(type="page", event=None, name="Home"),
        msg(type="screen", event=None),
        msg(type="group", event=None, groupId="g-1"),
        msg(type="alias", event=None, previousId="anon-1"),
        msg(messageId="m" * 99),
    ]
    assert post(http, collector, envelope(*batch)).status == 200
    assert collector.messages == batch


def test_invalid_json_is_400(collector: Collector, http: urllib3.PoolManager) -> None:
    response = post(http, collector, body=b'{"batch": [')
    assert response.status == 400
    assert "JSON" in error_of(response)
    assert collector.requests[0].payload is None


def test_message_size_limit(collector: Collector, http: urllib3.PoolManager) -> None:
    def sized(size: int) -> dict[str, Any]:
        message = msg(properties={"blob": ""})
        overhead = len(json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode())
        message["properties"]["blob"] = "é" * ((size - overhead) // 2) + "x" * (
            (size - overhead) % 2
        )
        return message

    at_limit, over = sized(32_000), sized(32_001)
    assert post(http, collector, envelope(at_limit)).status == 200
    response = post(http, collector, envelope(msg(), over))
    assert response.status == 400
    error = error_of(response)
    assert over["messageId"] in error
    assert "batch[1]" in error
    assert "32001 bytes" in error


def test_batch_size_limit(collector: Collector, http: urllib3.PoolManager) -> None:
    batch = [msg(properties={"blob": "x" * 25_000}) for _ in range(21)]
    data = json.dumps(envelope(*batch)).encode()
    assert len(data) > 500_000
    response = post(http, collector, body=data)
    assert response.status == 400
    assert error_of(response) == f"batch too large ({len(data)} bytes > 500000)"
    # The limit applies after decompression.
    response = post(http, collector, body=gzip.compress(data), headers={"Content-Encoding": "gzip"})
    assert response.status == 400
    assert "batch too large" in error_of(response)


def test_message_count_limit(collector: Collector, http: urllib3.PoolManager) -> None:
    small = {"type": "track", "event": "e", "userId": "u", "timestamp": SENT_AT}
    batch = [{**small, "messageId": str(index)} for index in range(2_501)]
    response = post(http, collector, envelope(*batch))
    assert response.status == 400
    assert "2501" in error_of(response)
    assert post(http, collector, envelope(*batch[:2_500])).status == 200
    assert collector.message_count == 2_500


def test_unknown_path_and_wrong_method(collector: Collector, http: urllib3.PoolManager) -> None:
    assert post(http, collector, envelope(msg()), path="/v1/track").status == 404
    response = http.request("GET", collector.url + "/v1/batch")
    assert response.status == 405
    assert response.headers["Allow"] == "POST"
    assert http.request("HEAD", collector.url + "/v1/batch").status == 405
    assert [r.status for r in collector.requests] == [404, 405, 405]
    assert collector.rejected_count == 3
    # The keep-alive connection survived all of that.
    assert post(http, collector, envelope(msg())).status == 200
    assert collector.connection_count == 1


def test_custom_path_and_query_string(http: urllib3.PoolManager) -> None:
    with Collector(path="/ingest") as server:
        assert post(http, server, envelope(msg()), path="/ingest?x=1").status == 200
        assert post(http, server, envelope(msg()), path="/v1/batch").status == 404


def test_fail_next_scripts_faults_in_order(collector: Collector, http: urllib3.PoolManager) -> None:
    collector.fail_next(429, headers={"Retry-After": "2"}, body=b'{"error":"slow down"}')
    collector.fail_next(503, times=2)
    sent = msg()
    statuses = []
    for _ in range(4):
        response = post(http, collector, envelope(sent))
        statuses.append(response.status)
        if response.status == 429:
            assert response.headers["Retry-After"] == "2"
            assert response.data == b'{"error":"slow down"}'
    assert statuses == [429, 503, 503, 200]
    assert [r.status for r in collector.requests] == statuses
    assert collector.requests[0].payload == envelope(sent)  # faulted requests are still recorded
    assert collector.message_ids() == [sent["messageId"]]
    assert (collector.accepted_count, collector.rejected_count) == (1, 3)
    assert collector.connection_count == 1  # bodies were read fully, so keep-alive held


def test_fail_next_rejects_nonsense(collector: Collector) -> None:
    with pytest.raises(ValueError):
        collector.fail_next(42)
    with pytest.raises(ValueError):
        collector.fail_next(500, times=0)


def test_keep_alive_reuses_one_connection(collector: Collector, http: urllib3.PoolManager) -> None:
    for _ in range(3):
        assert post(http, collector, envelope(msg())).status == 200
    assert collector.connection_count == 1
    assert {r.connection_id for r in collector.requests} == {1}


def test_close_idle_connections(collector: Collector, http: urllib3.PoolManager) -> None:
    assert post(http, collector, envelope(msg())).status == 200
    collector.close_idle_connections()
    assert post(http, collector, envelope(msg())).status == 200
    assert collector.connection_count == 2
    assert [r.connection_id for r in collector.requests] == [1, 2]


def raw_request(collector: Collector) -> bytes:
    data = json.dumps(envelope(msg())).encode()
    return (
        f"POST /v1/batch HTTP/1.1\r\nHost: localhost\r\nAuthorization: {basic(WRITE_KEY)}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode() + data


def test_idle_timeout_closes_connection(http: urllib3.PoolManager) -> None:
    with Collector(WRITE_KEY, idle_timeout=0.2) as server:
        port = int(server.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=3.0) as sock:
            sock.sendall(raw_request(server))
            received = b""
            while b'{"success": true}' not in received:
                received += sock.recv(65536)
            assert received.startswith(b"HTTP/1.1 200")
            started = time.monotonic()
            assert sock.recv(65536) == b""  # the server hangs up once idle
            assert 0.1 < time.monotonic() - started < 2.0


def test_wait_for_messages(collector: Collector, http: urllib3.PoolManager) -> None:
    assert collector.wait_for_messages(0, timeout=0.0)
    started = time.monotonic()
    assert not collector.wait_for_messages(1, timeout=0.05)
    assert time.monotonic() - started < 1.0
    sender = threading.Timer(0.05, post, args=(http, collector, envelope(msg(), msg())))
    sender.start()
    try:
        assert collector.wait_for_messages(2, timeout=5.0)
    finally:
        sender.join()


def test_keep_requests_false_keeps_only_counters(http: urllib3.PoolManager) -> None:
    with Collector(WRITE_KEY, keep_requests=False) as server:
        assert post(http, server, envelope(msg(), msg())).status == 200
        assert post(http, server, {"batch": []}).status == 400
        assert server.wait_for_messages(2, timeout=1.0)
        assert (server.request_count, server.accepted_count, server.rejected_count) == (2, 1, 1)
        assert server.message_count == 2
        assert server.requests == []
        assert server.messages == []


def test_echo_prints_messages_but_no_secrets(http: urllib3.PoolManager) -> None:
    out = io.StringIO()
    with Collector(WRITE_KEY, echo=out) as server:
        post(http, server, envelope(msg(event="Order Completed"), msg(type="page", name="Home")))
        post(http, server, envelope(msg()), auth=basic("wrong-key"))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[1] track") and "Order Completed" in lines[0]
    assert lines[1].startswith("[2] page") and "Home" in lines[1]
    assert lines[2].startswith("[rejected 401]")
    assert WRITE_KEY not in out.getvalue()
    assert "wrong-key" not in out.getvalue()


def test_reset_clears_records_but_not_connections(
    collector: Collector, http: urllib3.PoolManager
) -> None:
    post(http, collector, envelope(msg()))
    collector.fail_next(500)
    collector.reset()
    assert collector.requests == [] and collector.messages == []
    assert (collector.request_count, collector.message_count) == (0, 0)
    assert post(http, collector, envelope(msg())).status == 200  # the pending fault is gone
    assert collector.connection_count == 1
    assert collector.requests[0].connection_id == 1


def test_stop_ends_all_threads_and_is_idempotent(http: urllib3.PoolManager) -> None:
    server = Collector(WRITE_KEY).start()
    assert post(http, server, envelope(msg())).status == 200  # leaves a pooled connection open
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 1.0
    assert not [t for t in threading.enumerate() if t.name.startswith("collector-conn")]
    server.stop()
    with pytest.raises(urllib3.exceptions.HTTPError):
        http.request("POST", server.url + "/v1/batch", body=b"{}")


def test_url_before_start_raises() -> None:
    with pytest.raises(RuntimeError):
        _ = Collector().url


def test_main_runs_for_duration(capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    assert main(["--port", "0", "--duration", "0.5", "--quiet"]) == 0
    assert time.monotonic() - started < 2.0
    out = capsys.readouterr().out
    assert "http://127.0.0.1:" in out
    assert "0 messages" in out


@pytest.mark.parametrize(
    "settings",
    [
        {"idle_timeout": 0},
        {"idle_timeout": -1.0},
        {"request_timeout": 0},
        {"max_connections": 0},
        {"rejected_sample": -1},
    ],
)
def test_limits_must_make_sense(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Collector(WRITE_KEY, **settings)


def test_limits_can_be_lifted() -> None:
    with Collector(WRITE_KEY, idle_timeout=None, request_timeout=None, rejected_sample=0) as server:
        port = int(server.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=3.0) as sock:
            sock.sendall(raw_request(server).replace(b"Basic ", b"Basic x"))
            assert sock.recv(65536).startswith(b"HTTP/1.1 401")
        assert server.rejected_count == 1
        assert server.rejected_requests == []


def test_main_refuses_nonsense_limits(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--port", "0", "--max-connections", "0"])
    assert exited.value.code == 2
    assert "max_connections" in capsys.readouterr().err
