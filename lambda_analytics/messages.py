"""Build, validate and encode one tracking-protocol message.  Pure: no I/O, no clock, no random.

The caller passes ``now`` and ``new_id`` so that tests are tables and the client decides where
time and randomness come from.  Messages hold the caller's dicts by reference and the
C JSON encoder reads them, so nothing is copied on the way and nothing writes to them.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Mapping
from typing import Any, Final

from ._version import __version__
from .encoding import (
    ENCODER,
    deep_field,
    explain,
    format_timestamp,
    nesting,
    parse_timestamp,
    utc_text,
)
from .errors import InvalidTypeError, MessageTooLargeError, ValidationError

__all__ = [
    "COMMON_FIELDS",
    "LIBRARY",
    "MAX_MESSAGE_BYTES",
    "MAX_MESSAGE_ID_LENGTH",
    "MAX_NESTING",
    "MESSAGE_TYPES",
    "REQUIRED",
    "TYPE_FIELDS",
    "WIRE_NAMES",
    "JSONDict",
    "build_message",
    "check_wire",
    "encode_message",
    "format_timestamp",
    "normalise",
    "parse_timestamp",
    "utc_text",
]

MAX_MESSAGE_BYTES: Final = 32_000
"""The protocol allows 32 KB per message; read as 1,000-byte KB, the safe side of every backend."""
MAX_MESSAGE_ID_LENGTH: Final = 99
"""Message ids must stay under 100 characters."""
MAX_NESTING: Final = 100
"""Objects and arrays nested deeper than this are refused at the call.  Deeper JSON is no
analytics a warehouse can use, and near Python's recursion limit a message that encodes may
not decode again (in a server, or in the SDK handing a failed message to ``on_error``)."""

LIBRARY: Final[Mapping[str, str]] = {"name": "lambda_analytics", "version": __version__}
_LIBRARY_CONTEXT: Final[Mapping[str, Any]] = {"library": LIBRARY}

MESSAGE_TYPES: Final = ("identify", "track", "page", "screen", "group", "alias")

# The schema, once: the CLI, the test helpers and middleware checks read it from here.
WIRE_NAMES: Final[Mapping[str, str]] = {
    "user_id": "userId",
    "anonymous_id": "anonymousId",
    "group_id": "groupId",
    "previous_id": "previousId",
    "message_id": "messageId",
}
"""Python argument name -> wire name, where they differ (``event`` is ``event`` on both)."""
TYPE_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    "identify": ("traits",),
    "track": ("event", "properties"),
    "page": ("name", "category", "properties"),
    "screen": ("name", "category", "properties"),
    "group": ("groupId", "traits"),
    "alias": ("previousId",),
}
"""Each type's own fields (wire names), besides :data:`COMMON_FIELDS`."""
COMMON_FIELDS: Final = (
    "type", "userId", "anonymousId", "context", "integrations", "timestamp", "messageId",
)  # fmt: skip
REQUIRED: Final[Mapping[str, tuple[str, ...]]] = {
    "identify": (),
    "track": ("event",),
    "page": (),
    "screen": (),
    "group": ("groupId",),
    "alias": ("previousId", "userId"),
}
"""Fields a message of each type must have (wire names); all but alias need an id too."""

# Wire name -> the Python argument name used in error messages.
_ARGUMENT: Final = {wire: name for name, wire in WIRE_NAMES.items()}
_REQUIRED: Final = REQUIRED

JSONDict = dict[str, Any]


