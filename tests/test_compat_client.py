"""``lambda_analytics.compat.Client``: code written for segment-analytics-python, unchanged.

:func:`incumbent_users_code` is written the way the incumbent's users write it; only its import
line was changed.  What the incumbent returns and sends for it was captured once by running the
same function against the collector with segment-analytics-python 2.4.0 in a scratch venv
(``from segment.analytics import Client``): :data:`INCUMBENT_RETURNED` holds it.  Its wire
messages are exactly what it returns (same keys, same order, ``None`` sent as ``null``) with
date values as ``isoformat()`` text, so one list serves both.  To capture it again, set
``LAMBDA_ANALYTICS_INCUMBENT_PYTHON`` to an interpreter that has segment-analytics-python and
:func:`test_the_expectations_are_what_the_incumbent_sends` runs it side by side.

The differences allowed below are the ones docs/migration/incumbent.md documents: the
``timestamp`` is UTC with a ``Z`` (the same instant as the incumbent's offset form),
``context.library`` names this SDK, and a field the incumbent sends as ``null`` is left out.
"""

from __future__ import annotations

import datetime as dt
import decimal
import inspect
import json
import logging
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import WRITE_KEY, missing_prerequisite
from oauth_server import OAuthServer, skip_reason

from lambda_analytics import ConfigurationError, InvalidTypeError, ValidationError, lifecycle
from lambda_analytics.collector import Collector, ReceivedRequest
from lambda_analytics.compat import Client
from lambda_analytics.messages import LIBRARY

WRONG_KEY = "not-the-write-key"
NOW = "<the time of the call>"
NEW_ID = "<a new uuid4>"
INCUMBENT_LIBRARY = {"name": "analytics-python", "version": "2.4.0"}
INCUMBENT_PYTHON = "LAMBDA_ANALYTICS_INCUMBENT_PYTHON"


def incumbent_users_code(host: str, write_key: str, wrong_key: str) -> Any:
    """Code written for segment-analytics-python's Client; only the import line changes."""
    import datetime
    import uuid

    from lambda_analytics.compat import Client  # was: from segment.analytics import Client

    failures = []

    def on_error(error, items):
        failures.append((getattr(error, "status", None), [item["type"] for item in items]))

    utc = datetime.timezone.utc
    signed_up = datetime.datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=utc)
    paris = datetime.timezone(datetime.timedelta(hours=2))
    visitor = uuid.UUID("6f2c1f9e-8a4b-4c3d-9e1f-2a3b4c5d6e7f")

    analytics = Client(write_key, host=host, on_error=on_error, gzip=True)
    returned = [
        analytics.identify(
            1234,
            {
                "email": "ada@example.com",
                "signed_up": signed_up,
                "birthday": datetime.date(1990, 12, 10),
            },
        ),
        analytics.track(
            1234,
            "Order Completed",
            {"revenue": 9.99, "coupon": None, "ships_on": datetime.date(2024, 5, 2)},
            {"ip": "203.0.113.7"},
            signed_up,
        ),
        analytics.track(
            user_id="ada",
            event="Checkout Started",
            properties={"items": 3},
            anonymous_id=visitor,
            integrations={"All": False, "Mixpanel": True},
            message_id=uuid.UUID("0b7e6a52-5d1c-4f0e-a1b2-c3d4e5f60718"),
        ),
        analytics.track(anonymous_id="anon-7f3a", event="Viewed Pricing"),
        analytics.group(
            1234, "acme", {"name": "Acme", "employees": 150, "founded": datetime.date(1999, 1, 1)}
        ),
        analytics.alias("anon-7f3a", 1234),
        analytics.page(1234, "Docs", "Install", {"url": "https://example.com/docs/install"}),
        analytics.page(anonymous_id="anon-7f3a", name="Pricing"),
        analytics.screen(
            1234,
            "Settings",
            "Notifications",
            {"enabled": True},
            None,
            datetime.datetime(2024, 5, 1, 14, 30, tzinfo=paris),
        ),
        analytics.screen(user_id=9876543210, name="Home", context={"app": {"version": "2.1"}}),
        analytics.identify(
            user_id="ada",
            anonymous_id=visitor,
            traits={"visits": 2},
            timestamp=datetime.datetime(2024, 5, 3, 8, 0),
        ),
    ]
    analytics.flush()
    returned.append(analytics.track(1234, "Logged Out"))
    analytics.join()
    analytics.shutdown()

    sync = Client(write_key, host=host, sync_mode=True)
    returned.append(sync.track("u-sync", "Report Generated", {"rows": 120}))
    sync.flush()  # (the incumbent's join() and shutdown() raise TypeError in sync mode)

    offline = Client(write_key, host=host, send=False)
    returned.append(offline.identify("u-offline", {"plan": "free"}))
    offline.shutdown()

    refused = Client(wrong_key, host=host, on_error=on_error, max_retries=0)
    returned.append(refused.track("u-refused", "Never Arrives"))
    refused.flush()
    refused.shutdown()
    return returned, failures


