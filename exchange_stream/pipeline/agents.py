"""The normalizer agent: a short loop over the ingested topics that hands batches to a stage."""

from __future__ import annotations

import time

import faust

from exchange_stream.infra import metrics
from exchange_stream.pipeline.normalize import Message, Normalizer

NORMALIZER_ACTORS = 1


def register(app: faust.App, normalizer: Normalizer) -> None:
    """Declare the normalizer agent on ``app``, reading the topics of ``KAFKA_TOPICS``."""
    settings = normalizer.settings
    ingested = app.topic(
        *settings.kafka_topics,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.topic_partitions,
    )

    # One actor: batches of a partition are acknowledged in offset order. With more, a batch
    # could be acknowledged while an earlier one of the same partition is still in hand, and
    # faust-streaming 0.15 then commits past the earlier one whenever the partition has no
    # committed offset yet (or its head gap is one message): at the next rebalance those events
    # are neither redelivered nor processed (tests/unit/test_agent_acks.py).
    @app.agent(ingested, name="normalize", concurrency=NORMALIZER_ACTORS)
    async def normalize(stream: faust.StreamT) -> None:
        # take_events acknowledges a batch only when the loop comes back for the next one,
        # that is after every message is in a canonical row or the DLQ.
        async for events in stream.take_events(
            settings.normalizer_batch, within=settings.normalizer_within_ms / 1000
        ):
            batch = [
                Message(e.message.topic, e.message.partition, e.message.offset, e.message.value)
                for e in events
            ]
            metrics.normalizer_batch_size.observe(len(batch))
            started = time.perf_counter()
            await normalizer.process_until_done(batch)
            metrics.normalizer_batch_seconds.observe(time.perf_counter() - started)
            _observe_lag(app, events)


def _observe_lag(app: faust.App, events: list) -> None:
    last: dict = {}
    for e in events:
        last[e.message.tp] = e.message.offset
    for tp, offset in last.items():
        highwater = _highwater(app, tp)
        if highwater is not None:
            metrics.normalizer_consumer_lag.labels(tp.topic, str(tp.partition)).set(
                max(0, highwater - offset - 1)
            )


def _highwater(app: faust.App, tp: object) -> int | None:
    # A partition revoked by a rebalance since the batch was read has no high watermark here.
    try:
        return app.consumer.highwater(tp)
    except (AssertionError, KeyError):
        return None
