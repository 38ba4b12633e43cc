"""JSON for messages: the encoder and its conversions, timestamps, and naming refused values.

Pure: no I/O, no clock.  The C encoder does the work; the walks in this module only run once it
has refused a value, to name the field (``properties.items[2].price``).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
import sys
import time as _time
from collections.abc import Mapping
from enum import Enum
from typing import Any, Final

from .errors import AnalyticsError, InvalidTypeError, ValidationError

_UTC: Final = _dt.timezone.utc


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
_FRACTION: Final = re.compile(r"(.*[T ]\d\d:\d\d:\d\d)\.(\d+)(.*)")


def parse_timestamp(text: str) -> _dt.datetime:
    """An ISO-8601 date-time (``2015-06-01T12:00:00.000Z``, ``2024-05-01 12:00+02:00``).

    Without an offset the time is taken as UTC, as for a naive datetime.  ValueError if it is
    not one.
    """
    value = text.strip()
    if value[-1:] in ("Z", "z"):
        value = value[:-1] + "+00:00"
    # Python 3.10's fromisoformat wants 0, 3 or 6 fraction digits: pad or cut to 6.
    match = _FRACTION.fullmatch(value)
    if match:
        value = f"{match[1]}.{match[2][:6].ljust(6, '0')}{match[3]}"
    if len(value) < 10 or not value[:4].isdigit():  # fromisoformat takes "2024" on 3.11+
        raise ValueError("not an ISO-8601 date-time")
    try:
        return _dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("not an ISO-8601 date-time") from None


_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
_STRINGS: Final = re.compile(rb'"(?:[^"\\]|\\.)*"')


def nesting(data: bytes) -> int:
    """How deeply the objects and arrays of encoded JSON ``data`` nest (``{}`` is 1)."""
    depth = deepest = 0
    for byte in _STRINGS.sub(b"", data).translate(None, _NOT_BRACKETS):
        if byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


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


ENCODER: Final = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_default
)


def explain(value: object, root: str, names: Mapping[str, str]) -> AnalyticsError:
    """The error naming the first value the encoder refused (only run once it has refused).

    ``root`` names ``value`` (``properties``); with ``""``, ``value`` is a message and its keys
    are named through ``names`` (``userId`` -> ``user_id``).
    """
    try:
        if not root and isinstance(value, dict):
            seen = {id(value)}
            for key, item in value.items():
                _check(item, names.get(str(key), str(key)), seen)
        else:
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
                _check(item, f"{field}.{key}", seen)
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


def deep_field(message: Mapping[str, Any], limit: int) -> str:
    """The top-level field of ``message`` that nests too deeply (``limit`` levels, or past
    the encoder's)."""
    for key, value in message.items():
        try:
            text = ENCODER.encode(value)
        except RecursionError:
            return str(key)
        except (TypeError, ValueError):
            continue
        if nesting(text.encode("utf-8", "replace")) >= limit:  # the message adds a level
            return str(key)
    return "message"


def _ordered(items: set[Any] | frozenset[Any]) -> list[Any]:
    try:
        return sorted(items)
    except TypeError:  # mixed types: keep Python's order, still a list
        return list(items)
