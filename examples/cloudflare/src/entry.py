"""A Cloudflare Python Worker that records two events per request and sends them in one request.

Workers limit subrequests per invocation, so the calls are held (``analytics.hold()``, what
``with_analytics(batch=True)`` does for Lambda) and one ``flush`` at the end POSTs them as one
batch before the response is returned.  The client is built from ``self.env`` on first use,
which is why this Worker uses ``hold()`` rather than decorating ``fetch`` at import time.
"""

import json

from workers import Response, WorkerEntrypoint

from lambda_analytics import Analytics

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
        result = analytics.flush(timeout=5.0)
        return Response(
            json.dumps({"sent": result.sent, "failed": result.failed}),
            headers={"content-type": "application/json"},
        )
