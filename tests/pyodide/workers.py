"""A small stand-in for Cloudflare's ``workers`` module, for running a Worker under Pyodide.

Only what the example Worker and the runner need: the real module wraps JavaScript objects,
this one holds plain Python values with the same attribute names.  ``ctx`` is what the runtime
passes, a JavaScript ``ExecutionContext`` (run_worker.mjs makes it): ``self.ctx.waitUntil``
takes a Python awaitable, as in the runtime.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Mapping
from typing import Any, Protocol


class Context(Protocol):
    """``self.ctx``, as the real module types it."""

    def waitUntil(self, other: Awaitable[Any]) -> None: ...  # the JS name


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
