"""lambda_analytics.testing: the capture, its assertions, the pytest plugin in a user project."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import lambda_analytics
from lambda_analytics import Analytics, DeliveryError, with_analytics
from lambda_analytics.collector import Collector
from lambda_analytics.testing import CaptureTransport, EventCapture, capture

HERE = Path(__file__).resolve().parent
PROJECT = HERE / "plugin_project"
UNREACHABLE = "http://127.0.0.1:9"  # nothing listens: a message sent for real would fail


@pytest.fixture(autouse=True)
def no_default_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts without a default client and leaves the process as it found it."""
    monkeypatch.setattr(lambda_analytics.default, "_client", None)
    for name in [name for name in os.environ if name.startswith("ANALYTICS_")]:
        monkeypatch.delenv(name)


def unreachable_client(**settings: Any) -> Analytics:
    return Analytics("real-key", host=UNREACHABLE, **settings)


# -- the capture, in process ----------------------------------------------------------------


def test_default_client_goes_through_the_pipeline_into_the_capture() -> None:
    with capture() as events:
        result = lambda_analytics.track(user_id=42, event="Signed Up", properties={"n": (1, 2)})
        lambda_analytics.identify(anonymous_id="a1", traits={"at": dt.date(2024, 5, 1)})

    assert result.delivered  # the client saw a 200, as from a server
    assert [m["type"] for m in events.messages] == ["track", "identify"]
    track = events.events[0]
    assert track["userId"] == "42"  # converted by the real pipeline
    assert track["properties"] == {"n": [1, 2]}
    assert track["context"]["library"]["name"] == "lambda_analytics"
    assert len(track["messageId"]) == 36 and track["timestamp"].endswith("Z")
    request = events.requests[0]
    assert request.headers["Authorization"] == "<redacted>"
    assert request.payload["writeKey"] == "test-write-key" and "sentAt" in request.payload
    events.assert_identified(anonymous_id="a1", traits={"at": dt.date(2024, 5, 1)})
    assert lambda_analytics.default.current() is None  # put back


def test_bare_with_analytics_and_get_client_use_the_capture() -> None:
    @with_analytics
    def handler(event: dict[str, Any], context: Any) -> str:
        lambda_analytics.track(user_id=event["user"], event="Invoked")
        return "ok"

    with capture() as events:
        assert handler({"user": "u1"}, None) == "ok"
        assert events.client is lambda_analytics.get_client()

    events.assert_tracked("Invoked", user_id="u1")


def test_an_existing_default_client_keeps_its_middleware_and_is_restored() -> None:
    app_client = lambda_analytics.configure(write_key="real-key", host=UNREACHABLE)
    transport = app_client._engine.route.transport
    app_client.add_middleware(lambda m: {**m, "context": {**m["context"], "app": "shop"}})

    with capture() as events:
        assert events.client is app_client
        lambda_analytics.track(user_id="u1", event="Viewed")

    events.assert_tracked("Viewed", context={"app": "shop"})
    assert (
        lambda_analytics.default.current() is app_client
        and app_client._engine.route.transport is transport
    )


def test_attach_captures_a_module_client_then_restores_it() -> None:
    module_client = unreachable_client(flush_at=10, disable=True, gzip=True)
    transport = module_client._engine.route.transport

    with capture() as events:
        events.attach(module_client)
        module_client.track(user_id="u1", event="Queued")  # flush_at=10: waits in the queue
        with pytest.raises(AssertionError, match=r"queued in Analytics\(.*call flush\(\)"):
            events.assert_tracked("Queued")
    # Leaving the capture flushed the queue into it, never to the network.
    events.assert_tracked("Queued", user_id="u1")
    assert events.requests[0].headers["Content-Encoding"] == "gzip"
    assert module_client._engine.route.transport is transport and module_client.disable is True
    assert module_client.stats.queued == 0


def test_configure_during_the_capture_is_captured_and_undone() -> None:
    configure = lambda_analytics.configure
    with capture() as events:
        client = lambda_analytics.configure(write_key="real-key", host=UNREACHABLE)
        lambda_analytics.track(user_id="u1", event="After Configure")
        assert events.client is client
    events.assert_tracked("After Configure")
    assert lambda_analytics.configure is configure
    assert (
        lambda_analytics.default.current() is None
        and client._engine.route.transport is not events.transport
    )


