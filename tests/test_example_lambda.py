"""The AWS Lambda example: template.yaml checked by cfn-lint, the handler run by a real runner.

``python-lambda-local`` (PyPI) loads ``examples/aws_lambda/handler.py`` the way Lambda does,
in a child process, with a context whose ``get_remaining_time_in_millis()`` counts down from
``-t`` seconds and a SIGALRM that kills the invocation at that limit.  The handler sends to a
collector on 127.0.0.1.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import missing_prerequisite

from lambda_analytics.collector import Collector

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "aws_lambda"
HANDLER = EXAMPLE / "handler.py"
EVENT = EXAMPLE / "events" / "checkout.json"
TEMPLATE = ROOT / "template.yaml"
WRITE_KEY = "lambda-example-key"
PROCESS_LIMIT = 12.0  # seconds: a runner still alive then is killed and the test fails


def _tool(name: str) -> str | None:
    """A console script of this interpreter's environment, else one on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


HAS_RUNNER = importlib.util.find_spec("lambda_local") is not None
HAS_CFN_LINT = importlib.util.find_spec("cfnlint") is not None and _tool("cfn-lint") is not None


@pytest.fixture
def runner() -> None:
    if not HAS_RUNNER:
        missing_prerequisite("python-lambda-local is not installed (pip install -e '.[dev]')")


@pytest.fixture
def cfn_lint() -> None:
    if not HAS_CFN_LINT:
        missing_prerequisite("cfn-lint is not installed (pip install -e '.[dev]')")


needs_runner = pytest.mark.usefixtures("runner")
needs_cfn_lint = pytest.mark.usefixtures("cfn_lint")


def _clean_env() -> dict[str, str]:
    """This environment without the variables that would steer the SDK or fake a platform."""
    prefixes = ("ANALYTICS_", "AWS_", "K_SERVICE", "FUNCTION_TARGET", "CLOUD_RUN_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def run_process(command: list[str], *, env: dict[str, str], cwd: Path) -> tuple[int, str, float]:
    """Run to completion in its own session; (exit status, stdout+stderr, seconds).

    The runner forks the invocation into a child: on a hang the whole process group is
    killed, so nothing outlives the test.
    """
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=PROCESS_LIMIT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"{command[0]} still running after {PROCESS_LIMIT}s:\n{output}")
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group is normally gone already
            os.killpg(process.pid, signal.SIGKILL)
    return process.returncode, output, time.monotonic() - started


def invoke(
    tmp_path: Path, collector: Collector, timeout: int, **env: str
) -> tuple[int, str, float]:
    """``python-lambda-local -f handler -t TIMEOUT -e ENVFILE handler.py event.json``."""
    env_file = tmp_path / "env.json"
    variables = {
        "ANALYTICS_WRITE_KEY": WRITE_KEY,
        "ANALYTICS_HOST": collector.url,
        "AWS_LAMBDA_FUNCTION_NAME": "checkout",  # as Lambda sets it
        **env,
    }
    env_file.write_text(json.dumps(variables))
    # `python -m lambda_local` is the console script's entry point, with this interpreter.
    command = [sys.executable, "-m", "lambda_local", "-f", "handler", "-t", str(timeout)]
    command += ["-e", str(env_file), str(HANDLER), str(EVENT)]
    return run_process(command, env=_clean_env(), cwd=tmp_path)


def request_id(output: str) -> str:
    found = re.search(r"START RequestId: (\S+)", output)
    assert found, output
    return found.group(1)


def reported_duration_ms(output: str) -> float:
    found = re.search(r"REPORT RequestId: \S+\s+Duration: ([\d.]+) ms", output)
    assert found, output
    return float(found.group(1))


@needs_runner
def test_the_runner_delivers_every_event_in_one_request_with_faas_context(
    tmp_path: Path,
) -> None:
    event = json.loads(EVENT.read_text())
    with Collector(write_key=WRITE_KEY) as collector:
        status, output, _ = invoke(tmp_path, collector, timeout=3)
        requests = collector.requests
        messages = collector.messages

    assert status == 0, output
    assert "'statusCode': 200" in output, output
    assert "not delivered" not in output, output
    assert [r.status for r in requests] == [200], output  # batch=True: one request, accepted
    assert requests[0].headers["authorization"].startswith("Basic ")
    user = event["user_id"]
    expected = [("identify", None)] + [("track", "Product Added")] * len(event["items"])
    expected.append(("track", "Order Completed"))
    assert [(m["type"], m.get("event")) for m in messages] == expected
    assert {m["userId"] for m in messages} == {user}
    assert [m["properties"] for m in messages[1:-1]] == event["items"]
    assert messages[-1]["properties"] == {"revenue": 48.0}
    faas = {
        "platform": "aws_lambda",
        "name": "undefined",  # python-lambda-local's function_name; it has no flag to set one
        "invocation_id": request_id(output),
        "coldstart": True,
    }
    assert all(m["context"]["faas"] == faas for m in messages), messages[0]["context"]
    assert len({m["messageId"] for m in messages}) == len(messages)


