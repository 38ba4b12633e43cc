"""lambda-analytics: the command line of lambda_analytics (also python -m lambda_analytics).

Send one message (the write key comes from ANALYTICS_WRITE_KEY, like every ANALYTICS_*
setting of the default client, or from --write-key):

  lambda-analytics track --user-id u1 --event "Order Completed" --properties '{"revenue": 9.99}'
  lambda-analytics identify --user-id u1 --traits '{"plan": "pro"}'

Import a JSON Lines file, one message a line (every line is validated before anything is
sent; "-" reads standard input), keeping what could not be delivered for a second run:

  lambda-analytics import events.jsonl --failed-file failed.jsonl
  lambda-analytics import failed.jsonl

Try it locally: "lambda-analytics collector" runs a /v1/batch server on 127.0.0.1:8765 that
prints what arrives; "lambda-analytics demo" runs the example Lambda handler against one.

Exit status: 0 delivered; 1 not delivered, or a setting or message is wrong; 2 a usage error
or invalid lines in an import (then nothing is sent).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import importlib.util
import io
import json
import logging
import os
import re
import reprlib
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Final, NoReturn, TextIO

from . import Analytics, AnalyticsError, DeliveryError, RequestInfo, __version__
from .messages import COMMON_FIELDS, MAX_MESSAGE_BYTES, TYPE_FIELDS, WIRE_NAMES
from .messages import MESSAGE_TYPES as SCHEMA_TYPES
from .settings import settings_from_env

PROG: Final = "lambda-analytics"
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130
SEND_TIMEOUT: Final = 10.0
"""Default seconds one call may take to deliver, retries included."""
MAX_REPORTED_LINES: Final = 50
"""Invalid lines listed one by one; beyond this only their count is given."""
MAX_LINE_BYTES: Final = 1_048_576
"""A longer JSONL line is invalid unread (a message is at most 32 KB: 1 MiB is ample even with
every character escaped), so a file without line ends cannot take all the memory."""
MAX_REPORTED_REASONS: Final = 20
"""Distinct delivery failures listed one by one; the others are counted together."""
SHOWN_PROBLEM: Final = 200
"""Characters of a problem with a line, or of a delivery failure, in one error line."""
# The schema's types, track first as in --help (the call most used).
MESSAGE_TYPES: Final = ("track", *(kind for kind in SCHEMA_TYPES if kind != "track"))

# Python name of each wire field (``userId`` -> ``user_id``; ``event`` is ``event``).
_PYTHON: Final = {wire: name for name, wire in WIRE_NAMES.items()}
# The keyword arguments of each call: the type's own fields, then the common ones (alias has
# no anonymous_id: it merges previous_id into user_id).
_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    kind: tuple(
        _PYTHON.get(wire, wire)
        for wire in (*TYPE_FIELDS[kind], *COMMON_FIELDS)
        if wire != "type" and not (kind == "alias" and wire == "anonymousId")
    )
    for kind in MESSAGE_TYPES
}
# A field of a JSONL line, by wire or Python name -> the call's argument name.
_ARGUMENT: Final = {
    **_PYTHON,
    **{name: name for names in _FIELDS.values() for name in names},
}


class CommandError(Exception):
    """A user mistake or a failure, reported as one line ``lambda-analytics: error: ...``."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (with where to look), not usage + error."""

    def error(self, message: str) -> NoReturn:
        # argparse echoes the offending argument: clipped and escaped like every echoed value.
        shown = _one_line(message, SHOWN_PROBLEM)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {shown} (see {self.prog} --help)\n")


# -- argument types -------------------------------------------------------------------------


def _json_object(text: str) -> dict[str, Any]:
    """A JSON object given inline, or ``@path`` to read it from a file."""
    source = text
    if text.startswith("@"):
        try:
            source = Path(text[1:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise argparse.ArgumentTypeError(f"cannot read {text[1:]}: {reason}") from None
    try:
        value = json.loads(source)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg}): {_clip(text)}") from None
    except RecursionError:
        raise argparse.ArgumentTypeError("JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object {{...}}, not {_clip(text)}")
    return value


