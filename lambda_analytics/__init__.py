"""lambda_analytics: a synchronous, serverless-first SDK for the Segment tracking protocol.

Create a client, or use the module-level default configured from ``ANALYTICS_*`` variables::

    from lambda_analytics import Analytics

    analytics = Analytics(write_key="...")   # flush_at=1: delivered before the call returns
    analytics.track(user_id="u1", event="Order Completed", properties={"revenue": 9.99})

    import lambda_analytics
    lambda_analytics.track(user_id="u1", event="Signed Up")   # the default client
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .client import Analytics
from .default import configure, delegate, get_client
from .errors import (
    AnalyticsError,
    ClientClosedError,
    ConfigurationError,
    DeadlineExceededError,
    DeliveryError,
    HTTPStatusError,
    InvalidTypeError,
    MessageTooLargeError,
    OAuthError,
    SpoolError,
    StaleConnectionError,
    TransportError,
    ValidationError,
)
from .results import CallResult, FlushResult, RequestInfo, Response, Stats
from .retry import RetryPolicy
from .settings import Settings
from .transport import Transport, Urllib3Transport

if TYPE_CHECKING:
    from .lifecycle import flush_on_sigterm
    from .oauth import OAuthSettings
    from .serverless import with_analytics

# Loaded on first use: most programs need neither, and import time is cold-start time.
_LAZY = {
    "OAuthSettings": ".oauth",
    "flush_on_sigterm": ".lifecycle",
    "with_analytics": ".serverless",
}

__all__ = [
    "Analytics",
    "AnalyticsError",
    "CallResult",
    "ClientClosedError",
    "ConfigurationError",
    "DeadlineExceededError",
    "DeliveryError",
    "FlushResult",
    "HTTPStatusError",
    "InvalidTypeError",
    "MessageTooLargeError",
    "OAuthError",
    "OAuthSettings",
    "RequestInfo",
    "Response",
    "RetryPolicy",
    "Settings",
    "SpoolError",
    "StaleConnectionError",
    "Stats",
    "Transport",
    "TransportError",
    "Urllib3Transport",
    "ValidationError",
    "__version__",
    "alias",
    "close",
    "configure",
    "flush",
    "flush_on_sigterm",
    "get_client",
    "group",
    "identify",
    "page",
    "screen",
    "track",
    "with_analytics",
]

identify = delegate(get_client, Analytics.identify)
track = delegate(get_client, Analytics.track)
page = delegate(get_client, Analytics.page)
screen = delegate(get_client, Analytics.screen)
group = delegate(get_client, Analytics.group)
alias = delegate(get_client, Analytics.alias)
flush = delegate(get_client, Analytics.flush)
close = delegate(get_client, Analytics.close)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


if "AWS_LAMBDA_FUNCTION_NAME" in os.environ:  # elsewhere, spare every import a failed lookup
    from .serverless import install_snapstart_hooks

    install_snapstart_hooks()
