"""Hypothesis over the six calls: any input is a valid message or a documented, named error.

For arbitrary ids, texts, timestamps and nested properties/traits/context/integrations (unicode
with lone surrogates, huge ints, NaN and infinity, deep nesting, explicit cycles, bytes, keys
that are ints, floats, None, tuples or bools, Decimal, datetime, sets, Enums), a call either

* produces a message that serializes to at most 32,000 bytes and that the real ``Collector``
  accepts (every valid example is POSTed to it), or
* raises ``ValidationError`` (a ValueError) or ``InvalidTypeError`` (a TypeError) whose
  ``.field`` is a path that exists in the caller's input (``properties.items[2].price``),

and never anything else, and never mutates the caller's values.  Batches cut by
``batching.split`` stay within 500,000 bytes and 2,500 messages, and are as large as allowed.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections import Counter
from collections.abc import Iterator, Mapping
from decimal import Decimal
from enum import Enum, IntEnum
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lambda_analytics import (
    Analytics,
    InvalidTypeError,
    MessageTooLargeError,
    RetryPolicy,
    ValidationError,
)
from lambda_analytics.batching import MAX_BATCH_BYTES, MAX_BATCH_MESSAGES, Envelope, split
from lambda_analytics.collector import Collector
from lambda_analytics.messages import (
    MAX_MESSAGE_BYTES,
    MAX_NESTING,
    encode_message,
    format_timestamp,
)

WRITE_KEY = "fuzz-write-key"
ENVELOPE = Envelope(WRITE_KEY)
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class Color(Enum):
    RED = "red"
    NAN = float("nan")  # an Enum whose value is not JSON
    PAIR = (1, "two")
    RAW = b"raw"


class Level(IntEnum):
    LOW = 1
    HIGH = 2


class Mode(str, Enum):
    FAST = "fast"


# -- strategies ---------------------------------------------------------------------------------

_surrogate_text = st.text(
    st.characters(categories=["Cs"]) | st.characters(), min_size=1, max_size=4
)
text = st.one_of(st.text(max_size=12), st.text(max_size=12), _surrogate_text)


class HugeInt(int):
    """An int that Hypothesis can print: repr() of a plain int over 4,300 digits raises."""

    def __repr__(self) -> str:
        return f"HugeInt(<{self.bit_length()} bits>)"


# Around CPython's 4,300-digit int/str limit (and the 4,000-bit cap the SDK once had).
huge_ints = st.sampled_from([(2, 3999), (2, 4000), (-2, 4000), (10, 4299), (10, 4300), (-10, 5000)])
huge_ints = huge_ints.map(lambda p: HugeInt((abs(p[0]) ** p[1]) * (1 if p[0] > 0 else -1)))
integers = st.integers() | huge_ints
_offsets = st.timedeltas(
    min_value=-dt.timedelta(hours=23, minutes=59), max_value=dt.timedelta(hours=23, minutes=59)
)
timezones = st.none() | st.just(dt.timezone.utc) | st.builds(dt.timezone, _offsets)
EDGE_DATETIMES = [
    dt.datetime.min.replace(tzinfo=dt.timezone(dt.timedelta(hours=5))),
    dt.datetime.max.replace(tzinfo=dt.timezone(dt.timedelta(hours=-5))),
    dt.datetime.min,
    dt.datetime.max,
]
datetimes = st.datetimes(timezones=timezones) | st.sampled_from(EDGE_DATETIMES)
ODD_OBJECTS = [object(), 1 + 2j, dt.time(1, 2), dt.timedelta(seconds=3), Ellipsis, print]

hashables = st.one_of(
    st.none(),
    st.booleans(),
    integers,
    st.floats(),
    text,
    st.sampled_from([Color.RED, Level.LOW, Mode.FAST]),
    st.tuples(st.integers(), text),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    integers,
    st.floats(),  # NaN and infinities included
    text,
    st.binary(max_size=4),
    st.decimals(places=None),  # NaN, sNaN, infinities, huge exponents
    datetimes,
    st.dates(),
    st.uuids(),
    st.sampled_from(list(Color) + list(Level) + list(Mode)),
    st.sampled_from(ODD_OBJECTS),
)
keys = st.one_of(
    st.text(max_size=8),
    st.text(max_size=8),
    _surrogate_text,
    st.integers(),
    huge_ints,
    st.floats(),
    st.none(),
    st.booleans(),
    st.tuples(st.integers()),
    st.sampled_from([Level.HIGH, Mode.FAST, Color.RED]),
)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(keys, children, max_size=4),
        st.tuples(children, children),
        st.frozensets(hashables, max_size=3),
        st.sets(hashables, max_size=3),
    )


values = st.recursive(scalars, _containers, max_leaves=10)


@st.composite
def deep(draw: st.DrawFn) -> Any:
    """Nesting around 100 levels, a few hundred, and past the interpreter's recursion limit."""
    value: Any = draw(scalars)
    depth = draw(st.integers(90, 110) | st.sampled_from([400, 3_000]))
    for level in range(depth):
        value = {"k": value} if level % 2 else [value]
    return value


