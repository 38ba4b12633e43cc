"""The pure message core: tables, no server."""

from __future__ import annotations

import datetime as dt
import enum
import json
import uuid
from decimal import Decimal
from typing import Any

import pytest

from lambda_analytics import InvalidTypeError, MessageTooLargeError, ValidationError
from lambda_analytics.messages import (
    LIBRARY,
    MAX_MESSAGE_BYTES,
    build_message,
    encode_message,
    format_timestamp,
    normalise,
    utc_text,
)

NOW = dt.datetime(2026, 11, 23, 10, 0, 0, 123456, tzinfo=dt.timezone.utc)


def build(kind: str, fields: dict[str, Any] | None = None, **common: Any) -> dict[str, Any]:
    common.setdefault("user_id", "u1")
    return build_message(
        kind, fields or {}, now=format_timestamp(NOW), new_id=lambda: "id-1", **common
    )


class Color(enum.Enum):
    RED = "red"


class Size(enum.IntEnum):
    BIG = 3


def test_track_wire_format() -> None:
    message = build("track", {"event": "Order Completed", "properties": {"revenue": 9.99}})
    assert message == {
        "type": "track",
        "userId": "u1",
        "event": "Order Completed",
        "properties": {"revenue": 9.99},
        "context": {"library": dict(LIBRARY)},
        "timestamp": "2026-11-23T10:00:00.123Z",
        "messageId": "id-1",
    }


@pytest.mark.parametrize(
    ("kind", "fields", "expected"),
    [
        ("identify", {"traits": {"plan": "pro"}}, {"traits": {"plan": "pro"}}),
        ("page", {"name": "API", "category": "Docs"}, {"name": "API", "category": "Docs"}),
        ("screen", {"name": "Settings"}, {"name": "Settings"}),
        ("group", {"groupId": 42, "traits": {"n": 1}}, {"groupId": "42", "traits": {"n": 1}}),
        ("alias", {"previousId": "a1"}, {"previousId": "a1"}),
    ],
)
def test_each_type_carries_its_fields(
    kind: str, fields: dict[str, Any], expected: dict[str, Any]
) -> None:
    message = build(kind, fields)
    assert message["type"] == kind
    assert {k: message[k] for k in expected} == expected


