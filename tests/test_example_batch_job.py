"""The batch job example: ``import_events.py`` run as a script against a collector on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

from lambda_analytics.collector import Collector

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "batch_job" / "import_events.py"
SAMPLE = ROOT / "examples" / "batch_job" / "events.jsonl"
WRITE_KEY = "batch-example-key"


def run_import(
    collector: Collector, path: Path, *extra: str, write_key: str = WRITE_KEY
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANALYTICS_")}
    env |= {"ANALYTICS_WRITE_KEY": write_key, "ANALYTICS_HOST": collector.url}
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(path), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )


def instant(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)  # naive means UTC


def test_the_sample_arrives_in_one_request_with_its_historical_timestamps() -> None:
    lines = [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]
    with Collector(write_key=WRITE_KEY) as collector:
        done = run_import(collector, SAMPLE)
        requests, messages = collector.requests, collector.messages

    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(lines)} sent, 0 failed, 0 invalid lines (1 HTTP request)" in done.stdout
    assert [r.status for r in requests] == [200]  # flush_at=500: the whole file, one request
    assert len(messages) == len(lines)
    for line, message in zip(lines, messages, strict=True):
        assert (message["type"], message["userId"], message["event"]) == (
            line["type"], line["user_id"], line["event"],
        )  # fmt: skip
        assert message["properties"] == line["properties"]
        assert instant(message["timestamp"]) == instant(line["timestamp"]), message
        assert message["timestamp"].endswith("Z")  # sent as UTC


def test_a_large_file_goes_in_batches_of_flush_at_and_a_rerun_sends_the_same_ids(
    tmp_path: Path,
) -> None:
    start = dt.datetime(2023, 1, 1, tzinfo=dt.timezone.utc)
    path = tmp_path / "history.jsonl"
    with path.open("w") as out:
        for i in range(1200):
            at = (start + dt.timedelta(minutes=i)).isoformat()
            event = {"type": "track", "user_id": f"u{i % 7}", "event": "Imported", "timestamp": at}
            out.write(json.dumps({**event, "properties": {"row": i}}) + "\n")
    with Collector(write_key=WRITE_KEY) as collector:
        first = run_import(collector, path)
        first_ids = collector.message_ids()
        first_sizes = [len((r.payload or {})["batch"]) for r in collector.requests]
        collector.reset()
        again = run_import(collector, path, "--flush-at", "1000")
        again_ids = collector.message_ids()
        messages = collector.messages

    assert first.returncode == 0, first.stdout + first.stderr
    assert "1200 sent, 0 failed, 0 invalid lines (3 HTTP requests)" in first.stdout
    assert first_sizes == [500, 500, 200]
    assert again.returncode == 0, again.stdout + again.stderr
    assert "(2 HTTP requests)" in again.stdout
    assert len(set(first_ids)) == 1200
    assert again_ids == first_ids  # the server can deduplicate a re-run
    assert [m["properties"]["row"] for m in messages] == list(range(1200))
    assert [instant(m["timestamp"]) for m in messages] == [
        start + dt.timedelta(minutes=i) for i in range(1200)
    ]


def test_failures_and_invalid_lines_are_summarized_and_exit_non_zero(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    good = {"type": "track", "user_id": "u1", "event": "Kept", "timestamp": "2024-05-01T00:00:00Z"}
    rows = [
        json.dumps(good),
        "{not json",
        json.dumps({**good, "timestamp": "yesterday"}),
        json.dumps({**good, "properties": {"price": float("nan")}}),
        json.dumps({key: value for key, value in good.items() if key != "timestamp"}),
        "",
        json.dumps({**good, "event": "Kept too"}),
    ]
    path.write_text("\n".join(rows) + "\n")
    with Collector(write_key=WRITE_KEY) as collector:
        mixed = run_import(collector, path)
        kept = [m["event"] for m in collector.messages]
        refused = run_import(collector, SAMPLE, write_key="not-the-key")

    assert mixed.returncode == 1, mixed.stdout + mixed.stderr
    assert "2 sent, 0 failed, 4 invalid lines" in mixed.stdout
    assert kept == ["Kept", "Kept too"]
    for number, reason in [(2, ""), (3, "timestamp"), (4, "properties.price"), (5, "timestamp")]:
        assert f"mixed.jsonl:{number}: skipped: {reason}" in mixed.stderr, mixed.stderr

    # A 401 is final: every event of the sample is reported, none is lost silently.
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "0 sent, 12 failed, 0 invalid lines" in refused.stdout
    assert "12 events not delivered: server answered HTTP 401" in refused.stderr
