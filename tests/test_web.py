"""``lambda_analytics.web``: real servers, a tracking API that answers in 300 ms.

uvicorn serves Starlette apps and waitress serves Flask apps, each in a thread on 127.0.0.1;
the tracking API is the package's validating collector behind a proxy that holds every
``/v1/batch`` for 300 ms, recording when each batch arrived and when it was answered.  Every
event is tagged with the id of the HTTP request that made it, so each batch can be traced
back to one request.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import uvicorn
import waitress
from conftest import WRITE_KEY
from flask import Flask, Response, stream_with_context
from flask import request as flask_request
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import lambda_analytics
from lambda_analytics import Analytics, with_analytics
from lambda_analytics.collector import Collector
from lambda_analytics.web import ASGIMiddleware, WSGIMiddleware, wait_for_flushes

API_DELAY = 0.3
MARGIN = 0.05  # what the acceptance allows analytics to add to a response


# -- the slow tracking API -------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    arrived: float  # time.monotonic() when the POST reached the API
    answered: float  # when the API answered it (after API_DELAY)
    messages: list[dict[str, Any]]

    @property
    def requests(self) -> set[str]:
        return {m["properties"]["request"] for m in self.messages}


class SlowAPI:
    """Holds every batch API_DELAY seconds, then forwards it to a validating collector."""

    def __init__(self, collector: Collector, delay: float = API_DELAY) -> None:
        self.collector, self.delay = collector, delay
        self.batches: list[Batch] = []
        self.cond = threading.Condition()
        api = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True  # headers and body are two writes

            def do_POST(self) -> None:
                arrived = time.monotonic()
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(api.delay)
                conn = http.client.HTTPConnection(api.collector.url.removeprefix("http://"))
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                conn.request("POST", self.path, body, headers)
                answer = conn.getresponse()
                data = answer.read()
                conn.close()
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
                batch = Batch(arrived, time.monotonic(), json.loads(body)["batch"])
                with api.cond:
                    api.batches.append(batch)
                    api.cond.notify_all()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,))
        self.thread.start()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Batch]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.batches) >= count, timeout), (
                f"{len(self.batches)} batches arrived, {count} expected"
            )
            return list(self.batches)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(2)


@pytest.fixture
def api(collector: Collector) -> Iterator[SlowAPI]:
    slow = SlowAPI(collector)
    yield slow
    slow.stop()
    assert collector.rejected_count == 0


@pytest.fixture
def client(api: SlowAPI) -> Iterator[Analytics]:
    analytics = Analytics(WRITE_KEY, host=api.url)
    yield analytics
    assert wait_for_flushes(5)
    analytics.close(timeout=1)


# -- the servers -----------------------------------------------------------------------------


@contextlib.contextmanager
def uvicorn_serving(app: Any, *, lifespan: str = "off") -> Iterator[str]:
    sock = socket.create_server(("127.0.0.1", 0))
    config = uvicorn.Config(app, lifespan=lifespan, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(5)
        sock.close()


@contextlib.contextmanager
def waitress_serving(app: Any) -> Iterator[str]:
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.effective_port}"  # type: ignore[union-attr]
    finally:
        server.close()
        thread.join(5)


def get(address: str, path: str) -> tuple[float, float, float, bytes]:
    """GET on a fresh connection: (sent, received, seconds, body)."""
    conn = http.client.HTTPConnection(address, timeout=10)
    conn.connect()
    sent = time.monotonic()
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    received = time.monotonic()
    conn.close()
    return sent, received, received - sent, body


def get_at_once(address: str, paths: list[str]) -> list[tuple[float, float, float, bytes]]:
    """GET every path at the same moment, one thread and connection each."""
    results: list[Any] = [None] * len(paths)
    start = threading.Barrier(len(paths))

    def one(index: int) -> None:
        start.wait()
        results[index] = get(address, paths[index])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(paths))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return results


# -- the apps: three events per request, tagged with its id ----------------------------------

EVENTS = ("Page Viewed", "Cart Updated", "Order Completed")


def starlette_app(analytics: Analytics | None) -> Starlette:
    async def interleaved(request: Request) -> PlainTextResponse:
        rid = request.query_params["rid"]
        for event in EVENTS:
            if analytics is not None:
                analytics.track(user_id="u1", event=event, properties={"request": rid})
            await asyncio.sleep(0.02)  # let concurrent requests run in between
        return PlainTextResponse(rid)

    def blocking(request: Request) -> PlainTextResponse:  # runs in Starlette's threadpool
        rid = request.query_params["rid"]
        for event in EVENTS:
            if analytics is not None:
                analytics.track(user_id="u1", event=event, properties={"request": rid})
            time.sleep(0.02)
        return PlainTextResponse(rid)

    async def later(request: Request) -> PlainTextResponse:
        rid = request.query_params["rid"]
        assert analytics is not None
        analytics.track(user_id="u1", event="Page Viewed", properties={"request": rid})

        def after_the_body() -> None:
            analytics.track(user_id="u1", event="Email Sent", properties={"request": rid})

        return PlainTextResponse(rid, background=BackgroundTask(after_the_body))

    async def fails(request: Request) -> PlainTextResponse:
        assert analytics is not None
        rid = request.query_params["rid"]
        analytics.track(user_id="u1", event="Checkout Failed", properties={"request": rid})
        raise RuntimeError("the handler failed")

    return Starlette(
        routes=[
            Route("/interleaved", interleaved),
            Route("/blocking", blocking),
            Route("/later", later),
            Route("/fails", fails),
        ]
    )


def flask_app(analytics: Analytics | None) -> Flask:
    app = Flask(__name__)

    @app.route("/interleaved")
    def interleaved() -> str:
        rid = flask_request.args["rid"]
        for event in EVENTS:
            if analytics is not None:
                analytics.track(user_id="u1", event=event, properties={"request": rid})
            time.sleep(0.02)
        return rid

    @app.route("/stream")
    def stream() -> Response:
        rid = flask_request.args["rid"]
        assert analytics is not None

        def chunks() -> Iterator[str]:
            for event in EVENTS:  # tracked while the server iterates the body
                analytics.track(user_id="u1", event=event, properties={"request": rid})
                yield event + "\n"

        return Response(stream_with_context(chunks()))

    return app


def assert_one_batch_per_request(batches: list[Batch], rids: list[str], per: int = 3) -> None:
    assert len(batches) == len(rids), [b.requests for b in batches]
    for batch in batches:
        assert len(batch.requests) == 1, f"events of requests {batch.requests} mixed"
        assert len(batch.messages) == per
    assert sorted(rid for b in batches for rid in b.requests) == sorted(rids)


ATTEMPTS = 3
"""Timing on a shared machine: a measurement is repeated, at most this many times, until it
is within MARGIN.  A real regression (a response that waits for the 300 ms API, a blocked
event loop) fails every attempt."""


def one_at_a_time(api: SlowAPI, plain: str, tracked: str) -> list[tuple[Any, Batch]]:
    """Five requests to each server, alternating, each after the last batch arrived; the
    median response with analytics within MARGIN of the one without.  Returns the last
    attempt's responses, each with its batch."""
    added: list[float] = []
    rids: list[str] = []
    for attempt in range(ATTEMPTS):
        baseline, results = [], []
        for i in range(5):
            baseline.append(get(plain, "/interleaved?rid=-")[2])
            rids.append(f"r{attempt}-{i}")
            results.append(get(tracked, f"/interleaved?rid={rids[-1]}"))
            api.wait_for(len(rids))  # the next request starts on a quiet server
        added.append(statistics.median(r[2] for r in results) - statistics.median(baseline))
        if added[-1] < MARGIN:
            break
    else:
        shown = ", ".join(f"{a * 1000:.1f}" for a in added)
        pytest.fail(f"analytics added {shown} ms to the median response")
    batches = api.wait_for(len(rids))
    assert_one_batch_per_request(batches, rids)
    return list(zip(results, batches[-5:], strict=True))


