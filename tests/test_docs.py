"""Every Python snippet of the README and of ``docs/`` runs, against the local collector.

Snippets that need a platform run against a stand-in for that platform's module (``workers``
for Cloudflare, ``functions_framework`` for Cloud Functions), so that a snippet which forgets an
import, or calls the platform wrongly, fails here; the real runtimes run them too
(tests/test_cloudflare_worker.py under Pyodide). The OAuth snippet gets its token from the real
OAuth server (oidc-provider). The Spark snippet needs a Spark session: tests/test_spark.py runs
it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import types
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import WRITE_KEY
from docs_snippets import ROOT, Snippet, blocks
from oauth_server import OAuthServer, oauth_server_fixture

import lambda_analytics
from lambda_analytics import oauth
from lambda_analytics import settings as settings_module
from lambda_analytics.collector import Collector

oauth_server = oauth_server_fixture(scope="module")

PYTHON = blocks()
ELSEWHERE = {"lambda_analytics.spark": "tests/test_spark.py"}  # marker -> the test file running it
WORKERS = [s for s in PYTHON if "from workers import" in s.code]
CLOUD_FUNCTIONS = [s for s in PYTHON if "functions_framework" in s.code]
OAUTH = [s for s in PYTHON if "OAuthSettings(" in s.code]
PLAIN = [
    s
    for s in PYTHON
    if s not in WORKERS + CLOUD_FUNCTIONS + OAUTH and not any(m in s.code for m in ELSEWHERE)
]
LOCAL_COLLECTOR = "http://127.0.0.1:8765"  # what the docs tell readers to start


def ids(snippets: list[Snippet]) -> list[str]:
    return [s.where for s in snippets]


@pytest.fixture
def docs_world(
    collector: Collector, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Callable[[str], str]]:
    """The collector stands in for both regions' APIs; a snippet's text is adapted by the
    returned function (the placeholder key, the collector's address, a private spool)."""
    monkeypatch.setattr(settings_module, "REGIONS", {"us": collector.url, "eu": collector.url})
    monkeypatch.setattr(lambda_analytics.default, "_client", None)
    monkeypatch.setenv("ANALYTICS_WRITE_KEY", WRITE_KEY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))  # the spool's per-user directory

    def adapt(code: str) -> str:
        code = code.replace("YOUR_WRITE_KEY", WRITE_KEY).replace("test-key", WRITE_KEY)
        code = code.replace(LOCAL_COLLECTOR, collector.url)
        return code.replace("/tmp/lambda_analytics-spool", str(tmp_path / "lambda-spool"))

    yield adapt


def run(snippet: Snippet, code: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "docs"}
    namespace["rows"] = [{"user": "u1", "at": dt.datetime(2024, 1, 1)}]  # a batch job's input
    exec(snippet.compiled(code), namespace)
    return namespace


@pytest.mark.parametrize("snippet", PLAIN, ids=ids(PLAIN))
def test_snippet_runs(
    snippet: Snippet, docs_world: Callable[[str], str], collector: Collector
) -> None:
    namespace = run(snippet, docs_world(snippet.code))
    if "def test_" in snippet.code:  # the pytest plugin's example: run its test, captured
        from lambda_analytics.testing import capture

        with capture() as events:
            namespace["test_checkout_tracks_the_order"](events)
        return
    if "def handler" in snippet.code:
        event = {"user": "u1", "total": 9.99, "requestContext": {"http": {"sourceIp": "1.2.3.4"}}}
        namespace["handler"](event, None)
    assert collector.rejected_count == 0
    assert collector.messages, "the snippet sent nothing"


# -- platforms, through stand-ins for their modules ----------------------------------------------


def stand_in(monkeypatch: pytest.MonkeyPatch, name: str, **attributes: Any) -> None:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    monkeypatch.setitem(sys.modules, name, module)


class WorkerEntrypoint:
    """The Workers SDK's entry point: ``ctx`` and ``env`` given by the runtime."""

    def __init__(self, ctx: Any, env: Any) -> None:
        self.ctx = ctx
        self.env = env


class Response:
    def __init__(self, body: str, status: int = 200) -> None:
        self.body = body
        self.status = status


class ExecutionContext:
    """``ctx``: ``waitUntil`` work is kept to be awaited after the response, as the runtime does."""

    def __init__(self) -> None:
        self.pending: list[Awaitable[Any]] = []

    def waitUntil(self, work: Awaitable[Any]) -> None:  # the runtime names it so
        self.pending.append(work)


