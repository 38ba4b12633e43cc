"""The SDK's OAuth against a real oidc-provider, and a collector that accepts only tokens the
provider's introspection reports active; and, without Node, against a token endpoint of our own
(Python, on loopback) that fails on purpose."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from conftest import FAST_RETRY, WRITE_KEY
from oauth_server import ASSERTION_TYPE, KeyPair, OAuthClient, OAuthServer, oauth_server_fixture

from lambda_analytics import Analytics, DeliveryError, OAuthError, OAuthSettings, RequestInfo
from lambda_analytics.collector import Collector

SHORT = OAuthClient("short-lived-client", access_token_ttl=2)
oauth_server = oauth_server_fixture(scope="module", extra_clients=[SHORT])


@pytest.fixture
def protected(oauth_server: OAuthServer) -> Iterator[Collector]:
    """A tracking API that accepts a batch only with an active token."""
    with Collector(write_key=WRITE_KEY, token_validator=oauth_server.introspect) as server:
        yield server


def settings(server: OAuthServer, **overrides: Any) -> OAuthSettings:
    values: dict[str, Any] = {
        "client_id": server.client_id,
        "key_id": server.key_id,
        "private_key": server.private_key_pem,
        "auth_server": server.issuer,
    }
    return OAuthSettings(**{**values, **overrides})


def client(collector: Collector, oauth: OAuthSettings, **options: Any) -> Analytics:
    options.setdefault("retry", FAST_RETRY)
    return Analytics(WRITE_KEY, host=collector.url, oauth=oauth, **options)


def test_events_are_delivered_with_a_bearer_token(
    oauth_server: OAuthServer, protected: Collector
) -> None:
    analytics = client(protected, settings(oauth_server))
    first = analytics.track(user_id="u1", event="With OAuth")
    second = analytics.identify(user_id="u1", traits={"plan": "pro"})
    assert first.delivered and second.delivered, (first.error, second.error)
    requests = protected.requests
    assert all(r.headers["authorization"].startswith("Bearer ") for r in requests)
    assert requests[0].headers["authorization"] == requests[1].headers["authorization"]
    assert requests[0].payload is not None and requests[0].payload["writeKey"] == WRITE_KEY
    assert (
        analytics._engine.route.tokens is not None and analytics._engine.route.tokens.fetches == 1
    )  # cached


@pytest.mark.parametrize("mistake", ["wrong key", "wrong kid"])
def test_refused_credentials_are_reported_with_the_providers_error(
    oauth_server: OAuthServer, protected: Collector, mistake: str
) -> None:
    errors: list[tuple[DeliveryError, list[dict[str, Any]]]] = []
    if mistake == "wrong key":
        oauth = settings(
            oauth_server, private_key=KeyPair.generate(oauth_server.key_id).private_key_pem
        )
    else:
        oauth = settings(oauth_server, key_id="no-such-kid")
    analytics = client(protected, oauth, on_error=lambda e, m: errors.append((e, m)))
    started = time.monotonic()
    result = analytics.track(user_id="u1", event="Refused")
    assert time.monotonic() - started < 2.0
    assert not result.delivered and isinstance(result.error, OAuthError)
    assert "invalid_client" in str(result.error) and "client authentication failed" in str(
        result.error
    )
    [(error, messages)] = errors
    assert error is result.error and [m["event"] for m in messages] == ["Refused"]
    assert protected.request_count == 0  # no batch went out without a token


def test_a_token_that_expires_between_invocations_is_renewed(
    oauth_server: OAuthServer, protected: Collector
) -> None:
    oauth = settings(oauth_server, client_id=SHORT.client_id, key_id=SHORT.key_id,
                     private_key=SHORT.private_key_pem)  # fmt: skip
    analytics = client(protected, oauth)
    assert analytics.track(user_id="u1", event="Before expiry").delivered
    time.sleep(2.05)  # the 2 s token is now expired at the provider
    assert analytics.track(user_id="u1", event="After expiry").delivered
    assert [m["event"] for m in protected.messages] == ["Before expiry", "After expiry"]
    assert [r.status for r in protected.requests] == [200, 200]  # renewed before it was refused
    assert (
        analytics._engine.route.tokens is not None and analytics._engine.route.tokens.fetches == 2
    )


def test_a_revoked_token_leads_to_one_refresh_and_the_batch_delivered(
    oauth_server: OAuthServer, protected: Collector
) -> None:
    analytics = client(protected, settings(oauth_server), flush_at=3)
    assert analytics.track(user_id="u1", event="one").queued
    analytics.flush()
    token = protected.requests[0].headers["authorization"].removeprefix("Bearer ")
    oauth_server.revoke(token)
    assert not oauth_server.introspect(token)
    for i in range(3):
        analytics.track(user_id="u1", event=f"after revocation {i}")
    assert analytics.flush().sent == 3  # reads the pipelined batch's answer: 401, refresh, resend
    statuses = [r.status for r in protected.requests]
    assert statuses == [200, 401, 200]
    assert [m["event"] for m in protected.messages][1:] == [
        f"after revocation {i}" for i in range(3)
    ]
    assert (
        analytics._engine.route.tokens is not None and analytics._engine.route.tokens.fetches == 2
    )


def test_secrets_never_leak(
    oauth_server: OAuthServer, protected: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="lambda_analytics")
    seen: list[RequestInfo] = []
    errors: list[DeliveryError] = []
    oauth = settings(oauth_server)
    analytics = client(
        protected, oauth, on_request=seen.append, on_error=lambda e, m: errors.append(e)
    )
    analytics.track(user_id="u1", event="ok")
    token = protected.requests[0].headers["authorization"].removeprefix("Bearer ")
    bad = client(
        protected, settings(oauth_server, key_id="nope"), on_error=lambda e, m: errors.append(e)
    )
    bad.track(user_id="u1", event="refused")
    texts = [
        caplog.text,
        repr(analytics),
        repr(oauth),
        repr(seen),
        *map(str, errors),
        *map(repr, errors),
    ]
    for secret in (token, oauth_server.private_key_pem, "PRIVATE KEY", WRITE_KEY):
        assert all(secret not in text for text in texts), secret
    assert seen and all(info.headers["Authorization"] == "<redacted>" for info in seen)


class FlakyTokenEndpoint(ThreadingHTTPServer):
    """A token endpoint on loopback that gives ``answers`` in turn (the last one forever) and
    keeps each request's path and form."""

    def __init__(self, answers: list[tuple[int, dict[str, Any]]]) -> None:
        self.answers = answers
        self.calls = 0
        self.requests: list[tuple[str, dict[str, list[str]]]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                server: FlakyTokenEndpoint = self.server  # type: ignore[assignment]
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                server.requests.append((self.path, urllib.parse.parse_qs(body)))
                status, answer = server.answers[min(server.calls, len(server.answers) - 1)]
                server.calls += 1
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


# A client of a FlakyTokenEndpoint: nothing checks its key, but the SDK signs with it.
FLAKY_CLIENT = OAuthClient("flaky-endpoint-client")


def flaky_settings(endpoint: FlakyTokenEndpoint) -> OAuthSettings:
    return OAuthSettings(
        client_id=FLAKY_CLIENT.client_id,
        key_id=FLAKY_CLIENT.key_id,
        private_key=FLAKY_CLIENT.private_key_pem,
        auth_server=endpoint.url,
    )


def test_token_endpoint_5xx_and_429_are_retried() -> None:
    answers = [(503, {}), (429, {}), (200, {"access_token": "t-1", "expires_in": 60})]
    endpoint = FlakyTokenEndpoint(answers)
    try:
        with Collector(write_key=WRITE_KEY, token_validator=lambda t: t == "t-1") as api:
            analytics = client(api, flaky_settings(endpoint))
            assert analytics.track(user_id="u", event="x").delivered
            assert endpoint.calls == 3
            assert api.requests[0].headers["authorization"] == "Bearer t-1"
        # Each try was a whole token request, with a fresh client assertion.
        assert [path for path, _ in endpoint.requests] == ["/token"] * 3
        forms = [form for _, form in endpoint.requests]
        assert all(form["grant_type"] == ["client_credentials"] for form in forms)
        assert all(form["client_assertion_type"] == [ASSERTION_TYPE] for form in forms)
        assert len({form["client_assertion"][0] for form in forms}) == 3
    finally:
        endpoint.shutdown()
        endpoint.server_close()


def test_a_token_endpoint_that_keeps_failing_is_bounded_by_the_deadline(
    collector: Collector,
) -> None:
    endpoint = FlakyTokenEndpoint([(503, {})])
    try:
        from lambda_analytics import RetryPolicy

        analytics = client(collector, flaky_settings(endpoint),
                           retry=RetryPolicy(max_retries=10_000, backoff_initial=0.01))  # fmt: skip
        started = time.monotonic()
        with analytics.deadline(0.5):
            result = analytics.track(user_id="u", event="x")
        assert time.monotonic() - started < 0.7
        assert isinstance(result.error, OAuthError) and collector.request_count == 0
    finally:
        endpoint.shutdown()
        endpoint.server_close()
