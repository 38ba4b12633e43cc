"""``with_analytics``: flush before a handler returns or raises, within the platform's deadline.

The only module that knows about platforms.  The deadline of an invocation comes from

* AWS Lambda: ``context.get_remaining_time_in_millis()`` (the handler's context argument);
* Google Cloud Functions / Cloud Run: ``CLOUD_RUN_TIMEOUT_SECONDS`` when set (measured from
  the start of the invocation), else ``default_timeout``;
* anywhere else: the ``timeout`` argument (``None``: no limit);

minus ``safety_margin``.  It governs every send made during the invocation, a ``flush_at=1``
call inside the handler as much as the final flush; what cannot be sent in time is reported.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, Final, ParamSpec, TypeVar, cast, overload

from .client import Analytics, Middleware
from .lifecycle import drop_all_connections

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_SAFETY_MARGIN: Final = 0.5
"""Seconds kept free before the platform's deadline, to return the response."""
DEFAULT_CLOUD_TIMEOUT: Final = 60.0
"""Cloud Functions' own default timeout, used when ``CLOUD_RUN_TIMEOUT_SECONDS`` is unset."""
_WARM_INIT_TYPES: Final = frozenset({"provisioned-concurrency", "snap-start"})
_ID_NAMESPACE: Final = "6f0a3a52-7c1e-4f4e-9c59-2b6f0d7f5a10"
_CO_COROUTINE: Final = 0x80

_started = threading.Event()  # set after the first invocation of this process


