"""One client shared by threads, and a client that forks: nothing lost, nothing sent twice.

* 8 threads share one client for 10,000 events (flush_at=1 and flush_at=50): the collector gets
  every messageId exactly once, each thread's events in the order it made them, and every
  callback runs once.
* A client holding queued events forks: the parent's queue goes out once, from the parent; the
  child starts empty, on connections of its own, and sends only its own events.  A fork while
  another thread is inside a flush (holding the client's lock) must not deadlock the child.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fault_server import FaultServer

from lambda_analytics import Analytics, CallResult, DeliveryError, RetryPolicy
from lambda_analytics.collector import Collector

KEY = "concurrency-write-key"
FAST = RetryPolicy(backoff_initial=0.001, backoff_max=0.005)
THREADS, EVENTS = 8, 10_000

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is not available")


@pytest.fixture
def collector() -> Iterator[Collector]:
    with Collector(write_key=KEY) as server:
        yield server


# -- threads ----------------------------------------------------------------------------------


@pytest.mark.parametrize("flush_at", [1, 50])
def test_eight_threads_share_one_client_without_loss_or_duplicates(
    collector: Collector, flush_at: int
) -> None:
    analytics = Analytics(KEY, host=collector.url, flush_at=flush_at, retry=FAST)
    callbacks: Counter[str] = Counter()
    errors: list[DeliveryError] = []
    lock = threading.Lock()

    def callback(error: DeliveryError | None, message: dict[str, Any]) -> None:
        with lock:
            callbacks[message["messageId"]] += 1
            if error is not None:
                errors.append(error)

    results: list[list[CallResult]] = [[] for _ in range(THREADS)]
    start = threading.Barrier(THREADS)
    crashed: list[BaseException] = []

    def work(n: int) -> None:
        try:
            start.wait()
            for i in range(EVENTS // THREADS):
                results[n].append(
                    analytics.track(
                        user_id=f"thread-{n}",
                        event="Shared",
                        properties={"i": i},
                        callback=callback,
                    )
                )
        except BaseException as exc:
            crashed.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not crashed and not any(t.is_alive() for t in threads)
    summary = analytics.flush()
    assert summary.failed == 0 and not errors

    sent = [r.message_id for rs in results for r in rs]
    received = collector.message_ids()
    assert len(sent) == len(set(sent)) == EVENTS
    assert Counter(received).most_common(1)[0][1] == 1  # no duplicate sends
    assert set(received) == set(sent)  # no loss
    assert callbacks == Counter(sent)  # one callback each
    assert all(r.error is None and (r.delivered or r.queued) for rs in results for r in rs)
    stats = analytics.stats
    assert (stats.sent, stats.failed, stats.queued) == (EVENTS, 0, 0)
    requests = collector.requests
    assert all(r.status == 200 for r in requests)
    sizes = [len(r.payload["batch"]) for r in requests]  # type: ignore[index]
    assert max(sizes) <= flush_at and sum(sizes) == EVENTS
    if flush_at == 1:
        assert len(requests) == EVENTS
        assert all(r.delivered for rs in results for r in rs)
    order: dict[str, list[int]] = {}
    for message in collector.messages:
        order.setdefault(message["userId"], []).append(message["properties"]["i"])
    if flush_at == 1:  # each call returns once delivered: a thread's events arrive in order
        assert all(seq == list(range(EVENTS // THREADS)) for seq in order.values())
    else:  # batches are sent outside the lock, side by side: order is in the timestamps
        assert all(sorted(seq) == list(range(EVENTS // THREADS)) for seq in order.values())
    analytics.close()


# -- fork -------------------------------------------------------------------------------------


def in_child(body: Callable[[], dict[str, Any]], timeout: float = 15.0) -> dict[str, Any]:
    """Run ``body`` in a forked child; its JSON result, or a failure if it crashed or hung."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.close(read_end)
            report = json.dumps(body()).encode()
            code = 0
        except BaseException:
            report = json.dumps({"crash": traceback.format_exc()}).encode()
        finally:
            os.write(write_end, report)
            os._exit(code)
    os.close(write_end)
    deadline, status = time.monotonic() + timeout, None
    while status is None and time.monotonic() < deadline:
        done, raw = os.waitpid(pid, os.WNOHANG)
        status = raw if done else None
        time.sleep(0.01)
    if status is None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_end)
        pytest.fail(f"the forked child hung for {timeout} s (a lock inherited held?)")
    with os.fdopen(read_end, "rb") as pipe:
        output = pipe.read()
    report: dict[str, Any] = json.loads(output or b"{}")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, report.get("crash", report)
    return report


