"""Batch splitting and envelope encoding: pure tables."""

from __future__ import annotations

import gzip
import json

import pytest

from lambda_analytics.batching import MAX_BATCH_BYTES, MAX_BATCH_MESSAGES, Envelope, split

SENT_AT = "2026-11-23T10:00:00.000Z"


def test_envelope_size_is_exact() -> None:
    envelope = Envelope("wk")
    messages = [json.dumps({"n": i, "s": "é" * i}).encode() for i in range(5)]
    body = envelope.encode(messages, SENT_AT)
    assert len(body) == envelope.size(len(messages), sum(map(len, messages)))
    assert json.loads(body) == {
        "batch": [json.loads(m) for m in messages],
        "sentAt": SENT_AT,
        "writeKey": "wk",
    }
    assert len(Envelope(None).encode([], SENT_AT)) == Envelope(None).size(0, 0)
    assert json.loads(Envelope(None).encode([b"{}"], SENT_AT)) == {"batch": [{}], "sentAt": SENT_AT}


def test_envelope_never_shows_the_write_key() -> None:
    assert "secret-key" not in repr(Envelope("secret-key"))


def test_gzip_round_trips_and_is_deterministic() -> None:
    envelope = Envelope("wk")
    plain = envelope.encode([b"{}"], SENT_AT)
    packed = envelope.encode([b"{}"], SENT_AT, gzip=True)
    assert gzip.decompress(packed) == plain
    assert packed == envelope.encode([b"{}"], SENT_AT, gzip=True)


def test_sent_at_must_keep_its_length() -> None:
    with pytest.raises(ValueError, match="sent_at"):
        Envelope("wk").encode([], "2026-11-23T10:00:00Z")


def test_600_messages_of_1kb_make_two_batches_under_500kb() -> None:
    envelope = Envelope("wk")
    sizes = [1_000] * 600
    batches = split(sizes, envelope)
    assert [len(b) for b in batches] == [499, 101]
    for batch in batches:
        assert envelope.size(len(batch), sum(sizes[i] for i in batch)) <= MAX_BATCH_BYTES


def test_message_count_limit() -> None:
    batches = split([10] * 6_000, Envelope("wk"))
    assert [len(b) for b in batches] == [MAX_BATCH_MESSAGES, MAX_BATCH_MESSAGES, 1_000]


@pytest.mark.parametrize(
    ("sizes", "max_bytes", "expected"),
    [
        ([], 1_000, []),
        ([5], 10, [[0]]),  # too large alone: a batch of its own, never lost
        ([100, 100, 100], 1_000, [[0, 1, 2]]),
        ([500, 500, 500], 1_000, [[0], [1], [2]]),
    ],
)
def test_split_table(sizes: list[int], max_bytes: int, expected: list[list[int]]) -> None:
    assert [list(b) for b in split(sizes, Envelope(None), max_bytes=max_bytes)] == expected


def test_split_fills_exactly_to_the_limit() -> None:
    envelope = Envelope("wk")
    limit = envelope.size(3, 300)
    assert [len(b) for b in split([100] * 4, envelope, max_bytes=limit)] == [3, 1]
    assert [len(b) for b in split([100] * 4, envelope, max_bytes=limit - 1)] == [2, 2]
