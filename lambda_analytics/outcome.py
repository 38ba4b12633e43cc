"""What a flush did with each message, and how that reaches the caller and the hooks.

An :class:`Outcome` holds every message a flush took off the queue, in exactly one place:
``sent``, ``failures`` (reported), ``spooled`` or ``pending`` (left in flight for the next
flush).  :func:`report` runs callbacks and hooks from it, outside every lock, and never lets
a hook's exception reach the caller.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import DeliveryError, SpoolError
from .events import Hooks, safely
from .messages import JSONDict
from .queue import Item
from .results import FlushResult

if TYPE_CHECKING:
    from .spool import Spool

logger = logging.getLogger("lambda_analytics")

ErrorHook = Callable[[DeliveryError, list[JSONDict]], None]
__all__ = ["ErrorHook", "Outcome", "decode", "report", "safely"]


class Outcome:
    """Each message of one flush: sent, reported, spooled, or still in flight."""

    __slots__ = ("failures", "pending", "sent", "spooled")

    def __init__(self) -> None:
        self.sent: list[Item] = []
        self.failures: list[tuple[DeliveryError, list[Item]]] = []
        self.spooled: list[tuple[DeliveryError, list[Item]]] = []
        self.pending: list[Item] = []
        """Sent, its response not read yet (a pipelined batch): the next flush reports it."""

    def settle(self, items: list[Item], error: DeliveryError | None) -> None:
        """``items`` were delivered (``error`` is ``None``) or failed with ``error``."""
        if error is None:
            self.sent.extend(items)
        else:
            self.failures.append((error, items))

    def fail(self, error: DeliveryError, items: list[Item]) -> None:
        """Report ``error`` for ``items`` (which may be empty: a corrupt spool file)."""
        self.failures.append((error, items))

    def backstop(self, items: list[Item], exc: BaseException) -> None:
        """After an unexpected exception: report every item of ``items`` not yet accounted."""
        done = {id(i) for i in self.sent} | {id(i) for i in self.pending}
        for _, group in self.failures + self.spooled:
            done.update(id(i) for i in group)
        lost = [item for item in items if id(item) not in done]
        logger.error("lambda_analytics: unexpected error during a flush", exc_info=exc)
        if lost:
            error = DeliveryError(f"unexpected {type(exc).__name__} in lambda_analytics: {exc}")
            self.failures.append((error, lost))

    def spool_transient(self, spool: Spool, transient: Callable[[DeliveryError], bool]) -> None:
        """Move failures a later flush may deliver from ``failures`` to ``spooled``.

        What the spool could not take (an ``OSError`` on the way), or dropped to stay within
        its bound, stays in ``failures`` as a :class:`SpoolError` with those messages.
        """
        keep: list[tuple[DeliveryError, list[Item]]] = []
        for error, items in self.failures:
            if not items or not transient(error):
                keep.append((error, items))
                continue
            mine: dict[bytes, list[Item]] = {}
            for item in reversed(items):
                mine.setdefault(item.data, []).append(item)
            taken: set[int] = set()
            for problem, dropped in spool.write([i.data for i in items]):
                lost = []
                for data in dropped:  # those of older files dropped from the spool: new Items
                    group = mine.get(data)
                    lost.append(group.pop() if group else Item(data))
                    taken.add(id(lost[-1]))
                keep.append((SpoolError(problem), lost))
            spooled = [item for item in items if id(item) not in taken]
            if spooled:
                self.spooled.append((error, spooled))
        self.failures = keep

    def failed_count(self) -> int:
        return sum(len(items) for _, items in self.failures)

    def error_for(self, item: Item) -> DeliveryError | None:
        """Why ``item`` was not delivered, or ``None``."""
        for error, items in self.failures + self.spooled:
            if any(i is item for i in items):
                return error
        return None

    def is_pending(self, item: Item) -> bool:
        return any(i is item for i in self.pending)

    def result(self) -> FlushResult:
        failed = [decode(item) for _, items in self.failures for item in items]
        return FlushResult(
            sent=len(self.sent),
            failed=len(failed),
            failed_messages=tuple(failed),
            errors=tuple(error for error, _ in self.failures),
            spooled=sum(len(items) for _, items in self.spooled),
        )


def report(outcome: Outcome, hooks: Hooks, *, log: bool = True) -> None:
    """Run callbacks, ``on_error``, listeners and plugins for ``outcome``; no lock held."""
    listening = hooks.listening
    for item in outcome.sent:
        if item.callback is not None or listening:
            message = decode(item)
            if item.callback is not None:
                safely(item.callback, None, message)
            if listening:
                hooks.settled(message, None)
    for error, items in outcome.spooled:
        logger.info("%d messages spooled for the next flush: %s", len(items), error)
        for item in items:
            if item.callback is not None:
                safely(item.callback, error, decode(item))
    for error, items in outcome.failures:
        messages = [decode(item) for item in items]
        if log and messages:
            logger.warning("%d messages not delivered: %s", len(messages), error)
        elif log:  # a problem with no message of its own (a spool file set aside)
            logger.warning("%s", error)
        if hooks.on_error is not None:
            safely(hooks.on_error, error, messages)
        hooks.emit("error", error, messages)
        for item, message in zip(items, messages, strict=True):
            if item.callback is not None:
                safely(item.callback, error, message)
            if listening:
                hooks.settled(message, error)
    if hooks.wants("flush"):
        hooks.emit("flush", outcome.result())


def decode(item: Item) -> JSONDict:
    """The wire-format dict of ``item`` (a fresh one: hooks may keep or change it)."""
    try:
        message: JSONDict = json.loads(item.data)
    except (ValueError, RecursionError):  # never for what messages.encode_message accepted
        message = {"messageId": item.message_id, "undecodable": True}
    return message
