"""A hostile ``POST /v1/batch`` server on 127.0.0.1: raw sockets, standard library only.

Where ``fault_server.py`` answers with well-formed HTTP, this one misbehaves at the byte level:
it trickles, never answers, sends garbage, too many headers, an endless ``100 Continue``, a
200 MB error body, a non-ASCII ``Retry-After``, or resets fresh connections.  Each accepted
connection gets a daemon thread; each request on it is read in full (headers and a
``Content-Length`` body) and recorded, then answered as its *mode* says::

    with HostileServer("trickle-body") as server:             # every request
        ...  # Analytics(..., host=server.url)
    with HostileServer("ok", script=["503", "503"]) as server:  # two 503s, then ok
        ...
    server.requests      # a RequestRecord per request, in arrival order
    server.accepted_ids  # messageIds of requests answered with a 2xx status line

Modes (``script`` entries are used one per request, across connections, before ``mode``):

===========================  ===============================================================
``ok``                       200 ``{"success":true}``, keep-alive
``NNN`` (e.g. ``503``)       that status with a small JSON body, keep-alive
``trickle-body``             status line and headers (``Content-Length: 1000``) at once, then
                             the body one byte every ``trickle_interval`` (0.3 s)
``trickle-headers``          status line and headers one byte every ``trickle_interval``
``continue-stream``          ``HTTP/1.1 100 Continue`` every ``trickle_interval``, forever
``garbage-status``           ``garbage\\r\\n\\r\\n``, then close
``many-headers``             200 with 101 header lines (``http.client`` refuses over 100)
``huge-error``               400 with ``Content-Length: 200000000``, the body streamed in
                             64 KiB chunks until it is all sent or the client goes away
``retry-after-superscript``  503 with ``Retry-After: ²`` (UTF-8 bytes: a non-ASCII digit)
``reset-fresh``              on a connection's first request: read it, then RST (SO_LINGER 0);
                             a later request on the same connection is answered ``ok``
``never``                    read the request, never answer; the socket stays open until stop
``stall:N``                  read the request, record it as accepted, wait N s, answer 200
===========================  ===============================================================

The server stops by itself after ``max_lifetime`` seconds; :meth:`HostileServer.stop` closes
the listener, shuts every connection down (waking every waiting or trickling thread) and is
idempotent.  Time stamps are ``time.time()`` (to compare with ``sentAt``) and
``time.monotonic()``.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

FIXED_MODES = frozenset(
    {
        "ok",
        "trickle-body",
        "trickle-headers",
        "continue-stream",
        "garbage-status",
        "many-headers",
        "huge-error",
        "retry-after-superscript",
        "reset-fresh",
        "never",
    }
)
HUGE_BODY_BYTES = 200_000_000
CHUNK = 64 * 1024
TRICKLE_BODY_BYTES = 1000
MAX_HEAD_BYTES = 64 * 1024
_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, not FIN
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def check_mode(mode: str) -> str:
    """``mode`` if it is known; a ValueError naming it otherwise."""
    if mode in FIXED_MODES:
        return mode
    if mode.startswith("stall:"):
        try:
            seconds = float(mode.partition(":")[2])
        except ValueError:
            seconds = -1.0
        if seconds >= 0:
            return mode
    if len(mode) == 3 and mode.isascii() and mode.isdigit() and 100 <= int(mode) <= 599:
        return mode
    raise ValueError(f"unknown mode: {mode!r}")


@dataclass
class RequestRecord:
    """One request as the server read it, and what it did with it."""

    index: int
    """Order of arrival over the server's life, from 0."""
    connection: int
    """Which accepted connection it came on, from 0."""
    on_connection: int
    """Its position on that connection: 0 for the first request of a fresh connection."""
    arrival: float
    """``time.time()`` when the request (headers and body) had been read."""
    arrival_monotonic: float
    mode: str
    method: str
    path: str
    headers: dict[str, str]
    """Lower-case names; values decoded as Latin-1, as they came."""
    body_bytes: int
    messages: list[dict[str, Any]]
    """The ``batch`` of the JSON body (empty if the body was not a batch)."""
    message_ids: tuple[str, ...]
    sent_at: str | None
    retry_count: str | None
    """The ``X-Retry-Count`` header, ``None`` when absent."""
    status: int | None = None
    """The status line written in full (``None``: none, or not yet)."""
    accepted: bool = False
    """The server took the batch: ``ok`` and ``stall`` at once, others once a 2xx went out."""


@dataclass
class _Connection:
    sock: socket.socket
    index: int
    buffer: bytearray = field(default_factory=bytearray)
    served: int = 0


class _Closed(Exception):
    """The client closed the connection, or the server is stopping."""