def test_fail_next_reaches_on_error_and_is_reported() -> None:
    failures: list[tuple[DeliveryError, list[dict[str, Any]]]] = []
    client = unreachable_client(on_error=lambda error, messages: failures.append((error, messages)))
    with capture(client) as events:
        events.fail_next(400)
        result = client.track(user_id="u1", event="Rejected")
        client.track(user_id="u1", event="Accepted")

    assert not result.delivered and "HTTP 400" in str(result.error)
    assert [m["event"] for _, ms in failures for m in ms] == ["Rejected"]
    assert events.event_names == ["Accepted"]
    assert [r.status for r in events.requests] == [400, 200]
    with pytest.raises(AssertionError, match=r"1 request\(s\) answered with an error status"):
        events.assert_tracked("Rejected")


def test_assertions_match_subsets_and_count() -> None:
    with capture() as events:
        for sku in ("tee", "mug"):
            lambda_analytics.track(user_id="u1", event="Product Added", properties={"sku": sku})
        lambda_analytics.page(anonymous_id="a1", name="Home", properties={"path": "/"})
        lambda_analytics.group(user_id="u1", group_id=7, traits={"seats": 3})

    events.assert_tracked("Product Added", times=2)
    mug = events.assert_tracked("Product Added", properties={"sku": "mug"}, times=1)
    assert mug["properties"] == {"sku": "mug"}
    events.assert_sent("page", name="Home", properties={"path": "/"})
    events.assert_sent("group", group_id=7, traits={"seats": 3})
    events.assert_not_tracked("Order Completed")
    events.assert_not_tracked("Product Added", properties={"sku": "hat"})
    assert len(events.tracked()) == 2 and events.tracked("Product Added", user_id="u2") == []
    assert events.find("page", name="Home") == [events.messages[2]]
    with pytest.raises(AssertionError, match="2 times, found 1"):
        events.assert_tracked("Product Added", properties={"sku": "tee"}, times=2)
    with pytest.raises(TypeError, match="unknown criterion 'userId'"):
        events.find("track", userId="u1")
    events.clear()
    assert events.messages == [] and events.requests == []


def test_a_failed_assertion_shows_what_was_captured() -> None:
    with capture() as events:
        lambda_analytics.identify(user_id="u1", traits={"plan": "pro"})
        lambda_analytics.track(user_id="u1", event="Order Completed", properties={"revenue": 9.99})

    with pytest.raises(AssertionError) as failure:
        events.assert_tracked("Order Completed", user_id="u1", properties={"revenue": 10})
    assert str(failure.value) == textwrap.dedent(
        """\
        expected a track 'Order Completed' with user_id='u1', properties containing {'revenue': 10}
        captured 2 messages:
          1. identify userId='u1' traits={'plan': 'pro'}
          2. track 'Order Completed' userId='u1' properties={'revenue': 9.99}
               differs: properties.revenue: expected 10, got 9.99"""
    )
    with pytest.raises(AssertionError, match=r"expected no track 'Order Completed', found 1"):
        events.assert_not_tracked("Order Completed")


def test_capturing_nothing_says_how_to_attach_a_client() -> None:
    with capture() as events, pytest.raises(AssertionError) as failure:
        events.assert_tracked("Anything")
    assert "captured nothing." in str(failure.value)
    assert "analytics_events.attach(your_module.analytics)" in str(failure.value)


def test_the_capture_transport_is_usable_directly() -> None:
    transport = CaptureTransport()
    with Analytics("k", transport=transport, flush_at=3) as client:
        for n in range(3):
            client.track(user_id="u", event=f"E{n}")
    assert [m["event"] for m in transport.messages] == ["E0", "E1", "E2"]
    assert len(transport.requests) == 1
    assert "E0" in repr(EventCapture(transport))


def test_unittest_style() -> None:
    import unittest

    class CheckoutTest(unittest.TestCase):
        def setUp(self) -> None:
            self.events = EventCapture().start()
            self.addCleanup(self.events.stop)

        def test_it(self) -> None:
            lambda_analytics.track(user_id="u1", event="From Unittest")
            self.events.assert_tracked("From Unittest")

    result = unittest.TextTestRunner(stream=open(os.devnull, "w")).run(CheckoutTest("test_it"))  # noqa: SIM115
    assert result.wasSuccessful()
    assert lambda_analytics.default.current() is None


