"""A client's settings, resolved once: the argument, else ``ANALYTICS_*``, else the default.

:class:`Settings` is immutable: what a client was built with is what it uses until it is
closed (``client.settings``).  Hooks stay assignable on the client; nothing here can change.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, Final

from . import batching
from .errors import ConfigurationError
from .retry import RetryPolicy

PREFIX: Final = "ANALYTICS_"


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


# Environment variable suffix -> (Analytics keyword, parser).
ENVIRONMENT: Final[Mapping[str, tuple[str, Callable[[str], Any]]]] = {
    "WRITE_KEY": ("write_key", str),
    "HOST": ("host", str),
    "REGION": ("region", str.lower),
    "PATH": ("path", str),
    "FLUSH_AT": ("flush_at", int),
    "FLUSH_INTERVAL": ("flush_interval", float),
    "MAX_QUEUE_SIZE": ("max_queue_size", int),
    "GZIP": ("gzip", _boolean),
    "TIMEOUT": ("timeout", float),
    "CONNECT_TIMEOUT": ("connect_timeout", float),
    "EXIT_TIMEOUT": ("exit_timeout", float),
    "MAX_RETRIES": ("retry", lambda text: RetryPolicy(max_retries=int(text))),
    "DISABLE": ("disable", _boolean),
    "PROXY": ("proxy", str),
    "VERIFY": ("verify", _boolean),
    "CA_CERTS": ("ca_certs", str),
    "SPOOL_DIR": ("spool_dir", str),
    "SPOOL_MAX_BYTES": ("spool_max_bytes", int),
}
"""``ANALYTICS_<SUFFIX>`` -> the ``Analytics`` keyword it sets, and how its text is read."""


def settings_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """``Analytics`` keyword arguments from the ``ANALYTICS_*`` variables that are set."""
    settings: dict[str, Any] = {}
    for suffix, (keyword, parse) in ENVIRONMENT.items():
        text = environ.get(PREFIX + suffix)
        if text is None or text == "":
            continue
        try:
            settings[keyword] = parse(text)
        except (ValueError, ConfigurationError) as exc:
            # The write key is never echoed: only numeric and boolean settings can fail here.
            raise ConfigurationError(f"{PREFIX}{suffix}: {exc}") from None
    return settings


REGIONS: Final[Mapping[str, str]] = {
    "us": "https://api.segment.io",
    "eu": "https://events.eu1.segmentapis.com",
}

DEFAULTS: Final[Mapping[str, Any]] = {
    "write_key": None,
    "host": None,
    "region": "us",
    "path": "/v1/batch",
    "flush_at": 1,
    "flush_interval": 10.0,
    "max_queue_size": 10_000,
    "gzip": False,
    "timeout": 10.0,
    "connect_timeout": 3.0,
    "exit_timeout": 5.0,
    "retry": None,
    "disable": False,
    "proxy": None,
    "verify": True,
    "ca_certs": None,
    "spool_dir": None,
    "spool_max_bytes": 50_000_000,
}
"""Every setting ``ANALYTICS_*`` may give, and its default."""


class Settings:
    """What a client was built with: immutable, and its ``repr`` shows no write key."""

    # A plain slotted class: a 16-field NamedTuple costs a quarter of a millisecond to define,
    # on every cold start.
    __slots__ = (
        "ca_certs",
        "connect_timeout",
        "disable",
        "exit_timeout",
        "flush_at",
        "flush_interval",
        "gzip",
        "max_queue_size",
        "proxy",
        "region",
        "retry",
        "spool_dir",
        "spool_max_bytes",
        "timeout",
        "url",
        "verify",
        "write_key",
    )
    write_key: str
    url: str
    """Where batches are POSTed: ``host`` (or the region's) and ``path``."""
    region: str
    flush_at: int
    flush_interval: float
    max_queue_size: int
    gzip: bool
    timeout: float
    connect_timeout: float
    exit_timeout: float
    """The longest ``close()`` without a timeout, and the flush at interpreter exit, may take."""
    retry: RetryPolicy
    disable: bool
    proxy: str | None
    verify: bool
    ca_certs: str | None
    spool_dir: str | None
    spool_max_bytes: int

    def __init__(self, **values: Any) -> None:
        for name in self.__slots__:
            object.__setattr__(self, name, values[name])

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(
            f"Settings are immutable: {name} was resolved when the client was built"
        )

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Settings are immutable")

    def as_dict(self) -> dict[str, Any]:
        """Every setting by name (the write key included: keep it out of logs)."""
        return {name: getattr(self, name) for name in self.__slots__}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Settings) and self.as_dict() == other.as_dict()

    def __hash__(self) -> int:
        return hash(tuple(str(v) for v in self.as_dict().values()))

    def __repr__(self) -> str:
        shown = dict(self.as_dict(), write_key="<redacted>")
        if self.proxy is not None:
            shown["proxy"] = _without_password(self.proxy)
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


