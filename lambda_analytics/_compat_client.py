"""``Client``: segment-analytics-python's client class, over :class:`~lambda_analytics.Analytics`.

Its constructor arguments (positional order included), its six calls in its positional order,
and its return value ``(success, msg)``, where ``msg`` is the message as the incumbent builds
it: the same keys in the same order, ids stringified, ``properties``/``traits``/``integrations``
defaulting to ``{}``, ``None`` for a field not sent, the caller's dicts as given.  Underneath,
one ``Analytics``: no thread, ``upload_size`` is ``flush_at`` (``sync_mode`` makes it 1),
``flush()``/``join()`` send what is queued and ``shutdown()`` also closes.  Import it from
:mod:`lambda_analytics.compat`.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import numbers
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from .client import Analytics
from .errors import ConfigurationError, InvalidTypeError, ValidationError
from .messages import LIBRARY, MAX_NESTING, format_timestamp, parse_timestamp
from .outcome import ErrorHook
from .results import FlushResult

if TYPE_CHECKING:
    from .oauth import OAuthSettings

__all__ = ["Client", "Message"]

Message = dict[str, Any]
"""The message as the incumbent returns it (``msg`` of ``(success, msg)``)."""
Stamp = _dt.datetime | str | None
"""A ``timestamp``: a datetime (naive is UTC) or ISO-8601 text."""

_UTC: Final = _dt.timezone.utc
_UNBOUNDED: Final = sys.maxsize
_ARGUMENT: Final = {"userId": "user_id", "anonymousId": "anonymous_id", "groupId": "group_id",
                    "previousId": "previous_id", "messageId": "message_id"}  # fmt: skip
_KEYWORD: Final = {**_ARGUMENT, "event": "event", "properties": "properties", "traits": "traits",
                   "name": "name", "category": "category"}  # fmt: skip
"""Wire name -> the ``Analytics`` keyword it is passed as."""


class Client:
    """segment-analytics-python's ``Client``, sending through :class:`~lambda_analytics.Analytics`.

    Change ``from segment.analytics import Client`` to ``from lambda_analytics.compat import
    Client`` and the code runs as it is.  ``thread`` is accepted, not used: there is no
    thread.  ``max_total_backoff_duration`` and ``max_rate_limit_duration`` are checked as the
    incumbent checks them, not used: retries are bounded by ``max_retries`` and the flush's
    deadline.  ``flush_at`` and
    ``flush_interval`` are this SDK's names for ``upload_size`` and ``upload_interval``.
    :attr:`analytics` is the client underneath, for what only it has.
    """

    log = logging.getLogger("lambda_analytics")

    def __init__(
        self,
        write_key: str | None = None,
        host: str | None = None,
        debug: bool = False,
        max_queue_size: int = 10_000,
        send: bool = True,
        on_error: ErrorHook | None = None,
        gzip: bool = False,
        max_retries: int = 10,
        sync_mode: bool = False,
        timeout: float = 15,
        proxies: Mapping[str, str] | None = None,
        thread: int = 1,
        upload_size: int | None = None,
        upload_interval: float | None = None,
        log_handler: logging.Handler | None = None,
        oauth_client_id: str | None = None,
        oauth_client_key: str | bytes | None = None,
        oauth_key_id: str | None = None,
        oauth_auth_server: str | None = None,
        oauth_scope: str = "tracking_api:write",
        max_total_backoff_duration: float = 43_200,
        max_rate_limit_duration: float = 1_800,
        *,
        flush_at: int | None = None,
        flush_interval: float | None = None,
    ) -> None:
        batch = _one_of("upload_size", upload_size, "flush_at", flush_at, 100)
        interval = _one_of(
            "upload_interval", upload_interval, "flush_interval", flush_interval, 0.5
        )
        for name, seconds in (("max_total_backoff_duration", max_total_backoff_duration),
                              ("max_rate_limit_duration", max_rate_limit_duration)):  # fmt: skip
            if seconds is None or seconds < 0:
                raise ConfigurationError(f"{name} must be a non-negative number")
        self._analytics = Analytics(
            write_key,
            host=host,
            flush_at=1 if sync_mode else batch,
            flush_interval=interval,
            max_queue_size=max_queue_size if max_queue_size > 0 else _UNBOUNDED,
            gzip=gzip,
            timeout=timeout,
            max_retries=max_retries,
            on_error=on_error,
            disable=not send,
            proxy=_proxy(proxies, host),
            oauth=_oauth(
                oauth_client_id, oauth_client_key, oauth_key_id, oauth_auth_server, oauth_scope
            ),
        )
        _configure_logging(debug, log_handler)
        self.write_key, self.host, self.debug, self.send = write_key, host, debug, send
        self.sync_mode, self.gzip, self.timeout, self.proxies = sync_mode, gzip, timeout, proxies
        self.max_total_backoff_duration = max_total_backoff_duration
        self.max_rate_limit_duration = max_rate_limit_duration

    def __repr__(self) -> str:
        return f"Client({self._analytics!r})"

    @property
    def analytics(self) -> Analytics:
        """The :class:`~lambda_analytics.Analytics` underneath (deadlines, hooks, stats...)."""
        return self._analytics

    @property
    def on_error(self) -> ErrorHook | None:
        """``on_error(error, items)``: called with the messages that could not be delivered."""
        return self._analytics.on_error  # type: ignore[no-any-return]

    @on_error.setter
    def on_error(self, hook: ErrorHook | None) -> None:
        self._analytics.on_error = hook

    # -- the six calls, in the incumbent's positional order --------------------------------

    def identify(self, user_id: Any = None, traits: Mapping[str, Any] | None = None,
                 context: Mapping[str, Any] | None = None, timestamp: Stamp = None,
                 anonymous_id: Any = None, integrations: Mapping[str, Any] | None = None,
                 message_id: Any = None) -> tuple[bool, Message]:  # fmt: skip
        """``identify(user_id, traits, context, timestamp, anonymous_id, integrations, ...)``."""
        return self._enqueue({
            "integrations": integrations, "anonymousId": anonymous_id, "timestamp": timestamp,
            "context": context, "type": "identify", "userId": user_id, "traits": traits or {},
            "messageId": message_id,
        })  # fmt: skip

    def track(self, user_id: Any = None, event: str | None = None,
              properties: Mapping[str, Any] | None = None,
              context: Mapping[str, Any] | None = None, timestamp: Stamp = None,
              anonymous_id: Any = None, integrations: Mapping[str, Any] | None = None,
              message_id: Any = None) -> tuple[bool, Message]:  # fmt: skip
        """``track(user_id, event, properties, context, timestamp, anonymous_id, ...)``."""
        return self._enqueue({
            "integrations": integrations, "anonymousId": anonymous_id,
            "properties": properties or {}, "timestamp": timestamp, "context": context,
            "userId": user_id, "type": "track", "event": event, "messageId": message_id,
        })  # fmt: skip

    def alias(self, previous_id: Any = None, user_id: Any = None,
              context: Mapping[str, Any] | None = None, timestamp: Stamp = None,
              integrations: Mapping[str, Any] | None = None,
              message_id: Any = None) -> tuple[bool, Message]:  # fmt: skip
        """``alias(previous_id, user_id, ...)``: the previous id comes first."""
        return self._enqueue({
            "integrations": integrations, "previousId": previous_id, "timestamp": timestamp,
            "context": context, "userId": user_id, "type": "alias", "messageId": message_id,
            "anonymousId": None,
        })  # fmt: skip

    def group(self, user_id: Any = None, group_id: Any = None,
              traits: Mapping[str, Any] | None = None,
              context: Mapping[str, Any] | None = None, timestamp: Stamp = None,
              anonymous_id: Any = None, integrations: Mapping[str, Any] | None = None,
              message_id: Any = None) -> tuple[bool, Message]:  # fmt: skip
        """``group(user_id, group_id, traits, context, timestamp, anonymous_id, ...)``."""
        return self._enqueue({
            "integrations": integrations, "anonymousId": anonymous_id, "timestamp": timestamp,
            "groupId": group_id, "context": context, "userId": user_id, "traits": traits or {},
            "type": "group", "messageId": message_id,
        })  # fmt: skip

    def page(self, user_id: Any = None, category: str | None = None, name: str | None = None,
             properties: Mapping[str, Any] | None = None,
             context: Mapping[str, Any] | None = None, timestamp: Stamp = None,
             anonymous_id: Any = None, integrations: Mapping[str, Any] | None = None,
             message_id: Any = None) -> tuple[bool, Message]:  # fmt: skip
        """``page(user_id, category, name, properties, context, timestamp, ...)``."""
        return self._enqueue(_viewed(
            "page", user_id, category, name, properties, context, timestamp, anonymous_id,
            integrations, message_id,
        ))  # fmt: skip

    def screen(self, user_id: Any = None, category: str | None = None, name: str | None = None,
               properties: Mapping[str, Any] | None = None,
               context: Mapping[str, Any] | None = None, timestamp: Stamp = None,
               anonymous_id: Any = None, integrations: Mapping[str, Any] | None = None,
               message_id: Any = None) -> tuple[bool, Message]:  # fmt: skip
        """``screen(user_id, category, name, properties, context, timestamp, ...)``."""
        return self._enqueue(_viewed(
            "screen", user_id, category, name, properties, context, timestamp, anonymous_id,
            integrations, message_id,
        ))  # fmt: skip

    # -- flushing -----------------------------------------------------------------------------

    def flush(self) -> FlushResult:
        """Send everything queued and wait for the answers (the incumbent returns ``None``)."""
        return self._analytics.flush()

    def join(self) -> FlushResult:
        """There is no thread to join: send what is queued, as the incumbent's thread would."""
        return self._analytics.flush()

    def shutdown(self) -> FlushResult:
        """Send what is queued, then close: later calls return ``(False, msg)``, unsent."""
        sent = self._analytics.flush()
        rest = self._analytics.close()
        return FlushResult(
            sent=sent.sent + rest.sent,
            failed=sent.failed + rest.failed,
            failed_messages=sent.failed_messages + rest.failed_messages,
            errors=sent.errors + rest.errors,
            spooled=sent.spooled + rest.spooled,
        )

    # -- internals ----------------------------------------------------------------------------

    def _enqueue(self, msg: Message) -> tuple[bool, Message]:
        """Send ``msg`` through ``Analytics``; fill it in with what was sent."""
        kind = msg["type"]
        context, integrations = msg["context"] or {}, msg["integrations"] or {}
        for key in ("userId", "anonymousId", "groupId", "previousId"):
            if key in msg:
                msg[key] = _stringify(key, msg[key])
        if msg["messageId"] is not None:
            msg["messageId"] = _stringify("messageId", msg["messageId"], strip=False)
        for key in ("name", "category"):  # the incumbent lets "" through: it means none
            if key in msg and not msg[key]:
                msg[key] = None
        stamp = msg["timestamp"]
        if stamp is None:
            stamp = _dt.datetime.now(_UTC)
        keywords: dict[str, Any] = {
            "context": _dates_as_text(context),
            "timestamp": stamp,
            "integrations": integrations,
        }
        for key, value in msg.items():
            if key in _KEYWORD and (key != "anonymousId" or kind != "alias"):
                keywords[_KEYWORD[key]] = _dates_as_text(value)
        result = getattr(self._analytics, kind)(**keywords)
        msg["integrations"] = integrations
        msg["context"] = {**context, "library": context.get("library") or dict(LIBRARY)}
        msg["timestamp"] = format_timestamp(
            parse_timestamp(stamp) if isinstance(stamp, str) else stamp
        )
        msg["messageId"] = result.message_id
        return result.error is None and not result.dropped, msg


