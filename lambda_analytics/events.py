"""What a client tells its listeners and plugins: hooks, ``on()`` by event name, named plugins.

The Node SDK's habits, in Python: ``client.on("track", listener)`` hears each delivered track
message; ``"error"``, ``"flush"``, ``"http_request"`` and ``"call_after_close"`` hear the rest.
``client.register(plugin)`` adds a named plugin: ``before`` and ``enrichment`` plugins change
or drop a message before it is queued, ``destination`` and ``after`` plugins see each message
with its outcome.  Every listener and plugin is called outside the client's lock, and its
exception is logged, never raised into the caller's code.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

if TYPE_CHECKING:
    from .errors import DeliveryError
    from .results import RequestInfo

logger = logging.getLogger("lambda_analytics")

MESSAGE_EVENTS: Final = ("identify", "track", "page", "screen", "group", "alias")
EVENTS: Final = (*MESSAGE_EVENTS, "error", "flush", "http_request", "call_after_close")
"""What ``on()`` listens to: a message type (delivered messages), or one of the others."""
PLUGIN_TYPES: Final = ("before", "enrichment", "destination", "after")

PluginType = Literal["before", "enrichment", "destination", "after"]
Listener = Callable[..., object]


class Plugin(Protocol):
    """A named plugin, as the Node SDK has them.

    ``type`` says when it runs.  ``before`` and ``enrichment`` plugins are called as
    ``plugin(message)`` on the wire-format dict before it is queued (before ones first) and
    return it, changed or not, or ``None`` to drop it.  ``destination`` and ``after`` plugins
    are called as ``plugin(message, error)`` once the message's fate is known (``error`` is
    ``None`` when it was delivered); what they return is ignored.
    """

    name: str
    type: PluginType

    def __call__(self, message: dict[str, Any], *error: DeliveryError | None) -> Any:
        """Run on one message."""
        ...


def safely(hook: Callable[..., object], *args: Any) -> None:
    """Call a user hook; its exception is logged, never raised into the caller's code."""
    try:
        hook(*args)
    except Exception:
        logger.exception("lambda_analytics hook %r raised", hook)


