"""An opt-in durable spool: messages that could not be delivered in time wait in files.

Each spooled batch is one file of encoded messages, one per line, written atomically (write,
fsync, rename).  A flush claims files by renaming them to a name of its own (a rename is
atomic, so two processes sharing the directory never send the same file), sends their
messages before the new ones, and deletes them.  A claim left by a process that died is
taken over after ``stale_after`` seconds.  The directory is bounded in bytes: the oldest files
go first, and their messages are returned so the client reports them.  A file that cannot be
read back is renamed ``*.corrupt`` and reported, never sent and never fatal.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

READY: Final = ".batch"
CORRUPT: Final = ".corrupt"
_CLAIM: Final = ".claim-"
_TMP: Final = ".tmp-"


@dataclass
class Claimed:
    """Messages taken from the spool, and the files to delete once they are dealt with."""

    messages: list[bytes] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    corrupt: list[Path] = field(default_factory=list)


class Spool:
    """A directory of undelivered batches, shared safely by any number of processes."""

    def __init__(self, directory: str | os.PathLike[str], *, max_bytes: int = 50_000_000,
                 stale_after: float = 300.0) -> None:  # fmt: skip
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.stale_after = stale_after

    def __repr__(self) -> str:
        return f"Spool({str(self.directory)!r}, max_bytes={self.max_bytes})"

    def write(self, messages: list[bytes]) -> list[bytes]:
        """Spool ``messages`` as one file; return messages dropped to stay within ``max_bytes``."""
        if not messages:
            return []
        # Names sort by creation time, so the oldest batch is sent (and dropped) first.
        name = f"{time.time_ns():020d}-{os.getpid()}-{os.urandom(4).hex()}"
        temporary = self.directory / (_TMP + name)
        data = b"\n".join(messages) + b"\n"
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.directory / (name + READY))
        return self._enforce_bound()

    def claim(self) -> Claimed:
        """Take every ready (or abandoned) file; messages in file order, oldest file first."""
        claimed = Claimed()
        # The claim time is in the name: a rename keeps the old mtime, so it cannot tell.
        token = f"{_CLAIM}{time.time_ns()}-{os.getpid()}-{os.urandom(4).hex()}"
        for path in self._claimable():
            mine = path.with_name(path.name.split(".", 1)[0] + READY + token)
            try:
                os.rename(path, mine)
            except FileNotFoundError:  # another process claimed it first
                continue
            try:
                messages = _read(mine)
            except (OSError, ValueError):
                corrupt = mine.with_name(mine.name.split(".", 1)[0] + CORRUPT)
                os.replace(mine, corrupt)
                claimed.corrupt.append(corrupt)
                continue
            claimed.messages.extend(messages)
            claimed.paths.append(mine)
        return claimed

    def release(self, claimed: Claimed) -> None:
        """Delete the claimed files: their messages were delivered, reported or spooled again."""
        for path in claimed.paths:
            path.unlink(missing_ok=True)

    def _claimable(self) -> Iterator[Path]:
        stale_before = time.time_ns() - int(self.stale_after * 1e9)
        for path in sorted(self.directory.iterdir(), key=lambda p: p.name):
            if path.name.endswith(READY):
                yield path
            elif _CLAIM in path.name:
                claimed_at = path.name.split(_CLAIM, 1)[1].split("-", 1)[0]
                if claimed_at.isdigit() and int(claimed_at) < stale_before:
                    yield path

    def _enforce_bound(self) -> list[bytes]:
        ready = sorted(p for p in self.directory.iterdir() if p.name.endswith(READY))
        sizes = {}
        for path in ready:
            try:
                sizes[path] = path.stat().st_size
            except FileNotFoundError:
                continue
        total = sum(sizes.values())
        dropped: list[bytes] = []
        for path, size in sizes.items():
            if total <= self.max_bytes:
                break
            mine = path.with_name(path.name + f".drop-{os.getpid()}")
            try:
                os.rename(path, mine)
            except FileNotFoundError:
                continue
            with contextlib.suppress(OSError, ValueError):  # unreadable: nothing to report
                dropped.extend(_read(mine))
            mine.unlink(missing_ok=True)
            total -= size
        return dropped


def _read(path: Path) -> list[bytes]:
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        raise ValueError("truncated spool file")
    lines = data[:-1].split(b"\n")
    for line in lines:
        message = json.loads(line)
        if not isinstance(message, dict) or "messageId" not in message:
            raise ValueError("not a spooled message")
    return lines
