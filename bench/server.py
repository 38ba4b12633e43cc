"""The one loopback server every contender posts to, in a process of its own.

It is the package's validating collector (``lambda_analytics.collector.Collector``) with
``keep_requests=False``: it checks the write key, parses every body as JSON and validates every
message as the real API does, then keeps only counters.  A server that merely read the body
would make the raw urllib3 baseline unrealistically cheap; this one costs what a real endpoint's
parsing costs, the same for every contender.

Protocol with the parent (``run.py``): the first stdout line is the base URL; each ``stats``
line on stdin is answered with one JSON line of counters; end of stdin stops the server.
"""

from __future__ import annotations

import json
import sys

from common import WRITE_KEY

from lambda_analytics.collector import Collector


def main() -> int:
    collector = Collector(WRITE_KEY, keep_requests=False)
    collector.start()
    print(collector.url, flush=True)
    for line in sys.stdin:
        if line.strip() == "stats":
            counters = {
                "messages": collector.message_count,
                "accepted": collector.accepted_count,
                "rejected": collector.rejected_count,
                "requests": collector.request_count,
                "connections": collector.connection_count,
            }
            print(json.dumps(counters), flush=True)
    collector.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
