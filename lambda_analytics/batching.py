"""Batches within the protocol's limits, and the request body around them.  Pure: no I/O.

Messages are encoded once, when they are queued (``messages.encode_message``); a batch body is
those bytes joined inside an envelope whose only changing part, ``sentAt``, always has the same
length.  So the exact UTF-8 size of every request is known before it is built, and a retry
re-encodes only the envelope.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Final

MAX_BATCH_BYTES: Final = 500_000
"""500 KB per request, read as 1,000-byte KB: the safe side of every backend."""
MAX_BATCH_MESSAGES: Final = 2_500
SENT_AT_LENGTH: Final = len("2026-01-01T00:00:00.000Z")

_HEAD: Final = b'{"batch":['
_SENT_AT: Final = b'],"sentAt":"'


class Envelope:
    """Wraps encoded messages into ``{"batch": [...], "sentAt": ..., "writeKey": ...}``.

    It holds the write key, so its ``repr`` does not show it.
    """

    __slots__ = ("_tail", "overhead")

    def __init__(self, write_key: str | None) -> None:
        key = b"" if write_key is None else b',"writeKey":' + json.dumps(write_key).encode()
        self._tail = b'"' + key + b"}"
        self.overhead: int = len(_HEAD) + len(_SENT_AT) + SENT_AT_LENGTH + len(self._tail)
        """Bytes of a request body that are not messages or the commas between them."""

    def __repr__(self) -> str:
        return f"Envelope(overhead={self.overhead}, write_key=<redacted>)"

    def size(self, count: int, message_bytes: int) -> int:
        """Exact size of a body holding ``count`` messages of ``message_bytes`` in total."""
        return self.overhead + message_bytes + max(count - 1, 0)

    def encode(self, messages: Sequence[bytes], sent_at: str, *, gzip: bool = False) -> bytes:
        """The request body; ``sent_at`` must come from ``messages.format_timestamp``."""
        if len(sent_at) != SENT_AT_LENGTH:
            raise ValueError(f"sent_at must be {SENT_AT_LENGTH} characters: {sent_at!r}")
        body = b"".join((_HEAD, b",".join(messages), _SENT_AT, sent_at.encode(), self._tail))
        if not gzip:
            return body
        import gzip as _gzip  # opt-in: not every import pays for it

        # mtime=0 keeps the compressed bytes a pure function of the body.
        return _gzip.compress(body, compresslevel=6, mtime=0)


def split(
    sizes: Sequence[int],
    envelope: Envelope,
    *,
    max_bytes: int = MAX_BATCH_BYTES,
    max_messages: int = MAX_BATCH_MESSAGES,
) -> list[range]:
    """Cut messages of the given encoded sizes, in order, into the fewest batches within limits.

    Each range indexes ``sizes``.  A message too large for an empty batch gets a batch of its
    own (``messages.encode_message`` already refuses anything over 32 KB, so this only happens
    when ``max_bytes`` is set below that).
    """
    batches: list[range] = []
    start, count, total = 0, 0, 0
    for index, size in enumerate(sizes):
        if count and (count >= max_messages or envelope.size(count + 1, total + size) > max_bytes):
            batches.append(range(start, index))
            start, count, total = index, 0, 0
        count += 1
        total += size
    if count:
        batches.append(range(start, len(sizes)))
    return batches
