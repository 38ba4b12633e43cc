"""The collector against broken and hostile clients, spoken to with raw sockets on 127.0.0.1.

Each defence is checked from the outside: malformed framing gets an answer (then the server hangs
up and keeps serving others), idle, stalled and trickling connections are closed, connections
beyond the bound are answered 503, and nothing the client sends reaches the terminal raw.
Memory is measured where it cannot be confused with the test's own: in a subprocess running the
command line (``ru_maxrss`` is its peak RSS, in KiB on Linux), before and after the attack.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
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
import zlib
from collections.abc import Callable, Iterable, Iterator
from email.message import Message
from typing import Any

import pytest

from lambda_analytics.collector import MAX_BODY_BYTES, Collector

WRITE_KEY = "hostile-test-key"
GROWTH_LIMIT_KIB = 50 * 1024  # peak RSS may grow this much at most under any one attack
BOMB_MIB = 200  # ~200 KB of gzip; before bounded inflation it took the collector to 423 MiB

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is KiB on Linux")


def batch_body(**extra: Any) -> bytes:
    message = {
        "type": "track",
        "event": "Signed Up",
        "userId": "user-1",
        "messageId": "m-1",
        "timestamp": "2024-05-01T11:59:59.000Z",
        **extra,
    }
    return json.dumps({"batch": [message], "sentAt": "2024-05-01T12:00:00.000Z"}).encode()


def head(*fields: str, target: str = "/v1/batch", version: str = "HTTP/1.1") -> bytes:
    """A POST's request line and headers (with auth), ending in the blank line."""
    auth = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    lines = [f"POST {target} {version}", "Host: 127.0.0.1", f"Authorization: Basic {auth}"]
    return "\r\n".join([*lines, *fields, "", ""]).encode("latin-1")


def valid_request() -> bytes:
    body = batch_body()
    return head(f"Content-Length: {len(body)}") + body


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data``, then read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_to_close(sock)


def read_to_close(sock: socket.socket) -> bytes:
    received = b""
    with contextlib.suppress(ConnectionResetError):  # after a whole answer, a reset is fine
        while chunk := sock.recv(65536):
            received += chunk
    return received


def status_of(answer: bytes) -> int:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert match, answer[:200]
    return int(match.group(1))


def error_of(answer: bytes) -> str:
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert body["success"] is False
    return str(body["error"])


def answer_once(port: int) -> int:
    """The status of one valid batch on a connection of its own."""
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as sock:
        sock.sendall(valid_request())
        received = b""
        while b'"success"' not in received:
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
        return status_of(received)


def conn_threads() -> int:
    return sum(t.name.startswith("collector-conn") for t in threading.enumerate())


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture
def collector() -> Iterator[Collector]:
    with Collector(WRITE_KEY) as server:
        yield server


# -- framing -----------------------------------------------------------------------------------

