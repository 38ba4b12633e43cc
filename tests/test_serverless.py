"""with_analytics on a real collector: deadlines, batching, context, warm reuse."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import FAST_RETRY, WRITE_KEY

import lambda_analytics
from lambda_analytics import (
    Analytics,
    DeadlineExceededError,
    DeliveryError,
    RetryPolicy,
    serverless,
)
from lambda_analytics.collector import Collector
from lambda_analytics.serverless import with_analytics
from lambda_analytics.transport import Urllib3Transport

MakeClient = Callable[..., Analytics]


class FakeLambdaContext:
    """Shaped like AWS Lambda's context: the remaining time counts down for real."""

    def __init__(self, seconds: float, request_id: str = "req-1") -> None:
        self.function_name = "checkout"
        self.aws_request_id = request_id
        self._deadline = time.monotonic() + seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serverless, "_started", threading.Event())
    for name in ("K_SERVICE", "FUNCTION_TARGET", "AWS_LAMBDA_INITIALIZATION_TYPE"):
        monkeypatch.delenv(name, raising=False)


def test_batch_sends_ten_calls_as_one_request_before_return(
    collector: Collector, make_client: MakeClient
) -> None:
    analytics = make_client()

    @with_analytics(analytics, batch=True)
    def handler(event: dict[str, Any], context: Any) -> int:
        for i in range(10):
            analytics.track(user_id="u", event=f"e{i}")
        assert collector.request_count == 0  # held until the handler ends
        return 7

    assert handler({}, FakeLambdaContext(5)) == 7
    assert collector.request_count == 1
    assert [m["event"] for m in collector.messages] == [f"e{i}" for i in range(10)]
    analytics.track(user_id="u", event="after")  # outside the invocation: flush_at=1 again
    assert collector.request_count == 2


def test_a_raising_handler_delivers_and_reraises_the_same_exception(
    collector: Collector, make_client: MakeClient
) -> None:
    analytics = make_client()
    boom = RuntimeError("boom")

    @with_analytics(analytics, batch=True)
    def handler(event: dict[str, Any], context: Any) -> None:
        analytics.track(user_id="u", event="Before Failure")
        raise boom

    with pytest.raises(RuntimeError) as caught:
        handler({}, FakeLambdaContext(5))
    assert caught.value is boom
    assert [m["event"] for m in collector.messages] == ["Before Failure"]


def test_async_handlers(collector: Collector, make_client: MakeClient) -> None:
    analytics = make_client()

    @with_analytics(analytics, batch=True)
    async def handler(event: dict[str, Any], context: Any) -> str:
        await asyncio.sleep(0)
        analytics.track(user_id="u", event="Async")
        analytics.identify(user_id="u")
        return "done"

    assert inspect.iscoroutinefunction(handler)
    assert asyncio.run(handler({}, FakeLambdaContext(5))) == "done"
    assert collector.request_count == 1 and len(collector.messages) == 2


