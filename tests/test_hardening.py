"""Issue 10: hostile OAuth servers, weak or missing keys, and settings checked at construction.

Real servers on 127.0.0.1 (a token endpoint and a batch endpoint in one ``http.server``, an
authenticating forward proxy); no mock of urllib3.
"""

from __future__ import annotations

import base64
import http.client
import logging
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import WRITE_KEY
from test_findings import HttpServer, private_key_pem

from lambda_analytics import (
    Analytics,
    ConfigurationError,
    DeliveryError,
    OAuthError,
    OAuthSettings,
    RetryPolicy,
)
from lambda_analytics.collector import Collector

FAST = RetryPolicy(max_retries=1, backoff_initial=0.001, backoff_max=0.002)
Serve = Callable[[Callable[[str, bytes, int], tuple[int, Any]]], HttpServer]


@pytest.fixture
def http_server() -> Iterator[Serve]:
    servers: list[HttpServer] = []

    def start(answer: Callable[[str, bytes, int], tuple[int, Any]]) -> HttpServer:
        servers.append(HttpServer(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.shutdown()


def token_then_ok(token_payload: Any, status: int = 200) -> Callable[[str, bytes, int], Any]:
    def answer(path: str, body: bytes, number: int) -> tuple[int, Any]:
        if path == "/token":
            return status, token_payload
        return 200, {"success": True}

    return answer


def send_one(server: HttpServer, **settings: Any) -> tuple[Analytics, list[DeliveryError]]:
    errors: list[DeliveryError] = []
    oauth = OAuthSettings("client-1", "key-1", private_key_pem(), auth_server=server.url)
    client = Analytics(
        WRITE_KEY, host=server.url, oauth=oauth, retry=FAST,
        on_error=lambda error, messages: errors.append(error), **settings,
    )  # fmt: skip
    client.track(user_id="u", event="E")
    return client, errors


# -- access tokens ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    ["has space", "tab\there", "caf\u00e9", "del\x7fete", "cr\r\nlf", "x" * 8193],
    ids=["space", "tab", "non-ascii", "del", "crlf", "over-8kb"],
)
def test_a_token_that_cannot_be_a_header_is_an_oauth_error_without_the_token(
    http_server: Serve, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = http_server(token_then_ok({"access_token": token, "expires_in": 3600}))
    _, errors = send_one(server)
    assert len(errors) == 1 and isinstance(errors[0], OAuthError)
    assert "cannot be a header" in str(errors[0])
    for text in (str(errors[0]), caplog.text):
        assert token not in text
    assert server.count("/v1/batch") == 0  # never sent with a broken Authorization header


def test_a_token_of_8_kb_is_accepted(http_server: Serve) -> None:
    server = http_server(token_then_ok({"access_token": "t" * 8192, "expires_in": 60}))
    _, errors = send_one(server)
    assert errors == [] and server.count("/v1/batch") == 1


@pytest.mark.parametrize(
    ("expires_in", "problem"),
    [("nan", "positive and finite"), ("inf", "positive and finite"), (-5, "positive"),
     (0, "positive"), ("abc", "not a number"), (True, "bool"), ([1], "list")],
)  # fmt: skip
def test_a_bad_expires_in_is_named_and_never_cached(
    http_server: Serve, expires_in: Any, problem: str
) -> None:
    server = http_server(token_then_ok({"access_token": "tok", "expires_in": expires_in}))
    client, errors = send_one(server)
    assert len(errors) == 1 and "expires_in" in str(errors[0]) and problem in str(errors[0])
    client.track(user_id="u", event="Again")
    assert server.count("/token") >= 2  # nothing was cached: the next call asks again


def test_a_missing_expires_in_means_an_hour_and_a_string_number_is_read(
    http_server: Serve,
) -> None:
    for payload in ({"access_token": "tok"}, {"access_token": "tok", "expires_in": "120"}):
        server = http_server(token_then_ok(payload))
        client, errors = send_one(server)
        client.track(user_id="u", event="Cached")
        assert errors == [] and server.count("/token") == 1 and server.count("/v1/batch") == 2


def test_server_text_is_printable_and_never_echoes_the_assertion(
    http_server: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []

    def answer(path: str, body: bytes, number: int) -> tuple[int, Any]:
        assertion = urllib.parse.parse_qs(body.decode())["client_assertion"][0]
        seen.append(assertion)
        description = f"bad \x1b[31mred\x1b[0m\r\nassertion {assertion} refused"
        return 400, {"error": "invalid_client", "error_description": description}

    server = http_server(answer)
    _, errors = send_one(server)
    assert len(errors) == 1 and seen
    text = str(errors[0])
    assert "invalid_client" in text and "refused" in text and "<redacted>" in text
    for shown in (text, caplog.text):
        assert all(assertion not in shown for assertion in seen)
        assert "\x1b" not in shown and "\r" not in shown


# -- keys -----------------------------------------------------------------------------------------


def test_a_pem_given_as_bytes_works(http_server: Serve) -> None:
    server = http_server(token_then_ok({"access_token": "tok", "expires_in": 60}))
    oauth = OAuthSettings("c", "k", private_key_pem().encode(), auth_server=server.url)
    client = Analytics(WRITE_KEY, host=server.url, oauth=oauth, retry=FAST)
    assert client.track(user_id="u", event="E").delivered


@pytest.mark.parametrize("disable", [False, True])
@pytest.mark.parametrize(
    ("key", "message"),
    [(None, "PEM text or bytes, not NoneType"), (42, "not int"), ("not a key", "not a usable"),
     ("weak", "1024 bits is too weak")],
)  # fmt: skip
def test_unusable_keys_are_refused_at_construction(key: Any, message: str, disable: bool) -> None:
    if key == "weak":
        key = private_key_pem(1024)
    oauth = OAuthSettings("c", "k", key, auth_server="http://127.0.0.1:9")
    with pytest.raises(ConfigurationError, match=message) as raised:
        Analytics(WRITE_KEY, host="http://127.0.0.1:9", oauth=oauth, disable=disable)
    assert "BEGIN" not in str(raised.value)


# -- settings checked at construction ---------------------------------------------------------


def test_a_missing_ca_bundle_is_refused_at_construction(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pem"
    with pytest.raises(ConfigurationError, match="ca_certs: no such file"):
        Analytics(WRITE_KEY, host="https://127.0.0.1:9", ca_certs=str(missing))


@pytest.mark.parametrize("proxy", ["ftp://proxy:21", "proxy.example:8080", "http://"])
def test_a_proxy_that_is_not_an_http_url_is_refused(proxy: str) -> None:
    with pytest.raises(ConfigurationError, match="proxy must be"):
        Analytics(WRITE_KEY, host="http://127.0.0.1:9", proxy=proxy)


class AuthProxy(ThreadingHTTPServer):
    """A forward proxy for http:// targets that wants ``Proxy-Authorization: Basic``."""

    daemon_threads = True

    def __init__(self, user: str, password: str) -> None:
        self.expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.seen: list[str | None] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                owner: AuthProxy = self.server  # type: ignore[assignment]
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                given = self.headers.get("Proxy-Authorization")
                owner.seen.append(given)
                if given != owner.expected:
                    # A hostile proxy might echo what it got: the client must redact it.
                    data = f"proxy auth required, got {given}".encode()
                    self.send_response(407)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                target = urllib.parse.urlsplit(self.path)
                upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=5)
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() != "proxy-authorization"
                }
                upstream.request("POST", target.path, body=body, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                upstream.close()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        threading.Timer(30, self.shutdown).start()

    def address(self, user: str, password: str) -> str:
        quoted = urllib.parse.quote(password, safe="")
        return f"http://{user}:{quoted}@127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def auth_proxy() -> Iterator[AuthProxy]:
    proxy = AuthProxy("alice", "s3cr:et@pw")
    yield proxy
    proxy.shutdown()


def test_proxy_credentials_in_the_url_are_sent_and_never_shown(
    auth_proxy: AuthProxy, collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = Analytics(
        WRITE_KEY, host=collector.url, proxy=auth_proxy.address("alice", "s3cr:et@pw")
    )
    assert client.track(user_id="u", event="Via Proxy").delivered
    assert auth_proxy.seen == [auth_proxy.expected]
    assert [m["event"] for m in collector.messages] == ["Via Proxy"]
    for shown in (repr(client), repr(client.settings), caplog.text):
        assert "s3cr" not in shown and "et@pw" not in shown


def test_wrong_proxy_credentials_are_reported_redacted(
    auth_proxy: AuthProxy, collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[DeliveryError] = []
    proxy = auth_proxy.address("alice", "wrong-password")
    client = Analytics(
        WRITE_KEY, host=collector.url, proxy=proxy, retry=FAST,
        on_error=lambda error, messages: errors.append(error),
    )  # fmt: skip
    assert not client.track(user_id="u", event="Refused").delivered
    assert len(errors) == 1 and "407" in str(errors[0])
    wrong = base64.b64encode(b"alice:wrong-password").decode()
    for shown in (str(errors[0]), caplog.text, repr(client.settings)):
        assert "wrong-password" not in shown and wrong not in shown
