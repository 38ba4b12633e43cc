"""A Google Cloud Function (2nd gen, HTTP) that records a page view with lambda_analytics.

The decorators, outermost first:

1. ``@functions_framework.http`` registers, under the function's name, the function it is
   given, and the framework serves that one.  It must be outermost so that what gets
   registered and called is the function that flushes.
2. ``@with_analytics(analytics)`` sends the invocation's events (one request, ``batch=True``)
   in ``finally``, before the function's return value goes back to the framework: the HTTP
   response is written only after the events were delivered, or reported as failed.  After
   the response, Cloud Run may throttle the instance's CPU, so a send left for later could
   stall or be lost.

The budget is the function's timeout (``CLOUD_RUN_TIMEOUT_SECONDS``, set by the platform)
minus a 0.5 s margin.  The client is shared by the instance's concurrent requests; each
request's deadline, batch and context belong to that request (they live in a ContextVar).
"""

from __future__ import annotations

import logging
from typing import Any

import flask
import functions_framework

import lambda_analytics
from lambda_analytics import DeliveryError, with_analytics

logger = logging.getLogger(__name__)


def report(error: DeliveryError, messages: list[dict[str, Any]]) -> None:
    logger.error("analytics: %d events not delivered: %s", len(messages), error)


# ANALYTICS_WRITE_KEY comes from Secret Manager (--set-secrets); the other ANALYTICS_*
# variables are optional.  Module level: warm invocations reuse the connection pool.
analytics = lambda_analytics.configure(on_error=report)


@functions_framework.http
@with_analytics(analytics, batch=True, invocation_context=True)
def record_visit(request: flask.Request) -> dict[str, Any]:
    """POST {"user_id": "u1", "path": "/pricing"}: a page view and, on /pricing, a track."""
    body = request.get_json(silent=True) or {}
    user = str(body.get("user_id") or "anonymous")
    path = str(body.get("path") or "/")
    analytics.page(user_id=user, name=path, properties={"path": path})
    recorded = 1
    if path == "/pricing":
        analytics.track(user_id=user, event="Pricing Viewed", properties={"path": path})
        recorded += 1
    return {"user": user, "recorded": recorded}
