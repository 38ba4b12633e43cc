"""The delivery engine: takes batches off the queue under a lock and sends them outside it.

It composes the pure parts (``queue`` says when, ``batching`` cuts within the limits,
``delivery`` retries) with the I/O parts (``transport``, ``oauth``, ``spool``).  Locks guard
state, never I/O, sleeps, token fetches or hooks.  Every message a flush takes off the queue
ends as sent, reported or spooled, whatever is raised on the way (:meth:`Engine.flush`'s
backstop); the client reports the :class:`~lambda_analytics.outcome.Outcome` outside the lock.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final

from . import batching, delivery
from ._version import __version__
from .errors import (
    DeadlineExceededError,
    DeliveryError,
    HTTPStatusError,
    OAuthError,
    SpoolError,
    TransportError,
)
from .events import Hooks, safely
from .messages import utc_text
from .outcome import Outcome, report
from .queue import Item, MessageQueue
from .results import FlushResult, RequestInfo, Response
from .route import Route
from .transport import Pending, Pipelining, guarded

if TYPE_CHECKING:
    from .oauth import TokenSource
    from .settings import Settings

logger = logging.getLogger("lambda_analytics")

USER_AGENT: Final = f"lambda_analytics/{__version__}"


class _Flight:
    """A batch sent and left in flight; the next flush reads its response."""

    __slots__ = ("body_bytes", "headers", "items", "pending", "route")

    def __init__(
        self,
        pending: Pending,
        items: list[Item],
        route: Route,
        headers: Mapping[str, str],
        body_bytes: int,
    ) -> None:
        self.pending, self.items, self.route = pending, items, route
        self.headers, self.body_bytes = headers, body_bytes


class Engine:
    """Queue, in-flight batch and counters of one client, behind one short-held lock."""

    def __init__(self, settings: Settings, route: Route, hooks: Hooks) -> None:
        self.settings = settings
        self.route = route
        self.hooks = hooks
        self.envelope = batching.Envelope(settings.write_key or None)
        self.queue = MessageQueue(
            self.envelope,
            flush_at=settings.flush_at,
            flush_interval=settings.flush_interval,
            max_queue_size=settings.max_queue_size,
        )
        self.lock = threading.Lock()
        self.in_flight: _Flight | None = None
        self.counts = {"sent": 0, "failed": 0, "dropped": 0, "disabled": 0, "after_close": 0}
        basic = base64.b64encode(f"{settings.write_key}:".encode()).decode()
        secrets = (basic, settings.write_key, *_proxy_secrets(settings))
        self._secrets = tuple(secret for secret in secrets if secret)
        self._headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        self._headers["Authorization"] = "Basic " + basic
        if settings.gzip:
            self._headers["Content-Encoding"] = "gzip"

    # -- taking work under the lock ------------------------------------------------------------

    def submit(self, item: Item, deadline: float | None) -> tuple[Outcome | None, bool]:
        """Queue ``item`` and send what is due; the flush's outcome, and whether it had ``item``.

        What would overflow a batch (or ``max_queue_size``) beside ``item`` is sent first, so
        nothing is dropped; a full batch of a batch job is left in flight (pipelined).
        """
        queue = self.queue
        with self.lock:
            earlier = queue.take() if queue.must_flush_before(len(item.data)) else []
            queue.add(item)
            full = queue.full()
            mine = queue.take() if queue.due(item.enqueued_at) else []
            if not earlier and not mine:
                return None, False
            flight = self._take_flight()
            route = self.route
        pipeline = self.settings.flush_at > 1 and (full or not mine)
        return self.run(earlier + mine, deadline, route, flight, pipeline), bool(mine)

    def flush(self, deadline: float | None, extra: list[Item] | None = None) -> Outcome:
        """Send everything queued, the batch in flight and ``extra`` (held calls)."""
        with self.lock:
            items = self.queue.take()
            flight = self._take_flight()
            route = self.route
        if extra:
            items.extend(extra)
        return self.run(items, deadline, route, flight, pipeline=False)

    def send_later(self, items: list[Item]) -> Callable[[float | None], FlushResult]:
        """``send(timeout)``: deliver ``items`` alone (one request's held calls) and report."""

        def send(timeout: float | None = None) -> FlushResult:
            deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
            with self.lock:
                route = self.route
            outcome = self.run(items, deadline, route, None, pipeline=False)
            report(outcome, self.hooks)
            return outcome.result()

        return send

    def _take_flight(self) -> _Flight | None:
        flight, self.in_flight = self.in_flight, None
        return flight

    # -- sending outside the lock ---------------------------------------------------------------

    def run(
        self,
        items: list[Item],
        deadline: float | None,
        route: Route,
        flight: _Flight | None,
        pipeline: bool,
    ) -> Outcome:
        """Deliver ``flight`` and ``items``; each ends in the outcome, whatever is raised."""
        outcome = Outcome()
        try:
            if flight is not None:
                outcome.settle(flight.items, self._settle(flight, deadline))
            self._send_all(items, deadline, route, pipeline, outcome)
        except BaseException as exc:
            # The backstop: messages taken off the queue are reported, never dropped.
            everything = items if flight is None else flight.items + items
            outcome.backstop(everything, exc)
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt, SystemExit: after the accounting
        finally:
            with self.lock:
                self.counts["sent"] += len(outcome.sent)
                self.counts["failed"] += outcome.failed_count()
        return outcome

    def _send_all(
        self, items: list[Item], deadline: float | None, route: Route, pipeline: bool,
        outcome: Outcome,
    ) -> None:  # fmt: skip
        spool = route.spool
        claimed = None if spool is None else spool.claim()
        if claimed is not None:
            # What earlier flushes could not deliver goes first.
            items = [Item(data) for data in claimed.messages] + items
            for problem in claimed.problems:  # a file set aside, a directory refused...
                outcome.fail(SpoolError(problem), [])
        if items and route.transport is None:  # disabled: validated and counted, not sent
            outcome.settle(items, None)
        elif items:
            spans = batching.split([len(i.data) for i in items], self.envelope)
            for index, span in enumerate(spans):
                chunk = items[span.start : span.stop]
                flight = None
                if pipeline and route.pipelining and index == len(spans) - 1:
                    flight = self._begin(chunk, deadline, route)
                if flight is None:
                    outcome.settle(chunk, self._send(chunk, deadline, route))
                    continue
                with self.lock:
                    stored = self.in_flight is None
                    if stored:
                        self.in_flight = flight
                if stored:
                    outcome.pending.extend(chunk)
                else:  # another thread left one in flight meanwhile: read this answer now
                    outcome.settle(chunk, self._settle(flight, deadline))
        if spool is not None and claimed is not None:
            outcome.spool_transient(spool, self._transient)
            for problem in spool.release(claimed):  # the spool's methods never raise
                outcome.fail(SpoolError(problem), [])

    def _send(
        self, chunk: list[Item], deadline: float | None, route: Route,
        under_way: Callable[[float | None], Response] | None = None,
        sent: tuple[Mapping[str, str], int] = ({}, 0),
    ) -> DeliveryError | None:  # fmt: skip
        """Deliver one batch with retries inside the deadline; the error if it failed."""
        transport = route.transport
        assert transport is not None
        messages = [item.data for item in chunk]
        last = [sent]  # what the attempt being observed sent: headers and body size

        def send(attempt: delivery.Attempt) -> Response:
            body, headers = self._request(messages, attempt.previous, route, deadline)
            last[0] = (headers, len(body))
            url, left = self.settings.url, attempt.timeout
            return guarded(lambda: transport.send(url, body, headers, left), self.redact)

        def observe(
            attempt: delivery.Attempt, response: Response | None, error: DeliveryError | None
        ) -> None:
            headers, size = last[0]
            self._observe(attempt, len(chunk), headers, size, response, error)

        result = delivery.deliver(
            send,
            policy=self.settings.retry,
            deadline=deadline,
            judge=self._judge,
            observe=observe,
            refresh=None if route.tokens is None else _refresher(route.tokens),
            under_way=under_way,
        )
        return result if isinstance(result, DeliveryError) else None

    def _begin(self, chunk: list[Item], deadline: float | None, route: Route) -> _Flight | None:
        """Send ``chunk`` now, its response to be read later; ``None`` to send it the usual way."""
        transport = route.transport
        assert isinstance(transport, Pipelining)
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left < self.settings.retry.min_attempt_time:
            return None
        try:
            body, headers = self._request([i.data for i in chunk], 0, route, deadline)
            pending = transport.begin(self.settings.url, body, headers, left)
        except Exception:
            return None  # the usual path then reports what goes wrong, with retries
        return _Flight(pending, chunk, route, headers, len(body))

    def _settle(self, flight: _Flight, deadline: float | None) -> DeliveryError | None:
        pending = flight.pending

        def under_way(left: float | None) -> Response:
            return guarded(lambda: pending.finish(left), self.redact)

        return self._send(
            flight.items, deadline, flight.route, under_way, (flight.headers, flight.body_bytes)
        )

    def _request(
        self, messages: list[bytes], previous: int, route: Route, deadline: float | None
    ) -> tuple[bytes, dict[str, str]]:
        # sentAt is the clock at each attempt: the server corrects timestamps with it.
        body = self.envelope.encode(messages, utc_text(time.time()), gzip=self.settings.gzip)
        headers = dict(self._headers)
        if previous:
            headers["X-Retry-Count"] = str(previous)
        if route.tokens is not None:
            headers["Authorization"] = route.tokens.authorization(deadline)  # OAuthError
        return body, headers

    def _judge(self, response: Response) -> DeliveryError | None:
        if 200 <= response.status < 300:
            return None
        # Redact before cutting: a key straddling the cut would otherwise show its prefix.
        reason = self.redact(response.body.decode("utf-8", "replace")).strip()[:300]
        if 300 <= response.status < 400:
            location = response.headers.get("location", "?")
            reason = f"redirect to {location} not followed"
        return HTTPStatusError(response.status, self.redact(reason))

    def _transient(self, error: DeliveryError) -> bool:
        if isinstance(error, HTTPStatusError):
            return self.settings.retry.is_retryable(error.status)
        return isinstance(error, (DeadlineExceededError, TransportError, OAuthError))

    def redact(self, text: str) -> str:
        """``text`` without the write key (plain or Basic-encoded) or the access token."""
        for secret in self._secrets:
            text = text.replace(secret, "<redacted>")
        tokens = self.route.tokens
        return text if tokens is None else tokens.redact(text)

    def _observe(
        self,
        attempt: delivery.Attempt,
        count: int,
        headers: Mapping[str, str],
        body_bytes: int,
        response: Response | None,
        error: DeliveryError | None,
    ) -> None:
        duration = time.monotonic() - attempt.started
        status = None if response is None else response.status
        logger.debug(
            "POST %s: %d messages, %d bytes, attempt %d -> %s in %.1f ms",
            self.settings.url, count, body_bytes, attempt.number, status or error,
            duration * 1000,
        )  # fmt: skip
        hook = self.hooks.on_request
        if hook is None and not self.hooks.wants("http_request"):
            return
        info = RequestInfo(
            url=self.settings.url,
            headers={**headers, "Authorization": "<redacted>"},
            body_bytes=body_bytes,
            message_count=count,
            attempt=attempt.number,
            duration=duration,
            status=status,
            response_headers={}
            if response is None
            else {str(k): self.redact(str(v)) for k, v in response.headers.items()},
            error=error,
        )
        if hook is not None:
            safely(hook, info)
        self.hooks.emit("http_request", info)

    def reset_connections(self) -> None:
        """Close pooled connections; the next request opens new ones."""
        transport = self.route.transport
        if transport is not None:
            transport.reset()

    def after_fork(self) -> None:
        """In a forked child: a lock nobody holds, nothing queued, connections of its own.

        The parent still holds (and will send) what was queued and in flight.
        """
        self.lock = threading.Lock()
        self.queue.clear()
        self.in_flight = None
        if self.route.transport is not None:
            self.route.transport.reset()


def _refresher(tokens: TokenSource) -> Callable[[Response], bool]:
    def refresh(response: Response) -> bool:
        if response.status not in (401, 403):
            return False
        # The token may have been revoked or expired early: one fresh token, one resend.
        tokens.invalidate()
        return True

    return refresh


def _proxy_secrets(settings: Settings) -> tuple[str, ...]:
    from .settings import proxy_credentials

    credentials = proxy_credentials(settings.proxy)
    if credentials is None or not credentials[1]:
        return ()
    basic = base64.b64encode(":".join(credentials).encode()).decode()
    return (basic, credentials[1])