MALFORMED = {
    "negative length": (head("Content-Length: -5"), 400, "invalid Content-Length"),
    "non-numeric length": (head("Content-Length: abc"), 400, "invalid Content-Length"),
    "length with a sign": (head("Content-Length: +5") + b"hello", 400, "invalid Content-Length"),
    "length int() would take": (head("Content-Length: 1_0"), 400, "invalid Content-Length"),
    "empty length": (head("Content-Length: "), 400, "invalid Content-Length"),
    "two lengths that differ": (
        head("Content-Length: 5", "Content-Length: 6") + b"hello!",
        400,
        "invalid Content-Length",
    ),
    "a list of lengths": (head("Content-Length: 5, 6") + b"hello!", 400, "invalid Content-Length"),
    "length and chunked": (
        head("Content-Length: 5", "Transfer-Encoding: chunked") + b"0\r\n\r\n",
        400,
        "Content-Length and Transfer-Encoding",
    ),
    "coding not ending in chunked": (head("Transfer-Encoding: gzip"), 400, "Transfer-Encoding"),
    "unknown coding before chunked": (
        head("Transfer-Encoding: gzip, chunked"),
        501,
        "unsupported Transfer-Encoding",
    ),
    "chunked in HTTP/1.0": (
        head("Transfer-Encoding: chunked", version="HTTP/1.0") + b"0\r\n\r\n",
        400,
        "Transfer-Encoding",
    ),
    "chunk size not hex": (head("Transfer-Encoding: chunked") + b"zz\r\n", 400, "chunk size"),
    "negative chunk size": (head("Transfer-Encoding: chunked") + b"-1\r\n", 400, "chunk size"),
    "empty chunk size": (head("Transfer-Encoding: chunked") + b"\r\n", 400, "chunk size"),
    "chunk without CRLF": (
        head("Transfer-Encoding: chunked") + b"5\r\nhelloXX\r\n0\r\n\r\n",
        400,
        "CRLF",
    ),
    "endless chunk-size line": (
        head("Transfer-Encoding: chunked") + b"1" + b"0" * 10_000 + b"\r\n",
        400,
        "too long",
    ),
    "endless trailers": (
        head("Transfer-Encoding: chunked") + b"0\r\n" + b"X-T: 1\r\n" * 100 + b"\r\n",
        400,
        "trailer",
    ),
    "chunk size of 2^60": (
        head("Transfer-Encoding: chunked") + b"1000000000000000\r\nabc",
        413,
        "too large",
    ),
    "length over the cap": (head(f"Content-Length: {MAX_BODY_BYTES + 1}"), 413, "too large"),
    "length of 30 digits": (head("Content-Length: " + "9" * 30), 413, "too large"),
    "bad HTTP version": (head(version="HTTP/1.1\x1b[2J"), 400, "version"),
    "header line too long": (head("X-Big: " + "a" * 70_000), 431, "Line too long"),
    "too many headers": (head(*[f"X-{n}: n" for n in range(150)]), 431, "headers"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_malformed_framing_is_answered_then_the_connection_closed(
    collector: Collector, case: str
) -> None:
    request, status, fragment = MALFORMED[case]
    answer = exchange(port_of(collector.url), request)  # returns once the server hung up
    assert status_of(answer) == status
    assert b"\r\nConnection: close\r\n" in answer
    assert fragment in error_of(answer)
    assert (collector.rejected_count, collector.request_count) == (1, 1)
    assert collector.requests[0].status == status
    assert answer_once(port_of(collector.url)) == 200  # and the collector serves on
    assert collector.messages and collector.accepted_count == 1


def test_expect_100_continue_is_not_granted_to_a_body_over_the_cap(collector: Collector) -> None:
    port = port_of(collector.url)
    big = head(f"Content-Length: {MAX_BODY_BYTES * 4}", "Expect: 100-continue")
    answer = exchange(port, big)
    assert status_of(answer) == 413  # at once, and without a "100 Continue" first
    body = batch_body()
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as sock:
        sock.sendall(head(f"Content-Length: {len(body)}", "Expect: 100-continue"))
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue\r\n")
        sock.sendall(body)
        assert status_of(sock.recv(65536)) == 200


def test_well_formed_chunked_bodies_still_work(collector: Collector) -> None:
    body = batch_body()
    chunked = b"".join(
        b"%x;ext=1\r\n%s\r\n" % (len(part), part) for part in (body[:7], body[7:40], body[40:])
    )
    request = head("Transfer-Encoding: chunked") + chunked + b"0\r\nX-Trailer: t\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port_of(collector.url)), timeout=5.0) as sock:
        sock.sendall(request * 2)  # pipelined: the framing must end exactly where the body ends
        received = b""
        while received.count(b'"success": true') < 2:
            received += sock.recv(65536)
    assert [r.status for r in collector.requests] == [200, 200]
    assert collector.requests[0].body == body


def test_a_stalled_body_gets_408() -> None:
    with Collector(WRITE_KEY, idle_timeout=0.3) as server:
        started = time.monotonic()
        answer = exchange(port_of(server.url), head("Content-Length: 100") + b'{"batch": ')
        assert 0.2 < time.monotonic() - started < 3.0
    assert status_of(answer) == 408


# -- gzip ----------------------------------------------------------------------------------------


def post(collector: Collector, body: bytes, *fields: str) -> bytes:
    request = head(f"Content-Length: {len(body)}", "Connection: close", *fields) + body
    return exchange(port_of(collector.url), request)


def test_gzip_keeps_the_semantics_of_gzip_decompress(collector: Collector) -> None:
    body = batch_body()
    members = gzip.compress(body[:20]) + gzip.compress(body[20:])
    assert status_of(post(collector, members, "Content-Encoding: gzip")) == 200
    assert collector.requests[0].payload == json.loads(body)
    for bad, fragment in [
        (gzip.compress(body)[:-5], "invalid gzip body"),
        (gzip.compress(body) + b"garbage", "invalid gzip body"),
        (zlib.compress(body), "invalid gzip body"),
    ]:
        answer = post(collector, bad, "Content-Encoding: gzip")
        assert status_of(answer) == 400
        assert fragment in error_of(answer)


def test_a_gzip_body_inflating_past_the_batch_limit_is_cut_short(collector: Collector) -> None:
    data = batch_body(properties={"pad": "x" * 600_000})
    answer = post(collector, gzip.compress(data), "Content-Encoding: gzip")
    assert status_of(answer) == 400
    assert "batch too large" in error_of(answer)


# -- memory, measured in a subprocess running the command line ------------------------------------

SERVER = """
import resource, sys, threading
from lambda_analytics.collector import main
def report():
    for _ in sys.stdin:
        print("rss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
threading.Thread(target=report, daemon=True).start()
sys.exit(main(sys.argv[1:]))
"""


class Served:
    """``python -m lambda_analytics.collector`` in a subprocess that reports its peak RSS."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        assert process.stdout is not None and process.stdin is not None
        self.stdout, self.stdin = process.stdout, process.stdin
        banner = self.stdout.readline()  # Collecting at http://127.0.0.1:PORT/v1/batch ...
        self.port = port_of(banner.split()[2].removesuffix("/v1/batch"))
        self.stdout.readline()  # Running until ...

    def peak_rss_kib(self) -> int:
        self.stdin.write("\n")
        self.stdin.flush()
        while not (line := self.stdout.readline()).startswith("rss "):
            assert line, "the collector exited"
        return int(line.split()[1])


@pytest.fixture
def served() -> Iterator[Served]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANALYTICS_")}
    args = ["--port", "0", "--quiet", "--write-key", WRITE_KEY, "--idle-timeout", "5"]
    with subprocess.Popen(
        [sys.executable, "-c", SERVER, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**env, "PYTHONUNBUFFERED": "1"},
        text=True,
    ) as process:
        try:
            server = Served(process)
            assert answer_once(server.port) == 200  # warm: threads, json, the first request
            yield server
        finally:
            process.send_signal(signal.SIGINT)
            output, errors = process.communicate(timeout=10)
        assert process.returncode == 0, errors
        assert "Traceback" not in errors, errors
        assert "1 messages in 1 accepted batches" in output


def stream(port: int, first: bytes, rest: Iterable[bytes]) -> bytes:
    """Send ``first`` and then ``rest`` from another thread until the server stops reading;
    return what the server answered before hanging up."""
    with socket.create_connection(("127.0.0.1", port), timeout=10.0) as sock:
        sock.sendall(first)

        def send() -> None:
            with contextlib.suppress(OSError):  # the server answered and hung up: expected
                for piece in rest:
                    sock.sendall(piece)

        sender = threading.Thread(target=send)
        sender.start()
        try:
            return read_to_close(sock)
        finally:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sender.join(10.0)


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1 << 20)
    return b"".join(deflate.compress(block) for _ in range(BOMB_MIB)) + deflate.flush()


def test_a_gzip_bomb_costs_next_to_no_memory(served: Served, gzip_bomb: bytes) -> None:
    assert len(gzip_bomb) < 250_000
    before = served.peak_rss_kib()
    answer = exchange(
        served.port,
        head(f"Content-Length: {len(gzip_bomb)}", "Content-Encoding: gzip", "Connection: close")
        + gzip_bomb,
    )
    growth = served.peak_rss_kib() - before
    assert status_of(answer) == 400
    assert "batch too large" in error_of(answer)
    assert growth < GROWTH_LIMIT_KIB, f"peak RSS grew {growth} KiB"


def test_a_bomb_of_many_gzip_members_costs_next_to_no_memory(served: Served) -> None:
    member = gzip.compress(bytes(20 << 20), 9)
    bomb = member * 10
    before = served.peak_rss_kib()
    answer = exchange(
        served.port,
        head(f"Content-Length: {len(bomb)}", "Content-Encoding: gzip", "Connection: close") + bomb,
    )
    growth = served.peak_rss_kib() - before
    assert status_of(answer) == 400
    assert growth < GROWTH_LIMIT_KIB, f"peak RSS grew {growth} KiB"


def test_a_96_mb_chunked_body_is_cut_off_at_the_cap(served: Served) -> None:
    chunk = b"10000\r\n" + b"a" * 0x10000 + b"\r\n"
    pieces = [chunk] * (96 * 1024 * 1024 // 0x10000)
    before = served.peak_rss_kib()
    answer = stream(served.port, head("Transfer-Encoding: chunked"), [*pieces, b"0\r\n\r\n"])
    growth = served.peak_rss_kib() - before
    assert status_of(answer) == 413
    assert growth < GROWTH_LIMIT_KIB, f"peak RSS grew {growth} KiB"


def test_a_chunk_size_of_2_to_the_60_is_413_not_a_memory_error(served: Served) -> None:
    before = served.peak_rss_kib()
    first = head("Transfer-Encoding: chunked") + b"%x\r\n" % 2**60
    answer = stream(served.port, first, [b"a" * 65536] * 200)
    growth = served.peak_rss_kib() - before
    assert status_of(answer) == 413
    assert growth < GROWTH_LIMIT_KIB, f"peak RSS grew {growth} KiB"  # stderr checked by fixture


def test_a_huge_content_length_is_refused_before_reading(served: Served) -> None:
    before = served.peak_rss_kib()
    answer = stream(served.port, head(f"Content-Length: {2**40}"), [b"a" * 65536] * 800)
    growth = served.peak_rss_kib() - before
    assert status_of(answer) == 413
    assert growth < GROWTH_LIMIT_KIB, f"peak RSS grew {growth} KiB"


def test_many_tiny_chunks_cost_no_more_than_the_body(served: Served) -> None:
    count = 200_000  # 5 bytes each: a 1 MB body in 1.4 MB of framing
    before = served.peak_rss_kib()
    framing = b"5\r\naaaaa\r\n" * count + b"0\r\n\r\n"
    answer = stream(served.port, head("Transfer-Encoding: chunked", "Connection: close"), [framing])
    growth = served.peak_rss_kib() - before
    assert status_of(answer) == 400  # read whole and judged: not JSON
    assert growth < GROWTH_LIMIT_KIB, f"peak RSS grew {growth} KiB"


def test_the_command_line_does_not_keep_every_refused_body(served: Served) -> None:
    body = b"x" * 900_000  # refused: too large a batch, yet read whole
    request = head(f"Content-Length: {len(body)}") + body
    before = served.peak_rss_kib()
    with socket.create_connection(("127.0.0.1", served.port), timeout=10.0) as sock:
        for _ in range(100):  # 90 MB refused in all, on one keep-alive connection
            sock.sendall(request)
            received = b""
            while not received.endswith(b"}"):
                received += sock.recv(65536)
            assert status_of(received) == 400
    growth = served.peak_rss_kib() - before
    assert growth < GROWTH_LIMIT_KIB, f"peak RSS grew {growth} KiB"


def test_refused_requests_are_counted_and_sampled_clipped() -> None:
    with Collector(WRITE_KEY, keep_requests=False, rejected_sample=5) as server:
        port = port_of(server.url)
        for n in range(12):
            body = b"x" * 300_000  # not JSON
            fields = (f"Content-Length: {len(body)}", "Connection: close", "X-Long: " + "h" * 5000)
            request = head(*fields, target=f"/v1/batch?n={n}")
            assert status_of(exchange(port, request + body)) == 400
        exchange(port, head("Content-Length: -1"))
        assert answer_once(port) == 200
        assert (server.request_count, server.rejected_count, server.accepted_count) == (14, 13, 1)
        assert server.requests == [] and server.messages == []
        sample = server.rejected_requests
    assert len(sample) == 5
    assert [r.path for r in sample[:4]] == [f"/v1/batch?n={n}" for n in range(8, 12)]
    assert sample[-1].status == 400 and sample[-1].body == b""
    assert all(len(r.body) <= 1024 and r.payload is None for r in sample)
    assert all(len(value) < 300 for r in sample for value in r.headers.values())
    assert sample[0].headers["x-long"].startswith("hhh")


# -- connections ---------------------------------------------------------------------------------


def test_idle_and_half_sent_connections_are_closed() -> None:
    with Collector(WRITE_KEY, idle_timeout=0.3) as server:
        port = port_of(server.url)
        silent = socket.create_connection(("127.0.0.1", port), timeout=5.0)
        partial = socket.create_connection(("127.0.0.1", port), timeout=5.0)
        partial.sendall(b"POST /v1/batch HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        with silent, partial:
            assert read_to_close(silent) == b""
            assert read_to_close(partial) == b""
        assert time.monotonic() - started < 3.0
        wait_until(lambda: conn_threads() == 0)


def test_a_trickled_request_is_cut_off_by_the_request_deadline() -> None:
    with Collector(WRITE_KEY, idle_timeout=1.0, request_timeout=0.5) as server:
        request = valid_request()
        sock = socket.create_connection(("127.0.0.1", port_of(server.url)), timeout=5.0)
        stop = threading.Event()

        def trickle() -> None:  # one byte every 50 ms: never idle, but 12+ s for the request
            with contextlib.suppress(OSError):
                for byte in request:
                    if stop.wait(0.05):
                        return
                    sock.send(bytes([byte]))

        sender = threading.Thread(target=trickle)
        started = time.monotonic()
        sender.start()
        try:
            with sock:
                assert read_to_close(sock) == b""
                assert 0.4 < time.monotonic() - started < 3.0
        finally:
            stop.set()
            sender.join()
        assert server.request_count == 0


def test_connections_beyond_the_bound_are_answered_503() -> None:
    with Collector(WRITE_KEY, idle_timeout=1.0, max_connections=8) as server:
        port = port_of(server.url)
        stalled = [socket.create_connection(("127.0.0.1", port), timeout=5.0) for _ in range(8)]
        wait_until(lambda: server.connection_count == 8)
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", port), timeout=5.0) as extra:
                answer = read_to_close(extra)
            assert status_of(answer) == 503
            assert b"Retry-After: 1\r\n" in answer and b"Connection: close" in answer
        assert server.refused_connection_count == 5
        assert conn_threads() <= 8
        for sock in stalled:  # the idle timeout frees the slots
            with sock:
                assert read_to_close(sock) == b""
        wait_until(lambda: conn_threads() == 0)
        assert answer_once(port) == 200


def test_300_stalled_connections_hold_at_most_64_threads() -> None:
    peak, done = [0], threading.Event()

    def watch() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], conn_threads())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with Collector(WRITE_KEY, idle_timeout=0.5) as server:  # max_connections: the default
            port = port_of(server.url)
            stalled = []
            for _ in range(300):
                sock = socket.socket()
                sock.settimeout(10.0)
                sock.connect(("127.0.0.1", port))
                stalled.append(sock)
            wait_until(
                lambda: server.connection_count + server.refused_connection_count >= 300, 15.0
            )
            for sock in stalled:
                with sock, contextlib.suppress(OSError):
                    read_to_close(sock)
            wait_until(lambda: conn_threads() == 0)
            assert answer_once(port) == 200
    finally:
        done.set()
        watcher.join()
    assert 0 < peak[0] <= 64
    assert server.refused_connection_count > 0


# -- what reaches the terminal --------------------------------------------------------------------

HOSTILE = "\x1b[2J\x1b]0;pwned\x07\x9b31m\x7f\u202e"


def assert_printable(text: str) -> None:
    bad = [c for c in text if c != "\n" and not c.isprintable()]
    assert not bad, bad
    assert "\\x1b" in text


def test_control_characters_are_escaped_in_everything_printed() -> None:
    out = io.StringIO()
    with Collector(WRITE_KEY, echo=out) as server:
        port = port_of(server.url)
        target = "/v1/batch" + HOSTILE.encode().decode("latin-1")
        hostile_target = head("Content-Length: 0", "Connection: close", target="/x" + target)
        assert status_of(exchange(port, hostile_target)) == 404
        body = batch_body()
        coding = f"Content-Encoding: {HOSTILE.encode().decode('latin-1')}"
        assert status_of(post(server, body, coding)) == 400
        assert status_of(exchange(port, head(version="HTTP/1.1" + "\x1b[2J"))) == 400
        assert status_of(post(server, batch_body(event=HOSTILE, name=HOSTILE))) == 200
        server.fail_next(503, body=HOSTILE.encode())
        assert status_of(post(server, body)) == 503
    printed = out.getvalue()
    assert_printable(printed)
    assert printed.count("\n") == 5  # one line each, however many line breaks were sent
    assert "[1] track event='\\x1b[2J" in printed


class CrashingCollector(Collector):
    def _handle(
        self, method: str, target: str, headers: Message, body: bytes, conn_id: int
    ) -> tuple[int, dict[str, str], bytes]:
        raise RuntimeError("collector bug" + HOSTILE)


def test_a_traceback_is_escaped_too(capsys: pytest.CaptureFixture[str]) -> None:
    with CrashingCollector(WRITE_KEY) as server:
        # A bug: no answer. The traceback is printed before the connection is closed.
        assert exchange(port_of(server.url), valid_request()) == b""
    errors = capsys.readouterr().err
    assert "RuntimeError: collector bug\\x1b[2J" in errors
    assert_printable(errors)
