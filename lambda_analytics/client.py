"""``Analytics``: the client.  It composes the pure core with a transport; it starts no thread.

A call builds and validates its message (raising at the call site for programmer errors),
queues its encoded bytes and, when ``flush_at`` messages are queued (1 by default), sends them
before returning.  Delivery failures come back as values (``CallResult``, ``FlushResult``) and
go to the hooks; they are never raised into the caller.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import datetime as _dt
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from . import batching
from ._version import __version__
from .errors import (
    ClientClosedError,
    ConfigurationError,
    DeadlineExceededError,
    DeliveryError,
    HTTPStatusError,
    InvalidTypeError,
    OAuthError,
    SpoolError,
    TransportError,
)
from .messages import JSONDict, build_message, encode_message, utc_text
from .results import CallResult, FlushResult, RequestInfo, Response, Stats
from .retry import RetryPolicy
from .transport import Transport, Urllib3Transport, settled

if TYPE_CHECKING:
    from .oauth import OAuthSettings, TokenSource
    from .spool import Spool

logger = logging.getLogger("lambda_analytics")

REGIONS: Final[Mapping[str, str]] = {
    "us": "https://api.segment.io",
    "eu": "https://events.eu1.segmentapis.com",
}
USER_AGENT: Final = f"lambda_analytics/{__version__}"

Middleware = Callable[[JSONDict], "JSONDict | None"]
MessageCallback = Callable[["DeliveryError | None", JSONDict], None]
ErrorHook = Callable[[DeliveryError, list[JSONDict]], None]


class _Queued:
    __slots__ = ("callback", "data", "enqueued_at", "message_id")

    def __init__(
        self,
        data: bytes,
        callback: MessageCallback | None,
        enqueued_at: float,
        message_id: str = "",
    ) -> None:
        self.data = data
        self.callback = callback
        self.enqueued_at = enqueued_at
        self.message_id = message_id


class _Outcome:
    """What one flush did with each queued message, before it is reported."""

    def __init__(self) -> None:
        self.sent: list[_Queued] = []
        self.failures: list[tuple[DeliveryError, list[_Queued]]] = []
        self.spooled: list[tuple[DeliveryError, list[_Queued]]] = []
        self.pending: list[_Queued] = []
        """Sent, response not read yet (a pipelined batch): reported by the next flush."""

    def result(self) -> FlushResult:
        failed = [json.loads(item.data) for _, items in self.failures for item in items]
        return FlushResult(
            sent=len(self.sent),
            failed=len(failed),
            failed_messages=tuple(failed),
            errors=tuple(error for error, _ in self.failures),
            spooled=sum(len(items) for _, items in self.spooled),
        )

    def error_for(self, item: _Queued) -> DeliveryError | None:
        for error, items in self.failures + self.spooled:
            if any(i is item for i in items):
                return error
        return None


class _Attempt:
    """One HTTP attempt under way: what was sent, and how to get its response."""

    __slots__ = ("body_bytes", "finish", "headers", "started")

    def __init__(
        self,
        headers: Mapping[str, str],
        body_bytes: int,
        started: float,
        finish: Callable[[], Response],
    ) -> None:
        self.headers = headers
        self.body_bytes = body_bytes
        self.started = started
        self.finish = finish


class _Scope:
    """What the current invocation (thread or asyncio task) set on a client.

    Kept in a ContextVar, so concurrent requests sharing one module-level client (Cloud Run
    with concurrency, threads) each keep their own deadline, held calls, middleware and ids.
    """

    __slots__ = ("deadline", "held", "middleware", "new_id")

    def __init__(
        self,
        deadline: float | None = None,
        held: list[_Queued] | None = None,
        middleware: tuple[Middleware, ...] = (),
        new_id: Callable[[], str] | None = None,
    ) -> None:
        self.deadline = deadline
        self.held = held
        self.middleware = middleware
        self.new_id = new_id or _new_id


_clients: weakref.WeakSet[Analytics] = weakref.WeakSet()


class Analytics:
    """A synchronous client for a Segment-compatible ``/v1/batch`` endpoint.

    With the default ``flush_at=1`` every call is delivered before it returns.  Raise
    ``flush_at`` to batch (up to 2,500 messages and 500 KB a request); then call
    :meth:`flush` or :meth:`close` before the process or invocation ends.  Safe to share
    between threads; a forked child starts with an empty queue and fresh connections.
    """

    def __init__(
        self,
        write_key: str | None = None,
        *,
        host: str | None = None,
        region: str = "us",
        path: str = "/v1/batch",
        flush_at: int = 1,
        flush_interval: float = 10.0,
        max_queue_size: int = 10_000,
        gzip: bool = False,
        timeout: float = 10.0,
        connect_timeout: float = 3.0,
        retry: RetryPolicy | None = None,
        on_error: ErrorHook | None = None,
        on_request: Callable[[RequestInfo], None] | None = None,
        on_call_after_close: Callable[[JSONDict], None] | None = None,
        disable: bool = False,
        transport: Transport | None = None,
        proxy: str | None = None,
        verify: bool = True,
        ca_certs: str | None = None,
        oauth: OAuthSettings | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_max_bytes: int = 50_000_000,
    ) -> None:
        if not write_key and not disable:
            raise ConfigurationError("write_key is required (or pass disable=True)")
        if write_key is not None and not isinstance(write_key, str):
            raise ConfigurationError("write_key must be a string")
        if region not in REGIONS:
            raise ConfigurationError(f"region must be one of {', '.join(REGIONS)}: {region!r}")
        if flush_at < 1 or max_queue_size < 1:
            raise ConfigurationError("flush_at and max_queue_size must be at least 1")
        if flush_interval <= 0 or timeout <= 0 or connect_timeout <= 0:
            raise ConfigurationError("flush_interval and timeouts must be positive")
        self._write_key = write_key or ""
        base = (host or REGIONS[region]).rstrip("/")
        if "://" not in base:
            base = "https://" + base
        self.url: str = base + "/" + path.lstrip("/")
        """Where batches are POSTed."""
        self.flush_at = min(flush_at, batching.MAX_BATCH_MESSAGES)
        self.flush_interval = flush_interval
        self.max_queue_size = max_queue_size
        self.gzip = gzip
        self.retry = retry or RetryPolicy()
        self.disable = disable
        self.on_error = on_error
        self.on_request = on_request
        self.on_call_after_close = on_call_after_close
        self._envelope = batching.Envelope(write_key or None)
        self._headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if oauth is None:
            basic = base64.b64encode(f"{self._write_key}:".encode()).decode()
            self._headers["Authorization"] = "Basic " + basic
        if gzip:
            self._headers["Content-Encoding"] = "gzip"
        if transport is None and not disable:
            transport = Urllib3Transport(
                read_timeout=timeout,
                connect_timeout=connect_timeout,
                proxy=proxy,
                verify=verify,
                ca_certs=ca_certs,
            )
        self._transport = transport
        self._tokens: TokenSource | None = None
        if oauth is not None and transport is not None:
            from .oauth import TokenSource  # OAuth users only: it brings pyjwt and cryptography

            self._tokens = TokenSource(
                oauth, region=region, transport=transport, retry=self.retry, random=_random
            )
        self._spool: Spool | None = None
        if spool_dir is not None and not disable:
            from .spool import Spool  # pathlib and friends: only for those who spool

            self._spool = Spool(spool_dir, max_bytes=spool_max_bytes)
        self._middleware: list[Middleware] = []
        self._lock = threading.RLock()
        self._queue: list[_Queued] = []
        self._queued_bytes = 0
        self._closed = False
        # The default scope is never changed (held is None): each block sets a new one.
        self._in_flight: tuple[_Attempt, list[_Queued]] | None = None
        self._scopes = contextvars.ContextVar("lambda_analytics_scope", default=_ROOT)
        self._counts = {"sent": 0, "failed": 0, "dropped": 0, "disabled": 0, "after_close": 0}
        _clients.add(self)

    def __repr__(self) -> str:
        return (
            f"Analytics(url={self.url!r}, flush_at={self.flush_at}, "
            f"queued={len(self._queue)}, closed={self._closed}, write_key=<redacted>)"
        )

    # -- the six calls ----------------------------------------------------------------------

    def identify(
        self,
        *,
        user_id: str | int | None = None,
        anonymous_id: str | int | None = None,
        traits: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        timestamp: _dt.datetime | None = None,
        integrations: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        callback: MessageCallback | None = None,
    ) -> CallResult:
        """Tie a user to their traits (``plan``, ``email``...)."""
        return self._call(
            "identify", {"traits": traits}, user_id, anonymous_id, context, timestamp,
            integrations, message_id, callback,
        )  # fmt: skip

    def track(
        self,
        *,
        event: str,
        user_id: str | int | None = None,
        anonymous_id: str | int | None = None,
        properties: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        timestamp: _dt.datetime | None = None,
        integrations: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        callback: MessageCallback | None = None,
    ) -> CallResult:
        """Record that a user did something (``event``, e.g. ``"Order Completed"``)."""
        return self._call(
            "track", {"event": event, "properties": properties}, user_id, anonymous_id,
            context, timestamp, integrations, message_id, callback,
        )  # fmt: skip

    def page(
        self,
        *,
        user_id: str | int | None = None,
        anonymous_id: str | int | None = None,
        name: str | None = None,
        category: str | None = None,
        properties: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        timestamp: _dt.datetime | None = None,
        integrations: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        callback: MessageCallback | None = None,
    ) -> CallResult:
        """Record a page view of a website."""
        return self._call(
            "page", {"name": name, "category": category, "properties": properties}, user_id,
            anonymous_id, context, timestamp, integrations, message_id, callback,
        )  # fmt: skip

    def screen(
        self,
        *,
        user_id: str | int | None = None,
        anonymous_id: str | int | None = None,
        name: str | None = None,
        category: str | None = None,
        properties: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        timestamp: _dt.datetime | None = None,
        integrations: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        callback: MessageCallback | None = None,
    ) -> CallResult:
        """Record a screen view of a mobile or desktop app."""
        return self._call(
            "screen", {"name": name, "category": category, "properties": properties}, user_id,
            anonymous_id, context, timestamp, integrations, message_id, callback,
        )  # fmt: skip

    def group(
        self,
        *,
        group_id: str | int,
        user_id: str | int | None = None,
        anonymous_id: str | int | None = None,
        traits: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        timestamp: _dt.datetime | None = None,
        integrations: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        callback: MessageCallback | None = None,
    ) -> CallResult:
        """Associate a user with a group (a company, an account), with the group's traits."""
        return self._call(
            "group", {"groupId": group_id, "traits": traits}, user_id, anonymous_id, context,
            timestamp, integrations, message_id, callback,
        )  # fmt: skip

    def alias(
        self,
        *,
        user_id: str | int,
        previous_id: str | int,
        context: Mapping[str, Any] | None = None,
        timestamp: _dt.datetime | None = None,
        integrations: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        callback: MessageCallback | None = None,
    ) -> CallResult:
        """Merge a previous identity (often an anonymous id) into ``user_id``."""
        return self._call(
            "alias", {"previousId": previous_id}, user_id, None, context, timestamp,
            integrations, message_id, callback,
        )  # fmt: skip

    # -- flushing ---------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> FlushResult:
        """Send everything queued; return within ``timeout`` seconds (and any active deadline).

        Retries and their backoff sleeps stay inside the deadline; what cannot be sent in
        time is reported as failed (``on_error``, callbacks, and the result), never raised.
        """
        held = self._scopes.get().held
        with self._lock:
            outcome = self._flush_locked(self._deadline_after(timeout), held)
        self._report(outcome)
        return outcome.result()

    def close(self, timeout: float | None = None) -> FlushResult:
        """Flush, then refuse new calls: they are reported to ``on_call_after_close``, not sent."""
        held = self._scopes.get().held
        with self._lock:
            outcome = self._flush_locked(self._deadline_after(timeout), held)
            self._closed = True
            if self._transport is not None:
                self._transport.close()
        self._report(outcome)
        return outcome.result()

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
        with self._scoped(seconds=seconds):
            yield

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Within this block calls are queued, not sent: the next :meth:`flush` sends them.

        Only ``max_queue_size`` still sends early; the flush splits at the protocol limits.
        ``with_analytics(batch=True)`` uses this so an invocation costs one request.  Calls
        held by another thread or task are theirs to flush; anything still held when the block
        ends joins the client's queue.
        """
        with self._scoped(hold=True):
            yield

    @contextlib.contextmanager
    def _scoped(
        self,
        *,
        seconds: float | None = None,
        hold: bool = False,
        middleware: tuple[Middleware, ...] = (),
        new_id: Callable[[], str] | None = None,
    ) -> Iterator[None]:
        current = self._scopes.get()
        held = [] if hold and current.held is None else current.held
        scope = _Scope(
            self._deadline_after(seconds),
            held,
            current.middleware + middleware,
            new_id or current.new_id,
        )
        token = self._scopes.set(scope)
        try:
            yield
        finally:
            self._scopes.reset(token)
            if held and current.held is None:  # not flushed inside the block: never lost
                with self._lock:
                    self._queue.extend(held)
                    self._queued_bytes += sum(len(item.data) for item in held)
                    held.clear()

    # -- middleware and introspection -------------------------------------------------------

    def add_middleware(self, middleware: Middleware) -> None:
        """Run ``middleware(message)`` on every message before it is queued.

        It returns the message (changed or not), or ``None`` to drop it.  Middleware runs in
        the order it was added, on the wire-format dict (``userId``, ``properties``...).
        """
        with self._lock:
            self._middleware.append(middleware)

    def remove_middleware(self, middleware: Middleware) -> None:
        """Stop running ``middleware``; a ValueError if it was not added."""
        with self._lock:
            self._middleware.remove(middleware)

    @property
    def stats(self) -> Stats:
        """Counters of what this client sent, failed, dropped and queued."""
        with self._lock:
            flying = 0 if self._in_flight is None else len(self._in_flight[1])
            return Stats(**self._counts, queued=len(self._queue) + flying)

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
        if self._middleware or scope.middleware:
            changed = self._run_middleware(message, data, scope)
            if changed is None:
                return CallResult(message["messageId"], dropped=True)
            message, data = changed
        mid: str = message["messageId"]
        if self._closed:
            return self._after_close(mid, json.loads(data), callback)
        if self.disable:
            with self._lock:
                self._counts["disabled"] += 1
            return CallResult(mid)

        now = time.monotonic()
        item = _Queued(data, callback, now, mid)
        if scope.held is not None:
            return self._hold(item, scope)
        earlier = mine = None
        with self._lock:
            queue = self._queue
            if queue and (
                len(queue) >= self.max_queue_size
                or self._envelope.size(len(queue) + 1, self._queued_bytes + len(data))
                > batching.MAX_BATCH_BYTES
            ):
                # Send what is queued first rather than drop anything or overfill a batch.
                earlier = self._flush_locked(scope.deadline, pipeline=self.flush_at > 1)
                queue = self._queue
            queue.append(item)
            self._queued_bytes += len(data)
            full = len(queue) >= self.flush_at
            if full or now - queue[0].enqueued_at >= self.flush_interval:
                # A full batch in a batch job is pipelined; flush_at=1 and the interval are not.
                mine = self._flush_locked(scope.deadline, pipeline=full and self.flush_at > 1)
        if earlier is not None:
            self._report(earlier)
        if mine is None:
            return CallResult(mid, queued=True)
        self._report(mine)
        if any(pending is item for pending in mine.pending):
            return CallResult(mid, queued=True)
        error = mine.error_for(item)
        return CallResult(mid, delivered=error is None, error=error)

    def _run_middleware(
        self, message: JSONDict, data: bytes, scope: _Scope
    ) -> tuple[JSONDict, bytes] | None:
        """Middleware on a wire-format deep copy: it may change anything, callers' dicts stay."""
        copy: JSONDict = json.loads(data)
        for middleware in (*self._middleware, *scope.middleware):
            changed = middleware(copy)
            if changed is None:
                with self._lock:
                    self._counts["dropped"] += 1
                return None
            if not isinstance(changed, dict):
                raise InvalidTypeError("middleware", f"returned a {type(changed).__name__}")
            copy = changed
        return copy, encode_message(copy)

    def _hold(self, item: _Queued, scope: _Scope) -> CallResult:
        assert scope.held is not None
        outcome = None
        with self._lock:
            scope.held.append(item)
            if len(scope.held) >= self.max_queue_size:
                outcome = self._flush_locked(scope.deadline, scope.held)
        if outcome is None:
            return CallResult(item.message_id, queued=True)
        self._report(outcome)
        error = outcome.error_for(item)
        return CallResult(item.message_id, delivered=error is None, error=error)

    def _deadline_after(self, timeout: float | None) -> float | None:
        current = self._scopes.get().deadline
        if timeout is None:
            return current
        mine = time.monotonic() + timeout
        return mine if current is None else min(mine, current)

    def _flush_locked(
        self, deadline: float | None, held: list[_Queued] | None = None, *, pipeline: bool = False
    ) -> _Outcome:
        """Send what is queued (and ``held``).  With ``pipeline`` the last batch is left in
        flight, its response read by the next flush, so a batch job builds its next batch
        while the server reads this one."""
        outcome = _Outcome()
        self._settle(outcome, deadline)
        items, self._queue, self._queued_bytes = self._queue, [], 0
        if held:
            items = items + held
            held.clear()
        claimed = None if self._spool is None else self._spool.claim()
        if claimed is not None:
            # What earlier flushes could not deliver goes first.
            items = [_Queued(data, None, 0.0) for data in claimed.messages] + items
            for path in claimed.corrupt:
                unreadable = SpoolError(f"unreadable spool file set aside as {path}")
                outcome.failures.append((unreadable, []))
        if items and self._transport is None:  # disabled after messages were queued
            outcome.sent.extend(items)
        elif items:
            spans = batching.split([len(i.data) for i in items], self._envelope)
            # Not with a spool: its files are released when this flush ends.
            pipeline = pipeline and claimed is None
            for index, span in enumerate(spans):
                chunk = items[span.start : span.stop]
                if pipeline and index == len(spans) - 1:
                    started = self._start([i.data for i in chunk], deadline, 0, pipelined=True)
                    if isinstance(started, _Attempt):
                        self._in_flight = (started, chunk)
                        outcome.pending.extend(chunk)
                        continue
                    error: DeliveryError | None = started or _deadline_error(None)
                else:
                    error = self._send([i.data for i in chunk], deadline)
                if error is None:
                    outcome.sent.extend(chunk)
                else:
                    outcome.failures.append((error, chunk))
        if self._spool is not None and claimed is not None:
            self._spool_transient(self._spool, outcome)
            self._spool.release(claimed)
        self._counts["sent"] += len(outcome.sent)
        self._counts["failed"] += sum(len(items) for _, items in outcome.failures)
        return outcome

    def _settle(self, outcome: _Outcome, deadline: float | None) -> None:
        """Read the response of the batch left in flight (retrying it if need be)."""
        flight, self._in_flight = self._in_flight, None
        if flight is None:
            return
        attempt, chunk = flight
        error = self._send([i.data for i in chunk], deadline, first=attempt)
        if error is None:
            outcome.sent.extend(chunk)
        else:
            outcome.failures.append((error, chunk))

    def _spool_transient(self, spool: Spool, outcome: _Outcome) -> None:
        """Move failures that a later flush may deliver from ``failures`` to ``spooled``."""
        keep: list[tuple[DeliveryError, list[_Queued]]] = []
        for error, items in outcome.failures:
            if not items or not self._transient(error):
                keep.append((error, items))
                continue
            try:
                dropped = spool.write([i.data for i in items])
            except OSError as exc:
                keep.append((SpoolError(f"could not spool: {exc}"), items))
                continue
            mine = {item.data: item for item in items}
            lost = [mine.pop(data, _Queued(data, None, 0.0)) for data in dropped]
            if mine:
                outcome.spooled.append((error, list(mine.values())))
            if lost:
                full = SpoolError(f"spool over {spool.max_bytes} bytes: oldest messages dropped")
                keep.append((full, lost))
        outcome.failures = keep

    def _transient(self, error: DeliveryError) -> bool:
        if isinstance(error, HTTPStatusError):
            return self.retry.is_retryable(error.status)
        return isinstance(error, (DeadlineExceededError, TransportError, OAuthError))

    def _start(
        self, messages: Sequence[bytes], deadline: float | None, attempts: int, *, pipelined: bool
    ) -> _Attempt | DeliveryError | None:
        """Send one attempt; ``None`` when the deadline leaves no time, an error when no token."""
        assert self._transport is not None
        transport = self._transport
        now = time.monotonic()
        remaining = None if deadline is None else deadline - now
        if remaining is not None and remaining < self.retry.min_attempt_time:
            return None
        # sentAt is the clock at each attempt: the server corrects timestamps with it.
        body = self._envelope.encode(messages, utc_text(time.time()), gzip=self.gzip)
        headers = self._headers
        if attempts:
            headers = {**headers, "X-Retry-Count": str(attempts)}
        if self._tokens is not None:
            try:
                headers = {**headers, "Authorization": self._tokens.authorization(deadline)}
            except OAuthError as exc:
                return exc
        begin = getattr(transport, "begin", None) if pipelined else None
        if begin is not None:
            finish: Callable[[], Response] = begin(self.url, body, headers, remaining)
        else:
            finish = settled(lambda: transport.send(self.url, body, headers, remaining))
        return _Attempt(headers, len(body), now, finish)

    def _send(
        self, messages: Sequence[bytes], deadline: float | None, first: _Attempt | None = None
    ) -> DeliveryError | None:
        """Deliver one batch, retrying as the policy says; the error if it failed.

        ``first`` is an attempt already under way (a pipelined batch).
        """
        policy = self.retry
        attempts = 0 if first is None else 1
        attempt = first
        error: DeliveryError | None = None
        token_refreshed = False
        while True:
            if attempt is None:
                started = self._start(messages, deadline, attempts, pipelined=False)
                if not isinstance(started, _Attempt):
                    return started or _deadline_error(error)
                attempt, attempts = started, attempts + 1
            response: Response | None = None
            try:
                response = attempt.finish()
            except TransportError as exc:
                error = exc
            else:
                error = None if 200 <= response.status < 300 else self._status_error(response)
            self._observe(attempt, len(messages), attempts, response, error)
            attempt = None
            if error is None:
                return None
            if self._tokens is not None and not token_refreshed and _refused(response):
                # The token may have been revoked or expired early: one fresh token, one resend.
                self._tokens.invalidate()
                token_refreshed = True
                continue
            decision = policy.after(
                response, attempts=attempts, deadline=deadline, random=_random()
            )
            if not decision.retry:
                return _deadline_error(error) if decision.out_of_time else error
            logger.debug("retrying in %.3fs after: %s", decision.delay, error)
            time.sleep(decision.delay)

    def _status_error(self, response: Response) -> HTTPStatusError:
        # Redact before cutting: a key straddling the cut would otherwise show its prefix.
        window = response.body[:8192]  # enough for any secret that starts in the first 300
        reason = self._redact(window.decode("utf-8", "replace")).strip()[:300]
        if 300 <= response.status < 400:
            reason = f"redirect to {response.headers.get('location', '?')} not followed"
        return HTTPStatusError(response.status, self._redact(reason))

    def _redact(self, text: str) -> str:
        if self._write_key:
            basic = base64.b64encode(f"{self._write_key}:".encode()).decode()
            for secret in (basic, self._write_key):  # the Basic form is the key, encoded
                text = text.replace(secret, "<redacted>")
        return text if self._tokens is None else self._tokens.redact(text)

    def _observe(
        self,
        attempt: _Attempt,
        count: int,
        number: int,
        response: Response | None,
        error: DeliveryError | None,
    ) -> None:
        duration = time.monotonic() - attempt.started
        status = None if response is None else response.status
        logger.debug(
            "POST %s: %d messages, %d bytes, attempt %d -> %s in %.1f ms",
            self.url, count, attempt.body_bytes, number, status or error, duration * 1000,
        )  # fmt: skip
        hook = self.on_request
        if hook is None:
            return
        info = RequestInfo(
            url=self.url,
            headers={**attempt.headers, "Authorization": "<redacted>"},
            body_bytes=attempt.body_bytes,
            message_count=count,
            attempt=number,
            duration=duration,
            status=status,
            response_headers={}
            if response is None
            else {name: self._redact(value) for name, value in response.headers.items()},
            error=error,
        )
        _safely(hook, info)

    def _after_close(
        self, mid: str, message: JSONDict, callback: MessageCallback | None
    ) -> CallResult:
        error = ClientClosedError("the client is closed: this call was not sent")
        with self._lock:
            self._counts["after_close"] += 1
        if self.on_call_after_close is not None:
            _safely(self.on_call_after_close, message)
        else:
            logger.warning("call after close(): %s %s not sent", message["type"], mid)
            if self.on_error is not None:
                _safely(self.on_error, error, [message])
        if callback is not None:
            _safely(callback, error, message)
        return CallResult(mid, error=error)

    def _report(self, outcome: _Outcome) -> None:
        """Run callbacks and hooks outside the lock, so they may call the client again."""
        for item in outcome.sent:
            if item.callback is not None:
                _safely(item.callback, None, json.loads(item.data))
        for error, items in outcome.spooled:
            logger.info("%d messages spooled for the next flush: %s", len(items), error)
            for item in items:
                if item.callback is not None:
                    _safely(item.callback, error, json.loads(item.data))
        for error, items in outcome.failures:
            messages = [json.loads(item.data) for item in items]
            logger.warning("%d messages not delivered: %s", len(messages), error)
            if self.on_error is not None:
                _safely(self.on_error, error, messages)
            for item, message in zip(items, messages, strict=True):
                if item.callback is not None:
                    _safely(item.callback, error, message)

    def _after_fork(self) -> None:
        # The parent still holds (and will send) what was queued; the child starts empty,
        # with a lock nobody holds and connections of its own.
        self._lock = threading.RLock()
        self._queue, self._queued_bytes, self._in_flight = [], 0, None
        if self._transport is not None:
            self._transport.reset()


