"""Every exception the SDK raises or reports descends from :class:`AnalyticsError`.

::

    AnalyticsError
    ├── ValidationError (ValueError)      a call's value is wrong: raised at the call site
    │   └── MessageTooLargeError          one message over the 32 KB protocol limit
    ├── InvalidTypeError (TypeError)      a call's value has the wrong type or is not JSON
    ├── ConfigurationError (ValueError)   a setting given to Analytics/configure is wrong
    └── DeliveryError                     never raised into your code: handed to hooks
        ├── HTTPStatusError               the server answered a final non-2xx status
        ├── TransportError                the request did not complete (network, timeout,
        │   │                             or an exception from a custom transport)
        │   └── StaleConnectionError      a reused keep-alive connection was found closed
        ├── DeadlineExceededError         the flush deadline left no time to (re)try
        ├── OAuthError                    no access token: refused credentials, server down
        ├── SpoolError                    dropped from a full spool, or a corrupt spool file
        └── ClientClosedError             the call came after close()

Programmer errors (a missing user id, a value that cannot be JSON) are raised where the call
is made, naming the field.  Delivery failures are values: they reach ``on_error``, the
message ``callback`` and the result of ``flush()``.
"""

from __future__ import annotations


class AnalyticsError(Exception):
    """Root of every lambda_analytics exception."""


class ValidationError(AnalyticsError, ValueError):
    """A value passed to a call is invalid; ``field`` names it (``properties.price``)."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"{field}: {problem}")


class MessageTooLargeError(ValidationError):
    """A single message serializes to more than the protocol's 32 KB."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__("message", f"is {size} bytes serialized, over the {limit}-byte limit")


class InvalidTypeError(AnalyticsError, TypeError):
    """A value passed to a call has a type that cannot be sent; ``field`` names it."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"{field}: {problem}")


class ConfigurationError(AnalyticsError, ValueError):
    """A client setting is invalid."""


class DeliveryError(AnalyticsError):
    """Messages could not be delivered.  Reported to hooks, never raised into a handler."""


class HTTPStatusError(DeliveryError):
    """The server answered with a status that is final or retried too often."""

    def __init__(self, status: int, reason: str = "") -> None:
        self.status = status
        self.reason = reason
        detail = f": {reason}" if reason else ""
        super().__init__(f"server answered HTTP {status}{detail}")


class TransportError(DeliveryError):
    """The HTTP request failed before a response arrived (connection, TLS, timeout)."""


class StaleConnectionError(TransportError):
    """A reused keep-alive connection had been closed by the server (or a NAT) while idle.

    The request never reached a live server, so it is sent again at once on a new connection,
    within the deadline and visible to ``on_request``; it does not count as a retry.
    """


class DeadlineExceededError(DeliveryError):
    """The deadline of the flush or invocation left no time for another attempt."""


class OAuthError(DeliveryError):
    """No access token could be obtained; the message says why (``invalid_client: ...``)."""


class SpoolError(DeliveryError):
    """Spooled messages were dropped (the spool was full) or a spool file was unreadable."""


class ClientClosedError(DeliveryError):
    """The client was closed; the call was reported, not sent."""