def test_bare_decorator_uses_the_default_client(
    collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANALYTICS_WRITE_KEY", WRITE_KEY)
    monkeypatch.setenv("ANALYTICS_HOST", collector.url)
    monkeypatch.setenv("ANALYTICS_FLUSH_AT", "50")
    monkeypatch.setattr(lambda_analytics.default, "_client", None)

    @lambda_analytics.with_analytics
    def handler(event: dict[str, Any], context: Any) -> str:
        lambda_analytics.track(user_id="u", event="Bare")
        return "ok"

    assert handler.__name__ == "handler"
    assert handler({}, None) == "ok"
    assert [m["event"] for m in collector.messages] == ["Bare"]
    lambda_analytics.close()


def test_signature_and_metadata_are_kept() -> None:
    def handler(event: dict[str, Any], context: Any, *, flag: bool = False) -> int:
        """Docs."""
        return 1

    wrapped = with_analytics(Analytics(disable=True))(handler)
    assert inspect.signature(wrapped) == inspect.signature(handler)
    assert (wrapped.__name__, wrapped.__doc__, wrapped.__wrapped__) == ("handler", "Docs.", handler)  # type: ignore[attr-defined]


def test_lambda_deadline_governs_every_send_and_reports_the_rest(
    collector: Collector, make_client: MakeClient
) -> None:
    collector.fail_next(503, times=10_000)
    failures: list[tuple[DeliveryError, list[dict[str, Any]]]] = []
    analytics = make_client(
        retry=FAST_RETRY.replace(max_retries=10_000),
        on_error=lambda e, m: failures.append((e, m)),
    )

    @with_analytics(analytics, safety_margin=0.3)
    def handler(event: dict[str, Any], context: Any) -> str:
        analytics.track(user_id="u", event="Inside")  # flush_at=1: governed by the deadline too
        return "returned"

    started = time.monotonic()
    assert handler({}, FakeLambdaContext(1.0)) == "returned"
    elapsed = time.monotonic() - started
    assert 0.55 < elapsed < 0.85  # retried until 1.0 s remaining minus the 0.3 s margin (0.7 s)
    [(error, messages)] = failures
    assert isinstance(error, DeadlineExceededError)
    assert [m["event"] for m in messages] == ["Inside"]


def test_cloud_functions_budget_from_the_environment(
    collector: Collector, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("K_SERVICE", "checkout-fn")
    monkeypatch.setenv("CLOUD_RUN_TIMEOUT_SECONDS", "1")
    collector.fail_next(503, times=10_000)
    analytics = make_client(flush_at=10, retry=RetryPolicy(max_retries=10_000))

    @with_analytics(analytics, safety_margin=0.5, invocation_context=True)
    def function(request: object) -> str:
        analytics.track(user_id="u", event="GCF")
        return "ok"

    started = time.monotonic()
    assert function(object()) == "ok"
    assert time.monotonic() - started < 0.8
    assert analytics.stats.failed == 1


def test_timeout_argument_elsewhere(collector: Collector, make_client: MakeClient) -> None:
    collector.fail_next(503, times=10_000)
    analytics = make_client(retry=RetryPolicy(max_retries=10_000))

    @with_analytics(analytics, timeout=0.6, safety_margin=0.1)
    def job() -> None:
        analytics.track(user_id="u", event="Job")

    started = time.monotonic()
    job()
    assert time.monotonic() - started < 0.7
    assert analytics.stats.failed == 1


def test_invocation_context_and_cold_start(
    collector: Collector, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    analytics = make_client()

    @with_analytics(analytics, invocation_context=True)
    def handler(event: dict[str, Any], context: Any) -> None:
        analytics.track(user_id="u", event="E", context={"faas": {"custom": 1}})

    handler({}, FakeLambdaContext(5, "req-a"))
    handler({}, FakeLambdaContext(5, "req-b"))
    first, second = (m["context"]["faas"] for m in collector.messages)
    assert first == {
        "platform": "aws_lambda",
        "name": "checkout",
        "invocation_id": "req-a",
        "coldstart": True,
        "custom": 1,
    }
    assert second["coldstart"] is False and second["invocation_id"] == "req-b"
    analytics.track(user_id="u", event="Outside")
    assert "faas" not in collector.messages[-1]["context"]  # middleware removed after

    monkeypatch.setattr(serverless, "_started", threading.Event())
    monkeypatch.setenv("AWS_LAMBDA_INITIALIZATION_TYPE", "provisioned-concurrency")
    handler({}, FakeLambdaContext(5, "req-c"))
    assert collector.messages[-1]["context"]["faas"]["coldstart"] is False


def test_stable_message_ids_survive_a_retried_invocation(
    collector: Collector, make_client: MakeClient
) -> None:
    analytics = make_client()

    @with_analytics(analytics, stable_message_ids=True)
    def handler(event: dict[str, Any], context: Any) -> None:
        analytics.track(user_id="u", event="One")
        analytics.track(user_id="u", event="Two")
        analytics.track(user_id="u", event="Mine", message_id="explicit")

    handler({}, FakeLambdaContext(5, "req-same"))
    handler({}, FakeLambdaContext(5, "req-same"))  # Lambda retrying the same event
    handler({}, FakeLambdaContext(5, "req-other"))
    ids = collector.message_ids()
    assert ids[:3] == ids[3:6] and ids[2] == "explicit"
    assert ids[0] != ids[1] and set(ids[6:8]).isdisjoint(ids[:2])
    analytics.track(user_id="u", event="Random again")
    assert collector.message_ids()[-1] not in ids


def test_delivery_failure_never_changes_the_result(
    collector: Collector, make_client: MakeClient
) -> None:
    collector.fail_next(400)
    analytics = make_client()

    @with_analytics(analytics, batch=True)
    def handler(event: dict[str, Any], context: Any) -> dict[str, int]:
        analytics.track(user_id="u", event="Refused")
        return {"statusCode": 200}

    assert handler({}, FakeLambdaContext(5)) == {"statusCode": 200}
    assert analytics.stats.failed == 1


def test_warm_invocations_reuse_one_connection_and_survive_a_server_close(
    collector: Collector, make_client: MakeClient
) -> None:
    analytics = make_client()

    @with_analytics(analytics)
    def handler(event: dict[str, Any], context: Any) -> None:
        analytics.track(user_id="u", event="Warm")

    handler({}, FakeLambdaContext(5))
    handler({}, FakeLambdaContext(5))
    assert collector.connection_count == 1
    collector.close_idle_connections()  # what a load balancer does while the function is frozen
    handler({}, FakeLambdaContext(5))
    requests = collector.requests
    assert [r.status for r in requests] == [200, 200, 200]
    assert all("x-retry-count" not in r.headers for r in requests)  # delivered on the first try
    assert collector.connection_count == 2


def test_idle_connections_older_than_the_bound_are_dropped(collector: Collector) -> None:
    transport = Urllib3Transport(max_idle=0.0)
    analytics = Analytics(WRITE_KEY, host=collector.url, transport=transport)
    analytics.track(user_id="u", event="one")
    time.sleep(0.01)
    analytics.track(user_id="u", event="two")
    assert collector.connection_count == 2
    analytics.close()


def test_snapstart_hooks_drop_connections(
    collector: Collector, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    registered: dict[str, Callable[[], None]] = {}
    fake = types.ModuleType("snapshot_restore_py")
    fake.register_before_snapshot = lambda fn: registered.setdefault("before", fn)  # type: ignore[attr-defined]
    fake.register_after_restore = lambda fn: registered.setdefault("after", fn)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", fake)
    assert serverless.install_snapstart_hooks()
    analytics = make_client()
    analytics.track(user_id="u", event="before snapshot")
    registered["before"]()
    registered["after"]()
    analytics.track(user_id="u", event="after restore")
    assert collector.connection_count == 2


def test_mypy_keeps_the_handler_signature(tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="mypy is in the dev environment, not the test matrix")
    source = tmp_path / "typed_handler.py"
    source.write_text(
        textwrap.dedent(
            """
            from typing import Any
            from lambda_analytics import Analytics, with_analytics

            analytics = Analytics(disable=True)

            @with_analytics(analytics, batch=True)
            def handler(event: dict[str, Any], context: object) -> int:
                return 1

            @with_analytics
            async def bare(event: dict[str, Any], context: object) -> str:
                return "x"

            ok: int = handler({}, None)
            handler("not a dict", None)
            reveal_type(bare)
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    out = result.stdout
    assert 'Argument 1 to "handler" has incompatible type "str"' in out, out
    revealed = "def (event: dict[str, Any], context: object) -> typing.Coroutine[Any, Any, str]"
    assert revealed in out, out
    assert out.count("error:") == 1, out


def test_concurrent_invocations_keep_their_own_batch_deadline_and_context(
    collector: Collector, make_client: MakeClient
) -> None:
    analytics = make_client()
    both_halfway = threading.Barrier(2)

    @with_analytics(analytics, batch=True, invocation_context=True)
    def handler(event: dict[str, Any], context: Any) -> None:
        for i in range(5):
            analytics.track(user_id=event["user"], event=f"e{i}")
            if i == 2:
                both_halfway.wait(timeout=5)  # the two invocations interleave their calls

    threads = [
        threading.Thread(target=handler, args=({"user": user}, FakeLambdaContext(5, f"req-{user}")))
        for user in ("a", "b")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    batches = [r.payload["batch"] for r in collector.requests if r.payload]
    assert sorted(len(batch) for batch in batches) == [5, 5]  # one request per invocation
    for batch in batches:
        user = batch[0]["userId"]
        assert {m["userId"] for m in batch} == {user}
        assert {m["context"]["faas"]["invocation_id"] for m in batch} == {f"req-{user}"}


def test_calls_still_held_when_the_block_ends_are_not_lost(
    collector: Collector, make_client: MakeClient
) -> None:
    analytics = make_client(flush_at=10)
    with analytics.hold():
        analytics.track(user_id="u", event="held")
    assert collector.request_count == 0 and analytics.stats.queued == 1
    assert analytics.flush().sent == 1
