"""An AWS Lambda handler that records a checkout with lambda_analytics.

The client lives at module level, so warm invocations reuse its connection pool (and, with
SnapStart, it is part of the snapshot).  ``@with_analytics`` sends the invocation's events as
one request before the handler returns or raises, ending before the deadline that
``context.get_remaining_time_in_millis()`` gives; what cannot be sent in time reaches
``on_error`` (here: the log, which CloudWatch keeps).

Settings come from ``ANALYTICS_*`` environment variables: ``ANALYTICS_WRITE_KEY`` (from Secrets
Manager, see template.yaml), and optionally ``ANALYTICS_HOST``, ``ANALYTICS_MAX_RETRIES`` and
the others listed in docs/getting-started.md.  Run it locally with ``python3 tasks.py demo``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import lambda_analytics
from lambda_analytics import DeliveryError, with_analytics

logger = logging.getLogger(__name__)


def report(error: DeliveryError, messages: list[dict[str, Any]]) -> None:
    """Delivery failures: log them, with the ids needed to find or resend the events."""
    ids = ", ".join(str(message.get("messageId")) for message in messages)
    logger.error("analytics: %d events not delivered: %s (ids: %s)", len(messages), error, ids)


analytics = lambda_analytics.configure(on_error=report)  # ANALYTICS_* variables, plus the hook


@with_analytics(analytics, batch=True, invocation_context=True, stable_message_ids=True)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    user = str(event.get("user_id", "anonymous-visitor"))
    items: list[dict[str, Any]] = event.get("items", [])
    analytics.identify(user_id=user, traits={"plan": event.get("plan", "free")})
    for item in items:
        analytics.track(user_id=user, event="Product Added", properties=item)
    total = round(sum(float(i.get("price", 0)) * int(i.get("quantity", 1)) for i in items), 2)
    analytics.track(user_id=user, event="Order Completed", properties={"revenue": total})
    return {"statusCode": 200, "body": json.dumps({"user": user, "total": total})}
