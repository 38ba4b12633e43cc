"""The OAuth test server itself (tests/oauth_server.py + tests/oauth/server.mjs), exercised with
pyjwt and urllib3 only, no SDK code: the protocol the SDK speaks gets tokens from it, and it
refuses what it should, with the errors the SDK will surface."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
import urllib3
from conftest import missing_prerequisite, node_executable
from oauth_server import (
    ASSERTION_TYPE,
    SERVER_DIR,
    SERVER_SCRIPT,
    KeyPair,
    OAuthClient,
    OAuthServer,
    oauth_server_fixture,
    skip_reason,
)

SHORT = OAuthClient("short-lived-client", access_token_ttl=2)
oauth_server = oauth_server_fixture(scope="module", extra_clients=[SHORT])
short_lived_server = oauth_server_fixture(scope="module", access_token_ttl=2)

HTTP = urllib3.PoolManager(retries=False, timeout=10.0)
BAD_CLIENT = {"error": "invalid_client", "error_description": "client authentication failed"}


@pytest.fixture
def server_node() -> str:
    """For the tests that start server.mjs themselves: the node to run it with."""
    reason = skip_reason()
    if reason is not None:
        missing_prerequisite(reason)
    node = node_executable()
    assert node is not None
    return node


def segment_assertion(
    private_key_pem: str, *, key_id: str, client_id: str, audience: Any, jti: str | None = None
) -> str:
    """The client assertion exactly as Segment's OAuth wants it, built with pyjwt alone."""
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": now,
        "exp": now + 55,
        "jti": jti or str(uuid.uuid4()),
    }
    return jwt.encode(
        claims, private_key_pem, algorithm="RS256", headers={"kid": key_id, "typ": "JWT"}
    )


def post_token(server: OAuthServer, assertion: str, scope: str = "tracking_api:write") -> Any:
    return HTTP.request(
        "POST",
        f"{server.issuer}/token",
        fields={
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
            "scope": scope,
        },
        encode_multipart=False,
    )


def test_issuer_is_loopback_without_trailing_slash(oauth_server: OAuthServer) -> None:
    assert oauth_server.issuer.startswith("http://127.0.0.1:")
    assert not oauth_server.issuer.endswith("/")
    assert oauth_server.token_endpoint == f"{oauth_server.issuer}/token"


def test_token_introspect_revoke(oauth_server: OAuthServer) -> None:
    assertion = segment_assertion(
        oauth_server.private_key_pem,
        key_id=oauth_server.key_id,
        client_id=oauth_server.client_id,
        audience=oauth_server.issuer,
    )
    header = jwt.get_unverified_header(assertion)
    assert header == {"alg": "RS256", "typ": "JWT", "kid": oauth_server.key_id}

    response = post_token(oauth_server, assertion)
    assert response.status == 200, response.data
    assert response.headers["Content-Type"].startswith("application/json")
    body = json.loads(response.data)
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "tracking_api:write"
    assert body["expires_in"] == 3600
    token = body["access_token"]

    info = oauth_server.introspection(token)
    assert info["active"] is True
    assert info["client_id"] == oauth_server.client_id
    assert info["scope"] == "tracking_api:write"
    assert info["aud"] == oauth_server.resource
    assert info["iss"] == oauth_server.issuer
    assert oauth_server.introspect(token)

    oauth_server.revoke(token)
    assert not oauth_server.introspect(token)
    assert oauth_server.introspection(token) == {"active": False}


def test_a_client_may_revoke_only_its_own_tokens(oauth_server: OAuthServer) -> None:
    token = oauth_server.fetch_token()
    other = oauth_server.revocation(token, oauth_server.assertion(client=SHORT))
    assert other.status == 400 and other.body["error"] == "invalid_request", other
    assert oauth_server.introspect(token)
    own = oauth_server.revocation(token, oauth_server.assertion())
    assert own.status == 200, own
    assert not oauth_server.introspect(token)


def test_unknown_token_is_inactive(oauth_server: OAuthServer) -> None:
    assert not oauth_server.introspect("not-a-token")