# -- acceptance ------------------------------------------------------------------------------


def test_asgi_response_does_not_wait_and_each_request_is_one_batch_after_it(
    api: SlowAPI, client: Analytics
) -> None:
    app = starlette_app(client)
    app.add_middleware(ASGIMiddleware, analytics=client)  # exactly as documented
    with uvicorn_serving(starlette_app(None)) as plain, uvicorn_serving(app) as tracked:
        measured = one_at_a_time(api, plain, tracked)
    for (sent, received, _, body), batch in measured:
        assert batch.requests == {body.decode()}
        assert sent < batch.arrived  # sent by this request...
        assert received < batch.answered  # ...and delivered after its response was read
        assert received - sent < API_DELAY  # the response never waited for the API


def test_asgi_ten_requests_in_flight_on_one_worker(api: SlowAPI, client: Analytics) -> None:
    app = starlette_app(client)
    app.add_middleware(ASGIMiddleware, analytics=client)
    rids: list[str] = []
    worst: list[float] = []
    with uvicorn_serving(starlette_app(None)) as plain, uvicorn_serving(app) as tracked:
        for attempt in range(ATTEMPTS):
            baseline = get_at_once(plain, ["/interleaved?rid=-"] * 10)
            mine = [f"c{attempt}-{i}" for i in range(10)]
            results = get_at_once(tracked, [f"/interleaved?rid={rid}" for rid in mine])
            rids += mine
            assert sorted(r[3].decode() for r in results) == mine
            api.wait_for(len(rids))
            # Each response against its rank among the responses without analytics.
            pairs = zip(sorted(r[2] for r in results), sorted(r[2] for r in baseline), strict=True)
            worst.append(max(with_ - without for with_, without in pairs))
            if worst[-1] < MARGIN:
                break
        else:
            shown = ", ".join(f"{w * 1000:.1f}" for w in worst)
            pytest.fail(f"with ten in flight, analytics added up to {shown} ms to a response")
    # Interleaved on one event loop, yet each batch holds one request's events only.
    assert_one_batch_per_request(api.wait_for(len(rids)), rids)