def build_message(
    kind: str,
    fields: Mapping[str, object],
    *,
    user_id: object = None,
    anonymous_id: object = None,
    context: object = None,
    integrations: object = None,
    timestamp: object = None,
    message_id: object = None,
    now: str,
    new_id: Callable[[], str],
) -> JSONDict:
    """Return the wire-format dict for one call, or raise a ValidationError/InvalidTypeError.

    ``fields`` holds the type's own values under their wire names (``event``, ``properties``,
    ``groupId``...); ``None`` values are left out.  ``now`` is the current time as
    :func:`utc_text` gives it.  Values inside dicts are checked by :func:`encode_message`.
    """
    required = _REQUIRED.get(kind)
    if required is None:
        raise ValidationError("type", f"must be one of {', '.join(MESSAGE_TYPES)}, not {kind!r}")
    message: JSONDict = {"type": kind}
    uid = _identifier("userId", user_id)
    aid = _identifier("anonymousId", anonymous_id)
    if uid is None and aid is None and kind != "alias":
        raise ValidationError("user_id", "either user_id or anonymous_id is required")
    if uid is not None:
        message["userId"] = uid
    if aid is not None:
        message["anonymousId"] = aid
    for key, value in fields.items():
        if value is not None:
            check = _FIELD_CHECKS.get(key)
            if check is None:
                raise ValidationError(key, f"is not a field of a {kind} message")
            message[key] = check(key, value)
    for key in required:
        if key not in message:
            raise ValidationError(_ARGUMENT.get(key, key), f"is required for {kind}")

    # Shared, never copied: nothing writes to a built message (middleware gets a deep copy).
    message["context"] = (
        _LIBRARY_CONTEXT
        if context is None
        else {"library": LIBRARY, **_mapping("context", context)}
    )
    if integrations is not None:
        message["integrations"] = _mapping("integrations", integrations)
    if timestamp is None:
        message["timestamp"] = now
    else:
        message["timestamp"] = _timestamp(timestamp)
    message["messageId"] = new_id() if message_id is None else _message_id(message_id)
    return message


