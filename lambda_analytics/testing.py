"""Test helpers: capture what your code sends, through the real pipeline, with no network.

Messages are built, validated, passed through middleware, encoded and wrapped in a batch
exactly as in production; only the last step differs: a :class:`CaptureTransport` decodes
each request and keeps its messages instead of POSTing them (and answers 200).

With pytest, installing lambda_analytics registers the ``analytics_events`` fixture (or load
it explicitly with ``pytest -p lambda_analytics.testing``)::

    import lambda_analytics
    import checkout                       # your module, with its own module-level client

    def test_checkout(analytics_events):
        analytics_events.attach(checkout.analytics)   # restored when the test ends
        checkout.handler({"user_id": "u1"}, None)
        analytics_events.assert_tracked("Order Completed", user_id="u1",
                                        properties={"revenue": 9.99})

    def test_signup(analytics_events):
        lambda_analytics.track(user_id="u1", event="Signed Up")   # the default client
        assert analytics_events.event_names == ["Signed Up"]

During the test the default client (``lambda_analytics.track``, bare ``@with_analytics``,
``get_client()``) sends to the capture, and so does every client you :meth:`attach
<EventCapture.attach>`. ``analytics_events.client`` is the default client, for code that takes
a client as an argument; ``Analytics(..., transport=analytics_events.transport)`` builds
another. Dicts given to the assertions match as subsets (``properties={"revenue": 9.99}``
ignores the other properties); a failed assertion lists every message that was captured.

Without pytest (unittest, scripts), the same object comes from a context manager::

    from lambda_analytics.testing import capture

    with capture(checkout.analytics) as events:
        checkout.handler({"user_id": "u1"}, None)
    events.assert_identified(user_id="u1", traits={"plan": "pro"})

    # unittest: in setUp()
    self.events = EventCapture().start()
    self.addCleanup(self.events.stop)
"""

from __future__ import annotations

import contextlib
import gzip
import json
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final

from . import default
from ._assertions import MAX_LISTED as MAX_LISTED  # noqa: PLC0414 - public here before the split
from ._assertions import CaptureAssertions, describe
from .client import Analytics
from .messages import JSONDict
from .results import Response

__all__ = [
    "CaptureTransport",
    "CapturedRequest",
    "EventCapture",
    "capture",
]

TEST_WRITE_KEY: Final = "test-write-key"
"""The write key of the default client installed during a capture."""


@dataclass(frozen=True)
class CapturedRequest:
    """One batch request the client made: where, with which headers, what it carried."""

    url: str
    headers: Mapping[str, str]
    """As sent, except ``Authorization``, which is redacted."""
    payload: JSONDict
    """The decoded envelope: ``batch``, ``sentAt``, ``writeKey``."""
    status: int
    """What the capture answered: 200, or the status given to ``fail_next``."""

    @property
    def messages(self) -> list[JSONDict]:
        """The messages of the batch, in wire format."""
        batch: list[JSONDict] = self.payload.get("batch", [])
        return batch