def parse_timestamp(text: str) -> _dt.datetime:
    """ISO-8601 (``2024-05-01T12:00:00Z``, ``2024-05-01 12:00:00+02:00``, ``2024-05-01``).

    Without an offset the time is taken as UTC, as the SDK does.
    """
    value = text.strip()
    if value[-1:] in ("Z", "z"):
        value = value[:-1] + "+00:00"
    # Python 3.10's fromisoformat wants 0, 3 or 6 fraction digits: pad or cut to 6.
    match = re.fullmatch(r"(.*[T ]\d\d:\d\d:\d\d)\.(\d+)(.*)", value)
    if match:
        value = f"{match[1]}.{match[2][:6].ljust(6, '0')}{match[3]}"
    try:
        return _dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not an ISO-8601 date-time: {_clip(text)}") from None


def _timestamp_argument(text: str) -> _dt.datetime:
    try:
        return parse_timestamp(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {_clip(text)}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {_clip(text)}")
    return value


# -- the client -----------------------------------------------------------------------------


def make_client(args: argparse.Namespace, **overrides: Any) -> Analytics:
    """An ``Analytics`` set up like the default client (``ANALYTICS_*``), flags winning."""
    settings = settings_from_env(os.environ)
    if args.write_key:
        settings["write_key"] = args.write_key
    if args.host:
        settings["host"] = args.host
    settings.update(overrides)
    if not settings.get("write_key") and not settings.get("disable"):
        raise CommandError("no write key: set ANALYTICS_WRITE_KEY or pass --write-key")
    return Analytics(**settings)


def _log(verbose: int) -> None:
    """The SDK logs each failure as a WARNING: the command reports them itself, once."""
    logger = logging.getLogger("lambda_analytics")
    if verbose:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s")
        logger.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    else:
        logger.addHandler(logging.NullHandler())
        logger.propagate = False


def _describe_error(error: BaseException, limit: int = SHOWN_PROBLEM) -> str:
    """One line: urllib3's ``<HTTPConnection object at 0x...>:`` noise removed; what came from
    the server (an error body, a Location) escaped and clipped, whatever it sent."""
    text = re.sub(r"<[\w.]+ object at 0x[0-9a-fA-F]+>:?\s*", "", str(error)[: 4 * limit])
    return _one_line(" ".join(text.split()), limit, middle=False)


# -- the six calls --------------------------------------------------------------------------


def send_one(args: argparse.Namespace) -> int:
    """Send one message; print ``<messageId> delivered`` or raise CommandError."""
    kwargs = {name: getattr(args, name) for name in _FIELDS[args.command]}
    _log(args.verbose)
    client = make_client(args, flush_at=1)
    try:
        with client.deadline(args.timeout or SEND_TIMEOUT):
            result = _call(client, args.command)(**kwargs)
    except AnalyticsError as exc:  # raised at the call: the message is invalid
        raise CommandError(f"invalid {args.command} message: {exc}") from None
    finally:
        client.close(timeout=1.0)
    if result.delivered:
        print(f"{result.message_id} delivered")
        return 0
    if client.disable:
        print(f"{result.message_id} valid, not sent: ANALYTICS_DISABLE is set")
        return 0
    reason = _describe_error(result.error) if result.error else "not sent"
    raise CommandError(f"{result.message_id} not delivered to {client.url}: {reason}")


def _call(client: Analytics, kind: str) -> Callable[..., Any]:
    calls: dict[str, Callable[..., Any]] = {
        "track": client.track,
        "identify": client.identify,
        "page": client.page,
        "screen": client.screen,
        "group": client.group,
        "alias": client.alias,
    }
    return calls[kind]


# -- import ---------------------------------------------------------------------------------


class LineError(ValueError):
    """A JSONL line that is not a valid message; the text names the field."""


def parse_line(text: str) -> tuple[str, dict[str, Any]]:
    """One JSONL line -> (message type, keyword arguments of that call).

    Accepts wire names (``userId``) and Python names (``user_id``); ``timestamp`` is an
    ISO-8601 string.  Every argument of the call is present (``None`` when absent), so a
    missing ``event`` is reported by the SDK's validation, naming it.  Raises LineError naming
    the field; the values themselves are checked by the SDK when the call is made.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LineError(f"not valid JSON: {exc.msg} (column {exc.colno})") from None
    except RecursionError:
        raise LineError("not valid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise LineError(f"must be a JSON object, not {type(data).__name__}")
    kind = data.get("type")
    if kind not in _FIELDS:
        raise LineError(f"type: must be one of {', '.join(MESSAGE_TYPES)}, got {_clip(kind)}")
    kwargs: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for key, value in data.items():
        if key == "type":
            continue
        name = _ARGUMENT.get(key)
        if name is None:
            raise LineError(f"{_one_line(key, 60)}: unknown field")
        if name not in _FIELDS[kind]:
            article = "an" if kind == "alias" else "a"
            raise LineError(f"{key}: is not a field of {article} {kind}")
        if name in seen:
            raise LineError(f"{key}: given twice (also as {seen[name]})")
        seen[name] = key
        kwargs[name] = value
    stamp = kwargs.get("timestamp")
    if isinstance(stamp, str):
        try:
            kwargs["timestamp"] = parse_timestamp(stamp)
        except ValueError as exc:
            raise LineError(f"timestamp: {exc}") from None
    elif stamp is not None:
        raise LineError(f"timestamp: must be an ISO-8601 string, not {type(stamp).__name__}")
    return kind, {name: kwargs.get(name) for name in _FIELDS[kind]}


def _lines(stream: IO[bytes]) -> Iterator[tuple[int, str | LineError]]:
    """(line number, text) of each non-blank line, or what makes it unreadable: not UTF-8, or
    longer than ``MAX_LINE_BYTES`` (skipped, never held in memory whole)."""
    number = 0
    while raw := stream.readline(MAX_LINE_BYTES + 1):
        number += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            size = len(raw)
            while rest := stream.readline(65536):  # to the end of the line, in pieces
                size += len(rest)
                if rest.endswith(b"\n"):
                    break
            problem = (
                f"line too long ({size:,} bytes, over {MAX_LINE_BYTES:,}; "
                f"a message is at most {MAX_MESSAGE_BYTES:,} bytes)"
            )
            yield number, LineError(problem)
            continue
        try:
            text = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            yield number, LineError("not UTF-8 text")
            continue
        if number == 1:
            text = text.removeprefix("\ufeff")
        if text.strip():
            yield number, text


def _check_line(validator: Analytics, text: str | LineError) -> tuple[str, dict[str, Any]]:
    """Parse a line and run it through the SDK's validation (a disabled client sends nothing)."""
    if isinstance(text, LineError):
        raise text
    kind, kwargs = parse_line(text)
    try:
        _call(validator, kind)(**kwargs)
    except AnalyticsError as exc:
        raise LineError(str(exc)) from None
    return kind, kwargs


class Progress:
    """A progress bar on a terminal (redrawn at most 10 times a second), else plain lines."""

    def __init__(self, total: int, stream: TextIO, *, enabled: bool = True) -> None:
        self.total = total
        self.stream = stream
        self.enabled = enabled
        self.tty = enabled and _isatty(stream)
        self.started = time.monotonic()
        self._shown = 0.0
        self._width = 0

    def rate(self, done: int) -> float:
        elapsed = time.monotonic() - self.started
        return done / elapsed if elapsed > 0 else 0.0

    def update(self, sent: int, failed: int, *, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        interval = 0.1 if self.tty else 1.0
        if not final and now - self._shown < interval:
            return
        if not self.tty and final:
            return  # the summary says it all
        self._shown = now
        done = sent + failed
        percent = 100 * done // self.total if self.total else 100
        failures = f", {failed:,} failed" if failed else ""
        counts = f"{done:,}/{self.total:,} ({percent}%){failures}, {self.rate(sent):,.0f} events/s"
        if self.tty:
            filled = 30 * done // self.total if self.total else 30
            line = f"\r[{'#' * filled}{'.' * (30 - filled)}] {counts}"
            pad = max(0, self._width - len(line))
            self._width = len(line)
            text = line + " " * pad + ("\n" if final else "")
        else:
            text = f"progress: {counts}\n"
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # stderr closed or a broken pipe: the import goes on
            self.enabled = False


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _FailedFile:
    """Undelivered messages, one wire-format JSON object a line, written as they fail.

    Written to a temporary file and renamed at the end, so the file can be the one being
    imported, and an interrupted run never leaves half a file.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.count = 0
        self.error: str | None = None
        """Why the file could not be written (a full disk...): then it is not left behind."""
        self._file: IO[str] | None = None
        if path is not None:
            try:
                fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent, text=True)
            except OSError as exc:
                raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from None
            self._temp = Path(temp)
            self._file = os.fdopen(fd, "w", encoding="utf-8")

    def write(self, messages: list[dict[str, Any]]) -> None:
        """Keep ``messages``; never raises (it runs in the client's ``on_error`` hook)."""
        self.count += len(messages)
        if self._file is not None and self.error is None:
            try:
                for message in messages:
                    line = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
                    self._file.write(line + "\n")
            except (OSError, ValueError, TypeError) as exc:
                self._failed(exc)

    def commit(self) -> None:
        """Put the file in place; if it could not be written whole, remove it (``error``)."""
        if self._file is not None and self.path is not None and self.error is None:
            try:
                self._file.close()
                os.replace(self._temp, self.path)
            except OSError as exc:
                self._failed(exc)
            else:
                self._file = None
        self.discard()

    def discard(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):  # a flush that fails: the file goes anyway
                self._file.close()
            with contextlib.suppress(OSError):
                self._temp.unlink(missing_ok=True)
            self._file = None

    def _failed(self, exc: BaseException) -> None:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        self.error = f"cannot write {self.path}: {reason}"


def _open_input(name: str) -> IO[bytes]:
    """The file, or standard input, or a pipe (``<(zcat events.gz)``) copied to a temporary
    file: it is read twice."""
    if name == "-":
        stdin = sys.stdin  # None when the process started with descriptor 0 closed
        if stdin is None:
            raise CommandError(
                "cannot read standard input: it is closed (give a FILE, or pipe the lines in)",
                EXIT_USAGE,
            )
        return _copied(getattr(stdin, "buffer", stdin), "standard input")
    try:
        stream = open(name, "rb")  # noqa: SIM115 - closed by the caller
    except OSError as exc:
        raise CommandError(f"cannot read {name}: {exc.strerror or exc}", EXIT_USAGE) from None
    if stream.seekable():
        return stream
    with stream:
        return _copied(stream, name)


def _copied(source: IO[Any], name: str) -> IO[bytes]:
    """What ``source`` holds, in a temporary file; CommandError if it is closed or unreadable."""
    try:
        spooled = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the caller
    except OSError as exc:
        reason = _os_reason(exc)
        raise CommandError(f"cannot make a temporary file for {name}: {reason}") from None
    try:
        while True:
            try:
                chunk = source.read(65536)
            except (OSError, ValueError) as exc:  # EBADF, EIO, not readable, closed...
                closed = isinstance(exc, ValueError) and not isinstance(exc, OSError)
                reason = "it is closed" if closed else _os_reason(exc)
                if isinstance(exc, io.UnsupportedOperation):
                    reason = "it is not open for reading"
                raise CommandError(f"cannot read {name}: {reason}", EXIT_USAGE) from None
            if not chunk:
                break
            if isinstance(chunk, str):  # a text stream standing in for sys.stdin
                chunk = chunk.encode("utf-8", "surrogateescape")
            try:
                spooled.write(chunk)
            except OSError as exc:  # ENOSPC in $TMPDIR
                raise CommandError(
                    f"cannot copy {name} to a temporary file: {_os_reason(exc)}"
                ) from None
        spooled.seek(0)
    except BaseException:
        spooled.close()
        raise
    return spooled


def import_file(args: argparse.Namespace) -> int:
    """Validate every line, then send them in batches; print a summary."""
    _log(args.verbose)
    failed_path = Path(args.failed_file) if args.failed_file else None
    client = make_client(args, flush_at=2500)  # the client also cuts batches at 500 KB
    shown = _source_name(args.file)
    with _open_input(args.file) as stream:
        # 1. Validate every line with the SDK's own checks before sending anything.
        validator = Analytics(disable=True)
        bad: set[int] = set()
        total = 0
        for number, text in _lines(stream):
            try:
                _check_line(validator, text)
            except LineError as exc:
                if len(bad) < MAX_REPORTED_LINES:  # the others are only counted
                    print(f"{shown}:{number}: {_problem(exc)}", file=sys.stderr)
                bad.add(number)
            else:
                total += 1
        if len(bad) > MAX_REPORTED_LINES:
            print(f"... and {len(bad) - MAX_REPORTED_LINES} more invalid lines", file=sys.stderr)
        if bad and not args.skip_invalid:
            raise CommandError(
                f"{len(bad)} invalid line{'s' if len(bad) != 1 else ''} in {shown}: nothing "
                "sent (fix them, or pass --skip-invalid to send the valid lines)",
                EXIT_USAGE,
            )
        if client.disable:  # ANALYTICS_DISABLE=1: a dry run
            print(f"{total} valid messages, not sent: ANALYTICS_DISABLE is set")
            return 0
        # 2. Send.
        stream.seek(0)
        return _send_lines(args, client, stream, total, bad, failed_path)


def _send_lines(
    args: argparse.Namespace,
    client: Analytics,
    stream: IO[bytes],
    total: int,
    bad: set[int],
    failed_path: Path | None,
) -> int:
    progress = Progress(total, sys.stderr, enabled=not args.quiet)
    failed = _FailedFile(failed_path)
    sent = 0
    # Why messages were not delivered -> how many; a server may word every answer differently,
    # so beyond MAX_REPORTED_REASONS distinct reasons the rest are counted together.
    errors: dict[str, int] = {}
    other_errors = 0

    def on_request(info: RequestInfo) -> None:
        nonlocal sent
        if info.status is not None and 200 <= info.status < 300:
            sent += info.message_count
            progress.update(sent, failed.count)

    def on_error(error: DeliveryError, messages: list[dict[str, Any]]) -> None:
        nonlocal other_errors
        failed.write(messages)
        reason = _describe_error(error)
        if reason in errors or len(errors) < MAX_REPORTED_REASONS:
            errors[reason] = errors.get(reason, 0) + len(messages)
        else:
            other_errors += len(messages)
        progress.update(sent, failed.count)

    client.on_request, client.on_error = on_request, on_error
    # No deadline unless asked: a bulk import should wait out a 429's Retry-After.
    timeout: float | None = args.timeout
    handed = 0
    late: list[str] = []  # the first MAX_REPORTED_LINES lines found invalid only now
    late_count = 0
    try:
        for number, text in _lines(stream):
            if number in bad:
                continue
            try:
                if isinstance(text, LineError):
                    raise text
                kind, kwargs = parse_line(text)
                if timeout is None:
                    _call(client, kind)(**kwargs)
                else:
                    with client.deadline(timeout):  # for the batch this call may send
                        _call(client, kind)(**kwargs)
            except (LineError, AnalyticsError) as exc:  # the file changed since the check?
                late_count += 1
                if len(late) < MAX_REPORTED_LINES:
                    late.append(f"{number}: {_problem(exc)}")
                continue
            handed += 1
        with client.deadline(timeout):
            client.close()
    except KeyboardInterrupt:
        progress.update(sent, failed.count, final=True)
        failed.commit()
        unsent = handed - sent - failed.count
        print(
            f"interrupted: {sent} sent, {failed.count} failed, {unsent} read but not sent, "
            f"{total - handed} not read"
        )
        if failed.error is not None:
            _fail(f"{PROG}: error: {failed.error}: {failed.count} undelivered messages not kept")
        return EXIT_INTERRUPTED
    except BaseException:
        failed.discard()
        raise
    progress.update(sent, failed.count, final=True)
    failed.commit()
    elapsed = time.monotonic() - progress.started
    shown = _source_name(args.file)
    for line in late:
        print(f"{shown}:{line}", file=sys.stderr)
    if late_count > len(late):
        print(f"... and {late_count - len(late)} more invalid lines", file=sys.stderr)
    for reason, count in errors.items():
        print(f"not delivered ({count} messages): {reason}", file=sys.stderr)
    if other_errors:
        print(f"not delivered ({other_errors} messages): other reasons", file=sys.stderr)
    others = handed - sent - failed.count  # kept in the spool (ANALYTICS_SPOOL_DIR)
    summary = f"sent {sent}, failed {failed.count}"
    if others > 0:
        summary += f", spooled {others}"
    if bad or late_count:
        summary += f", skipped {len(bad) + late_count} invalid"
    rate = sent / elapsed if elapsed > 0 else 0.0
    print(f"{summary} in {elapsed:.2f} s ({rate:,.0f} events/s)")
    if failed.error is not None:
        _fail(f"{PROG}: error: {failed.error}: {failed.count} undelivered messages not kept")
    elif failed.count and failed_path is not None:
        print(
            f"{failed.count} undelivered messages written to {failed_path}; "
            f"resend them with: {PROG} import {failed_path}"
        )
    elif failed.count:
        print("pass --failed-file PATH to keep undelivered messages for a resend", file=sys.stderr)
    return EXIT_FAILED if failed.count or late_count else 0


def _source_name(name: str) -> str:
    """How the input is named at the start of a line's error: ``stdin`` or its path."""
    return "stdin" if name == "-" else _one_line(name, 2 * SHOWN_PROBLEM)


def _problem(error: BaseException) -> str:
    """What is wrong with a line, in one line of bounded length whatever the line held: the
    start (the field) and the end (the problem) kept, a long value cut out of the middle."""
    return _one_line(str(error), SHOWN_PROBLEM)


# -- demo -----------------------------------------------------------------------------------

DEMO_WRITE_KEY = "demo-write-key"
DEMO_EVENTS: list[dict[str, Any]] = [
    {
        "user_id": "user-42",
        "plan": "pro",
        "items": [{"sku": "tee-blue", "price": 19.5, "quantity": 2}, {"sku": "mug", "price": 9.0}],
    },
    {"user_id": "user-7", "items": [{"sku": "sticker", "price": 1.25, "quantity": 4}]},
]


class LambdaContext:
    """The parts of AWS Lambda's context object that handlers and the SDK read."""

    def __init__(self, function_name: str, timeout: float) -> None:
        self.function_name = function_name
        self.aws_request_id = str(uuid.uuid4())
        self.memory_limit_in_mb = 128
        self._deadline = time.monotonic() + timeout

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the platform stops the invocation."""
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _load_handler(spec: str) -> Any:
    path_text, _, name = spec.partition(":")
    path = Path(path_text)
    if not path.is_file():
        raise SystemExit(f"error: handler file {path} not found (run from the repository root)")
    module_spec = importlib.util.spec_from_file_location(path.stem, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return getattr(module, name or "handler")


def demo(handler_spec: str, timeout: float) -> int:
    """Invoke the handler for each demo event, then print what reached the collector."""
    from .collector import Collector

    with Collector(write_key=DEMO_WRITE_KEY) as collector:
        os.environ["ANALYTICS_WRITE_KEY"] = DEMO_WRITE_KEY
        os.environ["ANALYTICS_HOST"] = collector.url
        print(f"local collector listening on {collector.url}")
        handler = _load_handler(handler_spec)
        for event in DEMO_EVENTS:
            context = LambdaContext("checkout-demo", timeout)
            started = time.perf_counter()
            response = handler(event, context)
            elapsed = (time.perf_counter() - started) * 1000
            print(f"invoke {context.aws_request_id[:8]}: {response} ({elapsed:.1f} ms)")
        print(f"\nthe collector received {collector.request_count} requests:")
        for request in collector.requests:
            batch = (request.payload or {}).get("batch", [])
            print(f"  HTTP {request.status}, {len(request.body)} bytes, {len(batch)} messages")
            for message in batch:  # any local process may post to the collector: escaped
                kind, user = (_one_line(str(message.get(k) or "-"), 40) for k in ("type", "userId"))
                what = _one_line(str(message.get("event") or message.get("traits") or ""), 200)
                print(f"    {kind:<8} {user:<8} {what}")
        expected = sum(len(e.get("items", [])) + 2 for e in DEMO_EVENTS)
        received = len(collector.messages)
    print(f"\n{received} of {expected} events arrived")
    return 0 if received == expected else 1


# -- the parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``lambda-analytics`` argument parser."""
    parser = _Parser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    connection = _Parser(add_help=False)
    group = connection.add_argument_group("connection (defaults from ANALYTICS_* variables)")
    group.add_argument(
        "--write-key",
        metavar="KEY",
        help="the source's write key (default: $ANALYTICS_WRITE_KEY, which keeps it out of "
        "your shell history and the process list)",
    )
    group.add_argument("--host", metavar="URL", help="base URL (default: $ANALYTICS_HOST or us)")
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log failures (-vv: every request and retry)",
    )
    group.add_argument(
        "--timeout",
        type=_positive,
        metavar="SECONDS",
        help=f"deadline of one request with its retries (default {SEND_TIMEOUT:g}; import: "
        "none, the retry policy bounds each batch)",
    )

    json_value: dict[str, Any] = {"type": _json_object, "metavar": "JSON"}
    calls: list[tuple[str, str, list[tuple[str, dict[str, Any]]]]] = [
        ("track", "record that a user did something", [
            ("--event", {"required": True, "help": 'e.g. "Order Completed"'}),
            ("--properties", json_value),
        ]),
        ("identify", "tie a user to their traits", [("--traits", json_value)]),
        ("page", "record a page view of a website", [
            ("--name", {}), ("--category", {}), ("--properties", json_value),
        ]),
        ("screen", "record a screen of an app", [
            ("--name", {}), ("--category", {}), ("--properties", json_value),
        ]),
        ("group", "tie a user to a group (account, company)", [
            ("--group-id", {"required": True, "metavar": "ID"}), ("--traits", json_value),
        ]),
        ("alias", "merge a previous id into --user-id", [
            ("--previous-id", {"required": True, "metavar": "ID"}),
        ]),
    ]  # fmt: skip
    for name, text, specific in calls:
        command = commands.add_parser(name, help=text, description=text, parents=[connection])
        fields = command.add_argument_group(
            "message", "JSON values are given inline, or as @FILE to read them from a file."
        )
        if name == "alias":
            fields.add_argument("--user-id", metavar="ID", required=True)
        else:
            fields.add_argument("--user-id", metavar="ID")
            fields.add_argument("--anonymous-id", metavar="ID")
        for flag, options in specific:
            fields.add_argument(flag, **options)
        fields.add_argument("--context", **json_value)
        fields.add_argument("--integrations", **json_value)
        fields.add_argument(
            "--timestamp", type=_timestamp_argument, metavar="ISO", help="when it happened (now)"
        )
        fields.add_argument("--message-id", metavar="ID", help="for deduplication (a new UUID)")

    run_import = commands.add_parser(
        "import",
        help="send a JSON Lines file of messages",
        description="Send a JSON Lines file, one message a line: "
        '{"type": "track", "userId": "u1", "event": "Signed Up", "properties": {...}, '
        '"timestamp": "2024-05-01T12:00:00Z"} (wire names like userId, or Python names like '
        "user_id). Every line is validated first: if any is invalid, they are listed with "
        "their line numbers and nothing is sent (exit 2). Messages go in batches at the "
        "protocol limits (2,500 messages, 500 KB).",
        parents=[connection],
    )
    run_import.add_argument("file", metavar="FILE", help='JSONL file, "-" for standard input')
    run_import.add_argument(
        "--failed-file",
        metavar="PATH",
        help="write undelivered messages here (JSONL, wire format, same messageId): "
        "import it again to resend only those",
    )
    run_import.add_argument(
        "--skip-invalid", action="store_true", help="send the valid lines even if some are not"
    )
    run_import.add_argument("--quiet", action="store_true", help="no progress display")

    commands.add_parser(
        "collector",
        help="run the local /v1/batch server (see: collector --help)",
        add_help=False,
    )
    run_demo = commands.add_parser("demo", help="run the example handler against a local collector")
    run_demo.add_argument("--handler", default="examples/aws_lambda/handler.py:handler")
    run_demo.add_argument("--timeout", type=float, default=3.0, help="Lambda timeout (seconds)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lambda-analytics``; returns the exit status."""
    _stand_in_for_closed_streams()
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "collector":
        from .collector import main as collector_main

        return collector_main(rest)
    if rest:
        where = f"{PROG} {args.command}"
        extra = _one_line(" ".join(rest), SHOWN_PROBLEM)
        _fail(f"{where}: error: unrecognized arguments: {extra} (see {where} --help)")
        return EXIT_USAGE
    try:
        if args.command == "demo":
            return demo(args.handler, args.timeout)
        if args.command == "import":
            return import_file(args)
        return send_one(args)
    except CommandError as exc:
        _fail(f"{PROG}: error: {exc}")
        return exc.status
    except AnalyticsError as exc:  # a setting: ANALYTICS_REGION=mars, a bad --host...
        _fail(f"{PROG}: error: {_describe_error(exc)}")
        return EXIT_FAILED
    except BrokenPipeError:  # lambda-analytics ... | head: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except OSError as exc:
        _fail(f"{PROG}: error: {_os_reason(exc)}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        _fail(f"{PROG}: interrupted")
        return EXIT_INTERRUPTED


def _stand_in_for_closed_streams() -> None:
    """Started with descriptor 1 or 2 closed, Python sets ``sys.stdout``/``sys.stderr`` to
    None: what would go there is dropped (``os.devnull``), never raised as AttributeError.
    (A closed standard input is reported by ``import -``, the one command that reads it.)"""
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115


def _fail(line: str) -> None:
    """``line`` on standard error: one line, control characters escaped."""
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
    with contextlib.suppress(OSError, ValueError):  # stderr gone too: nowhere left to say it
        print(_escape(line), file=sys.stderr, flush=True)


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror + (f": {exc.filename}" if exc.filename else "")
    return str(exc)


def _clip(text: object, limit: int = 60) -> str:
    """A value echoed in an error: its repr (escaped, quoted), at most ``limit`` characters of
    it (the repr of a 40 MB string is never built)."""
    if isinstance(text, str):
        return repr(text if len(text) <= limit else text[: limit - 3] + "...")
    shown = reprlib.repr(text)  # bounded: a few items of a list, a few characters of a string
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _one_line(text: str, limit: int, *, middle: bool = True) -> str:
    """``text`` fit for one line of a terminal, however long and whatever it holds: escaped
    (``_escape``), at most ``limit`` characters of it, cut out of the middle (``middle``: the
    start and the end are kept) or off the end, marked ``...``."""
    if len(text) <= limit:
        shown = _escape(text)
        if len(shown) <= limit:
            return shown
    if not middle:
        return _escape(text[:limit])[:limit] + "..."
    head, tail = limit // 2, limit - limit // 2
    return f"{_escape(text[:head])[:head]}...{_escape(text[-tail:])[-tail:]}"


def _escape(text: str) -> str:
    """Each control or other non-printing character (escape sequences, line ends, a lone
    surrogate) as its Python escape: what the text says reaches the terminal, not what it does."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


if __name__ == "__main__":
    sys.exit(main())