def test_asgi_concurrent_requests_never_mix_async_or_threadpool(
    api: SlowAPI, client: Analytics
) -> None:
    app = ASGIMiddleware(starlette_app(client), analytics=client)
    with uvicorn_serving(app) as tracked:
        get_at_once(tracked, ["/interleaved?rid=a1", "/blocking?rid=b1", "/interleaved?rid=a2"])
    assert_one_batch_per_request(api.wait_for(3), ["a1", "b1", "a2"])


def test_wsgi_response_does_not_wait_and_each_request_is_one_batch_after_it(
    api: SlowAPI, client: Analytics
) -> None:
    app = flask_app(client)
    app.wsgi_app = WSGIMiddleware(app.wsgi_app, analytics=client)  # type: ignore[method-assign]
    with waitress_serving(flask_app(None)) as plain, waitress_serving(app) as tracked:
        measured = one_at_a_time(api, plain, tracked)
    for (sent, received, _, body), batch in measured:
        assert batch.requests == {body.decode()}
        assert sent < batch.arrived and received < batch.answered
        assert received - sent < API_DELAY


def test_wsgi_concurrent_requests_never_mix(api: SlowAPI, client: Analytics) -> None:
    app = flask_app(client)
    app.wsgi_app = WSGIMiddleware(app.wsgi_app, analytics=client)  # type: ignore[method-assign]
    with waitress_serving(app) as tracked:
        results = get_at_once(tracked, ["/interleaved?rid=x", "/interleaved?rid=y"])
        assert_one_batch_per_request(api.wait_for(2), ["x", "y"])
    assert all(seconds < API_DELAY for _, _, seconds, _ in results)


# -- what else the middleware promises -------------------------------------------------------


def test_asgi_background_task_events_join_the_request_batch(
    api: SlowAPI, client: Analytics
) -> None:
    app = ASGIMiddleware(starlette_app(client), analytics=client)
    with uvicorn_serving(app) as tracked:
        get(tracked, "/later?rid=bg")
        (batch,) = api.wait_for(1)
    assert [m["event"] for m in batch.messages] == ["Page Viewed", "Email Sent"]


def test_asgi_app_that_raises_still_delivers_after_the_500(api: SlowAPI, client: Analytics) -> None:
    app = starlette_app(client)
    app.add_middleware(ASGIMiddleware, analytics=client)
    with uvicorn_serving(app) as tracked:
        conn = http.client.HTTPConnection(tracked, timeout=10)
        conn.request("GET", "/fails?rid=f")
        assert conn.getresponse().status == 500
        conn.close()
        (batch,) = api.wait_for(1)
    assert [m["event"] for m in batch.messages] == ["Checkout Failed"]