class CaptureTransport:
    """A :class:`~lambda_analytics.Transport` that keeps each batch instead of sending it.

    Answers 200, or the statuses scripted with :meth:`fail_next` (to test ``on_error`` and
    retries).  Thread-safe; ``close()`` keeps what was captured.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[CapturedRequest] = []
        self._faults: deque[list[int]] = deque()

    def __repr__(self) -> str:
        return f"CaptureTransport(requests={len(self._requests)})"

    def send(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float | None
    ) -> Response:
        """Decode the batch (gunzipping it if needed), record it and answer."""
        lowered = {name.lower(): value for name, value in headers.items()}
        if lowered.get("content-encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        payload = json.loads(body)
        shown = {
            name: "<redacted>" if name.lower() == "authorization" else value
            for name, value in headers.items()
        }
        with self._lock:
            status = 200
            if self._faults:
                status = self._faults[0][0]
                self._faults[0][1] -= 1
                if self._faults[0][1] == 0:
                    self._faults.popleft()
            self._requests.append(CapturedRequest(url, shown, payload, status))
        answer = b'{"success": true}' if status < 300 else b'{"error": "scripted by fail_next"}'
        return Response(status, {"content-type": "application/json"}, answer)

    def fail_next(self, status: int, times: int = 1) -> None:
        """Answer the next ``times`` requests with ``status``; their messages are not captured."""
        if not 100 <= status <= 599 or times < 1:
            raise ValueError("status must be 100-599 and times at least 1")
        with self._lock:
            self._faults.append([status, times])

    @property
    def requests(self) -> list[CapturedRequest]:
        """Every request, in order, the failed ones included."""
        with self._lock:
            return list(self._requests)

    @property
    def messages(self) -> list[JSONDict]:
        """The messages of every request answered 2xx, in order."""
        with self._lock:
            requests = list(self._requests)
        return [m for r in requests if 200 <= r.status < 300 for m in r.messages]

    def clear(self) -> None:
        """Forget the requests (and pending ``fail_next`` answers)."""
        with self._lock:
            self._requests.clear()
            self._faults.clear()

    def reset(self) -> None:
        """Nothing pooled: nothing to do."""

    def close(self) -> None:
        """Nothing to release; what was captured stays readable."""


class EventCapture(CaptureAssertions):
    """What a capture received, with assertions that show it all when they fail.

    Messages are wire-format dicts (``userId``, ``properties``, ``context``...), as the
    server would receive them.  Use it as a context manager, or through :func:`capture` or
    the ``analytics_events`` pytest fixture.  The queries (``events``, ``find``...) and the
    assertions (``assert_tracked``...) come from :class:`CaptureAssertions`.
    """

    def __init__(self, transport: CaptureTransport | None = None) -> None:
        self.transport = transport or CaptureTransport()
        """Pass it to ``Analytics(..., transport=...)`` to build more captured clients."""
        self._attached: dict[int, tuple[Analytics, contextlib.ExitStack]] = {}
        self._restore: Callable[[], None] | None = None
        self._owned: list[Analytics] = []

    def __repr__(self) -> str:
        names = ", ".join(describe(m) for m in self.messages[:3])
        more = ", ..." if len(self.messages) > 3 else ""
        return f"<EventCapture {len(self.messages)} messages: [{names}{more}]>"

    # -- starting and stopping ----------------------------------------------------------------

    def start(self) -> EventCapture:
        """Route the default client to the capture, until :meth:`stop`."""
        if self._restore is not None:
            raise RuntimeError("this capture is already started")
        current = default.current()
        if current is not None and not current.closed:
            # Keep the application's default client (its settings and middleware).
            self.attach(current)
            self._restore = default.swap(current, self._configured)
        else:
            fresh = Analytics(TEST_WRITE_KEY, transport=self.transport)
            self._owned.append(fresh)
            self._restore = default.swap(fresh, self._configured)
        return self

    def _configured(self, client: Analytics, previous: Analytics | None) -> Analytics:
        # configure() would close the client it replaces; ours is restored at stop().
        if previous is not None:
            previous.flush()
        return self.attach(client)

    def stop(self) -> None:
        """Flush every captured client into the capture, then put everything back."""
        restore, self._restore = self._restore, None
        for client, _ in list(self._attached.values()):
            self.detach(client)
        owned, self._owned = self._owned, []
        for client in owned:
            client.close()  # into the capture: its transport is ours
        if restore is not None:
            restore()

    def __enter__(self) -> EventCapture:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- clients --------------------------------------------------------------------------

    @property
    def client(self) -> Analytics:
        """The default client (``lambda_analytics.get_client()``), sending to the capture."""
        if self._restore is None:
            raise RuntimeError("the capture is not started")
        client = default.get_client()
        if id(client) not in self._attached and client not in self._owned:
            self.attach(client)  # someone reset the default client during the capture
        return client

    def attach(self, client: Analytics) -> Analytics:
        """Send ``client``'s messages to the capture until the capture stops; returns it.

        For a client your code creates at import time (``analytics = Analytics(...)`` in the
        module of a Lambda handler).  It keeps its settings and middleware; a disabled client
        sends, and no OAuth token or spool file is used.  At the end, what it still queues is
        flushed into the capture, and its own transport is put back
        (:meth:`Analytics.use_transport`).
        """
        if id(client) in self._attached:
            return client
        stack = contextlib.ExitStack()
        stack.enter_context(client.use_transport(self.transport))
        self._attached[id(client)] = (client, stack)
        return client

    def detach(self, client: Analytics) -> None:
        """Flush what ``client`` queues into the capture and give it back its transport."""
        entry = self._attached.pop(id(client), None)
        if entry is not None:
            entry[1].close()

    def fail_next(self, status: int, times: int = 1) -> None:
        """Answer the next ``times`` requests with ``status`` (e.g. 400, or 503: retried)."""
        self.transport.fail_next(status, times)

    # -- what was captured ----------------------------------------------------------------

    @property
    def messages(self) -> list[JSONDict]:
        """Every message delivered to the capture, in order, in wire format."""
        return self.transport.messages

    @property
    def requests(self) -> list[CapturedRequest]:
        """Every batch request, in order (the ones answered by ``fail_next`` included)."""
        return self.transport.requests

    def clear(self) -> None:
        """Forget what was captured so far."""
        self.transport.clear()

    def _notes(self) -> list[str]:
        """What else may explain a failed assertion: failed requests, unsent or lost calls."""
        notes: list[str] = []
        failed = [r for r in self.requests if not 200 <= r.status < 300]
        if failed:
            count = sum(len(r.messages) for r in failed)
            notes.append(
                f"note: {len(failed)} request(s) answered with an error status (fail_next); "
                f"their {count} message(s) are not among the captured ones."
            )
        clients = [client for client, _ in self._attached.values()]
        clients.extend(c for c in self._owned if c not in clients)
        for client in clients:
            queued = client.stats.queued
            if queued:
                notes.append(
                    f"note: {queued} message(s) are queued in {client!r} but not sent yet: "
                    "call flush() (or decorate the handler with @with_analytics)."
                )
            if client.closed:
                notes.append(f"note: {client!r} is closed: its calls are not sent.")
        if not self.messages:
            notes.append(
                "note: only the default client and attached clients send to the capture; "
                "for a client of your own (analytics = Analytics(...) in your module), call "
                "analytics_events.attach(your_module.analytics) first."
            )
        return notes


@contextlib.contextmanager
def capture(client: Analytics | None = None) -> Iterator[EventCapture]:
    """Capture what the default client (and ``client``, if given) sends in this block.

    Everything is put back when the block ends, exception or not.  Attach more clients with
    ``events.attach(other)``.
    """
    events = EventCapture()
    with events:
        if client is not None:
            events.attach(client)
        yield events


# -- the pytest plugin ------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover - unittest users need not install pytest
    pass
else:

    @pytest.fixture
    def analytics_events() -> Iterator[EventCapture]:
        """What the code under test sends, captured with no network (lambda_analytics.testing).

        The default client sends to the capture for the test's duration; attach your own
        module-level clients with ``analytics_events.attach(module.analytics)``.
        """
        with capture() as events:
            yield events
