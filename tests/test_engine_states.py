"""A Hypothesis state machine over the delivery engine: no message is ever lost or reported twice.

A scripted transport answers each attempt with the next outcome the machine pushed (2xx, a
retried or final status, an exception of any kind raised from ``send``, or a stall past the
deadline; 200 once the script is empty) and decodes every body to learn which messageIds the
attempt carried.  The machine makes the six calls (with and without a callback, some inside a
``deadline``), flushes (no timeout, ``timeout=0`` and short ones), enters and leaves a ``hold``
block, and after every step places each message in exactly one state:

``queued``     created outside a hold (or the hold ended), never attempted, not final;
``held``       created inside the open hold, never attempted;
``in_flight``  sent, its answer to be read by a later flush (the batch of the last attempt);
``sent``       accepted by a 2xx that the client has read;
``reported``   given to ``on_error`` (and to its callback, if it has one);
``spooled``    in the spool directory, to be sent by a later flush.

Everything is inferred from what a user can see: the attempts on the wire, ``on_error``, the
callbacks, the spool directory, ``CallResult``/``FlushResult`` and ``stats``.  A message
without a callback whose batch was accepted is ``sent`` or ``in_flight``; ``stats.sent`` says
how many were read, and only the batch of the last attempt may be left in flight.  Whatever
fits none of the states (an attempt that failed, was never reported, spooled or retried, and
is not counted in ``stats.queued``) is a lost message and fails the test.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from lambda_analytics import (
    Analytics,
    DeliveryError,
    Response,
    RetryPolicy,
    TransportError,
)

OK = "200"
RETRIED_STATUSES = ("408", "429", "500", "503")
FINAL_STATUSES = ("400", "401", "413")
EXCEPTIONS: dict[str, Callable[[str], BaseException]] = {
    "ConnectionError": ConnectionError,
    "OSError": OSError,
    "ValueError": ValueError,
    "RuntimeError": RuntimeError,
    "TimeoutError": TimeoutError,
    "TransportError": TransportError,
}
STALL = "stall"
OUTCOMES = (OK, *RETRIED_STATUSES, *FINAL_STATUSES, *EXCEPTIONS, STALL)
STALL_AT_MOST = 0.05

QUEUED, HELD, IN_FLIGHT, SENT, REPORTED, SPOOLED = STATES = (
    "queued",
    "held",
    "in_flight",
    "sent",
    "reported",
    "spooled",
)
FINAL = frozenset({SENT, REPORTED})

KINDS = ("identify", "track", "page", "screen", "group", "alias")
MESSAGE_ID = re.compile(rb'"messageId"\s*:\s*"([^"]+)"')
FAST_RETRY = RetryPolicy(
    max_retries=2, backoff_initial=0.001, backoff_max=0.002, jitter=0.0, min_attempt_time=0.0
)
SLACK = 0.01  # seconds: clocks read a little apart


class Attempt(NamedTuple):
    message_ids: tuple[str, ...]
    outcome: str
    timeout: float | None

    @property
    def accepted(self) -> bool:
        return self.outcome == OK


class ScriptedTransport:
    """Answers each attempt with the next scripted outcome; 200 when the script is empty."""

    def __init__(self) -> None:
        self.script: list[str] = []
        self.attempts: list[Attempt] = []

    def send(self, url: str, body: bytes, headers: Any, timeout: float | None) -> Response:
        ids = tuple(message["messageId"] for message in json.loads(body)["batch"])
        outcome = self.script.pop(0) if self.script else OK
        self.attempts.append(Attempt(ids, outcome, timeout))
        if outcome.isdigit():
            return Response(int(outcome), {}, b'{"error":"scripted"}')
        if outcome == STALL:
            time.sleep(0.0 if timeout is None else max(0.0, min(timeout, STALL_AT_MOST)))
            raise TimeoutError("scripted: stalled past the deadline")
        raise EXCEPTIONS[outcome](f"scripted {outcome}")

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass


class PipeliningTransport(ScriptedTransport):
    """Also sends now and answers later (``Pipelining``): a full batch is left in flight.

    The outcome is drawn (and the attempt recorded) when the request goes out; ``finish``
    hands it over later, as a server's answer read by the next flush would be.
    """

    def begin(self, url: str, body: bytes, headers: Any, timeout: float | None) -> Answered:
        try:
            return Answered(self.send(url, body, headers, timeout), None)
        except Exception as exc:
            return Answered(None, exc)


class Answered:
    def __init__(self, response: Response | None, error: Exception | None) -> None:
        self.response, self.error = response, error

    def finish(self, timeout: float | None) -> Response:
        if self.error is not None:
            raise self.error
        assert self.response is not None
        return self.response

    def abandon(self) -> None:
        pass


def call(client: Analytics, kind: str, callback: Any) -> Any:
    """One of the six calls, with the fields it requires."""
    if kind == "identify":
        return client.identify(user_id="u1", traits={"plan": "pro"}, callback=callback)
    if kind == "track":
        return client.track(user_id="u1", event="Clicked", callback=callback)
    if kind == "page":
        return client.page(user_id="u1", name="Home", callback=callback)
    if kind == "screen":
        return client.screen(user_id="u1", name="Settings", callback=callback)
    if kind == "group":
        return client.group(user_id="u1", group_id="acme", callback=callback)
    return client.alias(user_id="u1", previous_id="a1", callback=callback)


class StepInfo:
    """What a step was, and what its call or flush returned."""

    def __init__(self, name: str, holding: bool) -> None:
        self.name = name
        self.holding = holding
        self.call_result: Any = None
        self.flush_result: Any = None


class EngineStates(RuleBasedStateMachine):
    """Without a spool: a message ends ``sent`` or ``reported``."""

    use_spool = False
    pipelining = False

    def __init__(self) -> None:
        super().__init__()
        self.spool_dir = tempfile.mkdtemp(prefix="engine-states-") if self.use_spool else None
        self.transport = PipeliningTransport() if self.pipelining else ScriptedTransport()
        self.client: Analytics | None = None
        self.flush_at = 1
        self.max_queue_size = 1
        self.hold_stack: contextlib.ExitStack | None = None
        self.state: dict[str, str] = {}
        self.live_callback: set[str] = set()  # a callback not called yet
        self.callback_calls: Counter[str] = Counter()
        self.ever_reported: Counter[str] = Counter()
        self.accepted: Counter[str] = Counter()  # 2xx attempts that carried it
        self.last_attempt_ok: dict[str, bool] = {}
        self.serial_to_id: dict[int, str] = {}
        self.serials = 0
        # What the current step saw.
        self.callback_events: list[tuple[int, DeliveryError | None, Any]] = []
        self.error_events: list[tuple[Any, list[Any]]] = []
        self.broken = False  # a step failed: teardown only cleans up

    # -- hooks: record only (the client swallows what a hook raises) -------------------------

    def on_error(self, error: Any, messages: list[Any]) -> None:
        self.error_events.append((error, list(messages)))

    def make_callback(self) -> tuple[int, Callable[[Any, Any], None]]:
        self.serials += 1
        serial = self.serials

        def callback(error: Any, message: Any) -> None:
            self.callback_events.append((serial, error, message))

        return serial, callback

    # -- setup --------------------------------------------------------------------------------

    @initialize(
        flush_at=st.sampled_from([1, 2, 3]),
        max_queue_size=st.sampled_from([2, 4, 100]),
    )
    def create_client(self, flush_at: int, max_queue_size: int) -> None:
        self.flush_at, self.max_queue_size = flush_at, max_queue_size
        self.client = Analytics(
            "wk",
            host="http://127.0.0.1:9",
            flush_at=flush_at,
            max_queue_size=max_queue_size,
            retry=FAST_RETRY,
            on_error=self.on_error,
            transport=self.transport,
            spool_dir=self.spool_dir,
        )

    # -- rules --------------------------------------------------------------------------------

    @rule(outcomes=st.lists(st.sampled_from(OUTCOMES), min_size=1, max_size=3))
    def push(self, outcomes: list[str]) -> None:
        self.transport.script.extend(outcomes)

    @rule(kind=st.sampled_from(KINDS), with_callback=st.booleans())
    def make_call(self, kind: str, with_callback: bool) -> None:
        self.do_call(kind, with_callback, None)

    @rule(
        kind=st.sampled_from(KINDS),
        with_callback=st.booleans(),
        seconds=st.sampled_from([0.0, 0.02, 1.0]),
    )
    def call_with_deadline(self, kind: str, with_callback: bool, seconds: float) -> None:
        self.do_call(kind, with_callback, seconds)

    @rule(timeout=st.sampled_from([None, 0.0, 0.02, 1.0]))
    def flush(self, timeout: float | None) -> None:
        client = self.ready_client()
        with self.step("flush", limit=timeout) as step:
            step.flush_result = client.flush(timeout=timeout)

    @precondition(lambda self: self.hold_stack is None)
    @rule()
    def hold_begin(self) -> None:
        client = self.ready_client()
        with self.step("hold_begin"):
            stack = contextlib.ExitStack()
            stack.enter_context(client.hold())
            self.hold_stack = stack

    @precondition(lambda self: self.hold_stack is not None)
    @rule()
    def hold_end(self) -> None:
        self.end_hold()

    def end_hold(self) -> None:
        assert self.hold_stack is not None
        stack, self.hold_stack = self.hold_stack, None
        for mid, state in self.state.items():  # they join the client's queue
            if state == HELD:
                self.state[mid] = QUEUED
        with self.step("hold_end"):
            stack.close()

    def do_call(self, kind: str, with_callback: bool, seconds: float | None) -> None:
        client = self.ready_client()
        serial, callback = self.make_callback() if with_callback else (0, None)
        holding = self.hold_stack is not None
        with self.step(kind, limit=seconds) as step:
            scope = client.deadline(seconds) if seconds is not None else contextlib.nullcontext()
            with scope:
                result = call(client, kind, callback)
            step.call_result = result
            mid = result.message_id
            assert mid not in self.state, f"{kind} returned a messageId already used: {mid}"
            self.state[mid] = HELD if holding else QUEUED
            if with_callback:
                self.serial_to_id[serial] = mid
                self.live_callback.add(mid)

    def ready_client(self) -> Analytics:
        assert self.client is not None
        return self.client

    # -- one step: run it, then account for every message ----------------------------------

    @contextlib.contextmanager
    def step(self, name: str, *, limit: float | None = None) -> Any:
        """Run the body (a call, flush or hold edge), then place every message it touched.

        ``limit``: the deadline or flush timeout the body ran under, in seconds.
        """
        client = self.ready_client()
        self.broken = True
        self.callback_events.clear()
        self.error_events.clear()
        first_attempt = len(self.transport.attempts)
        before = client.stats
        info = StepInfo(name, self.hold_stack is not None)
        try:
            yield info
        except AssertionError:
            raise
        except Exception as exc:
            raise AssertionError(
                f"{name} raised {type(exc).__name__}: {exc!r}; a delivery problem must never "
                "raise out of a call or flush (the messages it carried are lost)"
            ) from exc
        attempts = self.transport.attempts[first_attempt:]
        self.account(info, before, attempts, limit)
        self.broken = False

    def account(
        self, info: StepInfo, before: Any, attempts: list[Attempt], limit: float | None
    ) -> None:
        client = self.ready_client()
        after = client.stats
        name = info.name
        prior_in_flight = {m for m, s in self.state.items() if s == IN_FLIGHT}
        prior_spooled = {m for m, s in self.state.items() if s == SPOOLED}
        held_now = {m for m, s in self.state.items() if s == HELD}

        # The wire.
        attempted: set[str] = set()
        for attempt in attempts:
            if limit is not None:
                assert attempt.timeout is not None and attempt.timeout <= limit + SLACK, (
                    f"{name}: an attempt under a {limit}s limit got timeout={attempt.timeout}"
                )
            for mid in attempt.message_ids:
                assert mid in self.state, f"{name}: unknown messageId {mid} on the wire"
                state = self.state[mid]
                assert state not in FINAL, f"{name}: {mid} sent again after it was {state}"
                if state == HELD and info.name not in ("flush", "hold_end"):
                    assert len(held_now) >= self.max_queue_size, (
                        f"{name}: held message {mid} sent before a flush "
                        f"({len(held_now)} held, max_queue_size={self.max_queue_size})"
                    )
                attempted.add(mid)
                self.last_attempt_ok[mid] = attempt.accepted
                if attempt.accepted:
                    self.accepted[mid] += 1
                    assert self.accepted[mid] == 1, (
                        f"{name}: {mid} accepted by the server {self.accepted[mid]} times"
                    )

        # on_error.
        reported_now: set[str] = set()
        for error, messages in self.error_events:
            assert isinstance(error, DeliveryError), f"{name}: on_error got {error!r}"
            for message in messages:
                mid = message["messageId"]
                assert mid in self.state, f"{name}: on_error reported unknown {mid}"
                self.ever_reported[mid] += 1
                assert self.ever_reported[mid] == 1, f"{name}: on_error reported {mid} twice"
                assert not self.accepted[mid], (
                    f"{name}: {mid} was accepted by a 2xx and then reported: {error!r}"
                )
                reported_now.add(mid)

        # Callbacks.
        callback_sent: set[str] = set()
        callback_failed: dict[str, Any] = {}
        for serial, error, message in self.callback_events:
            mid = self.serial_to_id.get(serial, "")
            assert mid, f"{name}: a callback ran for a message whose call had not returned"
            assert message["messageId"] == mid, f"{name}: callback of {mid} got {message!r}"
            self.callback_calls[mid] += 1
            assert self.callback_calls[mid] == 1, f"{name}: callback of {mid} called twice"
            self.live_callback.discard(mid)
            if error is None:
                assert self.last_attempt_ok.get(mid), (
                    f"{name}: callback says {mid} was sent, but no 2xx carried it last"
                )
                callback_sent.add(mid)
            else:
                assert isinstance(error, DeliveryError), f"{name}: callback got {error!r}"
                callback_failed[mid] = error
        for mid in reported_now:
            assert mid not in self.live_callback, f"{name}: {mid} reported, callback not called"
            assert mid not in callback_sent, f"{name}: {mid} reported, callback told it was sent"

        # The spool.
        spooled_now = self.spool_ids()
        for mid in spooled_now:
            assert mid in self.state, f"{name}: unknown messageId {mid} in the spool"
            assert not self.accepted[mid], f"{name}: {mid} accepted, yet still spooled"
            assert mid not in reported_now, f"{name}: {mid} both reported and spooled"

        # Place every message the step touched.
        unsettled: set[str] = set()  # sent or in flight: stats.sent tells how many were read
        for mid in list(self.state):
            state = self.state[mid]
            if mid in reported_now:
                self.state[mid] = REPORTED
            elif mid in callback_sent:
                self.state[mid] = SENT
            elif mid in spooled_now:
                if state != SPOOLED:
                    assert mid not in self.live_callback, (
                        f"{name}: {mid} spooled without calling its callback"
                    )
                self.state[mid] = SPOOLED
            elif mid in callback_failed:
                # Told "not delivered" but not reported: spooled, then maybe claimed again.
                assert self.use_spool, (
                    f"{name}: callback of {mid} got {callback_failed[mid]!r}, "
                    "but on_error was not told and there is no spool"
                )
                unsettled.add(mid)
            elif mid in attempted or mid in prior_in_flight or mid in prior_spooled:
                unsettled.add(mid)
        read = after.sent - before.sent - len(callback_sent)
        self.place_unsettled(name, unsettled, read, attempts, prior_in_flight)

        # Counters and results.
        assert (after.dropped, after.disabled, after.after_close) == (0, 0, 0), after
        assert after.failed - before.failed == len(reported_now), (
            f"{name}: stats.failed grew by {after.failed - before.failed}, "
            f"{len(reported_now)} messages reported"
        )
        self.check_call_result(info)
        self.check_flush_result(info, before, after, reported_now, spooled_now, prior_spooled)

    def place_unsettled(
        self,
        name: str,
        unsettled: set[str],
        read: int,
        attempts: list[Attempt],
        prior_in_flight: set[str],
    ) -> None:
        """Each of ``unsettled`` was read as sent or is in flight; ``read`` were read.

        Only one batch may be in flight: the one of the step's last attempt or, in a step that
        made no attempt, the one already in flight.
        """
        last = set(attempts[-1].message_ids) if attempts else prior_in_flight
        for flying in (set(), last & unsettled):
            landed = unsettled - flying
            if len(landed) != read or landed & self.live_callback:
                continue
            if not all(self.last_attempt_ok.get(mid) for mid in landed):
                continue
            for mid in landed:
                self.state[mid] = SENT
            for mid in flying:
                self.state[mid] = IN_FLIGHT
            return

        def describe(mid: str) -> str:
            ok = self.last_attempt_ok.get(mid)
            last_attempt = "none" if ok is None else "2xx" if ok else "failed"
            pending = ", callback not called" if mid in self.live_callback else ""
            return f"{mid[:8]} (was {self.state[mid]}, last attempt {last_attempt}{pending})"

        raise AssertionError(
            f"{name}: {len(unsettled)} messages neither reported nor spooled nor queued "
            f"[{', '.join(describe(mid) for mid in sorted(unsettled))}]: {read} of them read "
            f"as sent (stats.sent), the rest can be in flight only as the whole last batch "
            f"{sorted(m[:8] for m in last)} - so some were lost"
        )

    def check_call_result(self, info: StepInfo) -> None:
        result = info.call_result
        if result is None:
            return
        state = self.state[result.message_id]
        name = info.name
        assert not result.dropped, f"{name}: dropped without middleware: {result!r}"
        assert result.delivered == (state == SENT), f"{name}: {result!r} but {state}"
        assert (result.error is not None) == (state in (REPORTED, SPOOLED)), (
            f"{name}: {result!r} but {state}"
        )
        if state != SPOOLED:  # a spooled message does wait for a later flush: either reads
            assert result.queued == (state in (QUEUED, HELD, IN_FLIGHT)), (
                f"{name}: {result!r} but {state}"
            )
        if self.flush_at == 1 and not info.holding:
            assert state not in (QUEUED, IN_FLIGHT), f"{name}: flush_at=1 left it {state}"

    def check_flush_result(
        self,
        info: StepInfo,
        before: Any,
        after: Any,
        reported_now: set[str],
        spooled_now: set[str],
        prior_spooled: set[str],
    ) -> None:
        result = info.flush_result
        if result is None:
            return
        name = info.name
        left = [m for m, s in self.state.items() if s in (QUEUED, HELD, IN_FLIGHT)]
        assert not left, f"{name}: flush left {len(left)} messages queued, held or in flight"
        assert result.sent == after.sent - before.sent, f"{name}: {result!r}, stats {after!r}"
        failed_ids = [message["messageId"] for message in result.failed_messages]
        assert result.failed == len(failed_ids), f"{name}: {result!r}"
        assert sorted(failed_ids) == sorted(reported_now), (
            f"{name}: failed_messages {failed_ids} but on_error got {sorted(reported_now)}"
        )
        assert all(isinstance(error, DeliveryError) for error in result.errors), result
        assert bool(result.errors) or not result.failed, f"{name}: failures without errors"
        assert len(spooled_now - prior_spooled) <= result.spooled <= len(spooled_now), (
            f"{name}: {result!r}, {len(spooled_now)} in the spool, "
            f"{len(spooled_now - prior_spooled)} new"
        )

    def spool_ids(self) -> set[str]:
        if self.spool_dir is None:
            return set()
        found: set[str] = set()
        for path in Path(self.spool_dir).rglob("*"):
            if path.is_file() and "corrupt" not in path.name:
                found.update(m.decode() for m in MESSAGE_ID.findall(path.read_bytes()))
        return found

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def every_message_has_one_state(self) -> None:
        if self.client is None:
            return
        self.broken = True
        assert all(state in STATES for state in self.state.values())
        covered = (
            {m for m, n in self.accepted.items() if n}
            | set(self.ever_reported)
            | self.spool_ids()
            | {m for m, s in self.state.items() if s in (QUEUED, HELD, IN_FLIGHT)}
        )
        missing = set(self.state) - covered
        assert not missing, f"not accepted, reported, spooled or pending: {sorted(missing)}"
        for mid, state in self.state.items():
            assert self.ever_reported[mid] <= 1 and self.callback_calls[mid] <= 1, mid
            assert not (self.accepted[mid] and self.ever_reported[mid]), mid
            assert (state == REPORTED) == bool(self.ever_reported[mid]), (mid, state)
        self.broken = False

    @invariant()
    def stats_queued_counts_queue_and_flight(self) -> None:
        if self.client is None:
            return
        self.broken = True
        pending = sum(1 for s in self.state.values() if s in (QUEUED, IN_FLIGHT))
        stats = self.client.stats
        assert stats.queued == pending, (
            f"stats.queued={stats.queued}, but {pending} messages are queued or in flight "
            f"({Counter(self.state.values())})"
        )
        self.broken = False

    # -- teardown -------------------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            if self.client is not None and not self.broken:
                if self.hold_stack is not None:
                    self.end_hold()
                self.transport.script.clear()
                self.flush(None)
                self.stats_queued_counts_queue_and_flight()
                left = Counter(s for s in self.state.values() if s not in FINAL)
                assert not left, f"after the final flush: {dict(left)}"
                assert not self.spool_ids(), "after the final flush the spool is not empty"
        finally:
            if self.hold_stack is not None:
                with contextlib.suppress(Exception):
                    self.hold_stack.close()
            if self.client is not None:
                self.transport.script.clear()
                with contextlib.suppress(Exception):
                    self.client.close(timeout=0.5)
            if self.spool_dir is not None:
                shutil.rmtree(self.spool_dir, ignore_errors=True)


class EngineStatesWithSpool(EngineStates):
    """With a spool: transient failures wait in it, and a later flush sends them."""

    use_spool = True


class EngineStatesPipelined(EngineStates):
    """With a transport that pipelines: a full batch stays in flight until the next flush."""

    pipelining = True


STATEFUL = settings(
    max_examples=60,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
EngineStates.TestCase.settings = STATEFUL
EngineStatesWithSpool.TestCase.settings = STATEFUL
EngineStatesPipelined.TestCase.settings = STATEFUL

TestEngineStates = EngineStates.TestCase
TestEngineStatesWithSpool = EngineStatesWithSpool.TestCase
TestEngineStatesPipelined = EngineStatesPipelined.TestCase