@st.composite
def cyclic(draw: st.DrawFn) -> Any:
    """A container that reaches itself, built explicitly (a dict, a list, through a tuple)."""
    shape = draw(st.sampled_from(["dict", "list", "tuple", "view", "shared"]))
    outer: dict[Any, Any] = draw(st.dictionaries(st.text(max_size=4), values, max_size=3))
    if shape == "dict":
        outer["self"] = outer
    elif shape == "list":
        inner: list[Any] = [1]
        inner.append(inner)
        outer["loop"] = inner
    elif shape == "view":  # a read-only Mapping that shows the dict holding it
        outer["view"] = MappingProxyType(outer)
    elif shape == "tuple":
        holder: list[Any] = []
        loop = (holder,)
        holder.append(loop)
        outer["loop"] = loop
    else:  # the same list twice is not a cycle: it must be accepted as two copies
        shared = [1, 2]
        outer["a"], outer["b"] = shared, {"again": shared}
    return outer


padding = st.integers(0, 34_000).map(lambda n: "x" * n) | st.integers(0, 12_000).map(
    lambda n: "€" * n
)
nested = st.one_of(
    st.dictionaries(keys, values, max_size=5),
    st.dictionaries(keys, values, max_size=5),
    deep().map(lambda v: {"deep": v}),
    cyclic(),
    padding.map(lambda pad: {"pad": pad}),
    st.sampled_from([None, [], "not a dict", 5]),  # not a mapping at all
)
ids = st.one_of(st.none(), st.text(max_size=10), st.integers(), huge_ints, text)
odd_ids = st.one_of(ids, st.booleans(), st.floats(), st.binary(max_size=3))
message_ids = st.one_of(
    st.none(), st.none(), st.text(min_size=0, max_size=110), _surrogate_text, st.integers()
)
timestamps = st.one_of(st.none(), datetimes, st.dates(), st.text(max_size=5))

OPTIONAL = {
    "context": nested,
    "integrations": nested,
    "timestamp": timestamps,
    "message_id": message_ids,
}
OWN: Mapping[str, Mapping[str, st.SearchStrategy[Any]]] = {
    "identify": {"user_id": odd_ids, "anonymous_id": ids, "traits": nested},
    "track": {"user_id": odd_ids, "anonymous_id": ids, "event": text, "properties": nested},
    "page": {
        "user_id": odd_ids,
        "anonymous_id": ids,
        "name": st.none() | text,
        "category": st.none() | text | st.integers(),
        "properties": nested,
    },
    "screen": {
        "user_id": odd_ids,
        "anonymous_id": ids,
        "name": st.none() | text,
        "properties": nested,
    },
    "group": {"user_id": ids, "anonymous_id": odd_ids, "group_id": odd_ids, "traits": nested},
    "alias": {"user_id": odd_ids, "previous_id": odd_ids},
}


