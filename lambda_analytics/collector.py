"""A local, validating stand-in for the Segment tracking API (``POST /v1/batch``).

Tests start it as a real loopback server and point the SDK's host at ``collector.url``::

    with Collector("my-write-key") as collector:
        ...  # send events with host=collector.url
        assert collector.wait_for_messages(1)
        assert collector.messages[0]["event"] == "Signed Up"

Developers run ``python -m lambda_analytics.collector [--port 8765] [--write-key KEY]`` to see
what their code sends; benchmarks pass ``keep_requests=False`` so only counters are kept.
Validation is strict on purpose (auth, size limits, required fields): one bad message rejects
the whole batch with a 400, so SDK bugs fail loudly. ``fail_next`` scripts 429/5xx answers.
Standard library only, and it imports nothing else from the package, so it judges the SDK
from the outside. It only ever binds to 127.0.0.1.

It survives what a broken or hostile client sends: bodies are capped on the wire
(``MAX_BODY_BYTES``, chunked or not) and gzip is inflated in bounded steps that stop at the
batch limit; framing it cannot trust (a bad ``Content-Length`` or chunk size, both
``Content-Length`` and ``Transfer-Encoding``) is answered 400 and the connection closed; every
connection has an idle timeout and every request a deadline; connections beyond
``max_connections`` are answered 503; control characters are escaped in everything printed.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import dataclasses
import hmac
import io
import json
import os
import re
import socket
import socketserver
import sys
import threading
import time
import traceback
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TextIO

__all__ = ["Collector", "ReceivedRequest", "main"]

MAX_BATCH_BYTES = 500_000
MAX_BATCH_MESSAGES = 2_500
MAX_MESSAGE_BYTES = 32_000
MAX_MESSAGE_ID_LENGTH = 100  # exclusive: a messageId must be shorter than this
MAX_BODY_BYTES = 1_048_576  # on the wire, before decompression; beyond it: 413 and hang up
MESSAGE_TYPES = ("identify", "track", "page", "screen", "group", "alias")
_REQUIRED = {"track": ("event",), "group": ("groupId",), "alias": ("userId", "previousId")}
_ECHO_FIELDS = ("event", "name", "userId", "anonymousId", "groupId", "previousId", "messageId")
_JOIN_TIMEOUT = 2.0
_MAX_CHUNK_LINE = 4096  # a chunk-size line (with extensions) or a trailer line
_MAX_TRAILER_LINES = 64
_LINGER_SECONDS, _LINGER_IDLE, _LINGER_BYTES = 2.0, 0.5, 16 * 1024 * 1024
_SAMPLE_BODY_BYTES, _SAMPLE_TEXT, _SAMPLE_HEADERS = 1024, 256, 32
_DIGITS = re.compile(r"[0-9]+")
_HEX = re.compile(rb"[0-9A-Fa-f]+")


@dataclass(frozen=True)
class ReceivedRequest:
    """One HTTP request as the collector received and answered it."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes  # raw, still gzipped if it was sent gzipped
    payload: dict[str, Any] | None  # parsed JSON envelope, None if it could not be parsed
    status: int  # the status the collector answered with
    received_at: float  # time.time()
    connection_id: int  # 1 for the first TCP connection accepted, 2 for the next, ...


class _Refused(Exception):
    """A request answered with ``status`` before (or instead of) reading its whole body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _escape(text: str) -> str:
    """``text`` safe for a terminal: control and other non-printing characters become escapes."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


