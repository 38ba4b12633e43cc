"""OAuth 2 client-assertion tokens for the tracking API: sign, fetch, cache, redact.

The only module that uses pyjwt and cryptography, and it imports them when a client with
OAuth is built, never at package import.

The client signs a short RS256 JWT with its private key, trades it at ``{auth_server}/token``
for an access token, and sends batches with ``Authorization: Bearer <token>``.  The token is
fetched inline (no thread, no lock held), within the caller's deadline, cached until shortly
before it expires, and dropped when the API answers 401/403.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from .errors import ConfigurationError, DeliveryError, OAuthError
from .retry import RetryPolicy

if TYPE_CHECKING:
    from .results import Response
    from .transport import Transport

AUTH_SERVERS: Final = {
    "us": "https://oauth2.segment.io",
    "eu": "https://oauth2.eu1.segmentapis.com",
}
DEFAULT_SCOPE: Final = "tracking_api:write"
ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME: Final = 55
"""Seconds an assertion is valid: under the minute the protocol allows."""
_REFRESH_SHARE: Final = 0.1
_REFRESH_MAX: Final = 60.0


class OAuthSettings(NamedTuple):
    """OAuth credentials for a source that requires tokens instead of the write key alone.

    ``private_key`` is the PEM text of the RSA key whose public half is registered with the
    auth server under ``key_id``.  ``auth_server`` defaults to the client's region.
    """

    client_id: str
    key_id: str
    private_key: str | bytes
    auth_server: str | None = None
    scope: str = DEFAULT_SCOPE

    def __repr__(self) -> str:
        return (
            f"OAuthSettings(client_id={self.client_id!r}, key_id={self.key_id!r}, "
            f"private_key=<redacted>, auth_server={self.auth_server!r}, scope={self.scope!r})"
        )


def build_assertion(
    key: Any, *, client_id: str, key_id: str, audience: str, now: float, jti: str
) -> str:
    """The signed client assertion: RS256, ``kid`` header, ``iss`` = ``sub`` = client id."""
    import jwt

    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": int(now),
        "exp": int(now) + ASSERTION_LIFETIME,
        "jti": jti,
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": key_id, "typ": "JWT"})


MIN_KEY_BITS: Final = 2048
"""RSA keys shorter than this are refused (NIST SP 800-131A)."""


def check_settings(settings: object) -> None:
    """Raise ConfigurationError for OAuth settings that can never work (checked at construction)."""
    if not isinstance(settings, OAuthSettings):
        raise ConfigurationError(f"oauth must be an OAuthSettings, not {type(settings).__name__}")
    for name in ("client_id", "key_id", "scope"):
        value = getattr(settings, name)
        if not isinstance(value, str) or not value.strip():
            raise ConfigurationError(f"oauth.{name} must be a non-empty string")
    if settings.auth_server is not None and "://" not in str(settings.auth_server):
        raise ConfigurationError("oauth.auth_server must be a URL (https://...)")


def load_private_key(pem: object) -> Any:
    """Parse the PEM once; a key object is what every later assertion is signed with.

    Takes the PEM as text or bytes; refuses anything else, keys that are not RSA and RSA keys
    under 2,048 bits, with a ConfigurationError that never quotes the key.
    """
    if isinstance(pem, str):
        data = pem.encode("utf-8", "replace")
    elif isinstance(pem, (bytes, bytearray)):
        data = bytes(pem)
    else:
        kind = type(pem).__name__
        raise ConfigurationError(f"oauth.private_key must be the PEM text or bytes, not {kind}")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        # The library's message never quotes the key; ours does not either.
        raise ConfigurationError(
            f"oauth.private_key: not a usable PEM private key ({type(exc).__name__})"
        ) from None
    except Exception as exc:  # cryptography's UnsupportedAlgorithm and friends
        raise ConfigurationError(
            f"oauth.private_key: not a usable PEM private key ({type(exc).__name__})"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigurationError("oauth.private_key: must be an RSA key (RS256)")
    if key.key_size < MIN_KEY_BITS:
        raise ConfigurationError(
            f"oauth.private_key: an RSA key of {key.key_size} bits is too weak;"
            f" use {MIN_KEY_BITS} bits or more"
        )
    return key


class TokenSource:
    """Fetches and caches access tokens.  Its ``repr`` shows no key, assertion or token.

    The lock guards the cached token only: a fetch (and its retries) runs outside it, through
    the same delivery loop as batches.  One caller fetches; the others wait for it no longer
    than their own deadline.  A forked child starts with a fresh lock and no fetch under way.
    """

    def __init__(
        self,
        settings: OAuthSettings,
        *,
        region: str,
        transport: Transport,
        retry: RetryPolicy,
    ) -> None:
        self.settings = settings
        self.audience = (settings.auth_server or AUTH_SERVERS[region]).rstrip("/")
        self.token_url = self.audience + "/token"
        check_settings(settings)
        self._key = load_private_key(settings.private_key)
        self._transport = transport
        self._retry = retry
        self._lock = threading.Lock()
        self._fetching: threading.Event | None = None
        self._assertions: deque[str] = deque(maxlen=8)
        self._token: str | None = None
        self._refresh_at = 0.0
        self._expires_at = 0.0
        self._skew = 0.0
        self.fetches = 0
        """How many tokens were obtained (for tests and benchmarks)."""
        _sources.add(self)

    def __repr__(self) -> str:
        return f"TokenSource(token_url={self.token_url!r}, client_id={self.settings.client_id!r})"

    def authorization(self, deadline: float | None) -> str:
        """``Bearer <token>``, fetching a token first when none is cached or it is due to expire.

        Raises OAuthError (a DeliveryError) when no token can be had before ``deadline``.
        """
        while True:
            with self._lock:
                now = time.monotonic()
                if self._token is not None and now < self._refresh_at:
                    return "Bearer " + self._token
                waiting = self._fetching
                if waiting is None:
                    self._fetching = mine = threading.Event()
                    break
                if self._token is not None and now < self._expires_at:
                    return "Bearer " + self._token  # still valid while another refreshes it
            left = None if deadline is None else deadline - time.monotonic()
            if (left is not None and left <= 0) or not waiting.wait(left):
                return self._cached_or_raise("no access token before the deadline")
            with self._lock:  # the other caller is done; use its token, or fetch ourselves
                if self._token is not None and time.monotonic() < self._expires_at:
                    return "Bearer " + self._token
        try:
            self._fetch(deadline)
        except OAuthError as exc:
            # A token that is still valid beats none while the server is refusing.
            return self._cached_or_raise(str(exc))
        finally:
            with self._lock:
                if self._fetching is mine:
                    self._fetching = None
            mine.set()
        with self._lock:
            assert self._token is not None
            return "Bearer " + self._token

    def _cached_or_raise(self, reason: str) -> str:
        with self._lock:
            token, expires_at = self._token, self._expires_at
        if token is not None and time.monotonic() < expires_at:
            return "Bearer " + token
        raise OAuthError(reason)

    def redact(self, text: str) -> str:
        """``text`` without the cached access token or a recent client assertion."""
        for secret in (self._token, *self._assertions):
            if secret and secret in text:
                text = text.replace(secret, "<redacted>")
        return text

    def invalidate(self) -> None:
        """Forget the cached token (the API refused it); the next request fetches another."""
        with self._lock:
            self._token = None
            self._refresh_at = self._expires_at = 0.0

    def after_fork(self) -> None:
        """In a forked child: the parent's lock may be held and its fetch never ends here."""
        self._lock = threading.Lock()
        self._fetching = None

    def _fetch(self, deadline: float | None) -> None:
        from .delivery import Attempt, deliver
        from .transport import guarded

        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        }
        started = time.monotonic()

        def send(attempt: Attempt) -> Response:
            body = _urlencode(
                {
                    "grant_type": "client_credentials",
                    "client_assertion_type": ASSERTION_TYPE,
                    "client_assertion": self._assertion(),
                    "scope": self.settings.scope,
                }
            ).encode()
            url, left = self.token_url, attempt.timeout
            return guarded(lambda: self._transport.send(url, body, headers, left), self.redact)

        def judge(response: Response) -> DeliveryError | None:
            self._correct_clock(response)
            if 200 <= response.status < 300:
                return None
            # The server's words, redacted (a server may echo our assertion) and made printable.
            return OAuthError(clean(self.redact(_describe_refusal(response)), 500))

        result = deliver(send, policy=self._retry, deadline=deadline, judge=judge)
        if isinstance(result, OAuthError):
            raise result
        if isinstance(result, DeliveryError):
            raise OAuthError(self.redact(f"token request failed: {result}"))
        self._store(result, started)

    def _assertion(self) -> str:
        import uuid

        assertion = build_assertion(
            self._key,
            client_id=self.settings.client_id,
            key_id=self.settings.key_id,
            audience=self.audience,
            now=time.time() + self._skew,
            jti=str(uuid.uuid4()),
        )
        self._assertions.append(assertion)  # kept to redact it from what the server says
        return assertion

    def _store(self, response: Response, requested_at: float) -> None:
        try:
            payload = json.loads(response.body)
        except (ValueError, RecursionError):
            raise OAuthError("the token response is not JSON") from None
        token = payload.get("access_token") if isinstance(payload, dict) else None
        if not isinstance(token, str) or not token:
            raise OAuthError("the token response has no access_token")
        if len(token) > MAX_TOKEN_LENGTH or not _PRINTABLE.fullmatch(token):
            # It goes in a header: CR, LF, spaces or non-ASCII could split or corrupt it.
            raise OAuthError(
                "the auth server sent an access token that cannot be a header"
                f" ({len(token)} characters, printable ASCII up to {MAX_TOKEN_LENGTH} required)"
            )
        lifetime = _lifetime(payload.get("expires_in", DEFAULT_LIFETIME))
        with self._lock:
            self._token = token
            self._expires_at = requested_at + lifetime
            self._refresh_at = self._expires_at - min(_REFRESH_MAX, lifetime * _REFRESH_SHARE)
            self.fetches += 1

    def _correct_clock(self, response: Response) -> None:
        date = response.headers.get("date")
        if not date:
            return
        import email.utils

        try:
            server = email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return
        # The Date header has one-second resolution: only a larger difference is skew.
        skew = server - time.time()
        self._skew = skew if abs(skew) > 2 else 0.0


