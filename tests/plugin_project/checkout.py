"""A user's Lambda functions: a checkout with its own client, a sign-up on the default one."""

from __future__ import annotations

import os
from typing import Any

import lambda_analytics
from lambda_analytics import Analytics, with_analytics

# Module level: reused while the function is warm, and created when the module is imported.
analytics = Analytics(
    write_key=os.environ["ANALYTICS_WRITE_KEY"], host=os.environ.get("ANALYTICS_HOST")
)


def add_stage(message: dict[str, Any]) -> dict[str, Any]:
    message["context"]["stage"] = os.environ.get("STAGE", "dev")
    return message


analytics.add_middleware(add_stage)


@with_analytics(analytics, batch=True)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    user = str(event["user_id"])
    items = event.get("items", [])
    analytics.identify(user_id=user, traits={"plan": event.get("plan", "free")})
    for item in items:
        analytics.track(user_id=user, event="Product Added", properties=item)
    if items:
        total = round(sum(i["price"] * i.get("quantity", 1) for i in items), 2)
        analytics.track(user_id=user, event="Order Completed", properties={"revenue": total})
    return {"statusCode": 200}


@with_analytics  # the default client, configured from ANALYTICS_* variables
def sign_up(event: dict[str, Any], context: Any) -> dict[str, Any]:
    lambda_analytics.track(
        anonymous_id=event["visitor"], event="Signed Up", properties={"source": event["source"]}
    )
    return {"statusCode": 201}