@pytest.mark.parametrize(
    ("kind", "fields", "common", "field"),
    [
        ("track", {"event": "x"}, {"user_id": None}, "user_id"),
        ("track", {"event": "x"}, {"user_id": "  "}, "user_id"),
        ("track", {}, {}, "event"),
        ("track", {"event": ""}, {}, "event"),
        ("group", {}, {}, "group_id"),
        ("alias", {}, {}, "previous_id"),
        ("alias", {"previousId": "a"}, {"user_id": None}, "user_id"),
        ("track", {"event": "x"}, {"message_id": "m" * 101}, "message_id"),
        ("track", {"event": "x", "properties": {"p": float("nan")}}, {}, "properties.p"),
        ("track", {"event": "x", "properties": {"a": [1, {"b": float("inf")}]}}, {}, "properties.a[1].b"),  # noqa: E501
        ("track", {"event": "x", "properties": {"d": Decimal("NaN")}}, {}, "properties.d"),
        ("track", {"event": "x", "properties": {"big": 10**5000}}, {}, "properties.big"),
    ],
)  # fmt: skip
def test_invalid_values_raise_value_error_naming_the_field(
    kind: str, fields: dict[str, Any], common: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        encode_message(build(kind, fields, **common))  # ids at build, values at encode
    assert isinstance(caught.value, ValueError)
    assert caught.value.field == field
    assert str(caught.value).startswith(field)


@pytest.mark.parametrize(
    ("fields", "common", "field"),
    [
        ({"event": "x"}, {"user_id": True}, "user_id"),
        ({"event": "x"}, {"user_id": 1.5}, "user_id"),
        ({"event": 3}, {}, "event"),
        ({"event": "x", "properties": ["a"]}, {}, "properties"),
        ({"event": "x", "properties": {"price": object()}}, {}, "properties.price"),
        ({"event": "x", "properties": {"raw": b"\x00"}}, {}, "properties.raw"),
        ({"event": "x", "properties": {"k": {(1, 2): "v"}}}, {}, "properties.k[(1, 2)]"),
        ({"event": "x"}, {"timestamp": 1577836800}, "timestamp"),
        ({"event": "x"}, {"context": "ctx"}, "context"),
    ],
)
def test_wrong_types_raise_type_error_naming_the_field(
    fields: dict[str, Any], common: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidTypeError) as caught:
        encode_message(build("track", fields, **common))
    assert isinstance(caught.value, TypeError)
    assert caught.value.field == field


def test_conversions() -> None:
    uid = uuid.UUID("12345678-1234-5678-1234-567812345678")
    value = normalise(
        {
            "when": dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            "naive": dt.datetime(2020, 1, 2, 3, 4, 5),
            "day": dt.date(2020, 1, 2),
            "price": Decimal("9.99"),
            "id": uid,
            "color": Color.RED,
            "size": Size.BIG,
            "pair": (1, 2),
            "tags": {"b", "a"},
            "frozen": frozenset({3}),
            1: "int key",
        },
        "properties",
    )
    assert value == {
        "when": "2020-01-02T01:04:05.000Z",
        "naive": "2020-01-02T03:04:05.000Z",
        "day": "2020-01-02",
        "price": 9.99,
        "id": str(uid),
        "color": "red",
        "size": 3,
        "pair": [1, 2],
        "tags": ["a", "b"],
        "frozen": [3],
        "1": "int key",
    }
    assert type(value["size"]) is int
    json.dumps(value, allow_nan=False)


def test_numeric_ids_become_strings_and_booleans_are_refused() -> None:
    message = build("group", {"groupId": 7}, user_id=12, anonymous_id="a")
    assert (message["userId"], message["groupId"], message["anonymousId"]) == ("12", "7", "a")
    with pytest.raises(InvalidTypeError):
        build("group", {"groupId": False})


def test_encoding_reads_caller_dicts_without_changing_them() -> None:
    properties = {"nested": {"when": dt.date(2020, 1, 1)}, "tags": ("a",), "s": {2, 1}}
    context = {"ip": "1.2.3.4"}
    before = repr((properties, context))
    data = encode_message(build("track", {"event": "x", "properties": properties}, context=context))
    assert repr((properties, context)) == before
    assert json.loads(data)["properties"] == {
        "nested": {"when": "2020-01-01"},
        "tags": ["a"],
        "s": [1, 2],
    }


def test_context_library_is_merged_under_the_callers_context() -> None:
    message = build("track", {"event": "x"}, context={"ip": "1.2.3.4"})
    assert message["context"] == {"library": dict(LIBRARY), "ip": "1.2.3.4"}


def test_cycles_and_deep_nesting_are_refused() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(ValidationError, match="circular"):
        normalise(loop, "properties")
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(50_000):  # past the C encoder's limit on every Python (3.12+ allow ~10,000)
        node["x"] = {}
        node = node["x"]
    with pytest.raises(ValidationError, match="nested too deeply") as caught:
        normalise(deep, "traits")
    assert caught.value.field == "traits"
    message = build("identify", {"traits": deep})
    with pytest.raises(ValidationError, match="nested too deeply") as caught:
        encode_message(message)
    assert caught.value.field == "traits"
    shared = {"a": 1}
    assert normalise({"x": shared, "y": shared}, "p") == {"x": {"a": 1}, "y": {"a": 1}}


def test_timestamp_formats() -> None:
    assert format_timestamp(NOW) == "2026-11-23T10:00:00.123Z"
    assert utc_text(NOW.timestamp()) == "2026-11-23T10:00:00.123Z"
    assert utc_text(0.0) == "1970-01-01T00:00:00.000Z"
    assert utc_text(1_800_000_000.9999) == "2027-01-15T08:00:00.999Z"
    message = build("track", {"event": "x"}, timestamp=dt.datetime(2020, 5, 1))
    assert message["timestamp"] == "2020-05-01T00:00:00.000Z"
    assert build("track", {"event": "x"}, message_id="mine")["messageId"] == "mine"


def test_encoding_is_compact_utf8_and_size_is_checked() -> None:
    message = build("track", {"event": "Café ☕", "properties": {"k": "é"}})
    data = encode_message(message)
    assert json.loads(data) == message
    assert "Café ☕".encode() in data and b": " not in data
    big = build("track", {"event": "x", "properties": {"blob": "x" * MAX_MESSAGE_BYTES}})
    with pytest.raises(MessageTooLargeError) as caught:
        encode_message(big)
    assert caught.value.size > MAX_MESSAGE_BYTES
    assert str(caught.value.size) in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_lone_surrogates_are_refused_naming_the_field() -> None:
    message = build("track", {"event": "x", "properties": {"bad": "\ud800"}})
    with pytest.raises(ValidationError) as caught:
        encode_message(message)
    assert caught.value.field == "properties.bad"


def test_middleware_output_that_is_not_json_names_the_field() -> None:
    message = build("track", {"event": "x"})
    message["properties"] = {"oops": object()}
    with pytest.raises(InvalidTypeError) as caught:
        encode_message(message)
    assert caught.value.field == "properties.oops"


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        ("2015-06-01T12:00:00.000Z", "2015-06-01T12:00:00.000Z"),
        ("2015-06-01T14:00:00+02:00", "2015-06-01T12:00:00.000Z"),
        ("2015-06-01 12:00:00.1234567", "2015-06-01T12:00:00.123Z"),
        ("2015-06-01", "2015-06-01T00:00:00.000Z"),
    ],
)
def test_an_iso_8601_timestamp_string_is_accepted_and_normalised_to_utc(
    text: str, wire: str
) -> None:
    assert build("track", {"event": "x"}, timestamp=text)["timestamp"] == wire


@pytest.mark.parametrize("text", ["yesterday", "2015", "2015-13-01T00:00:00Z", "", "12:00"])
def test_a_malformed_timestamp_string_is_refused_naming_the_field(text: str) -> None:
    with pytest.raises(ValidationError, match="not an ISO-8601 date-time") as raised:
        build("track", {"event": "x"}, timestamp=text)
    assert raised.value.field == "timestamp"
