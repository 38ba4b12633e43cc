"""How bytes reach the network: the Transport protocol, urllib3, and the exception boundary.

:class:`Transport` is what a client sends through; :class:`Urllib3Transport` is the default
(the only code that imports urllib3, on first use); :func:`guarded` turns anything a send
raises into a ``DeliveryError``.  urllib3's retries and redirects are off: ``delivery``
decides.  Sockets are wrapped (``_sockets``) so that sending, the status line, the headers
and the body all end by the attempt's deadline; a response body is read up to a small cap.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

from ._sockets import Limits, describe, dropped, limits_for, within
from .errors import DeliveryError, StaleConnectionError, TransportError
from .results import Response

if TYPE_CHECKING:
    import urllib3

ERROR_BODY_CAP: Final = 8_192
"""Bytes of an error response kept (the reason shown is 300 characters of it)."""
BODY_CAP: Final = 65_536
"""Bytes of a 2xx response kept: enough for any access token response."""


class Transport(Protocol):
    """Sends one POST and returns the response; never retries.

    ``timeout`` is the time left for this attempt (``None``: no deadline): connect, send and
    the whole response should end within it.  Any exception it raises is caught by the client
    and reported with the messages; it never reaches the caller.
    """

    def send(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float | None
    ) -> Response:
        """POST ``body`` to ``url`` once."""
        ...

    def reset(self) -> None:
        """Drop pooled connections (after a fork or before a snapshot)."""
        ...

    def close(self) -> None:
        """Release every resource."""
        ...


class Pending(Protocol):
    """A request already sent whose response has not been read yet."""

    def finish(self, timeout: float | None) -> Response:
        """Read the response, within ``timeout`` seconds from now."""
        ...

    def abandon(self) -> None:
        """Give up on the response and close its connection."""
        ...


@runtime_checkable
class Pipelining(Protocol):
    """A transport that can send now and read the response later, with no thread.

    A batch job then builds its next batch while the server reads this one.
    """

    def begin(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float | None
    ) -> Pending:
        """Send the request; errors surface from :meth:`Pending.finish`."""
        ...


def guarded(call: Callable[[], object], redact: Callable[[str], str]) -> Response:
    """Run one send; return its Response or raise a TransportError with a redacted reason.

    The one boundary between the network (urllib3, ``http.client``, a user's own transport,
    header validation) and the engine: whatever is raised becomes a DeliveryError, printable
    and free of secrets.  The original exception is not chained, because its text may hold a
    header value (a token), but its type and message are kept, redacted.
    """
    try:
        response = call()
    except TransportError as exc:
        kind = StaleConnectionError if isinstance(exc, StaleConnectionError) else TransportError
        raise kind(redact(str(exc))) from None
    except DeliveryError as exc:
        raise TransportError(redact(f"transport raised {type(exc).__name__}: {exc}")) from None
    except Exception as exc:
        raise TransportError(redact(describe(exc))) from None
    if not isinstance(response, tuple) or not isinstance(getattr(response, "status", None), int):
        raise TransportError(f"transport returned {type(response).__name__}, not a Response")
    status, headers, body = response
    if not isinstance(headers, Mapping) or not isinstance(body, (bytes, bytearray)):
        raise TransportError("transport returned a Response without headers or bytes")
    return Response(status, headers, bytes(body))


class Urllib3Transport:
    """A keep-alive urllib3 ``PoolManager`` (or ``ProxyManager``), safe to share between threads.

    Works with urllib3 1.26 and 2.x.  ``read_timeout`` bounds each wait for the server; the
    ``timeout`` given to :meth:`send` bounds the whole attempt, which never takes longer than
    ``connect_timeout + read_timeout`` in any case.  A child process after
    ``os.fork()`` gets a fresh pool; connections idle longer than ``max_idle`` seconds are
    dropped before the next request, since the server or a NAT has likely closed them while
    the function was frozen.
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
        pool_maxsize: int = 10,
    ) -> None:
        import urllib3

        from ._sockets import pool_classes

        self._urllib3 = urllib3
        self._v2 = not str(getattr(urllib3, "__version__", "2")).startswith("1.")
        self._pool_classes = pool_classes(urllib3)
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
            from .settings import proxy_credentials

            # urllib3 does not turn a proxy URL's user:password into Proxy-Authorization.
            credentials = proxy_credentials(self._proxy)
            url, headers = self._proxy, None
            if credentials is not None:
                url = self._urllib3.util.parse_url(self._proxy)._replace(auth=None).url
                headers = self._urllib3.make_headers(proxy_basic_auth=":".join(credentials))
            manager: urllib3.PoolManager = self._urllib3.ProxyManager(
                url, proxy_headers=headers, **self._pool_args
            )
        else:
            manager = self._urllib3.PoolManager(**self._pool_args)
        # A documented attribute of PoolManager: its pools make our deadline-bound connections.
        manager.pool_classes_by_scheme = self._pool_classes
        return manager

    def send(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float | None
    ) -> Response:
        """POST once, within ``timeout`` seconds in all.

        Raises StaleConnectionError when a reused keep-alive connection turns out closed (the
        caller resends at once), or the underlying error for anything else.
        """
        limits = self._start(timeout)
        with within(limits):
            try:
                response = self._pool.request(
                    "POST",
                    url,
                    body=body,
                    headers=dict(headers),
                    timeout=self._timeout(timeout),
                    retries=False,
                    redirect=False,
                    preload_content=False,
                )
            except Exception as exc:
                if limits.reused and dropped(exc):
                    raise StaleConnectionError(f"reused connection was closed: {exc}") from exc
                raise
            try:
                status = response.status
                data = response.read(_cap(status) + 1, decode_content=False)
                if len(data) > _cap(status):  # not read to the end: the connection is unusable
                    response.close()
            except BaseException:
                response.close()
                raise
            finally:
                response.release_conn()  # a closed connection goes back as closed: reopened
        return _response(status, response.headers, data)

    def begin(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float | None
    ) -> Pending:
        """Send the request now on a pooled connection; :meth:`Pending.finish` reads it.

        urllib3 has no public call that sends without waiting, so this drives a pooled
        connection with the pool's ``_get_conn``/``_put_conn`` (the same in 1.26 and 2.x).
        Behind a proxy it sends synchronously.
        """
        if self._proxy:
            return _Settled(lambda: self.send(url, body, headers, timeout))
        limits = self._start(timeout)
        pool = self._pool.connection_from_url(url)
        path = self._urllib3.util.parse_url(url).request_uri
        conn: Any = pool._get_conn()  # Any: its attributes differ between 1.26 and 2.x
        with within(limits):
            try:
                conn.timeout = self._timeout(timeout).connect_timeout
                options = {"preload_content": False, "decode_content": False} if self._v2 else {}
                conn.request("POST", path, body=body, headers=dict(headers), **options)
            except Exception as exc:
                conn.close()
                pool._put_conn(conn)
                stale = limits.reused and dropped(exc)
                error: Exception = StaleConnectionError(f"reused connection was closed: {exc}")
                return _Settled(_raiser(error if stale else exc))
        return _InFlight(self, pool, conn, limits.reused)

    def _finish(self, pool: Any, conn: Any, reused: bool, timeout: float | None) -> Response:
        limits = limits_for(self._attempt_time(timeout))
        with within(limits):
            try:
                conn.timeout = self._read_timeout
                if conn.sock is not None:
                    conn.sock.settimeout(self._read_timeout)  # not the connect timeout
                raw = conn.getresponse()
                status = raw.status
                cap = _cap(status)
                data = raw.read(cap + 1, decode_content=False) if self._v2 else raw.read(cap + 1)
                if len(data) > cap:  # not read to the end: the connection is unusable
                    conn.close()
                return _response(status, raw.headers, data)
            except Exception as exc:
                conn.close()
                if reused and dropped(exc):
                    raise StaleConnectionError(f"reused connection was closed: {exc}") from exc
                raise
            finally:
                pool._put_conn(conn)

    def _start(self, timeout: float | None) -> Limits:
        if os.getpid() != self._pid:
            self._leave_parents_pool()
        now = time.monotonic()
        if now - self._last_used > self._max_idle:
            self._pool.clear()
        self._last_used = now
        return limits_for(self._attempt_time(timeout))

    def _attempt_time(self, timeout: float | None) -> float:
        # Without a deadline an attempt still ends: a server dribbling a byte per read timeout
        # must not hold it forever.  Connecting plus one read timeout is the most it may take.
        most = self._connect_timeout + self._read_timeout
        return most if timeout is None else min(timeout, most)

    def _timeout(self, timeout: float | None) -> urllib3.Timeout:
        connect = self._connect_timeout if timeout is None else min(self._connect_timeout, timeout)
        # The read timeout bounds each wait; the deadline socket bounds the attempt as a whole.
        return self._urllib3.Timeout(connect=max(connect, 0.001), read=self._read_timeout)

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