class _Conn:
    def __init__(self, conn_id: int, sock: socket.socket, thread: threading.Thread) -> None:
        self.id, self.sock, self.thread = conn_id, sock, thread
        self.busy = False  # True from the request line until the response is written
        # Held while a response is written and busy cleared: once a client has read a whole
        # response, close_idle_connections() is sure to see the connection as idle.
        self.lock = threading.Lock()

    def close(self) -> None:
        with contextlib.suppress(OSError):  # already closed
            self.sock.shutdown(socket.SHUT_RDWR)  # unlike close(), wakes a thread in recv()

    def close_if_idle(self) -> bool:
        if not self.lock.acquire(timeout=_JOIN_TIMEOUT):
            return False  # stuck writing a response to a client that does not read: busy
        try:
            if not self.busy:
                self.close()
            return not self.busy
        finally:
            self.lock.release()


class _Reader(io.RawIOBase):
    """A connection's input: each read waits at most ``idle`` seconds, and once a request's
    first byte arrived, all of it (request line, headers, body) must arrive within ``limit``."""

    def __init__(self, sock: socket.socket, idle: float | None, limit: float | None) -> None:
        super().__init__()
        self._sock, self._idle, self._limit = sock, idle, limit
        self.deadline: float | None = None  # cleared by the handler after each request

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        timeout = self._idle
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("request not received in time")
            timeout = left if timeout is None else min(timeout, left)
        self._sock.settimeout(timeout)
        count = self._sock.recv_into(buffer)
        if count and self.deadline is None and self._limit is not None:
            self.deadline = time.monotonic() + self._limit
        return count


def _error(message: str) -> bytes:
    return json.dumps({"success": False, "error": message}).encode()


def _decode(body: bytes, encoding: str | None) -> bytes:
    """The body without its Content-Encoding; ValueError if it is unsupported, corrupt, or
    inflates beyond ``MAX_BATCH_BYTES`` (decompression stops there: a gzip bomb costs nothing)."""
    coding = (encoding or "identity").strip().lower()
    if coding == "identity":
        return body
    if coding != "gzip":
        raise ValueError(f"unsupported Content-Encoding: {_clip(encoding or '', 100)}")
    data, out = body, bytearray()
    try:
        while data:  # one gzip member per turn, as gzip.decompress reads concatenated members
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out += inflater.decompress(data, MAX_BATCH_BYTES + 1 - len(out))
            if len(out) > MAX_BATCH_BYTES:
                raise ValueError(f"batch too large (over {MAX_BATCH_BYTES} bytes decompressed)")
            if not inflater.eof:
                raise ValueError("invalid gzip body: truncated")
            data = inflater.unused_data
    except zlib.error as exc:
        raise ValueError(f"invalid gzip body: {exc}") from None
    return bytes(out)


def _body_length(headers: Message, version: str) -> int | None:
    """The body's Content-Length, None if it is chunked; _Refused if the framing is not to be
    trusted (RFC 9112 section 6) or the body is larger than ``MAX_BODY_BYTES``."""
    fields = headers.get_all("Transfer-Encoding", [])
    codings = [c.strip().lower() for field in fields for c in str(field).split(",")]
    fields = headers.get_all("Content-Length", [])
    lengths = [v.strip() for field in fields for v in str(field).split(",")]
    if codings:
        shown = _clip(", ".join(codings), 100)
        if lengths:
            raise _Refused(400, "Content-Length and Transfer-Encoding together")
        if codings[-1] != "chunked" or version < "HTTP/1.1":
            raise _Refused(400, f"cannot frame a body with Transfer-Encoding: {shown}")
        if len(codings) > 1:
            raise _Refused(501, f"unsupported Transfer-Encoding: {shown}")
        return None
    if not lengths:
        return 0
    numbers = {value.lstrip("0") or "0" for value in lengths}  # repeated, they must agree
    if len(numbers) > 1 or not all(map(_DIGITS.fullmatch, lengths)):  # not int(): "+5", "5_0"
        raise _Refused(400, f"invalid Content-Length: {_clip(', '.join(lengths), 100)}")
    [number] = numbers
    if len(number) > len(str(MAX_BODY_BYTES)) or int(number) > MAX_BODY_BYTES:
        raise _Refused(413, f"body too large ({_clip(number, 30)} bytes > {MAX_BODY_BYTES})")
    return int(number)


