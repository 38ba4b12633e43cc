"""lambda_analytics: a synchronous, serverless-first SDK for the Segment tracking protocol.

Create a client, or use the module-level default configured from ``ANALYTICS_*`` variables::

    from lambda_analytics import Analytics

    analytics = Analytics(write_key="...")   # flush_at=1: delivered before the call returns
    analytics.track(user_id="u1", event="Order Completed", properties={"revenue": 9.99})

    import lambda_analytics
    lambda_analytics.track(user_id="u1", event="Signed Up")   # the default client
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from ._version import __version__
from .client import Analytics
from .config import settings_from_env
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
    TransportError,
    ValidationError,
)
from .results import CallResult, FlushResult, RequestInfo, Response, Stats
from .retry import RetryPolicy
from .transport import Transport, Urllib3Transport

if TYPE_CHECKING:
    from .oauth import OAuthSettings
    from .serverless import with_analytics

# Loaded on first use: most programs need neither, and import time is cold-start time.
_LAZY = {"OAuthSettings": ".oauth", "with_analytics": ".serverless"}

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
    "SpoolError",
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
    "get_client",
    "group",
    "identify",
    "page",
    "screen",
    "track",
    "with_analytics",
]

_default: Analytics | None = None
_default_lock = threading.Lock()

P = ParamSpec("P")
R = TypeVar("R")


def configure(**settings: Any) -> Analytics:
    """(Re)create the default client: ``ANALYTICS_*`` variables, overridden by ``settings``.

    Takes the keyword arguments of :class:`Analytics`.  A previous default client is flushed
    and closed first, so nothing it queued is lost.
    """
    global _default
    client = Analytics(**{**settings_from_env(os.environ), **settings})
    with _default_lock:
        previous, _default = _default, client
    if previous is not None:
        previous.close()
    return client


def get_client() -> Analytics:
    """The default client, created from ``ANALYTICS_*`` variables on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Analytics(**settings_from_env(os.environ))
        return _default


def _on_default(method: Callable[Concatenate[Analytics, P], R]) -> Callable[P, R]:
    """A module-level function that calls ``method`` on the default client, same signature."""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        return method(get_client(), *args, **kwargs)

    return call


identify = _on_default(Analytics.identify)
track = _on_default(Analytics.track)
page = _on_default(Analytics.page)
screen = _on_default(Analytics.screen)
group = _on_default(Analytics.group)
alias = _on_default(Analytics.alias)
flush = _on_default(Analytics.flush)
close = _on_default(Analytics.close)


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
