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
from typing import TYPE_CHECKING, Any

from .errors import DeliveryError, SpoolError
from .messages import JSONDict
from .queue import Item
from .results import FlushResult

if TYPE_CHECKING:
    from .spool import Spool

logger = logging.getLogger("lambda_analytics")

ErrorHook = Callable[[DeliveryError, list[JSONDict]], None]


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
        """Move failures a later flush may deliver from ``failures`` to ``spooled``."""
        keep: list[tuple[DeliveryError, list[Item]]] = []
        for error, items in self.failures:
            if not items or not transient(error):
                keep.append((error, items))
                continue
            try:
                dropped = spool.write([i.data for i in items])
            except OSError as exc:
                keep.append((SpoolError(f"could not spool: {exc}"), items))
                continue
            mine = {item.data: item for item in items}
            lost = [mine.pop(data, Item(data)) for data in dropped]
            if mine:
                self.spooled.append((error, list(mine.values())))
            if lost:
                full = SpoolError(f"spool over {spool.max_bytes} bytes: oldest messages dropped")
                keep.append((full, lost))
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


def report(outcome: Outcome, on_error: ErrorHook | None, *, log: bool = True) -> None:
    """Run callbacks and ``on_error`` for ``outcome``; call with no lock held."""
    for item in outcome.sent:
        if item.callback is not None:
            safely(item.callback, None, decode(item))
    for error, items in outcome.spooled:
        logger.info("%d messages spooled for the next flush: %s", len(items), error)
        for item in items:
            if item.callback is not None:
                safely(item.callback, error, decode(item))
    for error, items in outcome.failures:
        messages = [decode(item) for item in items]
        if log:
            logger.warning("%d messages not delivered: %s", len(messages), error)
        if on_error is not None:
            safely(on_error, error, messages)
        for item, message in zip(items, messages, strict=True):
            if item.callback is not None:
                safely(item.callback, error, message)


def decode(item: Item) -> JSONDict:
    """The wire-format dict of ``item`` (a fresh one: hooks may keep or change it)."""
    try:
        message: JSONDict = json.loads(item.data)
    except (ValueError, RecursionError):  # never for what messages.encode_message accepted
        message = {"messageId": item.message_id, "undecodable": True}
    return message


def safely(hook: Callable[..., object], *args: Any) -> None:
    """Call a user hook; its exception is logged, never raised into the caller's code."""
    try:
        hook(*args)
    except Exception:
        logger.exception("lambda_analytics hook %r raised", hook)
