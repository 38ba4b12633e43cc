"""The long soak: lambda_analytics against the fault-injecting server, with full accounting.

    python bench/soak.py --events 1000000                  # batches of 500, 2 clients
    python bench/soak.py --events 200000 --flush-at 1 --threads 8 --seed 3

Every event must end up accepted by the server or handed to ``on_error`` (never lost, never
reported twice); server-side duplicates may only come from requests the server accepted and
then stalled past the client's read timeout.  The same checks as ``tests/test_soak.py``
(``tests/fault_server.py``: ``FaultServer``, ``run_soak``, ``SOAK_FAULTS``).  Exit status 1
when an invariant is violated.
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent.parent / "tests"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--flush-at", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2, help="clients, one thread each")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=0.2, help="client read timeout, s")
    parser.add_argument("--stall", type=float, default=0.3, help="server stall, s (> timeout)")
    parser.add_argument("--max-retries", type=int, default=3)
    parser.add_argument("--max-lifetime", type=float, default=3_600.0, help="server, s")
    parser.add_argument("--record", action="store_true", help="write the result to RESULTS.md")
    args = parser.parse_args(argv)
    if args.stall <= args.timeout:
        parser.error("--stall must be longer than --timeout, or stalls are not timeouts")

    sys.path.insert(0, str(TESTS_DIR))
    from fault_server import SOAK_FAULTS, run_soak

    logging.getLogger("lambda_analytics").setLevel(logging.ERROR)  # one line per failure: no
    faults = ", ".join(f"{name} {share:.0%}" for name, share in SOAK_FAULTS.items())
    print(f"faults: {faults}; read timeout {args.timeout} s, stall {args.stall} s", flush=True)
    report = run_soak(
        args.events,
        flush_at=args.flush_at,
        threads=args.threads,
        seed=args.seed,
        timeout=args.timeout,
        stall=args.stall,
        max_retries=args.max_retries,
        max_lifetime=args.max_lifetime,
    )
    print("\n".join(report.lines()))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(f"  peak RSS {peak} MiB (client, server and the accounting, one process)")
    problems = report.problems()
    for problem in problems:
        print(f"FAILED: {problem}")
    if not problems:
        print("OK: every event accepted or reported once; duplicates only from stalls")
    if args.record:
        from common import record_section

        verdict = "; ".join(problems) or "OK: every event accepted or reported once"
        record_section(
            "## Long soak\n\n"
            f"Made by `python3 bench/soak.py {' '.join(argv or sys.argv[1:])}` (faults: {faults}; "
            f"read timeout {args.timeout} s, stall {args.stall} s).\n\n```\n"
            + "\n".join(report.lines())
            + f"\n  peak RSS {peak} MiB\n{verdict}\n```\n"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
