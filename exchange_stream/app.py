"""The worker, assembled: configuration, resources, the relay, the agents and the web routes.

``create_app`` is the one place where the parts meet; ``exchange-stream worker`` runs what it
returns, with the worker and web driver below, which keep Faust's own output to the log's rules.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterable
from typing import Any

import faust
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.web.drivers.aiohttp import Web as AiohttpWeb
from mode import ServiceT

from exchange_stream.core.identity import Tokenizer
from exchange_stream.core.match_tokens import MatchKeys
from exchange_stream.infra import logs
from exchange_stream.infra.config import Settings
from exchange_stream.infra.runtime import Runtime
from exchange_stream.ops import control, export_worker
from exchange_stream.pipeline import agents
from exchange_stream.pipeline.backlog import Backlog
from exchange_stream.pipeline.gate import DependencyGate
from exchange_stream.pipeline.normalize import Normalizer
from exchange_stream.pipeline.outbox import OutboxRelay
from exchange_stream.read.audit import ReadAudit
from exchange_stream.read.tokens import RecipientTokenService
from web import routes
from web.context import WebContext

log = logging.getLogger(__name__)

# What a failed bind's errno means, in the log's own words (the OS's text is not logged).
_BIND_REASONS = {
    errno.EADDRINUSE: "the port is already taken",
    errno.EACCES: "not permitted to bind this port",
    errno.EADDRNOTAVAIL: "no such address on this host",
}


class WebBindError(RuntimeError):
    """The worker's web server could not listen on its configured address."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(f"could not bind the web server to {host}:{port} ({reason})")
        self.host, self.port, self.reason = host, port, reason


class ExchangeWeb(AiohttpWeb):
    """Faust's aiohttp web driver; a failed bind is one line naming the address and a typed
    error, never the OS's exception text."""

    async def start_server(self) -> None:
        try:
            await super().start_server()
        except OSError as exc:
            host, port = self.app.conf.web_bind, self.app.conf.web_port
            reason = _BIND_REASONS.get(exc.errno or 0, errno.errorcode.get(exc.errno or 0, "?"))
            log.critical(
                f"could not bind the web server to {host}:{port}: {reason}",
                extra={"fields": {"web_bind": host, "web_port": port}},
            )
            raise WebBindError(host, port, reason) from exc


class ExchangeWorker(faust.Worker):
    """Faust's worker, keeping the log's guarantee (infra/logs.py) where Faust and mode write
    to it: every handler they add redacts, an uncaught exception is logged, not printed, and
    SIGUSR1 logs each thread's and task's stack as code locations instead of printing every
    frame with its local variables (mode's ``cry``)."""

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        super().on_setup_root_logger(logger, level)
        logs.guard_handlers()
        logs.install_excepthooks()

    async def _cry(self) -> None:
        logs.log_stacks(log)


class ExchangeApp(faust.App):
    """A Faust app that starts the shared runtime first and serves the service's routes."""

    runtime: Runtime
    relay: OutboxRelay
    backlog: Backlog
    tokens: RecipientTokenService
    audit: ReadAudit
    web_context: WebContext

    def on_init_dependencies(self) -> Iterable[ServiceT]:
        # The runtime first: every other part borrows its pool, S3 client and producer.
        return [
            self.runtime,
            self.relay,
            self.backlog,
            self.tokens,
            self.audit,
            *super().on_init_dependencies(),
        ]

    def on_webserver_init(self, web: Any) -> None:
        routes.install(web.web_app, self.web_context)

    def _new_web(self) -> AiohttpWeb:
        # Faust builds its web driver here (by URL scheme); ours reports a failed bind.
        return ExchangeWeb(self)


def _cap_fetch_wait(max_wait_ms: int) -> None:
    """Cap how long the worker's Kafka fetches wait for data (Faust fixes it at 1.5 s).

    aiokafka leaves a partition out of the next fetch while it still holds unread records of it;
    when that fetch then waits for data on the other partitions, records arriving meanwhile on
    the left-out one wait with it. Under steady load the normalizer saw its events up to 1.5 s
    late (about 1 s at the median) at 400 req/s, 60 ms at the median with a 100 ms cap. The cap
    costs an empty fetch every ``max_wait_ms`` when there is nothing to read.
    """
    create = AIOKafkaConsumerThread._create_worker_consumer

    if getattr(create, "capped_fetch_wait", None) == max_wait_ms:
        return

    def create_capped(self: AIOKafkaConsumerThread, transport: Any) -> Any:
        consumer = create(self, transport)
        consumer._fetch_max_wait_ms = max_wait_ms  # read by the fetcher when it starts
        return consumer

    create_capped.capped_fetch_wait = max_wait_ms  # type: ignore[attr-defined]
    AIOKafkaConsumerThread._create_worker_consumer = create_capped  # type: ignore[method-assign]


def create_app(settings: Settings) -> ExchangeApp:
    """Build the worker's app for ``settings``."""
    _cap_fetch_wait(settings.kafka_fetch_max_wait_ms)
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
        # A broker just restarted may answer before it has loaded its topics: a rebalance then
        # assigns nothing, and only a metadata refresh showing the topics makes the group rejoin.
        # Faust's default refresh (5 min) left the normalizer idle that long.
        consumer_metadata_max_age_ms=10_000,
        web_enabled=True,
        web_bind=settings.web_bind,
        web_port=settings.web_port,
        web_application_options=routes.application_options(),
        Worker=ExchangeWorker,
    )
    runtime = Runtime(settings, beacon=app.beacon)
    gate = DependencyGate(runtime.probe)
    app.runtime = runtime
    app.relay = OutboxRelay(settings, runtime, beacon=app.beacon)
    app.backlog = Backlog(settings, runtime, beacon=app.beacon)
    app.tokens = RecipientTokenService(
        lambda: runtime.pool,
        settings.recipient_token_secret,
        ttl_s=settings.recipient_cache_ttl_s,
        register_local_dev=settings.is_local,
        dsn=settings.dsn,
        beacon=app.beacon,
    )
    app.audit = ReadAudit(
        lambda: runtime.work_pool, flush_ms=settings.read_audit_flush_ms, beacon=app.beacon
    )
    app.web_context = WebContext(
        settings=settings,
        tokenizer=Tokenizer(settings.tokenizer_hmac_secret),
        gate=gate,
        resources=runtime,
        tokens=app.tokens,
        audit=app.audit,
        backlog=app.backlog,
        match_keys=MatchKeys(settings.match_token_secret),
    )
    agents.register(app, Normalizer(settings, runtime, gate))
    control.register(app, runtime)
    export_worker.register(app, runtime)
    return app