def _check_message(index: int, message: Any) -> str | None:
    where = f"batch[{index}]"
    if not isinstance(message, dict):
        return f"{where}: message must be a JSON object"
    kind = message.get("type")
    if kind not in MESSAGE_TYPES:
        return f"{where}.type: must be one of {', '.join(MESSAGE_TYPES)}, got {kind!r}"
    message_id = message.get("messageId")
    if not isinstance(message_id, str) or not 0 < len(message_id) < MAX_MESSAGE_ID_LENGTH:
        return f"{where}.messageId: must be a non-empty string under {MAX_MESSAGE_ID_LENGTH} chars"
    if not isinstance(message.get("timestamp"), str):
        return f"{where}.timestamp: required (ISO-8601 string)"
    for key in ("userId", "anonymousId"):
        if message.get(key) is not None and not isinstance(message[key], str):
            return f"{where}.{key}: must be a string"
    if not message.get("userId") and not message.get("anonymousId"):
        return f"{where}: userId or anonymousId is required"
    for key in _REQUIRED.get(kind, ()):
        if not isinstance(message.get(key), str) or not message[key]:
            return f"{where}.{key}: required for {kind} messages (non-empty string)"
    # surrogatepass: a lone surrogate must not crash the server; valid text sizes are unchanged
    compact = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    size = len(compact.encode("utf-8", "surrogatepass"))
    if size > MAX_MESSAGE_BYTES:
        return f"{where}: message {message_id!r} too large ({size} bytes > {MAX_MESSAGE_BYTES})"
    return None