"""What segment-analytics-python 2.4.0 returned (and sent) for incumbent_users_code, in order."""
INCUMBENT_RETURNED: list[dict[str, Any]] = [
    {
        "integrations": {},
        "anonymousId": None,
        "timestamp": NOW,
        "context": {"library": INCUMBENT_LIBRARY},
        "type": "identify",
        "userId": "1234",
        "traits": {
            "email": "ada@example.com",
            "signed_up": "2024-05-01T12:30:15.123456+00:00",
            "birthday": "1990-12-10",
        },
        "messageId": NEW_ID,
    },
    {
        "integrations": {},
        "anonymousId": None,
        "properties": {"revenue": 9.99, "coupon": None, "ships_on": "2024-05-02"},
        "timestamp": "2024-05-01T12:30:15.123+00:00",
        "context": {"ip": "203.0.113.7", "library": INCUMBENT_LIBRARY},
        "userId": "1234",
        "type": "track",
        "event": "Order Completed",
        "messageId": NEW_ID,
    },
    {
        "integrations": {"All": False, "Mixpanel": True},
        "anonymousId": "6f2c1f9e-8a4b-4c3d-9e1f-2a3b4c5d6e7f",
        "properties": {"items": 3},
        "timestamp": NOW,
        "context": {"library": INCUMBENT_LIBRARY},
        "userId": "ada",
        "type": "track",
        "event": "Checkout Started",
        "messageId": "0b7e6a52-5d1c-4f0e-a1b2-c3d4e5f60718",
    },
    {
        "integrations": {},
        "anonymousId": "anon-7f3a",
        "properties": {},
        "timestamp": NOW,
        "context": {"library": INCUMBENT_LIBRARY},
        "userId": None,
        "type": "track",
        "event": "Viewed Pricing",
        "messageId": NEW_ID,
    },
    {
        "integrations": {},
        "anonymousId": None,
        "timestamp": NOW,
        "groupId": "acme",
        "context": {"library": INCUMBENT_LIBRARY},
        "userId": "1234",
        "traits": {"name": "Acme", "employees": 150, "founded": "1999-01-01"},
        "type": "group",
        "messageId": NEW_ID,
    },
    {
        "integrations": {},
        "previousId": "anon-7f3a",
        "timestamp": NOW,
        "context": {"library": INCUMBENT_LIBRARY},
        "userId": "1234",
        "type": "alias",
        "messageId": NEW_ID,
        "anonymousId": None,
    },
    {
        "integrations": {},
        "anonymousId": None,
        "properties": {"url": "https://example.com/docs/install"},
        "timestamp": NOW,
        "category": "Docs",
        "context": {"library": INCUMBENT_LIBRARY},
        "userId": "1234",
        "type": "page",
        "name": "Install",
        "messageId": NEW_ID,
    },
    {
        "integrations": {},
        "anonymousId": "anon-7f3a",
        "properties": {},
        "timestamp": NOW,
        "category": None,
        "context": {"library": INCUMBENT_LIBRARY},
        "userId": None,
        "type": "page",
        "name": "Pricing",
        "messageId": NEW_ID,
    },
    {
        "integrations": {},
        "anonymousId": None,
        "properties": {"enabled": True},
        "timestamp": "2024-05-01T14:30:00.000+02:00",
        "category": "Settings",
        "context": {"library": INCUMBENT_LIBRARY},
        "userId": "1234",
        "type": "screen",
        "name": "Notifications",
        "messageId": NEW_ID,
    },
    {
        "integrations": {},
        "anonymousId": None,
        "properties": {},
        "timestamp": NOW,
        "category": None,
        "context": {"app": {"version": "2.1"}, "library": INCUMBENT_LIBRARY},
        "userId": "9876543210",
        "type": "screen",
        "name": "Home",
        "messageId": NEW_ID,
    },
    {
        "integrations": {},
        "anonymousId": "6f2c1f9e-8a4b-4c3d-9e1f-2a3b4c5d6e7f",
        "timestamp": "2024-05-03T08:00:00.000+00:00",
        "context": {"library": INCUMBENT_LIBRARY},
        "type": "identify",
        "userId": "ada",
        "traits": {"visits": 2},
        "messageId": NEW_ID,
    },
    {
        "integrations": {},
        "anonymousId": None,
        "properties": {},
        "timestamp": NOW,
        "context": {"library": INCUMBENT_LIBRARY},
        "userId": "1234",
        "type": "track",
        "event": "Logged Out",
        "messageId": NEW_ID,
    },
    {
        "integrations": {},
        "anonymousId": None,
        "properties": {"rows": 120},
        "timestamp": NOW,
        "context": {"library": INCUMBENT_LIBRARY},
        "userId": "u-sync",
        "type": "track",
        "event": "Report Generated",
        "messageId": NEW_ID,
    },
    {
        "integrations": {},
        "anonymousId": None,
        "timestamp": NOW,
        "context": {"library": INCUMBENT_LIBRARY},
        "type": "identify",
        "userId": "u-offline",
        "traits": {"plan": "free"},
        "messageId": NEW_ID,
    },
    {
        "integrations": {},
        "anonymousId": None,
        "properties": {},
        "timestamp": NOW,
        "context": {"library": INCUMBENT_LIBRARY},
        "userId": "u-refused",
        "type": "track",
        "event": "Never Arrives",
        "messageId": NEW_ID,
    },
]
"""What segment-analytics-python 2.4.0 returned for :func:`incumbent_users_code`, in order.

Its wire messages are these same dicts, except the ``send=False`` one (never sent) and the
last one (sent, refused with 401); ``NOW`` and ``NEW_ID`` stand for generated values.
"""
SENT_BY_INCUMBENT = INCUMBENT_RETURNED[:-2]
"""The messages the collector accepted from the incumbent: all but the last two."""
OUR_IMPORT = "from lambda_analytics.compat import Client"
INCUMBENT_IMPORT = "from segment.analytics import Client"


