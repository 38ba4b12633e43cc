"""Build, validate and encode one tracking-protocol message.  Pure: no I/O, no clock, no random.

The caller passes ``now`` and ``new_id`` so that tests are tables and the client decides where
time and randomness come from.  Values are copied while they are normalised, so the caller's
dicts are never mutated.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import sys
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any, Final

from ._version import __version__
from .errors import InvalidTypeError, MessageTooLargeError, ValidationError

MAX_MESSAGE_BYTES: Final = 32_000
"""The protocol allows 32 KB per message; read as 1,000-byte KB, the safe side of every backend."""
MAX_MESSAGE_ID_LENGTH: Final = 99
"""Message ids must stay under 100 characters."""
MAX_DEPTH: Final = 100
# json.dumps refuses integers over 4,300 digits (CPython's int/str limit); far below that a
# number is already meaningless to every backend, so refuse it with a field name instead.
_MAX_INT_BITS: Final = 4_000

LIBRARY: Final[Mapping[str, str]] = {"name": "lambda_analytics", "version": __version__}

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
    "track": ("event",),
    "group": ("groupId",),
    "alias": ("previousId", "userId"),
}
_ID_FIELDS: Final = frozenset({"groupId", "previousId"})
_TEXT_FIELDS: Final = frozenset({"event", "name", "category"})
_DICT_FIELDS: Final = frozenset({"properties", "traits"})
_SCALARS: Final = (str, int, type(None))
_UTC: Final = _dt.timezone.utc

JSONDict = dict[str, Any]


def format_timestamp(value: _dt.datetime) -> str:
    """ISO-8601 in UTC with milliseconds and a ``Z``: always 24 characters.

    A naive datetime is taken to be UTC (Lambda and Cloud Functions run in UTC).
    """
    value = value.replace(tzinfo=_UTC) if value.tzinfo is None else value.astimezone(_UTC)
    return value.isoformat(timespec="milliseconds")[:-6] + "Z"


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
    now: _dt.datetime,
    new_id: Callable[[], str],
) -> JSONDict:
    """Return the wire-format dict for one call, or raise a ValidationError/InvalidTypeError.

    ``fields`` holds the type's own values under their wire names (``event``, ``properties``,
    ``groupId``...); ``None`` values are left out.
    """
    if kind not in MESSAGE_TYPES:
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
        if value is None:
            continue
        if key in _ID_FIELDS:
            message[key] = _identifier(key, value)
        elif key in _TEXT_FIELDS:
            message[key] = _text(key, value)
        elif key in _DICT_FIELDS:
            message[key] = _mapping(key, value)
        else:
            raise ValidationError(key, f"is not a field of a {kind} message")
    for key in _REQUIRED.get(kind, ()):
        if message.get(key) is None:
            raise ValidationError(_ARGUMENT.get(key, key), f"is required for {kind}")

    message["context"] = {"library": dict(LIBRARY), **_mapping("context", context)}
    if integrations is not None:
        message["integrations"] = _mapping("integrations", integrations)
    if timestamp is None:
        message["timestamp"] = format_timestamp(now)
    elif isinstance(timestamp, _dt.datetime):
        message["timestamp"] = format_timestamp(timestamp)
    else:
        raise InvalidTypeError("timestamp", f"must be a datetime, not {type(timestamp).__name__}")
    message["messageId"] = new_id() if message_id is None else _message_id(message_id)
    return message


def encode_message(message: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON of one message, exactly as it will stand in the batch.

    Raises MessageTooLargeError over 32 KB, InvalidTypeError/ValidationError (naming the
    field) when middleware left something that is not JSON.
    """
    try:
        data = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        encoded = data.encode("utf-8")
    except UnicodeEncodeError as exc:
        field = _find(message, lambda v: isinstance(v, str) and not _utf8_ok(v))
        raise ValidationError(field or "message", "contains a lone surrogate, not UTF-8") from exc
    except (TypeError, ValueError) as exc:
        normalise(message, "message")  # raises with the field's name
        raise InvalidTypeError("message", str(exc)) from exc  # pragma: no cover - belt and braces
    if len(encoded) > MAX_MESSAGE_BYTES:
        raise MessageTooLargeError(len(encoded), MAX_MESSAGE_BYTES)
    return encoded


