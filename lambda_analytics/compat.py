"""A drop-in for ``segment-analytics-python``: its ``Client`` class and its module-level style.

Change only the import::

    from lambda_analytics.compat import Client       # was: from segment.analytics import Client

    analytics = Client("YOUR_WRITE_KEY", upload_size=100)
    ok, msg = analytics.track("u1", "Order Completed", {"revenue": 9.99})
    analytics.flush()

or, in the module-level style::

    import lambda_analytics.compat as analytics      # was: import segment.analytics as analytics

    analytics.write_key = "YOUR_WRITE_KEY"
    analytics.track("u1", "Order Completed", {"revenue": 9.99})
    analytics.flush()

The calls take the incumbent's positional order and return its ``(success, msg)``.  The
module's settings are read when the first call builds ``default_client`` (as the incumbent
does); unlike the incumbent, ``sync_mode`` is on by default here (one request per call, the
safe choice in a function that may be frozen after it returns).  Underneath it is
:class:`~lambda_analytics.Analytics`, with no thread; new code should use it directly.
"""

from __future__ import annotations

import logging

from ._compat_client import Client, Message
from .default import delegate
from .outcome import ErrorHook
from .results import FlushResult

__all__ = ["Client", "Message", "alias", "flush", "group", "identify", "join", "page", "screen",
           "shutdown", "track"]  # fmt: skip

write_key: str | None = None
host: str | None = None
on_error: ErrorHook | None = None
debug: bool = False
log_handler: logging.Handler | None = None
send: bool = True
sync_mode: bool = True
"""On by default here (the incumbent's default is off): each call is sent before it returns."""
gzip: bool = False
timeout: float = 10.0
max_retries: int = 3
max_queue_size: int = 10_000
upload_size: int = 100
"""The batch size once ``sync_mode`` is off (then call ``flush()``)."""
upload_interval: float = 0.5

oauth_client_id: str | None = None
oauth_client_key: str | None = None
oauth_key_id: str | None = None
oauth_auth_server: str | None = None
oauth_scope: str = "tracking_api:write"

default_client: Client | None = None
"""The client the module-level calls use, built from the settings above by the first call."""


def _get() -> Client:
    global default_client
    if default_client is None:
        default_client = Client(
            write_key,
            host=host,
            debug=debug,
            max_queue_size=max_queue_size,
            send=send,
            on_error=on_error,
            gzip=gzip,
            max_retries=max_retries,
            sync_mode=sync_mode,
            timeout=timeout,
            upload_size=upload_size,
            upload_interval=upload_interval,
            log_handler=log_handler,
            oauth_client_id=oauth_client_id,
            oauth_client_key=oauth_client_key,
            oauth_key_id=oauth_key_id,
            oauth_auth_server=oauth_auth_server,
            oauth_scope=oauth_scope,
        )
    return default_client


identify = delegate(_get, Client.identify)
track = delegate(_get, Client.track)
group = delegate(_get, Client.group)
alias = delegate(_get, Client.alias)
page = delegate(_get, Client.page)
screen = delegate(_get, Client.screen)
flush = delegate(_get, Client.flush)
join = delegate(_get, Client.join)


def shutdown() -> FlushResult:
    """Send what is queued and close; the next call builds a new client from the settings."""
    global default_client
    result = _get().shutdown()
    default_client = None
    return result