def instant(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def as_json(message: dict[str, Any]) -> dict[str, Any]:
    """A returned message as JSON text would have it: dates as the incumbent writes them."""
    result: dict[str, Any] = json.loads(json.dumps(message, default=lambda v: v.isoformat()))
    return result


def assert_like_incumbent(
    ours: dict[str, Any], theirs: dict[str, Any], window: tuple[float, float], *, wire: bool
) -> None:
    """Field by field, allowing only the differences the migration table documents."""
    expected = {key: value for key, value in theirs.items() if not (wire and value is None)}
    if wire:  # a field the incumbent sends as null is left out; JSON key order means nothing
        assert sorted(ours) == sorted(expected), theirs
    else:  # the returned dict: the same keys in the same order, None included
        assert list(ours) == list(expected), theirs
    for key, value in expected.items():
        got, where = ours[key], f"{theirs['type']} {theirs.get('event') or ''} {key}"
        if key == "timestamp":  # UTC with a Z where the incumbent keeps the offset
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", got), where
            if value == NOW:
                assert window[0] - 0.001 <= instant(got).timestamp() <= window[1], where
            else:
                assert instant(got) == instant(value), where
        elif key == "messageId" and value == NEW_ID:
            assert uuid.UUID(got).version == 4, where
        elif key == "context":  # the library is this SDK
            assert got == {**value, "library": dict(LIBRARY)}, where
        else:
            assert got == value, where


def basic(key: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


# -- the acceptance test -----------------------------------------------------------------------


def test_incumbent_code_runs_unchanged_and_the_collector_receives_what_the_incumbent_sent(
    collector: Collector,
) -> None:
    start = time.time()
    returned, failures = incumbent_users_code(collector.url, WRITE_KEY, WRONG_KEY)
    window = (start, time.time())

    # What each call returned: (success, msg), msg as the incumbent builds it.
    assert [success for success, _ in returned] == [True] * len(INCUMBENT_RETURNED)
    for (_, msg), theirs in zip(returned, INCUMBENT_RETURNED, strict=True):
        assert_like_incumbent(as_json(msg), theirs, window, wire=False)

    # What the collector received, field by field, in order; and it is what each call returned.
    received = collector.messages
    for ours, theirs in zip(received, SENT_BY_INCUMBENT, strict=True):
        assert_like_incumbent(ours, theirs, window, wire=True)
    assert [m["messageId"] for m in received] == [
        msg["messageId"] for _, msg in returned[: len(SENT_BY_INCUMBENT)]
    ]

    # The requests: gzip where asked, the write key as the incumbent sends it, the refusal.
    *batched, synced, refused = collector.requests
    assert [r.status for r in (*batched, synced, refused)] == [200] * (len(batched) + 1) + [401]
    assert all(r.headers["content-encoding"] == "gzip" for r in batched)
    assert sum(len(batch(r)) for r in batched) == len(SENT_BY_INCUMBENT) - 1
    assert "content-encoding" not in synced.headers and len(batch(synced)) == 1
    for request, key in [*((r, WRITE_KEY) for r in (*batched, synced)), (refused, WRONG_KEY)]:
        assert request.headers["authorization"] == basic(key)
        assert request.payload is not None and request.payload["writeKey"] == key
    assert_like_incumbent(batch(refused)[0], INCUMBENT_RETURNED[-1], window, wire=True)
    assert failures == [(401, ["track"])]  # on_error(error, items), as the incumbent calls it


def batch(request: ReceivedRequest) -> list[dict[str, Any]]:
    assert request.payload is not None
    messages: list[dict[str, Any]] = request.payload["batch"]
    return messages


def test_the_expectations_are_what_the_incumbent_sends(collector: Collector) -> None:
    """Side by side: the same code, its import changed back, run by segment-analytics-python."""
    python = os.environ.get(INCUMBENT_PYTHON)
    if not python:  # tasks.py sets it (a venv with segment-analytics-python 2.4.0)
        missing_prerequisite(f"set {INCUMBENT_PYTHON} to a Python with segment-analytics-python")
    ours = inspect.getsource(incumbent_users_code)
    theirs = ours.replace(OUR_IMPORT, INCUMBENT_IMPORT)
    changed = [a for a, b in zip(ours.splitlines(), theirs.splitlines(), strict=True) if a != b]
    assert len(changed) == 1 and changed[0].strip().startswith(OUR_IMPORT)
    runner = (
        "from __future__ import annotations\nimport json, sys\n" + theirs + "\n"
        "returned, failures = incumbent_users_code(*sys.argv[1:4])\n"
        "print(json.dumps([returned, failures], default=lambda v: v.isoformat()))\n"
    )
    done = subprocess.run(
        [python, "-c", runner, collector.url, WRITE_KEY, WRONG_KEY],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    returned, failures = json.loads(done.stdout.splitlines()[-1])

    def placeholders(message: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
        copy = dict(message)
        for key in ("timestamp", "messageId"):
            if expected[key] in (NOW, NEW_ID):
                copy[key] = expected[key]
        assert copy["context"]["library"] == INCUMBENT_LIBRARY
        return copy

    for (success, msg), expected in zip(returned, INCUMBENT_RETURNED, strict=True):
        assert success
        assert placeholders(msg, expected) == expected
        assert list(msg) == list(expected)
    sent = [msg for _, msg in returned[: len(SENT_BY_INCUMBENT)]]
    assert collector.messages == sent  # the incumbent sends exactly what it returns
    assert failures == [[401, ["track"]]]


# -- the constructor ---------------------------------------------------------------------------

INCUMBENT_PARAMETERS = [
    "write_key", "host", "debug", "max_queue_size", "send", "on_error", "gzip", "max_retries",
    "sync_mode", "timeout", "proxies", "thread", "upload_size", "upload_interval",
    "log_handler", "oauth_client_id", "oauth_client_key", "oauth_key_id", "oauth_auth_server",
    "oauth_scope", "max_total_backoff_duration", "max_rate_limit_duration",
]  # fmt: skip
"""segment-analytics-python 2.4.0's ``Client.__init__``, in its order."""
INCUMBENT_CALLS = {
    "identify": "user_id traits context timestamp anonymous_id integrations message_id",
    "track": "user_id event properties context timestamp anonymous_id integrations message_id",
    "alias": "previous_id user_id context timestamp integrations message_id",
    "group": "user_id group_id traits context timestamp anonymous_id integrations message_id",
    "page": "user_id category name properties context timestamp anonymous_id integrations "
    "message_id",
    "screen": "user_id category name properties context timestamp anonymous_id integrations "
    "message_id",
    "flush": "",
    "join": "",
    "shutdown": "",
}


def positional(function: Any) -> list[str]:
    parameters = inspect.signature(function).parameters.values()
    return [p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD and p.name != "self"]


def test_the_signatures_are_the_incumbents() -> None:
    assert positional(Client) == INCUMBENT_PARAMETERS
    for name, parameters in INCUMBENT_CALLS.items():
        assert positional(getattr(Client, name)) == parameters.split(), name


@pytest.fixture
def clients(collector: Collector) -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for client in made:
        client.shutdown()


def make(made: list[Client], collector: Collector, *args: Any, **kwargs: Any) -> Client:
    kwargs.setdefault("host", collector.url)
    client = Client(WRITE_KEY, *args, **kwargs)
    made.append(client)
    return client


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({}, {"flush_at": 100, "flush_interval": 0.5, "max_queue_size": 10_000, "gzip": False,
              "timeout": 15.0, "disable": False, "proxy": None}),
        ({"sync_mode": True, "upload_size": 50}, {"flush_at": 1}),
        ({"upload_size": 20, "upload_interval": 2}, {"flush_at": 20, "flush_interval": 2.0}),
        ({"flush_at": 20, "flush_interval": 2}, {"flush_at": 20, "flush_interval": 2.0}),
        ({"send": False}, {"disable": True}),
        ({"gzip": True, "timeout": 3}, {"gzip": True, "timeout": 3.0}),
        ({"max_queue_size": 0}, {"max_queue_size": sys.maxsize}),  # the incumbent: no bound
        ({"proxies": {"https": "http://proxy.internal:3128"}},
         {"proxy": "http://proxy.internal:3128"}),
        ({"proxies": {"http": "proxy.internal:3128"}}, {"proxy": None}),  # not for https
        ({"proxies": {"all": "proxy.internal:3128"}}, {"proxy": "http://proxy.internal:3128"}),
    ],
)  # fmt: skip
def test_the_incumbents_settings_map_onto_analytics(
    arguments: dict[str, Any], expected: dict[str, Any]
) -> None:
    client = Client(WRITE_KEY, **arguments)
    settings = client.analytics.settings
    assert {name: getattr(settings, name) for name in expected} == expected
    client.shutdown()


def test_retries_timeout_and_host(collector: Collector) -> None:
    client = Client(WRITE_KEY, collector.url, False, 10, True, None, False, 2)  # positionally
    assert client.analytics.settings.retry.max_retries == 2
    assert client.analytics.url == collector.url + "/v1/batch"
    assert Client(WRITE_KEY, send=False).analytics.settings.retry.max_retries == 10
    assert client.track("u1", "Positional Settings")[0]
    client.shutdown()


@pytest.mark.parametrize(
    "arguments",
    [
        {"upload_size": 10, "flush_at": 10},
        {"upload_interval": 1, "flush_interval": 1},
        {"max_total_backoff_duration": -1},
        {"max_rate_limit_duration": -1},
        {"oauth_client_id": "id", "oauth_key_id": "kid"},  # the incumbent: silently no OAuth
        {"proxies": "http://proxy.internal:3128"},
        {"proxies": {"https": "socks5://proxy.internal:1080"}},
        {"timeout": 15_000},  # milliseconds
    ],
)
def test_settings_that_cannot_work_are_refused(arguments: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Client(WRITE_KEY, **arguments)


def test_debug_and_log_handler_reach_this_sdks_logger() -> None:
    logger = logging.getLogger("lambda_analytics")
    level, handlers = logger.level, list(logger.handlers)
    handler = logging.NullHandler()
    try:
        Client(WRITE_KEY, send=False, debug=True, log_handler=handler)
        Client(WRITE_KEY, send=False, debug=True, log_handler=handler)
        assert logger.level == logging.DEBUG
        assert logger.handlers == [*handlers, handler]  # once, however many clients
    finally:
        logger.setLevel(level)
        logger.handlers[:] = handlers


# -- the calls -----------------------------------------------------------------------------------


def test_ids_of_every_kind_are_stringified(collector: Collector, clients: list[Client]) -> None:
    client = make(clients, collector, sync_mode=True)
    visitor = uuid.uuid4()
    results = [
        client.identify(visitor, {"plan": "pro"}),  # the incumbent refuses a UUID here
        client.group(" u1 ", 42),  # ... and sends a numeric group id as a JSON number
        client.alias(7, decimal.Decimal("1234")),
        client.track(12.5, "Scored", message_id=uuid.UUID(int=1)),
    ]
    assert all(success for success, _ in results)
    ids = [{k: msg[k] for k in ("userId", "groupId", "previousId") if k in msg}
           for _, msg in results]  # fmt: skip
    assert ids == [{"userId": str(visitor)}, {"userId": "u1", "groupId": "42"},
                   {"userId": "1234", "previousId": "7"}, {"userId": "12.5"}]  # fmt: skip
    assert results[3][1]["messageId"] == str(uuid.UUID(int=1))
    for (_, msg), received in zip(results, collector.messages, strict=True):
        assert {k: received.get(k) for k in ("userId", "groupId", "previousId", "messageId")} == {
            k: msg.get(k) for k in ("userId", "groupId", "previousId", "messageId")
        }


def test_the_callers_dicts_are_kept_and_never_changed(
    collector: Collector, clients: list[Client]
) -> None:
    client = make(clients, collector, sync_mode=True)
    properties = {"at": dt.datetime(2024, 5, 3, 8, 0), "items": [dt.date(2024, 5, 2)]}
    context = {"ip": "203.0.113.7"}
    success, msg = client.track("u1", "Kept", properties, context)
    assert success and msg["properties"] is properties
    msg["context"]["library"]["name"] = "changed"  # the returned message is yours to change
    assert LIBRARY["name"] == "lambda_analytics"
    assert context == {"ip": "203.0.113.7"}  # the incumbent adds its library to your dict
    assert properties == {"at": dt.datetime(2024, 5, 3, 8, 0), "items": [dt.date(2024, 5, 2)]}
    # Dates as the incumbent writes them: isoformat(), a naive datetime without an offset.
    assert collector.messages[0]["properties"] == {"at": "2024-05-03T08:00:00",
                                                   "items": ["2024-05-02"]}  # fmt: skip


def test_an_iso_8601_timestamp_is_accepted(collector: Collector, clients: list[Client]) -> None:
    client = make(clients, collector, sync_mode=True)
    success, msg = client.track("u1", "Imported", timestamp="2015-06-01T14:00:00+02:00")
    assert success and msg["timestamp"] == "2015-06-01T12:00:00.000Z"  # the incumbent refuses
    assert collector.messages[0]["timestamp"] == msg["timestamp"]


def test_an_empty_name_or_category_means_none(collector: Collector, clients: list[Client]) -> None:
    client = make(clients, collector, sync_mode=True)
    success, msg = client.page("u1", "", "Home")
    assert success and (msg["category"], msg["name"]) == (None, "Home")
    assert "category" not in collector.messages[0]


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda c: c.track("u1"), ValidationError),  # no event
        (lambda c: c.identify(traits={"plan": "pro"}), ValidationError),  # no id
        (lambda c: c.track(True, "Event"), InvalidTypeError),  # the incumbent sends "True"
        (lambda c: c.track("u1", "Event", ["not", "a", "dict"]), InvalidTypeError),
        (lambda c: c.track("u1", "Event", {"o": object()}), InvalidTypeError),  # it drops "o"
        (lambda c: c.track("u1", "Event", timestamp=dt.date(2024, 5, 1)), InvalidTypeError),
        (lambda c: c.group("u1", None), ValidationError),
        (lambda c: c.track("u1", "Event", {"big": "x" * 40_000}), ValidationError),
    ],
)
def test_invalid_input_raises_naming_the_field(
    collector: Collector, clients: list[Client], call: Any, error: type[Exception]
) -> None:
    client = make(clients, collector, sync_mode=True)
    with pytest.raises(error):
        call(client)
    assert collector.request_count == 0


