"""The ``lambda-analytics`` command, run as a user runs it: subprocesses against the collector."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import WRITE_KEY

from lambda_analytics import cli
from lambda_analytics.collector import Collector

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).with_name("lambda-analytics")
UNREACHABLE = "http://127.0.0.1:9"


def run(
    *args: str,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    cwd: Path | None = None,
    command: Sequence[str] = (sys.executable, "-m", "lambda_analytics"),
) -> subprocess.CompletedProcess[str]:
    """The command with a clean environment: only the ANALYTICS_* variables given."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ANALYTICS_")}
    base.update(env or {})
    return subprocess.run(
        [*command, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=base,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def run_all(*cases: Sequence[str], env: Mapping[str, str] | None = None) -> list[Any]:
    """Run independent invocations at the same time (each costs an interpreter start)."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda args: run(*args, env=env), cases))


def to(collector: Collector) -> dict[str, str]:
    return {"ANALYTICS_WRITE_KEY": WRITE_KEY, "ANALYTICS_HOST": collector.url}


def assert_one_line_error(result: subprocess.CompletedProcess[str], *parts: str) -> str:
    """A non-zero exit with exactly one line on stderr, no traceback, naming ``parts``."""
    where = f"args={result.args[3:]} stdout={result.stdout!r} stderr={result.stderr!r}"
    assert result.returncode != 0, where
    assert "Traceback" not in result.stderr, where
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, where
    assert lines[0].startswith("lambda-analytics"), where
    for part in parts:
        assert part in lines[0], where
    return lines[0]


def delivered_id(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    message_id, status = result.stdout.split()
    assert status == "delivered"
    return message_id


def write_jsonl(path: Path, lines: Sequence[object]) -> Path:
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    )
    return path


def track_lines(count: int, pad: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "type": "track",
            "userId": f"u{n}",
            "event": "Imported",
            "properties": {"n": n, "pad": "x" * pad},
            "timestamp": "2024-05-01T12:00:00Z",
        }
        for n in range(count)
    ]


# -- the six calls ----------------------------------------------------------------------------


def test_every_call_is_delivered(collector: Collector) -> None:
    results = run_all(
        ["track", "--user-id", "u1", "--event", "Order Completed",
         "--properties", '{"revenue": 9.99}', "--context", '{"ip": "203.0.113.9"}',
         "--integrations", '{"All": false}', "--timestamp", "2024-05-01T12:00:00Z",
         "--message-id", "order-1"],
        ["identify", "--user-id", "u1", "--traits", '{"plan": "pro"}'],
        ["page", "--anonymous-id", "a1", "--name", "Pricing", "--category", "Docs",
         "--properties", '{"path": "/pricing"}'],
        ["screen", "--user-id", "u1", "--name", "Settings"],
        ["group", "--user-id", "u1", "--group-id", "acme", "--traits", '{"seats": 3}'],
        ["alias", "--user-id", "u1", "--previous-id", "a1"],
        env=to(collector),
    )  # fmt: skip
    ids = [delivered_id(result) for result in results]
    assert ids[0] == "order-1"
    by_id = {m["messageId"]: m for m in collector.messages}
    track, identify, page, screen, group, alias = (by_id[i] for i in ids)
    assert track["event"] == "Order Completed" and track["properties"] == {"revenue": 9.99}
    assert track["context"]["ip"] == "203.0.113.9" and track["integrations"] == {"All": False}
    assert track["timestamp"] == "2024-05-01T12:00:00.000Z"
    assert identify["traits"] == {"plan": "pro"} and identify["type"] == "identify"
    assert (page["anonymousId"], page["name"], page["category"]) == ("a1", "Pricing", "Docs")
    assert screen["type"] == "screen" and screen["name"] == "Settings"
    assert group["groupId"] == "acme" and group["traits"] == {"seats": 3}
    assert (alias["userId"], alias["previousId"]) == ("u1", "a1")


@pytest.mark.skipif(not SCRIPT.exists(), reason="the lambda-analytics script is not installed")
def test_the_installed_script_takes_the_key_and_host_as_flags(collector: Collector) -> None:
    args = ["track", "--write-key", WRITE_KEY, "--host", collector.url]
    result = run(*args, "--anonymous-id", "a1", "--event", "Scripted", command=[str(SCRIPT)])
    assert collector.messages[0]["messageId"] == delivered_id(result)


def test_user_mistakes_are_one_line_errors(collector: Collector, tmp_path: Path) -> None:
    bad_json, not_jsonable, no_file = run_all(
        ["track", "--user-id", "u", "--event", "E", "--properties", '{"a": 1'],
        ["track", "--user-id", "u", "--event", "E", "--properties", '{"price": NaN}'],
        ["import", str(tmp_path / "missing.jsonl")],
        env=to(collector),
    )
    assert_one_line_error(bad_json, "--properties", "not valid JSON", """'{"a": 1'""")
    assert bad_json.returncode == 2
    line = assert_one_line_error(not_jsonable, "properties.price: nan is not a finite number")
    assert line.startswith("lambda-analytics: error: invalid track message: ")
    assert not_jsonable.returncode == 1
    assert_one_line_error(no_file, "cannot read", "missing.jsonl", "No such file")
    no_key, bad_setting = run_all(
        ["track", "--user-id", "u", "--event", "E"],
        ["track", "--user-id", "u", "--event", "E", "--write-key", WRITE_KEY],
        env={"ANALYTICS_REGION": "mars"},
    )
    assert_one_line_error(no_key, "no write key", "ANALYTICS_WRITE_KEY", "--write-key")
    assert_one_line_error(bad_setting, "region must be one of us, eu: 'mars'")
    assert WRITE_KEY not in bad_setting.stderr
    assert collector.request_count == 0


def main_in_process(
    args: list[str], collector: Collector, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> tuple[object, str, str]:  # fmt: skip
    """``cli.main(args)`` in this process, sending to ``collector``: (status, stdout, stderr)."""
    for name, value in to(collector).items():
        monkeypatch.setenv(name, value)
    try:
        status: object = cli.main(args)
    except SystemExit as stopped:  # argparse's usage errors
        status = stopped.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize(
    ("args", "parts"),
    [
        (["identify", "--user-id", "u", "--traits", "[1, 2]"], ["--traits", "a JSON object"]),
        (["identify", "--user-id", "u", "--traits", "@missing.json"], ["cannot read missing"]),
        (["track", "--event", "E"], ["user_id: either user_id or anonymous_id is required"]),
        (["track", "--user-id", "u", "--event", " "], ["event: must not be empty"]),
        (["page", "--user-id", "u", "--timestamp", "soon"], ["--timestamp", "not an ISO-8601"]),
        (["group", "--user-id", "u"], ["required: --group-id", "(see lambda-analytics group"]),
        (["alias", "--previous-id", "a"], ["required: --user-id"]),
        (
            ["track", "--user-id", "u", "--event", "E", "--nope"],
            ["lambda-analytics track:", "--nope"],
        ),
        (["import"], ["required: FILE"]),
        ([], ["required: COMMAND"]),
        (["teleport"], ["invalid choice: 'teleport'"]),
    ],
)
def test_more_mistakes_in_process(
    args: list[str], parts: list[str], collector: Collector, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """The same one-line rule, without an interpreter start per case."""
    status, out, err = main_in_process(args, collector, monkeypatch, capsys)
    assert status in (1, 2) and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lambda-analytics"), err
    for part in parts:
        assert part in lines[0], err
    assert collector.request_count == 0


def test_an_unreachable_host_is_one_line_with_the_reason() -> None:
    result = run(
        "track", "--user-id", "u1", "--event", "Lost", "--host", UNREACHABLE,
        env={"ANALYTICS_WRITE_KEY": WRITE_KEY, "ANALYTICS_MAX_RETRIES": "1"},  # less backoff
    )  # fmt: skip
    assert result.returncode == 1
    line = assert_one_line_error(result, "not delivered to http://127.0.0.1:9/v1/batch")
    assert "refused" in line.lower() and " object at 0x" not in line
    assert result.stdout == ""


def test_help_and_version() -> None:
    top, track, collector_help = run_all(["--help"], ["track", "--help"], ["collector", "--help"])
    for command in ("track", "identify", "page", "screen", "group", "alias", "import"):
        assert command in top.stdout
    assert "ANALYTICS_WRITE_KEY" in top.stdout and "--failed-file" in top.stdout
    assert "--properties" in track.stdout and "--write-key" in track.stdout
    assert "--port" in collector_help.stdout  # passed through to the collector's own parser
    assert run("--version").stdout.startswith("lambda-analytics ")


# -- import -----------------------------------------------------------------------------------


def test_import_validates_then_sends_in_batches(collector: Collector, tmp_path: Path) -> None:
    # Padded so the 500 KB limit, not the 2,500 messages, cuts the batches.
    lines: list[object] = [*track_lines(2990, pad=150), ""]  # a blank line is skipped
    lines += [
        {"type": "identify", "user_id": "u1", "traits": {"plan": "pro"}},  # Python names
        {"type": "page", "anonymousId": "a1", "name": "Home", "properties": {"path": "/"}},
        {"type": "screen", "userId": "u1", "name": "Settings", "messageId": "screen-1"},
        {"type": "group", "userId": "u1", "groupId": "acme", "traits": {"seats": 3}},
        {"type": "alias", "userId": "u1", "previous_id": "a1"},
        {"type": "track", "userId": "u1", "event": "Local", "timestamp": "2024-05-01 14:00+02:00"},
    ]
    path = write_jsonl(tmp_path / "events.jsonl", lines)

    result = run("import", str(path), env=to(collector))

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("sent 2996, failed 0 in ")
    assert "events/s" in result.stdout
    assert "\r" not in result.stderr  # not a terminal: plain progress lines
    assert all(line.startswith("progress: ") for line in result.stderr.splitlines())
    messages = collector.messages
    assert len(messages) == 2996
    assert [r.status for r in collector.requests] == [200] * len(collector.requests)
    assert len(collector.requests) >= 2
    assert all(
        len(r.body) <= 500_000 and len(r.payload["batch"]) <= 2500 for r in collector.requests
    )
    assert messages[0]["timestamp"] == "2024-05-01T12:00:00.000Z"
    assert [m["type"] for m in messages[-6:]] == [
        "identify", "page", "screen", "group", "alias", "track",
    ]  # fmt: skip
    assert messages[-4]["messageId"] == "screen-1" and messages[-2]["previousId"] == "a1"
    assert messages[-1]["timestamp"] == "2024-05-01T12:00:00.000Z"


def test_import_lists_every_bad_line_and_sends_nothing(
    collector: Collector, tmp_path: Path
) -> None:
    good = track_lines(3)
    path = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            good[0],
            "",
            '{"type": "track", "userId": "u1", "event": "E"',  # line 3
            good[1],
            {"type": "track", "event": "No One"},  # line 5
            {"type": "track", "userId": "u1", "event": "E", "propertiez": {}},  # line 6
            {"type": "purchase", "userId": "u1"},  # line 7
            {"type": "group", "userId": "u1"},  # line 8
            '{"type": "track", "userId": "u1", "event": "E", "properties": {"p": NaN}}',  # 9
            {"type": "track", "userId": "u1", "event": "E", "timestamp": "soon"},  # line 10
            good[2],
        ],
    )

    result = run("import", str(path), env=to(collector))

    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{path}:3: not valid JSON: Expecting ',' delimiter (column 47)",
        f"{path}:5: user_id: either user_id or anonymous_id is required",
        f"{path}:6: propertiez: unknown field",
        f"{path}:7: type: must be one of track, identify, page, screen, group, alias, "
        "got 'purchase'",
        f"{path}:8: group_id: is required for group",
        f"{path}:9: properties.p: nan is not a finite number, not valid JSON",
        f"{path}:10: timestamp: not an ISO-8601 date-time: 'soon'",
        f"lambda-analytics: error: 7 invalid lines in {path}: nothing sent (fix them, or pass "
        "--skip-invalid to send the valid lines)",
    ]
    assert collector.request_count == 0

    skipping = run("import", str(path), "--skip-invalid", "--quiet", env=to(collector))
    assert skipping.returncode == 0, skipping.stderr
    assert skipping.stdout.startswith("sent 3, failed 0, skipped 7 invalid in ")
    assert [m["userId"] for m in collector.messages] == ["u0", "u1", "u2"]


def test_import_reads_standard_input(collector: Collector) -> None:
    lines = "".join(json.dumps(line) + "\n" for line in track_lines(5))
    result = run("import", "-", "--quiet", env=to(collector), stdin=lines)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("sent 5, failed 0 in ") and result.stderr == ""
    assert collector.message_count == 5

    dry_run = run("import", "-", env={**to(collector), "ANALYTICS_DISABLE": "1"}, stdin=lines)
    assert dry_run.returncode == 0, dry_run.stderr
    assert dry_run.stdout == "5 valid messages, not sent: ANALYTICS_DISABLE is set\n"
    assert collector.message_count == 5


def test_failures_are_written_then_resent_alone(collector: Collector, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "events.jsonl", track_lines(2500, pad=150))
    failed = tmp_path / "failed.jsonl"
    collector.fail_next(400)  # the first batch is refused

    first = run("import", str(source), "--failed-file", str(failed), env=to(collector))

    assert first.returncode == 1
    refused = collector.requests[0]
    assert refused.status == 400
    refused_ids = [m["messageId"] for m in refused.payload["batch"]]
    written = [json.loads(line) for line in failed.read_text().splitlines()]
    assert [m["messageId"] for m in written] == refused_ids  # wire format, same ids
    assert written[0]["userId"] == "u0" and written[0]["timestamp"] == "2024-05-01T12:00:00.000Z"
    sent = 2500 - len(refused_ids)
    assert first.stdout.splitlines() == [
        first.stdout.splitlines()[0],
        f"{len(refused_ids)} undelivered messages written to {failed}; "
        f"resend them with: lambda-analytics import {failed}",
    ]
    assert first.stdout.startswith(f"sent {sent}, failed {len(refused_ids)} in ")
    assert f"not delivered ({len(refused_ids)} messages): server answered HTTP 400" in first.stderr
    assert collector.message_count == sent

    # The same file as input and output: it ends up holding what is still undelivered.
    second = run("import", str(failed), "--failed-file", str(failed), env=to(collector))

    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith(f"sent {len(refused_ids)}, failed 0 in ")
    resent = [m["messageId"] for r in collector.requests[-1:0:-1] for m in r.payload["batch"]]
    assert sorted(resent[: len(refused_ids)]) == sorted(refused_ids)
    assert len(set(collector.message_ids())) == 2500  # everything arrived once
    assert failed.read_text() == ""


def test_undelivered_without_a_failed_file_says_how_to_keep_them(
    collector: Collector, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "events.jsonl", track_lines(3))
    collector.fail_next(400)
    result = run("import", str(source), "--quiet", env=to(collector))
    assert result.returncode == 1
    assert result.stdout.startswith("sent 0, failed 3 in ")
    assert result.stderr.splitlines() == [
        "not delivered (3 messages): server answered HTTP 400",
        "pass --failed-file PATH to keep undelivered messages for a resend",
    ]


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_import_draws_a_progress_bar_on_a_terminal(collector: Collector, tmp_path: Path) -> None:
    import pty

    source = write_jsonl(tmp_path / "events.jsonl", track_lines(300))
    primary, secondary = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANALYTICS_")}
    with subprocess.Popen(
        [sys.executable, "-m", "lambda_analytics", "import", str(source)],
        stdout=subprocess.PIPE,
        stderr=secondary,
        env={**env, **to(collector)},
        text=True,
    ) as process:
        os.close(secondary)
        stdout, _ = process.communicate(timeout=30)
        screen = b""
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
    os.close(primary)
    assert process.returncode == 0
    assert stdout.startswith("sent 300, failed 0 in ")
    drawn = screen.decode()
    assert f"\r[{'#' * 30}] 300/300 (100%)" in drawn and "events/s" in drawn


# -- collector and demo -----------------------------------------------------------------------


@contextlib.contextmanager
def stopped_at_exit(process: subprocess.Popen[Any]) -> Iterator[subprocess.Popen[Any]]:
    """``process``, killed if the block fails: Popen's own ``with`` would wait for it forever."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


@contextlib.contextmanager
def collector_command(*, text: bool) -> Iterator[tuple[subprocess.Popen[Any], str]]:
    """``lambda-analytics collector --port 0`` running, and the base URL its banner gives."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANALYTICS_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "lambda_analytics", "collector", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=text,
        env={**env, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    with stopped_at_exit(process) as server:
        assert server.stdout is not None
        banner = server.stdout.readline()  # Collecting at http://127.0.0.1:PORT/v1/batch ...
        line = banner if isinstance(banner, str) else banner.decode()
        yield server, line.split()[2].removesuffix("/v1/batch")


def test_collector_subcommand_counts_what_arrives() -> None:
    with collector_command(text=True) as (server, url):
        sent = run(
            "track", "--user-id", "u1", "--event", "Live", "--write-key", "any", "--host", url
        )
        delivered_id(sent)
        time.sleep(0.05)
        server.send_signal(signal.SIGINT)
        output, errors = server.communicate(timeout=10)
    assert server.returncode == 0, errors
    assert "[1] track event='Live' userId='u1'" in output
    assert "1 messages in 1 accepted batches" in output


def test_demo_still_runs_the_example_handler() -> None:
    result = run("demo", cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\n(\d+) of \1 events arrived", result.stdout), result.stdout
