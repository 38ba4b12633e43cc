"""A Cloudflare Python Worker that records two events per request and sends them after responding.

Workers limit subrequests per invocation, so the calls are held (``analytics.hold()``, what
``with_analytics(batch=True)`` does for Lambda) and sent as one batch.  ``flush_later`` hands
that send to ``self.ctx.waitUntil``: the runtime returns the Response at once and makes the
one POST after it, so the end user never waits for the tracking API.  The client is built from
``self.env`` on first use, which is why this Worker uses ``hold()`` rather than decorating
``fetch`` at import time.
"""

import json

from workers import Response, WorkerEntrypoint

from lambda_analytics import Analytics
from lambda_analytics.workers import flush_later

_analytics = None


def get_analytics(env):
    # Built on first use, once per isolate: the runtime refuses random values at import time,
    # and urllib3 is only imported when a client is built.
    global _analytics
    if _analytics is None:
        _analytics = Analytics(
            write_key=env.ANALYTICS_WRITE_KEY,
            host=getattr(env, "ANALYTICS_HOST", None) or None,
        )
    return _analytics


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        analytics = get_analytics(self.env)
        body = await request.json()
        user_id = str(body["user_id"])
        with analytics.hold():
            analytics.track(
                user_id=user_id,
                event="Page Rendered",
                properties={"path": body.get("path", "/"), "runtime": "cloudflare-workers"},
            )
            analytics.identify(user_id=user_id, traits={"last_seen_path": body.get("path", "/")})
            # Both calls as one POST, made after the Response below has gone out, within 5 s.
            self.ctx.waitUntil(flush_later(analytics, timeout=5.0))
        return Response(
            json.dumps({"user_id": user_id, "recorded": 2}),
            headers={"content-type": "application/json"},
        )
