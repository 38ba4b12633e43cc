"""A fault-injecting ``POST /v1/batch`` server on 127.0.0.1, for soak and reliability tests.

Standard library only (the server part).  Per request it picks an outcome, from a scripted
queue first (:meth:`FaultServer.script`) and otherwise from a seeded random schedule::

    with FaultServer({"503": 0.2, "429": 0.05, "reset-before": 0.05, "stall": 0.01}) as server:
        ...  # Analytics(..., host=server.url, timeout=0.2)
        server.accepted  # Counter of accepted messageIds: a count above 1 is a duplicate

Outcomes (the probability keys):

=================  ===================================================================
``ok``             read the body, record every ``messageId`` as accepted, answer 200
``500`` ``502``    read the body, answer that status (retryable)
``503``
``429``            answer 429 with ``Retry-After: <retry_after>`` seconds (``"0"``)
``429-date``       answer 429 with ``Retry-After`` as an HTTP date, ``retry_after_date``
                   seconds from now (-1: a second ago, so no wait)
``400`` ``413``    read the body, answer that status (final)
``reset-before``   reset the TCP connection (RST) before reading the body
``reset-after``    read the body, then reset the connection without answering
``stall``          accept the batch (record it!) and then wait ``stall`` seconds, longer
                   than the client's read timeout, before answering: the client times out
                   and retries, so this is the only legitimate source of server duplicates
``slow``           wait ``slow`` seconds, then accept as ``ok``
=================  ===================================================================

Keep-alive HTTP/1.1, one daemon thread per connection (``ThreadingHTTPServer``); the whole
response goes out in one write, with Nagle off.  The server stops by itself after
``max_lifetime`` seconds; :meth:`FaultServer.stop` closes the listener and every connection.

:func:`run_soak` drives ``lambda_analytics`` clients against it and returns the accounting;
``tests/test_soak.py`` and ``bench/soak.py`` share it.  (Only that function imports the SDK.)
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import random
import socket
import ssl
import struct
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

OK = "ok"
OUTCOMES = (
    "ok",
    "500",
    "502",
    "503",
    "429",
    "429-date",
    "400",
    "413",
    "reset-before",
    "reset-after",
    "stall",
    "slow",
)
_STATUS_TEXT = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}
_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, not FIN


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 30.0  # an idle keep-alive connection's thread ends after this
    server: _Server

    def setup(self) -> None:
        fault = self.server.fault
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(5.0)
            try:
                self.request.do_handshake()
            except (OSError, ValueError):
                with fault._lock:
                    fault.tls_failures += 1
                raise
        super().setup()
        with fault._lock:
            fault.connections += 1
            fault._sockets.add(self.request)

    def finish(self) -> None:
        with self.server.fault._lock:
            self.server.fault._sockets.discard(self.request)
        with contextlib.suppress(OSError, ValueError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.server.fault._serve(self)

    def _refuse(self) -> None:
        status = 404 if self.path.partition("?")[0] != self.server.fault.path else 405
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.respond(status, b'{"success":false}')

    do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = _refuse

    def respond(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        lines = [f"HTTP/1.1 {status} {_STATUS_TEXT.get(status, 'Status')}"]
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head + body)

    def reset(self) -> None:
        """Abort the connection with an RST; nothing more is read or written on it."""
        self.close_connection = True
        sock = self.connection
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        with self.server.fault._lock:
            self.server.fault._sockets.discard(sock)
        # detach() + close the descriptor: the real close happens now, even though rfile and
        # wfile still refer to the socket object (they now fail on a closed socket instead).
        with contextlib.suppress(OSError):
            fd = sock.detach()
            socket.close(fd)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256

    def __init__(self, fault: FaultServer) -> None:
        self.fault = fault
        super().__init__(("127.0.0.1", 0), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), which can wait on DNS; loopback needs none.
        import socketserver

        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if not isinstance(exc, (OSError, ValueError)):  # resets, closed sockets, TLS refusals
            super().handle_error(request, client_address)


class FaultServer:
    """The server.  ``probabilities`` maps outcomes (see the module doc) to their share;
    whatever is left over is ``ok``.  ``seed`` makes the schedule reproducible."""

    def __init__(
        self,
        probabilities: Mapping[str, float] | None = None,
        *,
        seed: int = 0,
        stall: float = 0.5,
        slow: float = 0.02,
        retry_after: str = "0",
        retry_after_date: float = -1.0,
        max_lifetime: float = 120.0,
        path: str = "/v1/batch",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        probabilities = dict(probabilities or {})
        unknown = set(probabilities) - set(OUTCOMES)
        if unknown:
            raise ValueError(f"unknown outcomes: {sorted(unknown)}")
        if any(p < 0 for p in probabilities.values()) or sum(probabilities.values()) > 1:
            raise ValueError("probabilities must be non-negative and sum to at most 1")
        self._cumulative: list[tuple[float, str]] = []
        total = 0.0
        for name, share in probabilities.items():
            total += share
            self._cumulative.append((total, name))
        self._rng = random.Random(seed)
        self.stall, self.slow = stall, slow
        self.retry_after, self.retry_after_date = retry_after, retry_after_date
        self.max_lifetime, self.path = max_lifetime, path
        self._ssl_context = ssl_context
        self._lock = threading.Lock()
        self._script: deque[str] = deque()
        self._stopping = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._server: _Server | None = None
        self._timer: threading.Timer | None = None
        self._url: str | None = None
        self._accepted: Counter[str] = Counter()
        self._stalled: Counter[str] = Counter()
        self._stalled_digests: dict[str, str] = {}
        self.content_mismatches: list[str] = []
        """messageIds accepted again with content different from the stalled copy."""
        self.outcomes: Counter[str] = Counter()
        """Requests to the batch path, by outcome."""
        self.connections = 0
        self.tls_failures = 0
        self.requests = 0
        self.retry_headers: Counter[str] = Counter()
        """``X-Retry-Count`` values seen (``"0"`` when absent)."""

    # -- life cycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("FaultServer has not been started")
        return self._url

    def start(self) -> FaultServer:
        self._server = server = _Server(self)
        if self._ssl_context is not None:
            server.socket = self._ssl_context.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        scheme = "https" if self._ssl_context is not None else "http"
        self._url = f"{scheme}://127.0.0.1:{server.server_address[1]}"
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.name = "fault-server-accept"
        thread.start()
        self._timer = threading.Timer(self.max_lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        """Stop accepting, abort every connection, wake stalled handlers.  Idempotent."""
        self._stopping.set()
        with self._lock:
            server, self._server = self._server, None
            sockets = list(self._sockets)
            self._sockets.clear()
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.cancel()
        if server is not None:
            server.shutdown()
            server.server_close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a handler blocked in recv()

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- scripting and results ----------------------------------------------------------------

    def script(self, *outcomes: str) -> None:
        """Answer the next requests with these outcomes, in order, before the random schedule."""
        unknown = set(outcomes) - set(OUTCOMES)
        if unknown:
            raise ValueError(f"unknown outcomes: {sorted(unknown)}")
        with self._lock:
            self._script.extend(outcomes)

    @property
    def accepted(self) -> Counter[str]:
        """How many times each messageId was accepted (``ok``, ``slow`` and ``stall``)."""
        with self._lock:
            return Counter(self._accepted)

    @property
    def stalled(self) -> Counter[str]:
        """messageIds of requests that were accepted and then stalled past the client."""
        with self._lock:
            return Counter(self._stalled)

    def _next_outcome(self) -> str:
        with self._lock:
            if self._script:
                return self._script.popleft()
            draw = self._rng.random()
        for bound, name in self._cumulative:
            if draw < bound:
                return name
        return OK

    # -- serving ------------------------------------------------------------------------------

    def _serve(self, handler: _Handler) -> None:
        if handler.path.partition("?")[0] != self.path:
            handler._refuse()
            return
        outcome = self._next_outcome()
        with self._lock:
            self.requests += 1
            self.outcomes[outcome] += 1
            self.retry_headers[handler.headers.get("X-Retry-Count", "0")] += 1
        if outcome == "reset-before":
            handler.reset()
            return
        length = handler.headers.get("Content-Length")
        if length is None:
            handler.close_connection = True
            handler.respond(411, b'{"success":false}', {"Connection": "close"})
            return
        body = handler.rfile.read(int(length))
        if len(body) != int(length):
            handler.close_connection = True  # the client went away mid-body
            return
        if outcome == "reset-after":
            handler.reset()
            return
        if outcome in ("500", "502", "503", "400", "413"):
            handler.respond(int(outcome), b'{"success":false,"error":"injected"}')
            return
        if outcome in ("429", "429-date"):
            after = self.retry_after
            if outcome == "429-date":
                when = time.time() + self.retry_after_date
                after = email.utils.formatdate(when, usegmt=True)
            handler.respond(429, b'{"success":false}', {"Retry-After": after})
            return
        if outcome == "slow" and self._stopping.wait(self.slow):
            return
        self._accept(body, stalled=outcome == "stall")
        if outcome == "stall":
            handler.close_connection = True
            if self._stopping.wait(self.stall):
                return
        with contextlib.suppress(OSError):  # a stalled client is long gone
            handler.respond(200, b'{"success":true}')

    def _accept(self, body: bytes, *, stalled: bool) -> None:
        batch = json.loads(body)["batch"]
        ids = [message["messageId"] for message in batch]
        with self._lock:
            self._accepted.update(ids)
            watched = self._stalled_digests
            if stalled:
                self._stalled.update(ids)
            # A message accepted again after a stall must be the very same message: only then
            # can the backend deduplicate it by messageId.
            for message in batch:
                mid = message["messageId"]
                if not stalled and mid not in watched:
                    continue
                digest = hashlib.sha256(json.dumps(message, sort_keys=True).encode()).hexdigest()
                if watched.setdefault(mid, digest) != digest:
                    self.content_mismatches.append(mid)


# -- the soak driver (imports lambda_analytics) -----------------------------------------------

SOAK_FAULTS: Mapping[str, float] = {
    "500": 0.07,
    "502": 0.06,
    "503": 0.07,  # 20 % 5xx
    "429": 0.04,
    "429-date": 0.01,  # 5 % 429, some with an HTTP-date Retry-After
    "reset-before": 0.03,
    "reset-after": 0.02,  # 5 % resets
    "stall": 0.01,  # 1 % accepted, then stalled past the read timeout
}


@dataclass
class SoakReport:
    """What happened in one soak run, and the checks on it (see :meth:`problems`)."""

    events: int
    flush_at: int
    threads: int
    elapsed: float
    sent_ids: list[str]
    reported: Counter[str]
    accepted: Counter[str]
    stalled: Counter[str]
    outcomes: Counter[str]
    connections: int
    requests: int
    client_sent: int
    client_failed: int
    content_mismatches: list[str]
    errors_by_type: Counter[str] = field(default_factory=Counter)
    timed_out: int = 0
    """Messages in attempts the client saw time out: stalls, and (on a loaded machine) answers
    that came too late.  Only these may be accepted by the server and yet retried."""

    def problems(self) -> list[str]:
        """Every violated invariant, in words; empty when the run was sound."""
        everything = set(self.sent_ids)
        accepted, reported, stalled = set(self.accepted), set(self.reported), set(self.stalled)
        found: list[str] = []
        if len(everything) != len(self.sent_ids):
            found.append(f"{len(self.sent_ids) - len(everything)} messageIds generated twice")
        missing = everything - accepted - reported
        if missing:
            found.append(f"{len(missing)} messages neither accepted nor reported: lost")
        unknown = (accepted | reported) - everything
        if unknown:
            found.append(f"{len(unknown)} ids accepted or reported that were never sent")
        twice = [mid for mid, n in self.reported.items() if n > 1]
        if twice:
            found.append(f"{len(twice)} messages reported to on_error more than once")
        both = accepted & reported
        duplicated = {mid for mid, n in self.accepted.items() if n > 1}
        # A stalled id can be accepted at most once per stall plus one successful attempt.
        excess = {m for m in duplicated if self.accepted[m] > self.stalled[m] + 1}
        # Beyond the stalls, only answers the client saw time out may be accepted and retried:
        # an ordinary 200 that a loaded machine delivered after the read timeout.
        late = max(0, self.timed_out - sum(self.stalled.values()))
        unexplained = (both - stalled) | (duplicated - stalled) | excess
        if len(unexplained) > late:
            found.append(
                f"{len(unexplained)} ids accepted and retried or reported, but only "
                f"{sum(self.stalled.values())} stalls and {late} late answers explain them"
            )
        if self.content_mismatches:
            found.append(f"{len(self.content_mismatches)} duplicates differ in content")
        if self.client_sent != len(everything - reported):
            found.append(f"stats.sent {self.client_sent} != {len(everything - reported)}")
        if self.client_failed != sum(self.reported.values()):
            found.append(f"stats.failed {self.client_failed} != {sum(self.reported.values())}")
        return found

    def lines(self) -> list[str]:
        """The accounting, for humans."""
        accepted, reported = set(self.accepted), set(self.reported)
        duplicated = {mid: n for mid, n in self.accepted.items() if n > 1}
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
        rate = self.events / self.elapsed if self.elapsed else 0.0
        return [
            f"soak: {self.events:,} events, flush_at={self.flush_at}, {self.threads} thread(s), "
            f"{self.elapsed:.1f} s, {rate:,.0f} events/s",
            f"  accepted (unique) {len(accepted):,}; reported to on_error {len(reported):,} "
            f"({dict(self.errors_by_type)}); accepted AND reported (stalled, then failed) "
            f"{len(accepted & reported):,}",
            f"  server duplicates: {len(duplicated):,} ids, "
            f"{sum(duplicated.values()) - len(duplicated):,} extra copies, from requests the "
            f"client saw time out ({len(set(self.stalled)):,} ids in stalled requests, "
            f"{self.timed_out:,} message-attempts timed out); "
            f"content mismatches {len(self.content_mismatches)}",
            f"  requests {self.requests:,} ({outcomes}); connections {self.connections:,}",
            f"  client stats: sent {self.client_sent:,}, failed {self.client_failed:,}",
        ]


def run_soak(
    events: int,
    *,
    flush_at: int,
    threads: int = 1,
    faults: Mapping[str, float] = SOAK_FAULTS,
    seed: int = 1,
    timeout: float = 0.2,
    stall: float = 0.3,
    max_retries: int = 3,
    max_lifetime: float = 600.0,
    script: Sequence[str] = (),
) -> SoakReport:
    """Send ``events`` track calls through ``threads`` clients (one each) against the faults.

    ``script`` outcomes come first (to be sure a rare fault happens at least once).
    """
    from lambda_analytics import Analytics, DeliveryError, RequestInfo, RetryPolicy

    policy = RetryPolicy(backoff_initial=0.001, backoff_max=0.005, max_retries=max_retries)
    reported: Counter[str] = Counter()
    errors_by_type: Counter[str] = Counter()
    report_lock = threading.Lock()

    def on_error(error: DeliveryError, messages: list[dict[str, Any]]) -> None:
        with report_lock:
            reported.update(message["messageId"] for message in messages)
            errors_by_type[type(error).__name__] += len(messages)

    timed_out = [0]

    def on_request(info: RequestInfo) -> None:
        if info.error is not None and "timed out" in str(info.error):
            with report_lock:
                timed_out[0] += info.message_count

    per_thread = [events // threads + (i < events % threads) for i in range(threads)]
    sent: list[list[str]] = [[] for _ in range(threads)]
    clients: list[Any] = []
    failures: list[BaseException] = []

    with FaultServer(faults, seed=seed, stall=stall, max_lifetime=max_lifetime) as server:
        server.script(*script)
        for _ in range(threads):
            clients.append(
                Analytics(
                    "soak-write-key",
                    host=server.url,
                    flush_at=flush_at,
                    timeout=timeout,
                    connect_timeout=1.0,
                    retry=policy,
                    on_error=on_error,
                    on_request=on_request,
                )
            )

        def work(n: int) -> None:
            try:
                client, ids, base = clients[n], sent[n], sum(per_thread[:n])
                for i in range(base, base + per_thread[n]):
                    result = client.track(
                        user_id=f"user-{i % 1000}",
                        event="Soak Tested",
                        properties={"i": i, "thread": n, "revenue": 9.99},
                    )
                    ids.append(result.message_id)
                client.close()
            except BaseException as exc:  # surfaced by the caller
                failures.append(exc)

        started = time.monotonic()
        workers = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(max_lifetime)
        elapsed = time.monotonic() - started
        if failures:
            raise failures[0]
        if any(worker.is_alive() for worker in workers):
            raise RuntimeError(f"soak clients still running after {max_lifetime} s")
        accepted, stalled = server.accepted, server.stalled
        outcomes, connections = Counter(server.outcomes), server.connections
        requests, mismatches = server.requests, list(server.content_mismatches)
    return SoakReport(
        events=events,
        flush_at=flush_at,
        threads=threads,
        elapsed=elapsed,
        sent_ids=[mid for ids in sent for mid in ids],
        reported=reported,
        accepted=accepted,
        stalled=stalled,
        outcomes=outcomes,
        connections=connections,
        requests=requests,
        client_sent=sum(c.stats.sent for c in clients),
        client_failed=sum(c.stats.failed for c in clients),
        content_mismatches=mismatches,
        errors_by_type=errors_by_type,
        timed_out=timed_out[0],
    )