@pytest.mark.parametrize("audience", ["issuer", "token endpoint", "list with issuer"])
def test_accepted_audiences(oauth_server: OAuthServer, audience: str) -> None:
    value: Any = {
        "issuer": oauth_server.issuer,
        "token endpoint": oauth_server.token_endpoint,
        "list with issuer": [oauth_server.issuer, "https://elsewhere.example"],
    }[audience]
    assertion = oauth_server.assertion(audience=value)
    assert post_token(oauth_server, assertion).status == 200


@pytest.mark.parametrize("audience", ["trailing slash", "localhost", "segment"])
def test_refused_audiences(oauth_server: OAuthServer, audience: str) -> None:
    port = oauth_server.issuer.rsplit(":", 1)[1]
    value = {
        "trailing slash": f"{oauth_server.issuer}/",
        "localhost": f"http://localhost:{port}",
        "segment": "https://oauth2.segment.io",
    }[audience]
    response = post_token(oauth_server, oauth_server.assertion(audience=value))
    assert response.status == 401
    assert json.loads(response.data) == BAD_CLIENT


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("unregistered key", "no applicable key found"),
        ("registered kid, other key", "signature verification failed"),
        ("registered key, unknown kid", "no applicable key found"),
    ],
)
def test_wrong_key_is_invalid_client(oauth_server: OAuthServer, case: str, reason: str) -> None:
    key = {
        "unregistered key": KeyPair.generate(),
        "registered kid, other key": KeyPair.generate(oauth_server.key_id),
        "registered key, unknown kid": oauth_server.key.with_key_id("not-registered"),
    }[case]
    assertion = segment_assertion(
        key.private_key_pem,
        key_id=key.key_id,
        client_id=oauth_server.client_id,
        audience=oauth_server.issuer,
    )
    response = post_token(oauth_server, assertion)
    assert response.status == 401
    assert response.headers["Content-Type"].startswith("application/json")
    assert json.loads(response.data) == BAD_CLIENT
    # The reason is only in the server's log, never in the response.
    assert_logged(oauth_server, reason)


def test_unknown_client_is_invalid_client(oauth_server: OAuthServer) -> None:
    response = post_token(oauth_server, oauth_server.assertion(client_id="nobody"))
    assert (response.status, json.loads(response.data)) == (401, BAD_CLIENT)
    assert_logged(oauth_server, "client not found")


def test_replayed_assertion_is_refused(oauth_server: OAuthServer) -> None:
    assertion = oauth_server.assertion()
    assert post_token(oauth_server, assertion).status == 200
    response = post_token(oauth_server, assertion)
    assert (response.status, json.loads(response.data)) == (401, BAD_CLIENT)
    assert_logged(oauth_server, "client assertion tokens must only be used once")


def test_expired_assertion_is_refused(oauth_server: OAuthServer) -> None:
    assertion = oauth_server.assertion(now=time.time() - 120)
    response = post_token(oauth_server, assertion)
    assert (response.status, json.loads(response.data)) == (401, BAD_CLIENT)
    assert_logged(oauth_server, "jwt expired")


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("no kid", "kid (key id) header is required"),
        ("no iat", "iat (issued at) must be provided"),
        ("lives over a minute", "exp must be at most 60s after iat"),
        ("no jti", "unique jti (JWT ID) must be provided"),
    ],
)
def test_assertion_must_follow_segment_rules(
    oauth_server: OAuthServer, case: str, reason: str
) -> None:
    options: dict[str, dict[str, Any]] = {
        "no kid": {"headers": {"kid": None}},
        "no iat": {"claims": {"iat": None}},
        "lives over a minute": {"lifetime": 61},
        "no jti": {"claims": {"jti": None}},
    }
    response = post_token(oauth_server, oauth_server.assertion(**options[case]))
    assert (response.status, json.loads(response.data)) == (401, BAD_CLIENT)
    assert_logged(oauth_server, reason)


