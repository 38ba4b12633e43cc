"""Shared fixtures: a real collector on 127.0.0.1 and clients pointed at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

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
