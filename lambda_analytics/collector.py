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
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import gzip
import hmac
import json
import os
import socket
import socketserver
import sys
import threading
import time
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
MESSAGE_TYPES = ("identify", "track", "page", "screen", "group", "alias")
_REQUIRED = {"track": ("event",), "group": ("groupId",), "alias": ("userId", "previousId")}
_ECHO_FIELDS = ("event", "name", "userId", "anonymousId", "groupId", "previousId", "messageId")
_MAX_RAW_BODY = 64 * 1024 * 1024  # beyond this a body is not worth reading, just hang up
_JOIN_TIMEOUT = 2.0


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


def _error(message: str) -> bytes:
    return json.dumps({"success": False, "error": message}).encode()


def _decode(body: bytes, encoding: str | None) -> bytes:
    coding = (encoding or "identity").strip().lower()
    if coding == "gzip":
        try:
            return gzip.decompress(body)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"invalid gzip body: {exc}") from None
    if coding != "identity":
        raise ValueError(f"unsupported Content-Encoding: {encoding}")
    return body


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
        # StreamRequestHandler applies self.timeout to the socket: that is the idle timeout.
        self.timeout = self.server.collector._idle_timeout  # type: ignore[misc]
        super().setup()
        self._conn = self.server.collector._conns[self.request]

    def parse_request(self) -> bool:
        with self._conn.lock:
            self._conn.busy = True
        return super().parse_request()

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        finally:
            self._conn.busy = False

    def log_message(self, format: str, *args: Any) -> None:
        pass  # per-request stderr lines would swamp test output and slow benchmarks

    def _read_body(self) -> bytes | None:
        """Read the whole body so the connection stays usable; None if framing is broken."""
        if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
            length = int(self.headers.get("Content-Length", "0") or "0")
            if length > _MAX_RAW_BODY:
                return None
            body = self.rfile.read(length) if length > 0 else b""
            return body if len(body) == length else None  # short read: peer or stop() closed
        parts: list[bytes] = []
        while size := int(self.rfile.readline(65537).split(b";")[0], 16):
            parts.append(self.rfile.read(size))
            if len(parts[-1]) < size or self.rfile.readline(65537).strip():
                return None
        while self.rfile.readline(65537).strip():
            pass  # trailer fields
        return b"".join(parts)

    def _serve(self) -> None:
        try:
            body = self._read_body()
        except ValueError:
            body = None
        if body is None:
            self.close_connection = True
            return
        status, headers, response = self.server.collector._handle(
            self.command, self.path, self.headers, body, self._conn.id
        )
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
        thread = threading.Thread(
            target=self.process_request_thread, args=(request, client_address), daemon=True
        )
        with self.collector._lock:
            self.collector.connection_count += 1
            thread.name = f"collector-conn-{self.collector.connection_count}"
            self.collector._conns[request] = _Conn(self.collector.connection_count, request, thread)
            thread.start()  # under the lock, so no one can try to join it before it started

    def shutdown_request(self, request: Any) -> None:
        with self.collector._lock:
            self.collector._conns.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # OSError: the peer or stop() closed it
            super().handle_error(request, client_address)


class Collector:
    """A validating Segment-protocol server on 127.0.0.1 that records what it receives.

    Auth is enforced when ``write_key`` or ``token_validator`` is given: Basic auth with the
    write key as user name, or a matching body ``writeKey``, or (with a validator) a Bearer token
    the validator accepts; a Bearer token never falls back to the write key. ``idle_timeout``
    closes connections silent that many seconds. ``keep_requests=False`` keeps counters only.
    The counters are plain attributes updated under a lock: ``request_count``, ``accepted_count``
    and ``rejected_count`` count requests (200 vs anything else), ``message_count`` counts
    accepted messages and ``connection_count`` TCP connections.
    """

    def __init__(
        self,
        write_key: str | None = None,
        *,
        port: int = 0,
        path: str = "/v1/batch",
        token_validator: Callable[[str], bool] | None = None,
        echo: TextIO | None = None,
        idle_timeout: float | None = None,
        keep_requests: bool = True,
    ) -> None:
        self._write_key = None if write_key is None else write_key.encode()
        self._port, self._path, self._validator = port, path, token_validator
        self._echo, self._idle_timeout, self._keep = echo, idle_timeout, keep_requests
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None
        self._conns: dict[socket.socket, _Conn] = {}
        self._faults: deque[list[Any]] = deque()  # [status, remaining, headers, body]
        self._requests: list[ReceivedRequest] = []
        self._messages: list[dict[str, Any]] = []
        self.connection_count = 0  # TCP connections accepted since start; reset() keeps it
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
            self._messages.clear()
            self._faults.clear()
            self.request_count = self.accepted_count = self.rejected_count = self.message_count = 0

    @property
    def requests(self) -> list[ReceivedRequest]:
        """A copy of every request received, in arrival order."""
        with self._lock:
            return list(self._requests)

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
        messages: list[dict[str, Any]] = payload["batch"] if status == 200 and payload else []
        request = None
        if self._keep:
            lowered = {name.lower(): value for name, value in headers.items()}
            request = ReceivedRequest(
                method, target, lowered, body, payload, status, time.time(), conn_id
            )
        with self._cond:
            self.request_count += 1
            if status == 200:
                self.accepted_count += 1
                self.message_count += len(messages)
                self._messages.extend(messages if self._keep else ())
                self._cond.notify_all()
            else:
                self.rejected_count += 1
            if request is not None:
                self._requests.append(request)
            if self._echo is not None:  # under the lock so concurrent lines do not interleave
                self._print(self._echo, f"{method} {target}", status, messages, response)
        return status, extra, response

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
        if status != 200:
            print(f"[rejected {status}] {request} {body[:300].decode(errors='replace')}", file=out)
        first = self.message_count - len(messages) + 1
        for count, message in enumerate(messages, first):
            fields = " ".join(f"{k}={message[k]!r}" for k in _ECHO_FIELDS if k in message)
            print(f"[{count}] {message['type']} {fields}", file=out)
        out.flush()


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
    args = parser.parse_args(argv)
    echo = None if args.quiet else sys.stdout
    collector = Collector(args.write_key or None, port=args.port, path=args.path, echo=echo)
    try:
        collector.start()
    except OSError as exc:
        print(f"cannot listen on 127.0.0.1:{args.port}: {exc}", file=sys.stderr)
        return 1
    auth = "write key required" if args.write_key else "no auth"
    until = "Ctrl-C" if args.duration is None else f"{args.duration:g} s or Ctrl-C"
    print(f"Collecting at {collector.url}{args.path} ({auth}); use host {collector.url}")
    print(f"Running until {until}.", flush=True)
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
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
