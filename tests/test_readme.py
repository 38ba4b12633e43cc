"""The README's Python snippets run, against the local collector standing in for the API."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from conftest import WRITE_KEY

import lambda_analytics
from lambda_analytics import settings as client_module
from lambda_analytics.collector import Collector

README = Path(__file__).resolve().parent.parent / "README.md"
# Snippets that need a platform runtime or files of their own are run by their own tests.
NEEDS_ELSEWHERE = (
    "from workers",
    "functions_framework",
    "private.pem",
    "127.0.0.1:8765",
    "lambda_analytics.spark",  # run by tests/test_spark.py, on a Spark session
)
BLOCKS = [
    block
    for block in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    if not any(marker in block for marker in NEEDS_ELSEWHERE)
]


@pytest.mark.parametrize("block", BLOCKS, ids=[b.splitlines()[0][:40] for b in BLOCKS])
def test_readme_snippet_runs(
    block: str, collector: Collector, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(client_module, "REGIONS", {"us": collector.url, "eu": collector.url})
    monkeypatch.setattr(lambda_analytics.default, "_client", None)
    monkeypatch.setenv("ANALYTICS_WRITE_KEY", WRITE_KEY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))  # the spool's per-user directory
    code = block.replace("YOUR_WRITE_KEY", WRITE_KEY)
    code = code.replace("/tmp/lambda_analytics-spool", str(tmp_path / "lambda-spool"))
    namespace = {"rows": [{"user": "u1", "at": dt.datetime(2024, 1, 1)}], "__name__": "readme"}
    exec(compile(code, "README.md", "exec"), namespace)
    if "def test_" in code:  # the pytest plugin's example: run its test with the same capture
        from lambda_analytics.testing import capture

        with capture() as events:
            namespace["test_checkout_tracks_the_order"](events)
        return
    if "def handler" in code:
        event = {"user": "u1", "total": 9.99, "requestContext": {"http": {"sourceIp": "1.2.3.4"}}}
        namespace["handler"](event, None)
    assert collector.rejected_count == 0
    assert collector.messages, "the snippet sent nothing"