_sources: weakref.WeakSet[TokenSource] = weakref.WeakSet()
_PRINTABLE: Final = re.compile(r"[\x21-\x7e]+")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
MAX_TOKEN_LENGTH: Final = 8192
DEFAULT_LIFETIME: Final = 3600.0
"""Seconds a token is kept when the response gives no ``expires_in`` (RFC 6749 §5.1)."""
MAX_LIFETIME: Final = 7 * 86400.0
"""A longer ``expires_in`` is cut to this: a revoked token is refreshed within a week."""


def _lifetime(value: object) -> float:
    """``expires_in`` as seconds; OAuthError for anything that is not a positive number."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise OAuthError(f"the token response's expires_in is a {type(value).__name__}")
    try:
        seconds = float(value)
    except ValueError:
        raise OAuthError("the token response's expires_in is not a number") from None
    if not seconds > 0 or seconds == float("inf"):  # NaN fails the comparison
        raise OAuthError(f"the token response's expires_in must be positive and finite: {seconds}")
    return min(seconds, MAX_LIFETIME)


def clean(text: str, limit: int = 300) -> str:
    """Server-supplied text made safe to print: control characters removed, clipped."""
    text = _CONTROL.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _after_fork() -> None:
    for source in list(_sources):
        source.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def _urlencode(fields: dict[str, str]) -> str:
    from urllib.parse import urlencode  # only OAuth users pay for urllib.parse

    return urlencode(fields)


def _describe_refusal(response: Response) -> str:
    detail = ""
    try:
        payload = json.loads(response.body)
        detail = ": " + ": ".join(
            str(payload[k]) for k in ("error", "error_description") if payload.get(k)
        )
    except (ValueError, TypeError, AttributeError, RecursionError):
        pass
    return f"the auth server refused the token request (HTTP {response.status}){detail}"