def resolve(arguments: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``arguments`` (``None`` means not given), then ``ANALYTICS_*``, then defaults.

    Raises ConfigurationError naming the setting (or the variable) that is wrong.
    """
    from_env = settings_from_env(os.environ if environ is None else environ)
    value: dict[str, Any] = {}
    for name, default in DEFAULTS.items():
        given = arguments.get(name)
        value[name] = given if given is not None else from_env.get(name, default)
    key, disable = value["write_key"], bool(value["disable"])
    if key is not None and not isinstance(key, str):
        raise ConfigurationError("write_key must be a string")
    if not key and not disable:
        raise ConfigurationError("write_key is required (or pass disable=True)")
    region = value["region"]
    if region not in REGIONS:
        raise ConfigurationError(f"region must be one of {', '.join(REGIONS)}: {region!r}")
    for name in ("flush_at", "max_queue_size", "spool_max_bytes"):
        if not isinstance(value[name], int) or isinstance(value[name], bool) or value[name] < 1:
            raise ConfigurationError(f"{name} must be an integer of at least 1")
    for name in ("flush_interval", "timeout", "connect_timeout", "exit_timeout"):
        number = value[name]
        if not isinstance(number, (int, float)) or isinstance(number, bool) or not number > 0:
            raise ConfigurationError(f"{name} must be a positive number of seconds")
        check_seconds(name, number)
    retry = value["retry"] if value["retry"] is not None else RetryPolicy()
    if not isinstance(retry, RetryPolicy):
        raise ConfigurationError("retry must be a RetryPolicy")
    max_retries = arguments.get("max_retries")
    if max_retries is not None:  # a shortcut, as the other SDKs have it
        if arguments.get("retry") is not None:
            raise ConfigurationError("give retry= or max_retries=, not both")
        retry = retry.replace(max_retries=max_retries)
    base = (value["host"] or REGIONS[region]).rstrip("/")
    if "://" not in base:
        base = "https://" + base
    spool_dir = value["spool_dir"]
    ca_certs, proxy = value["ca_certs"], value["proxy"]
    if ca_certs is not None and not os.path.exists(ca_certs):
        raise ConfigurationError(f"ca_certs: no such file or directory: {ca_certs!r}")
    if proxy is not None:
        check_proxy(proxy)
    return Settings(
        write_key=key or "",
        url=base + "/" + str(value["path"]).lstrip("/"),
        region=region,
        flush_at=min(value["flush_at"], batching.MAX_BATCH_MESSAGES),
        flush_interval=float(value["flush_interval"]),
        max_queue_size=value["max_queue_size"],
        gzip=bool(value["gzip"]),
        timeout=float(value["timeout"]),
        connect_timeout=float(value["connect_timeout"]),
        exit_timeout=float(value["exit_timeout"]),
        retry=retry,
        disable=disable,
        proxy=value["proxy"],
        verify=bool(value["verify"]),
        ca_certs=value["ca_certs"],
        spool_dir=None if spool_dir is None else os.fspath(spool_dir),
        spool_max_bytes=value["spool_max_bytes"],
    )


def check_proxy(proxy: object) -> None:
    """ConfigurationError unless ``proxy`` is an http(s) URL (credentials never quoted)."""
    if not isinstance(proxy, str):
        raise ConfigurationError(f"proxy must be a URL string, not {type(proxy).__name__}")
    scheme, _, rest = proxy.partition("://")
    if scheme.lower() not in ("http", "https") or not rest.strip("/"):
        raise ConfigurationError(
            f"proxy must be an http:// or https:// URL: {_without_password(proxy)!r}"
        )


def proxy_credentials(proxy: str | None) -> tuple[str, str] | None:
    """``(user, password)`` from ``http://user:password@host:port``, percent-decoded, or None."""
    if proxy is None:
        return None
    netloc = proxy.partition("://")[2].split("/", 1)[0]
    if "@" not in netloc:
        return None
    from urllib.parse import unquote  # only for proxies with credentials

    user, _, password = netloc.rpartition("@")[0].partition(":")
    return unquote(user), unquote(password)


def _without_password(proxy: str) -> str:
    scheme, sep, rest = proxy.partition("://")
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:
        user = netloc.rpartition("@")[0].partition(":")[0]
        netloc = f"{user}:<redacted>@{netloc.rpartition('@')[2]}"
    return f"{scheme}{sep}{netloc}{slash}{path}"


MAX_SECONDS: Final = 900.0
"""The longest a Lambda function can run: a duration above it was meant in milliseconds."""


def check_seconds(name: str, seconds: float | None) -> None:
    """ConfigurationError for a duration that can only be milliseconds (``timeout=10000``)."""
    if seconds is not None and seconds > MAX_SECONDS:
        raise ConfigurationError(
            f"{name}={seconds:g}: durations are in seconds, not milliseconds"
            f" (at most {MAX_SECONDS:g}); did you mean {seconds / 1000:g}?"
        )
