"""A drop-in for ``segment-analytics-python``'s module-level style, for an easy first step::

    import lambda_analytics.compat as analytics      # was: import segment.analytics as analytics

    analytics.write_key = "YOUR_WRITE_KEY"
    analytics.track("u1", "Order Completed", {"revenue": 9.99})
    analytics.flush()

The settings are read when the first call builds the client (as the incumbent does); the calls
take the incumbent's positional order.  Underneath it is :class:`~lambda_analytics.Analytics`:
no thread, and ``sync_mode`` is the default rather than an option.  New code should use
``Analytics`` directly.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Any

from .client import Analytics, ErrorHook
from .results import CallResult, FlushResult
from .retry import RetryPolicy

write_key: str | None = None
host: str | None = None
on_error: ErrorHook | None = None
debug: bool = False
send: bool = True
sync_mode: bool = True
gzip: bool = False
timeout: float = 10.0
max_retries: int = 3
max_queue_size: int = 10_000
upload_size: int = 1
"""``flush_at``: 1 sends before each call returns; raise it to batch (then call ``flush()``)."""

_client: Analytics | None = None

Props = Mapping[str, Any] | None


def _get() -> Analytics:
    global _client
    if _client is None:
        if debug:
            import logging

            logging.getLogger("lambda_analytics").setLevel(logging.DEBUG)
        _client = Analytics(
            write_key,
            host=host,
            flush_at=1 if sync_mode else upload_size,
            max_queue_size=max_queue_size,
            gzip=gzip,
            timeout=timeout,
            retry=RetryPolicy(max_retries=max_retries),
            on_error=on_error,
            disable=not send,
        )
    return _client


def track(user_id: Any = None, event: Any = None, properties: Props = None, context: Props = None,
          timestamp: _dt.datetime | None = None, anonymous_id: Any = None,
          integrations: Props = None, message_id: str | None = None) -> CallResult:  # fmt: skip
    """``track(user_id, event, properties, ...)`` in the incumbent's order."""
    return _get().track(user_id=user_id, event=event, properties=properties, context=context,
                        timestamp=timestamp, anonymous_id=anonymous_id,
                        integrations=integrations, message_id=message_id)  # fmt: skip


def identify(user_id: Any = None, traits: Props = None, context: Props = None,
             timestamp: _dt.datetime | None = None, anonymous_id: Any = None,
             integrations: Props = None, message_id: str | None = None) -> CallResult:  # fmt: skip
    """``identify(user_id, traits, ...)`` in the incumbent's order."""
    return _get().identify(user_id=user_id, traits=traits, context=context, timestamp=timestamp,
                           anonymous_id=anonymous_id, integrations=integrations,
                           message_id=message_id)  # fmt: skip


def group(user_id: Any = None, group_id: Any = None, traits: Props = None, context: Props = None,
          timestamp: _dt.datetime | None = None, anonymous_id: Any = None,
          integrations: Props = None, message_id: str | None = None) -> CallResult:  # fmt: skip
    """``group(user_id, group_id, traits, ...)`` in the incumbent's order."""
    return _get().group(user_id=user_id, group_id=group_id, traits=traits, context=context,
                        timestamp=timestamp, anonymous_id=anonymous_id,
                        integrations=integrations, message_id=message_id)  # fmt: skip


def alias(previous_id: Any = None, user_id: Any = None, context: Props = None,
          timestamp: _dt.datetime | None = None, integrations: Props = None,
          message_id: str | None = None) -> CallResult:  # fmt: skip
    """``alias(previous_id, user_id, ...)``: note the incumbent puts the previous id first."""
    return _get().alias(user_id=user_id, previous_id=previous_id, context=context,
                        timestamp=timestamp, integrations=integrations,
                        message_id=message_id)  # fmt: skip


def page(user_id: Any = None, category: str | None = None, name: str | None = None,
         properties: Props = None, context: Props = None, timestamp: _dt.datetime | None = None,
         anonymous_id: Any = None, integrations: Props = None,
         message_id: str | None = None) -> CallResult:  # fmt: skip
    """``page(user_id, category, name, properties, ...)`` in the incumbent's order."""
    return _get().page(user_id=user_id, category=category, name=name, properties=properties,
                       context=context, timestamp=timestamp, anonymous_id=anonymous_id,
                       integrations=integrations, message_id=message_id)  # fmt: skip


def screen(user_id: Any = None, category: str | None = None, name: str | None = None,
           properties: Props = None, context: Props = None, timestamp: _dt.datetime | None = None,
           anonymous_id: Any = None, integrations: Props = None,
           message_id: str | None = None) -> CallResult:  # fmt: skip
    """``screen(user_id, category, name, properties, ...)`` in the incumbent's order."""
    return _get().screen(user_id=user_id, category=category, name=name, properties=properties,
                         context=context, timestamp=timestamp, anonymous_id=anonymous_id,
                         integrations=integrations, message_id=message_id)  # fmt: skip


def flush() -> FlushResult:
    """Send what is queued."""
    return _get().flush()


def join() -> None:
    """Kept for compatibility: there is no thread to join."""


def shutdown() -> FlushResult:
    """Flush and close; the next call builds a new client from the settings."""
    global _client
    result = _get().close()
    _client = None
    return result
