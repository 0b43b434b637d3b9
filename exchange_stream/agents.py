"""The Faust agents: each a short loop over a stream that hands batches to a stage."""

from __future__ import annotations

from typing import TYPE_CHECKING

import faust

from exchange_stream import metrics
from exchange_stream.control import ControlPlane
from exchange_stream.normalize import Message, Normalizer
from exchange_stream.operations import OpsContext

if TYPE_CHECKING:
    from exchange_stream.app import ExchangeApp

NORMALIZER_BATCH = 200
NORMALIZER_WITHIN_S = 0.02


def register(app: ExchangeApp) -> None:
    """Declare the topics and agents on ``app``: the normalizer and the control plane."""
    settings = app.settings
    ingested = app.topic(
        *settings.kafka_topics,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.topic_partitions,
    )
    normalizer = Normalizer(settings, app.runtime)
    app.normalizer = normalizer

    @app.agent(ingested, name="normalize", concurrency=settings.normalizer_concurrency)
    async def normalize(stream: faust.StreamT) -> None:
        # take_events acknowledges a batch only when the loop comes back for the next one,
        # that is after process() has put every message in a canonical row or the DLQ.
        async for events in stream.take_events(NORMALIZER_BATCH, within=NORMALIZER_WITHIN_S):
            batch = [
                Message(e.message.topic, e.message.partition, e.message.offset, e.message.value)
                for e in events
            ]
            metrics.normalizer_batch_size.observe(len(batch))
            await normalizer.process(batch)
            _observe_lag(app, events)

    control = app.topic(
        settings.topic_control,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.topic_partitions,
    )

    @app.agent(control, name="control")
    async def control_agent(stream: faust.StreamT) -> None:
        # A command is acknowledged after it has run and its result is published.
        async for value in stream:
            runtime = app.runtime
            plane = ControlPlane(
                OpsContext(settings, runtime.pool, runtime.store, runtime.publisher)
            )
            await plane.handle(value)


def _observe_lag(app: ExchangeApp, events: list) -> None:
    last: dict = {}
    for e in events:
        last[e.message.tp] = e.message.offset
    for tp, offset in last.items():
        highwater = _highwater(app, tp)
        if highwater is not None:
            metrics.normalizer_consumer_lag.labels(tp.topic, str(tp.partition)).set(
                max(0, highwater - offset - 1)
            )


def _highwater(app: ExchangeApp, tp: object) -> int | None:
    # A partition revoked by a rebalance since the batch was read has no high watermark here.
    try:
        return app.consumer.highwater(tp)
    except (AssertionError, KeyError):
        return None