def normalise(value: object, field: str) -> Any:
    """A JSON-ready copy of ``value``; raises naming ``field`` (``properties.items[2].price``).

    datetime and date become ISO-8601 strings, Decimal a float, UUID a string, Enum its value,
    tuple/set/frozenset a list.  NaN, infinity, bytes and other objects are refused.
    """
    return _normalise(value, field, set(), 0)


def _normalise(value: object, field: str, seen: set[int], depth: int) -> Any:
    kind = type(value)
    if kind is str or value is None or kind is bool:
        return value
    if kind is int:
        return _integer(value, field)  # type: ignore[arg-type]
    if kind is float:
        return _finite(value, field)  # type: ignore[arg-type]
    if depth >= MAX_DEPTH:
        raise ValidationError(field, f"is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, (dict, Mapping, list, tuple, set, frozenset)):
        if id(value) in seen:
            raise ValidationError(field, "contains itself (a circular reference)")
        seen.add(id(value))
        try:
            if isinstance(value, Mapping):
                return {
                    _key(k, field): _normalise(v, f"{field}.{k}", seen, depth + 1)
                    for k, v in value.items()
                }
            items = _ordered(value) if isinstance(value, (set, frozenset)) else value
            return [_normalise(v, f"{field}[{i}]", seen, depth + 1) for i, v in enumerate(items)]
        finally:
            seen.discard(id(value))
    return _convert(value, field, seen, depth)


def _convert(value: object, field: str, seen: set[int], depth: int) -> Any:
    # Enum first: a StrEnum or IntEnum is also a str or int, but its value is what is meant.
    if isinstance(value, Enum):
        return _normalise(value.value, field, seen, depth + 1)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return _integer(int(value), field)
    if isinstance(value, float):
        return _finite(float(value), field)
    if isinstance(value, _dt.datetime):
        return format_timestamp(value)
    if isinstance(value, _dt.date):
        return value.isoformat()
    # A Decimal or UUID can only exist if its module was imported: checking sys.modules spares
    # every cold start the import of decimal and uuid.
    decimal = sys.modules.get("decimal")
    if decimal is not None and isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise ValidationError(field, f"{value} is not a finite number, not valid JSON")
        return _finite(float(value), field)
    uuid = sys.modules.get("uuid")
    if uuid is not None and isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise InvalidTypeError(field, "bytes are not JSON; decode them to str first")
    raise InvalidTypeError(field, f"a {type(value).__name__} cannot be sent as JSON")


def _integer(value: int, field: str) -> int:
    if value.bit_length() > _MAX_INT_BITS:
        raise ValidationError(field, f"integer of {value.bit_length()} bits is too large")
    return value


def _finite(value: float, field: str) -> float:
    if not math.isfinite(value):
        raise ValidationError(field, f"{value} is not a finite number, not valid JSON")
    return value


def _key(key: object, field: str) -> str:
    if type(key) is str:
        return key
    if isinstance(key, str):
        return str.__str__(key)
    if isinstance(key, int) and not isinstance(key, bool):
        return str(int(key))  # what json.dumps would do, made explicit
    raise InvalidTypeError(f"{field}[{key!r}]", f"keys must be strings, not {type(key).__name__}")


def _ordered(items: set[Any] | frozenset[Any]) -> list[Any]:
    try:
        return sorted(items)
    except TypeError:  # mixed types: keep Python's order, still a list
        return list(items)


def _mapping(field: str, value: object) -> JSONDict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidTypeError(field, f"must be a dict, not {type(value).__name__}")
    result: JSONDict = normalise(value, field)
    return result


def _identifier(key: str, value: object) -> str | None:
    name = _ARGUMENT.get(key, key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidTypeError(name, f"must be a string or an integer, not {type(value).__name__}")
    text = str(value).strip() if isinstance(value, str) else str(int(value))
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


def _utf8_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _find(value: object, bad: Callable[[object], bool], field: str = "") -> str | None:
    """The path of the first value (or dict key) for which ``bad`` is true."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            path = f"{field}.{k}" if field else str(k)
            if bad(k) or bad(v):
                return path
            found = _find(v, bad, path)
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            path = f"{field}[{i}]"
            if bad(v):
                return path
            found = _find(v, bad, path)
            if found:
                return found
    return None