# -- the pytest plugin, in a user project -----------------------------------------------------


def run_pytest(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ANALYTICS_", "PYTEST_"))}
    base.update(PYTHONDONTWRITEBYTECODE="1", **(env or {}))
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *map(str, args)]
    return subprocess.run(
        command, check=False, capture_output=True, text=True, env=base, timeout=60
    )


def test_the_plugin_project_passes_without_any_network() -> None:
    with Collector(write_key="real-key") as collector:
        # Were anything sent for real, it would reach this collector.
        env = {"ANALYTICS_WRITE_KEY": "real-key", "ANALYTICS_HOST": collector.url}
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # only what -p loads: no reinstall needed
        result = run_pytest("-p", "lambda_analytics.testing", PROJECT, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "5 passed" in result.stdout
        assert collector.request_count == 0


def test_a_failing_user_test_shows_what_was_captured(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_wrong.py").write_text(
        textwrap.dedent(
            """\
            import os

            import lambda_analytics
            from lambda_analytics import Analytics


            def test_wrong_revenue(analytics_events):
                lambda_analytics.identify(user_id="u1", traits={"plan": "pro"})
                lambda_analytics.track(
                    user_id="u1", event="Order Completed", properties={"revenue": 9.99}
                )
                analytics_events.assert_tracked(
                    "Order Completed", user_id="u1", properties={"revenue": 10}
                )


            def test_forgot_to_attach(analytics_events):
                mine = Analytics("real-key", host=os.environ["COLLECTOR_URL"])
                mine.track(user_id="u1", event="Signed Up")
                analytics_events.assert_tracked("Signed Up")
            """
        )
    )
    with Collector() as collector:
        env = {"COLLECTOR_URL": collector.url, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
        result = run_pytest("-p", "lambda_analytics.testing", tmp_path, env=env)
    output = result.stdout
    assert result.returncode == 1, output + result.stderr
    assert "2 failed" in output
    assert (
        "expected a track 'Order Completed' with user_id='u1', properties containing "
        "{'revenue': 10}" in output
    )
    assert "1. identify userId='u1' traits={'plan': 'pro'}" in output
    assert "2. track 'Order Completed' userId='u1' properties={'revenue': 9.99}" in output
    assert "differs: properties.revenue: expected 10, got 9.99" in output
    assert "captured nothing." in output and "analytics_events.attach(" in output
    # The helpers' frames are hidden.
    assert "lambda_analytics/testing.py" not in output
    assert "lambda_analytics/_assertions.py" not in output


def test_the_entry_point_loads_the_plugin(tmp_path: Path) -> None:
    """What the pyproject entry point installs, simulated: no reinstall of the package needed.

    The entry point's name is the module's, so ``-p lambda_analytics.testing`` along with the
    installed entry point loads the plugin once, instead of failing as registered twice.
    """
    dist = tmp_path / "lambda_analytics_entry_point-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: lambda-analytics-entry-point\nVersion: 0\n"
    )
    (dist / "entry_points.txt").write_text(
        "[pytest11]\nlambda_analytics.testing = lambda_analytics.testing\n"
    )
    env = {"PYTHONPATH": str(tmp_path), "ANALYTICS_WRITE_KEY": "real-key"}
    env["ANALYTICS_HOST"] = UNREACHABLE
    skip = ("-p", "no:hypothesispytest", "-p", "no:anyio")  # slow and unused here
    by_entry_point = run_pytest(*skip, PROJECT, env=env)
    assert by_entry_point.returncode == 0, by_entry_point.stdout + by_entry_point.stderr
    both = run_pytest(*skip, "-p", "lambda_analytics.testing", PROJECT, "-k", "sign_up", env=env)
    assert both.returncode == 0, both.stdout + both.stderr


def test_importing_the_package_loads_neither_the_plugin_nor_the_cli() -> None:
    code = "import json, sys, lambda_analytics; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    loaded = json.loads(result.stdout)
    assert "lambda_analytics.client" in loaded
    assert "lambda_analytics.testing" not in loaded and "lambda_analytics.cli" not in loaded
    assert "pytest" not in loaded
