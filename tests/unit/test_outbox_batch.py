"""How the relay sorts a claimed batch: published, set aside for a later retry, or an outage."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.errors import (
    InvalidTopicError,
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
)

from exchange_stream.pipeline.outbox import sort_batch


def _rows(*topics: str) -> list[dict[str, Any]]:
    return [{"id": i, "topic": t} for i, t in enumerate(topics, start=1)]


def _ids(rows: list) -> list[int]:
    return [r["id"] for r in rows]


def test_every_row_acknowledged_is_published() -> None:
    outcome = sort_batch(_rows("a", "a", "b"), set(), [None, None, None])
    assert _ids(outcome.published) == [1, 2, 3]
    assert outcome.set_aside == [] and outcome.outage == []


def test_row_of_a_missing_topic_is_set_aside_and_the_others_published() -> None:
    rows = _rows("good", "missing", "good")
    outcome = sort_batch(rows, {"missing"}, [None, None])
    assert _ids(outcome.published) == [1, 3]
    assert [(r["id"], e) for r, e in outcome.set_aside] == [(2, "UnknownTopicOrPartitionError")]
    assert outcome.outage == []


def test_only_missing_topics_are_all_set_aside_not_an_outage() -> None:
    outcome = sort_batch(_rows("missing", "missing"), {"missing"}, [])
    assert _ids([r for r, _ in outcome.set_aside]) == [1, 2]
    assert outcome.outage == []


@pytest.mark.parametrize("error", [MessageSizeTooLargeError(), InvalidTopicError()])
def test_refused_message_is_set_aside_even_when_nothing_else_went_out(error: Exception) -> None:
    outcome = sort_batch(_rows("a", "a"), set(), [error, error])
    assert [(r["id"], e) for r, e in outcome.set_aside] == [
        (1, type(error).__name__),
        (2, type(error).__name__),
    ]
    assert outcome.outage == []


def test_timeout_of_one_row_while_others_went_out_is_that_row_s_failure() -> None:
    outcome = sort_batch(_rows("a", "b", "a"), set(), [None, KafkaTimeoutError(), None])
    assert _ids(outcome.published) == [1, 3]
    assert [(r["id"], e) for r, e in outcome.set_aside] == [(2, "KafkaTimeoutError")]


@pytest.mark.parametrize("error", [KafkaTimeoutError(), KafkaConnectionError()])
def test_nothing_acknowledged_is_an_outage_not_bad_rows(error: Exception) -> None:
    outcome = sort_batch(_rows("a", "missing", "b"), {"missing"}, [error, error])
    assert _ids(outcome.outage) == [1, 3]
    assert outcome.outage_error == type(error).__name__
    assert _ids([r for r, _ in outcome.set_aside]) == [2], "a missing topic is known for sure"


def test_failed_producer_is_an_outage_even_when_other_rows_went_out() -> None:
    outcome = sort_batch(_rows("a", "a"), set(), [None, OutOfOrderSequenceNumber()])
    assert _ids(outcome.published) == [1]
    assert _ids(outcome.outage) == [2]
    assert outcome.set_aside == []
