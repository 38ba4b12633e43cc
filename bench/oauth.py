"""What OAuth costs: the first token, and (nothing) on later calls.

    .venv/bin/python bench/oauth.py
    # needs `npm ci --prefix tests/oauth`; writes bench/OAUTH.md

Against the real oidc-provider (tests/oauth) and a collector that checks each token once by
introspection and caches the answer (as an API gateway would), all on loopback.  Each
repetition builds a fresh client of each kind in this process and times, in the same run:
building the client (OAuth parses the private key there), the first `track` (OAuth fetches a
token there), and the median of the following `track` calls.
The write-key client is the baseline; OAuth's later calls should cost the same.
"""

from __future__ import annotations

import functools
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from oauth_server import OAuthServer, skip_reason  # noqa: E402

from lambda_analytics import Analytics, OAuthSettings, oauth  # noqa: E402
from lambda_analytics.collector import Collector  # noqa: E402

WRITE_KEY = "bench-write-key"
SIGNED = [0]
_sign = oauth.build_assertion


def counting_build_assertion(*args: Any, **kwargs: Any) -> str:
    SIGNED[0] += 1
    return _sign(*args, **kwargs)


oauth.build_assertion = counting_build_assertion
REPETITIONS = 7
LATER_CALLS = 200


def measure(make: Any) -> dict[str, float]:
    started = time.perf_counter()
    client = make()
    built = time.perf_counter()
    assert client.track(user_id="u", event="first").delivered
    first = time.perf_counter()
    later = []
    for i in range(LATER_CALLS):
        t = time.perf_counter()
        assert client.track(user_id="u", event=f"later {i}").delivered
        later.append(time.perf_counter() - t)
    fetches = client._engine.route.tokens.fetches if client._engine.route.tokens is not None else 0
    client.close()
    return {
        "build": (built - started) * 1e3,
        "first": (first - built) * 1e3,
        "later": statistics.median(later) * 1e3,
        "fetches": fetches,
    }


def main() -> int:
    reason = skip_reason()
    if reason:
        print(f"cannot run: {reason}")
        return 1
    rows: dict[str, list[dict[str, float]]] = {"write key": [], "OAuth": []}
    with OAuthServer() as server:
        validator = functools.lru_cache(maxsize=None)(server.introspect)
        with Collector(WRITE_KEY, token_validator=validator) as api:
            run(server, api, rows)
    report(rows)
    return 0


def run(server: OAuthServer, api: Collector, rows: dict[str, list[dict[str, float]]]) -> None:
    oauth = OAuthSettings(server.client_id, server.key_id, server.private_key_pem,
                          auth_server=server.issuer)  # fmt: skip
    for _ in range(REPETITIONS):  # interleaved, so both see the same machine
        rows["write key"].append(measure(lambda: Analytics(WRITE_KEY, host=api.url)))
        rows["OAuth"].append(measure(lambda: Analytics(WRITE_KEY, host=api.url, oauth=oauth)))


def report(rows: dict[str, list[dict[str, float]]]) -> None:
    base = {
        k: statistics.median(r[k] for r in rows["write key"]) for k in ("build", "first", "later")
    }
    lines = [
        "# OAuth cost",
        "",
        f"Made by `.venv/bin/python bench/oauth.py`: {REPETITIONS} repetitions, interleaved, "
        f"{LATER_CALLS} later calls each; medians in ms, ratio to the write-key client of the "
        "same run.",
        "",
        "| client | build | first track | later track | vs write key (later) | tokens fetched |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, runs in rows.items():
        med = {k: statistics.median(r[k] for r in runs) for k in ("build", "first", "later")}
        fetches = max(r["fetches"] for r in runs)
        lines.append(
            f"| {name} | {med['build']:.2f} | {med['first']:.2f} | {med['later']:.3f} | "
            f"{med['later'] / base['later']:.2f}x | {fetches:.0f} |"
        )
    oauth_first = statistics.median(r["first"] for r in rows["OAuth"]) - base["first"]
    oauth_build = statistics.median(r["build"] for r in rows["OAuth"]) - base["build"]
    lines += [
        "",
        f"- First-token cost: +{oauth_first:.1f} ms on the first call (sign an assertion, POST "
        f"/token), +{oauth_build:.1f} ms to build the client (import pyjwt/cryptography once, "
        "parse the key once).",
        f"- Later calls do no token work: {SIGNED[0]} assertions signed and "
        f"{REPETITIONS} tokens fetched for {REPETITIONS} OAuth clients x {LATER_CALLS + 1} calls. "
        "What remains of the later-call ratio is the Bearer path through the collector "
        "(its validator) and the noise of a shared machine.",
    ]
    text = "\n".join(lines) + "\n"
    (ROOT / "bench" / "OAUTH.md").write_text(text)
    print(text)


if __name__ == "__main__":
    raise SystemExit(main())
