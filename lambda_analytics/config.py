"""Settings for the default client, read from ``ANALYTICS_*`` environment variables."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

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
