"""What every benchmark process shares: the workload, the write key, and the body-file format.

Only the standard library here: the orchestrator (``run.py``) imports it too, under any Python.
"""

from __future__ import annotations

import json
import resource
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Final

BENCH_DIR: Final = Path(__file__).resolve().parent
WRITE_KEY: Final = "bench-write-key"
_LENGTH: Final = struct.Struct(">I")


def event(i: int) -> dict[str, Any]:
    """The keyword arguments of the ``i``-th ``track`` call: a typical e-commerce event.

    About 330 bytes once encoded by lambda_analytics, so a 500 KB request holds ~1,500 of them.
    Built afresh for every call (as an application would), never stored in a list.
    """
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


RESULTS: Final = BENCH_DIR / "RESULTS.md"
RECORDED_ELSEWHERE: Final = ("## Long soak",)
"""RESULTS.md sections written by other scripts (``soak.py --record``); ``run.py`` keeps them."""


def sections(text: str) -> dict[str, str]:
    """RESULTS.md cut at its ``## `` headings: heading line -> the section's whole text."""
    found: dict[str, str] = {}
    for chunk in ("\n" + text).split("\n## ")[1:]:
        heading = "## " + chunk.split("\n", 1)[0]
        found[heading] = "## " + chunk.rstrip() + "\n"
    return found


def kept_sections() -> str:
    """The sections of the current RESULTS.md that ``run.py`` must not overwrite."""
    if not RESULTS.exists():
        return ""
    kept = [
        body
        for heading, body in sections(RESULTS.read_text()).items()
        if heading.startswith(RECORDED_ELSEWHERE)
    ]
    return "\n".join(kept)


def record_section(body: str) -> None:
    """Put ``body`` (a ``## `` section) in RESULTS.md, replacing the section of that heading."""
    heading = body.split("\n", 1)[0]
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    old = sections(text).get(heading)
    text = text.replace(old, body) if old else text.rstrip() + "\n\n" + body
    RESULTS.write_text(text)


def peak_rss_kb() -> int:
    """The peak resident set size of this process so far, in KiB (Linux ``ru_maxrss``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# -- body files: the exact requests lambda_analytics sent, replayed by the raw urllib3 baseline ---
#
# One JSON line {"url": ..., "headers": {...}}, then each body as a 4-byte big-endian length and
# its bytes.  Read one body at a time, so the raw baseline's memory stays small while it replays
# 100,000 events.


class BodyWriter:
    """Appends request bodies to a body file; the first ``add`` writes the JSON line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.bodies = 0
        self._out: BinaryIO | None = None

    def add(self, url: str, headers: dict[str, str], body: bytes) -> None:
        if self._out is None:
            self._out = self.path.open("wb")
            self._out.write(json.dumps({"url": url, "headers": headers}).encode() + b"\n")
        self._out.write(_LENGTH.pack(len(body)))
        self._out.write(body)
        self.bodies += 1

    def close(self) -> None:
        if self._out is not None:
            self._out.close()


def read_meta(stream: BinaryIO) -> dict[str, Any]:
    """The JSON line at the head of a body file (leaves ``stream`` at the first body)."""
    meta: dict[str, Any] = json.loads(stream.readline())
    return meta


def iter_bodies(stream: BinaryIO) -> Iterator[bytes]:
    """The bodies after the JSON line, one at a time."""
    while header := stream.read(_LENGTH.size):
        (length,) = _LENGTH.unpack(header)
        yield stream.read(length)
