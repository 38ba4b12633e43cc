"""``lambda-analytics`` against hostile input and hostile servers, run as a user runs it.

Standard streams closed at start, JSONL lines holding huge or terminal-hijacking values, and
servers on 127.0.0.1 that answer an import with garbage: each ends in bounded, escaped,
one-line errors (or the summary and the ``--failed-file``), never a traceback, and what failed
re-sends cleanly to a good collector.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import WRITE_KEY
from hostile_server import HostileServer
from test_cli import (
    collector_command,
    main_in_process,
    run,
    to,
    track_lines,
    write_jsonl,
)

from lambda_analytics import cli
from lambda_analytics.collector import Collector

MAX_ERROR_LINE = 300
"""No line the command writes about bad input or a bad server is longer than this."""
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
"""What must never reach a terminal raw (line feeds separate lines; they are checked apart)."""
FAST_FAILURE = {"ANALYTICS_MAX_RETRIES": "1"}  # one retry: a garbage server costs little time

posix_only = pytest.mark.skipif(os.name != "posix", reason="closes descriptors with sh")


def run_sh(
    script: str, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``sh -c script`` where ``$PY`` is this interpreter: descriptors closed with ``exec``."""
    return run(*args, env={"PY": sys.executable, **(env or {})}, command=("sh", "-c", script, "sh"))


def assert_clean(text: str, longest: int = MAX_ERROR_LINE) -> None:
    """No traceback, no raw control character, no line of ``longest`` characters or more."""
    assert "Traceback" not in text, text[-3000:]
    assert not CONTROL.search(text), repr(CONTROL.search(text))
    for line in text.splitlines():
        assert len(line) < longest, line[:500]


# -- closed standard streams ------------------------------------------------------------------


@posix_only
def test_import_from_a_closed_standard_input_is_a_one_line_usage_error(
    collector: Collector,
) -> None:
    result = run_sh('exec 0<&-; exec "$PY" -m lambda_analytics import "$@"', "-", env=to(collector))
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr == (
        "lambda-analytics: error: cannot read standard input: it is closed "
        "(give a FILE, or pipe the lines in)\n"
    )
    assert collector.request_count == 0


