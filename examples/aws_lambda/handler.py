"""An AWS Lambda handler that records a checkout with lambda_analytics.

The client lives at module level, so warm invocations reuse its connection pool.
``@with_analytics`` flushes before the handler returns or raises, ending before the deadline
that ``context.get_remaining_time_in_millis()`` gives; what cannot be sent in time reaches
``on_error`` (here: the log, which CloudWatch keeps).

Settings come from the environment: ``ANALYTICS_WRITE_KEY`` (from Secrets Manager or an
encrypted parameter, see template.yaml) and, for local runs, ``ANALYTICS_HOST``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from lambda_analytics import Analytics, DeliveryError, with_analytics

logger = logging.getLogger(__name__)


def report(error: DeliveryError, messages: list[dict[str, Any]]) -> None:
    logger.error("analytics: %d events not delivered: %s", len(messages), error)


analytics = Analytics(
    write_key=os.environ["ANALYTICS_WRITE_KEY"],
    host=os.environ.get("ANALYTICS_HOST"),
    on_error=report,
)


@with_analytics(analytics, batch=True, invocation_context=True, stable_message_ids=True)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    user = str(event.get("user_id", "anonymous-visitor"))
    items = event.get("items", [])
    analytics.identify(user_id=user, traits={"plan": event.get("plan", "free")})
    for item in items:
        analytics.track(user_id=user, event="Product Added", properties=item)
    total = round(sum(float(i.get("price", 0)) * int(i.get("quantity", 1)) for i in items), 2)
    analytics.track(user_id=user, event="Order Completed", properties={"revenue": total})
    return {"statusCode": 200, "body": f'{{"user": "{user}", "total": {total}}}'}
