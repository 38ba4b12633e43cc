"""Build, validate and encode one tracking-protocol message.  Pure: no I/O, no clock, no random.

The caller passes ``now`` and ``new_id`` so that tests are tables and the client decides where
time and randomness come from.  Messages hold the caller's dicts by reference and the
C JSON encoder reads them, so nothing is copied on the way and nothing writes to them.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import sys
import time as _time
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any, Final

from ._version import __version__
from .errors import AnalyticsError, InvalidTypeError, MessageTooLargeError, ValidationError

MAX_MESSAGE_BYTES: Final = 32_000
"""The protocol allows 32 KB per message; read as 1,000-byte KB, the safe side of every backend."""
MAX_MESSAGE_ID_LENGTH: Final = 99
"""Message ids must stay under 100 characters."""

LIBRARY: Final[Mapping[str, str]] = {"name": "lambda_analytics", "version": __version__}
_LIBRARY_CONTEXT: Final[Mapping[str, Any]] = {"library": LIBRARY}

MESSAGE_TYPES: Final = ("identify", "track", "page", "screen", "group", "alias")

# Wire name -> the Python argument name used in error messages.
_ARGUMENT: Final = {
    "userId": "user_id",
    "anonymousId": "anonymous_id",
    "groupId": "group_id",
    "previousId": "previous_id",
    "messageId": "message_id",
}
_REQUIRED: Final[Mapping[str, tuple[str, ...]]] = {
    "identify": (),
    "track": ("event",),
    "page": (),
    "screen": (),
    "group": ("groupId",),
    "alias": ("previousId", "userId"),
}
_UTC: Final = _dt.timezone.utc

JSONDict = dict[str, Any]


def format_timestamp(value: _dt.datetime) -> str:
    """ISO-8601 in UTC with milliseconds and a ``Z``: always 24 characters.

    A naive datetime is taken to be UTC (Lambda and Cloud Functions run in UTC).
    """
    value = value.replace(tzinfo=_UTC) if value.tzinfo is None else value.astimezone(_UTC)
    return value.isoformat(timespec="milliseconds")[:-6] + "Z"


def utc_text(unix_time: float) -> str:
    """``format_timestamp`` for a Unix time, without building a datetime (the hot path).

    The date and time of day are formatted once per second and cached.
    """
    global _SECOND
    second = int(unix_time)
    cached = _SECOND
    if cached[0] != second:
        cached = (second, _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(second)))
        _SECOND = cached  # one tuple swap: safe between threads
    return f"{cached[1]}.{int((unix_time - second) * 1000):03d}Z"


_SECOND: tuple[int, str] = (-1, "")


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
    elif isinstance(timestamp, _dt.datetime):
        try:
            message["timestamp"] = format_timestamp(timestamp)
        except OverflowError:
            raise ValidationError("timestamp", "is out of range once converted to UTC") from None
    else:
        raise InvalidTypeError("timestamp", f"must be a datetime, not {type(timestamp).__name__}")
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
        data = _ENCODER.encode(message).encode("utf-8")
    except RecursionError:
        raise ValidationError(_deep_field(message), "is nested too deeply to encode") from None
    except (TypeError, ValueError, OverflowError) as exc:  # UnicodeEncodeError: a ValueError
        raise _explain(message, "") from exc
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageTooLargeError(len(data), MAX_MESSAGE_BYTES)
    return data


def normalise(value: object, field: str) -> Any:
    """A JSON-ready deep copy of ``value``; raises naming ``field`` (``properties.items[2].price``).

    datetime (as UTC ISO-8601; naive means UTC) and date become strings, Decimal a float, UUID a
    string, Enum its value, tuple/set/frozenset a list, int/float/bool/None keys strings as
    json.dumps makes them.  NaN, infinity, bytes, cycles and other objects are refused.
    """
    try:
        text = _ENCODER.encode(value)
        text.encode("utf-8")
    except RecursionError:
        raise ValidationError(field, "is nested too deeply to encode") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise _explain(value, field) from exc
    return json.loads(text)


def _default(value: object) -> Any:
    """What the JSON encoder calls for a value it does not know; TypeError when none fits."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, _dt.datetime):
        return format_timestamp(value)
    if isinstance(value, _dt.date):
        return value.isoformat()
    if isinstance(value, (set, frozenset)):
        return _ordered(value)
    if isinstance(value, Mapping):
        return dict(value)
    # A Decimal or UUID can only exist if its module was imported: checking sys.modules spares
    # every cold start the import of decimal and uuid.
    decimal = sys.modules.get("decimal")
    if decimal is not None and isinstance(value, decimal.Decimal):
        return float(value)  # NaN and infinity are then refused like any float
    uuid = sys.modules.get("uuid")
    if uuid is not None and isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError("bytes are not JSON; decode them to str first")
    raise TypeError(f"a {type(value).__name__} cannot be sent as JSON")