@needs_runner
def test_an_endless_503_is_given_up_before_the_lambda_timeout_and_reported(
    tmp_path: Path,
) -> None:
    timeout = 1  # the runner's smallest: -t takes whole seconds (signal.alarm)
    with Collector(write_key=WRITE_KEY) as collector:
        collector.fail_next(503, times=1000)
        # Retries never run out: only the invocation's deadline can stop the delivery.
        status, output, elapsed = invoke(
            tmp_path, collector, timeout=timeout, ANALYTICS_MAX_RETRIES="1000"
        )
        requests = collector.requests

    # The handler returned by itself (the runner exits 1 and logs "Timeout after" otherwise).
    assert status == 0, output
    assert "Timeout after" not in output, output
    assert "'statusCode': 200" in output, output
    duration = reported_duration_ms(output)
    assert duration < timeout * 1000, output
    # safety_margin (0.5 s) is kept free: the last attempt started before the deadline.
    assert duration < (timeout - 0.5) * 1000 + 250, output
    assert elapsed < PROCESS_LIMIT
    assert len(requests) >= 2, output  # it did retry, inside the deadline
    assert all(r.status == 503 for r in requests)
    sent_ids = [m["messageId"] for m in (requests[0].payload or {})["batch"]]
    assert all([m["messageId"] for m in (r.payload or {})["batch"]] == sent_ids for r in requests)
    assert [r.headers.get("x-retry-count") for r in requests[1:]] == [
        str(n) for n in range(1, len(requests))
    ]
    # on_error logged the four unsent events, the deadline as the reason, and their ids.
    line = next((x for x in output.splitlines() if "events not delivered" in x), "")
    assert f"analytics: {len(sent_ids)} events not delivered" in line, output
    assert "deadline" in line and "503" in line, line
    assert all(message_id in line for message_id in sent_ids), line


@needs_cfn_lint
def test_template_passes_cfn_lint() -> None:
    linter = _tool("cfn-lint")
    assert linter is not None
    status, output, _ = run_process([linter, str(TEMPLATE)], env=_clean_env(), cwd=ROOT)
    assert (status, output.strip()) == (0, ""), output


@needs_cfn_lint
def test_template_deploys_the_example_handler_with_a_secret_key() -> None:
    cfn_yaml = importlib.import_module("cfnlint.decode")  # reads the !Ref / !If short forms
    template, problems = cfn_yaml.decode(str(TEMPLATE))
    assert template is not None and not problems, problems
    assert template["Transform"] == "AWS::Serverless-2016-10-31"
    functions = [
        r["Properties"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::Serverless::Function"
    ]
    assert len(functions) == 1
    function: dict[str, Any] = functions[0]
    assert function["Runtime"] in ("python3.12", "python3.13")
    assert function["Timeout"] <= 10
    assert function["CodeUri"] == "examples/aws_lambda/"
    module, _, name = function["Handler"].partition(".")
    code = ROOT / function["CodeUri"]
    source = ast.parse((code / f"{module}.py").read_text())
    assert name in {n.name for n in source.body if isinstance(n, ast.FunctionDef)}
    assert (code / "requirements.txt").is_file()
    for sample in (code / "events").glob("*.json"):
        assert isinstance(json.loads(sample.read_text()), dict), sample

    # The write key is never in the template: a Secrets Manager dynamic reference.
    key = function["Environment"]["Variables"]["ANALYTICS_WRITE_KEY"]
    reference = key["Fn::Sub"] if isinstance(key, dict) else key
    assert reference.startswith("{{resolve:secretsmanager:"), key

    # SnapStart is optional, behind a condition on a parameter, for the published alias.
    assert function["AutoPublishAlias"]
    condition, on, off = function["SnapStart"]["Fn::If"]
    assert on == {"ApplyOn": "PublishedVersions"} and off == {"Ref": "AWS::NoValue"}
    equals = template["Conditions"][condition]["Fn::Equals"]
    parameter = next(item["Ref"] for item in equals if isinstance(item, dict))
    assert template["Parameters"][parameter]["Default"] == "false"
