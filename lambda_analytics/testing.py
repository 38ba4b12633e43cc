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
import datetime as _dt
import gzip
import json
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import lambda_analytics as _package

from .client import Analytics
from .messages import JSONDict, format_timestamp, normalise
from .results import Response

__all__ = [
    "CaptureTransport",
    "CapturedRequest",
    "EventCapture",
    "capture",
]

TEST_WRITE_KEY: Final = "test-write-key"
"""The write key of the default client installed during a capture."""
MAX_LISTED: Final = 30
"""Messages listed in an assertion failure; the rest are counted."""

# Python argument name -> wire name, for the assertions' keyword arguments.
_WIRE: Final = {
    "user_id": "userId",
    "anonymous_id": "anonymousId",
    "group_id": "groupId",
    "previous_id": "previousId",
    "message_id": "messageId",
    "event": "event",
    "name": "name",
    "category": "category",
    "properties": "properties",
    "traits": "traits",
    "context": "context",
    "integrations": "integrations",
    "timestamp": "timestamp",
}
_ARGUMENT: Final = {wire: name for name, wire in _WIRE.items()}
_IDS: Final = frozenset({"userId", "anonymousId", "groupId", "previousId"})
_SHOWN: Final = ("event", "name", "category", "groupId", "previousId", "userId", "anonymousId")
_MISSING: Final = object()


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


@dataclass
class _Saved:
    transport: Any
    tokens: Any
    spool: Any
    disable: bool


@dataclass
class _Restore:
    default: Analytics | None
    configure: Callable[..., Analytics]
    owned: list[Analytics] = field(default_factory=list)


