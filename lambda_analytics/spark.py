"""Send a Spark DataFrame from the executors, one row per call, exactly-once in effect.

An optional extra (``pip install lambda_analytics[spark]``); ``import lambda_analytics`` never
imports it, nor PySpark::

    from lambda_analytics.spark import send_dataframe

    result = send_dataframe(df, write_key="...", id_column="order_id")
    result.sent, result.failed, result.invalid  # counts over the whole job
    result.failures  # a DataFrame (message, error, invalid) of what was not delivered

Each row is one call, with the fields of a line of ``lambda-analytics import`` (the CLI's
``parse_line`` reads it, so the schema, the checks and the error texts are the same); a null
column is an absent field; ``properties``, ``traits``, ``context`` and ``integrations`` may be
structs, maps or JSON text.  ``to_message=`` maps an arbitrary row to such a dict instead, and
``json_column=`` names a column holding one JSON line (a written-out ``failures`` resends so).

Spark re-runs failed tasks and may run speculative copies, so a row can be sent twice: its
message id and body are then the same every time, and the backend deduplicates.  The id is the
row's ``message_id``, else derived from ``id_column`` (with the type and event), else from the
row's content; a row without a timestamp gets the time ``send_dataframe`` was called.

The sends run once, in one action: the per-partition outcomes (failures, then one count record)
are persisted and locally checkpointed before it, so counting them and reading ``failures`` reuse
them and never send again (if they were lost, reading ``failures`` raises instead).  Only the
counts come back to the driver.  Each executor Python worker keeps one client for all the
partitions it runs; a partition's sends, retries and backoff end within ``partition_timeout``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import pickle
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

try:
    from pyspark import RDD, StorageLevel
    from pyspark.sql import DataFrame, Row
    from pyspark.sql import functions as F
    from pyspark.sql import types as T
except ImportError as exc:
    raise ImportError(
        "lambda_analytics.spark needs PySpark, which is not installed: "
        "pip install lambda_analytics[spark]",
        name=exc.name,
    ) from exc

from .cli import LineError, parse_line
from .client import Analytics
from .encoding import ENCODER
from .errors import AnalyticsError, ConfigurationError, DeliveryError
from .messages import COMMON_FIELDS, TYPE_FIELDS, WIRE_NAMES, normalise, utc_text
from .results import RequestInfo
from .retry import RetryPolicy
from .settings import resolve

__all__ = ["FAILURES_SCHEMA", "SendResult", "message_id_for", "send_dataframe"]

FAILURES_SCHEMA: Final = "message string, error string, invalid boolean"
"""``message``: the wire-format message (or the invalid row) as one JSON line."""
FIELDS: Final = frozenset(
    {*WIRE_NAMES, *COMMON_FIELDS, *(field for fields in TYPE_FIELDS.values() for field in fields)}
)
"""Column names a row may have: every field of a message, by wire or Python name."""
_OBJECTS: Final = ("properties", "traits", "context", "integrations")
_LINE: Final = "__lambda_analytics_line"
_UTC_MS: Final = "yyyy-MM-dd'T'HH:mm:ss.SSS'Z'"
_JSON: Final = {
    "ignoreNullFields": "false",
    "timeZone": "UTC",
    "timestampFormat": _UTC_MS,
    "timestampNTZFormat": _UTC_MS,
}
"""Rows become JSON in the JVM, nested nulls kept and timestamps as the SDK writes them (UTC,
milliseconds); ``TIMESTAMP_NTZ`` values are taken as UTC, as naive datetimes are."""
_NAMESPACE: Final = uuid.UUID("5d1c6b8e-3f0a-5a52-9d8e-6c1f0b2a7e41")
_NOT_HERE: Final = ("on_error", "on_request", "on_call_after_close", "spool_dir", "disable")
_CLIENTS: dict[str, tuple[Analytics, list[float]]] = {}
"""Per executor Python worker and settings: one client, reused by every partition it runs, and
the time of its last request (the rate cap's pace carries over from partition to partition)."""

Record = tuple[str | None, str, bool, int, int, int]
"""A failure ``(message, error, invalid, 0, 0, 0)`` or a partition's ``(None, "", False,
sent, failed, invalid)``."""


@dataclass(frozen=True)
class SendResult:
    """What ``send_dataframe`` did: ``sent + failed`` is the row count; ``invalid`` of the
    failed were not valid messages.  ``failures`` is computed already: reading it sends nothing."""

    sent: int
    failed: int
    invalid: int
    failures: DataFrame

    @property
    def rows(self) -> int:
        """Every row of the DataFrame: sent or failed."""
        return self.sent + self.failed


def message_id_for(kind: str, event: object, value: object) -> str:
    """The message id ``id_column`` gives a row: ``value`` with its type and event (or name)."""
    return str(uuid.uuid5(_NAMESPACE, json.dumps([kind, event, str(value)], ensure_ascii=False)))


def send_dataframe(
    df: DataFrame,
    write_key: str | None = None,
    *,
    id_column: str | None = None,
    to_message: Callable[[Row], Mapping[str, Any]] | None = None,
    json_column: str | None = None,
    max_requests_per_second: float | None = None,
    partition_timeout: float | None = 600.0,
    flush_at: int = 500,
    **settings: Any,
) -> SendResult:
    """Send every row of ``df`` as one call, from the executors; return the counts and failures.

    ``settings`` are the other ``Analytics`` arguments (``host``, ``oauth``, ``retry``, ...);
    what is not given comes from the executors' ``ANALYTICS_*`` variables.  Hooks, the spool
    and ``disable`` are refused: this function accounts for every row itself.
    ``max_requests_per_second`` caps the whole job: each of the tasks that can run at once
    (the partitions, at most ``defaultParallelism``) gets its share.  Raises ValueError for a
    column no message has, before anything is sent.
    """
    refused = sorted(set(settings) & set(_NOT_HERE))
    if refused:
        raise TypeError(f"send_dataframe does not take {', '.join(refused)}: it reports itself")
    _check_columns(df, id_column, to_message, json_column)
    if max_requests_per_second is not None and not max_requests_per_second > 0:
        raise ValueError("max_requests_per_second must be positive")
    if partition_timeout is not None and not partition_timeout > 0:
        raise ValueError("partition_timeout must be positive seconds, or None")
    settings = {**settings, "write_key": write_key, "flush_at": flush_at, "disable": False}
    if resolve(settings).spool_dir is not None:  # ConfigurationError for a bad setting
        raise ConfigurationError("ANALYTICS_SPOOL_DIR is set: send_dataframe keeps no spool")
    Analytics(**{**settings, "disable": True}).close(timeout=0)  # unknown arguments, OAuth key
    policy = settings.get("retry")
    if isinstance(policy, RetryPolicy):  # immutable, so not picklable: shipped as its fields
        settings["retry"] = {name: getattr(policy, name) for name in RetryPolicy.__slots__}
    if to_message is None and json_column is None:  # the JVM writes each row as a JSON line
        fields = [df[name] for name in df.columns if name != id_column or name in FIELDS]
        ids = [] if id_column is None else [df[id_column]]
        df, json_column = df.select(F.to_json(F.struct(*fields), _JSON).alias(_LINE), *ids), _LINE
    try:
        rdd = df.rdd
    except NotImplementedError as exc:  # Spark Connect has no RDDs
        raise TypeError("send_dataframe needs classic Spark (RDDs), not Spark Connect") from exc
    running = max(1, min(rdd.getNumPartitions(), rdd.context.defaultParallelism))
    job = _Job(
        key=hashlib.sha256(pickle.dumps(sorted(settings.items()))).hexdigest(),
        settings=settings,
        id_column=id_column,
        to_message=to_message,
        json_column=json_column,
        now=utc_text(time.time()),
        interval=0.0 if max_requests_per_second is None else running / max_requests_per_second,
        timeout=partition_timeout,
    )
    outcomes: RDD[Record] = rdd.mapPartitions(functools.partial(_send_partition, job))
    # Cached, the RDD is not pipelined into what reads it; checkpointed, it is never recomputed.
    outcomes.persist(StorageLevel.MEMORY_AND_DISK).setName("lambda_analytics.send_dataframe")
    outcomes.localCheckpoint()
    try:
        sent, failed, invalid = outcomes.map(_counts).fold((0, 0, 0), _add)  # the one action
    except BaseException:
        outcomes.unpersist()
        raise
    failures = df.sparkSession.createDataFrame(
        outcomes.filter(lambda record: record[0] is not None).map(lambda r: r[:3]),
        schema=FAILURES_SCHEMA,
    )
    return SendResult(sent, failed, invalid, failures)


def _check_columns(
    df: DataFrame, id_column: str | None, to_message: object, json_column: str | None
) -> None:
    columns = df.columns
    for name, role in ((id_column, "id_column"), (json_column, "json_column")):
        if name is not None and name not in columns:
            raise ValueError(f"{role}: no column {name!r} in {columns}")
    if to_message is not None and json_column is not None:
        raise ValueError("give to_message= or json_column=, not both")
    if json_column is not None:
        if not isinstance(df.schema[json_column].dataType, T.StringType):
            raise ValueError(f"json_column: {json_column!r} must be a string column")
        return
    if to_message is not None:
        return
    unknown = [c for c in columns if c not in FIELDS and c != id_column]
    if unknown:
        raise ValueError(
            f"columns {unknown} are not message fields (those are {', '.join(sorted(FIELDS))}): "
            "select the fields, name the id column (id_column=), or map rows with to_message="
        )
    if "type" not in columns:
        raise ValueError("no 'type' column: add one, e.g. F.lit('track').alias('type')")


@dataclass(frozen=True)
class _Job:
    """Everything a partition needs, shipped to the executors with the task."""

    key: str
    settings: dict[str, Any]
    id_column: str | None
    to_message: Callable[[Row], Mapping[str, Any]] | None
    json_column: str | None
    now: str
    interval: float
    timeout: float | None


class _Tally:
    """One partition's accounting, fed by the client's hooks; and its share of the rate cap."""

    def __init__(self, interval: float, timeout: float | None, last: list[float]) -> None:
        self.sent = self.failed = self.invalid = 0
        self.failures: list[Record] = []
        self._interval = interval
        self._last = last
        self._deadline = None if timeout is None else time.monotonic() + timeout

    def on_request(self, info: RequestInfo) -> None:
        if info.status is not None and 200 <= info.status < 300:
            self.sent += info.message_count
        if self._interval:  # the next request waits until this task's share allows it
            now = time.monotonic()
            wait = self._last[0] + self._interval - now
            if self._deadline is not None:
                wait = min(wait, self._deadline - now)
            if wait > 0:
                time.sleep(wait)
            self._last[0] = max(now, self._last[0] + self._interval)

    def on_error(self, error: DeliveryError, messages: list[dict[str, Any]]) -> None:
        reason = f"{type(error).__name__}: {' '.join(str(error).split())}"
        self.failed += len(messages)
        for message in messages:
            line = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
            self.failures.append((line, reason, False, 0, 0, 0))

    def reject(self, line: str, reason: str) -> None:
        self.invalid += 1
        self.failures.append((line, reason, True, 0, 0, 0))

    def drain(self) -> list[Record]:
        failures, self.failures = self.failures, []
        return failures


def _send_partition(job: _Job, rows: Iterable[Row]) -> Iterator[Record]:
    client, last = _client(job)
    tally = _Tally(job.interval, job.timeout, last)
    client.on_request, client.on_error = tally.on_request, tally.on_error
    with client.deadline(job.timeout):
        try:
            for row in rows:
                line = ""
                try:
                    line = _line(job, row)
                    kind, arguments = parse_line(line)  # the CLI import's schema and checks
                    getattr(client, kind)(**arguments)  # the SDK's validation, naming the field
                except (LineError, AnalyticsError) as exc:
                    tally.reject(line or _shown(job, row), str(exc))
                if tally.failures:
                    yield from tally.drain()
        finally:  # a failed attempt's queued rows go too: its retry sends the same ids and bodies
            client.flush()
    yield from tally.drain()
    yield (None, "", False, tally.sent, tally.failed + tally.invalid, tally.invalid)


def _client(job: _Job) -> tuple[Analytics, list[float]]:
    cached = _CLIENTS.get(job.key)
    if cached is None:
        settings = dict(job.settings)
        if isinstance(settings.get("retry"), dict):
            settings["retry"] = RetryPolicy(**settings["retry"])
        client = Analytics(**settings)
        if client.settings.spool_dir is not None:
            raise ConfigurationError("ANALYTICS_SPOOL_DIR is set on an executor: unset it")
        cached = _CLIENTS[job.key] = (client, [float("-inf")])
    elif cached[0].stats.queued:  # left by an attempt cut short, reported to its own tally
        cached[0].flush(timeout=job.timeout)
    return cached


def _line(job: _Job, row: Row) -> str:
    """The row as a JSONL line, with its message id and timestamp; LineError if it cannot be."""
    if job.json_column is not None:
        text = row[job.json_column]
        if not isinstance(text, str):
            raise LineError(f"{job.json_column}: is null, not a JSON line")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            data = None
        if not isinstance(data, dict):
            parse_line(text)  # raises LineError, worded as the CLI words it
            raise LineError("not a JSON object")
    else:  # to_message: what it raises fails the task, as in any Spark function
        assert job.to_message is not None
        data = dict(job.to_message(row))
    data = {key: value for key, value in data.items() if value is not None}
    source = None if job.id_column is None else row[job.id_column]
    for key in _OBJECTS:
        if isinstance(data.get(key), str):
            try:
                data[key] = json.loads(data[key])
            except (ValueError, RecursionError):
                raise LineError(f"{key}: not valid JSON text") from None
    if "messageId" not in data and "message_id" not in data:
        if job.id_column is not None:
            if source is None:
                raise LineError(f"{job.id_column}: is null, and the message id is derived from it")
            event = data.get("event", data.get("name"))
            data["messageId"] = message_id_for(str(data.get("type")), event, source)
        else:
            content = _encode(dict(sorted(data.items())))  # nested order: the row's
            data["messageId"] = str(uuid.uuid5(_NAMESPACE, content))
    data.setdefault("timestamp", job.now)
    return _encode(data)


def _encode(data: Mapping[str, Any]) -> str:
    """Compact JSON, as the SDK encodes (datetime, Decimal...); LineError naming a bad value."""
    try:
        return ENCODER.encode(data)
    except (TypeError, ValueError, OverflowError, RecursionError):
        try:
            normalise(data, "")
        except AnalyticsError as exc:
            raise LineError(str(exc)) from None
        raise LineError("message: cannot be encoded as JSON") from None


def _shown(job: _Job, row: Row) -> str:
    """The row as it came, for ``failures``, when it could not even become a line."""
    if job.json_column is not None and isinstance(row[job.json_column], str):
        return str(row[job.json_column])
    return json.dumps(row.asDict(recursive=True), default=str, ensure_ascii=False)


def _counts(record: Record) -> tuple[int, int, int]:
    return record[3], record[4], record[5]


def _add(a: tuple[int, int, int], b: tuple[int, int, int]) -> tuple[int, int, int]:
    return a[0] + b[0], a[1] + b[1], a[2] + b[2]
