"""The user's tests: only the documented `analytics_events` fixture, no network."""

from __future__ import annotations

import os

import pytest

# The handler module builds its client at import, from the environment, as on Lambda.
os.environ.setdefault("ANALYTICS_WRITE_KEY", "test-write-key")

import checkout

CART = [{"sku": "tee", "price": 19.5, "quantity": 2}, {"sku": "mug", "price": 9.0}]


@pytest.fixture
def events(analytics_events):
    analytics_events.attach(checkout.analytics)  # the module's own client, for this test only
    return analytics_events


def test_checkout_tracks_the_order(events):
    assert checkout.handler({"user_id": "u1", "plan": "pro", "items": CART}, None) == {
        "statusCode": 200
    }

    events.assert_identified(user_id="u1", traits={"plan": "pro"})
    events.assert_tracked("Product Added", user_id="u1", times=2)
    events.assert_tracked("Product Added", properties={"sku": "mug"})
    order = events.assert_tracked(
        "Order Completed", user_id="u1", properties={"revenue": 48.0}, context={"stage": "dev"}
    )
    assert order["context"]["library"]["name"] == "lambda_analytics"
    assert events.event_names == ["Product Added", "Product Added", "Order Completed"]
    assert len(events.requests) == 1  # batch=True: one request for the invocation


def test_empty_cart_completes_no_order(events):
    checkout.handler({"user_id": 7}, None)

    events.assert_identified(user_id=7, traits={"plan": "free"})  # ints become strings
    events.assert_not_tracked("Order Completed")
    assert events.events == []


def test_sign_up_on_the_default_client(analytics_events):
    checkout.sign_up({"visitor": "v-1", "source": "ads"}, None)

    analytics_events.assert_tracked("Signed Up", anonymous_id="v-1", properties={"source": "ads"})
    assert analytics_events.tracked("Signed Up")[0]["anonymousId"] == "v-1"


def test_clear_forgets_what_was_captured(analytics_events):
    checkout.sign_up({"visitor": "v-2", "source": "mail"}, None)
    analytics_events.clear()

    assert analytics_events.messages == []


def test_invalid_calls_still_raise(events):
    # The real pipeline runs: bad input raises at the call, naming the field.
    with pytest.raises(ValueError, match="user_id"):
        checkout.analytics.track(event="No One")
    assert events.messages == []