def _refused(response: Response | None) -> bool:
    return response is not None and response.status in (401, 403)


def _deadline_error(cause: DeliveryError | None) -> DeadlineExceededError:
    detail = f" (last attempt: {cause})" if cause is not None else ""
    error = DeadlineExceededError(f"the deadline left no time to send{detail}")
    error.__cause__ = cause
    return error


def _new_id() -> str:
    """A random (version 4) UUID string.

    Formatted here rather than with ``uuid.uuid4()``: importing ``uuid`` imports ``platform``
    on Linux, milliseconds of every cold start.  Same bits, same text.
    """
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_ROOT: Final = _Scope()


def _random() -> float:
    # os.urandom rather than the random module: nothing to reseed after a fork or a
    # SnapStart restore, and nothing drawn at import time (refused on Cloudflare Workers).
    return int.from_bytes(os.urandom(7), "big") / (1 << 56)


def _safely(hook: Callable[..., object], *args: Any) -> None:
    """Call a user hook; its exception is logged, never raised into the caller's code."""
    try:
        hook(*args)
    except Exception:
        logger.exception("lambda_analytics hook %r raised", hook)


def _reset_clients_after_fork() -> None:
    for client in list(_clients):
        client._after_fork()


def drop_all_connections() -> None:
    """Close the pooled connections of every live client (before a snapshot, after a restore)."""
    for client in list(_clients):
        if client._transport is not None:
            client._transport.reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_clients_after_fork)