_ENCODER: Final = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_default
)


def _explain(value: object, root: str) -> AnalyticsError:
    """The error naming the first value the encoder refused (only run once it has refused)."""
    try:
        _check(value, root, set())
    except AnalyticsError as error:
        return error
    return InvalidTypeError(root or "message", "cannot be encoded as JSON")  # pragma: no cover


def _check(value: object, field: str, seen: set[int]) -> None:
    """Raise for the first value under ``value`` that the encoder refuses, naming its path."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError(field, "contains a lone surrogate, not UTF-8") from None
    elif value is None or isinstance(value, bool):
        return
    elif isinstance(value, int):
        try:
            int.__repr__(value)
        except ValueError:
            raise ValidationError(field, "is an integer too large to send") from None
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(field, f"{value} is not a finite number, not valid JSON")
    elif isinstance(value, (dict, list, tuple)):
        if id(value) in seen:
            raise ValidationError(field, "contains itself (a circular reference)")
        seen.add(id(value))
        if isinstance(value, dict):
            for key, item in value.items():
                _check_key(key, field)
                name = _ARGUMENT.get(str(key), str(key))
                _check(item, f"{field}.{key}" if field else name, seen)
        else:
            for index, item in enumerate(value):
                _check(item, f"{field}[{index}]", seen)
        seen.discard(id(value))
    else:
        try:
            converted = _default(value)
        except TypeError as exc:
            raise InvalidTypeError(field, str(exc)) from None
        except (ValueError, OverflowError) as exc:  # a datetime out of range, a Decimal sNaN
            raise ValidationError(field, f"cannot be converted to JSON: {exc}") from None
        if id(value) in seen:  # a Mapping that is not a dict, showing a dict that holds it
            raise ValidationError(field, "contains itself (a circular reference)")
        seen.add(id(value))
        _check(converted, field, seen)
        seen.discard(id(value))


def _check_key(key: object, field: str) -> None:
    if isinstance(key, str):
        _check(key, f"{field}[{key!r}]", set())
    elif isinstance(key, float) and not math.isfinite(key):
        raise ValidationError(f"{field}[{key!r}]", "a key must be a finite number or a string")
    elif isinstance(key, int) and not isinstance(key, bool) and _unprintable(key):
        raise ValidationError(field, "has an integer key too large to send")
    elif not (key is None or isinstance(key, (int, float))):
        kind = type(key).__name__
        raise InvalidTypeError(f"{field}[{key!r}]", f"keys must be strings, not {kind}")


def _unprintable(number: int) -> bool:
    try:
        int.__repr__(number)
    except ValueError:
        return True
    return False


def _deep_field(message: Mapping[str, Any]) -> str:
    for key, value in message.items():
        try:
            _ENCODER.encode(value)
        except RecursionError:
            return str(key)
        except (TypeError, ValueError):
            continue
    return "message"


def _ordered(items: set[Any] | frozenset[Any]) -> list[Any]:
    try:
        return sorted(items)
    except TypeError:  # mixed types: keep Python's order, still a list
        return list(items)


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
