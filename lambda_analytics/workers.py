"""Cloudflare Python Workers: send a request's held calls after the response, in ``waitUntil``.

Inside a ``hold()`` block, as its last line::

    with analytics.hold():
        analytics.track(user_id="u1", event="Page Rendered")
        self.ctx.waitUntil(flush_later(analytics, timeout=5.0))
    return Response("ok")

:func:`flush_later` takes the calls held so far in the block at once and returns a coroutine;
the runtime awaits it after the response has been returned, and it sends them as one request
(one subrequest), within ``timeout`` seconds of starting.  What is not delivered goes to
``on_error`` and the log, as with :meth:`~lambda_analytics.Analytics.flush`.  Call it inside
the ``hold()`` block: outside one there is nothing held, and the calls of a block that has
ended wait in the client's queue for the next flush.  ``import lambda_analytics`` does not
import this module.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from .settings import check_seconds

if TYPE_CHECKING:
    from .client import Analytics
    from .results import FlushResult

__all__ = ["flush_later"]


def flush_later(
    analytics: Analytics, timeout: float | None = 5.0
) -> Coroutine[Any, Any, FlushResult]:
    """Take the calls held in this ``hold()`` block now; the coroutine sends them when awaited.

    For ``self.ctx.waitUntil(...)``: awaited once, it delivers these calls (and only these)
    as one request within ``timeout`` seconds and returns the :class:`FlushResult`.  Await it
    exactly once; a coroutine never awaited sends nothing.
    """
    check_seconds("timeout", timeout)
    return _send(analytics.release_held(), timeout)


async def _send(send: Callable[[float | None], FlushResult], timeout: float | None) -> FlushResult:
    # A coroutine so that it starts only when the runtime awaits it, after the response.  In
    # Pyodide, urllib3 2.3+ blocks on the runtime's fetch through JSPI: no await is needed here.
    return send(timeout)
