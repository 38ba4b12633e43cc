"""Match captured messages against a test's expectations, and explain a mismatch in full.

The queries and assertions of :class:`~lambda_analytics.testing.EventCapture` live here as a
base class; the capture itself (where messages come from, which clients send to it) stays in
:mod:`lambda_analytics.testing`, which provides :attr:`CaptureAssertions.messages` and the
notes that end a failure report.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from typing import Any, Final

from .messages import COMMON_FIELDS, TYPE_FIELDS, WIRE_NAMES, JSONDict, format_timestamp, normalise

__all__ = ["MAX_LISTED", "CaptureAssertions", "describe"]

MAX_LISTED: Final = 30
"""Messages listed in an assertion failure; the rest are counted."""

# Every field a criterion can name (wire names), and the argument name -> wire name of each.
_FIELDS: Final = tuple(
    dict.fromkeys(
        field
        for fields in (COMMON_FIELDS, *TYPE_FIELDS.values())
        for field in fields
        if field != "type"  # the type is the assertions' own argument
    )
)
_ARGUMENT: Final = {wire: name for name, wire in WIRE_NAMES.items()}
_WIRE: Final = {_ARGUMENT.get(wire, wire): wire for wire in _FIELDS}
# Identifiers given as ints are sent as strings (a message id must be a string already).
_IDS: Final = frozenset(WIRE_NAMES.values()) - {"messageId"}
_SHOWN: Final = ("event", "name", "category", "groupId", "previousId", "userId", "anonymousId")
_MISSING: Final = object()


class CaptureAssertions:
    """Queries and assertions over :attr:`messages`; a failure lists every message captured."""

    @property
    def messages(self) -> list[JSONDict]:
        """Every message captured, in order, in wire format (provided by the capture)."""
        raise NotImplementedError

    def _notes(self) -> list[str]:
        """Lines that end a failure report: what else may explain it (provided by the capture)."""
        return []

    # -- queries ------------------------------------------------------------------------------

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
            lines.append(f"  {number}. {describe(message, wanted)}{mark}")
            same_event = "event" not in wanted or message.get("event") == wanted["event"]
            if message.get("type") == kind and same_event:
                differences = _differences(message, wanted)
                if differences:
                    lines.append(f"       differs: {'; '.join(differences[:3])}")
        if len(messages) > MAX_LISTED:
            lines.append(f"  ... and {len(messages) - MAX_LISTED} more")
        lines.extend(self._notes())
        return "\n".join(lines)


def describe(message: Mapping[str, Any], wanted: Mapping[str, Any] | None = None) -> str:
    """One line: type, event, ids, properties/traits, and the other fields ``wanted`` names."""
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


# -- matching ---------------------------------------------------------------------------------


def _given(**criteria: Any) -> dict[str, Any]:
    return {name: value for name, value in criteria.items() if value is not None}


def _criteria(criteria: Mapping[str, Any]) -> dict[str, Any]:
    """Argument names -> wire names, values converted as the SDK converts them."""
    wanted: dict[str, Any] = {}
    for name, given in criteria.items():
        wire = _WIRE.get(name)
        if wire is None:
            known = ", ".join(sorted(_WIRE))
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


def _short(value: Any, limit: int = 80) -> str:
    if value is _MISSING:
        return "nothing"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
