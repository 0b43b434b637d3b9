"""The Faust application: configuration, resources, web routes and (later) agents.

``create_app`` is the single place where the worker is assembled; ``exchange-stream worker`` runs
what it returns.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import faust
from mode import ServiceT

from exchange_stream import agents
from exchange_stream.config import Settings
from exchange_stream.normalize import Normalizer
from exchange_stream.outbox import OutboxRelay
from exchange_stream.runtime import Runtime
from exchange_stream.tokenizer import Tokenizer

# aiohttp refuses larger bodies with 413 before a view reads them (SPEC §4: over 10 MiB → 413).
MAX_BODY_BYTES = 10 * 1024 * 1024


class ExchangeApp(faust.App):
    """A Faust app that starts the shared runtime first and serves the service's routes."""

    settings: Settings
    runtime: Runtime
    relay: OutboxRelay
    tokenizer: Tokenizer
    normalizer: Normalizer

    def on_init_dependencies(self) -> Iterable[ServiceT]:
        # The runtime first: every other part borrows its pool and S3 client.
        return [self.runtime, self.relay, *super().on_init_dependencies()]

    def on_webserver_init(self, web: Any) -> None:
        from web.routes import install

        install(web.web_app, self)


def create_app(settings: Settings) -> ExchangeApp:
    """Build the worker's app for ``settings``."""
    from web.middleware import middlewares

    app = ExchangeApp(
        settings.app_id,
        broker=";".join(f"kafka://{b}" for b in settings.broker_list),
        store="memory://",
        datadir=settings.data_dir,
        topic_partitions=settings.topic_partitions,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # A SIGKILLed worker's partitions move to the others after the session timeout (10 s by
        # default), not Faust's 60 s.
        broker_session_timeout=float(settings.kafka_session_timeout_s),
        broker_heartbeat_interval=settings.kafka_session_timeout_s / 5,
        broker_rebalance_timeout=float(settings.kafka_session_timeout_s * 2),
        web_enabled=True,
        web_bind=settings.web_bind,
        web_port=settings.web_port,
        web_application_options={
            "client_max_size": MAX_BODY_BYTES,
            # aiohttp's 8 KiB header limit would answer an oversized token with its own plain
            # 400 quoting the header; let the view refuse it with the contract's 401 instead.
            "handler_args": {"max_field_size": 80 * 1024},
            "middlewares": middlewares(),
        },
    )
    app.settings = settings
    app.runtime = Runtime(settings, beacon=app.beacon)
    app.relay = OutboxRelay(settings, app.runtime, beacon=app.beacon)
    app.tokenizer = Tokenizer(settings.tokenizer_hmac_secret)
    agents.register(app)
    return app
