"""Import historical events from a JSON Lines file, in batches of up to ``--flush-at`` events.

Each line is one call, for example::

    {"type": "track", "user_id": "u1", "event": "Order Completed",
     "properties": {"revenue": 9.99}, "timestamp": "2024-03-01T09:15:00Z"}

``type`` is one of identify, track, page, screen, group, alias; the other keys are that call's
keyword arguments (``user_id``, ``anonymous_id``, ``event``, ``properties``, ``traits``,
``name``, ``category``, ``group_id``, ``previous_id``, ``context``, ``integrations``,
``message_id``).  ``timestamp`` is required: ISO-8601, taken as UTC without an offset.

Without a ``message_id`` a line gets one derived from the file name, its line number and its
text, so running the import again after a partial failure sends the same ids and the server
deduplicates what already arrived.

Settings come from ``ANALYTICS_*`` variables (``ANALYTICS_WRITE_KEY`` at least).  Prints a
summary and exits 1 if any event failed or any line was invalid, 2 on a usage error::

    ANALYTICS_WRITE_KEY=... python examples/batch_job/import_events.py events.jsonl
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lambda_analytics
from lambda_analytics import Analytics, DeliveryError, RequestInfo

CALLS = ("identify", "track", "page", "screen", "group", "alias")
ARGUMENTS = {
    "user_id", "anonymous_id", "event", "properties", "traits", "name", "category",
    "group_id", "previous_id", "context", "integrations", "message_id",
}  # fmt: skip
ID_NAMESPACE = uuid.UUID("0b5d3f3e-6a53-4f2e-8a8e-3c1f1b7d2a61")


def parse_timestamp(text: object) -> dt.datetime:
    """An ISO-8601 string (``Z`` or an offset; none means UTC) as an aware datetime."""
    if not isinstance(text, str):
        raise ValueError("timestamp: required, an ISO-8601 string")
    iso = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text  # "Z": Python 3.11+ only
    try:
        value = dt.datetime.fromisoformat(iso)
    except ValueError:
        raise ValueError(f"timestamp: not ISO-8601: {text!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)


def call_for(record: object, default_id: str) -> tuple[str, dict[str, Any]]:
    """The client method and keyword arguments for one parsed line."""
    if not isinstance(record, dict):
        raise ValueError("a line must be a JSON object")
    kind = record.get("type")
    if kind not in CALLS:
        raise ValueError(f"type: must be one of {', '.join(CALLS)}, got {kind!r}")
    unknown = set(record) - ARGUMENTS - {"type", "timestamp"}
    if unknown:
        raise ValueError(f"unknown keys: {', '.join(sorted(unknown))}")
    arguments = {key: value for key, value in record.items() if key in ARGUMENTS}
    arguments["timestamp"] = parse_timestamp(record.get("timestamp"))
    arguments.setdefault("message_id", default_id)
    return kind, arguments


def import_file(path: Path, analytics: Analytics) -> int:
    """Queue every valid line of ``path``; return the number of invalid lines."""
    invalid = 0
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            default_id = str(uuid.uuid5(ID_NAMESPACE, f"{path.name}:{number}:{line.strip()}"))
            try:
                kind, arguments = call_for(json.loads(line), default_id)
                getattr(analytics, kind)(**arguments)  # raises on bad input, naming the field
            except (ValueError, TypeError) as exc:  # JSON and validation errors
                invalid += 1
                print(f"{path}:{number}: skipped: {exc}", file=sys.stderr)
    return invalid


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Import historical events from a JSON Lines file.")
    parser.add_argument("path", type=Path, help="a JSON Lines file of events")
    parser.add_argument(
        "--flush-at", type=int, default=500, help="events a request (default 500, max 2500)"
    )
    args = parser.parse_args(argv)
    if not args.path.is_file():
        parser.error(f"{args.path}: no such file")

    requests = 0

    def count(info: RequestInfo) -> None:
        nonlocal requests
        requests += 1

    def report(error: DeliveryError, messages: list[dict[str, Any]]) -> None:
        print(f"{len(messages)} events not delivered: {error}", file=sys.stderr)

    try:
        analytics = lambda_analytics.configure(
            flush_at=args.flush_at, on_error=report, on_request=count
        )
    except lambda_analytics.ConfigurationError as exc:
        parser.error(str(exc))
    try:
        invalid = import_file(args.path, analytics)
    finally:
        analytics.close()  # sends what is still queued
    stats = analytics.stats
    print(
        f"{args.path.name}: {stats.sent} sent, {stats.failed} failed, "
        f"{invalid} invalid lines ({requests} HTTP request{'' if requests == 1 else 's'})"
    )
    return 1 if stats.failed or invalid else 0


if __name__ == "__main__":
    sys.exit(main())
