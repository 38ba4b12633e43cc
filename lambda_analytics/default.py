"""The default client behind ``lambda_analytics.track`` and friends, and a swap for tests.

Created on first use from ``ANALYTICS_*`` variables, or by :func:`configure`.  The testing
helpers install a client of their own with :func:`swap` and put the previous one back.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

from .client import Analytics

OnConfigure = Callable[[Analytics, "Analytics | None"], Analytics]
C = TypeVar("C")
P = ParamSpec("P")
R = TypeVar("R")

_lock = threading.Lock()
_client: Analytics | None = None
_on_configure: OnConfigure | None = None


def configure(**settings: Any) -> Analytics:
    """(Re)create the default client: ``settings``, then ``ANALYTICS_*`` variables, then defaults.

    Takes the keyword arguments of :class:`Analytics`.  A previous default client is flushed
    and closed first, so nothing it queued is lost.
    """
    global _client
    client = Analytics(**settings)
    with _lock:
        previous, _client = _client, client
        intercept = _on_configure
    if intercept is not None:
        return intercept(client, previous)
    if previous is not None:
        previous.close()
    return client


def get_client() -> Analytics:
    """The default client, created from ``ANALYTICS_*`` variables on first use."""
    global _client
    with _lock:
        if _client is None:
            _client = Analytics()
        return _client


def current() -> Analytics | None:
    """The default client if one exists (none is created)."""
    with _lock:
        return _client


def swap(client: Analytics | None, on_configure: OnConfigure | None = None) -> Callable[[], None]:
    """Make ``client`` the default (``None``: created on first use); returns ``restore()``.

    While swapped, :func:`configure` hands the client it creates and the one it replaces to
    ``on_configure`` (which returns the client to use) instead of closing the old one.
    ``restore()`` puts back the previous default client and behaviour.
    """
    global _client, _on_configure
    with _lock:
        saved = (_client, _on_configure)
        _client, _on_configure = client, on_configure

    def restore() -> None:
        global _client, _on_configure
        with _lock:
            _client, _on_configure = saved

    return restore


def _after_fork() -> None:
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def delegate(get: Callable[[], C], method: Callable[Concatenate[C, P], R]) -> Callable[P, R]:
    """A module-level function calling ``method`` on ``get()``, with the method's signature."""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        return method(get(), *args, **kwargs)

    return call