class HostileServer:
    """The server; see the module docstring for the modes."""

    def __init__(
        self,
        mode: str = "ok",
        *,
        script: Iterable[str] = (),
        max_lifetime: float = 60.0,
        trickle_interval: float = 0.3,
    ) -> None:
        self.mode = check_mode(mode)
        self._script: deque[str] = deque(check_mode(m) for m in script)
        self.max_lifetime = max_lifetime
        self.trickle_interval = trickle_interval
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._timer: threading.Timer | None = None
        self._url: str | None = None
        self._requests: list[RequestRecord] = []
        self._accepted_ids: list[str] = []
        self._connections = 0
        self._arrived = threading.Condition(self._lock)

    # -- life cycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        if self._url is None:
            raise RuntimeError("HostileServer has not been started")
        return self._url

    def start(self) -> HostileServer:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        listener.settimeout(0.05)  # the accept loop polls the stop flag
        self._listener = listener
        self._url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        threading.Thread(target=self._accept_loop, name="hostile-accept", daemon=True).start()
        self._timer = threading.Timer(self.max_lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        """Stop accepting; shut every connection down, which wakes every handler.  Idempotent."""
        self._stopping.set()
        with self._lock:
            listener, self._listener = self._listener, None
            sockets = list(self._sockets)
            self._sockets.clear()
            self._arrived.notify_all()
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.cancel()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    @property
    def stopped(self) -> bool:
        return self._stopping.is_set()

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- results ------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request read so far, in arrival order (a copy of the list)."""
        with self._lock:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self._requests)

    @property
    def connections(self) -> int:
        """Connections accepted so far."""
        with self._lock:
            return self._connections

    @property
    def accepted_ids(self) -> list[str]:
        """messageIds of requests the server accepted, once per acceptance."""
        with self._lock:
            return list(self._accepted_ids)

    @property
    def received_ids(self) -> list[str]:
        """messageIds of every request read, once per request."""
        with self._lock:
            return [mid for record in self._requests for mid in record.message_ids]

    def wait_for_requests(self, count: int, timeout: float) -> bool:
        """Wait until at least ``count`` requests have been read; False on timeout or stop."""
        end = time.monotonic() + timeout
        with self._arrived:
            while len(self._requests) < count:
                left = end - time.monotonic()
                if left <= 0 or self._stopping.is_set():
                    return False
                self._arrived.wait(left)
            return True

    # -- serving ------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            listener = self._listener
            if listener is None:
                return
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                if self._stopping.is_set():
                    sock.close()
                    return
                self._sockets.add(sock)
                index, self._connections = self._connections, self._connections + 1
            conn = _Connection(sock, index)
            name = f"hostile-conn-{index}"
            threading.Thread(target=self._serve, args=(conn,), name=name, daemon=True).start()

    def _serve(self, conn: _Connection) -> None:
        sock = conn.sock
        sock.settimeout(None)  # blocking: stop() wakes a recv() by shutting the socket down
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while not self._stopping.is_set():
                record = self._read_request(conn)
                if record is None:
                    return
                keep_alive = self._answer(conn, record)
                conn.served += 1
                if not keep_alive or record.headers.get("connection", "").lower() == "close":
                    return
        except (_Closed, OSError):
            return
        finally:
            with self._lock:
                self._sockets.discard(sock)
            with contextlib.suppress(OSError):
                sock.close()

    def _recv(self, conn: _Connection) -> None:
        data = conn.sock.recv(CHUNK)
        if not data:
            raise _Closed
        conn.buffer += data

    def _read_request(self, conn: _Connection) -> RequestRecord | None:
        try:
            while b"\r\n\r\n" not in conn.buffer:
                if len(conn.buffer) > MAX_HEAD_BYTES:
                    return None
                self._recv(conn)
        except _Closed:
            return None
        head, _, rest = bytes(conn.buffer).partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path = [*lines[0].split(" "), "", ""][:2]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        conn.buffer = bytearray(rest)
        while len(conn.buffer) < length:
            self._recv(conn)
        body = bytes(conn.buffer[:length])
        del conn.buffer[:length]
        arrival, arrival_monotonic = time.time(), time.monotonic()

        messages: list[dict[str, Any]] = []
        sent_at = None
        try:
            raw = gzip.decompress(body) if headers.get("content-encoding") == "gzip" else body
            payload = json.loads(raw)
            if isinstance(payload, dict):
                batch = payload.get("batch")
                messages = (
                    [m for m in batch if isinstance(m, dict)] if isinstance(batch, list) else []
                )
                sent_at = payload.get("sentAt")
        except (ValueError, OSError, EOFError):
            pass
        with self._lock:
            mode = self._script.popleft() if self._script else self.mode
            record = RequestRecord(
                index=len(self._requests),
                connection=conn.index,
                on_connection=conn.served,
                arrival=arrival,
                arrival_monotonic=arrival_monotonic,
                mode=mode,
                method=method,
                path=path,
                headers=headers,
                body_bytes=length,
                messages=messages,
                message_ids=tuple(str(m.get("messageId")) for m in messages),
                sent_at=sent_at if isinstance(sent_at, str) else None,
                retry_count=headers.get("x-retry-count"),
            )
            self._requests.append(record)
            self._arrived.notify_all()
        return record

    def _accept(self, record: RequestRecord) -> None:
        with self._lock:
            if not record.accepted:
                record.accepted = True
                self._accepted_ids.extend(record.message_ids)

    def _status_going_out(self, record: RequestRecord, status: int) -> None:
        # Recorded just before the status line is complete on the wire: a client that has read
        # it always finds the request recorded with its status (and accepted, for a 2xx).
        with self._lock:
            record.status = status
        if 200 <= status < 300:
            self._accept(record)

    def _respond(
        self,
        conn: _Connection,
        record: RequestRecord,
        status: int,
        body: bytes,
        extra: Iterable[bytes] = (),
    ) -> None:
        reason = _REASONS.get(status, "Status").encode()
        lines = [
            b"HTTP/1.1 %d %s" % (status, reason),
            b"Content-Type: application/json",
            b"Content-Length: %d" % len(body),
            *extra,
        ]
        self._status_going_out(record, status)
        conn.sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)

    def _trickle(self, conn: _Connection, data: bytes, before: int = -1, then: Any = None) -> bool:
        """Send ``data`` a byte per interval; call ``then()`` before byte number ``before``
        (from 1) goes out.  False when the server stopped first."""
        for position in range(len(data)):
            if position and self._stopping.wait(self.trickle_interval):
                return False
            if position + 1 == before and then is not None:
                then()
            conn.sock.sendall(data[position : position + 1])
        return True

    def _answer(self, conn: _Connection, record: RequestRecord) -> bool:
        """Answer per the record's mode; True to read another request on this connection."""
        mode = record.mode
        sock = conn.sock
        if mode == "ok" or (mode == "reset-fresh" and record.on_connection > 0):
            self._accept(record)
            self._respond(conn, record, 200, b'{"success":true}')
            return True
        if mode.isdigit():
            status = int(mode)
            if 200 <= status < 300:
                self._accept(record)
            self._respond(conn, record, status, b'{"success":false,"error":"injected"}')
            return True
        if mode.startswith("stall:"):
            self._accept(record)
            if self._stopping.wait(float(mode.partition(":")[2])):
                return False
            self._respond(conn, record, 200, b'{"success":true}')
            return True
        if mode == "trickle-body":
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            head += b"Content-Length: %d\r\n\r\n" % TRICKLE_BODY_BYTES
            self._status_going_out(record, 200)
            sock.sendall(head)
            body = b'{"success":true}'.ljust(TRICKLE_BODY_BYTES)
            for position in range(len(body)):
                if self._stopping.wait(self.trickle_interval):
                    return False
                sock.sendall(body[position : position + 1])
            return False
        if mode == "trickle-headers":
            status_line = b"HTTP/1.1 200 OK\r\n"
            body = b'{"success":true}'
            head = status_line + b"Content-Type: application/json\r\n"
            head += b"Content-Length: %d\r\n\r\n" % len(body)
            done = self._trickle(
                conn,
                head,
                before=len(status_line),
                then=lambda: self._status_going_out(record, 200),
            )
            if done:
                sock.sendall(body)
            return False
        if mode == "continue-stream":
            while True:
                sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                if self._stopping.wait(self.trickle_interval):
                    return False
        if mode == "garbage-status":
            sock.sendall(b"garbage\r\n\r\n")
            return False
        if mode == "many-headers":
            # 101 header lines in all: http.client refuses a response with more than 100.
            filler = [b"X-Filler-%03d: %d" % (n, n) for n in range(99)]
            self._respond(conn, record, 200, b'{"success":true}', filler)
            return True
        if mode == "huge-error":
            head = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
            head += b"Content-Length: %d\r\n\r\n" % HUGE_BODY_BYTES
            self._status_going_out(record, 400)
            sock.sendall(head)
            chunk = b"x" * CHUNK
            left = HUGE_BODY_BYTES
            while left > 0 and not self._stopping.is_set():
                piece = chunk if left >= CHUNK else chunk[:left]
                sock.sendall(piece)  # raises once the client has closed: the handler ends
                left -= len(piece)
            return False
        if mode == "retry-after-superscript":
            extra = [b"Retry-After: " + "\u00b2".encode()]  # b"\xc2\xb2"
            self._respond(conn, record, 503, b'{"success":false}', extra)
            return True
        if mode == "reset-fresh":  # the first request on this connection
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            with self._lock:
                self._sockets.discard(sock)
            sock.close()  # RST; _serve's own close() is then a no-op
            return False
        if mode == "never":
            self._stopping.wait()
            return False
        raise AssertionError(f"unhandled mode {mode!r}")  # pragma: no cover