def test_wsgi_events_tracked_while_the_body_streams_join_the_batch(
    api: SlowAPI, client: Analytics
) -> None:
    app = flask_app(client)
    app.wsgi_app = WSGIMiddleware(app.wsgi_app, analytics=client)  # type: ignore[method-assign]
    with waitress_serving(app) as tracked:
        _, _, _, body = get(tracked, "/stream?rid=s")
        (batch,) = api.wait_for(1)
    assert body.decode().split() == ["Page", "Viewed", "Cart", "Updated", "Order", "Completed"]
    assert batch.requests == {"s"} and len(batch.messages) == 3


def test_wsgi_app_that_raises_delivers_then_reraises(collector: Collector) -> None:
    client = Analytics(WRITE_KEY, host=collector.url)

    def broken(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        client.track(user_id="u1", event="Broken")
        raise LookupError("no such page")

    with pytest.raises(LookupError):
        WSGIMiddleware(broken, analytics=client)({}, lambda *args: None)  # type: ignore[arg-type]
    assert [m["event"] for m in collector.messages] == ["Broken"]


def test_delivery_failures_go_to_on_error_and_the_response_stays_fast() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}"  # bound, never listening
        failed: list[list[dict[str, Any]]] = []
        client = Analytics(
            WRITE_KEY, host=dead, max_retries=1, on_error=lambda e, ms: failed.append(ms)
        )
        app = ASGIMiddleware(starlette_app(client), analytics=client, timeout=1.0)
        with uvicorn_serving(app) as tracked:
            _, _, seconds, _ = get(tracked, "/interleaved?rid=d")
            assert wait_for_flushes(5)
    assert seconds < API_DELAY
    assert [[m["properties"]["request"] for m in ms] for ms in failed] == [["d"] * 3]


def test_default_client_is_looked_up_at_each_request(collector: Collector) -> None:
    app = ASGIMiddleware(starlette_app_default())  # built before the default client exists
    client = Analytics(WRITE_KEY, host=collector.url)
    restore = lambda_analytics.default.swap(client)
    try:
        with uvicorn_serving(app) as tracked:
            get(tracked, "/")
            assert wait_for_flushes(5)
    finally:
        restore()
    assert [m["event"] for m in collector.messages] == ["Default Client"]


def starlette_app_default() -> Starlette:
    async def home(request: Request) -> PlainTextResponse:
        lambda_analytics.track(user_id="u1", event="Default Client")
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/", home)])


def test_lifespan_and_websocket_scopes_pass_through_untouched() -> None:
    started: list[str] = []
    seen: list[tuple[Any, ...]] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        started.append("up")
        yield

    restore = lambda_analytics.default.swap(None)  # one would be created for an http scope
    try:
        with uvicorn_serving(ASGIMiddleware(Starlette(lifespan=lifespan)), lifespan="on"):
            assert started == ["up"]

        async def recorder(scope: Any, receive: Any, send: Any) -> None:
            seen.append((scope, receive, send))

        async def receive() -> dict[str, Any]:
            return {}

        async def send(message: Any) -> None:
            pass

        scope = {"type": "websocket", "path": "/ws"}
        asyncio.run(ASGIMiddleware(recorder)(scope, receive, send))
        assert seen == [(scope, receive, send)]
        assert lambda_analytics.default.current() is None
    finally:
        restore()


def test_lambda_web_app_delivers_before_the_handler_returns(collector: Collector) -> None:
    """Mangum on Lambda: the documented tool is with_analytics(batch=True) on its handler."""
    from mangum import Mangum

    client = Analytics(WRITE_KEY, host=collector.url)
    handler = with_analytics(client, batch=True)(Mangum(starlette_app(client), lifespan="off"))
    event = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/interleaved",
        "rawQueryString": "rid=lambda",
        "headers": {"host": "example.com"},
        "requestContext": {
            "http": {"method": "GET", "path": "/interleaved", "sourceIp": "1.2.3.4"},
            "domainName": "example.com",
            "stage": "$default",
        },
        "isBase64Encoded": False,
    }
    response = handler(event, LambdaContext())
    assert response["statusCode"] == 200 and response["body"] == "lambda"
    # Already delivered when the handler returned (the sandbox may freeze now), in one request.
    assert [r.payload and len(r.payload["batch"]) for r in collector.requests] == [3]


class LambdaContext:
    function_name = "web"
    aws_request_id = "req-1"

    def get_remaining_time_in_millis(self) -> int:
        return 10_000


def test_import_lambda_analytics_does_not_import_web() -> None:
    code = "import sys, lambda_analytics; print('lambda_analytics.web' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "False"
