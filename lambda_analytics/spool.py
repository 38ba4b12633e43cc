"""The opt-in durable spool: undelivered messages wait in private files, checked on read.

Each spooled batch is one file of encoded messages, one per line, written atomically (a
temporary file, fsync, rename) and readable by its owner only (0600 in a 0700 directory,
whatever the umask).  A flush claims files by renaming them to a name of its own (a rename is
atomic, so processes sharing the directory never send the same file), sends their messages
before the new ones, and deletes them.  A claim left by a process that died is taken over
after ``stale_after`` seconds.  The directory is bounded in bytes: the oldest files go first,
and their messages are returned so the client reports them.

Spooled events are personal data, and whoever can write to the directory chooses what leaves
under the write key.  So a directory that is a symbolic link, not a directory, another user's,
or writable by group or others is refused (a ``ConfigurationError`` at construction; each
later use checks again).  Files are opened relative to the checked directory with
``O_NOFOLLOW``, and every line is checked again as a message before it is sent: a file that
fails is renamed ``*.corrupt`` and reported, never sent.  Once constructed, no method raises:
an ``OSError`` (read-only filesystem, ``EACCES``, ``ENOSPC``) or a ``RecursionError`` becomes a
problem, a sentence the caller reports as a ``SpoolError`` with the messages it concerns.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from .encoding import nesting
from .errors import ConfigurationError
from .messages import MAX_MESSAGE_BYTES, MAX_NESTING, check_wire

READY: Final = ".batch"
CORRUPT: Final = ".corrupt"
_CLAIM: Final = ".claim-"
_TMP: Final = ".tmp-"
# Absent on Windows; Spool() then refuses to start (see _supported).
_NOFOLLOW: Final[int] = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY: Final[int] = getattr(os, "O_DIRECTORY", 0)
_CLOEXEC: Final[int] = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK: Final[int] = getattr(os, "O_NONBLOCK", 0)  # a FIFO named *.batch must not hang us
_HINT: Final = "use a directory only you can write to, e.g. ~/.cache/lambda_analytics/spool"

Problem = tuple[str, list[bytes]]
"""Why some messages were not spooled (or were dropped from the spool), and those messages."""


class _Unsafe(OSError):
    """The directory is not private to this user: nothing is read from it or written to it."""


class _Corrupt(ValueError):
    """A spool file that is not what this module writes."""


@dataclass
class Claimed:
    """Messages taken from the spool, the files to delete once dealt with, and problems met."""

    messages: list[bytes] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class Spool:
    """A private directory of undelivered batches, shared safely by the processes of one user."""

    def __init__(self, directory: str | os.PathLike[str], *, max_bytes: int = 50_000_000,
                 stale_after: float = 300.0) -> None:  # fmt: skip
        path = os.fspath(directory)
        if not path:
            raise ConfigurationError("spool_dir must not be empty")
        if not _supported():
            raise ConfigurationError("spool_dir needs a POSIX system (O_NOFOLLOW and openat)")
        # Absolute once: a later chdir must not move the spool.
        self.directory = os.path.abspath(path)
        self.max_bytes = max_bytes
        self.stale_after = stale_after
        try:
            with self._opened():
                pass
        except OSError as exc:
            raise ConfigurationError(f"spool_dir: {_why(exc)}") from None

    def __repr__(self) -> str:
        return f"Spool({self.directory!r}, max_bytes={self.max_bytes})"

    def write(self, messages: list[bytes]) -> list[Problem]:
        """Spool ``messages`` as one file; what could not be spooled, or was dropped, and why.

        If the file cannot be written, the one problem holds all of ``messages`` (and no file is
        left behind).  Otherwise the problems are older messages dropped to stay within
        ``max_bytes`` (perhaps some of these), or a failure to enforce that bound.
        """
        if not messages:
            return []
        # Names sort by creation time, so the oldest batch is sent (and dropped) first.
        name = f"{time.time_ns():020d}-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            with self._opened() as directory:
                _write_file(directory, _TMP + name, b"\n".join(messages) + b"\n")
                try:
                    os.replace(_TMP + name, name + READY, src_dir_fd=directory,
                               dst_dir_fd=directory)  # fmt: skip
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(_TMP + name, dir_fd=directory)
                    raise
                with contextlib.suppress(OSError):  # the rename survives a power cut
                    os.fsync(directory)
                return self._enforce_bound(directory)
        except OSError as exc:
            return [(f"could not spool {len(messages)} messages: {_why(exc)}", messages)]

    def claim(self) -> Claimed:
        """Take every ready (or abandoned) file; messages in file order, oldest file first."""
        claimed = Claimed()
        # The claim time is in the name: a rename keeps the old mtime, so it cannot tell.
        token = f"{_CLAIM}{time.time_ns()}-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            with self._opened() as directory:
                for name in self._claimable(directory):
                    mine = _stem(name) + READY + token
                    try:
                        os.rename(name, mine, src_dir_fd=directory, dst_dir_fd=directory)
                    except FileNotFoundError:  # another process claimed it first
                        continue
                    try:
                        messages = _read(directory, mine)
                    except (OSError, ValueError, RecursionError) as exc:
                        claimed.problems.append(_set_aside(directory, mine, exc))
                        continue
                    claimed.messages.extend(messages)
                    claimed.names.append(mine)
        except OSError as exc:  # what was claimed before is still sent, then released
            claimed.problems.append(f"could not claim spooled messages: {_why(exc)}")
        return claimed

    def release(self, claimed: Claimed) -> list[str]:
        """Delete the claimed files (their messages were delivered, reported or spooled again).

        A file that cannot be deleted is a problem: after ``stale_after`` another flush takes
        it over and sends its messages again.
        """
        if not claimed.names:
            return []
        left = list(claimed.names)
        try:
            with self._opened() as directory:
                for name in claimed.names:
                    with contextlib.suppress(FileNotFoundError):  # taken over: stale
                        os.unlink(name, dir_fd=directory)
                    left.remove(name)
        except OSError as exc:
            return [
                f"could not delete {len(left)} claimed spool files, so their messages may be "
                f"sent again after {self.stale_after:g} s: {_why(exc)}"
            ]
        return []

    @contextlib.contextmanager
    def _opened(self) -> Iterator[int]:
        """The directory (created 0700 if missing), checked private to this user, as a descriptor.

        Everything else is done relative to it, so a directory swapped for a symlink after the
        check is never used.
        """
        _make_private(self.directory)
        shown = repr(self.directory)
        info = os.lstat(self.directory)  # for a clear refusal; the descriptor is checked below
        if stat.S_ISLNK(info.st_mode):
            raise _Unsafe(f"{shown} is a symbolic link: give the directory itself; {_HINT}")
        if not stat.S_ISDIR(info.st_mode):
            raise _Unsafe(f"{shown} is not a directory")
        directory = os.open(self.directory, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC)
        try:
            info = os.fstat(directory)
            if not stat.S_ISDIR(info.st_mode):
                raise _Unsafe(f"{shown} is not a directory")
            if info.st_uid != os.geteuid():
                raise _Unsafe(
                    f"{shown} belongs to uid {info.st_uid}, not to this user "
                    f"(uid {os.geteuid()}); {_HINT}"
                )
            mode = stat.S_IMODE(info.st_mode)
            if mode & 0o022:
                raise _Unsafe(f"{shown} is writable by group or others (mode {mode:04o}); {_HINT}")
            yield directory
        finally:
            os.close(directory)

    def _claimable(self, directory: int) -> Iterator[str]:
        stale_before = time.time_ns() - int(self.stale_after * 1e9)
        for name in sorted(entry.name for entry in os.scandir(directory)):
            if name.endswith(READY):
                yield name
            elif _CLAIM in name:
                if _nanoseconds(name.split(_CLAIM, 1)[1]) < stale_before:
                    yield name
            elif name.startswith(_TMP) and _nanoseconds(name[len(_TMP) :]) < stale_before:
                # Left by a process that died while writing: its messages were never spooled.
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=directory)

    def _enforce_bound(self, directory: int) -> list[Problem]:
        dropped: list[bytes] = []
        problems: list[Problem] = []
        corrupt = 0
        token = f"{_CLAIM}{time.time_ns()}-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            sizes: dict[str, int] = {}
            for entry in os.scandir(directory):
                if entry.name.endswith(READY):
                    with contextlib.suppress(FileNotFoundError):
                        sizes[entry.name] = entry.stat(follow_symlinks=False).st_size
            total = sum(sizes.values())
            for name in sorted(sizes):
                if total <= self.max_bytes:
                    break
                # Claimed first, so no other process sends what is reported dropped here (and
                # if this one dies now, the claim is taken over and sent after stale_after).
                mine = _stem(name) + READY + token
                try:
                    os.rename(name, mine, src_dir_fd=directory, dst_dir_fd=directory)
                except FileNotFoundError:
                    continue
                try:
                    dropped.extend(_read(directory, mine))
                except (OSError, ValueError, RecursionError):
                    corrupt += 1
                os.unlink(mine, dir_fd=directory)
                total -= sizes[name]
        except OSError as exc:
            problems.append((f"could not keep the spool within {self.max_bytes} bytes: "
                             f"{_why(exc)}", []))  # fmt: skip
        if corrupt:
            problems.insert(0, (f"spool over {self.max_bytes} bytes: {corrupt} unreadable "
                                "spool files dropped", []))  # fmt: skip
        if dropped:
            problems.insert(0, (f"spool over {self.max_bytes} bytes: oldest messages dropped",
                                dropped))  # fmt: skip
        return problems


def _supported() -> bool:
    needed = {os.open, os.rename, os.unlink, os.stat}
    return bool(_NOFOLLOW) and needed <= os.supports_dir_fd and os.scandir in os.supports_fd


def _make_private(path: str) -> None:
    """Create ``path`` and its missing parents 0700 (as XDG asks of ~/.cache) whatever the umask."""
    if os.path.exists(path):
        return
    parent = os.path.dirname(path)
    if parent != path:
        _make_private(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:  # made by another process meanwhile: checked all the same
        return
    os.chmod(path, 0o700)  # the umask may have taken our own bits away


def _write_file(directory: int, name: str, data: bytes) -> None:
    """Create ``name`` 0600 with ``data`` and fsync it; on any failure, remove what was written."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
    descriptor = os.open(name, flags, 0o600, dir_fd=directory)
    try:
        with open(descriptor, "wb", closefd=True) as file:
            os.fchmod(descriptor, 0o600)  # the umask may have taken our own bits away
            file.write(data)
            file.flush()
            os.fsync(descriptor)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=directory)
        raise