def _check_envelope(payload: dict[str, Any]) -> str | None:
    batch = payload.get("batch")
    if not isinstance(batch, list) or not batch:
        return "batch: required (non-empty array)"
    if len(batch) > MAX_BATCH_MESSAGES:
        return f"too many messages ({len(batch)} > {MAX_BATCH_MESSAGES})"
    if not isinstance(payload.get("sentAt"), str):
        return "sentAt: required (ISO-8601 string)"
    return next(filter(None, map(_check_message, range(len(batch)), batch)), None)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so clients can reuse pooled connections
    disable_nagle_algorithm = True  # headers and body are two writes; avoid 40 ms ACK stalls
    server: _Server

    def setup(self) -> None:
        super().setup()
        collector = self.server.collector
        self._conn = collector._conns[self.request]
        self._write_timeout = collector._idle_timeout
        self._reader = _Reader(self.connection, collector._idle_timeout, collector._request_timeout)
        self.rfile.close()  # the socket file setup() made: replaced by one that keeps deadlines
        self.rfile = io.BufferedReader(self._reader)
        self._linger = False  # set when we answer without having read the whole request

    def parse_request(self) -> bool:
        with self._conn.lock:
            self._conn.busy = True
        return super().parse_request()

    def handle_one_request(self) -> None:
        self.command, self.path, self.requestline, self.headers = "", "", "", Message()
        try:
            super().handle_one_request()
        finally:
            self._conn.busy = False
            self._reader.deadline = None

    def handle_expect_100(self) -> bool:
        try:
            _body_length(self.headers, self.request_version)
        except _Refused:
            return True  # no 100 Continue: _serve answers with the refusal, body unread
        return super().handle_expect_100()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (bad request line, too many headers...), as JSON."""
        self._refuse(code, message or self.responses.get(code, ("Error", ""))[0])

    def log_message(self, format: str, *args: Any) -> None:
        pass  # per-request stderr lines would swamp test output and slow benchmarks

    def finish(self) -> None:
        super().finish()
        if self._linger:
            self._drain()

    def _drain(self) -> None:
        """Read and drop what the client still sends for a while, so that it gets to read our
        answer instead of a connection reset (closing with unread input sends a TCP RST)."""
        sock, buffer = self.connection, bytearray(65536)
        budget, deadline = _LINGER_BYTES, time.monotonic() + _LINGER_SECONDS
        with contextlib.suppress(OSError):  # including TimeoutError: the client went quiet
            sock.shutdown(socket.SHUT_WR)
            while budget > 0 and (left := deadline - time.monotonic()) > 0:
                sock.settimeout(min(left, _LINGER_IDLE))
                count = sock.recv_into(buffer)
                if not count:
                    break
                budget -= count

    def _read_body(self) -> bytes | None:
        """The whole body (so the connection stays usable); None if the peer hung up mid-way."""
        length = _body_length(self.headers, self.request_version)
        if length is None:
            return self._read_chunked()
        body = self.rfile.read(length) if length else b""
        return body if len(body) == length else None

    def _read_chunked(self) -> bytes | None:
        body = bytearray()  # not a list of chunks: a million 1-byte chunks would cost 50 MB
        while (line := self._line()) is not None:
            size_field = line.split(b";", 1)[0].strip(b" \t")
            if not _HEX.fullmatch(size_field):
                raise _Refused(400, "malformed chunk size")
            size_field = size_field.lstrip(b"0")
            if not size_field:
                return self._read_trailers(body)
            if len(size_field) > 8 or len(body) + int(size_field, 16) > MAX_BODY_BYTES:
                raise _Refused(413, f"chunked body too large (over {MAX_BODY_BYTES} bytes)")
            size = int(size_field, 16)
            chunk = self.rfile.read(size)
            if len(chunk) < size:
                return None
            body += chunk
            end = self._line()
            if end is None:
                return None
            if end:
                raise _Refused(400, "chunk data not followed by CRLF")
        return None

    def _read_trailers(self, body: bytearray) -> bytes | None:
        for _ in range(_MAX_TRAILER_LINES):
            line = self._line()
            if line is None:
                return None
            if not line:
                return bytes(body)
        raise _Refused(400, "too many trailer lines")

    def _line(self) -> bytes | None:
        """One line of chunked framing without its line end; None at end of input."""
        line = self.rfile.readline(_MAX_CHUNK_LINE + 1)
        if not line.endswith(b"\n"):
            if len(line) > _MAX_CHUNK_LINE:
                raise _Refused(400, "chunk-size or trailer line too long")
            return None
        return line[:-2] if line.endswith(b"\r\n") else line[:-1]

    def _serve(self) -> None:
        try:
            body = self._read_body()
        except _Refused as refused:
            self._refuse(refused.status, refused.message)
            return
        except TimeoutError:
            self._refuse(408, "request body not received in time", unread=False)
            return
        if body is None:  # the peer (or stop()) closed the connection mid-body
            self.close_connection = True
            return
        status, headers, response = self.server.collector._handle(
            self.command, self.path, self.headers, body, self._conn.id
        )
        self._respond(status, headers, response)

    def _refuse(self, status: int, message: str, *, unread: bool = True) -> None:
        """Answer ``status`` and close; counted and recorded like any other rejected request."""
        response = _error(message)
        if self.request_version == "HTTP/0.9":  # http.server's default when it saw no version:
            self.request_version = self.protocol_version  # still answer with a status line
        target = self.path or self.requestline
        self.server.collector._record(
            self.command or "-", target, self.headers, b"", None, status, response, self._conn.id
        )
        self._linger = unread
        self._respond(status, {"Connection": "close"}, response)

    def _respond(self, status: int, headers: dict[str, str], response: bytes) -> None:
        self.connection.settimeout(self._write_timeout)  # the reader may have left it shorter
        with self._conn.lock:
            self.send_response(status)
            for name, value in headers.items():
                if name.lower() != "content-length":  # we frame the body; a wrong one breaks reuse
                    self.send_header(name, value)
            if response and "content-type" not in {name.lower() for name in headers}:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(response)))
            self.end_headers()
            if response and self.command != "HEAD":
                self.wfile.write(response)
            self._conn.busy = False

    do_POST = do_GET = do_HEAD = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _serve


_BUSY_BODY = _error("too many connections; try again")
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
) % (len(_BUSY_BODY), _BUSY_BODY)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # benchmarks open many connections at once

    def __init__(self, collector: Collector, port: int) -> None:
        self.collector = collector
        super().__init__(("127.0.0.1", port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), which can block on DNS for seconds.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    def process_request(self, request: Any, client_address: Any) -> None:
        # Our own thread rather than ThreadingMixIn's, so stop() knows which threads to join.
        collector = self.collector
        with collector._lock:
            busy = len(collector._conns) >= collector._max_connections
            if busy:
                collector.refused_connection_count += 1
            else:
                collector.connection_count += 1
                thread = threading.Thread(
                    target=self.process_request_thread,
                    args=(request, client_address),
                    name=f"collector-conn-{collector.connection_count}",
                    daemon=True,
                )
                collector._conns[request] = _Conn(collector.connection_count, request, thread)
                thread.start()  # under the lock, so no one can try to join it before it started
        if busy:
            self._turn_away(request)

    def _turn_away(self, request: socket.socket) -> None:
        """Answer 503 on the accepting thread, never blocking it: no thread for this one."""
        with contextlib.suppress(OSError):
            request.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                request.recv(65536)  # what already arrived, so that closing sends FIN, not RST
            request.send(_BUSY)
        self.shutdown_request(request)

    def shutdown_request(self, request: Any) -> None:
        with self.collector._lock:
            self.collector._conns.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):  # the peer or stop() closed it
            return
        lines = traceback.format_exc().splitlines()
        text = "\n".join(_escape(_clip(line, 1000)) for line in lines[-40:])
        print(f"collector: error serving a connection:\n{text}", file=sys.stderr, flush=True)


class Collector:
    """A validating Segment-protocol server on 127.0.0.1 that records what it receives.

    Auth is enforced when ``write_key`` or ``token_validator`` is given: Basic auth with the
    write key as user name, or a matching body ``writeKey``, or (with a validator) a Bearer token
    the validator accepts; a Bearer token never falls back to the write key.

    Defences: ``idle_timeout`` closes connections silent that many seconds (None: never);
    ``request_timeout`` bounds the time from a request's first byte to its last (None: never);
    beyond ``max_connections`` open connections a new one is answered 503 and closed.
    ``keep_requests=False`` keeps counters only; ``rejected_sample`` refused requests are kept
    anyway, clipped (``rejected_requests``). The counters are plain attributes updated under a
    lock: ``request_count``, ``accepted_count`` and ``rejected_count`` count requests (200 vs
    anything else), ``message_count`` accepted messages, ``connection_count`` TCP connections
    served and ``refused_connection_count`` those turned away with a 503.
    """

    def __init__(
        self,
        write_key: str | None = None,
        *,
        port: int = 0,
        path: str = "/v1/batch",
        token_validator: Callable[[str], bool] | None = None,
        echo: TextIO | None = None,
        idle_timeout: float | None = 10.0,
        request_timeout: float | None = 30.0,
        max_connections: int = 64,
        keep_requests: bool = True,
        rejected_sample: int = 20,
    ) -> None:
        for timeout in (idle_timeout, request_timeout):
            if timeout is not None and not timeout > 0:
                raise ValueError("idle_timeout and request_timeout must be > 0 or None")
        if max_connections < 1 or rejected_sample < 0:
            raise ValueError("max_connections must be >= 1 and rejected_sample >= 0")
        self._write_key = None if write_key is None else write_key.encode()
        self._port, self._path, self._validator = port, path, token_validator
        self._echo, self._keep = echo, keep_requests
        self._idle_timeout, self._request_timeout = idle_timeout, request_timeout
        self._max_connections = max_connections
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None
        self._conns: dict[socket.socket, _Conn] = {}
        self._faults: deque[list[Any]] = deque()  # [status, remaining, headers, body]
        self._requests: list[ReceivedRequest] = []
        self._rejected: deque[ReceivedRequest] = deque(maxlen=rejected_sample)
        self._messages: list[dict[str, Any]] = []
        self.connection_count = 0  # TCP connections accepted since start; reset() keeps it
        self.refused_connection_count = 0  # answered 503 (max_connections); reset() keeps it
        self.request_count = self.accepted_count = self.rejected_count = self.message_count = 0

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (no path); available once started."""
        if self._url is None:
            raise RuntimeError("Collector has not been started")
        return self._url

    def start(self) -> Collector:
        """Bind and serve in a daemon thread; returns self."""
        if self._server is not None:
            raise RuntimeError("Collector is already running")
        self._server = server = _Server(self, self._port)
        self._url = f"http://127.0.0.1:{server.server_address[1]}"
        # serve_forever notices shutdown() only when its select() times out: poll briskly so stop()
        # (run after every test) returns within ~10 ms; an idle select() costs next to nothing.
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name="collector-accept",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, close every connection and wait for the server threads. Idempotent."""
        with self._lock:
            server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is not None and thread is not None:
            server.shutdown()
            server.server_close()
            thread.join(_JOIN_TIMEOUT)
            self._close_connections(idle_only=False)

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def close_idle_connections(self) -> None:
        """Close, server side, every keep-alive connection that is not inside a request."""
        self._close_connections(idle_only=True)

    def _close_connections(self, idle_only: bool) -> None:
        with self._lock:
            conns = list(self._conns.values())
        if idle_only:
            conns = [conn for conn in conns if conn.close_if_idle()]
        else:
            for conn in conns:
                conn.close()
        deadline = time.monotonic() + _JOIN_TIMEOUT
        for conn in conns:
            if conn.thread is not threading.current_thread():
                conn.thread.join(max(0.0, deadline - time.monotonic()))

    def fail_next(
        self, status: int, times: int = 1, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> None:
        """Answer the next ``times`` POSTs to the batch path with this response instead.

        Scripts queue up FIFO. The body is still read and the request recorded with ``status``;
        its messages do not count as received.
        """
        if not 100 <= status <= 599 or times < 1:
            raise ValueError("status must be 100-599 and times >= 1")
        with self._lock:
            self._faults.append([status, times, dict(headers or {}), body])

    def reset(self) -> None:
        """Forget requests, messages, counters and pending faults (not connections)."""
        with self._lock:
            self._requests.clear()
            self._rejected.clear()
            self._messages.clear()
            self._faults.clear()
            self.request_count = self.accepted_count = self.rejected_count = self.message_count = 0

    @property
    def requests(self) -> list[ReceivedRequest]:
        """A copy of every request received, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def rejected_requests(self) -> list[ReceivedRequest]:
        """The last ``rejected_sample`` requests answered other than 200, oldest first, kept
        even with ``keep_requests=False``: body clipped to 1 KiB, target and headers clipped,
        no payload."""
        with self._lock:
            return list(self._rejected)

    @property
    def messages(self) -> list[dict[str, Any]]:
        """A copy of the messages of every accepted (200) batch, in arrival order."""
        with self._lock:
            return list(self._messages)

    def message_ids(self) -> list[str]:
        """The ``messageId`` of every accepted message, in arrival order."""
        with self._lock:
            return [message["messageId"] for message in self._messages]

    def wait_for_messages(self, n: int, timeout: float = 5.0) -> bool:
        """Block until at least ``n`` messages were accepted; False if ``timeout`` ran out."""
        with self._cond:
            return self._cond.wait_for(lambda: self.message_count >= n, timeout)

    def _handle(
        self, method: str, target: str, headers: Message, body: bytes, conn_id: int
    ) -> tuple[int, dict[str, str], bytes]:
        """Answer one request and record it; runs on the connection's thread."""
        path = target.partition("?")[0]
        payload: dict[str, Any] | None = None
        extra: dict[str, str] = {}
        if path != self._path:
            status, response = 404, _error(f"not found: {path} (collector path is {self._path})")
        elif method != "POST":
            status, response, extra = 405, _error(f"{method} not allowed"), {"Allow": "POST"}
        else:
            with self._lock:
                fault = self._faults[0] if self._faults else None
                if fault is not None and fault[1] == 1:
                    self._faults.popleft()
                elif fault is not None:
                    fault[1] -= 1
            if fault is None:
                status, response, payload = self._check(headers, body)
            else:
                status, _, extra, response = fault
                with contextlib.suppress(ValueError, RecursionError):
                    parsed = json.loads(_decode(body, headers.get("Content-Encoding")))
                    payload = parsed if isinstance(parsed, dict) else None
        self._record(method, target, headers, body, payload, status, response, conn_id)
        return status, extra, response

    def _record(
        self,
        method: str,
        target: str,
        headers: Message,
        body: bytes,
        payload: dict[str, Any] | None,
        status: int,
        response: bytes,
        conn_id: int,
    ) -> None:
        """Count one answered request, keep it (or a clipped sample) and echo it."""
        messages: list[dict[str, Any]] = payload["batch"] if status == 200 and payload else []
        request = sample = None
        sampled = status != 200 and bool(self._rejected.maxlen)
        if self._keep or sampled:
            lowered = {name.lower(): value for name, value in headers.items()}
            request = ReceivedRequest(
                method, target, lowered, body, payload, status, time.time(), conn_id
            )
            sample = _clipped(request) if sampled else None
        with self._cond:
            self.request_count += 1
            if status == 200:
                self.accepted_count += 1
                self.message_count += len(messages)
                self._messages.extend(messages if self._keep else ())
                self._cond.notify_all()
            else:
                self.rejected_count += 1
            if request is not None and self._keep:
                self._requests.append(request)
            if sample is not None:
                self._rejected.append(sample)
            if self._echo is not None:  # under the lock so concurrent lines do not interleave
                self._print(self._echo, f"{method} {target}", status, messages, response)

    def _check(self, headers: Message, body: bytes) -> tuple[int, bytes, dict[str, Any] | None]:
        try:
            data = _decode(body, headers.get("Content-Encoding"))
        except ValueError as exc:
            return 400, _error(str(exc)), None
        if len(data) > MAX_BATCH_BYTES:
            return 400, _error(f"batch too large ({len(data)} bytes > {MAX_BATCH_BYTES})"), None
        try:
            payload = json.loads(data)
        except (ValueError, RecursionError):
            return 400, _error("invalid JSON body"), None
        if not isinstance(payload, dict):
            return 400, _error("body must be a JSON object"), None
        if not self._authorized(headers.get("Authorization", ""), payload):
            return 401, _error("invalid or missing credentials"), payload
        problem = _check_envelope(payload)
        if problem is not None:
            return 400, _error(problem), payload
        return 200, b'{"success": true}', payload

    def _authorized(self, authorization: str, payload: dict[str, Any]) -> bool:
        if self._write_key is None and self._validator is None:
            return True
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "bearer":
            try:
                return self._validator is not None and bool(self._validator(credentials.strip()))
            except Exception:
                return False  # a crashing validator must not take the connection down
        if self._write_key is None:
            return False
        user = b""
        if scheme.lower() == "basic":
            with contextlib.suppress(binascii.Error, ValueError):
                user = base64.b64decode(credentials.strip(), validate=True).partition(b":")[0]
        body_key = payload.get("writeKey")
        body_key = body_key.encode("utf-8", "surrogatepass") if isinstance(body_key, str) else b""
        # Run both constant-time comparisons, so timing does not show which credential matched.
        by_header = hmac.compare_digest(user, self._write_key)
        return hmac.compare_digest(body_key, self._write_key) or by_header

    def _print(
        self, out: TextIO, request: str, status: int, messages: list[dict[str, Any]], body: bytes
    ) -> None:
        # Everything printed may come from the client: clipped, and escaped for the terminal.
        if status != 200:
            answer = body[:300].decode(errors="replace")
            print(_escape(f"[rejected {status}] {_clip(request, 300)} {answer}"), file=out)
        first = self.message_count - len(messages) + 1
        for count, message in enumerate(messages, first):
            fields = " ".join(
                f"{k}={_clip(repr(message[k]), 200)}" for k in _ECHO_FIELDS if k in message
            )
            print(_escape(f"[{count}] {message['type']} {fields}"), file=out)
        out.flush()