@pytest.mark.parametrize("state", ["None", "closed", "write-only"])
def test_import_from_an_unusable_stdin_object_in_process(
    state: str,
    collector: Collector,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``cli.main`` called by a program whose sys.stdin is None, closed, or not readable."""
    for name, value in to(collector).items():
        monkeypatch.setenv(name, value)
    stdin: Any = None
    if state != "None":
        source = tmp_path / "in.jsonl"
        write_jsonl(source, track_lines(2))
        stdin = open(source, "r" if state == "closed" else "a")  # noqa: SIM115 - closed below
        if state == "closed":
            stdin.close()
    monkeypatch.setattr(sys, "stdin", stdin)
    try:
        status = cli.main(["import", "-"])
    finally:
        if stdin is not None:
            with contextlib.suppress(OSError):
                stdin.close()
    out, err = capsys.readouterr()
    assert status == 2 and out == ""
    assert err.startswith("lambda-analytics: error: cannot read standard input: "), err
    assert ("not open for reading" if state == "write-only" else "it is closed") in err
    assert len(err.splitlines()) == 1
    assert collector.request_count == 0


def test_import_from_a_text_stream_standing_in_for_stdin(
    collector: Collector, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A program calling ``cli.main`` with ``sys.stdin = io.StringIO(...)`` (no ``.buffer``)."""
    for name, value in to(collector).items():
        monkeypatch.setenv(name, value)
    lines = "".join(json.dumps(line) + "\n" for line in track_lines(3))
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    assert cli.main(["import", "-", "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("sent 3, failed 0 in ")
    assert collector.message_count == 3


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a named pipe")
def test_import_reads_a_pipe_given_as_the_file(collector: Collector, tmp_path: Path) -> None:
    """``lambda-analytics import <(zcat events.jsonl.gz)``: a pipe cannot be read twice."""
    fifo = tmp_path / "events.pipe"
    os.mkfifo(fifo)
    lines = "".join(json.dumps(line) + "\n" for line in track_lines(4))

    def feed() -> None:
        with fifo.open("w") as pipe:  # blocks until the command opens it
            pipe.write(lines)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    result = run("import", str(fifo), "--quiet", env=to(collector))
    writer.join(10)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("sent 4, failed 0 in ")
    assert collector.message_count == 4


@posix_only
@pytest.mark.parametrize("closed", ["1", "2", "1 2"])
def test_closed_stdout_or_stderr_still_imports_and_keeps_the_failures(
    closed: str, collector: Collector, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "events.jsonl", track_lines(40))
    failed = tmp_path / "failed.jsonl"
    collector.fail_next(400)  # the one batch: refused, so every line goes to --failed-file
    shut = " ".join(f"{fd}>&-" for fd in closed.split())
    result = run_sh(
        f'exec {shut}; exec "$PY" -m lambda_analytics import "$@"',
        str(source),
        "--failed-file",
        str(failed),
        env=to(collector),
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    if "1" not in closed.split():
        assert result.stdout.startswith("sent 0, failed 40 in ")
    if "2" not in closed.split():
        assert "not delivered (40 messages): server answered HTTP 400" in result.stderr
    assert len(failed.read_text().splitlines()) == 40  # kept, whatever happened to the output


# -- what is echoed from the input ------------------------------------------------------------


def test_values_echoed_in_error_lines_are_clipped_and_escaped(
    collector: Collector, tmp_path: Path
) -> None:
    huge = "x" * 40_000_000
    hijack = "\x1b]0;owned\x07\x1b[2J\r"  # set the window title, clear the screen
    good = {"type": "track", "userId": "u1", "event": "Kept"}
    lines: list[object] = [
        {**good, "properties": {"value": huge}},  # 1: 40 MB in one field
        {"type": hijack + "t" * 500_000},  # 2: echoed as the type it is not
        {**good, hijack + "k" * 300_000: 1},  # 3: an unknown field
        {**good, "properties": {"k" * 300_000: float("nan")}},  # 4: a field path
        {**good, "timestamp": hijack + "9" * 900_000},  # 5: not a date
        {**good, "properties": {"v": "x" * 900_000}},  # 6: too large for a message
        good,  # 7
    ]
    write_jsonl(tmp_path / "e.jsonl", lines)
    with (tmp_path / "e.jsonl").open("ab") as out:
        out.write(b'{"type": "track", "\xff": 1}\n')  # 8: not UTF-8

    result = run("import", "e.jsonl", env=to(collector), cwd=tmp_path)

    assert result.returncode == 2
    assert_clean(result.stderr)
    problems = result.stderr.splitlines()
    assert [line.split(":")[1] for line in problems[:-1]] == ["1", "2", "3", "4", "5", "6", "8"]
    assert problems[0].startswith("e.jsonl:1: line too long (40,000,0")
    assert problems[1].startswith(
        "e.jsonl:2: type: must be one of track, identify, page, screen, group, alias, "
        "got '\\x1b]0;owned\\x07\\x1b[2J\\rttt"
    )
    assert problems[2].startswith("e.jsonl:3: \\x1b]0;owned\\x07\\x1b[2J\\rkkk")
    assert problems[2].endswith("kkk: unknown field")
    assert problems[3].startswith("e.jsonl:4: properties.kkk")
    assert problems[3].endswith("kkk: nan is not a finite number, not valid JSON")
    assert problems[4].startswith("e.jsonl:5: timestamp: not an ISO-8601 date-time: '\\x1b]0;")
    assert "over the 32000-byte limit" in problems[5]
    assert problems[6] == "e.jsonl:8: not UTF-8 text"
    assert problems[-1].startswith("lambda-analytics: error: 7 invalid lines in e.jsonl")
    assert collector.request_count == 0

    skipping = run(
        "import", "e.jsonl", "--skip-invalid", "--quiet", env=to(collector), cwd=tmp_path
    )
    assert skipping.returncode == 0, skipping.stderr[-2000:]
    assert skipping.stdout.startswith("sent 1, failed 0, skipped 7 invalid in ")
    assert [m["event"] for m in collector.messages] == ["Kept"]


def test_a_line_without_end_is_read_in_pieces(collector: Collector, tmp_path: Path) -> None:
    """200 MB and no line feed: reported as one line too long, in bounded memory."""
    path = tmp_path / "endless.jsonl"
    first = json.dumps(track_lines(1)[0]).encode() + b"\n"
    with path.open("wb") as out:
        out.write(first)
        out.truncate(200_000_000)  # a sparse file: NUL bytes to the end, no line feed
    script = (  # VmHWM, not ru_maxrss: that one keeps the peak of the process before exec
        "import pathlib, re, sys\n"
        "from lambda_analytics.cli import main\n"
        "status = main(sys.argv[1:])\n"
        "status_file = pathlib.Path('/proc/self/status')\n"
        "text = status_file.read_text() if status_file.exists() else 'VmHWM: 0 kB'\n"
        "print('peak', re.search(r'VmHWM:\\s+(\\d+)', text)[1], file=sys.stderr)\n"
        "sys.exit(status)\n"
    )
    result = run("import", str(path), env=to(collector), command=(sys.executable, "-c", script))
    assert result.returncode == 2
    *lines, peak = result.stderr.splitlines()
    assert lines == [
        f"{path}:2: line too long ({200_000_000 - len(first):,} bytes, over 1,048,576; "
        "a message is at most 32,000 bytes)",
        f"lambda-analytics: error: 1 invalid line in {path}: nothing sent (fix them, or pass "
        "--skip-invalid to send the valid lines)",
    ]
    assert int(peak.split()[1]) < 100 * 1024, peak  # KiB: the line was never held whole


TRACK = ["track", "--user-id", "u", "--event", "E"]


@pytest.mark.parametrize(
    ("args", "part"),
    [
        ([*TRACK, "--timeout", "\x1b[2J" + "9x" * 50_000], "--timeout"),
        ([*TRACK, "--properties", "{" + "\x07" * 100_000], "--properties"),
        ([*TRACK, "--timestamp", "\r" * 100_000], "--timestamp"),
        ([*TRACK, "\x1b[2J" + "z" * 100_000], "unrecognized arguments"),
        (["\x1b[2J" + "z" * 100_000], "invalid choice"),
    ],
)
def test_command_line_values_are_clipped_and_escaped_in_errors(
    args: list[str],
    part: str,
    collector: Collector,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, err = main_in_process(args, collector, monkeypatch, capsys)
    assert status == 2 and out == ""
    assert len(err.splitlines()) == 1 and part in err, err[:1000]
    assert_clean(err)
    assert collector.request_count == 0


# -- servers that answer garbage --------------------------------------------------------------


class RawServer:
    """A loopback server that reads each request (head and Content-Length body) and answers it
    with whatever ``answer(index, body)`` returns: (bytes to send, close the connection)."""

    def __init__(self, answer: Callable[[int, bytes], tuple[bytes, bool]]) -> None:
        self.answer = answer
        self.bodies: list[bytes] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> RawServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._sockets.append(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        buffer = b""
        with sock, contextlib.suppress(OSError):
            sock.settimeout(30)
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                found = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                length = int(found[1]) if found else 0
                while len(buffer) < length:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buffer += data
                body, buffer = buffer[:length], buffer[length:]
                with self._lock:
                    index = len(self.bodies)
                    self.bodies.append(body)
                response, close = self.answer(index, body)
                sock.sendall(response)
                if close:
                    return


HIJACK = "\x1b]0;owned\x07\x1b[31m\x1b[2J\r\nSet-Cookie: x\r\n\x00\x9b".encode()  # \x9b: CSI


def ids_of(body: bytes) -> list[str]:
    return [m["messageId"] for m in json.loads(body)["batch"]]


def escapes_in_the_error_body(index: int, body: bytes) -> tuple[bytes, bool]:
    """The first batch accepted; then 400s whose bodies hijack the terminal, each different
    (``index``), 5 KB long: a distinct reason per batch."""
    if index == 0:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n" + b'{"success":true}', False
    error = HIJACK + b" batch %d " % index + "é".encode() * 2500
    head = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
    return head % len(error) + error, False


def switching_protocols(index: int, body: bytes) -> tuple[bytes, bool]:
    """101 Switching Protocols to a POST, then bytes of no protocol at all, then close."""
    return b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n" + HIJACK * 100, True


@contextlib.contextmanager
def hostile(kind: str) -> Iterator[tuple[str, Callable[[], list[str]]]]:
    """(url, ids the server took with a clean 200) for a server of ``kind``."""
    if kind in ("escapes", "switching"):
        answer = escapes_in_the_error_body if kind == "escapes" else switching_protocols
        with RawServer(answer) as raw:
            yield raw.url, lambda: ids_of(raw.bodies[0]) if kind == "escapes" else []
        return
    script = [] if kind == "reset-fresh" else ["ok"]  # a reset server never takes anything
    with HostileServer(kind, script=script) as server:

        def taken() -> list[str]:
            return [i for r in server.requests if r.mode == "ok" for i in r.message_ids]

        yield server.url, taken


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("garbage-status", "BadStatusLine"),
        ("reset-fresh", "reset"),
        ("many-headers", "got more than 100 headers"),
        ("huge-error", "server answered HTTP 400: xxxx"),
        ("escapes", "server answered HTTP 400: \\x1b]0;owned\\x07\\x1b[31m\\x1b[2J"),
        ("switching", "server answered HTTP 101"),
    ],
)
def test_an_import_against_a_garbage_server_ends_with_the_summary_and_the_failed_file(
    kind: str, reason: str, collector: Collector, tmp_path: Path
) -> None:
    # Two batches or so (500 KB each); against "escapes", over 20, each refused differently.
    count, pad = (8000, 1500) if kind == "escapes" else (3000, 150)
    source = write_jsonl(tmp_path / "events.jsonl", track_lines(count, pad=pad))
    failed = tmp_path / "failed.jsonl"

    with hostile(kind) as (url, taken):
        started = time.monotonic()
        result = run(
            "import", str(source), "--failed-file", str(failed),
            env={"ANALYTICS_WRITE_KEY": WRITE_KEY, "ANALYTICS_HOST": url, **FAST_FAILURE},
        )  # fmt: skip
        elapsed = time.monotonic() - started
        accepted = taken()

    assert result.returncode == 1, result.stderr[-3000:]
    assert elapsed < 40
    assert_clean(result.stdout + result.stderr)
    written = [json.loads(line) for line in failed.read_text().splitlines()]
    failed_ids = [m["messageId"] for m in written]
    summary, kept = result.stdout.splitlines()
    assert summary.startswith(f"sent {len(accepted)}, failed {len(failed_ids)} in "), summary
    assert kept == (
        f"{len(failed_ids)} undelivered messages written to {failed}; "
        f"resend them with: lambda-analytics import {failed}"
    )
    assert len(accepted) + len(failed_ids) == count
    assert not set(accepted) & set(failed_ids)
    reasons = [line for line in result.stderr.splitlines() if line.startswith("not delivered (")]
    assert reasons and reason in reasons[0], reasons
    if kind == "escapes":  # a distinct body per batch: 20 reasons, then the rest counted
        assert len(reasons) == cli.MAX_REPORTED_REASONS + 1
        assert reasons[-1].endswith("messages): other reasons")
    counts = [re.match(r"not delivered \((\d+) messages\)", line) for line in reasons]
    assert sum(int(found[1]) for found in counts if found) == len(failed_ids)

    # The failed file re-sends cleanly to a good collector; the same file ends up empty.
    resent = run("import", str(failed), "--failed-file", str(failed), env=to(collector))
    assert resent.returncode == 0, resent.stderr[-3000:]
    assert resent.stdout.startswith(f"sent {len(failed_ids)}, failed 0 in ")
    assert sorted(collector.message_ids()) == sorted(failed_ids)  # the same messages, once
    assert {m["userId"] for m in collector.messages} | {f"u{n}" for n in range(len(accepted))} == {
        f"u{n}" for n in range(count)
    }
    assert failed.read_text() == ""


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE and EFBIG as on Linux")
def test_a_failed_file_that_cannot_be_written_is_said_and_not_left_half(
    collector: Collector, tmp_path: Path
) -> None:
    """The disk fills (here: a file size limit) while undelivered messages are written."""
    source = write_jsonl(tmp_path / "events.jsonl", track_lines(500, pad=150))
    failed = tmp_path / "failed.jsonl"
    collector.fail_next(400)
    limited = (
        "import os, resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'lambda_analytics', *sys.argv[1:]])\n"
    )
    result = run(
        "import", str(source), "--failed-file", str(failed), "--quiet",
        env=to(collector), command=(sys.executable, "-c", limited),
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stdout.startswith("sent 0, failed 500 in ")
    assert result.stderr.splitlines() == [
        "not delivered (500 messages): server answered HTTP 400",
        f"lambda-analytics: error: cannot write {failed}: File too large: "
        "500 undelivered messages not kept",
    ]
    assert sorted(os.listdir(tmp_path)) == ["events.jsonl"]  # no half file, no temporary file


# -- the collector subcommand -----------------------------------------------------------------


def peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert found, status
    return int(found[1])


def exchange(sock: socket.socket, request: bytes) -> bytes:
    """Send one request on ``sock``; its response's status line and headers (body read)."""
    sock.sendall(request)
    answer = b""
    while b"\r\n\r\n" not in answer:
        data = sock.recv(65536)
        assert data, f"connection closed after {answer!r}"
        answer += data
    head, _, body = answer.partition(b"\r\n\r\n")
    found = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    length = int(found[1]) if found else 0
    while len(body) < length:
        data = sock.recv(65536)
        assert data, "connection closed in the body"
        body += data
    return head


@pytest.mark.skipif(sys.platform != "linux", reason="reads the peak RSS from /proc")
def test_the_collector_subcommand_escapes_what_it_prints_and_keeps_no_refused_bodies() -> None:
    with collector_command(text=False) as (server, url):
        port = int(url.rsplit(":", 1)[1])
        hijack = "\x1b]0;owned\x07\x1b[2J\r"
        message = {"type": "track", "userId": "u1", "event": hijack + "Live", "messageId": "m1",
                   "timestamp": "2024-05-01T12:00:00.000Z"}  # fmt: skip
        body = json.dumps({"batch": [message], "sentAt": "2024-05-01T12:00:00.000Z"}).encode()
        refused = b"\x1b[2J" + b"{" * 1_000_000  # 1 MB refused, 150 times
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            answers = [
                exchange(sock, b"POST /v1/batch HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body)),
                exchange(sock, b"POST /x\x1b]0;owned\x07\x1b[2J\r HTTP/1.1\r\n"
                         b"Content-Length: 2\r\n\r\n{}"),
            ]  # fmt: skip
            assert [a.split(b" ", 2)[1] for a in answers] == [b"200", b"404"]
            before = peak_rss_kib(server.pid)
            request = b"POST /v1/batch HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (
                len(refused),
                refused,
            )
            for _ in range(150):
                assert exchange(sock, request).startswith(b"HTTP/1.1 400 ")
            growth = peak_rss_kib(server.pid) - before
        server.send_signal(signal.SIGINT)
        output, errors = server.communicate(timeout=10)
    assert server.returncode == 0, errors
    text = output.decode()
    assert_clean(text, longest=1000)  # every line, every byte of it escaped
    assert "\\x1b]0;owned\\x07\\x1b[2J\\r" in text  # shown, not obeyed
    assert "1 messages in 1 accepted batches, 151 rejected requests" in text
    assert growth < 50 * 1024, f"peak RSS grew {growth} KiB for 150 MB of refused bodies"
