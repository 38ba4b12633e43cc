"""The transport's socket-level helpers: a total deadline per attempt, and what failed.

A socket timeout bounds one ``recv``; a server that sends a byte every 0.3 s never trips it.
So the transport's connections wrap their socket in :class:`DeadlineSocket`, which sets the
timeout before every operation to what is left of the attempt (the :class:`Limits` in force
in this thread or task, set by :func:`within`), and refuses to start one once it has passed.
The status line, the headers (``http.client`` reads them through ``makefile``), ``100
Continue`` streams and the body are all covered.  Standard library only: the urllib3 classes
are built from the module the transport hands over.
"""

from __future__ import annotations

import contextvars
import io
import re
import socket
import sys
import time
from typing import Any, Final

_CURRENT: contextvars.ContextVar[Limits | None] = contextvars.ContextVar(
    "lambda_analytics_attempt", default=None
)


class Limits:
    """One attempt: when it must end, and whether it went out on a reused connection."""

    __slots__ = ("deadline", "reused")

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.reused = False


def limits_for(timeout: float | None) -> Limits:
    """Limits for an attempt that must end ``timeout`` seconds from now (``None``: never)."""
    return Limits(None if timeout is None else time.monotonic() + max(timeout, 0.0))


class within:
    """Make ``limits`` the ones in force for the socket operations inside the block."""

    __slots__ = ("_limits", "_token")

    def __init__(self, limits: Limits) -> None:
        self._limits = limits

    def __enter__(self) -> Limits:
        self._token = _CURRENT.set(self._limits)
        return self._limits

    def __exit__(self, *exc_info: object) -> None:
        _CURRENT.reset(self._token)


def _arm(owner: DeadlineSocket) -> None:
    """Set the wrapped socket's timeout for the next operation, or raise if time is up."""
    limits = _CURRENT.get()
    deadline = None if limits is None else limits.deadline
    value = owner._timeout
    if deadline is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the attempt's deadline has passed")
        if value is None or left < value:
            value = left
    if value != owner._armed:  # settimeout costs system calls: only when it changes
        owner._sock.settimeout(value)
        owner._armed = value