def encode_message(message: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON of one message, exactly as it will stand in the batch.

    The C encoder does the work, converting datetime, date, Decimal, UUID, Enum and sets on
    the way (see :func:`normalise`).  Raises MessageTooLargeError over 32 KB, and
    ValidationError/InvalidTypeError naming the field (``properties.price``) for a value that
    cannot be JSON.
    """
    try:
        data = ENCODER.encode(message).encode("utf-8")
    except RecursionError:
        raise ValidationError(
            deep_field(message, MAX_NESTING), "is nested too deeply to encode"
        ) from None
    except (TypeError, ValueError, OverflowError) as exc:  # UnicodeEncodeError: a ValueError
        raise explain(message, "", _ARGUMENT) from exc
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageTooLargeError(len(data), MAX_MESSAGE_BYTES)
    # Counting brackets is cheap and bounds the depth; only a message with many is measured.
    if data.count(b"{") + data.count(b"[") > MAX_NESTING and nesting(data) > MAX_NESTING:
        raise ValidationError(
            deep_field(message, MAX_NESTING), f"is nested over {MAX_NESTING} levels deep"
        )
    return data


def normalise(value: object, field: str) -> Any:
    """A JSON-ready deep copy of ``value``; raises naming ``field`` (``properties.items[2].price``).

    datetime (as UTC ISO-8601; naive means UTC) and date become strings, Decimal a float, UUID a
    string, Enum its value, tuple/set/frozenset a list, int/float/bool/None keys strings as
    json.dumps makes them.  NaN, infinity, bytes, cycles and other objects are refused.
    """
    try:
        text = ENCODER.encode(value)
        text.encode("utf-8")
    except RecursionError:
        raise ValidationError(field, "is nested too deeply to encode") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise explain(value, field, _ARGUMENT) from exc
    return json.loads(text)


def check_wire(message: object, origin: str) -> JSONDict:
    """Check a wire-format message that code other than :func:`build_message` produced.

    Middleware may change anything; what it returns must still be a message the server
    accepts, or the server would refuse the whole batch around it.  Raises ValidationError or
    InvalidTypeError naming the field and ``origin`` (``middleware add_plan``).
    """
    if not isinstance(message, dict):
        raise InvalidTypeError("message", f"{origin} returned a {type(message).__name__}")
    kind = message.get("type")
    required = REQUIRED.get(kind) if isinstance(kind, str) else None
    if required is None:
        raise ValidationError("type", f"{origin} set it to {kind!r}, not a message type")
    mid = message.get("messageId")
    if not isinstance(mid, str) or not 0 < len(mid) <= MAX_MESSAGE_ID_LENGTH:
        raise ValidationError("message_id", f"{origin} left it {_shown(mid)}")
    if kind != "alias" and not any(_present(message.get(k)) for k in ("userId", "anonymousId")):
        raise ValidationError("user_id", f"{origin} removed both user_id and anonymous_id")
    for key in required:
        if not _present(message.get(key)):
            name = _ARGUMENT.get(key, key)
            raise ValidationError(name, f"is required for {kind}; {origin} removed it")
    if not isinstance(message.get("timestamp"), str):
        raise ValidationError("timestamp", f"{origin} left it {_shown(message.get('timestamp'))}")
    for key in ("context", "integrations", "properties", "traits"):
        if key in message and not isinstance(message[key], dict):
            raise InvalidTypeError(key, f"{origin} made it a {type(message[key]).__name__}")
    return message


def _present(value: object) -> bool:
    if isinstance(value, str):
        return bool(value.strip())
    return isinstance(value, int) and not isinstance(value, bool)


def _shown(value: object) -> str:
    if isinstance(value, str):
        return f"{len(value)} characters long"
    return "missing" if value is None else f"a {type(value).__name__}"


def _timestamp(value: object) -> str:
    if isinstance(value, str):  # as the Node SDK and the CLI import take it
        text = value
        try:
            value = parse_timestamp(text)
        except ValueError:
            shown = text if len(text) <= 40 else text[:37] + "..."
            raise ValidationError("timestamp", f"not an ISO-8601 date-time: {shown!r}") from None
    if not isinstance(value, _dt.datetime):
        kind = type(value).__name__
        raise InvalidTypeError("timestamp", f"must be a datetime or ISO-8601 text, not {kind}")
    try:
        return format_timestamp(value)
    except OverflowError:
        raise ValidationError("timestamp", "is out of range once converted to UTC") from None


def _mapping(field: str, value: object) -> Mapping[str, Any]:
    # Kept by reference: the encoder reads it, nothing writes to it (middleware gets a copy).
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidTypeError(field, f"must be a dict, not {type(value).__name__}")
    return value


def _identifier(key: str, value: object) -> str | None:
    if type(value) is str:  # the common case, first
        text = value.strip()
        if text:
            return text
    if value is None:
        return None
    name = _ARGUMENT.get(key, key)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidTypeError(name, f"must be a string or an integer, not {type(value).__name__}")
    try:
        text = str.__str__(value).strip() if isinstance(value, str) else int.__repr__(value)
    except ValueError:  # over CPython's 4,300-digit limit for int -> str
        raise ValidationError(name, "is an integer too large to be an id") from None
    if not text:
        return None if key in ("userId", "anonymousId") else _missing(name)
    return text


def _missing(name: str) -> str:
    raise ValidationError(name, "must not be empty")


def _text(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidTypeError(key, f"must be a string, not {type(value).__name__}")
    if not value.strip():
        raise ValidationError(key, "must not be empty")
    return str.__str__(value)


def _message_id(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidTypeError("message_id", f"must be a string, not {type(value).__name__}")
    if not value or len(value) > MAX_MESSAGE_ID_LENGTH:
        raise ValidationError("message_id", f"must be 1 to {MAX_MESSAGE_ID_LENGTH} characters")
    return value


_FIELD_CHECKS: Final[Mapping[str, Callable[[str, Any], Any]]] = {
    "event": _text,
    "name": _text,
    "category": _text,
    "properties": _mapping,
    "traits": _mapping,
    "groupId": _identifier,
    "previousId": _identifier,
}
"""How each type-specific field (wire name) is checked."""
