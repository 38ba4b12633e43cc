"""Invocation state: the deadline, held calls, middleware and id source of the current request.

Kept in a ContextVar per client, so concurrent requests sharing one module-level client
(Cloud Run with concurrency, threads, asyncio tasks) each keep their own.  Pure bookkeeping:
no I/O, no lock.
"""

from __future__ import annotations

import contextvars
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from .queue import Item

Middleware = Callable[[dict[str, Any]], "dict[str, Any] | None"]


def new_id() -> str:
    """A random (version 4) UUID string.

    Formatted here rather than with ``uuid.uuid4()``: importing ``uuid`` imports ``platform``
    on Linux, milliseconds of every cold start.  Same bits, same text.
    """
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Scope:
    """What the current invocation set on a client; every block makes a new one."""

    __slots__ = ("deadline", "held", "middleware", "new_id")

    def __init__(
        self,
        deadline: float | None = None,
        held: list[Item] | None = None,
        middleware: tuple[Middleware, ...] = (),
        new_id: Callable[[], str] = new_id,
    ) -> None:
        self.deadline = deadline
        """Monotonic time by which every send must end, or ``None``."""
        self.held = held
        """Calls held for the flush at the end of a ``hold()`` block, or ``None``."""
        self.middleware = middleware
        self.new_id = new_id

    def deadline_after(self, timeout: float | None) -> float | None:
        """The earlier of this scope's deadline and ``timeout`` seconds from now."""
        if timeout is None:
            return self.deadline
        mine = time.monotonic() + max(timeout, 0.0)
        return mine if self.deadline is None else min(mine, self.deadline)

    def inner(
        self,
        *,
        seconds: float | None = None,
        hold: bool = False,
        middleware: tuple[Middleware, ...] = (),
        new_id: Callable[[], str] | None = None,
    ) -> Scope:
        """The scope of a block nested in this one: deadlines only shorten, holds nest."""
        held = [] if hold and self.held is None else self.held
        return Scope(
            self.deadline_after(seconds),
            held,
            self.middleware + middleware,
            new_id or self.new_id,
        )


ROOT: Final = Scope()
"""The scope outside every block; never changed."""


def scopes() -> contextvars.ContextVar[Scope]:
    """A fresh ContextVar for one client's scopes."""
    return contextvars.ContextVar("lambda_analytics_scope", default=ROOT)