@overload
def with_analytics(func: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def with_analytics(
    analytics: Analytics | None = None,
    /,
    *,
    timeout: float | None = None,
    safety_margin: float = DEFAULT_SAFETY_MARGIN,
    default_timeout: float = DEFAULT_CLOUD_TIMEOUT,
    batch: bool = False,
    invocation_context: bool = False,
    stable_message_ids: bool = False,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def with_analytics(
    target: Any = None,
    /,
    *,
    timeout: float | None = None,
    safety_margin: float = DEFAULT_SAFETY_MARGIN,
    default_timeout: float = DEFAULT_CLOUD_TIMEOUT,
    batch: bool = False,
    invocation_context: bool = False,
    stable_message_ids: bool = False,
) -> Any:
    """Decorate a handler (sync or async) so its events are delivered before it ends.

    Bare (``@with_analytics``) it uses the default client from ``ANALYTICS_*`` variables;
    ``@with_analytics(analytics, ...)`` uses the client given.  The flush runs in ``finally``:
    a handler that raises still delivers its events, and its exception is re-raised unchanged;
    delivery failures go to the client's hooks, never into the handler's result.

    ``batch=True`` queues every call of the invocation and sends them together at the end (one
    request, split only at the protocol limits).  ``invocation_context=True`` adds a ``faas``
    object (platform, function name, request id, cold start) to each message's context.
    ``stable_message_ids=True`` derives message ids from the Lambda request id and the call's
    position, so a retried invocation sends the same ids and the server deduplicates them.
    """
    from .settings import check_seconds

    check_seconds("timeout", timeout)
    options = _Options(
        timeout, safety_margin, default_timeout, batch, invocation_context, stable_message_ids
    )
    if callable(target) and not isinstance(target, Analytics):
        return _wrap(target, None, options)
    client = cast("Analytics | None", target)
    return lambda func: _wrap(func, client, options)


class _Options:
    __slots__ = ("batch", "context", "default_timeout", "margin", "stable_ids", "timeout")

    def __init__(
        self,
        timeout: float | None,
        margin: float,
        default_timeout: float,
        batch: bool,
        context: bool,
        stable_ids: bool,
    ) -> None:
        self.timeout, self.margin, self.default_timeout = timeout, margin, default_timeout
        self.batch, self.context, self.stable_ids = batch, context, stable_ids


def _wrap(func: Callable[P, R], client: Analytics | None, options: _Options) -> Callable[P, R]:
    if _is_async(func):
        async_func = cast("Callable[P, Awaitable[Any]]", func)

        @functools.wraps(func)
        async def run_async(*args: P.args, **kwargs: P.kwargs) -> Any:
            with _invocation(client, options, args, kwargs):
                return await async_func(*args, **kwargs)

        return cast("Callable[P, R]", run_async)

    @functools.wraps(func)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with _invocation(client, options, args, kwargs):
            return func(*args, **kwargs)

    return run


def _is_async(func: Callable[..., Any]) -> bool:
    code = getattr(func, "__code__", None)
    if code is not None:
        return bool(code.co_flags & _CO_COROUTINE)
    # partials and callable objects: inspect knows them, at a cost only they pay.
    import inspect

    return inspect.iscoroutinefunction(func)


@contextlib.contextmanager
def _invocation(
    client: Analytics | None, options: _Options, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> Iterator[None]:
    if client is None:
        from .default import get_client

        client = get_client()
    facts = _platform_facts(args, kwargs)
    budget = _budget(facts, options)
    cold = not _started.is_set() and os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") not in (
        _WARM_INIT_TYPES
    )
    _started.set()
    middleware: tuple[Middleware, ...] = ()
    if options.context:
        faas = {**facts.describe(), "coldstart": cold}
        middleware = (functools.partial(_add_context, faas=faas),)
    stable_ids = _stable_ids(facts.request_id) if options.stable_ids and facts.request_id else None
    seconds = None if budget is None else budget - options.margin
    with client.invocation(
        seconds=seconds, hold=options.batch, middleware=middleware, new_id=stable_ids
    ):
        try:
            yield
        finally:
            try:
                client.flush()
            except Exception:  # the handler's own outcome must never change because of us
                import logging

                logging.getLogger("lambda_analytics").exception("flush after handler failed")


class _Facts:
    __slots__ = ("function_name", "platform", "remaining", "request_id")

    def __init__(self) -> None:
        self.platform = "other"
        self.function_name: str | None = None
        self.request_id: str | None = None
        self.remaining: float | None = None

    def describe(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"platform": self.platform}
        if self.function_name:
            facts["name"] = self.function_name
        if self.request_id:
            facts["invocation_id"] = self.request_id
        return facts


def _platform_facts(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> _Facts:
    facts = _Facts()
    for value in (*args, *kwargs.values()):
        remaining = getattr(value, "get_remaining_time_in_millis", None)
        if callable(remaining):
            facts.platform = "aws_lambda"
            facts.remaining = remaining() / 1000.0
            # str(): runners hand over odd types (python-lambda-local's request id is a UUID).
            name, request_id = (
                getattr(value, a, None) for a in ("function_name", "aws_request_id")
            )
            facts.function_name = None if name is None else str(name)
            facts.request_id = None if request_id is None else str(request_id)
            return facts
    env = os.environ
    if env.get("K_SERVICE") or env.get("FUNCTION_TARGET"):
        facts.platform = "gcp_cloud_functions"
        facts.function_name = env.get("K_SERVICE") or env.get("FUNCTION_TARGET")
    elif env.get("AWS_LAMBDA_FUNCTION_NAME"):
        facts.platform = "aws_lambda"
        facts.function_name = env["AWS_LAMBDA_FUNCTION_NAME"]
    return facts


def _budget(facts: _Facts, options: _Options) -> float | None:
    """Seconds from now until the platform stops the invocation (before the margin)."""
    candidates = [options.timeout]
    if facts.remaining is not None:
        candidates.append(facts.remaining)
    elif facts.platform == "gcp_cloud_functions":
        configured = os.environ.get("CLOUD_RUN_TIMEOUT_SECONDS")
        try:
            candidates.append(float(configured) if configured else options.default_timeout)
        except ValueError:
            candidates.append(options.default_timeout)
    known = [c for c in candidates if c is not None]
    return min(known) if known else None


def _add_context(message: dict[str, Any], *, faas: Mapping[str, Any]) -> dict[str, Any]:
    context = message["context"]
    context["faas"] = {**faas, **context.get("faas", {})}
    return message


def _stable_ids(request_id: str) -> Callable[[], str]:
    import uuid  # only for those who asked for stable ids

    namespace = uuid.UUID(_ID_NAMESPACE)
    counter = iter(range(1, 1 << 62))

    def next_id() -> str:
        return str(uuid.uuid5(namespace, f"{request_id}/{next(counter)}"))

    return next_id


def install_snapstart_hooks() -> bool:
    """Register SnapStart runtime hooks when ``snapshot_restore_py`` is importable.

    Before the snapshot, pooled connections are closed: restored copies would otherwise share
    sockets that no longer exist.  After a restore they are dropped again.  There is no random
    state to reseed: jitter and message ids come from ``os.urandom``, which the restored
    process draws fresh.  ``import lambda_analytics`` calls it inside Lambda; returns whether it
    registered.
    """
    try:
        import snapshot_restore_py  # type: ignore[import-not-found]
    except ImportError:
        return False
    snapshot_restore_py.register_before_snapshot(drop_all_connections)
    snapshot_restore_py.register_after_restore(drop_all_connections)
    return True
