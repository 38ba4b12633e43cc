"""The ``lambda-analytics`` command line (also ``python -m lambda_analytics``).

``demo`` runs an example Lambda handler against the local collector and shows what arrived;
``collector`` runs the local ``/v1/batch`` server.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEMO_WRITE_KEY = "demo-write-key"
DEMO_EVENTS: list[dict[str, Any]] = [
    {
        "user_id": "user-42",
        "plan": "pro",
        "items": [{"sku": "tee-blue", "price": 19.5, "quantity": 2}, {"sku": "mug", "price": 9.0}],
    },
    {"user_id": "user-7", "items": [{"sku": "sticker", "price": 1.25, "quantity": 4}]},
]


class LambdaContext:
    """The parts of AWS Lambda's context object that handlers and the SDK read."""

    def __init__(self, function_name: str, timeout: float) -> None:
        self.function_name = function_name
        self.aws_request_id = str(uuid.uuid4())
        self.memory_limit_in_mb = 128
        self._deadline = time.monotonic() + timeout

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the platform stops the invocation."""
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _load_handler(spec: str) -> Any:
    path_text, _, name = spec.partition(":")
    path = Path(path_text)
    if not path.is_file():
        raise SystemExit(f"error: handler file {path} not found (run from the repository root)")
    module_spec = importlib.util.spec_from_file_location(path.stem, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return getattr(module, name or "handler")


def demo(handler_spec: str, timeout: float) -> int:
    """Invoke the handler for each demo event, then print what reached the collector."""
    from .collector import Collector

    with Collector(write_key=DEMO_WRITE_KEY) as collector:
        os.environ["ANALYTICS_WRITE_KEY"] = DEMO_WRITE_KEY
        os.environ["ANALYTICS_HOST"] = collector.url
        print(f"local collector listening on {collector.url}")
        handler = _load_handler(handler_spec)
        for event in DEMO_EVENTS:
            context = LambdaContext("checkout-demo", timeout)
            started = time.perf_counter()
            response = handler(event, context)
            elapsed = (time.perf_counter() - started) * 1000
            print(f"invoke {context.aws_request_id[:8]}: {response} ({elapsed:.1f} ms)")
        print(f"\nthe collector received {collector.request_count} requests:")
        for request in collector.requests:
            batch = (request.payload or {}).get("batch", [])
            print(f"  HTTP {request.status}, {len(request.body)} bytes, {len(batch)} messages")
            for message in batch:
                what = message.get("event") or message.get("traits") or ""
                print(f"    {message['type']:<8} {message.get('userId', '-'):<8} {what}")
        expected = sum(len(e.get("items", [])) + 2 for e in DEMO_EVENTS)
        received = len(collector.messages)
    print(f"\n{received} of {expected} events arrived")
    return 0 if received == expected else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lambda-analytics``."""
    parser = argparse.ArgumentParser(prog="lambda-analytics", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run_demo = commands.add_parser("demo", help="run the example handler against a local collector")
    run_demo.add_argument("--handler", default="examples/aws_lambda/handler.py:handler")
    run_demo.add_argument("--timeout", type=float, default=3.0, help="Lambda timeout (seconds)")
    commands.add_parser("collector", help="run the local /v1/batch server", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "collector":
        from .collector import main as collector_main

        return collector_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return demo(args.handler, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