def _read(directory: int, name: str) -> list[bytes]:
    """The messages of spool file ``name``: each line checked as a message the API accepts."""
    flags = os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC  # a symlink: ELOOP, never read
    with open(os.open(name, flags, dir_fd=directory), "rb", closefd=True) as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise _Corrupt("not a regular file")
        data = file.read()
    if not data.endswith(b"\n"):
        raise _Corrupt("truncated (no final newline)")
    lines = data[:-1].split(b"\n")
    for number, line in enumerate(lines, 1):
        try:
            _check_line(line, name)
        except (ValueError, TypeError, RecursionError) as exc:
            raise _Corrupt(f"line {number}: {_why(exc)}") from None
    return lines


def _check_line(line: bytes, name: str) -> None:
    if len(line) > MAX_MESSAGE_BYTES:
        raise _Corrupt(f"{len(line)} bytes, over the {MAX_MESSAGE_BYTES}-byte message limit")
    # Before json.loads: nesting this deep is refused at the call and could exhaust the stack.
    if line.count(b"{") + line.count(b"[") > MAX_NESTING and nesting(line) > MAX_NESTING:
        raise _Corrupt(f"nested over {MAX_NESTING} levels deep")
    message = json.loads(line.decode("utf-8"), parse_constant=_not_json)
    check_wire(message, f"spool file {name}")


