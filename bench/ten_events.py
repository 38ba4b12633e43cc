"""A whole process that sends 10 events and exits; ``run.py`` times it from spawn to exit.

    python bench/ten_events.py CONTENDER URL [BODY_FILE]

Self-contained on purpose (imports only what each contender needs), so the process pays for
the contender's own imports and nothing of the benchmark's:

* ``raw-10``: urllib3 POSTs the 10 one-event bodies lambda_analytics sent (BODY_FILE), with
  the SDK transport's settings (timeouts, ``retries=False``);
* ``raw-1``: urllib3 POSTs the one 10-event body lambda_analytics sent when batching;
* ``ours-flush1``: lambda_analytics with ``flush_at=1`` (10 requests, each before returning);
* ``ours-batch``: ``with Analytics(..., flush_at=100)``: one request when the block closes;
* ``incumbent``: segment-analytics-python as documented (background thread), ``flush()`` at
  the end; its ``atexit`` join of the consumer thread is part of the process;
* ``incumbent-sync``: segment-analytics-python with ``sync_mode=True`` (10 requests).
"""

from __future__ import annotations

import sys
from typing import Any

WRITE_KEY = "bench-write-key"  # as in common.py, which this script does not import


def event(i: int) -> dict[str, Any]:
    """The same event as ``common.event``."""
    return {
        "user_id": f"user-{i % 10_000}",
        "event": "Order Completed",
        "properties": {
            "order_id": f"order-{i}",
            "revenue": 19.5 + i % 100,
            "currency": "USD",
            "coupon": None,
            "products": [{"sku": "SKU-1", "name": "Widget", "price": 9.75, "quantity": 2}],
        },
    }


def raw(url: str, body_file: str) -> None:
    import json
    import struct

    import urllib3

    pool = urllib3.PoolManager()
    timeout = urllib3.Timeout(connect=3.0, read=10.0)  # as lambda_analytics's transport
    with open(body_file, "rb") as stream:
        meta = json.loads(stream.readline())
        target = url + "/" + meta["url"].split("/", 3)[3]  # same path, this run's server
        while header := stream.read(4):
            body = stream.read(struct.unpack(">I", header)[0])
            response = pool.request(
                "POST", target, body=body, headers=meta["headers"], retries=False, timeout=timeout
            )
            if response.status != 200:
                raise SystemExit(f"status {response.status}")


def main() -> None:
    contender, url = sys.argv[1], sys.argv[2]
    if contender in ("raw-10", "raw-1"):
        raw(url, sys.argv[3])
    elif contender == "ours-flush1":
        from lambda_analytics import Analytics

        analytics = Analytics(WRITE_KEY, host=url)
        for i in range(10):
            if not analytics.track(**event(i)).delivered:
                raise SystemExit("not delivered")
    elif contender == "ours-batch":
        from lambda_analytics import Analytics

        with Analytics(WRITE_KEY, host=url, flush_at=100) as analytics:
            for i in range(10):
                analytics.track(**event(i))
    elif contender in ("incumbent", "incumbent-sync"):
        from segment.analytics import Client

        client = Client(WRITE_KEY, host=url, sync_mode=contender == "incumbent-sync")
        for i in range(10):
            client.track(**event(i))
        client.flush()
    else:
        raise SystemExit(f"unknown contender {contender!r}")


if __name__ == "__main__":
    main()