class _InFlight:
    __slots__ = ("_conn", "_done", "_pool", "_reused", "_transport")

    def __init__(self, transport: Urllib3Transport, pool: Any, conn: Any, reused: bool) -> None:
        self._transport, self._pool, self._conn, self._reused = transport, pool, conn, reused
        self._done = False

    def finish(self, timeout: float | None) -> Response:
        if self._done:
            raise TransportError("response already read")
        self._done = True
        return self._transport._finish(self._pool, self._conn, self._reused, timeout)

    def abandon(self) -> None:
        if not self._done:
            self._done = True
            self._conn.close()
            self._pool._put_conn(self._conn)


class _Settled:
    """A :class:`Pending` for a request sent synchronously: its outcome, kept for finish()."""

    __slots__ = ("_error", "_response")

    def __init__(self, send: Callable[[], Response]) -> None:
        self._response: Response | None = None
        self._error: Exception | None = None
        try:
            self._response = send()
        except Exception as exc:  # surfaces from finish(), through the boundary
            self._error = exc

    def finish(self, timeout: float | None) -> Response:
        if self._error is not None:
            raise self._error
        assert self._response is not None
        return self._response

    def abandon(self) -> None:
        """Nothing left open."""


def _raiser(error: Exception) -> Callable[[], Response]:
    def fail() -> Response:
        raise error

    return fail


def _cap(status: int) -> int:
    return BODY_CAP if 200 <= status < 300 else ERROR_BODY_CAP


def _response(status: int, headers: Mapping[str, str], body: bytes | None) -> Response:
    kept = (body or b"")[: _cap(status)]
    return Response(status, {k.lower(): v for k, v in headers.items()}, kept)