class EventCapture:
    """What a capture received, with assertions that show it all when they fail.

    Messages are wire-format dicts (``userId``, ``properties``, ``context``...), as the
    server would receive them.  Use it as a context manager, or through :func:`capture` or
    the ``analytics_events`` pytest fixture.
    """

    def __init__(self, transport: CaptureTransport | None = None) -> None:
        self.transport = transport or CaptureTransport()
        """Pass it to ``Analytics(..., transport=...)`` to build more captured clients."""
        self._attached: dict[int, tuple[Analytics, _Saved]] = {}
        self._restore: _Restore | None = None

    def __repr__(self) -> str:
        names = ", ".join(_describe(m) for m in self.messages[:3])
        more = ", ..." if len(self.messages) > 3 else ""
        return f"<EventCapture {len(self.messages)} messages: [{names}{more}]>"

    # -- starting and stopping ----------------------------------------------------------------

    def start(self) -> EventCapture:
        """Route the default client to the capture, until :meth:`stop`."""
        if self._restore is not None:
            raise RuntimeError("this capture is already started")
        with _package._default_lock:
            current = _package._default
        restore = _Restore(default=current, configure=_package.configure)
        self._restore = restore
        if current is not None and not current.closed:
            # Keep the application's default client (its settings and middleware).
            self.attach(current)
        else:
            fresh = Analytics(TEST_WRITE_KEY, transport=self.transport)
            restore.owned.append(fresh)
            with _package._default_lock:
                _package._default = fresh
        original = restore.configure

        def configure(**settings: Any) -> Analytics:
            # configure() would close the client it replaces; ours is restored at stop().
            with _package._default_lock:
                previous, _package._default = _package._default, None
            if previous is not None:
                previous.flush()
            return self.attach(original(**settings))

        configure.__doc__ = original.__doc__
        _package.configure = configure
        return self

    def stop(self) -> None:
        """Flush every captured client into the capture, then put everything back."""
        restore, self._restore = self._restore, None
        for client, _ in list(self._attached.values()):
            self.detach(client)
        if restore is None:
            return
        for client in restore.owned:
            client.close()  # into the capture: its transport is ours
        _package.configure = restore.configure
        with _package._default_lock:
            _package._default = restore.default

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
        client = _package.get_client()
        if id(client) not in self._attached and client._transport is not self.transport:
            self.attach(client)  # someone reset the default client during the capture
        return client

    def attach(self, client: Analytics) -> Analytics:
        """Send ``client``'s messages to the capture until the capture stops; returns it.

        For a client your code creates at import time (``analytics = Analytics(...)`` in the
        module of a Lambda handler).  It keeps its settings and middleware; a disabled client
        is enabled.  At the end, what it still queues is flushed into the capture, and its
        transport (and OAuth, spool and ``disable`` settings) are put back.
        """
        if id(client) in self._attached:
            return client
        with client._lock:
            saved = _Saved(client._transport, client._tokens, client._spool, client.disable)
            client._transport = self.transport
            client._tokens = None  # no token request to the real OAuth server
            client._spool = None  # no spool files read or written
            client.disable = False
        self._attached[id(client)] = (client, saved)
        return client

    def detach(self, client: Analytics) -> None:
        """Flush what ``client`` queues into the capture and give it back its transport."""
        entry = self._attached.pop(id(client), None)
        if entry is None:
            return
        _, saved = entry
        try:
            client.flush()
        finally:
            with client._lock:
                client._transport = saved.transport
                client._tokens = saved.tokens
                client._spool = saved.spool
                client.disable = saved.disable

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

    @property
    def events(self) -> list[JSONDict]:
        """The ``track`` messages."""
        return [m for m in self.messages if m.get("type") == "track"]

    @property
    def event_names(self) -> list[str]:
        """The ``event`` of every ``track`` message, in order."""
        return [m["event"] for m in self.events]

    def find(self, type: str | None = None, **criteria: Any) -> list[JSONDict]:
        """Messages of that type (any, if None) matching the criteria (see assert_sent)."""
        wanted = _criteria(criteria)
        return [
            m
            for m in self.messages
            if (type is None or m.get("type") == type) and not _differences(m, wanted)
        ]

    def tracked(self, event: str | None = None, **criteria: Any) -> list[JSONDict]:
        """The ``track`` messages of that event (every event if None) matching the criteria."""
        if event is not None:
            criteria["event"] = event
        return self.find("track", **criteria)

    def identified(self, **criteria: Any) -> list[JSONDict]:
        """The ``identify`` messages matching the criteria."""
        return self.find("identify", **criteria)

    def clear(self) -> None:
        """Forget what was captured so far."""
        self.transport.clear()

    # -- assertions -----------------------------------------------------------------------

    def assert_sent(self, type: str, *, times: int | None = None, **criteria: Any) -> JSONDict:
        """Assert a message of ``type`` matching ``criteria`` was sent; return the first.

        ``criteria`` use the call's argument names: ``user_id``, ``anonymous_id``, ``event``,
        ``name``, ``category``, ``group_id``, ``previous_id``, ``message_id``, ``timestamp``,
        ``properties``, ``traits``, ``context``, ``integrations``.  Dicts match as subsets,
        recursively; other values must be equal once converted as the SDK converts them
        (ints ids become strings, datetimes ISO-8601...).  ``times`` requires exactly that
        many matches.
        """
        __tracebackhide__ = True
        wanted = _criteria(criteria)
        found = [m for m in self.messages if m.get("type") == type and not _differences(m, wanted)]
        if found and (times is None or len(found) == times):
            return found[0]
        expected = _expectation(type, criteria)
        if times is not None:
            expected = f"{expected} {times} time{'s' if times != 1 else ''}, found {len(found)}"
        raise AssertionError(self._report(f"expected {expected}", type, wanted))

    def assert_not_sent(self, type: str, **criteria: Any) -> None:
        """Assert no message of ``type`` matching ``criteria`` was sent."""
        __tracebackhide__ = True
        found = self.find(type, **criteria)
        if found:
            headline = f"expected no {_expectation(type, criteria, article=False)}"
            headline += f", found {len(found)} (marked <-)"
            raise AssertionError(self._report(headline, None, {}, found))

    def assert_tracked(
        self,
        event: str,
        *,
        user_id: str | int | None = None,
        anonymous_id: str | int | None = None,
        properties: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        integrations: Mapping[str, Any] | None = None,
        timestamp: _dt.datetime | str | None = None,
        message_id: str | None = None,
        times: int | None = None,
    ) -> JSONDict:
        """Assert ``event`` was tracked; arguments left ``None`` are not checked."""
        __tracebackhide__ = True
        given = _given(
            event=event, user_id=user_id, anonymous_id=anonymous_id, properties=properties,
            context=context, integrations=integrations, timestamp=timestamp,
            message_id=message_id,
        )  # fmt: skip
        return self.assert_sent("track", times=times, **given)

    def assert_not_tracked(self, event: str | None = None, **criteria: Any) -> None:
        """Assert ``event`` (any event if None) was not tracked with these criteria."""
        __tracebackhide__ = True
        if event is not None:
            criteria["event"] = event
        self.assert_not_sent("track", **criteria)

    def assert_identified(
        self,
        *,
        user_id: str | int | None = None,
        anonymous_id: str | int | None = None,
        traits: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        integrations: Mapping[str, Any] | None = None,
        timestamp: _dt.datetime | str | None = None,
        message_id: str | None = None,
        times: int | None = None,
    ) -> JSONDict:
        """Assert an ``identify`` was sent; arguments left ``None`` are not checked."""
        __tracebackhide__ = True
        given = _given(
            user_id=user_id, anonymous_id=anonymous_id, traits=traits, context=context,
            integrations=integrations, timestamp=timestamp, message_id=message_id,
        )  # fmt: skip
        return self.assert_sent("identify", times=times, **given)

    def _report(
        self,
        headline: str,
        kind: str | None,
        wanted: Mapping[str, Any],
        marked: Sequence[JSONDict] = (),
    ) -> str:
        """The headline, every captured message, and why the likely candidates differ."""
        lines = [headline]
        messages = self.messages
        if not messages:
            lines.append("captured nothing.")
        else:
            lines.append(f"captured {len(messages)} message{'s' if len(messages) != 1 else ''}:")
        for number, message in enumerate(messages[:MAX_LISTED], 1):
            mark = "  <-" if any(message is m for m in marked) else ""
            lines.append(f"  {number}. {_describe(message, wanted)}{mark}")
            same_event = "event" not in wanted or message.get("event") == wanted["event"]
            if message.get("type") == kind and same_event:
                differences = _differences(message, wanted)
                if differences:
                    lines.append(f"       differs: {'; '.join(differences[:3])}")
        if len(messages) > MAX_LISTED:
            lines.append(f"  ... and {len(messages) - MAX_LISTED} more")
        lines.extend(self._notes())
        return "\n".join(lines)

    def _notes(self) -> list[str]:
        notes: list[str] = []
        failed = [r for r in self.requests if not 200 <= r.status < 300]
        if failed:
            count = sum(len(r.messages) for r in failed)
            notes.append(
                f"note: {len(failed)} request(s) answered with an error status (fail_next); "
                f"their {count} message(s) are not among the captured ones."
            )
        clients = [client for client, _ in self._attached.values()]
        if self._restore is not None:
            clients.extend(c for c in self._restore.owned if c not in clients)
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


