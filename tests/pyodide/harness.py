"""The Python half of run_worker.mjs: import a Worker's entry module and call its fetch handler.

run_worker.mjs drives it the way the runtime drives a Worker: :func:`load` once, then
:func:`fetch` per request with a fresh ``ctx`` (a JavaScript ``ExecutionContext`` whose
``waitUntil`` the runner awaits after the response), then :func:`check_threads`.

It adds two limits of the real Workers runtime that plain Pyodide lacks or reports badly:
random values are refused while the entry module is imported (the runtime snapshots the
imported state, so anything drawn then would be shared by every isolate), and starting a
thread is refused and counted, so a run that so much as tried fails even if the code under
test swallowed the error.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import random
import sys
import threading
from collections.abc import Iterator
from typing import Any

import workers

thread_attempts: list[str] = []


def _refuse_thread(self: threading.Thread) -> None:
    thread_attempts.append(self.name)
    raise RuntimeError("can't start new thread: Cloudflare Workers have no threads")


threading.Thread.start = _refuse_thread  # type: ignore[method-assign]


def _refuse_random(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError(
        "random values are refused at import time on Cloudflare Workers; draw them in a handler"
    )


@contextlib.contextmanager
def _no_entropy() -> Iterator[None]:
    # `random` itself may be imported (the runtime lets its seeding through); drawing from it,
    # os.urandom, uuid4 or secrets may not.
    targets: list[tuple[Any, str]] = [(os, "urandom"), (random, "_urandom")]
    targets += [
        (random, name)
        for name, value in vars(random).items()
        if getattr(value, "__self__", None) is random._inst  # type: ignore[attr-defined]
    ]
    saved = [(owner, name, getattr(owner, name)) for owner, name in targets]
    for owner, name in targets:
        setattr(owner, name, _refuse_random)
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def _body_text(body: Any) -> str:
    if isinstance(body, bytes | bytearray):
        return bytes(body).decode("utf-8", "replace")
    return "" if body is None else str(body)


def load(entry_dir: str, module_name: str) -> Any:
    """Import the Worker's entry module, refusing random values while it is imported."""
    sys.path.insert(0, entry_dir)
    with _no_entropy():
        return importlib.import_module(module_name)


async def fetch(entry: Any, ctx: Any, env: Any, body_json: str) -> str:
    """Call ``Default(ctx, env).fetch`` (a new instance per request, as the runtime does).

    Returns the response as one JSON line ``{"status", "headers", "body"}``, made before this
    coroutine returns, so the runner's clock reads "returned" only once it exists.
    """
    request = workers.Request(
        "https://worker.example/",
        method="POST",
        headers={"content-type": "application/json"},
        body=body_json,
    )
    response = await entry.Default(ctx, env).fetch(request)
    return json.dumps(
        {
            "status": response.status,
            "headers": dict(response.headers),
            "body": _body_text(response.body),
        }
    )


def check_threads() -> None:
    """Raise if the Worker tried to start a thread, even if it swallowed the error."""
    if thread_attempts:
        raise RuntimeError(f"the Worker tried to start threads: {thread_attempts}")
