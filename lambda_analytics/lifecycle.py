"""Process end: the bounded flush at interpreter exit, and ``flush_on_sigterm`` for containers.

A batch job that forgets ``close()``, a container stopped with SIGTERM, a Cloud Run instance
scaled in: what is still queued is sent within a bound, and what cannot be is named in one
WARNING (and handed to ``on_error`` and the spool as always), never dropped without a word.
"""

from __future__ import annotations

import atexit
import logging
import os
import time
import weakref
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from types import FrameType

    from .client import Analytics

logger = logging.getLogger("lambda_analytics")

DEFAULT_SIGTERM_TIMEOUT: Final = 8.0
"""Seconds the SIGTERM flush may take: within Cloud Run's 10 s and Kubernetes' 30 s grace."""


_clients: weakref.WeakSet[Analytics] = weakref.WeakSet()


def register(client: Analytics) -> None:
    """Track ``client`` for the exit-time flush, fork resets and snapshot hooks (weakly)."""
    _clients.add(client)


def live_clients() -> list[Analytics]:
    """Every client not yet closed or garbage-collected."""
    return [client for client in list(_clients) if not client.closed]


def drop_all_connections() -> None:
    """Close the pooled connections of every live client (before a snapshot, after a restore)."""
    for client in list(_clients):
        client._engine.reset_connections()


def flush_everything(reason: str, timeout: float | None = None) -> int:
    """Flush every live client within ``timeout`` (default: the longest ``exit_timeout``).

    Returns, and logs in one WARNING, how many messages could not be delivered.
    """
    clients = live_clients()
    if not clients:
        return 0
    budget = timeout if timeout is not None else max(c.settings.exit_timeout for c in clients)
    deadline = time.monotonic() + max(budget, 0.0)
    failed = 0
    for client in clients:
        try:
            failed += client._flush_at_exit(deadline)
        except Exception:  # at exit, a flush must never stop the next one or the exit
            logger.exception("lambda_analytics: flush at %s failed", reason)
    if failed:
        logger.warning(
            "lambda_analytics: %d messages could not be delivered before %s", failed, reason
        )
    return failed


def flush_on_sigterm(timeout: float = DEFAULT_SIGTERM_TIMEOUT) -> None:
    """On SIGTERM, flush every client within ``timeout`` seconds, then end as SIGTERM would.

    For containers and batch jobs (Cloud Run gives 10 s after SIGTERM, Kubernetes 30 s by
    default).  The handler installed before is called afterwards; if there was none, the
    default action is restored and the signal raised again, so the exit status is the same.
    Call it from the main thread (Python delivers signals there).
    """
    import signal  # its enums cost a millisecond: only for those who ask

    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(number: int, frame: FrameType | None) -> Any:
        flush_everything("SIGTERM", timeout)
        if callable(previous):
            return previous(number, frame)
        if previous == signal.SIG_IGN:
            return None
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return None

    signal.signal(signal.SIGTERM, on_sigterm)


def _after_fork() -> None:
    for client in list(_clients):
        client._engine.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
atexit.register(flush_everything, "interpreter exit")