@st.composite
def call_arguments(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    arguments = {name: draw(strategy) for name, strategy in OWN[kind].items()}
    for name, strategy in OPTIONAL.items():
        if draw(st.booleans()):
            arguments[name] = draw(strategy)
    return arguments


# -- oracles ------------------------------------------------------------------------------------


def real_paths(arguments: Mapping[str, Any]) -> set[str]:
    """Every path a field name may legitimately use for these arguments."""
    found = set(arguments) | {"message"}  # "message": MessageTooLargeError, the whole message
    for name in ("properties", "traits", "context", "integrations"):
        if name in arguments:
            _walk(arguments[name], name, found)
    return found


def _walk(root: Any, root_path: str, found: set[str]) -> None:
    """Add the path of every value under ``root`` (iteratively: values nest thousands deep)."""
    # Containers between the root and here, counted: a cycle is followed once around (a copy
    # of the dict that closes the loop, like the message's context, names it one lap later).
    on_path: Counter[int] = Counter()
    stack: list[tuple[Any, str] | int] = [(root, root_path)]
    while stack:
        entry = stack.pop()
        if isinstance(entry, int):  # leaving a container
            on_path[entry] -= 1
            continue
        value, path = entry
        found.add(path)
        if isinstance(value, Enum):
            stack.append((value.value, path))
            continue
        if isinstance(value, (str, bytes)) or on_path[id(value)] >= 2:
            continue
        children: list[tuple[Any, str]] = []
        if isinstance(value, Mapping):
            for key, child in value.items():
                try:
                    found.add(f"{path}[{key!r}]")  # an unusable key
                    children.append((child, f"{path}.{key}"))
                except ValueError:  # an int too long to print: only its container is named
                    continue
        elif isinstance(value, (list, tuple)):
            children = [(child, f"{path}[{index}]") for index, child in enumerate(value)]
        elif isinstance(value, (set, frozenset)):  # sorted on the wire: any index, any element
            children = [(c, f"{path}[{i}]") for i in range(len(value)) for c in value]
        else:
            continue
        on_path[id(value)] += 1
        stack.append(id(value))
        stack.extend(reversed(children))


def snapshot(value: Any) -> str | None:
    """A repr to prove the caller's values were not mutated (None if it cannot be printed)."""
    try:
        return repr(value)
    except (ValueError, RecursionError):
        return None


class Capture:
    """``Analytics(disable=True)`` with a middleware that keeps the last wire-format message."""

    def __init__(self) -> None:
        self.client = Analytics(disable=True)
        self.message: dict[str, Any] | None = None
        self.client.add_middleware(self._keep)

    def _keep(self, message: dict[str, Any]) -> dict[str, Any]:
        self.message = message
        return message

    def call(self, kind: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
        self.message = None
        getattr(self.client, kind)(**arguments)
        assert self.message is not None
        return self.message


@pytest.fixture(scope="module")
def capture() -> Capture:
    return Capture()


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    with Collector(write_key=WRITE_KEY) as server:
        yield server


@pytest.fixture(scope="module")
def live(collector: Collector) -> Iterator[Analytics]:
    """The real path: no middleware, urllib3, the validating collector; one request a call."""
    client = Analytics(WRITE_KEY, host=collector.url, retry=RetryPolicy(max_retries=0))
    yield client
    client.close()


def check_call(
    client: Analytics, collector: Collector, kind: str, arguments: dict[str, Any]
) -> None:
    before = snapshot(arguments)
    collector.reset()
    try:
        result = getattr(client, kind)(**arguments)
    except (ValidationError, InvalidTypeError) as exc:
        paths = real_paths(arguments)
        assert exc.field in paths, f"{type(exc).__name__} names {exc.field!r}: not in the input"
        assert str(exc).startswith(f"{exc.field}: ")
        if isinstance(exc, MessageTooLargeError):
            assert exc.size > MAX_MESSAGE_BYTES == exc.limit
        assert collector.requests == []
    else:
        [request] = collector.requests
        assert request.status == 200, request.body[:300]  # the collector accepted it
        assert result.delivered and result.error is None
        [message] = collector.messages
        assert message["type"] == kind and message["messageId"] == result.message_id
        size = len(request.body) - ENVELOPE.overhead  # one message: no commas
        assert size <= MAX_MESSAGE_BYTES
        assert size == len(json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode())
    assert snapshot(arguments) == before, "the caller's values were changed"


# -- the six calls --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(OWN))
def test_any_input_is_a_valid_message_or_a_named_error(
    kind: str, live: Analytics, collector: Collector
) -> None:
    @FUZZ
    @given(arguments=call_arguments(kind))
    def run(arguments: dict[str, Any]) -> None:
        check_call(live, collector, kind, arguments)

    run()


# -- one poison in an otherwise valid structure: the error names exactly where it is ------------

clean_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
    st.datetimes(timezones=st.just(dt.timezone.utc)),
    st.decimals(allow_nan=False, allow_infinity=False, min_value=-(10**6), max_value=10**6),
    st.uuids(),
)
clean_keys = st.text(alphabet="abcxyz_ .[]0123456789", max_size=5)
clean = st.recursive(
    clean_scalars,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(clean_keys, kids, max_size=3),
    max_leaves=8,
)
POISONS: list[tuple[str, Any, type[Exception]]] = [
    ("nan", float("nan"), ValidationError),
    ("inf", float("-inf"), ValidationError),
    ("decimal nan", Decimal("NaN"), ValidationError),
    ("decimal overflow", Decimal("1e999"), ValidationError),
    ("decimal snan", Decimal("sNaN"), ValidationError),
    ("bytes", b"\x00", InvalidTypeError),
    ("bytearray", bytearray(b"x"), InvalidTypeError),
    ("object", object(), InvalidTypeError),
    ("complex", 1j, InvalidTypeError),
    ("int too long for str()", HugeInt(10**4300), ValidationError),
    ("surrogate", "ok \udcff", ValidationError),
    ("enum of nan", Color.NAN, ValidationError),
    ("enum of bytes", Color.RAW, InvalidTypeError),
]
NEVER_KEYS: list[Any] = [(1, 2), b"k", Color.RED, frozenset({1})]
"""Keys no JSON encoder turns into a string: always an InvalidTypeError."""
CONVERTIBLE_KEYS: list[Any] = [None, 1.5, True, -0.0, float("nan"), Level.HIGH]
"""Keys ``json.dumps`` turns into strings (or refuses, NaN): either is documented behaviour."""


def _slots(value: Any, path: str) -> Iterator[tuple[Any, str]]:
    """(container, path) for every dict and list in a clean value."""
    if isinstance(value, (dict, list)):
        yield value, path
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in items:
            sep = f".{key}" if isinstance(value, dict) else f"[{key}]"
            yield from _slots(child, path + sep)


@FUZZ
@given(
    base=st.dictionaries(clean_keys, clean, max_size=4),
    where=st.integers(min_value=0),
    poison=st.sampled_from(POISONS),
    field=st.sampled_from(["properties", "traits", "context", "integrations"]),
)
def test_a_poison_anywhere_is_named_by_its_path(
    base: dict[str, Any], where: int, poison: tuple[str, Any, type[Exception]], field: str
) -> None:
    slots = list(_slots(base, field))
    container, path = slots[where % len(slots)]
    _, value, expected = poison
    if isinstance(container, dict):
        key = "poisoned"
        while key in container:
            key += "_"
        container[key] = value
        path += f".{key}"
    else:
        container.append(value)
        path += f"[{len(container) - 1}]"
    kind, arguments = _carrier(field)
    arguments[field] = base
    with pytest.raises(expected) as raised:
        getattr(Analytics(disable=True), kind)(**arguments)
    assert raised.value.field == path  # type: ignore[attr-defined]


@FUZZ
@given(
    base=st.dictionaries(clean_keys, clean, min_size=1, max_size=4),
    where=st.integers(min_value=0),
    bad_key=st.sampled_from(NEVER_KEYS),
    cycle=st.booleans(),
)
def test_a_bad_key_or_a_cycle_anywhere_is_named_by_its_path(
    base: dict[str, Any], where: int, bad_key: Any, cycle: bool
) -> None:
    dicts = [(c, p) for c, p in _slots(base, "properties") if isinstance(c, dict)]
    container, path = dicts[where % len(dicts)]
    if cycle:  # the structure reaches its root again: named where the loop closes
        container["again"] = base
        expected, field = ValidationError, f"{path}.again"
    else:
        container[bad_key] = 1
        expected, field = InvalidTypeError, f"{path}[{bad_key!r}]"
    with pytest.raises(expected) as raised:
        Analytics(disable=True).track(user_id="u", event="e", properties=base)
    assert raised.value.field == field  # type: ignore[attr-defined]


@FUZZ
@given(
    base=st.dictionaries(clean_keys, clean, min_size=1, max_size=4),
    where=st.integers(min_value=0),
    key=st.sampled_from(CONVERTIBLE_KEYS),
)
def test_a_key_json_can_convert_is_converted_like_json_or_named(
    base: dict[str, Any], where: int, key: Any, capture: Capture
) -> None:
    dicts = [(c, p, r) for c, p, r in _routes(base, "properties", []) if isinstance(c, dict)]
    container, path, route = dicts[where % len(dicts)]
    spelled = json.dumps({key: 0}, allow_nan=True)[1:].split(":")[0]  # json's own key text
    assume(json.loads(spelled) not in container)
    container[key] = "value"
    try:
        message = capture.call("track", {"user_id": "u", "event": "e", "properties": base})
    except (ValidationError, InvalidTypeError) as exc:
        assert exc.field == f"{path}[{key!r}]"
        return
    assert not (isinstance(key, float) and math.isnan(key)), "NaN is no JSON key"
    received = message["properties"]
    for step in route:
        received = received[step]
    assert received[json.loads(spelled)] == "value"


def _routes(value: Any, path: str, route: list[Any]) -> Iterator[tuple[Any, str, list[Any]]]:
    """(container, path, keys to reach it) for every dict and list in a clean value."""
    if isinstance(value, (dict, list)):
        yield value, path, route
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in items:
            sep = f".{key}" if isinstance(value, dict) else f"[{key}]"
            yield from _routes(child, path + sep, [*route, key])


def _carrier(field: str) -> tuple[str, dict[str, Any]]:
    if field == "traits":
        return "identify", {"user_id": "u"}
    return "track", {"user_id": "u", "event": "e"}


@FUZZ
@given(
    length=st.integers(31_000, 32_100),
    char=st.sampled_from(["x", "é", "€", "😀", "\u2028", '"', "\\", "\x00"]),
    kind=st.sampled_from(["track", "identify", "group"]),
)
def test_the_32kb_limit_counts_exact_utf8_bytes(
    length: int, char: str, kind: str, capture: Capture
) -> None:
    width = len(json.dumps(char, ensure_ascii=False).encode()) - 2  # UTF-8 bytes, escaped
    pad = char * (length // width)

    def arguments(pad: str) -> dict[str, Any]:
        return {
            "track": {"user_id": "u", "event": "e", "properties": {"pad": pad}},
            "identify": {"user_id": "u", "traits": {"pad": pad}},
            "group": {"user_id": "u", "group_id": "g", "traits": {"pad": pad}},
        }[kind]

    # Every message of this shape has the same size but for the pad (uuid4 ids, 24-char times).
    empty = capture.call(kind, arguments(""))
    size = len(json.dumps(empty, separators=(",", ":"), ensure_ascii=False).encode())
    size += len(pad) * width
    try:
        message = capture.call(kind, arguments(pad))
    except MessageTooLargeError as exc:
        assert exc.size == size > MAX_MESSAGE_BYTES and exc.field == "message"
    else:
        assert len(encode_message(message)) == size <= MAX_MESSAGE_BYTES


# -- regressions found by the fuzzing above (each one a plain, named example) -------------------

_PLUS_5 = dt.timezone(dt.timedelta(hours=5))


@pytest.mark.parametrize(
    "arguments, field",
    [
        ({"timestamp": dt.datetime.min.replace(tzinfo=_PLUS_5)}, "timestamp"),
        ({"properties": {"when": dt.datetime.min.replace(tzinfo=_PLUS_5)}}, "properties.when"),
        (
            {
                "context": {
                    "at": [dt.datetime.max.replace(tzinfo=dt.timezone(-dt.timedelta(hours=5)))]
                }
            },
            "context.at[0]",
        ),
    ],
)
def test_a_datetime_that_overflows_utc_is_a_validation_error(
    arguments: dict[str, Any], field: str
) -> None:
    # datetime.min at +05:00 is 5 hours before year 1 in UTC: astimezone() raises
    # OverflowError, which is neither of the documented errors and names no field.
    with pytest.raises(ValidationError) as raised:
        Analytics(disable=True).track(user_id="u", event="e", **arguments)
    assert raised.value.field == field


def test_nesting_past_the_documented_cap_is_refused_the_same_on_every_python() -> None:
    # docs/getting-started.md, "What counts as bad input": more than MAX_NESTING levels is
    # refused at the call.
    # Without a cap, ~990 levels encoded on 3.11 and then failed to decode again (in the
    # collector: a 400 for the whole batch; in the SDK: RecursionError while reporting it).
    def nested(levels: int) -> Any:
        value: Any = "leaf"
        for _ in range(levels):
            value = {"k": value}
        return value

    analytics = Analytics(disable=True)
    # The message itself is the first level.
    analytics.track(user_id="u", event="e", properties=nested(MAX_NESTING - 1))
    for levels in (MAX_NESTING, 990, 50_000):
        with pytest.raises(ValidationError, match="nested") as raised:
            analytics.track(user_id="u", event="e", properties=nested(levels))
        assert raised.value.field == "properties"


def test_a_cycle_through_a_read_only_mapping_is_named() -> None:
    # A Mapping that is not a dict is converted with dict() at each visit, so the walk that
    # names the refused field never sees the same object twice: RecursionError escaped.
    looped: dict[str, Any] = {}
    looped["view"] = MappingProxyType(looped)
    with pytest.raises(ValidationError) as raised:
        Analytics(disable=True).track(user_id="u", event="e", properties=looped)
    assert raised.value.field in ("properties.view", "properties.view.view")


def test_a_signaling_nan_decimal_is_a_validation_error() -> None:
    # float(Decimal("sNaN")) raises ValueError: it must become the documented error, named.
    with pytest.raises(ValidationError) as raised:
        Analytics(disable=True).track(user_id="u", event="e", properties={"d": Decimal("sNaN")})
    assert raised.value.field == "properties.d"


@pytest.mark.parametrize(
    "call, arguments, field",
    [
        ("track", {"user_id": 10**5000, "event": "e"}, "user_id"),
        ("track", {"anonymous_id": -(10**4300), "event": "e"}, "anonymous_id"),
        ("group", {"user_id": "u", "group_id": 10**4300}, "group_id"),
        ("alias", {"user_id": "u", "previous_id": 10**4300}, "previous_id"),
        ("track", {"user_id": "u", "event": "e", "properties": {10**5000: 1}}, "properties"),
    ],
)
def test_an_int_too_long_for_str_is_a_validation_error(
    call: str, arguments: dict[str, Any], field: str
) -> None:
    # str() of an int over 4,300 digits raises a bare ValueError (CPython's int/str limit):
    # not a ValidationError, no .field.  Values are already capped at 4,000 bits; ids and keys
    # are not.
    with pytest.raises(ValidationError) as raised:
        getattr(Analytics(disable=True), call)(**arguments)
    assert raised.value.field.startswith(field)


@pytest.mark.parametrize(
    "call, arguments, field",
    [
        ("track", {"user_id": "u\ud800", "event": "e"}, "user_id"),
        ("track", {"anonymous_id": "\udfff", "event": "e"}, "anonymous_id"),
        ("track", {"user_id": "u", "event": "e", "message_id": "id-\ud800"}, "message_id"),
        ("group", {"user_id": "u", "group_id": "\ud800"}, "group_id"),
        ("alias", {"user_id": "u", "previous_id": "\ud800"}, "previous_id"),
        ("track", {"user_id": "u", "event": "e\ud800"}, "event"),
        (
            "track",
            {"user_id": "u", "event": "e", "properties": {"a": ["\ud800"]}},
            "properties.a[0]",
        ),
    ],
)
def test_a_lone_surrogate_is_named_by_the_argument(
    call: str, arguments: dict[str, Any], field: str
) -> None:
    # Every other error names the Python argument (user_id, group_id, message_id); the
    # surrogate check names the wire field instead (userId, groupId, messageId).
    with pytest.raises(ValidationError) as raised:
        getattr(Analytics(disable=True), call)(**arguments)
    assert raised.value.field == field


# -- batches ---------------------------------------------------------------------------------------

message_sizes = st.one_of(
    st.lists(st.integers(2, MAX_MESSAGE_BYTES), max_size=200),
    # runs of equal sizes reach the 2,500-message limit without drawing thousands of values
    st.lists(st.tuples(st.integers(2, MAX_MESSAGE_BYTES), st.integers(1, 3_000)), max_size=6).map(
        lambda runs: [size for size, count in runs for _ in range(count)]
    ),
    st.lists(st.tuples(st.integers(2, 400), st.integers(1, 6_000)), max_size=3).map(
        lambda runs: [size for size, count in runs for _ in range(count)]
    ),
)
write_keys = st.one_of(st.none(), st.text(max_size=60))


@FUZZ
@given(sizes=message_sizes, write_key=write_keys)
def test_batches_stay_within_the_protocol_limits_and_are_full(
    sizes: list[int], write_key: str | None
) -> None:
    assume(write_key is None or all(not 0xD800 <= ord(c) <= 0xDFFF for c in write_key))
    envelope = Envelope(write_key)
    batches = split(sizes, envelope)
    assert [i for batch in batches for i in batch] == list(range(len(sizes)))  # all, in order
    for number, batch in enumerate(batches):
        count, total = len(batch), sum(sizes[i] for i in batch)
        assert 1 <= count <= MAX_BATCH_MESSAGES
        assert envelope.size(count, total) <= MAX_BATCH_BYTES
        if number + 1 < len(batches):  # cut only when the next message would not fit
            following = sizes[batch.stop]
            assert (
                count == MAX_BATCH_MESSAGES
                or envelope.size(count + 1, total + following) > MAX_BATCH_BYTES
            )


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(2, 20_000), min_size=1, max_size=60),
    write_key=st.text(max_size=30).filter(lambda k: all(not 0xD800 <= ord(c) <= 0xDFFF for c in k)),
)
def test_real_bodies_have_the_predicted_size(sizes: list[int], write_key: str) -> None:
    envelope = Envelope(write_key)
    messages = [b'"' + b"y" * (size - 2) + b'"' for size in sizes]
    for batch in split(sizes, envelope):
        chunk = [messages[i] for i in batch]
        body = envelope.encode(chunk, format_timestamp(dt.datetime(2026, 1, 1)))
        assert len(body) == envelope.size(len(chunk), sum(map(len, chunk))) <= MAX_BATCH_BYTES
        payload = json.loads(body)
        assert len(payload["batch"]) == len(chunk) and payload.get("writeKey") == write_key
