"""The spool against hostile neighbours, hostile files and failing filesystems (issue 10).

Everything runs on a real filesystem.  Read-only and full filesystems are real tmpfs mounts
where this process may mount (root with CAP_SYS_ADMIN; skipped elsewhere), ``EACCES`` is real
(a 0500 directory, entered as uid 65534 when the tests run as root: root ignores permission
bits), and a half-written file is real (``RLIMIT_FSIZE``).  An ``OSError`` or
``RecursionError`` at every single step is also injected, through the spool module's own
``os``/``json`` names only, so that each step is covered on any machine.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FAST_RETRY, WRITE_KEY
from test_spool import DOWN, wire

import lambda_analytics.spool as spool_module
from lambda_analytics import Analytics, ConfigurationError, DeliveryError, FlushResult, SpoolError
from lambda_analytics.collector import Collector
from lambda_analytics.messages import MAX_MESSAGE_BYTES, MAX_NESTING
from lambda_analytics.spool import CORRUPT, READY, Spool

NOBODY = 65534
ROOT = os.geteuid() == 0
Reports = list[tuple[DeliveryError, list[str]]]


def client(host: str, spool: Path, reports: Reports, **settings: Any) -> Analytics:
    settings.setdefault("retry", FAST_RETRY)
    settings.setdefault("flush_at", 100)
    return Analytics(
        WRITE_KEY,
        host=host,
        spool_dir=spool,
        on_error=lambda e, m: reports.append((e, [x.get("messageId") for x in m])),
        **settings,
    )


def send(host: str, spool: Path, ids: list[str], **settings: Any) -> tuple[FlushResult, Reports]:
    """Track ``ids`` and flush: what the caller sees (it must never be an exception)."""
    reports: Reports = []
    analytics = client(host, spool, reports, **settings)
    for mid in ids:
        analytics.track(user_id="u", event="e", message_id=mid, properties={"pad": "x" * 100})
    return analytics.flush(timeout=0.3), reports


def spool_errors(reports: Reports) -> Reports:
    return [(e, ids) for e, ids in reports if isinstance(e, SpoolError)]


def names(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def plant(directory: Path, name: str, lines: list[bytes]) -> Path:
    path = directory / name
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    path.chmod(0o600)
    return path


# -- private files in a private directory -------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o777])
def test_directory_0700_and_files_0600_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    spool = tmp_path / "parent" / "spool"
    old = os.umask(umask)
    try:
        summary, _ = send(DOWN, spool, ["a", "b"])
    finally:
        os.umask(old)
    assert summary.spooled == 2
    assert stat.S_IMODE(spool.stat().st_mode) == 0o700
    assert stat.S_IMODE(spool.parent.stat().st_mode) == 0o700  # a missing parent too (XDG)
    [file] = spool.iterdir()
    assert file.name.endswith(READY) and stat.S_IMODE(file.stat().st_mode) == 0o600
    assert file.stat().st_uid == os.geteuid()


def test_an_existing_private_directory_is_used_and_left_as_it_is(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o755)
    spool.chmod(0o755)  # readable by others: its files are 0600, so only names show
    summary, _ = send(DOWN, spool, ["a"])
    assert summary.spooled == 1
    assert stat.S_IMODE(spool.stat().st_mode) == 0o755
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in spool.iterdir())


def another_users_directory(tmp_path: Path) -> Path:
    if not ROOT:
        return Path("/")  # root's, and this user is not root
    directory = tmp_path / "theirs"
    directory.mkdir(mode=0o700)
    os.chown(directory, NOBODY, NOBODY)
    return directory


def _symlink(tmp_path: Path) -> Path:
    target = tmp_path / "real"
    target.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(target)
    return tmp_path / "link"


def _file(tmp_path: Path) -> Path:
    (tmp_path / "file").write_text("")
    return tmp_path / "file"


def _mode(tmp_path: Path, mode: int) -> Path:
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(mode)
    return directory


REFUSED: list[tuple[str, Callable[[Path], Path], str]] = [
    ("symlink", _symlink, "is a symbolic link"),
    ("file", _file, "is not a directory"),
    ("another user's", another_users_directory, "belongs to uid"),
    ("group-writable", lambda t: _mode(t, 0o770), "writable by group or others (mode 0770)"),
    ("world-writable", lambda t: _mode(t, 0o707), "writable by group or others (mode 0707)"),
    ("sticky /tmp-like", lambda t: _mode(t, 0o1777), "writable by group or others (mode 1777)"),
]


@pytest.mark.parametrize(("make", "reason"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_an_unsafe_spool_dir_is_refused_at_construction(
    tmp_path: Path, make: Callable[[Path], Path], reason: str
) -> None:
    directory = make(tmp_path)
    before = names(directory) if directory.is_dir() else None
    with pytest.raises(ConfigurationError, match="spool_dir") as caught:
        Analytics(WRITE_KEY, spool_dir=directory)
    assert reason in str(caught.value) and str(directory) in str(caught.value)
    assert (names(directory) if directory.is_dir() else None) == before  # nothing written


def test_an_uncreatable_spool_dir_is_refused_at_construction(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigurationError, match="spool_dir: Not a directory"):
        Analytics(WRITE_KEY, spool_dir=tmp_path / "file" / "spool")
    with pytest.raises(ConfigurationError, match="spool_dir must not be empty"):
        Analytics(WRITE_KEY, spool_dir="")


def test_a_directory_made_unsafe_later_is_not_used(tmp_path: Path, collector: Collector) -> None:
    spool = tmp_path / "spool"
    reports: Reports = []
    analytics = client(collector.url, spool, reports)
    # A planted message, then the directory opened to everyone: it must not be read.
    plant(spool, "00000000000000000001-1-aaaa" + READY, [wire("planted")])
    spool.chmod(0o777)
    analytics.track(user_id="u", event="e", message_id="mine")
    summary = analytics.flush(timeout=1)
    assert summary.sent == 1 and collector.message_ids() == ["mine"]
    [(error, ids)] = spool_errors(reports)
    assert "writable by group or others" in str(error) and ids == []


def test_a_directory_swapped_for_a_symlink_is_not_followed(
    tmp_path: Path, collector: Collector
) -> None:
    spool, elsewhere = tmp_path / "spool", tmp_path / "elsewhere"
    reports: Reports = []
    analytics = client(collector.url, spool, reports)
    elsewhere.mkdir(mode=0o700)
    plant(elsewhere, "00000000000000000001-1-aaaa" + READY, [wire("planted")])
    spool.rmdir()
    spool.symlink_to(elsewhere)
    analytics.track(user_id="u", event="e", message_id="mine")
    assert analytics.flush(timeout=1).sent == 1
    assert collector.message_ids() == ["mine"]
    assert "symbolic link" in str(spool_errors(reports)[0][0])
    assert names(elsewhere) == ["00000000000000000001-1-aaaa" + READY]


# -- hostile files: never sent -------------------------------------------------------------------


def test_a_batch_symlink_pointing_outside_is_never_read(
    tmp_path: Path, collector: Collector
) -> None:
    spool, outside = tmp_path / "spool", tmp_path / "outside.jsonl"
    Spool(spool)
    outside.write_bytes(wire("crafted-identify") + b"\n")
    (spool / ("00000000000000000001-1-evil" + READY)).symlink_to(outside)
    summary, reports = send(collector.url, spool, ["mine"])
    assert summary.sent == 1 and collector.message_ids() == ["mine"]
    [(error, ids)] = spool_errors(reports)
    assert "set aside" in str(error) and ids == []
    aside = spool / ("00000000000000000001-1-evil" + CORRUPT)
    assert names(spool) == [aside.name] and aside.is_symlink()  # the link itself, moved
    assert outside.read_bytes() == wire("crafted-identify") + b"\n"


def test_a_fifo_named_like_a_batch_does_not_hang_a_flush(
    tmp_path: Path, collector: Collector
) -> None:
    spool = tmp_path / "spool"
    Spool(spool)
    os.mkfifo(spool / ("00000000000000000001-1-fifo" + READY), 0o600)
    summary, reports = send(collector.url, spool, ["mine"])
    assert summary.sent == 1 and "not a regular file" in str(spool_errors(reports)[0][0])


def _message(**changes: Any) -> bytes:
    message = json.loads(wire("bad"))
    message.update(changes)
    return json.dumps({k: v for k, v in message.items() if v is not None}).encode()


BAD_LINES: list[tuple[str, bytes, str]] = [
    ("not JSON", b"not json", "Expecting value"),
    ("an array", b'[{"messageId": "x"}]', "returned a list"),
    ("no messageId", _message(messageId=None), "message_id"),
    ("an empty messageId", _message(messageId=""), "message_id"),
    ("no type", _message(type=None), "not a message type"),
    ("an unknown type", _message(type="purchase"), "not a message type"),
    ("no user", _message(userId=None), "user_id"),
    ("NaN", _message(properties={"price": float("nan")}), "NaN is not JSON"),
    ("too large", _message(properties={"pad": "x" * MAX_MESSAGE_BYTES}), "message limit"),
    (
        "too deep",
        _message(properties={"a": json.loads("[" * MAX_NESTING + "]" * MAX_NESTING)}),
        f"nested over {MAX_NESTING} levels",
    ),
    ("deep enough to crash json", b"[" * 200_000 + b"]" * 200_000, "message limit"),
    ("deep and small", b"[" * 15_000 + b"]" * 15_000, f"nested over {MAX_NESTING}"),
    ("not UTF-8", _message(event="caf\u00e9").replace(b"\\u00e9", b"\xe9"), "utf-8"),
    ("UTF-16", _message().decode().encode("utf-16"), "utf-8"),
    ("an empty line", b"", "Expecting value"),
]


@pytest.mark.parametrize(("line", "why"), [b[1:] for b in BAD_LINES], ids=[b[0] for b in BAD_LINES])
def test_a_file_with_a_bad_line_is_set_aside_and_reported_never_sent(
    tmp_path: Path, collector: Collector, line: bytes, why: str
) -> None:
    spool = tmp_path / "spool"
    Spool(spool)
    plant(spool, "00000000000000000001-1-bad" + READY, [wire("good-before"), line])
    summary, reports = send(collector.url, spool, ["mine-0"])
    assert summary.sent == 1 and collector.message_ids() == ["mine-0"]  # nor the good line
    [(error, ids)] = spool_errors(reports)
    assert "set aside" in str(error) and why.lower() in str(error).lower() and ids == []
    assert names(spool) == ["00000000000000000001-1-bad" + CORRUPT]
    summary, reports = send(collector.url, spool, ["mine-1"])  # nothing left to trip over
    assert summary.sent == 1 and reports == []
    assert collector.message_ids() == ["mine-0", "mine-1"]


@pytest.mark.parametrize(("line", "why"), [b[1:] for b in BAD_LINES], ids=[b[0] for b in BAD_LINES])
def test_the_report_says_which_line_and_why(tmp_path: Path, line: bytes, why: str) -> None:
    spool = Spool(tmp_path)
    plant(tmp_path, "00000000000000000001-1-bad" + READY, [wire("good-before"), line])
    claimed = spool.claim()
    assert claimed.messages == [] and claimed.names == []
    [problem] = claimed.problems
    assert "set aside as 00000000000000000001-1-bad.corrupt" in problem
    assert "line 2" in problem and why.lower() in problem.lower()


def test_spooled_messages_are_cut_into_batches_within_the_limits(
    tmp_path: Path, collector: Collector
) -> None:
    spool = Spool(tmp_path)
    big = [wire(f"big-{i}", pad=MAX_MESSAGE_BYTES - 250) for i in range(40)]  # 1.2 MB in one file
    assert all(len(m) <= MAX_MESSAGE_BYTES for m in big) and spool.write(big) == []
    summary, _ = send(collector.url, tmp_path, [])
    assert summary.sent == 40 and collector.rejected_count == 0
    assert len(collector.requests) >= 3
    assert all(len(r.body) <= 500_000 for r in collector.requests)


# -- failing filesystems: reported, never raised, nothing half-written ---------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        target = tmp_path / f"tmpfs-{len(mounted)}"
        target.mkdir(mode=0o700)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(target)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(
                f"cannot mount a tmpfs here ({done.stderr.strip()}): see the injected tests"
            )
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", str(target)], check=False)


def check_blocked(spool: Path, collector: Collector, errno_text: str) -> None:
    """Three messages spooled before; now the directory cannot be changed."""
    summary, reports = send(collector.url, spool, ["new-1"])  # claim fails, new still sent
    assert summary.sent == 1 and collector.message_ids() == ["new-1"]
    [(error, ids)] = spool_errors(reports)
    assert f"could not claim spooled messages: {errno_text}" in str(error) and ids == []
    summary, reports = send(DOWN, spool, ["down-1", "down-2"])  # writing fails: reported
    assert (summary.sent, summary.failed, summary.spooled) == (0, 2, 0)
    errors = spool_errors(reports)
    assert any("could not spool 2 messages" in str(e) and ids == ["down-1", "down-2"]
               for e, ids in errors)  # fmt: skip
    assert all(errno_text in str(e) for e, _ in errors)
    assert len(names(spool)) == 1 and names(spool)[0].endswith(READY)  # kept, nothing added


def test_a_read_only_filesystem(tmpfs: Callable[[str], Path], collector: Collector) -> None:
    mount = tmpfs("1m")
    spool = mount / "spool"
    assert send(DOWN, spool, ["old-1", "old-2", "old-3"])[0].spooled == 3
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    check_blocked(spool, collector, "Read-only file system")
    subprocess.run(["mount", "-o", "remount,rw", str(mount)], check=True)
    summary, _ = send(collector.url, spool, [])  # writable again: the old ones go
    assert summary.sent == 3 and names(spool) == []


def test_a_full_filesystem_leaves_no_half_written_file(
    tmpfs: Callable[[str], Path], collector: Collector
) -> None:
    spool = tmpfs("64k") / "spool"
    reports: Reports = []
    analytics = client(DOWN, spool, reports)
    for i in range(4):  # 4 x 30 KB > 64 KB
        analytics.track(user_id="u", event="e", message_id=f"big-{i}",
                        properties={"pad": "x" * 30_000})  # fmt: skip
    summary = analytics.flush(timeout=0.3)
    assert (summary.failed, summary.spooled) == (4, 0)
    [(error, ids)] = spool_errors(reports)
    assert "No space left on device" in str(error) and ids == [f"big-{i}" for i in range(4)]
    assert names(spool) == []


SCRIPT = textwrap.dedent(
    """
    import json, sys
    from lambda_analytics import Analytics, RetryPolicy
    spool, host, *ids = sys.argv[1:]
    reports = []
    def on_error(error, messages):
        reports.append([type(error).__name__, str(error), [m["messageId"] for m in messages]])
    analytics = Analytics(
        {key!r}, host=host, spool_dir=spool, flush_at=100, on_error=on_error,
        retry=RetryPolicy(backoff_initial=0.005, backoff_max=0.02),
    )
    for mid in ids:
        analytics.track(user_id="u", event="e", message_id=mid, properties={{"pad": "x" * 30000}})
    summary = analytics.flush(timeout=0.5)
    print(json.dumps([summary.sent, summary.failed, summary.spooled, reports]))
    """
).format(key=WRITE_KEY)


def run_as_nobody(spool: Path, host: str, ids: list[str]) -> list[Any]:
    """SCRIPT in a forked child that dropped to uid 65534.

    Forked, not exec'd: the interpreter may live where that user cannot execute it (a pyenv
    build under /root, behind a venv's symlink).
    """
    # Import here what the child will need: as uid 65534 it may not read the standard library.
    import email.utils

    import urllib3

    import lambda_analytics.spool

    with contextlib.suppress(urllib3.exceptions.HTTPError):  # lazy imports of a real request
        urllib3.PoolManager().request("GET", host, retries=False, timeout=2.0)
    assert email.utils and lambda_analytics.spool
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.chdir("/")
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                sys.argv = ["-c", str(spool), host, *ids]
                exec(SCRIPT, {"__name__": "__main__"})
            os.write(write, out.getvalue().encode())
            code = 0
        except BaseException:
            os.write(write, traceback.format_exc().encode())
        finally:
            os._exit(code)
    os.close(write)
    data = b""
    while chunk := os.read(read, 65536):
        data += chunk
    os.close(read)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, data.decode()
    result: list[Any] = json.loads(data)
    return result


def run_script(spool: Path, host: str, ids: list[str], **popen: Any) -> list[Any]:
    if popen.pop("as_nobody", False):
        return run_as_nobody(spool, host, ids)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(spool), host, *ids],
        capture_output=True, text=True, env=env, timeout=60, check=False, **popen,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr  # never an exception out of a call or flush()
    result: list[Any] = json.loads(done.stdout)
    return result


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() with the collector's thread
def test_permission_denied_is_reported(collector: Collector) -> None:
    """Real EACCES: a 0500 directory, written by uid 65534 when the tests run as root."""
    base = Path(tempfile.mkdtemp(prefix="spool-eacces-"))
    try:
        base.chmod(0o711)
        spool = base / "spool"
        spool.mkdir(mode=0o700)
        popen: dict[str, Any] = {}
        if ROOT:
            os.chown(spool, NOBODY, NOBODY)
            popen = {"as_nobody": True}
        assert run_script(spool, DOWN, ["old-1"], **popen)[:3] == [0, 0, 1]
        spool.chmod(0o500)
        sent, failed, spooled, reports = run_script(spool, collector.url, ["new-1"], **popen)
        assert (sent, failed, spooled) == (1, 0, 0) and collector.message_ids() == ["new-1"]
        assert [r[0] for r in reports] == ["SpoolError"] and "Permission denied" in reports[0][1]
        sent, failed, spooled, reports = run_script(spool, DOWN, ["down-1", "down-2"], **popen)
        assert (sent, failed, spooled) == (0, 2, 0)
        assert ["SpoolError", ["down-1", "down-2"]] in [[r[0], r[2]] for r in reports]
        assert any("Permission denied" in r[1] for r in reports)
        assert len(os.listdir(spool)) == 1  # the old file is kept for later, nothing added
    finally:
        (base / "spool").chmod(0o700)
        shutil.rmtree(base)


def test_a_half_written_file_is_removed(tmp_path: Path) -> None:
    """Real: the file size limit (RLIMIT_FSIZE) stops the write half way with EFBIG."""
    import resource

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))

    spool = tmp_path / "spool"
    sent, failed, spooled, reports = run_script(
        spool, DOWN, ["a", "b", "c"], preexec_fn=limit
    )  # 3 x 30 KB: the first 40 KB are written, then the write fails
    assert (sent, failed, spooled) == (0, 3, 0)
    assert [[r[0], r[2]] for r in reports] == [["SpoolError", ["a", "b", "c"]]]
    assert "File too large" in reports[0][1]
    assert names(spool) == []


# -- every step, with an injected error ----------------------------------------------------------


class FaultyOS:
    """The ``os`` module, as the spool module sees it, with some functions replaced."""

    def __init__(self, **replaced: Callable[..., Any]) -> None:
        self.__dict__.update(replaced)

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def failing(code: int, real: Callable[..., Any], when: Callable[..., bool] = lambda *a, **k: True,
            after: int = 0) -> Callable[..., Any]:  # fmt: skip
    """``real``, raising ``OSError(code)`` for calls that match ``when``, from the one after
    ``after`` matching calls on."""
    seen = [0]

    def replaced(*args: Any, **kwargs: Any) -> Any:
        if when(*args, **kwargs):
            seen[0] += 1
            if seen[0] > after:
                raise OSError(code, os.strerror(code), args[0] if args else None)
        return real(*args, **kwargs)

    return replaced


def creating(*args: Any, **kwargs: Any) -> bool:
    return bool(len(args) > 1 and args[1] & os.O_CREAT)


def reading(*args: Any, **kwargs: Any) -> bool:
    return "dir_fd" in kwargs and not creating(*args)


WRITE_STEPS: dict[str, tuple[str, Callable[[], Callable[..., Any]], str]] = {
    "open the directory": (
        "open",
        lambda: failing(errno.EACCES, os.open, lambda *a, **k: "dir_fd" not in k),
        "Permission denied",
    ),
    "create the file": (
        "open",
        lambda: failing(errno.EROFS, os.open, creating),
        "Read-only file system",
    ),
    "fsync the file": (
        "fsync",
        lambda: failing(errno.ENOSPC, os.fsync),
        "No space left on device",
    ),
    "rename into place": (
        "replace",
        lambda: failing(errno.EROFS, os.replace),
        "Read-only file system",
    ),
    "check the directory": ("geteuid", lambda: lambda: NOBODY + 1, "belongs to uid"),
}


@pytest.mark.parametrize("step", list(WRITE_STEPS))
def test_an_error_while_spooling_is_reported_with_the_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    name, make, text = WRITE_STEPS[step]
    reports: Reports = []
    analytics = client(DOWN, tmp_path, reports)  # constructed before the fault
    monkeypatch.setattr(spool_module, "os", FaultyOS(**{name: make()}))
    for mid in ("a", "b"):
        analytics.track(user_id="u", event="e", message_id=mid)
    summary = analytics.flush(timeout=0.3)
    assert (summary.failed, summary.spooled) == (2, 0)
    assert any(
        "could not spool 2 messages" in str(e) and ids == ["a", "b"]
        for e, ids in spool_errors(reports)
    )
    assert all(text in str(e) for e, _ in spool_errors(reports))
    assert names(tmp_path) == []  # no temporary file left


CLAIM_STEPS: dict[str, tuple[str, Callable[[], Callable[..., Any]], str]] = {
    "list the directory": (
        "scandir",
        lambda: failing(errno.EIO, os.scandir),
        "could not claim spooled messages: Input/output error",
    ),
    "rename to claim": (
        "rename",
        lambda: failing(errno.EROFS, os.rename),
        "could not claim spooled messages: Read-only file system",
    ),
}


@pytest.mark.parametrize("step", list(CLAIM_STEPS))
def test_an_error_while_claiming_keeps_the_files_and_sends_the_rest(
    tmp_path: Path, collector: Collector, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    name, make, text = CLAIM_STEPS[step]
    Spool(tmp_path).write([wire("old")])
    reports: Reports = []
    analytics = client(collector.url, tmp_path, reports)
    monkeypatch.setattr(spool_module, "os", FaultyOS(**{name: make()}))
    analytics.track(user_id="u", event="e", message_id="new")
    assert analytics.flush(timeout=1).sent == 1 and collector.message_ids() == ["new"]
    [(error, ids)] = spool_errors(reports)
    assert str(error).startswith(text) and ids == []
    monkeypatch.undo()
    assert analytics.flush(timeout=1).sent == 1  # the old one, once the fault is gone
    assert collector.message_ids() == ["new", "old"] and names(tmp_path) == []


def test_an_error_while_reading_sets_the_file_aside(
    tmp_path: Path, collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    Spool(tmp_path).write([wire("old")])
    reports: Reports = []
    analytics = client(collector.url, tmp_path, reports)
    monkeypatch.setattr(spool_module, "os", FaultyOS(open=failing(errno.EIO, os.open, reading)))
    analytics.track(user_id="u", event="e", message_id="new")
    assert analytics.flush(timeout=1).sent == 1 and collector.message_ids() == ["new"]
    [(error, ids)] = spool_errors(reports)
    assert "set aside" in str(error) and "Input/output error" in str(error) and ids == []
    assert [p.suffix for p in tmp_path.iterdir()] == [CORRUPT]


def test_a_recursion_error_while_reading_sets_the_file_aside(
    tmp_path: Path, collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    Spool(tmp_path).write([wire("old")])

    class DeepJSON:
        @staticmethod
        def loads(*args: Any, **kwargs: Any) -> Any:
            raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(spool_module, "json", DeepJSON)
    summary, reports = send(collector.url, tmp_path, ["new"])
    assert summary.sent == 1 and collector.message_ids() == ["new"]
    assert "nested too deeply" in str(spool_errors(reports)[0][0])
    assert [p.suffix for p in tmp_path.iterdir()] == [CORRUPT]


def test_an_error_while_setting_aside_is_reported(
    tmp_path: Path, collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    plant(tmp_path, "00000000000000000001-1-bad" + READY, [b"not json"])
    reports: Reports = []
    analytics = client(collector.url, tmp_path, reports)
    monkeypatch.setattr(spool_module, "os", FaultyOS(replace=failing(errno.EROFS, os.replace)))
    analytics.track(user_id="u", event="e", message_id="new")
    assert analytics.flush(timeout=1).sent == 1 and collector.message_ids() == ["new"]
    [(error, _)] = spool_errors(reports)
    assert "could not be set aside: Read-only file system" in str(error)


def test_an_error_while_releasing_is_reported_and_nothing_is_lost(
    tmp_path: Path, collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    Spool(tmp_path).write([wire("old")])
    reports: Reports = []
    analytics = client(collector.url, tmp_path, reports)
    monkeypatch.setattr(spool_module, "os", FaultyOS(unlink=failing(errno.EROFS, os.unlink)))
    summary = analytics.flush(timeout=1)
    assert (summary.sent, summary.failed) == (1, 0) and collector.message_ids() == ["old"]
    [(error, ids)] = spool_errors(reports)
    assert str(error).startswith(
        "could not delete 1 claimed spool files, so their messages may be sent again after "
        "300 s: Read-only file system"
    )
    assert ids == []
    assert len(names(tmp_path)) == 1  # still claimed: taken over after stale_after


def test_an_error_while_enforcing_the_bound_keeps_what_was_spooled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reports: Reports = []
    analytics = client(DOWN, tmp_path, reports)
    # The first listing is the claim's, the second the bound's.
    monkeypatch.setattr(spool_module, "os", FaultyOS(scandir=failing(errno.EIO, os.scandir,
                                                                     after=1)))  # fmt: skip
    analytics.track(user_id="u", event="e", message_id="a")
    summary = analytics.flush(timeout=0.3)
    assert (summary.failed, summary.spooled) == (0, 1)
    [(error, ids)] = spool_errors(reports)
    assert "could not keep the spool within 50000000 bytes: Input/output error" in str(error)
    assert ids == []