def serve_worker(snippet: Snippet, code: str, collector: Collector) -> Response:
    """One request to the snippet's Worker; ``waitUntil`` work is awaited after the response."""
    namespace = run(snippet, code)
    ctx = ExecutionContext()
    env = types.SimpleNamespace(ANALYTICS_WRITE_KEY=WRITE_KEY)

    async def request() -> Response:
        response: Response = await namespace["Default"](ctx, env).fetch(object())
        assert isinstance(response, Response)
        sent_before_response = collector.message_count
        for work in ctx.pending:
            await work
        if ctx.pending:  # delivery after the response: nothing went before it
            assert sent_before_response == 0
        return response

    return asyncio.run(request())


def call_cloud_function(snippet: Snippet, code: str, user: str) -> object:
    """Load the snippet as functions-framework would, and call the function it registered."""
    registered: list[Callable[..., Any]] = []

    def http(function: Callable[..., Any]) -> Callable[..., Any]:
        registered.append(function)
        return function

    sys.modules["functions_framework"].http = http  # type: ignore[attr-defined]
    namespace = run(snippet, code)
    [function] = registered
    assert function is namespace["checkout"]
    return function(types.SimpleNamespace(args={"user": user}))


@pytest.fixture
def platforms(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-ins for the platforms' modules, only as much of them as the snippets use."""
    stand_in(monkeypatch, "workers", WorkerEntrypoint=WorkerEntrypoint, Response=Response)
    stand_in(monkeypatch, "functions_framework")


@pytest.mark.usefixtures("platforms")
@pytest.mark.parametrize("snippet", WORKERS, ids=ids(WORKERS))
def test_workers_snippet_runs_against_a_stand_in_runtime(
    snippet: Snippet, docs_world: Callable[[str], str], collector: Collector
) -> None:
    response = serve_worker(snippet, docs_world(snippet.code), collector)
    assert [m["type"] for m in collector.messages] == ["track", "identify"]
    assert len(collector.requests) == 1  # held, then one POST
    assert response.body in ("ok", "sent 2")


@pytest.mark.usefixtures("platforms")
def test_cloud_functions_snippet_runs_against_a_stand_in_framework(
    docs_world: Callable[[str], str], collector: Collector
) -> None:
    [snippet] = CLOUD_FUNCTIONS
    assert call_cloud_function(snippet, docs_world(snippet.code), "u7") == "ok"
    [message] = collector.messages
    assert (message["userId"], message["event"]) == ("u7", "Order Completed")


@pytest.mark.usefixtures("platforms")
@pytest.mark.parametrize("snippet", WORKERS + CLOUD_FUNCTIONS, ids=ids(WORKERS + CLOUD_FUNCTIONS))
def test_a_platform_snippet_without_one_of_its_imports_fails(
    snippet: Snippet, docs_world: Callable[[str], str], collector: Collector
) -> None:
    """What the stand-ins are for: each import line is needed, and its absence is caught."""
    code = docs_world(snippet.code)
    imports = [line for line in code.splitlines() if line.startswith(("import ", "from "))]
    assert imports
    for line in imports:
        broken = code.replace(line + "\n", "", 1)
        with pytest.raises(NameError):
            if snippet in WORKERS:
                serve_worker(snippet, broken, collector)
            else:
                call_cloud_function(snippet, broken, "u1")


def test_oauth_snippet_gets_a_token_from_a_real_server(
    docs_world: Callable[[str], str],
    oauth_server: OAuthServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    [snippet] = OAUTH
    (tmp_path / "private.pem").write_text(oauth_server.private_key_pem)
    monkeypatch.setattr(oauth, "AUTH_SERVERS", {"us": oauth_server.issuer})
    code = docs_world(snippet.code)
    code = code.replace("YOUR_OAUTH_APP_ID", oauth_server.client_id)
    code = code.replace("YOUR_KEY_ID", oauth_server.key_id)
    with Collector(write_key=WRITE_KEY, token_validator=oauth_server.introspect) as protected:
        monkeypatch.setattr(settings_module, "REGIONS", {"us": protected.url})
        analytics = run(snippet, code)["analytics"]
        assert analytics.track(user_id="u1", event="Signed In").delivered
        [request] = protected.requests
        assert request.headers["authorization"].startswith("Bearer ")
        assert protected.rejected_count == 0


# -- coverage of the pages themselves ------------------------------------------------------------


def test_every_python_snippet_is_run_by_a_test() -> None:
    elsewhere = [s for s in PYTHON if any(m in s.code for m in ELSEWHERE)]
    for snippet in elsewhere:
        [runner] = [ROOT / f for m, f in ELSEWHERE.items() if m in snippet.code]
        assert snippet.path.name in runner.read_text(), f"{runner} does not read {snippet.where}"
    assert len(WORKERS) == 2 and len(CLOUD_FUNCTIONS) == 1 and len(OAUTH) == 1
    assert len(PYTHON) >= 25, "snippets went missing from the docs"


@pytest.mark.parametrize("snippet", blocks(language="json"), ids=ids(blocks(language="json")))
def test_json_snippets_parse(snippet: Snippet) -> None:
    json.loads(snippet.code)
