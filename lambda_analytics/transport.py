"""The only module that speaks HTTP: a :class:`Transport` protocol and its urllib3 implementation.

urllib3 is imported when the first :class:`Urllib3Transport` is built, not when the package is
imported.  Its errors are translated to :class:`~lambda_analytics.errors.TransportError`; its
own retry and redirect handling is off, because the client's retry policy decides.  Replace this
module's class by passing ``transport=`` to ``Analytics`` (a proxy, a test double, a runtime's
own fetch) without touching the rest.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from .errors import TransportError
from .results import Response

if TYPE_CHECKING:
    import urllib3


class Transport(Protocol):
    """Sends one POST.  Raises TransportError when no response arrived; never retries."""

    def send(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float | None
    ) -> Response:
        """POST ``body``; ``timeout`` caps connect and read (the time left before a deadline)."""
        ...

    def reset(self) -> None:
        """Drop pooled connections (after a fork or before a snapshot)."""
        ...

    def close(self) -> None:
        """Release every resource."""
        ...


class Urllib3Transport:
    """A keep-alive urllib3 ``PoolManager`` (or ``ProxyManager``), safe to share between threads.

    Works with urllib3 1.26 and 2.x.  A child process after ``os.fork()`` gets a fresh pool;
    connections idle longer than ``max_idle`` seconds are dropped before the next request, since
    the server or a NAT has likely closed them while the function was frozen.
    """

    def __init__(
        self,
        *,
        connect_timeout: float = 3.0,
        read_timeout: float = 10.0,
        proxy: str | None = None,
        verify: bool = True,
        ca_certs: str | None = None,
        max_idle: float = 50.0,
        pool_maxsize: int = 4,
    ) -> None:
        import urllib3

        self._urllib3 = urllib3
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._pool_args: dict[str, Any] = {
            "num_pools": 4,
            "maxsize": pool_maxsize,
            "cert_reqs": "CERT_REQUIRED" if verify else "CERT_NONE",
        }
        if ca_certs is not None:
            self._pool_args["ca_certs"] = ca_certs
        self._proxy = proxy
        self._max_idle = max_idle
        self._pool = self._new_pool()
        self._pid = os.getpid()
        self._orphans: list[urllib3.PoolManager] = []
        self._last_used = time.monotonic()

    def __repr__(self) -> str:
        return f"Urllib3Transport(proxy={'set' if self._proxy else None})"

    def _new_pool(self) -> urllib3.PoolManager:
        if self._proxy:
            return self._urllib3.ProxyManager(self._proxy, **self._pool_args)
        return self._urllib3.PoolManager(**self._pool_args)

    def send(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float | None
    ) -> Response:
        """POST once; a pooled connection found dead is replaced and the request sent again."""
        limits = self._prepare(timeout)
        exceptions = self._urllib3.exceptions
        for stale_retry in (False, True):
            try:
                response = self._pool.request(
                    "POST",
                    url,
                    body=body,
                    headers=dict(headers),
                    timeout=limits,
                    retries=False,
                    redirect=False,
                    preload_content=True,
                )
            except exceptions.ProtocolError as exc:
                # A keep-alive connection closed by the other end while we were frozen fails
                # like this before the server saw anything: one immediate resend, not a retry.
                if not stale_retry and _is_dropped_connection(exc):
                    continue
                raise TransportError(f"connection failed: {_describe(exc)}") from exc
            except exceptions.TimeoutError as exc:
                raise TransportError(f"timed out: {_describe(exc)}") from exc
            except (exceptions.HTTPError, OSError) as exc:
                raise TransportError(f"request failed: {_describe(exc)}") from exc
            return _response(response.status, response.headers, response.data)
        raise AssertionError("unreachable")  # pragma: no cover

    def begin(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float | None
    ) -> Callable[[], Response]:
        """Send the request now; the returned function waits for its response.

        Lets a batch job build its next batch while the server reads this one, with no
        thread: the request sits in the socket until ``finish()``.  urllib3 has no public
        call for this, so it drives a pooled connection itself (urllib3 1.26 and 2.x); behind
        a proxy it falls back to :meth:`send`.  Errors surface from ``finish()``.
        """
        if self._proxy:
            return settled(lambda: self.send(url, body, headers, timeout))
        limits = self._prepare(timeout)
        pool = self._pool.connection_from_url(url)
        path = self._urllib3.util.parse_url(url).request_uri
        conn: Any = pool._get_conn()  # typed as Any: the attributes differ in 1.26 and 2.x
        try:
            conn.timeout = limits.connect_timeout
            conn.request("POST", path, body=body, headers=dict(headers))
        except (self._urllib3.exceptions.HTTPError, OSError):
            conn.close()
            pool._put_conn(conn)
            return settled(lambda: self.send(url, body, headers, timeout))

        def finish() -> Response:
            try:
                if conn.sock is not None:
                    conn.sock.settimeout(limits.read_timeout)
                raw = conn.getresponse()
                data = raw.data if hasattr(raw, "data") else raw.read()  # 2.x : 1.26
                return _response(raw.status, raw.headers, data)
            except (self._urllib3.exceptions.HTTPError, OSError) as exc:
                conn.close()
                if _is_dropped_connection(exc):  # a stale pooled connection: resend at once
                    return self.send(url, body, headers, timeout)
                raise TransportError(f"request failed: {_describe(exc)}") from exc
            finally:
                pool._put_conn(conn)

        return finish

    def _prepare(self, timeout: float | None) -> urllib3.Timeout:
        if os.getpid() != self._pid:
            self._leave_parents_pool()
        now = time.monotonic()
        if now - self._last_used > self._max_idle:
            self._pool.clear()
        self._last_used = now
        connect, read = self._connect_timeout, self._read_timeout
        if timeout is not None:
            connect, read = min(connect, timeout), min(read, timeout)
        return self._urllib3.Timeout(connect=max(connect, 0.001), read=max(read, 0.001))

    def reset(self) -> None:
        """Close every pooled connection; the next request opens a new one."""
        if os.getpid() != self._pid:
            self._leave_parents_pool()
            return
        self._pool.clear()

    def _leave_parents_pool(self) -> None:
        # In a forked child, the parent's pool may have been locked by another thread at the
        # moment of fork: clear() (or its finalizers, on garbage collection) would wait forever.
        # Keep it untouched and referenced; its sockets are the parent's, never used here.
        self._orphans.append(self._pool)
        self._pool, self._pid = self._new_pool(), os.getpid()

    def close(self) -> None:
        """Close every pooled connection."""
        self._pool.clear()


def _response(status: int, headers: Mapping[str, str], body: bytes | None) -> Response:
    return Response(status, {k.lower(): v for k, v in headers.items()}, body or b"")


def settled(send: Callable[[], Response]) -> Callable[[], Response]:
    """A ``finish()`` for a request sent synchronously: its outcome, at finish time."""
    try:
        response = send()
    except TransportError as exc:
        error = exc

        def fail() -> Response:
            raise error

        return fail
    return lambda: response


def _is_dropped_connection(exc: BaseException) -> bool:
    cause: BaseException | None = exc
    for _ in range(8):  # exception chains can loop; a few links are enough
        if cause is None:
            return False
        if isinstance(cause, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
            return True
        if type(cause).__name__ == "RemoteDisconnected":
            return True
        cause = cause.__cause__ or cause.__context__ or _first_arg_exception(cause)
    return False


def _first_arg_exception(exc: BaseException) -> BaseException | None:
    # urllib3 1.26 wraps the cause as ProtocolError("Connection aborted.", cause).
    for arg in exc.args:
        if isinstance(arg, BaseException) and arg is not exc:
            return arg
    return None


def _describe(exc: BaseException) -> str:
    # urllib3's messages name the host and port, never headers, so they hold no credentials.
    return f"{type(exc).__name__}: {exc}"
