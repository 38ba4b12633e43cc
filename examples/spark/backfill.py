"""Backfill historical orders as "Order Completed" events with Spark, exactly-once in effect.

Locally, against the collector (``python -m lambda_analytics.collector --port 8765
--write-key test-key`` in another terminal), from the repository root::

    ANALYTICS_WRITE_KEY=test-key ANALYTICS_HOST=http://127.0.0.1:8765 \\
        spark-submit --master 'local[2]' examples/spark/backfill.py \\
        --input examples/spark/orders.jsonl --failures /tmp/failures

Each order becomes one ``track`` call whose message id is derived from ``order_id``, so running
the job again (or Spark re-running a task) sends the same ids and the backend deduplicates.
What could not be delivered is written to ``--failures`` (Parquet); ``--resend`` sends it again.
On AWS Glue, EMR Serverless and Databricks: see README.md beside this file and docs/batching.md.
"""

from __future__ import annotations

import argparse
import os
import sys

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lambda_analytics.spark import send_dataframe

ORDERS = (
    "order_id string, customer_id string, total double, currency string, "
    "ordered_at timestamp, products array<struct<sku: string, price: double, quantity: int>>"
)


def events(orders: DataFrame) -> DataFrame:
    """One row per call, in the columns of a ``lambda-analytics import`` line (+ the id)."""
    return orders.select(
        F.lit("track").alias("type"),
        F.col("customer_id").alias("user_id"),
        F.lit("Order Completed").alias("event"),
        F.struct("order_id", F.col("total").alias("revenue"), "currency", "products").alias(
            "properties"
        ),
        F.col("ordered_at").alias("timestamp"),
        "order_id",
    )


def write_key(secret: str | None) -> str | None:
    """The key from AWS Secrets Manager, or None: then ``ANALYTICS_WRITE_KEY`` gives it."""
    if not secret:
        return None
    import boto3  # on Glue and EMR; only needed with --write-key-secret

    response = boto3.client("secretsmanager").get_secret_value(SecretId=secret)
    return str(response["SecretString"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="orders, JSON Lines (a path, s3://..., a folder)")
    source.add_argument("--resend", metavar="PATH", help="failures written by an earlier run")
    parser.add_argument("--failures", metavar="PATH", help="write undelivered messages here")
    parser.add_argument("--write-key-secret", metavar="NAME", help="AWS Secrets Manager secret")
    parser.add_argument("--max-requests-per-second", type=float, default=200.0)
    args, _ = parser.parse_known_args(argv)  # AWS Glue passes arguments of its own too
    key = write_key(args.write_key_secret)
    if key is None and not os.environ.get("ANALYTICS_WRITE_KEY"):
        parser.error("no write key: set ANALYTICS_WRITE_KEY or pass --write-key-secret")

    spark = SparkSession.builder.appName("analytics-backfill").getOrCreate()
    try:
        if args.resend:  # wire-format messages, one JSON line each, their ids kept
            undelivered = spark.read.parquet(args.resend).where("NOT invalid")
            result = send_dataframe(
                undelivered, key, json_column="message",
                max_requests_per_second=args.max_requests_per_second,
            )  # fmt: skip
        else:
            orders = spark.read.json(args.input, schema=ORDERS)
            result = send_dataframe(
                events(orders), key, id_column="order_id",
                max_requests_per_second=args.max_requests_per_second,
            )  # fmt: skip
        print(f"sent {result.sent}, failed {result.failed} ({result.invalid} invalid rows)")
        if result.failed:
            for row in result.failures.select("error").distinct().limit(10).collect():
                print(f"  {row.error}", file=sys.stderr)
            if args.failures:
                result.failures.write.mode("overwrite").parquet(args.failures)
                print(f"failures written to {args.failures}: send them with --resend")
        return 1 if result.failed else 0
    finally:
        spark.stop()


if __name__ == "__main__":
    sys.exit(main())
