"""``Analytics``: the client facade.  The six calls, flush and close, deadlines and holds.

A call builds, validates and encodes its message (raising at the call site for programmer
errors), runs middleware, and hands it to the :class:`~lambda_analytics.engine.Engine`,
which decides when to send (``queue``), how to retry (``delivery``) and sends
(``transport``).  Delivery failures come back as values (``CallResult``, ``FlushResult``)
and go to the hooks; they are never raised into the caller.  No thread is started.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from . import lifecycle
from .calls import Calls
from .engine import Engine
from .errors import ClientClosedError
from .events import Hooks, Listening
from .messages import JSONDict, build_message, check_wire, encode_message, utc_text
from .outcome import ErrorHook, report, safely
from .queue import Item, MessageCallback
from .results import CallResult, FlushResult, RequestInfo, Stats
from .retry import RetryPolicy
from .route import Route, build_route
from .scope import Middleware, Scope, scopes
from .settings import REGIONS, Settings, check_seconds, resolve
from .transport import Transport

if TYPE_CHECKING:
    from .oauth import OAuthSettings

__all__ = ["REGIONS", "Analytics", "ErrorHook", "MessageCallback", "Middleware"]


class Analytics(Calls, Listening):
    """A synchronous client for a Segment-compatible ``/v1/batch`` endpoint.

    With the default ``flush_at=1`` every call is delivered before it returns.  Raise
    ``flush_at`` to batch (up to 2,500 messages and 500 KB a request); then call
    :meth:`flush` or :meth:`close` before the process or invocation ends.  Each setting left
    out (``None``) is read from ``ANALYTICS_<NAME>``, else takes its default; the resolved
    :attr:`settings` never change.  Safe to share between threads and tasks; a forked child
    starts with an empty queue and fresh connections.
    """

    def __init__(
        self,
        write_key: str | None = None,
        *,
        host: str | None = None,
        region: str | None = None,
        path: str | None = None,
        flush_at: int | None = None,
        flush_interval: float | None = None,
        max_queue_size: int | None = None,
        gzip: bool | None = None,
        timeout: float | None = None,
        connect_timeout: float | None = None,
        exit_timeout: float | None = None,
        retry: RetryPolicy | None = None,
        max_retries: int | None = None,
        on_error: ErrorHook | None = None,
        on_request: Callable[[RequestInfo], None] | None = None,
        on_call_after_close: Callable[[JSONDict], None] | None = None,
        disable: bool | None = None,
        transport: Transport | None = None,
        proxy: str | None = None,
        verify: bool | None = None,
        ca_certs: str | None = None,
        oauth: OAuthSettings | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_max_bytes: int | None = None,
    ) -> None:
        arguments = dict(locals())
        settings = resolve(arguments)
        self._settings = settings
        route = Route(None)
        if not settings.disable:
            route = build_route(settings, transport, oauth)
        elif oauth is not None:  # a disabled client's key is checked too: it will be enabled
            from .oauth import check_settings, load_private_key

            check_settings(oauth)
            load_private_key(oauth.private_key)
        self._engine = Engine(settings, route, Hooks(on_error, on_request, on_call_after_close))
        self._middleware: tuple[Middleware, ...] = ()
        self._closed = False
        self._scopes = scopes()
        lifecycle.register(self)

    def __repr__(self) -> str:
        return (
            f"Analytics(url={self.url!r}, flush_at={self.flush_at}, "
            f"queued={len(self._engine.queue)}, closed={self._closed}, write_key=<redacted>)"
        )

    # -- flushing ---------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> FlushResult:
        """Send everything queued; return within ``timeout`` seconds (and any active deadline).

        Retries and their backoff sleeps stay inside the deadline; what cannot be sent in
        time is reported as failed (``on_error``, callbacks, and the result), never raised.
        ``timeout=0`` sends nothing and reports everything.
        """
        check_seconds("timeout", timeout)
        scope = self._scopes.get()
        outcome = self._engine.flush(scope.deadline_after(timeout), self._take_held(scope))
        report(outcome, self._engine.hooks)
        return outcome.result()

    def close(self, timeout: float | None = None) -> FlushResult:
        """Flush, then refuse new calls: they are reported to ``on_call_after_close``, not sent.

        Without ``timeout``, the flush takes at most ``exit_timeout`` seconds (5 by default).
        """
        self._closed = True
        result = self.flush(self._settings.exit_timeout if timeout is None else timeout)
        transport = self._engine.route.transport
        if transport is not None:
            transport.close()
        return result

    def __enter__(self) -> Analytics:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def deadline(self, seconds: float | None) -> Iterator[None]:
        """Within this block every send, retry and backoff ends within ``seconds`` from now.

        Blocks nest; the earliest deadline wins.  ``None`` adds no limit.  The block belongs
        to the current thread or asyncio task: concurrent requests keep their own.
        """
        check_seconds("seconds", seconds)
        with self.invocation(seconds=seconds):
            yield

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Within this block calls are queued, not sent: the next :meth:`flush` sends them.

        Only ``max_queue_size`` still sends early; the flush splits at the protocol limits.
        ``with_analytics(batch=True)`` uses this so an invocation costs one request.  Calls
        held by another thread or task are theirs to flush; anything still held when the block
        ends joins the client's queue.
        """
        with self.invocation(hold=True):
            yield

    @contextlib.contextmanager
    def invocation(
        self,
        *,
        seconds: float | None = None,
        hold: bool = False,
        middleware: tuple[Middleware, ...] = (),
        new_id: Callable[[], str] | None = None,
    ) -> Iterator[None]:
        """One request's settings, for platform adapters (``with_analytics`` uses it).

        Inside the block: a deadline ``seconds`` from now, calls held when ``hold``, extra
        ``middleware`` after the client's, and message ids from ``new_id``.  It belongs to
        the current thread or asyncio task, and nests like :meth:`deadline` and :meth:`hold`.
        """
        current = self._scopes.get()
        scope = current.inner(seconds=seconds, hold=hold, middleware=middleware, new_id=new_id)
        token = self._scopes.set(scope)
        try:
            yield
        finally:
            self._scopes.reset(token)
            if scope.held is not None and current.held is None:  # not flushed: never lost
                held = self._take_held(scope)
                engine = self._engine
                with engine.lock:
                    engine.queue.extend(held)

    def release_held(self) -> Callable[[float | None], FlushResult]:
        """Take the calls held so far in this ``hold()`` block; return ``send(timeout)``.

        For delivery after a response (``web``'s middleware, a Worker's ``waitUntil``): the
        block may end, and ``send`` runs later, in another thread or task, delivering these
        calls (and only these) within ``timeout`` seconds.  Call ``send`` exactly once.
        """
        scope = self._scopes.get()
        if scope.held is None:  # outside hold(), calls are not held: sending later loses them
            raise RuntimeError("release_held() is for use inside a hold() block")
        return self._engine.send_later(self._take_held(scope))

    @contextlib.contextmanager
    def use_transport(self, transport: Transport) -> Iterator[Analytics]:
        """Inside the block, send through ``transport``: no token, no spool, even if disabled.

        For tests (``lambda_analytics.testing`` uses it).  When the block ends, what is queued
        is flushed into ``transport`` and the client's own transport is put back.
        """
        engine = self._engine
        with engine.lock:
            previous, engine.route = engine.route, Route(transport)
        try:
            yield self
        finally:
            try:
                self.flush()
            finally:
                with engine.lock:
                    engine.route = previous

    # -- middleware, settings and introspection -------------------------------------------

    def add_middleware(self, middleware: Middleware) -> None:
        """Run ``middleware(message)`` on every message before it is queued.

        It returns the message (changed or not), or ``None`` to drop it.  Middleware runs in
        the order it was added, on a copy of the wire-format dict (``userId``,
        ``properties``...); what it returns is checked like a built message, and a message it
        breaks raises ValidationError at the call, naming it.
        """
        with self._engine.lock:
            self._middleware = (*self._middleware, middleware)

    def remove_middleware(self, middleware: Middleware) -> None:
        """Stop running ``middleware``; a ValueError if it was not added."""
        with self._engine.lock:
            chain = list(self._middleware)
            chain.remove(middleware)
            self._middleware = tuple(chain)

    @property
    def _hooks(self) -> Hooks:
        return self._engine.hooks

    @property
    def settings(self) -> Settings:
        """The settings this client was built with (immutable)."""
        return self._settings

    url = property(lambda self: self._settings.url, doc="Where batches are POSTed.")
    flush_at = property(lambda self: self._settings.flush_at)
    flush_interval = property(lambda self: self._settings.flush_interval)
    max_queue_size = property(lambda self: self._settings.max_queue_size)
    gzip = property(lambda self: self._settings.gzip)
    retry = property(lambda self: self._settings.retry)
    disable = property(lambda self: self._settings.disable)

    on_error = property(
        lambda self: self._engine.hooks.on_error,
        lambda self, hook: setattr(self._engine.hooks, "on_error", hook),
        doc="``on_error(error, messages)``: called with messages that could not be delivered.",
    )
    on_request = property(
        lambda self: self._engine.hooks.on_request,
        lambda self, hook: setattr(self._engine.hooks, "on_request", hook),
        doc="``on_request(info)``: called after every HTTP attempt (``RequestInfo``).",
    )
    on_call_after_close = property(
        lambda self: self._engine.hooks.on_call_after_close,
        lambda self, hook: setattr(self._engine.hooks, "on_call_after_close", hook),
        doc="``on_call_after_close(message)``: called for calls made after close().",
    )

    @property
    def stats(self) -> Stats:
        """Counters of what this client sent, failed, dropped and queued."""
        engine = self._engine
        with engine.lock:
            flight = engine.in_flight
            flying = 0 if flight is None else len(flight.items)
            return Stats(**engine.counts, queued=len(engine.queue) + flying)

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    # -- internals --------------------------------------------------------------------------

    def _call(
        self,
        kind: str,
        fields: Mapping[str, object],
        user_id: object,
        anonymous_id: object,
        context: object,
        timestamp: object,
        integrations: object,
        message_id: object,
        callback: MessageCallback | None,
    ) -> CallResult:
        scope = self._scopes.get()
        message = build_message(
            kind,
            fields,
            user_id=user_id,
            anonymous_id=anonymous_id,
            context=context,
            integrations=integrations,
            timestamp=timestamp,
            message_id=message_id,
            now=utc_text(time.time()),
            new_id=scope.new_id,
        )
        data = encode_message(message)
        if self._middleware or scope.middleware or self._engine.hooks.plugins:
            changed = self._run_middleware(data, scope)
            if changed is None:
                return CallResult(message["messageId"], dropped=True)
            message, data = changed
        mid: str = message["messageId"]
        engine = self._engine
        if self._closed:
            return self._after_close(mid, message, callback)
        if engine.route.transport is None:  # disabled: validated and counted, never sent
            with engine.lock:
                engine.counts["disabled"] += 1
            return CallResult(mid)
        item = Item(data, callback, time.monotonic(), mid)
        if scope.held is not None:
            return self._hold(item, scope)
        outcome, included = engine.submit(item, scope.deadline)
        if outcome is None:
            return CallResult(mid, queued=True)
        report(outcome, engine.hooks)
        if not included or outcome.is_pending(item):
            return CallResult(mid, queued=True)
        error = outcome.error_for(item)
        return CallResult(mid, delivered=error is None, error=error)

    def _run_middleware(self, data: bytes, scope: Scope) -> tuple[JSONDict, bytes] | None:
        """Middleware on a wire-format copy: it may change anything, callers' dicts stay."""
        copy: JSONDict = json.loads(data)
        chain: tuple[Callable[[JSONDict], object], ...] = (
            *self._engine.hooks.before_queueing,
            *self._middleware,
            *scope.middleware,
        )
        for middleware in chain:
            changed = middleware(copy)
            if changed is None:
                with self._engine.lock:
                    self._engine.counts["dropped"] += 1
                return None
            name = getattr(middleware, "name", None) or getattr(
                middleware, "__qualname__", repr(middleware)
            )
            copy = check_wire(changed, f"middleware {name}")
        return copy, encode_message(copy)

    def _hold(self, item: Item, scope: Scope) -> CallResult:
        held = scope.held
        assert held is not None
        with self._engine.lock:
            held.append(item)
            full = len(held) >= self._settings.max_queue_size
        if not full:
            return CallResult(item.message_id, queued=True)
        outcome = self._engine.flush(scope.deadline, self._take_held(scope))
        report(outcome, self._engine.hooks)
        error = outcome.error_for(item)
        return CallResult(item.message_id, delivered=error is None, error=error)

    def _flush_at_exit(self, deadline: float) -> int:
        """Flush for a process that is ending; the number not delivered (the caller logs it)."""
        outcome = self._engine.flush(deadline, self._take_held(self._scopes.get()))
        report(outcome, self._engine.hooks, log=False)
        return outcome.failed_count()

    def _take_held(self, scope: Scope) -> list[Item]:
        if not scope.held:
            return []
        with self._engine.lock:
            held = list(scope.held)
            scope.held.clear()
        return held

    def _after_close(
        self, mid: str, message: JSONDict, callback: MessageCallback | None
    ) -> CallResult:
        error = ClientClosedError("the client is closed: this call was not sent")
        engine = self._engine
        with engine.lock:
            engine.counts["after_close"] += 1
        engine.hooks.call_after_close(message, error)
        if callback is not None:
            safely(callback, error, message)
        return CallResult(mid, error=error)