class Hooks:
    """The client's hooks, listeners and plugins: the only things that change after building."""

    __slots__ = (
        "_listeners",
        "_lock",
        "_plugins",
        "before_queueing",
        "listening",
        "on_call_after_close",
        "on_error",
        "on_request",
        "plugins",
    )

    def __init__(
        self,
        on_error: Callable[[DeliveryError, list[dict[str, Any]]], None] | None = None,
        on_request: Callable[[RequestInfo], None] | None = None,
        on_call_after_close: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.on_error = on_error
        self.on_request = on_request
        self.on_call_after_close = on_call_after_close
        self._lock = threading.Lock()
        self._listeners: dict[str, tuple[Listener, ...]] = {}
        self._plugins: tuple[Plugin, ...] = ()
        self.plugins: tuple[Plugin, ...] = ()
        """Every registered plugin, in the order they run (kept up to date by register())."""
        self.before_queueing: tuple[Plugin, ...] = ()
        """The ``before`` then ``enrichment`` plugins: what runs before a message is queued."""
        self.listening = False
        """True once anything listens to message outcomes: the hot path skips them otherwise."""

    # -- listeners ------------------------------------------------------------------------------

    def on(self, event: str, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` on ``event``; returns a function that stops it."""
        if event not in EVENTS:
            raise ValueError(f"event must be one of {', '.join(EVENTS)}, not {event!r}")
        if not callable(listener):
            raise TypeError(f"listener must be callable, not {type(listener).__name__}")
        with self._lock:
            self._listeners[event] = (*self._listeners.get(event, ()), listener)
            self._update()
        return lambda: self.off(event, listener)

    def off(self, event: str, listener: Listener) -> None:
        """Stop calling ``listener`` on ``event`` (nothing happens if it was not listening)."""
        with self._lock:
            kept = tuple(one for one in self._listeners.get(event, ()) if one is not listener)
            self._listeners[event] = kept
            self._update()

    def wants(self, event: str) -> bool:
        """True when something listens to ``event``."""
        return bool(self._listeners.get(event))

    def call_after_close(self, message: dict[str, Any], error: DeliveryError) -> None:
        """A call made after close(): ``on_call_after_close`` and its listeners, else on_error."""
        if self.on_call_after_close is None and not self.wants("call_after_close"):
            if self.on_error is not None:
                safely(self.on_error, error, [message])
            return
        if self.on_call_after_close is not None:
            safely(self.on_call_after_close, message)
        self.emit("call_after_close", message)

    def emit(self, event: str, *args: Any) -> None:
        """Call every listener of ``event`` with ``args``, safely."""
        for listener in self._listeners.get(event, ()):
            safely(listener, *args)

    # -- plugins ----------------------------------------------------------------------------------

    def register(self, *plugins: Plugin) -> None:
        """Add named plugins; a name already registered is a ValueError."""
        with self._lock:
            names = {plugin.name for plugin in self._plugins}
            for plugin in plugins:
                name, kind = getattr(plugin, "name", None), getattr(plugin, "type", None)
                if not isinstance(name, str) or not name:
                    raise ValueError("a plugin needs a name (a non-empty string)")
                if kind not in PLUGIN_TYPES:
                    raise ValueError(
                        f"plugin {name!r}: type must be one of {', '.join(PLUGIN_TYPES)}"
                    )
                if not callable(plugin):
                    raise TypeError(f"plugin {name!r} must be callable")
                if name in names:
                    raise ValueError(f"a plugin named {name!r} is already registered")
                names.add(name)
            self._plugins = (*self._plugins, *plugins)
            self._update()

    def deregister(self, *names: str) -> None:
        """Remove the plugins with these names; an unknown name is a KeyError."""
        with self._lock:
            known = {plugin.name for plugin in self._plugins}
            for name in names:
                if name not in known:
                    raise KeyError(f"no plugin named {name!r}")
            self._plugins = tuple(p for p in self._plugins if p.name not in names)
            self._update()

    def plugin(self, name: str) -> Plugin:
        """The registered plugin called ``name`` (KeyError if none)."""
        for plugin in self._plugins:
            if plugin.name == name:
                return plugin
        raise KeyError(f"no plugin named {name!r}")

    def settled(self, message: dict[str, Any], error: DeliveryError | None) -> None:
        """One message's fate is known: tell its listeners and the destination/after plugins."""
        if error is None:
            self.emit(str(message.get("type")), message)
        for plugin in self._plugins:
            if plugin.type in ("destination", "after"):
                safely(plugin, message, error)

    def _update(self) -> None:
        # Derived once here, not on every call: the hot path reads them.
        self.plugins = tuple(sorted(self._plugins, key=lambda p: PLUGIN_TYPES.index(p.type)))
        self.before_queueing = tuple(p for p in self.plugins if p.type in ("before", "enrichment"))
        self.listening = any(self._listeners.get(kind) for kind in MESSAGE_EVENTS) or any(
            plugin.type in ("destination", "after") for plugin in self._plugins
        )


class Listening:
    """``on``/``off`` and ``register``/``deregister`` on a client (``Analytics``' base)."""

    __slots__ = ()

    @property
    def _hooks(self) -> Hooks:
        raise NotImplementedError

    def on(self, event: str, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` on ``event``; returns a function that stops it.

        ``"track"``, ``"identify"``... (``listener(message)``, each message delivered);
        ``"error"`` (``listener(error, messages)``); ``"flush"`` (``listener(FlushResult)``);
        ``"http_request"`` (``listener(RequestInfo)``); ``"call_after_close"``
        (``listener(message)``).
        """
        return self._hooks.on(event, listener)

    def off(self, event: str, listener: Listener) -> None:
        """Stop calling ``listener`` on ``event``."""
        self._hooks.off(event, listener)

    def register(self, *plugins: Plugin) -> None:
        """Add named plugins (see :class:`~lambda_analytics.events.Plugin`)."""
        self._hooks.register(*plugins)

    def deregister(self, *names: str) -> None:
        """Remove plugins by name (an unknown name is a ``KeyError``)."""
        self._hooks.deregister(*names)

    def plugin(self, name: str) -> Plugin:
        """The registered plugin called ``name`` (a ``KeyError`` if there is none)."""
        return self._hooks.plugin(name)

    @property
    def plugins(self) -> tuple[Plugin, ...]:
        """The registered plugins, in the order they run."""
        return self._hooks.plugins
