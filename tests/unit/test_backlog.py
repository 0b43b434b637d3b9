"""The backlog's arithmetic: the group's lag and the Retry-After of a shed request."""

from __future__ import annotations

from aiokafka import TopicPartition

from exchange_stream.pipeline.backlog import group_lag, retry_after_s

A0, A1, B0 = TopicPartition("a", 0), TopicPartition("a", 1), TopicPartition("b", 0)


def test_lag_is_end_less_committed_and_a_partition_never_committed_counts_from_its_start() -> None:
    end = {A0: 100, A1: 50, B0: 30}
    beginning = {A0: 0, A1: 10, B0: 0}
    assert group_lag(end, beginning, {A0: 90, A1: -1}) == 10 + 40 + 30
    assert group_lag(end, beginning, {A0: 100, A1: 50, B0: 30}) == 0


def test_a_committed_offset_past_the_end_counts_as_no_lag() -> None:
    assert group_lag({A0: 5}, {A0: 0}, {A0: 7}) == 0


def test_retry_after_is_the_excess_over_the_drain_rate_within_its_bounds() -> None:
    assert retry_after_s(1_400, 1_000, 100.0, 1, 30) == 4
    assert retry_after_s(1_001, 1_000, 100.0, 1, 30) == 1
    assert retry_after_s(100_000, 1_000, 100.0, 1, 30) == 30
    assert retry_after_s(2_000, 1_000, 0.0, 1, 30) == 30, "not draining: the longest wait"
    assert retry_after_s(500, 1_000, 100.0, 2, 30) == 2
