"""Where lambda_analytics spends its own time per event; writes ``bench/PROFILE.md``.

    bench/.venv/bin/python bench/profile_client.py [--events N] [--pyinstrument]

(``python3 bench/run.py`` creates ``bench/.venv``.)  Three views, against the same loopback
collector as the benchmarks (``server.py``, in its own process):

1. a cost table from ``timeit`` (no profiler overhead): each step of a ``track`` call alone;
2. CPU per request of the HTTP path: bare ``pool.request``, with the SDK's timeouts, through
   ``Urllib3Transport.send``, and a whole ``track`` at ``flush_at=1``;
3. cProfile of the ``flush_at=1`` and the batch benchmark, lambda_analytics's own functions
   (cProfile inflates small functions; read it for the shape, the table for the numbers).

``--pyinstrument`` appends pyinstrument's call tree of the batch job.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import inspect
import os
import pstats
import shlex
import statistics
import subprocess
import sys
import time
import timeit
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from common import BENCH_DIR, WRITE_KEY, event

import lambda_analytics
from lambda_analytics import Analytics, Response, Urllib3Transport, batching, messages

OUT = BENCH_DIR / "PROFILE.md"


class NullTransport:
    """Answers 200 at once: a ``track`` through it costs everything but the HTTP request."""

    def send(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float | None
    ) -> Response:
        return Response(status=200, headers={}, body=b'{"success": true}')

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass


def per_call_us(cases: Mapping[str, Callable[[], object]], rounds: int = 25) -> dict[str, float]:
    """Microseconds per call of each case: the minimum over ``rounds`` short ``timeit`` rounds,
    the cases taking turns in every round.  On a shared machine (2 vCPUs that may be
    hyperthreads of one core) a neighbour can halve the speed for seconds; interleaving spreads
    each case over the whole measurement, and the minimum is the steadiest estimate of the
    intrinsic cost."""
    best = dict.fromkeys(cases, float("inf"))
    number = 2_000
    for _ in range(rounds):
        for name, fn in cases.items():
            best[name] = min(best[name], timeit.timeit(fn, number=number) / number * 1e6)
    return best


def step_costs() -> list[tuple[str, float]]:
    """Microseconds per call of each step of ``track`` for the benchmark's event."""
    from lambda_analytics import client as client_module

    kwargs = event(7)
    now = dt.datetime.now(dt.timezone.utc)
    new_id: Callable[[], str] = getattr(client_module, "_new_id", lambda: str(uuid.uuid4()))
    one = Analytics(WRITE_KEY, host="http://127.0.0.1:9", transport=NullTransport())
    many = Analytics(
        WRITE_KEY, host="http://127.0.0.1:9", transport=NullTransport(), flush_at=2_500
    )
    fields = {"event": kwargs["event"], "properties": kwargs["properties"]}

    # build_message's ``now`` was a datetime and became the formatted text: pass what it takes.
    wants_text = "str" in str(
        inspect.signature(messages.build_message).parameters["now"].annotation
    )
    now_arg: object = messages.format_timestamp(now) if wants_text else now

    def build() -> dict[str, Any]:
        return messages.build_message(
            "track", fields, user_id=kwargs["user_id"], now=now_arg, new_id=lambda: "id"
        )

    utc_text: Callable[[float], str] | None = getattr(messages, "utc_text", None)
    if utc_text is not None:
        clock = ("the clock: `utc_text(time.time())`", lambda: utc_text(time.time()))
    else:
        clock = (
            "the clock: `format_timestamp(datetime.now(utc))`",
            lambda: messages.format_timestamp(dt.datetime.now(dt.timezone.utc)),
        )

    message = build()
    message["messageId"] = new_id()
    envelope = batching.Envelope(WRITE_KEY)
    data = messages.encode_message(message)
    sent_at = messages.format_timestamp(now)
    one_flush = "one flush per event at flush_at=1 (derived: row 1 - row 2)"
    costs = per_call_us(
        {
            "`track()` whole, null transport, flush_at=1": lambda: one.track(**kwargs),
            "`track()` whole, null transport, flush_at=2500": lambda: many.track(**kwargs),
            "`build_message()` (id and clock fixed)": build,
            "`encode_message()`": lambda: messages.encode_message(message),
            "the message id (`client._new_id()`)": new_id,
            clock[0]: clock[1],
            one_flush: lambda: None,
            "`Envelope.encode()` of one message": lambda: envelope.encode([data], sent_at),
            "the benchmark's own `event(i)` (not SDK cost)": lambda: event(7),
        }
    )
    rows = list(costs.items())
    costs[one_flush] = rows[0][1] - rows[1][1]
    many.close()
    one.close()
    return list(costs.items())


