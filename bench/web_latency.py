"""The response latency analytics adds to an ASGI app: flush before return vs after response.

One run, three uvicorn processes serving the same Starlette endpoint (a sync ``def``, run in
Starlette's threadpool, that tracks three events), each in a process of its own:

* ``none``: no analytics at all, the baseline;
* ``before``: the endpoint decorated with ``@with_analytics(analytics, batch=True)``: its three
  calls go as one request before it returns (what Lambda and Cloud Functions need);
* ``after``: ``app.add_middleware(ASGIMiddleware, analytics=analytics)``: one request after
  the response (``lambda_analytics.web``).

The tracking API is the package's validating collector behind a proxy that holds every batch
300 ms, in a fourth process.  Requests alternate between the three servers (the order rotates
each round), first one at a time, then in bursts of ten in flight at once; after each burst
round the benchmark waits until the API has answered every batch, so no backlog carries over.
At the end, every event must have arrived, one batch per request, none refused.

    .venv/bin/python bench/web_latency.py            # ~2 minutes; writes bench/WEB.md
    .venv/bin/python bench/web_latency.py --quick    # fewer requests, prints only
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

from common import BENCH_DIR, WRITE_KEY

VARIANTS = ("none", "before", "after")
EVENTS = ("Page Viewed", "Cart Updated", "Order Completed")
OUT = BENCH_DIR / "WEB.md"


# -- the processes ---------------------------------------------------------------------------


def serve_api(delay: float) -> None:
    """The slow tracking API: hold each POST ``delay`` s, then forward it to a collector."""
    from lambda_analytics.collector import Collector

    collector = Collector(WRITE_KEY, keep_requests=False).start()
    target = collector.url.removeprefix("http://")
    counts = {"batches": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the real API
        disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms stall

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(delay)
            conn = http.client.HTTPConnection(target)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            conn.request("POST", self.path, body, headers)
            answer = conn.getresponse()
            data = answer.read()
            conn.close()
            self.send_response(answer.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            with lock:
                counts["batches"] += 1

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    for line in sys.stdin:
        if line.strip() == "stats":
            with lock:
                batches = counts["batches"]
            stats = {
                "batches": batches,
                "messages": collector.message_count,
                "rejected": collector.rejected_count,
            }
            print(json.dumps(stats), flush=True)
    server.shutdown()
    collector.stop()


def serve_app(variant: str, api_url: str) -> None:
    """One uvicorn server with the endpoint of ``variant``; prints its address."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from lambda_analytics import Analytics, with_analytics
    from lambda_analytics.web import ASGIMiddleware

    analytics = Analytics(WRITE_KEY, host=api_url)

    def order(request: Request) -> PlainTextResponse:
        if variant != "none":
            for event in EVENTS:
                analytics.track(user_id="u1", event=event, properties={"revenue": 9.5})
        return PlainTextResponse("ok")

    endpoint = with_analytics(analytics, batch=True)(order) if variant == "before" else order
    app = Starlette(routes=[Route("/order", endpoint)])
    if variant == "after":
        app.add_middleware(ASGIMiddleware, analytics=analytics)
    sock = socket.create_server(("127.0.0.1", 0))
    print(f"127.0.0.1:{sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


def start(*args: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, __file__, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def api_stats(api: subprocess.Popen[str]) -> dict[str, int]:
    stdin, stdout = api.stdin, api.stdout
    assert stdin is not None and stdout is not None
    stdin.write("stats\n")
    stdin.flush()
    stats: dict[str, int] = json.loads(stdout.readline())
    return stats


def wait_for_batches(api: subprocess.Popen[str], count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while api_stats(api)["batches"] < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"the API did not receive {count} batches in {timeout} s")
        time.sleep(0.02)


# -- measuring -------------------------------------------------------------------------------


class Client:
    """Times GET /order, from sending the request to reading the whole response.

    Each request on a connection of its own: here, requests sent a few milliseconds apart on
    one keep-alive connection to uvicorn took ~40 ms each, with or without analytics, which
    would drown what is measured.
    """

    def __init__(self, address: str) -> None:
        self.address = address

    def get(self) -> float:
        conn = http.client.HTTPConnection(self.address, timeout=30)
        conn.connect()
        started = time.perf_counter()
        conn.request("GET", "/order")
        response = conn.getresponse()
        body = response.read()
        seconds = time.perf_counter() - started
        conn.close()
        if response.status != 200 or body != b"ok":
            raise SystemExit(f"unexpected response {response.status} {body!r}")
        return seconds


def burst(clients: list[Client]) -> list[float]:
    """Every client's GET at the same moment; their latencies."""
    results = [0.0] * len(clients)
    barrier = threading.Barrier(len(clients))

    def one(index: int) -> None:
        barrier.wait()
        results[index] = clients[index].get()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(math.ceil(0.99 * len(ordered)) - 1, 0)]


def measure(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    api, api_url = start("api", str(args.delay))
    apps = {variant: start("app", variant, api_url) for variant in VARIANTS}
    results: dict[str, dict[str, list[float]]] = {"sequential": {}, "burst": {}}
    tracked = 0  # requests of the variants that send
    try:
        for variant, (_, address) in apps.items():  # warm up: connections, imports, pools
            for _ in range(3):
                Client(address).get()
            if variant != "none":
                tracked += 3
        wait_for_batches(api, tracked)
        singles = {v: Client(address) for v, (_, address) in apps.items()}
        results["sequential"] = {v: [] for v in VARIANTS}
        for i in range(args.requests):
            for variant in VARIANTS[i % 3 :] + VARIANTS[: i % 3]:
                results["sequential"][variant].append(singles[variant].get())
        tracked += 2 * args.requests
        wait_for_batches(api, tracked)
        many = {v: [Client(a) for _ in range(args.in_flight)] for v, (_, a) in apps.items()}
        results["burst"] = {v: [] for v in VARIANTS}
        for i in range(args.bursts):
            for variant in VARIANTS[i % 3 :] + VARIANTS[: i % 3]:
                results["burst"][variant].extend(burst(many[variant]))
            tracked += 2 * args.in_flight
            wait_for_batches(api, tracked)
        stats = api_stats(api)
        expected = {"batches": tracked, "messages": 3 * tracked, "rejected": 0}
        if stats != expected:
            raise SystemExit(f"the API received {stats}, expected {expected}")
    finally:
        for process, _ in apps.values():
            process.terminate()
        assert api.stdin is not None
        api.stdin.close()
        for process in [api, *(p for p, _ in apps.values())]:
            process.wait(10)
    return results


# -- reporting -------------------------------------------------------------------------------


def table(results: dict[str, dict[str, list[float]]], in_flight: int) -> str:
    lines = [
        "| requests | variant | median ms | p99 ms | added, median ms | added, p99 ms |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    names = {"sequential": "one at a time", "burst": f"{in_flight} in flight"}
    for scenario, by_variant in results.items():
        base = by_variant["none"]
        base_median, base_p99 = statistics.median(base), p99(base)
        for variant in VARIANTS:
            values = by_variant[variant]
            median, tail = statistics.median(values), p99(values)
            added = ("", "")
            if variant != "none":
                added = (
                    f"{(median - base_median) * 1000:+.1f}",
                    f"{(tail - base_p99) * 1000:+.1f}",
                )
            lines.append(
                f"| {names[scenario]} ({len(values)}) | {LABELS[variant]} | "
                f"{median * 1000:.1f} | {tail * 1000:.1f} | {added[0]} | {added[1]} |"
            )
    return "\n".join(lines) + "\n"


LABELS = {
    "none": "no analytics",
    "before": "flush before return (`@with_analytics(batch=True)`)",
    "after": "after the response (`ASGIMiddleware`)",
}


def write(text: str, args: argparse.Namespace, out: IO[str] | Path) -> None:
    import uvicorn

    rate = 8 / args.delay
    body = f"""# Response latency added by analytics (ASGI)

Made by `.venv/bin/python bench/web_latency.py` (about two minutes):

- the same Starlette endpoint (a sync `def`, in Starlette's threadpool) tracking three
  events, under uvicorn {uvicorn.__version__}, one process per variant: no analytics; flush
  before return (`@with_analytics(analytics, batch=True)` on the endpoint); after the
  response (`app.add_middleware(ASGIMiddleware, analytics=analytics)`);
- the tracking API: the validating collector behind a proxy that answers each batch in
  {args.delay * 1000:.0f} ms, in a process of its own;
- {args.requests} requests one at a time, then {args.bursts} bursts of {args.in_flight} in
  flight at once, per variant, the variants interleaved; latency from sending the request to
  reading the whole response, each request on a new connection (its set-up not counted);
- Python {platform.python_version()}, {os.cpu_count()} CPUs, everything on one machine over
  loopback. "Added" is the variant's median (p99) minus the baseline's.

{text}
Every event arrived, one batch per request, none refused. With ten in flight, what the
middleware adds is the sends of the first responses' batches (encoding, the HTTP request)
running in the same process, and on the same CPUs, as the requests still being served.

After each burst round the benchmark waits until the API has answered every batch: a
process sends at most `FLUSH_THREADS` (8) batches at once, so above 8 / (API latency)
requests per second per process (here {rate:.0f}/s) batches queue, and one still queued
`timeout` seconds after its response is reported to `on_error`.
"""
    if isinstance(out, Path):
        out.write_text(body)
    else:
        out.write(body)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "api":
        serve_api(float(sys.argv[2]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "app":
        serve_app(sys.argv[2], sys.argv[3])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=200, help="one at a time, per variant")
    parser.add_argument("--bursts", type=int, default=20, help="bursts per variant")
    parser.add_argument("--in-flight", type=int, default=10, help="requests per burst")
    parser.add_argument("--delay", type=float, default=0.3, help="tracking API latency, s")
    parser.add_argument("--quick", action="store_true", help="20 requests, 3 bursts; print")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.bursts = 20, 3
    results = measure(args)
    text = table(results, args.in_flight)
    if args.quick:
        write(text, args, sys.stdout)
    else:
        write(text, args, OUT)
        print(OUT.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
