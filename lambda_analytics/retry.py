"""When to retry a batch and how long to wait.  Pure: the clock and the random draw are inputs.

urllib3's own ``Retry`` re-sends the same body, so it can neither refresh ``sentAt`` and
``X-Retry-Count`` nor see our deadline; the transport runs with ``retries=False`` and the
client asks :meth:`RetryPolicy.decide` after every attempt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from .errors import ConfigurationError

RETRYABLE_STATUSES: Final = frozenset(
    {408, 410, 429, 460} | {s for s in range(500, 600) if s not in (501, 505)}
)
"""Statuses worth another attempt; every other non-2xx answer (400, 401, 413, 3xx...) is final."""


@dataclass(frozen=True)
class RetryDecision:
    """What to do after a failed attempt: ``retry`` after ``delay`` seconds, or stop."""

    retry: bool
    delay: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class RetryPolicy:
    """An immutable retry policy.  Replace fields with :func:`dataclasses.replace`.

    Defaults suit billed, short invocations: the first backoff is about 100 ms (with jitter),
    doubling to at most ``backoff_max``; ``Retry-After`` is obeyed up to ``max_retry_after``.
    No attempt starts unless at least ``min_attempt_time`` remains before the deadline.
    """

    max_retries: int = 3
    backoff_initial: float = 0.1
    backoff_factor: float = 2.0
    backoff_max: float = 5.0
    jitter: float = 0.5
    """Each delay is scaled by a uniform factor in ``[1 - jitter, 1 + jitter]``."""
    max_retry_after: float = 60.0
    min_attempt_time: float = 0.05
    retry_statuses: frozenset[int] = field(default=RETRYABLE_STATUSES)

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ConfigurationError("max_retries must be 0 or more")
        if self.backoff_initial < 0 or self.backoff_max < 0 or self.max_retry_after < 0:
            raise ConfigurationError("backoff and Retry-After limits must not be negative")
        if self.backoff_factor < 1:
            raise ConfigurationError("backoff_factor must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError("jitter must be between 0 and 1")

    def is_retryable(self, status: int | None) -> bool:
        """``None`` stands for a network error or timeout: retryable."""
        return status is None or status in self.retry_statuses

    def backoff(self, retry_number: int, random: float) -> float:
        """Delay before retry number ``retry_number`` (1 for the first), ``random`` in [0, 1)."""
        base = self.backoff_initial * self.backoff_factor ** (retry_number - 1)
        return min(base, self.backoff_max) * (1 + self.jitter * (2 * random - 1))

    def decide(
        self,
        *,
        attempts: int,
        status: int | None,
        retry_after: str | None = None,
        now: float,
        deadline: float | None,
        wall_now: float,
        random: float,
    ) -> RetryDecision:
        """Decide after ``attempts`` attempts ended with ``status`` (``None``: no response).

        ``now`` and ``deadline`` are on the monotonic clock; ``wall_now`` is Unix time, for
        ``Retry-After`` given as an HTTP date.
        """
        if not self.is_retryable(status):
            return RetryDecision(False, reason=f"HTTP {status} is final")
        if attempts > self.max_retries:
            return RetryDecision(False, reason=f"gave up after {attempts} attempts")
        delay = self.backoff(attempts, random)
        asked = parse_retry_after(retry_after, wall_now) if retry_after is not None else None
        if asked is not None:
            delay = min(asked, self.max_retry_after)
        if deadline is not None and now + delay + self.min_attempt_time > deadline:
            return RetryDecision(False, delay, reason="the deadline leaves no time to retry")
        return RetryDecision(True, delay)


def parse_retry_after(value: str, wall_now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), or ``None``."""
    value = value.strip()
    if value.isdigit():
        return float(value)
    import email.utils  # only an HTTP-date Retry-After needs it: keep it off the import path

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - wall_now)
