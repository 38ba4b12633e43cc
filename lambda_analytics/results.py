"""The values the client returns and hands to hooks.

This module alone does not use ``from __future__ import annotations``: typing.NamedTuple turns
string annotations into ForwardRefs by compiling each one, milliseconds of every cold start.
"""

from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

from .errors import DeliveryError
from .messages import JSONDict


class Response(NamedTuple):
    """What came back: the status, headers with lower-case names, and the body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class CallResult(NamedTuple):
    """The outcome of one call.

    ``delivered`` is true once the server accepted the message; ``queued`` means it waits for a
    later flush (``flush_at`` > 1); ``error`` says why it was not delivered; ``dropped`` means
    middleware discarded it.
    """

    message_id: str
    delivered: bool = False
    queued: bool = False
    error: DeliveryError | None = None
    dropped: bool = False


class FlushResult(NamedTuple):
    """What a flush did: counts, the wire-format messages that failed, and why."""

    sent: int = 0
    failed: int = 0
    failed_messages: tuple[JSONDict, ...] = ()
    errors: tuple[DeliveryError, ...] = ()
    spooled: int = 0
    """Not delivered in time, kept in the spool for the next flush (``spool_dir``)."""

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return self.failed == 0


class RequestInfo(NamedTuple):
    """One HTTP attempt, for the ``on_request`` hook.  The Authorization header is redacted."""

    url: str
    headers: Mapping[str, str]
    body_bytes: int
    message_count: int
    attempt: int
    duration: float
    status: int | None = None
    response_headers: Mapping[str, str] = MappingProxyType({})
    error: DeliveryError | None = None
    method: str = "POST"
    """The HTTP method (always ``POST`` for batches), as the Node SDK's ``http_request`` has."""


class Stats(NamedTuple):
    """Counters since the client was created."""

    sent: int = 0
    failed: int = 0
    dropped: int = 0
    """Discarded by middleware."""
    disabled: int = 0
    """Validated but not sent because ``disable=True``."""
    after_close: int = 0
    queued: int = 0