# -- matching ---------------------------------------------------------------------------------


def _given(**criteria: Any) -> dict[str, Any]:
    return {name: value for name, value in criteria.items() if value is not None}


def _criteria(criteria: Mapping[str, Any]) -> dict[str, Any]:
    """Argument names -> wire names, values converted as the SDK converts them."""
    wanted: dict[str, Any] = {}
    for name, given in criteria.items():
        wire = _WIRE.get(name)
        if wire is None:
            known = ", ".join(_WIRE)
            raise TypeError(f"unknown criterion {name!r}: use one of {known}")
        if wire in _IDS and isinstance(given, int) and not isinstance(given, bool):
            wanted[wire] = str(given)
        elif wire == "timestamp" and isinstance(given, _dt.datetime):
            wanted[wire] = format_timestamp(given)
        else:
            wanted[wire] = normalise(given, name)
    return wanted


def _differences(message: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    for key, value in wanted.items():
        _compare(_ARGUMENT.get(key, key), value, message.get(key, _MISSING), found)
    return found


def _compare(path: str, expected: Any, actual: Any, found: list[str]) -> None:
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            found.append(f"{path}: expected a dict containing {expected!r}, got {_short(actual)}")
            return
        for key, value in expected.items():
            _compare(f"{path}.{key}", value, actual.get(key, _MISSING), found)
        return
    if actual is _MISSING:
        found.append(f"{path}: missing (expected {expected!r})")
    elif expected != actual or isinstance(expected, bool) != isinstance(actual, bool):
        found.append(f"{path}: expected {expected!r}, got {_short(actual)}")


def _expectation(kind: str, criteria: Mapping[str, Any], *, article: bool = True) -> str:
    parts = [kind if not article else f"an {kind}" if kind[:1] in "aeiou" else f"a {kind}"]
    rest = dict(criteria)
    if "event" in rest:
        parts[0] += f" {rest.pop('event')!r}"
    shown = []
    for name, value in rest.items():
        relation = " containing " if isinstance(value, Mapping) else "="
        shown.append(f"{name}{relation}{value!r}")
    if shown:
        parts.append("with " + ", ".join(shown))
    return " ".join(parts)


def _describe(message: Mapping[str, Any], wanted: Mapping[str, Any] | None = None) -> str:
    kind = message.get("type", "?")
    parts = [str(kind)]
    if "event" in message:
        parts.append(repr(message["event"]))
    for key in _SHOWN[1:]:
        if key in message:
            parts.append(f"{key}={message[key]!r}")
    for key in ("properties", "traits"):
        if message.get(key):
            parts.append(f"{key}={_short(message[key], 120)}")
    for key in wanted or {}:
        if key in ("context", "integrations", "timestamp", "messageId") and key in message:
            parts.append(f"{key}={_short(message[key], 120)}")
    return " ".join(parts)


def _short(value: Any, limit: int = 80) -> str:
    if value is _MISSING:
        return "nothing"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
