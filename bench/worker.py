"""One measurement in a fresh process; ``run.py`` starts it and reads one JSON line from stdout.

    python bench/worker.py capture OUT_DIR URL N_FLUSH1 N_BATCH FLUSH_AT
    python bench/worker.py flush1 CONTENDER URL N WARMUP BODY_FILE
    python bench/worker.py batch CONTENDER URL N FLUSH_AT BODY_FILE

CONTENDER is ``raw`` (a urllib3 PoolManager replaying the bodies lambda_analytics sent, read
from BODY_FILE, configured as the SDK's transport configures it), ``raw-bare`` (the same without
timeouts; ``flush1`` only), ``ours`` (lambda_analytics) or ``incumbent``
(segment-analytics-python).  Each
process measures one contender once, so peak RSS (``ru_maxrss``) is that contender's own.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from common import WRITE_KEY, BodyWriter, event, iter_bodies, peak_rss_kb, read_meta

# -- capture: the exact bodies lambda_analytics sends, for the raw baseline -----------------------


class CaptureTransport:
    """A ``lambda_analytics.Transport`` that writes every body to a file and answers 200."""

    def __init__(self, writer: BodyWriter) -> None:
        self.writer = writer
        self.messages = 0

    def send(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float | None) -> Any:
        from lambda_analytics import Response

        self.writer.add(url, dict(headers), body)
        self.messages += len(json.loads(body)["batch"])
        return Response(status=200, headers={}, body=b'{"success": true}')

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass


def capture(out_dir: Path, url: str, n_flush1: int, n_batch: int, flush_at: int) -> dict[str, Any]:
    """Write flush1.bin, batch.bin, ten1.bin and ten_batch.bin under ``out_dir``."""
    from lambda_analytics import Analytics

    plans = {  # file -> (flush_at, events)
        "flush1.bin": (1, n_flush1),
        "batch.bin": (flush_at, n_batch),
        "ten1.bin": (1, 10),
        "ten_batch.bin": (100, 10),
    }
    report: dict[str, Any] = {}
    for name, (client_flush_at, events) in plans.items():
        writer = BodyWriter(out_dir / name)
        transport = CaptureTransport(writer)
        client = Analytics(WRITE_KEY, host=url, flush_at=client_flush_at, transport=transport)
        for i in range(events):
            client.track(**event(i))
        client.close()
        writer.close()
        if transport.messages != events:
            raise SystemExit(f"{name}: captured {transport.messages} messages, not {events}")
        report[name] = {"bodies": writer.bodies, "bytes": (out_dir / name).stat().st_size}
    return report


# -- the contenders -------------------------------------------------------------------------------


def _raw_poster(
    base_url: str, body_file: Path, *, timeouts: bool = True
) -> tuple[Callable[[bytes], bool], Any]:
    """POST the next body as lambda_analytics's transport configures urllib3, minus the SDK.

    Same configuration: ``retries=False`` (the SDK runs its own retry policy) and the SDK's
    default connect/read timeouts, so the ratio measures the SDK's own work, not two urllib3
    configurations.  ``timeouts=False`` is the bare ``pool.request`` (blocking sockets, no
    timeout at all), shown for reference: sockets with a timeout cost urllib3 extra system
    calls on every request.
    """
    import urllib3

    stream = body_file.open("rb")
    meta = read_meta(stream)
    url, headers = base_url + urlsplit(meta["url"]).path, meta["headers"]
    pool = urllib3.PoolManager()
    options: dict[str, Any] = {"retries": False}
    if timeouts:
        options["timeout"] = urllib3.Timeout(connect=3.0, read=10.0)

    def post(body: bytes) -> bool:
        response = pool.request("POST", url, body=body, headers=headers, **options)
        return bool(response.status == 200)

    return post, stream


def flush1(contender: str, url: str, n: int, warmup: int, body_file: Path) -> dict[str, Any]:
    """``n`` events, each delivered before the next call (after ``warmup`` untimed ones)."""
    failed = 0
    if contender in ("raw", "raw-bare"):
        post, stream = _raw_poster(url, body_file, timeouts=contender == "raw")
        bodies = iter_bodies(stream)
        for _ in range(warmup):
            post(next(bodies))
        started, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            if not post(next(bodies)):
                failed += 1
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    elif contender == "ours":
        from lambda_analytics import Analytics

        analytics = Analytics(WRITE_KEY, host=url)  # flush_at=1, the default
        for i in range(warmup):
            analytics.track(**event(i))
        started, cpu = time.perf_counter(), time.process_time()
        for i in range(warmup, warmup + n):
            if not analytics.track(**event(i)).delivered:
                failed += 1
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        analytics.close()
    elif contender == "incumbent":
        from segment.analytics import Client

        client = Client(WRITE_KEY, host=url, sync_mode=True)  # raises if a post fails
        for i in range(warmup):
            client.track(**event(i))
        started, cpu = time.perf_counter(), time.process_time()
        for i in range(warmup, warmup + n):
            client.track(**event(i))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    else:
        raise SystemExit(f"unknown contender {contender!r}")
    return {
        "events": n,
        "sent": n + warmup,
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "failed": failed,
    }


def batch(contender: str, url: str, n: int, flush_at: int, body_file: Path) -> dict[str, Any]:
    """A job that tracks ``n`` events generated on the fly, then flushes; with peak RSS."""
    failed = 0
    rss_before = peak_rss_kb()
    if contender == "raw":
        post, stream = _raw_poster(url, body_file)
        rss_before = peak_rss_kb()
        started, cpu = time.perf_counter(), time.process_time()
        for body in iter_bodies(stream):
            if not post(body):
                failed += 1
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    elif contender == "ours":
        from lambda_analytics import Analytics

        analytics = Analytics(WRITE_KEY, host=url, flush_at=flush_at)
        rss_before = peak_rss_kb()
        started, cpu = time.perf_counter(), time.process_time()
        for i in range(n):
            analytics.track(**event(i))
        result = analytics.flush()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        failed = result.failed + analytics.stats.failed
        analytics.close()
    elif contender == "incumbent":
        from segment.analytics import Client

        errors: list[int] = []
        client = Client(
            WRITE_KEY,
            host=url,
            max_queue_size=n,  # the default 10,000 drops events when the producer is faster
            on_error=lambda error, items: errors.append(len(items)),
        )
        rss_before = peak_rss_kb()
        started, cpu = time.perf_counter(), time.process_time()
        for i in range(n):
            queued, _ = client.track(**event(i))
            if not queued:
                failed += 1
        client.flush()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        failed += sum(errors)
        client.join()
    else:
        raise SystemExit(f"unknown contender {contender!r}")
    return {
        "events": n,
        "sent": n,
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "failed": failed,
        "rss_before_kb": rss_before,
        "peak_rss_kb": peak_rss_kb(),
    }


def main(argv: list[str]) -> int:
    command, args = argv[0], argv[1:]
    if command == "capture":
        result = capture(Path(args[0]), args[1], int(args[2]), int(args[3]), int(args[4]))
    elif command == "flush1":
        result = flush1(args[0], args[1], int(args[2]), int(args[3]), Path(args[4]))
    elif command == "batch":
        result = batch(args[0], args[1], int(args[2]), int(args[3]), Path(args[4]))
    else:
        raise SystemExit(__doc__)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
