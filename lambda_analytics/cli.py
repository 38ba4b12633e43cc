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
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Final, NoReturn, TextIO

from . import Analytics, AnalyticsError, DeliveryError, RequestInfo, __version__
from .messages import COMMON_FIELDS, TYPE_FIELDS, WIRE_NAMES
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
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
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


def _describe_error(error: BaseException) -> str:
    """One line: urllib3's ``<HTTPConnection object at 0x...>:`` noise removed."""
    text = re.sub(r"<[\w.]+ object at 0x[0-9a-fA-F]+>:?\s*", "", str(error))
    return " ".join(text.split())


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
        raise LineError(f"type: must be one of {', '.join(MESSAGE_TYPES)}, got {kind!r}")
    kwargs: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for key, value in data.items():
        if key == "type":
            continue
        name = _ARGUMENT.get(key)
        if name is None:
            raise LineError(f"{key}: unknown field")
        if name not in _FIELDS[kind]:
            raise LineError(f"{key}: is not a field of {'an' if kind == 'alias' else 'a'} {kind}")
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


def _lines(stream: IO[bytes]) -> Iterator[tuple[int, str | None]]:
    """(line number, text) of each non-blank line; text None when it is not UTF-8."""
    for number, raw in enumerate(stream, 1):
        try:
            text = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            yield number, None
            continue
        if number == 1:
            text = text.removeprefix("\ufeff")
        if text.strip():
            yield number, text


def _check_line(validator: Analytics, text: str | None) -> tuple[str, dict[str, Any]]:
    """Parse a line and run it through the SDK's validation (a disabled client sends nothing)."""
    if text is None:
        raise LineError("not UTF-8 text")
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
            self.stream.write(line + " " * pad + ("\n" if final else ""))
        else:
            self.stream.write(f"progress: {counts}\n")
        self.stream.flush()


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
        self._file: IO[str] | None = None
        if path is not None:
            try:
                fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent, text=True)
            except OSError as exc:
                raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from None
            self._temp = Path(temp)
            self._file = os.fdopen(fd, "w", encoding="utf-8")

    def write(self, messages: list[dict[str, Any]]) -> None:
        self.count += len(messages)
        if self._file is not None:
            for message in messages:
                self._file.write(json.dumps(message, ensure_ascii=False, separators=(",", ":")))
                self._file.write("\n")

    def commit(self) -> None:
        if self._file is not None and self.path is not None:
            self._file.close()
            os.replace(self._temp, self.path)
            self._file = None

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._temp.unlink(missing_ok=True)
            self._file = None


def _open_input(name: str) -> IO[bytes]:
    """The file, or standard input copied to a temporary file (it is read twice)."""
    if name == "-":
        spooled = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the caller
        shutil.copyfileobj(sys.stdin.buffer, spooled)
        spooled.seek(0)
        return spooled
    try:
        return open(name, "rb")
    except OSError as exc:
        raise CommandError(f"cannot read {name}: {exc.strerror or exc}", EXIT_USAGE) from None


def import_file(args: argparse.Namespace) -> int:
    """Validate every line, then send them in batches; print a summary."""
    _log(args.verbose)
    failed_path = Path(args.failed_file) if args.failed_file else None
    client = make_client(args, flush_at=2500)  # the client also cuts batches at 500 KB
    shown = "stdin" if args.file == "-" else args.file
    with _open_input(args.file) as stream:
        # 1. Validate every line with the SDK's own checks before sending anything.
        validator = Analytics(disable=True)
        bad: dict[int, str] = {}
        total = 0
        for number, text in _lines(stream):
            try:
                _check_line(validator, text)
            except LineError as exc:
                bad[number] = str(exc)
            else:
                total += 1
        for number, problem in list(bad.items())[:MAX_REPORTED_LINES]:
            print(f"{shown}:{number}: {problem}", file=sys.stderr)
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
    bad: dict[int, str],
    failed_path: Path | None,
) -> int:
    progress = Progress(total, sys.stderr, enabled=not args.quiet)
    failed = _FailedFile(failed_path)
    sent = 0
    errors: dict[str, int] = {}

    def on_request(info: RequestInfo) -> None:
        nonlocal sent
        if info.status is not None and 200 <= info.status < 300:
            sent += info.message_count
            progress.update(sent, failed.count)

    def on_error(error: DeliveryError, messages: list[dict[str, Any]]) -> None:
        failed.write(messages)
        reason = _describe_error(error)
        errors[reason] = errors.get(reason, 0) + len(messages)
        progress.update(sent, failed.count)

    client.on_request, client.on_error = on_request, on_error
    # No deadline unless asked: a bulk import should wait out a 429's Retry-After.
    timeout: float | None = args.timeout
    handed = 0
    late: list[str] = []
    try:
        for number, text in _lines(stream):
            if number in bad:
                continue
            try:
                if text is None:
                    raise LineError("not UTF-8 text")
                kind, kwargs = parse_line(text)
                if timeout is None:
                    _call(client, kind)(**kwargs)
                else:
                    with client.deadline(timeout):  # for the batch this call may send
                        _call(client, kind)(**kwargs)
            except (LineError, AnalyticsError) as exc:  # the file changed since the check?
                late.append(f"{number}: {exc}")
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
        return EXIT_INTERRUPTED
    except BaseException:
        failed.discard()
        raise
    progress.update(sent, failed.count, final=True)
    failed.commit()
    elapsed = time.monotonic() - progress.started
    for line in late:
        print(f"{'stdin' if args.file == '-' else args.file}:{line}", file=sys.stderr)
    for reason, count in errors.items():
        print(f"not delivered ({count} messages): {reason}", file=sys.stderr)
    others = handed - sent - failed.count  # kept in the spool (ANALYTICS_SPOOL_DIR)
    summary = f"sent {sent}, failed {failed.count}"
    if others > 0:
        summary += f", spooled {others}"
    if bad or late:
        summary += f", skipped {len(bad) + len(late)} invalid"
    rate = sent / elapsed if elapsed > 0 else 0.0
    print(f"{summary} in {elapsed:.2f} s ({rate:,.0f} events/s)")
    if failed.count and failed_path is not None:
        print(
            f"{failed.count} undelivered messages written to {failed_path}; "
            f"resend them with: {PROG} import {failed_path}"
        )
    elif failed.count:
        print("pass --failed-file PATH to keep undelivered messages for a resend", file=sys.stderr)
    return EXIT_FAILED if failed.count or late else 0


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
            for message in batch:
                what = message.get("event") or message.get("traits") or ""
                print(f"    {message['type']:<8} {message.get('userId', '-'):<8} {what}")
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
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "collector":
        from .collector import main as collector_main

        return collector_main(rest)
    if rest:
        where = f"{PROG} {args.command}"
        _fail(f"{where}: error: unrecognized arguments: {' '.join(rest)} (see {where} --help)")
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


def _fail(line: str) -> None:
    with contextlib.suppress(OSError):
        sys.stdout.flush()
    print(line, file=sys.stderr)


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror + (f": {exc.filename}" if exc.filename else "")
    return str(exc)


def _clip(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


if __name__ == "__main__":
    sys.exit(main())
