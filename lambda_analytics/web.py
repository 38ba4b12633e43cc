"""ASGI and WSGI middleware: each request's events go as one batch, after its response.

Wrap an application once::

    app.add_middleware(ASGIMiddleware, analytics=analytics)                # Starlette, FastAPI
    app.wsgi_app = WSGIMiddleware(app.wsgi_app, analytics=analytics)       # Flask

Every HTTP request then runs inside ``analytics.invocation(hold=True)``: its calls are held in
a scope of its own (a ContextVar, so concurrent requests never mix), and sent together when
the request is over, within ``timeout`` seconds of it:

* ASGI: when the application's call ends, that is after its final ``http.response.body`` was
  sent (Starlette's background tasks included), or when it raised.  The send runs in one of
  this module's :data:`FLUSH_THREADS` threads: the event loop is never blocked and the response
  never waits for it.  ``lifespan`` and ``websocket`` scopes pass through untouched.
* WSGI: when the server calls ``close()`` on the response iterable, after it wrote the body.
  The send runs there, in the server's worker thread, which is busy for up to ``timeout``
  seconds before it takes the next request.

Failures are reported as everywhere else (``on_error``, callbacks, the flush listeners), never
raised into the application.  Not for AWS Lambda (Mangum, the Lambda Web Adapter): the sandbox
freezes once the response is returned, so deliver before it with ``with_analytics(batch=True)``.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from types import TracebackType
from typing import Any, Final, Protocol, TypeAlias, cast

from .client import Analytics
from .results import FlushResult
from .settings import check_seconds

__all__ = [
    "FLUSH_THREADS",
    "ASGIApp",
    "ASGIMiddleware",
    "WSGIApp",
    "WSGIMiddleware",
    "wait_for_flushes",
]

logger = logging.getLogger("lambda_analytics")

FLUSH_THREADS: Final = 8
"""ASGI sends running at once in a process (within the transport's 10 pooled connections).

More wait their turn; one still waiting ``timeout`` seconds after its response is reported as
not delivered, so a tracking API slower than the traffic cannot grow an unbounded backlog.
"""

_Sender = Callable[[float | None], FlushResult]

# -- ASGI types (the spec's, as Starlette and uvicorn spell them) ----------------------------

ASGIScope: TypeAlias = MutableMapping[str, Any]
"""The connection scope: ``type`` (``http``, ``websocket``, ``lifespan``), path, headers..."""
ASGIMessage: TypeAlias = MutableMapping[str, Any]
"""One event received or sent: ``{"type": "http.response.body", "body": b"..."}``..."""
ASGIReceive: TypeAlias = Callable[[], Awaitable[ASGIMessage]]
"""Awaited by the application for the next event from the client."""
ASGISend: TypeAlias = Callable[[ASGIMessage], Awaitable[None]]
"""Awaited by the application to send an event to the client."""
ASGIApp: TypeAlias = Callable[[ASGIScope, ASGIReceive, ASGISend], Awaitable[None]]
"""An ASGI 3 application: ``await app(scope, receive, send)``."""

# -- WSGI types (PEP 3333, as typeshed spells them) ------------------------------------------

ExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType]
WSGIEnvironment: TypeAlias = dict[str, Any]
"""The request's ``environ``."""


class StartResponse(Protocol):
    """The server's ``start_response(status, headers, exc_info=None)``; returns ``write``."""

    def __call__(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: ExcInfo | tuple[None, None, None] | None = ...,
        /,
    ) -> Callable[[bytes], object]:
        """Begin the response."""
        ...


WSGIApp: TypeAlias = Callable[[WSGIEnvironment, StartResponse], Iterable[bytes]]
"""A WSGI application: ``app(environ, start_response)`` returns the body's chunks."""


def _client(analytics: Analytics | None) -> Analytics:
    if analytics is not None:
        return analytics
    from .default import get_client

    return get_client()


def _deliver(send: _Sender, timeout: float, since: float) -> None:
    """Send within what is left of ``timeout`` seconds after ``since``; never raises."""
    try:
        send(max(timeout - (time.monotonic() - since), 0.0))
    except Exception:  # send reports delivery failures itself: this is a bug, not a failure
        logger.exception("lambda_analytics: the flush after a response failed")


# -- ASGI ------------------------------------------------------------------------------------


class _Senders:
    """The threads that send after ASGI responses, and the sends not finished yet."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pool: ThreadPoolExecutor | None = None
        self.pending: set[Future[None]] = set()  # also what keeps each send referenced

    def submit(self, send: _Sender, timeout: float) -> None:
        since = time.monotonic()
        try:
            with self.lock:
                if self.pool is None:
                    self.pool = ThreadPoolExecutor(
                        max_workers=FLUSH_THREADS, thread_name_prefix="lambda_analytics-web"
                    )
                future = self.pool.submit(_deliver, send, timeout, since)
                self.pending.add(future)
        except RuntimeError:  # the interpreter is exiting: send here rather than lose them
            _deliver(send, timeout, since)
            return
        future.add_done_callback(self._done)

    def _done(self, future: Future[None]) -> None:
        with self.lock:
            self.pending.discard(future)

    def wait(self, timeout: float | None) -> bool:
        with self.lock:
            pending = list(self.pending)
        return not wait_for(pending, timeout).not_done

    def after_fork(self) -> None:
        # The parent's threads do not exist here; its sends are the parent's to finish.
        self.lock = threading.Lock()
        self.pool = None
        self.pending = set()


_senders = _Senders()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_senders.after_fork)


def wait_for_flushes(timeout: float | None = None) -> bool:
    """Wait until every send :class:`ASGIMiddleware` handed to its threads so far has ended.

    True when they all did, False if ``timeout`` seconds ran out first.  For tests (the
    response reaches a test client before its events reach the tracking API) and for a
    shutdown hook; at interpreter exit the threads finish their sends anyway.
    """
    check_seconds("timeout", timeout)
    return _senders.wait(timeout)


class ASGIMiddleware:
    """ASGI middleware: hold each HTTP request's calls, send them after its response.

    ``analytics=None`` uses the default client (``lambda_analytics.get_client()``), looked up
    at each request.  The request's calls go as one batch (split only at the protocol limits)
    when the application's call ends, in a background thread: the response never waits for
    the tracking API and the event loop is never blocked.  The send ends ``timeout`` seconds
    after the request at the latest; what it could not deliver goes to ``on_error``.
    Non-HTTP scopes (``lifespan``, ``websocket``) pass through untouched.
    """

    def __init__(
        self, app: ASGIApp, analytics: Analytics | None = None, timeout: float = 5.0
    ) -> None:
        check_seconds("timeout", timeout)
        self.app = app
        """The wrapped application."""
        self.analytics = analytics
        """The client, or ``None`` for the default one."""
        self.timeout = timeout
        """Seconds within which each request's send ends, counted from the response."""

    async def __call__(self, scope: ASGIScope, receive: ASGIReceive, send: ASGISend) -> None:
        """Serve one connection scope."""
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        client = _client(self.analytics)
        with client.invocation(hold=True):
            try:
                await self.app(scope, receive, send)
            finally:
                _senders.submit(client.release_held(), self.timeout)


# -- WSGI ------------------------------------------------------------------------------------


class _Request:
    """One WSGI request: its own copy of the context, holding its calls until close()."""

    __slots__ = ("client", "context", "done", "send", "stack", "timeout")

    def __init__(self, client: Analytics, timeout: float) -> None:
        self.client, self.timeout = client, timeout
        # The app, each next() of its body and close() run in this copy: the hold is the
        # request's own whichever thread the server uses, and never leaks into the thread's
        # context if the server forgets close().
        self.context = contextvars.copy_context()
        self.stack = contextlib.ExitStack()
        self.send: _Sender | None = None
        self.done = False

    def start(self, app: WSGIApp, environ: WSGIEnvironment, start: StartResponse) -> Any:
        self.stack.enter_context(self.client.invocation(hold=True))
        return app(environ, start)

    def finish(self, close: Callable[[], object] | None) -> None:
        """Close the app's body (``close``), then send its calls here, within the timeout."""
        if self.done:
            return
        self.done = True
        since = time.monotonic()
        try:
            self.context.run(self._end, close)
        finally:
            if self.send is not None:
                _deliver(self.send, self.timeout, since)

    def _end(self, close: Callable[[], object] | None) -> None:
        try:
            if close is not None:
                close()  # a generator's finally may still track: inside the hold
        finally:
            try:
                self.send = self.client.release_held()
            finally:
                self.stack.close()

    def abandon(self) -> None:
        """The server never called close(): the held calls join the client's queue."""
        if not self.done:
            self.done = True
            self.context.run(self.stack.close)
            logger.warning("lambda_analytics: a WSGI response was never closed; its events "
                           "were queued for the client's next flush")  # fmt: skip


class _Body:
    """The app's response iterable, iterated in the request's context; close() sends."""

    __slots__ = ("body", "iterator", "request")

    def __init__(self, body: Iterable[bytes], request: _Request) -> None:
        self.body, self.request = body, request
        self.iterator: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        run = self.request.context.run
        if self.iterator is None:
            self.iterator = run(iter, self.body)
        return run(next, self.iterator)

    def close(self) -> None:
        """Close the app's iterable, then send the request's events (up to ``timeout``)."""
        self.request.finish(getattr(self.body, "close", None))

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.request.abandon()


class _SizedBody(_Body):
    """A body whose length the server may read (waitress sets Content-Length from len 1)."""

    __slots__ = ()

    def __len__(self) -> int:
        return len(cast("list[bytes]", self.body))


class WSGIMiddleware:
    """WSGI middleware: hold each request's calls, send them when the server closes the body.

    ``analytics=None`` uses the default client, looked up at each request.  The request's
    calls (those made while the body is iterated and closed too) go as one batch when the
    server calls ``close()`` on the response, after it wrote the body; that send runs in the
    server's worker thread, which waits up to ``timeout`` seconds before its next request.
    (waitress writes the last chunk of a chunked, streamed response after ``close()``: such a
    response ends only after the send.)  If the application raises, its calls are sent
    before the exception goes on.
    """

    def __init__(
        self, app: WSGIApp, analytics: Analytics | None = None, timeout: float = 5.0
    ) -> None:
        check_seconds("timeout", timeout)
        self.app = app
        """The wrapped application."""
        self.analytics = analytics
        """The client, or ``None`` for the default one."""
        self.timeout = timeout
        """Seconds within which each request's send ends, counted from ``close()``."""

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Serve one request; the server must call ``close()`` on what this returns."""
        request = _Request(_client(self.analytics), self.timeout)
        try:
            body = request.context.run(request.start, self.app, environ, start_response)
        except BaseException:
            request.finish(None)
            raise
        return (_SizedBody if hasattr(body, "__len__") else _Body)(body, request)