def _viewed(kind: str, user_id: Any, category: Any, name: Any, properties: Any, context: Any,
            timestamp: Any, anonymous_id: Any, integrations: Any,
            message_id: Any) -> Message:  # fmt: skip
    """A page or screen message, its keys in the incumbent's order."""
    return {
        "integrations": integrations, "anonymousId": anonymous_id,
        "properties": properties or {}, "timestamp": timestamp, "category": category,
        "context": context, "userId": user_id, "type": kind, "name": name,
        "messageId": message_id,
    }  # fmt: skip


def _stringify(key: str, value: object, *, strip: bool = True) -> str | None:
    """An id as the incumbent sends it: ``str(value)`` of a string, a number or a UUID."""
    if value is None or isinstance(value, str):
        text = value
    elif isinstance(value, numbers.Number) and not isinstance(value, (bool, complex)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValidationError(_ARGUMENT[key], f"must be a finite number, not {value}")
        try:
            text = str(value)
        except ValueError:  # over CPython's 4,300-digit limit for int -> str
            raise ValidationError(_ARGUMENT[key], "is a number too large to be an id") from None
    elif _is_uuid(value):
        text = str(value)
    else:
        kind = type(value).__name__
        raise InvalidTypeError(_ARGUMENT[key], f"must be a string, a number or a UUID, not {kind}")
    if text is None or not strip:
        return text
    return text.strip() or None  # as Analytics sends it: surrounding spaces go, blank is none


def _is_uuid(value: object) -> bool:
    # A UUID can only exist if its module was imported: spare compat's users the import.
    uuid = sys.modules.get("uuid")
    return uuid is not None and isinstance(value, uuid.UUID)


def _dates_as_text(value: Any, depth: int = 0) -> Any:
    """``value`` with each date and datetime as the incumbent sends it: ``isoformat()``.

    The offset, the microseconds and a naive datetime's lack of an offset are kept, as in
    what segment-analytics-python sends.  Containers are copied only where something changed;
    past ``MAX_NESTING`` levels the encoder refuses the value anyway, naming it.
    """
    if isinstance(value, _dt.date):
        return value.isoformat()
    if depth > MAX_NESTING:
        return value
    if isinstance(value, Mapping):
        changed = {key: _dates_as_text(item, depth + 1) for key, item in value.items()}
        same = all(changed[key] is item for key, item in value.items())
        return value if same else changed
    if isinstance(value, (list, tuple)):
        items = [_dates_as_text(item, depth + 1) for item in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    return value


def _one_of(name: str, value: Any, ours: str, our_value: Any, default: Any) -> Any:
    if value is not None and our_value is not None:
        raise ConfigurationError(f"give {name}= or {ours}=, not both: they are the same setting")
    if value is not None:
        return value
    return default if our_value is None else our_value


def _proxy(proxies: Mapping[str, str] | None, host: str | None) -> str | None:
    """The proxy ``requests`` would pick from a ``proxies`` dict for the batch URL."""
    if not proxies:
        return None
    if not isinstance(proxies, Mapping):
        raise ConfigurationError("proxies must be a dict such as {'https': 'http://proxy:3128'}")
    url = host if host and "://" in host else f"https://{host or 'api.segment.io'}"
    scheme, _, rest = url.partition("://")
    hostname = rest.split("/", 1)[0].rpartition("@")[2].split(":", 1)[0]
    for key in (f"{scheme}://{hostname}", scheme, f"all://{hostname}", "all"):
        proxy = proxies.get(key)
        if proxy:
            return proxy if "://" in proxy else "http://" + proxy  # as requests reads it
    return None


def _oauth(client_id: str | None, client_key: str | bytes | None, key_id: str | None,
           auth_server: str | None, scope: str) -> OAuthSettings | None:  # fmt: skip
    given = [name for name, value in (("oauth_client_id", client_id),
             ("oauth_client_key", client_key), ("oauth_key_id", key_id)) if value]  # fmt: skip
    if not given:
        return None
    if len(given) < 3:
        raise ConfigurationError(
            f"OAuth needs oauth_client_id, oauth_client_key and oauth_key_id; only "
            f"{', '.join(given)} given (segment-analytics-python sends without OAuth then)"
        )
    from .oauth import OAuthSettings

    assert client_id and client_key and key_id
    return OAuthSettings(client_id, key_id, client_key, auth_server, scope)


_DEBUG_HANDLER: Final = logging.StreamHandler()


def _configure_logging(debug: bool, handler: logging.Handler | None) -> None:
    """``log_handler`` and ``debug`` as the incumbent applies them, to our logger, once."""
    logger = logging.getLogger("lambda_analytics")
    if handler is not None and handler not in logger.handlers:
        logger.addHandler(handler)
    if debug:
        logger.setLevel(logging.DEBUG)
        if handler is None and _DEBUG_HANDLER not in logger.handlers:
            logger.addHandler(_DEBUG_HANDLER)