def test_malformed_assertion_is_invalid_request(oauth_server: OAuthServer) -> None:
    response = post_token(oauth_server, "not-a-jwt")
    assert response.status == 400
    assert json.loads(response.data) == {
        "error": "invalid_request",
        "error_description": "invalid client_assertion format",
    }


def test_unknown_scope_is_invalid_scope(oauth_server: OAuthServer) -> None:
    response = post_token(oauth_server, oauth_server.assertion(), scope="tracking_api:admin")
    assert response.status == 400
    assert json.loads(response.data) == {
        "error": "invalid_scope",
        "error_description": "requested scope is not allowed",
        "scope": "tracking_api:admin",
    }


def test_request_token_helper(oauth_server: OAuthServer) -> None:
    result = oauth_server.request_token()
    assert result.status == 200
    assert oauth_server.introspect(result.access_token)
    refused = oauth_server.request_token(oauth_server.assertion(key=KeyPair.generate()))
    assert (refused.status, refused.body) == (401, BAD_CLIENT)


def test_token_expires_after_its_ttl(short_lived_server: OAuthServer) -> None:
    response = post_token(short_lived_server, short_lived_server.assertion())
    assert response.status == 200
    body = json.loads(response.data)
    assert body["expires_in"] == 2
    info = short_lived_server.introspection(body["access_token"])
    assert info["active"] is True
    assert info["exp"] - info["iat"] == 2
    # oidc-provider counts whole seconds: the token is inactive once now >= exp.
    time.sleep(max(0.0, info["exp"] - time.time()))
    deadline = time.monotonic() + 2.0
    while short_lived_server.introspect(body["access_token"]):
        assert time.monotonic() < deadline, "token still active after its exp"
        time.sleep(0.05)


def test_extra_client_has_its_own_key_and_ttl(oauth_server: OAuthServer) -> None:
    response = post_token(oauth_server, oauth_server.assertion(client=SHORT))
    assert response.status == 200
    body = json.loads(response.data)
    assert body["expires_in"] == 2
    info = oauth_server.introspection(body["access_token"])
    assert (info["client_id"], info["exp"] - info["iat"]) == (SHORT.client_id, 2)
    # The main client's key does not authenticate the other client.
    refused = post_token(oauth_server, oauth_server.assertion(client=SHORT, key=oauth_server.key))
    assert refused.status == 401
    oauth_server.revoke(body["access_token"])
    assert not oauth_server.introspect(body["access_token"])


def test_server_exits_when_its_parent_dies(server_node: str) -> None:
    script = textwrap.dedent(
        """
        import os, sys
        sys.path.insert(0, sys.argv[1])
        from oauth_server import OAuthServer
        server = OAuthServer().start()
        print(server.info["pid"], flush=True)
        os._exit(0)  # no stop(): the server must notice its stdin closing
        """
    )
    child = subprocess.run(
        [sys.executable, "-c", script, str(SERVER_DIR.parent)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    pid = int(child.stdout.strip())
    assert_exits(pid, within=10.0)


def test_server_exits_after_its_max_lifetime(server_node: str, tmp_path: Path) -> None:
    key = KeyPair.generate()
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {"client_id": "c", "jwks": {"keys": [key.public_jwk]}, "collector_client_secret": "s"}
        )
    )
    # stdin stays open (a live parent): only the lifetime cap can end it.
    process = subprocess.Popen(
        [server_node, str(SERVER_SCRIPT), "--max-lifetime", "1", "--config", str(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        process.wait(timeout=30)
    finally:
        process.kill()
        _, stderr = process.communicate()
    assert process.returncode == 0, stderr
    assert "max lifetime 1s" in stderr


def assert_logged(server: OAuthServer, text: str) -> None:
    deadline = time.monotonic() + 2.0
    while text not in server.log():
        assert time.monotonic() < deadline, f"{text!r} not in the server log:\n{server.log()}"
        time.sleep(0.01)


def assert_exits(pid: int, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().split(") ", 1)[1].startswith("Z"):
                    return  # a zombie has exited
        except FileNotFoundError:
            return
        assert time.monotonic() < deadline, f"server {pid} still running after {within}s"
        time.sleep(0.05)