def _clipped(request: ReceivedRequest) -> ReceivedRequest:
    """``request`` small enough to keep a few of, whatever the client sent."""
    headers = {
        _clip(name, _SAMPLE_TEXT): _clip(str(value), _SAMPLE_TEXT)
        for name, value in list(request.headers.items())[:_SAMPLE_HEADERS]
    }
    return dataclasses.replace(
        request,
        path=_clip(request.path, _SAMPLE_TEXT),
        headers=headers,
        body=request.body[:_SAMPLE_BODY_BYTES],
        payload=None,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m lambda_analytics.collector``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m lambda_analytics.collector",
        description="Receive Segment-protocol batches on 127.0.0.1 and print what arrives.",
    )
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument(
        "--write-key",
        default=os.environ.get("ANALYTICS_WRITE_KEY"),
        help="require this write key (default: $ANALYTICS_WRITE_KEY; unset accepts any)",
    )
    parser.add_argument("--path", default="/v1/batch", help="batch endpoint path")
    parser.add_argument("--quiet", action="store_true", help="do not print each message")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument(
        "--idle-timeout", type=float, default=10.0, help="close connections idle this long (s)"
    )
    parser.add_argument(
        "--max-connections", type=int, default=64, help="answer 503 beyond this many connections"
    )
    args = parser.parse_args(argv)
    echo = None if args.quiet else sys.stdout
    try:
        # Counters only (and a clipped sample of refusals): it may run for days.
        collector = Collector(
            args.write_key or None,
            port=args.port,
            path=args.path,
            echo=echo,
            idle_timeout=args.idle_timeout,
            max_connections=args.max_connections,
            keep_requests=False,
        )
    except ValueError as exc:
        parser.error(str(exc))
    try:
        collector.start()
    except OSError as exc:
        print(f"cannot listen on 127.0.0.1:{args.port}: {exc}", file=sys.stderr)
        return 1
    auth = "write key required" if args.write_key else "no auth"
    until = "Ctrl-C" if args.duration is None else f"{args.duration:g} s or Ctrl-C"
    print(f"Collecting at {collector.url}{_escape(args.path)} ({auth}); use host {collector.url}")
    print(f"Running until {until}.", flush=True)
    _stop_on_signals()
    try:
        while args.duration is None:
            time.sleep(3600)  # sleep, unlike Event.wait, is interruptible on every platform
        time.sleep(max(0.0, args.duration))
    except KeyboardInterrupt:
        pass
    finally:
        collector.stop()
    print(
        f"{collector.message_count} messages in {collector.accepted_count} accepted batches, "
        f"{collector.rejected_count} rejected requests, {collector.connection_count} connections"
        f" ({collector.refused_connection_count} turned away: too many at once)"
    )
    return 0


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM end the run with its summary.

    A process started in the background by a non-interactive shell inherits SIGINT ignored,
    and Python then never raises KeyboardInterrupt: "Running until Ctrl-C" would never end.
    """
    import signal

    def interrupt(number: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


if __name__ == "__main__":
    raise SystemExit(main())
