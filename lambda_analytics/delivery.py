"""How we retry: one loop sends an attempt, asks the retry policy, sleeps, stops at the deadline.

Batches and OAuth token requests both go through :func:`deliver`.  It knows nothing of HTTP
or messages: the caller gives it a ``send`` that makes one attempt (already behind the
transport boundary, so it raises only DeliveryError) and a ``judge`` that says whether a
response is a success.  Nothing here holds a lock.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import NamedTuple

from .errors import DeadlineExceededError, DeliveryError, StaleConnectionError, TransportError
from .results import Response
from .retry import RetryPolicy


class Attempt(NamedTuple):
    """One try: its number (1 for the first), how many went before it, and the time left."""

    number: int
    previous: int
    """Sent as ``X-Retry-Count``."""
    timeout: float | None
    started: float


Observer = Callable[[Attempt, "Response | None", "DeliveryError | None"], None]


def deliver(
    send: Callable[[Attempt], Response],
    *,
    policy: RetryPolicy,
    deadline: float | None,
    judge: Callable[[Response], DeliveryError | None],
    observe: Observer | None = None,
    refresh: Callable[[Response], bool] | None = None,
    under_way: Callable[[float | None], Response] | None = None,
    random: Callable[[], float] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Response | DeliveryError:
    """Make attempts until one succeeds, the policy gives up or the deadline leaves no time.

    Returns the successful Response, or the DeliveryError that ends delivery (wrapped in a
    DeadlineExceededError when time ran out).  ``refresh(response)`` may ask for one
    immediate resend after a refusal (a new OAuth token); a StaleConnectionError gets one
    too.  Neither counts as a retry, and both stay within the deadline.  ``under_way`` reads
    the response of a first attempt already sent (a pipelined batch).
    """
    draw = random or _random
    number = retries = 0
    error: DeliveryError | None = None
    resent_stale = refreshed = False  # one free resend of each kind
    while True:
        now = clock()
        left = None if deadline is None else deadline - now
        attempt = Attempt(number + 1, number, left, now)
        response: Response | None = None
        if under_way is None and left is not None and left < policy.min_attempt_time:
            return out_of_time(error)
        number += 1
        try:
            if under_way is not None:
                pending, under_way = under_way, None
                response = pending(left)
            else:
                response = send(attempt)
        except DeliveryError as exc:
            error = exc
        except Exception as exc:  # the boundary lets none through; if one does, it is reported
            error = TransportError(f"unexpected {type(exc).__name__} while sending")
        else:
            error = judge(response)
        if observe is not None:
            observe(attempt, response, error)
        if error is None:
            assert response is not None
            return response
        if isinstance(error, StaleConnectionError) and not resent_stale:
            resent_stale = True
            continue
        if response is not None and refresh is not None and not refreshed and refresh(response):
            refreshed = True
            continue
        if response is None and not isinstance(error, TransportError):
            return error  # no token, or out of time: another attempt would not help
        retries += 1
        decision = policy.decide(
            attempts=retries,
            status=None if response is None else response.status,
            retry_after=None if response is None else response.headers.get("retry-after"),
            now=clock(),
            deadline=deadline,
            wall_now=time.time(),
            random=draw(),
        )
        if not decision.retry:
            return out_of_time(error) if decision.out_of_time else error
        sleep(decision.delay)


def out_of_time(cause: DeliveryError | None) -> DeadlineExceededError:
    """The error for messages the deadline left no time to (re)send, naming the last failure."""
    if isinstance(cause, DeadlineExceededError):
        return cause
    detail = f" (last attempt: {cause})" if cause is not None else ""
    error = DeadlineExceededError(f"the deadline left no time to send{detail}")
    error.__cause__ = cause
    return error


def _random() -> float:
    # os.urandom rather than the random module: nothing to reseed after a fork or a
    # SnapStart restore, and nothing drawn at import time (refused on Cloudflare Workers).
    return int.from_bytes(os.urandom(7), "big") / (1 << 56)
