"""A small stand-in for Cloudflare's ``workers`` module, for running a Worker under Pyodide.

Only what the example Worker and the runner need: the real module wraps JavaScript objects,
this one holds plain Python values with the same attribute names.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Mapping
from typing import Any


class Context:
    """``self.ctx``: ``wait_until`` work is awaited by the runner after the response."""

    def __init__(self) -> None:
        self.pending: list[Awaitable[Any]] = []

    def wait_until(self, awaitable: Awaitable[Any]) -> None:
        self.pending.append(awaitable)


class WorkerEntrypoint:
    def __init__(self, ctx: Context, env: Any) -> None:
        self.ctx = ctx
        self.env = env


class Request:
    def __init__(
        self,
        url: str,
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        body: str = "",
    ) -> None:
        self.url = url
        self.method = method
        self.headers = dict(headers or {})
        self._body = body

    async def text(self) -> str:
        return self._body

    async def json(self) -> Any:
        return json.loads(self._body)


class Response:
    def __init__(
        self,
        body: str | bytes | None = None,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.body = body
        self.status = status
        self.headers = dict(headers or {})