class DeadlineSocket:
    """A connected socket whose every operation ends by the current attempt's deadline.

    ``settimeout`` keeps its meaning (the longest wait for one operation); the deadline can
    only shorten it.  Everything else is the wrapped socket's.
    """

    __slots__ = ("_armed", "_sock", "_timeout")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._timeout = sock.gettimeout()
        self._armed = self._timeout

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def settimeout(self, value: float | None) -> None:
        self._timeout = value

    def gettimeout(self) -> float | None:
        return self._timeout

    def recv(self, size: int, *flags: int) -> bytes:
        _arm(self)
        return self._sock.recv(size, *flags)

    def recv_into(self, buffer: Any, *args: int) -> int:
        _arm(self)
        return self._sock.recv_into(buffer, *args)

    def send(self, data: Any, *flags: int) -> int:
        _arm(self)
        return self._sock.send(data, *flags)

    def sendall(self, data: Any, *flags: int) -> None:
        if type(self._sock) is socket.socket:  # its sendall's timeout bounds the whole call
            _arm(self)
            self._sock.sendall(data, *flags)
            return
        # A TLS socket's sendall waits up to the timeout per chunk: a loop of armed sends.
        view = memoryview(data).cast("B")
        while view:
            _arm(self)
            view = view[self._sock.send(view, *flags) :]

    def makefile(self, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if mode != "rb":  # http.client reads responses with "rb"; nothing else is wrapped
            return self._sock.makefile(mode, *args, **kwargs)  # type: ignore[call-overload]
        # The socket's own raw file keeps its reference counting (a response can outlive
        # conn.close() on "Connection: close"); reads are armed before they start.
        raw = self._sock.makefile("rb", buffering=0)
        return io.BufferedReader(_DeadlineReader(raw, self))


class _DeadlineReader(io.RawIOBase):
    def __init__(self, raw: Any, owner: DeadlineSocket) -> None:
        self._raw = raw
        self._owner = owner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        _arm(self._owner)
        result: int | None = self._raw.readinto(buffer)
        return result

    def fileno(self) -> int:
        number: int = self._raw.fileno()
        return number

    def close(self) -> None:
        self._raw.close()
        super().close()


def describe(exc: BaseException) -> str:
    """What went wrong, first in words a user troubleshooting "no events" can act on."""
    chain = _chain(exc)
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        summary = "connection refused (is the host and port right, is the server up?)"
    elif any(isinstance(e, socket.gaierror) for e in chain):
        summary = "unknown host (the name did not resolve)"
    elif any(type(e).__name__.startswith(("SSL", "Certificate")) for e in chain):
        summary = "TLS failed"  # by name: ssl is not imported here (Pyodide has none)
    elif any(isinstance(e, (socket.timeout, TimeoutError)) for e in chain) or any(
        type(e).__name__ in ("ReadTimeoutError", "ConnectTimeoutError") for e in chain
    ):
        summary = "timed out"
    elif dropped(exc):
        summary = "connection closed by the server"
    else:
        summary = "request failed"
    # urllib3's and http.client's messages name the host, never headers; a user's may not
    # (the boundary redacts).  urllib3 1.26 puts the connection's repr in: noise, dropped.
    text = " ".join(_OBJECT_AT.sub("", str(exc)).split())
    return f"{summary}: {type(exc).__name__}: {text}"


_OBJECT_AT: Final = re.compile(r"<[^<>]*(?:<locals>[^<>]*)? object at 0x[0-9a-fA-F]+>:?\s*")


def dropped(exc: BaseException) -> bool:
    """True when the other end closed or reset the connection (nothing was answered)."""
    for cause in _chain(exc):
        if isinstance(cause, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
            return True
        if type(cause).__name__ == "RemoteDisconnected":
            return True
    return False


def _chain(exc: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and len(found) < 8 and cause not in found:  # chains can loop
        found.append(cause)
        nested = next((a for a in cause.args if isinstance(a, BaseException)), None)
        # urllib3 1.26 wraps the cause as ProtocolError("Connection aborted.", cause).
        cause = cause.__cause__ or cause.__context__ or nested
    return found


_made: dict[int, dict[str, Any]] = {}


def pool_classes(urllib3: Any) -> dict[str, Any]:
    """urllib3 pool classes whose connections use :class:`DeadlineSocket` (1.26 and 2.x).

    Each connection also records, in the current :class:`Limits`, whether a request went out
    on a connection that had carried one before (only such a one can be stale).  Made once.
    """
    made = _made.get(id(urllib3))
    if made is None:
        made = _made[id(urllib3)] = _pool_classes(urllib3)
    return dict(made)


def _pool_classes(urllib3: Any) -> dict[str, Any]:

    if sys.platform == "emscripten":  # Pyodide: urllib3 sends through fetch, with no socket
        return dict(urllib3.PoolManager().pool_classes_by_scheme)

    class Deadlines:
        _requests_sent = 0

        def connect(self) -> None:
            super().connect()  # type: ignore[misc]
            if isinstance(self.sock, socket.socket):  # type: ignore[has-type]
                self.sock = DeadlineSocket(self.sock)  # type: ignore[has-type]

        def request(self, *args: Any, **kwargs: Any) -> Any:
            limits = _CURRENT.get()
            if limits is not None:
                limits.reused = self._requests_sent > 0 and self.sock is not None
            self._requests_sent += 1
            return super().request(*args, **kwargs)  # type: ignore[misc]

    class HTTPConnection(Deadlines, urllib3.connection.HTTPConnection):  # type: ignore[misc]
        pass

    class HTTPSConnection(Deadlines, urllib3.connection.HTTPSConnection):  # type: ignore[misc]
        pass

    class HTTPConnectionPool(urllib3.HTTPConnectionPool):  # type: ignore[misc]
        ConnectionCls = HTTPConnection

    class HTTPSConnectionPool(urllib3.HTTPSConnectionPool):  # type: ignore[misc]
        ConnectionCls = HTTPSConnection

    for cls in (HTTPConnection, HTTPSConnection, HTTPConnectionPool, HTTPSConnectionPool):
        cls.__qualname__ = cls.__name__  # error messages show the name, not pool_classes.<locals>
    return {"http": HTTPConnectionPool, "https": HTTPSConnectionPool}