def http_costs(url: str, reps: int = 9, n: int = 300) -> list[tuple[str, float]]:
    """Client CPU microseconds per request (median of ``reps`` interleaved rounds of ``n``)."""
    import urllib3

    captured: dict[str, Any] = {}

    class Capture(NullTransport):
        def send(
            self, url: str, body: bytes, headers: Mapping[str, str], timeout: float | None
        ) -> Response:
            captured.update(url=url, body=body, headers=dict(headers))
            return super().send(url, body, headers, timeout)

    Analytics(WRITE_KEY, host=url, transport=Capture()).track(**event(1))
    target, body, headers = captured["url"], captured["body"], captured["headers"]
    pool = urllib3.PoolManager()
    timeout = urllib3.Timeout(connect=3.0, read=10.0)
    transport = Urllib3Transport()
    client = Analytics(WRITE_KEY, host=url)
    cases: dict[str, Callable[[], object]] = {
        "`pool.request()` bare (no timeout)": lambda: pool.request(
            "POST", target, body=body, headers=headers, retries=False
        ),
        "`pool.request()` with the SDK's `Timeout(connect=3, read=10)`": lambda: pool.request(
            "POST", target, body=body, headers=headers, retries=False, timeout=timeout
        ),
        "`Urllib3Transport.send()`": lambda: transport.send(target, body, headers, None),
        "`Analytics.track()` at flush_at=1 (everything)": lambda: client.track(**event(3)),
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(reps):
        for name, fn in cases.items():
            fn()
            started = time.process_time()
            for _ in range(n):
                fn()
            samples[name].append((time.process_time() - started) / n * 1e6)
    client.close()
    return [(name, statistics.median(values)) for name, values in samples.items()]


def own_functions(profile: cProfile.Profile, events: int, top: int = 15) -> list[str]:
    """Markdown rows: lambda_analytics's functions by own time, and the split between the
    transport (calls from client.py into transport.py: urllib3 and its thin wrapper) and the
    rest of the SDK."""
    stats = pstats.Stats(profile)
    rows: list[tuple[float, float, int, str]] = []
    in_transport = total = 0.0
    client_py = os.path.join("lambda_analytics", "client.py")
    transport_py = os.path.join("lambda_analytics", "transport.py")
    entries: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]

    def nested(caller: tuple[str, int, str]) -> bool:
        """A client.py function that the transport itself calls (a callback): its calls into
        the transport are already inside the outer transport call."""
        entry = entries.get(caller)
        return entry is not None and any(f.endswith(transport_py) for f, _, _ in entry[4])

    for (filename, line, name), (_, calls, own, cumulative, callers) in entries.items():
        if filename.endswith(transport_py):
            in_transport += sum(
                edge[3]
                for caller, edge in callers.items()
                if caller[0].endswith(client_py) and not nested(caller)
            )
        if filename.endswith(client_py) and name == "track":
            total += cumulative
        if os.sep + "lambda_analytics" + os.sep in filename:
            where = f"{Path(filename).name}:{line} {name}"
            rows.append((own, cumulative, calls, where))
    rows.sort(reverse=True)
    lines = [
        f"Under cProfile: a `track` takes {total / events * 1e6:.0f} µs per event, "
        f"{in_transport / events * 1e6:.0f} µs of it in the transport (urllib3 and its "
        f"wrapper), {(total - in_transport) / events * 1e6:.0f} µs in the rest of the SDK (all "
        "inflated by the profiler).\n",
        "| function | calls/event | own µs/event | cumulative µs/event |",
        "| --- | ---: | ---: | ---: |",
    ]
    for own, cumulative, calls, where in rows[:top]:
        lines.append(
            f"| `{where}` | {calls / events:.1f} | {own / events * 1e6:.1f} | "
            f"{cumulative / events * 1e6:.1f} |"
        )
    return lines


def profile_flush1(url: str, events: int) -> cProfile.Profile:
    client = Analytics(WRITE_KEY, host=url)
    for i in range(50):
        client.track(**event(i))
    profile = cProfile.Profile()
    profile.enable()
    for i in range(events):
        client.track(**event(i))
    profile.disable()
    client.close()
    return profile


def batch_job(url: str, events: int) -> None:
    client = Analytics(WRITE_KEY, host=url, flush_at=2_500)
    for i in range(events):
        client.track(**event(i))
    client.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=2_000, help="flush_at=1 events")
    parser.add_argument("--batch-events", type=int, default=50_000)
    parser.add_argument("--pyinstrument", action="store_true")
    args = parser.parse_args(argv)
    server = subprocess.Popen(
        [sys.executable, str(BENCH_DIR / "server.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None and server.stdin is not None
    url = server.stdout.readline().strip()
    command = shlex.join(["bench/.venv/bin/python", "bench/profile_client.py", *argv])
    out: list[str] = [
        "# Where lambda_analytics spends its time\n",
        f"Made by `{command}` with lambda_analytics {lambda_analytics.__version__}, Python "
        f"{sys.version.split()[0]}, against `bench/server.py`; the workload is "
        "`common.event(i)`.\n",
    ]
    try:
        print("step costs ...", flush=True)
        out += ["## Per-call cost of each step (timeit, best of 25 interleaved rounds)\n"]
        out += ["| step | µs per call |", "| --- | ---: |"]
        out += [f"| {name} | {us:.1f} |" for name, us in step_costs()]
        print("HTTP path ...", flush=True)
        out += [
            "\n## Client CPU per request against the collector (median of 9 interleaved rounds)\n"
        ]
        out += ["| path | CPU µs per request |", "| --- | ---: |"]
        out += [f"| {name} | {us:.0f} |" for name, us in http_costs(url)]
        print("cProfile flush_at=1 ...", flush=True)
        out += [f"\n## cProfile: flush_at=1, {args.events:,} events\n"]
        out += own_functions(profile_flush1(url, args.events), args.events)
        print("cProfile batch ...", flush=True)
        profile = cProfile.Profile()
        profile.enable()
        batch_job(url, args.batch_events)
        profile.disable()
        out += [f"\n## cProfile: batch job, {args.batch_events:,} events, flush_at=2500\n"]
        out += own_functions(profile, args.batch_events)
        if args.pyinstrument:
            from pyinstrument import Profiler

            print("pyinstrument batch ...", flush=True)
            profiler = Profiler(interval=0.0005)
            profiler.start()
            batch_job(url, args.batch_events)
            profiler.stop()
            tree = profiler.output_text(unicode=True, color=False, show_all=False)
            out += ["\n## pyinstrument: batch job\n", "```", tree.strip(), "```"]
    finally:
        server.stdin.close()
        server.wait(timeout=10)
    text = "\n".join(out) + "\n"
    OUT.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