def test_a_delivery_failure_returns_false_and_reaches_on_error(
    collector: Collector, clients: list[Client]
) -> None:
    failures: list[tuple[Any, list[dict[str, Any]]]] = []
    client = make(clients, collector, sync_mode=True, max_retries=0,
                  on_error=lambda error, items: failures.append((error, items)))  # fmt: skip
    collector.fail_next(400)
    success, msg = client.track("u1", "Refused")
    assert not success  # the incumbent raises the HTTP error out of a sync_mode call
    [(error, items)] = failures
    assert error.status == 400 and [item["messageId"] for item in items] == [msg["messageId"]]


def test_on_error_can_be_set_later(collector: Collector, clients: list[Client]) -> None:
    client = make(clients, collector, max_retries=0)
    seen: list[Any] = []
    client.on_error = lambda error, items: seen.append(items)
    assert client.on_error is not None and client.analytics.on_error is client.on_error
    collector.fail_next(400)
    client.track("u1", "Refused")
    assert client.flush().failed == 1 and len(seen) == 1


def test_a_full_queue_is_sent_not_dropped(collector: Collector, clients: list[Client]) -> None:
    client = make(clients, collector, max_queue_size=2)
    results = [client.track("u1", f"Event {n}") for n in range(3)]
    assert [success for success, _ in results] == [True, True, True]  # the incumbent: False
    assert collector.wait_for_messages(2)  # the first two, sent to make room for the third
    assert client.flush().sent == 3 and collector.message_count == 3  # (their answer read here)