def _not_json(constant: str) -> object:
    raise _Corrupt(f"{constant} is not JSON")


def _set_aside(directory: int, name: str, exc: BaseException) -> str:
    """Rename the claimed file ``name`` to ``*.corrupt`` (never sent); the problem to report."""
    aside = _stem(name) + CORRUPT
    try:
        os.replace(name, aside, src_dir_fd=directory, dst_dir_fd=directory)
    except OSError as failed:
        return f"unreadable spool file {name} ({_why(exc)}) could not be set aside: {_why(failed)}"
    return f"unreadable spool file set aside as {aside}: {_why(exc)}"


def _stem(name: str) -> str:
    return name.split(".", 1)[0]


def _nanoseconds(text: str) -> int:
    """The time at the start of a claim or temporary name; a huge number when there is none."""
    digits = text.split("-", 1)[0]
    return int(digits) if digits.isdigit() and len(digits) < 25 else 2**63


def _why(exc: BaseException) -> str:
    """``exc`` as a short clause: the OS error's text and file, or the message."""
    if isinstance(exc, OSError) and not isinstance(exc, _Unsafe) and exc.strerror:
        where = f": {exc.filename}" if isinstance(exc.filename, str) else ""
        return f"{exc.strerror}{where}"
    if isinstance(exc, RecursionError):
        return "nested too deeply to decode"
    return str(exc) or type(exc).__name__
