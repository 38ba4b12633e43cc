"""When to retry a batch and how long to wait.

:meth:`RetryPolicy.decide` is pure (the clocks and the random draw are inputs), so its tests
are tables; ``delivery.deliver``, the one retry loop, feeds it the live clocks.  urllib3's own
``Retry`` re-sends the same body, so it can neither refresh ``sentAt`` and ``X-Retry-Count``
nor see our deadline; the transport runs with ``retries=False``.
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

from .errors import ConfigurationError

RETRYABLE_STATUSES: Final = frozenset(
    {408, 410, 429, 460} | {s for s in range(500, 600) if s not in (501, 505)}
)
"""Statuses worth another attempt; every other non-2xx answer (400, 401, 413, 3xx...) is final."""


class RetryDecision(NamedTuple):
    """What to do after a failed attempt: ``retry`` after ``delay`` seconds, or stop."""

    retry: bool
    delay: float = 0.0
    reason: str = ""
    out_of_time: bool = False
    """It stopped because the deadline leaves no time, not because of the answer or the count."""


class RetryPolicy:
    """An immutable retry policy; :meth:`replace` returns a changed copy.

    Defaults suit billed, short invocations: the first backoff is about 100 ms (with jitter),
    doubling to at most ``backoff_max``; ``Retry-After`` is obeyed up to ``max_retry_after``.
    No attempt starts unless at least ``min_attempt_time`` remains before the deadline.
    ``jitter`` scales each delay by a uniform factor in ``[1 - jitter, 1 + jitter]``.
    """

    # A plain class rather than a dataclass: dataclasses imports inspect, which is cold-start
    # time on every import of the package.
    __slots__ = (
        "backoff_factor",
        "backoff_initial",
        "backoff_max",
        "jitter",
        "max_retries",
        "max_retry_after",
        "min_attempt_time",
        "retry_statuses",
    )
    max_retries: int
    backoff_initial: float
    backoff_factor: float
    backoff_max: float
    jitter: float
    max_retry_after: float
    min_attempt_time: float
    retry_statuses: frozenset[int]

    def __init__(
        self,
        *,
        max_retries: int = 3,
        backoff_initial: float = 0.1,
        backoff_factor: float = 2.0,
        backoff_max: float = 5.0,
        jitter: float = 0.5,
        max_retry_after: float = 60.0,
        min_attempt_time: float = 0.05,
        retry_statuses: frozenset[int] = RETRYABLE_STATUSES,
    ) -> None:
        if max_retries < 0:
            raise ConfigurationError("max_retries must be 0 or more")
        if min(backoff_initial, backoff_max, max_retry_after, min_attempt_time) < 0:
            raise ConfigurationError("backoff, Retry-After and attempt limits must not be negative")
        if backoff_factor < 1:
            raise ConfigurationError("backoff_factor must be at least 1")
        if not 0 <= jitter <= 1:
            raise ConfigurationError("jitter must be between 0 and 1")
        values = dict(locals())
        for name in self.__slots__:
            object.__setattr__(self, name, values[name])

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"RetryPolicy is immutable: use replace({name}=...)")

    def replace(self, **changes: Any) -> RetryPolicy:
        """A copy with ``changes`` applied (and validated)."""
        return RetryPolicy(**{**self._fields(), **changes})

    def _fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __reduce__(self) -> tuple[Any, ...]:
        # pickle (Spark ships settings to executors) cannot set slots past __setattr__.
        return (_rebuild, (self._fields(),))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RetryPolicy) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(tuple(self._fields().values()))

    def __repr__(self) -> str:
        shown = {k: v for k, v in self._fields().items() if k != "retry_statuses"}
        return "RetryPolicy(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

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
            return RetryDecision(False, delay, "the deadline leaves no time to retry", True)
        return RetryDecision(True, delay)


def _rebuild(fields: dict[str, Any]) -> RetryPolicy:
    return RetryPolicy(**fields)


def parse_retry_after(value: str, wall_now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), or ``None``."""
    value = value.strip()
    # isascii() first: "²".isdigit() is true and float("²") raises.
    if value.isascii() and value.isdigit():
        return float(value)
    if not value.isascii():
        return None
    import email.utils  # only an HTTP-date Retry-After needs it: keep it off the import path

    try:
        seconds = email.utils.parsedate_to_datetime(value).timestamp() - wall_now
    except (TypeError, ValueError, IndexError, OverflowError):  # a header is the server's word
        return None
    return max(0.0, seconds)