def test_batching_flush_join_and_shutdown(collector: Collector) -> None:
    client = Client(WRITE_KEY, host=collector.url, upload_size=3)
    client.track("u1", "One")
    client.track("u1", "Two")
    assert collector.request_count == 0  # queued: no thread, nothing sent yet
    assert client.flush().sent == 2
    client.track("u1", "Three")
    assert client.join().sent == 1  # join() sends what is queued, and does not stop anything
    client.track("u1", "Four")
    assert client.shutdown().sent == 1
    success, msg = client.track("u1", "After Shutdown")
    assert not success and msg["event"] == "After Shutdown"  # the incumbent: True, never sent
    assert collector.message_count == 4


def test_send_false_returns_success_and_sends_nothing(collector: Collector) -> None:
    client = Client(host=collector.url, send=False)  # no write key needed
    success, msg = client.track("u1", "Offline")
    assert success and msg["event"] == "Offline"
    assert client.shutdown().sent == 0 and collector.request_count == 0


def test_what_is_queued_at_exit_is_sent_by_the_exit_handling(collector: Collector) -> None:
    # A script that never calls flush(): the incumbent's exit finishes the batch under way
    # (100 here) and drops the other 150.
    code = (
        f"{OUR_IMPORT}\n"
        f"analytics = Client({WRITE_KEY!r}, host={collector.url!r})\n"
        "for n in range(250):\n"
        "    analytics.track('u1', f'Queued {n}')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [m["event"] for m in collector.messages] == [f"Queued {n}" for n in range(250)]


def test_the_exit_flush_reaches_a_live_client(collector: Collector) -> None:
    client = Client(WRITE_KEY, host=collector.url)
    client.track("u1", "Queued")
    assert collector.request_count == 0
    assert lifecycle.flush_everything("the test") == 0
    assert collector.message_count == 1
    client.shutdown()


# -- OAuth -----------------------------------------------------------------------------------


def test_the_oauth_arguments_send_a_bearer_token() -> None:
    reason = skip_reason()
    if reason is not None:
        missing_prerequisite(reason)
    with (
        OAuthServer() as server,
        Collector(write_key=WRITE_KEY, token_validator=server.introspect) as protected,
    ):
        client = Client(
            WRITE_KEY, host=protected.url, sync_mode=True, oauth_client_id=server.client_id,
            oauth_client_key=server.private_key_pem, oauth_key_id=server.key_id,
            oauth_auth_server=server.issuer,
        )  # fmt: skip
        success, _ = client.track("u1", "With OAuth")
        client.shutdown()
        assert success
        assert protected.requests[0].headers["authorization"].startswith("Bearer ")