@needs_fork
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12+: fork() with threads running
def test_a_forked_child_does_not_resend_the_parents_queue(collector: Collector) -> None:
    analytics = Analytics(KEY, host=collector.url, flush_at=100, retry=FAST)
    warm = analytics.track(user_id="parent", event="Before fork")
    assert analytics.flush().sent == 1  # a pooled keep-alive connection now exists
    [warm_request] = collector.requests
    queued = [analytics.track(user_id="parent", event="Queued").message_id for _ in range(10)]
    assert analytics.stats.queued == 10

    def child() -> dict[str, Any]:
        inherited = analytics.stats.queued
        ids = [analytics.track(user_id="child", event="Child").message_id for _ in range(5)]
        summary = analytics.flush(timeout=5)
        return {"inherited": inherited, "ids": ids, "sent": summary.sent}

    report = in_child(child)
    assert report["inherited"] == 0  # the child starts with an empty queue
    assert report["sent"] == 5
    child_ids = report["ids"]

    assert analytics.stats.queued == 10  # the parent still holds its queue
    assert analytics.flush(timeout=5).sent == 10
    received = Counter(collector.message_ids())
    assert received == Counter([warm.message_id, *queued, *child_ids])  # each exactly once
    batches = [
        ({m["messageId"] for m in r.payload["batch"]}, r.connection_id)  # type: ignore[index]
        for r in collector.requests
    ]
    assert (set(child_ids), batches[1][1]) == batches[1]  # the child's own request: only its ids
    assert batches[2][0] == set(queued)  # the parent's queue: once, from the parent
    assert batches[1][1] != warm_request.connection_id  # the child did not use the parent's socket
    assert all(r.status == 200 for r in collector.requests)


@needs_fork
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_fork_while_another_thread_is_mid_flush(tmp_path: Any) -> None:
    with FaultServer(slow=1.5, max_lifetime=30) as server:
        server.script("slow")  # the parent's flush waits 1.5 s for its answer, lock held
        analytics = Analytics(KEY, host=server.url, flush_at=100, timeout=5, retry=FAST)
        parent_ids = [analytics.track(user_id="p", event="Slow").message_id for _ in range(3)]
        flushed: list[int] = []
        flusher = threading.Thread(target=lambda: flushed.append(analytics.flush().sent))
        flusher.start()
        deadline = time.monotonic() + 5
        while server.requests < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert server.requests == 1 and flusher.is_alive()  # inside send(), holding the lock

        def child() -> dict[str, Any]:
            mid = analytics.track(user_id="c", event="Forked").message_id
            return {"id": mid, "sent": analytics.flush(timeout=5).sent}

        report = in_child(child, timeout=10)
        flusher.join(10)
        assert report["sent"] == 1 and flushed == [3]
        assert server.accepted == Counter([*parent_ids, report["id"]])


@needs_fork
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_fork_while_another_thread_holds_the_connection_pool_lock(collector: Collector) -> None:
    # The at-fork handler resets the transport: PoolManager.clear() takes urllib3's pool lock.
    # A thread that held it at the moment of fork (it does, briefly, on every request) leaves it
    # held forever in the child, which then hangs inside os.fork() itself.  Holding the lock on
    # purpose makes that race certain.
    analytics = Analytics(KEY, host=collector.url, retry=FAST)
    assert analytics.track(user_id="p", event="Warm").delivered
    pool = getattr(analytics._engine.route.transport, "_pool", None)
    lock = getattr(getattr(pool, "pools", None), "lock", None)
    assert lock is not None, "the transport no longer keeps a urllib3 PoolManager"
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            release.wait(20)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    try:
        report = in_child(
            lambda: {"delivered": analytics.track(user_id="c", event="Forked").delivered},
            timeout=5,
        )
    finally:
        release.set()
        holder.join(5)
    assert report["delivered"]
