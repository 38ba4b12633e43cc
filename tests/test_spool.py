"""The durable spool: undelivered messages wait in files and go first next time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from conftest import FAST_RETRY, WRITE_KEY

from lambda_analytics import Analytics, DeliveryError, SpoolError
from lambda_analytics.collector import Collector
from lambda_analytics.spool import READY, Spool

DOWN = "http://127.0.0.1:9"  # nothing listens on the discard port


def client(host: str, spool: Path, **settings: Any) -> Analytics:
    settings.setdefault("retry", FAST_RETRY)
    return Analytics(WRITE_KEY, host=host, spool_dir=spool, **settings)


def test_server_down_then_up_every_event_arrives_once(tmp_path: Path, collector: Collector) -> None:
    reported: list[DeliveryError] = []
    first = client(DOWN, tmp_path, flush_at=100, on_error=lambda e, m: reported.append(e))
    ids = [first.track(user_id="u", event=f"down-{i}").message_id for i in range(30)]
    summary = first.flush(timeout=0.5)
    assert (summary.sent, summary.failed, summary.spooled) == (0, 0, 30)
    assert reported == []  # spooled, not lost: nothing to report yet
    assert len(list(tmp_path.glob("*" + READY))) == 1

    second = client(collector.url, tmp_path)  # the next invocation, server back up
    new = second.track(user_id="u", event="up").message_id
    assert collector.message_ids() == [*ids, new]  # spooled first, each once
    assert list(tmp_path.iterdir()) == []
    second.track(user_id="u", event="again")
    assert len(collector.message_ids()) == 32


def test_final_refusals_are_reported_not_spooled(tmp_path: Path, collector: Collector) -> None:
    reported: list[list[dict[str, Any]]] = []
    collector.fail_next(400)
    analytics = client(collector.url, tmp_path, on_error=lambda e, m: reported.append(m))
    result = analytics.track(user_id="u", event="bad")
    assert not result.delivered and len(reported[0]) == 1
    assert list(tmp_path.iterdir()) == []


def test_corrupt_and_truncated_files_are_set_aside_and_reported(
    tmp_path: Path, collector: Collector
) -> None:
    (tmp_path / ("00000000000000000001-1-aaaa" + READY)).write_bytes(b'{"messageId": "x"')
    (tmp_path / ("00000000000000000002-1-bbbb" + READY)).write_bytes(b"not json\n")
    errors: list[DeliveryError] = []
    analytics = client(collector.url, tmp_path, on_error=lambda e, m: errors.append(e))
    result = analytics.track(user_id="u", event="still sent")
    assert result.delivered
    assert len(errors) == 2 and all(isinstance(e, SpoolError) for e in errors)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".corrupt", ".corrupt"]
    assert len(collector.message_ids()) == 1


def wire(message_id: str, pad: int = 0) -> bytes:
    """A spooled message as the client writes it (and as the spool checks it on read)."""
    properties = {"pad": "x" * pad} if pad else {}
    return json.dumps(
        {"type": "track", "userId": "u", "event": "e", "messageId": message_id,
         "timestamp": "2026-01-01T00:00:00.000Z", "context": {}, "properties": properties},
        separators=(",", ":"),
    ).encode()  # fmt: skip


def test_a_full_spool_drops_the_oldest_file_first(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1_000)
    files = [[wire(f"f{n}-{i}", pad=1) for i in range(3)] for n in range(3)]
    assert spool.write(files[0]) == []
    assert spool.write(files[1]) == []
    (problem, dropped), *rest = spool.write(files[2])  # 3 x 414 bytes > 1,000: the oldest goes
    assert "oldest messages dropped" in problem and dropped == files[0] and rest == []
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= 1_000
    assert spool.claim().messages == files[1] + files[2]


def test_messages_dropped_from_a_full_spool_are_reported(tmp_path: Path) -> None:
    dropped: list[list[dict[str, Any]]] = []
    analytics = client(
        DOWN,
        tmp_path,
        flush_at=10,
        spool_max_bytes=1_000,
        on_error=lambda e, m: dropped.append(m) if isinstance(e, SpoolError) else None,
    )
    ids = [analytics.track(user_id="u", event=f"e-{i}").message_id for i in range(5)]
    summary = analytics.flush(timeout=0.2)
    assert (summary.failed, summary.spooled) == (5, 0)
    assert isinstance(summary.errors[0], SpoolError)
    assert [m["messageId"] for m in dropped[0]] == ids
    assert list(tmp_path.iterdir()) == []


def test_an_abandoned_claim_is_taken_over(tmp_path: Path, collector: Collector) -> None:
    spool = Spool(tmp_path, stale_after=0.05)
    assert spool.write([wire("m1")]) == []
    crashed = spool.claim()  # a process claims the file, then dies without releasing it
    assert len(crashed.messages) == 1 and list(tmp_path.glob("*" + READY)) == []
    assert Spool(tmp_path, stale_after=60).claim().messages == []  # a live claim is respected
    time.sleep(0.06)
    assert Spool(tmp_path, stale_after=0.05).claim().messages == crashed.messages


def test_processes_sharing_the_directory_never_send_the_same_file(
    tmp_path: Path, collector: Collector
) -> None:
    spool = Spool(tmp_path)
    expected = []
    for n in range(60):
        expected.append(f"spooled-{n}")
        assert spool.write([wire(f"spooled-{n}")]) == []
    script = textwrap.dedent(
        f"""
        from lambda_analytics import Analytics
        analytics = Analytics({WRITE_KEY!r}, host={collector.url!r}, spool_dir={str(tmp_path)!r})
        print(analytics.flush(timeout=10).sent)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    workers = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(4)
    ]
    sent = [int(w.communicate(timeout=30)[0]) for w in workers]
    assert sum(sent) == 60
    assert sorted(collector.message_ids()) == sorted(expected)
    assert list(tmp_path.iterdir()) == []


def test_a_temporary_file_left_by_a_dead_writer_is_removed(tmp_path: Path) -> None:
    spool = Spool(tmp_path, stale_after=60)
    old = tmp_path / f".tmp-{time.time_ns() - 61 * 10**9:020d}-1-dead"
    new = tmp_path / f".tmp-{time.time_ns():020d}-2-busy"  # another process is writing it
    old.write_bytes(wire("half") + b"\n")
    new.write_bytes(wire("half") + b"\n")
    assert spool.claim().messages == []
    assert [p.name for p in tmp_path.iterdir()] == [new.name]
