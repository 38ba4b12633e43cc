"""The retry policy: pure tables with the clock and random draw as inputs."""

from __future__ import annotations

import email.utils

import pytest

from lambda_analytics import ConfigurationError, RetryPolicy
from lambda_analytics.retry import RETRYABLE_STATUSES, parse_retry_after

POLICY = RetryPolicy(jitter=0.0)
WALL = 1_800_000_000.0


@pytest.mark.parametrize("status", [None, 408, 410, 429, 460, 500, 502, 503, 504, 599])
def test_retryable(status: int | None) -> None:
    assert POLICY.is_retryable(status)


@pytest.mark.parametrize("status", [200, 301, 302, 400, 401, 403, 404, 413, 501, 505])
def test_final(status: int) -> None:
    assert not POLICY.is_retryable(status)
    decision = POLICY.decide(
        attempts=1, status=status, now=0, deadline=None, wall_now=WALL, random=0.5
    )
    assert not decision.retry
    assert "final" in decision.reason


def test_status_set_is_the_protocols() -> None:
    assert {501, 505}.isdisjoint(RETRYABLE_STATUSES)
    assert {408, 410, 429, 460, 500, 503}.issubset(RETRYABLE_STATUSES)


def test_backoff_starts_near_100ms_and_doubles_to_a_cap() -> None:
    assert [POLICY.backoff(n, 0.5) for n in range(1, 8)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0]
    jittered = RetryPolicy(jitter=0.5)
    assert jittered.backoff(1, 0.0) == pytest.approx(0.05)
    assert jittered.backoff(1, 0.999999) == pytest.approx(0.15, rel=1e-3)


def test_retries_are_counted() -> None:
    policy = RetryPolicy(max_retries=2, jitter=0)
    kwargs = {"status": 503, "now": 0.0, "deadline": None, "wall_now": WALL, "random": 0.5}
    assert policy.decide(attempts=1, **kwargs).retry  # type: ignore[arg-type]
    assert policy.decide(attempts=2, **kwargs).retry  # type: ignore[arg-type]
    assert not policy.decide(attempts=3, **kwargs).retry  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("3", 3.0),
        (" 0 ", 0.0),
        (email.utils.formatdate(WALL + 7, usegmt=True), 7.0),
        (email.utils.formatdate(WALL - 30, usegmt=True), 0.0),
        ("soon", None),
        ("\u00b2", None),  # a superscript two: isdigit() is true, float() raises
        ("\u0663", None),  # an Arabic-Indic three: float() would accept it, HTTP does not
        ("-5", None),
        ("1.5", None),
        ("Sun, 06 Nov 99999 08:49:37 GMT", None),
    ],
)
def test_retry_after_in_both_forms(header: str, expected: float | None) -> None:
    assert parse_retry_after(header, WALL) == expected


def test_retry_after_sets_the_delay_up_to_a_cap() -> None:
    decision = POLICY.decide(
        attempts=1, status=429, retry_after="2", now=0, deadline=None, wall_now=WALL, random=0.5
    )
    assert (decision.retry, decision.delay) == (True, 2.0)
    capped = RetryPolicy(max_retry_after=1.0).decide(
        attempts=1, status=429, retry_after="90", now=0, deadline=None, wall_now=WALL, random=0.5
    )
    assert capped.delay == 1.0


def test_a_retry_that_would_pass_the_deadline_is_not_started() -> None:
    ok = POLICY.decide(attempts=1, status=503, now=10.0, deadline=10.5, wall_now=WALL, random=0.5)
    assert ok.retry and ok.delay == 0.1
    late = POLICY.decide(
        attempts=1, status=503, now=10.0, deadline=10.12, wall_now=WALL, random=0.5
    )
    assert not late.retry and late.out_of_time and "deadline" in late.reason
    assert not POLICY.decide(
        attempts=1, status=400, now=0, deadline=1.0, wall_now=WALL, random=0.5
    ).out_of_time
    told = POLICY.decide(
        attempts=1, status=429, retry_after="5", now=0.0, deadline=2.0, wall_now=WALL, random=0.5
    )
    assert not told.retry


def test_policy_is_immutable_replaceable_and_validated() -> None:
    with pytest.raises(AttributeError, match="immutable"):
        POLICY.max_retries = 5  # type: ignore[misc]
    changed = POLICY.replace(max_retries=7)
    assert (changed.max_retries, changed.jitter, POLICY.max_retries) == (7, 0.0, 3)
    assert changed == RetryPolicy(max_retries=7, jitter=0.0) and changed != POLICY
    assert "max_retries=7" in repr(changed)
    with pytest.raises(ConfigurationError):
        POLICY.replace(backoff_factor=0.5)
    with pytest.raises(ConfigurationError):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ConfigurationError):
        RetryPolicy(jitter=2)
