"""When to send: what is queued, its bytes, and whether a call must flush now.  Pure: no I/O.

The queue never reads a clock or takes a lock: the engine passes the time in and guards the
queue with its own lock.  A message is queued as its encoded bytes, so the size of every
request is known exactly before it is built (``batching.Envelope.size``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import batching

if TYPE_CHECKING:
    from .errors import DeliveryError

MessageCallback = Callable[["DeliveryError | None", dict[str, Any]], None]


class Item:
    """One encoded message on its way, with the caller's callback."""

    __slots__ = ("callback", "data", "enqueued_at", "message_id")

    def __init__(
        self,
        data: bytes,
        callback: MessageCallback | None = None,
        enqueued_at: float = 0.0,
        message_id: str = "",
    ) -> None:
        self.data = data
        self.callback = callback
        self.enqueued_at = enqueued_at
        self.message_id = message_id

    def __repr__(self) -> str:
        return f"Item({self.message_id!r}, {len(self.data)} bytes)"


class MessageQueue:
    """Messages waiting for a flush, and the rules that say when one is due.

    * ``flush_at`` messages queued: send them (1, the default, sends every call at once);
    * the oldest has waited ``flush_interval`` seconds: send at the next call;
    * one more would pass ``max_queue_size``, 2,500 messages or 500,000 bytes of request:
      send what is queued first, so nothing is dropped and no batch overflows.
    """

    __slots__ = ("_bytes", "_envelope", "_items", "flush_at", "flush_interval", "max_queue_size")

    def __init__(
        self,
        envelope: batching.Envelope,
        *,
        flush_at: int = 1,
        flush_interval: float = 10.0,
        max_queue_size: int = 10_000,
    ) -> None:
        self._envelope = envelope
        self._items: list[Item] = []
        self._bytes = 0
        self.flush_at = min(flush_at, batching.MAX_BATCH_MESSAGES)
        self.flush_interval = flush_interval
        self.max_queue_size = max_queue_size

    def __len__(self) -> int:
        return len(self._items)

    def must_flush_before(self, size: int) -> bool:
        """True when a message of ``size`` bytes does not fit beside what is queued."""
        count = len(self._items)
        if not count:
            return False
        return (
            count >= self.max_queue_size
            or count >= batching.MAX_BATCH_MESSAGES
            or self._envelope.size(count + 1, self._bytes + size) > batching.MAX_BATCH_BYTES
        )

    def add(self, item: Item) -> None:
        """Queue ``item`` (check :meth:`must_flush_before` first)."""
        self._items.append(item)
        self._bytes += len(item.data)

    def extend(self, items: list[Item]) -> None:
        """Queue ``items`` as they are (held calls joining the queue); no limit applies."""
        self._items.extend(items)
        self._bytes += sum(len(item.data) for item in items)

    def full(self) -> bool:
        """``flush_at`` messages are queued."""
        return len(self._items) >= self.flush_at

    def due(self, now: float) -> bool:
        """Full, or the oldest message has waited ``flush_interval`` seconds at ``now``."""
        items = self._items
        return bool(items) and (
            len(items) >= self.flush_at or now - items[0].enqueued_at >= self.flush_interval
        )

    def take(self) -> list[Item]:
        """Everything queued, oldest first; the queue is empty afterwards."""
        items, self._items, self._bytes = self._items, [], 0
        return items

    def clear(self) -> None:
        """Forget everything (a forked child: the parent sends what it queued)."""
        self._items, self._bytes = [], 0
