"""All configuration, read once from the environment (the README's "Configuration" table).

Defaults match the local stack. Outside ``ENV=local`` a secret left at its default is refused,
so a misconfigured deployment stops at start instead of running with a well-known key. Every
problem of an environment is reported at once, in one ``ConfigError``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

from exchange_stream.core.access_token import LOCAL_PLACEHOLDER as _LOCAL_ACCESS_KEY
from exchange_stream.core.access_token import SigningKeyInvalid, signing_key
from exchange_stream.core.formats import FORMATS
from exchange_stream.infra.topics import (
    CONTROL,
    CONTROL_RESULTS,
    EXPORTS,
    TOPICS,
    dlq_role,
    ingested_role,
)

# Secrets whose local defaults must never reach a real deployment, and the local stack's own
# service passwords, which are refused outside ENV=local even when set explicitly.
_SECRET_DEFAULTS = {
    "POSTGRES_PASSWORD": "exchange",
    "MINIO_SECRET_KEY": "minioadmin",
    "JWT_SECRET": "dev-jwt-secret-change-me",
    "TOKENIZER_HMAC_SECRET": "dev-tokenizer-secret-change-me",
    "RECIPIENT_TOKEN_SECRET": "dev-recipient-token-secret-change-me",
    "MATCH_TOKEN_SECRET": "dev-match-token-secret-change-me",
    "ACCESS_TOKEN_SIGNING_KEY": _LOCAL_ACCESS_KEY,
}
# Minimum lengths (bytes of UTF-8) of the keys this service owns, outside ENV=local. HS256 keys
# shorter than the hash (32 bytes) are refused by RFC 7518 §3.2.
_MIN_SECRET_BYTES = {
    "JWT_SECRET": 32,
    "TOKENIZER_HMAC_SECRET": 16,
    "RECIPIENT_TOKEN_SECRET": 32,
    "MATCH_TOKEN_SECRET": 32,
}


class ConfigError(ValueError):
    """The environment does not describe a runnable configuration: one or more problems, each
    naming its variable and never a value."""

    def __init__(self, *problems: str) -> None:
        super().__init__(*problems)
        self.problems: tuple[str, ...] = problems

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return self.problems[0]
        lines = "".join(f"\n  - {p}" for p in self.problems)
        return f"{len(self.problems)} problems:{lines}"


@dataclass(frozen=True)
class Settings:
    """Every setting; secrets are kept out of ``repr()`` (settings reach logs and tracebacks)."""

    env: str = "local"
    postgres_host: str = "127.0.0.1"
    postgres_port: int = 5432
    postgres_db: str = "exchange"
    postgres_user: str = "exchange"
    postgres_password: str = field(default=_SECRET_DEFAULTS["POSTGRES_PASSWORD"], repr=False)
    database_url: str | None = field(default=None, repr=False)
    minio_endpoint: str = "http://127.0.0.1:9000"
    minio_access_key: str = "minioadmin"
    minio_secret_key: str = field(default=_SECRET_DEFAULTS["MINIO_SECRET_KEY"], repr=False)
    s3_region: str = "us-east-1"
    raw_bucket: str = "raw-objects"
    kafka_brokers: str = "127.0.0.1:9092"
    # Topic name per role of infra/topics.py (``ingested.v1``, ``dlq.v2``, ``control`` …).
    topics: Mapping[str, str] = field(default_factory=lambda: _topic_names({}))
    kafka_topics: tuple[str, ...] = tuple(f.topic.default for f in FORMATS)
    topic_partitions: int = 6
    jwt_issuer: str = "exchange-stream-local"
    jwt_audience: str = "exchange-stream"
    jwt_secret: str = field(default=_SECRET_DEFAULTS["JWT_SECRET"], repr=False)
    # HS256 JWTs signed with JWT_SECRET are accepted while this is on (JWT_HS256=0: off, once
    # every caller has moved to the exchange's own access tokens).
    jwt_hs256: bool = True
    # The Ed25519 private key (PEM) that signs the access tokens of POST /auth/token; every
    # worker must have the same one.
    access_token_signing_key: str = field(
        default=_SECRET_DEFAULTS["ACCESS_TOKEN_SIGNING_KEY"], repr=False
    )
    # Scheme, host and optional path prefix of the absolute URLs the exchange publishes (SMART
    # discovery, the token URL an assertion's aud must name); None: the request's own.
    public_base_url: str | None = None
    tokenizer_hmac_secret: str = field(
        default=_SECRET_DEFAULTS["TOKENIZER_HMAC_SECRET"], repr=False
    )
    recipient_token_secret: str = field(
        default=_SECRET_DEFAULTS["RECIPIENT_TOKEN_SECRET"], repr=False
    )
    # Keys of the match tokens that link records of one person (core/match_tokens.py).
    match_token_secret: str = field(default=_SECRET_DEFAULTS["MATCH_TOKEN_SECRET"], repr=False)
    max_attempts: int = 5
    backoff_base_ms: int = 200
    web_port: int = 8080
    # A batch closes at this many events, or this long after its first one.
    normalizer_batch: int = 200
    normalizer_within_ms: int = 20
    pg_pool_size: int = 20
    pg_work_pool_size: int = 8
    # The read API's own pool (GraphQL): a burst of reads never takes ingest's connections.
    pg_read_pool_size: int = 20
    pg_batch_custom_plans: bool = True
    # Bodies a worker stored, kept in memory for its own normalizer (infra/storage.py); 0: off.
    raw_cache_mb: int = 64
    outbox_linger_ms: int = 30
    # Ingest sheds (503 + Retry-After) while the normalizer is this many records behind
    # (pipeline/backlog.py); 0: never. Sampled every INGEST_BACKLOG_SAMPLE_MS.
    ingest_max_backlog: int = 20_000
    ingest_backlog_sample_ms: int = 1000
    ingest_shed_retry_after_min_s: int = 1
    ingest_shed_retry_after_max_s: int = 30
    kafka_session_timeout_s: int = 10
    kafka_fetch_max_wait_ms: int = 100
    recipient_cache_ttl_s: float = 5.0
    # GraphQL introspection: on by default only with ENV=local (GRAPHQL_INTROSPECTION=0/1).
    graphql_introspection: bool = True
    control_heartbeat_s: float = 10.0
    control_takeover_after_s: float = 60.0
    # Bulk export (ops/export.py, web/fhir.py): an NDJSON file is closed at this size, files are
    # deleted this long after the export completed, a recipient runs at most this many exports
    # at once (another kick-off: 429), a worker runs at most this many, and a page of this many
    # canonical rows is read per statement.
    export_bucket: str = "exports"
    export_file_max_bytes: int = 128 * 1024 * 1024
    export_retention_hours: float = 24.0
    export_max_running: int = 2
    export_concurrency: int = 2
    export_page_rows: int = 5000
    # An export runs in a child process this much nicer than the worker (ops/export_process.py):
    # the worker's requests get the CPU first. 0 to 19.
    export_nice: int = 19
    # The read audit (read/audit.py) writes what it gathered at most this long after a read.
    read_audit_flush_ms: int = 500
    web_bind: str = "127.0.0.1"
    # The worker's asyncio event loop: uvloop (libuv, less CPU per I/O call) or asyncio.
    event_loop: str = "uvloop"
    app_id: str = "exchange-stream"
    log_level: str = "INFO"
    data_dir: str = "exchange-stream-data"

    @property
    def is_local(self) -> bool:
        return self.env == "local"

    def topic(self, role: str) -> str:
        """The name of the topic with ``role`` (see infra/topics.py)."""
        return self.topics[role]

    @property
    def topic_control(self) -> str:
        return self.topics[CONTROL.role]

    @property
    def topic_control_results(self) -> str:
        return self.topics[CONTROL_RESULTS.role]

    @property
    def topic_exports(self) -> str:
        return self.topics[EXPORTS.role]

    @property
    def dsn(self) -> str:
        """The Postgres DSN, from ``DATABASE_URL`` or the ``POSTGRES_*`` parts."""
        if self.database_url:
            return self.database_url
        return (
            f"postgresql://{quote(self.postgres_user)}:{quote(self.postgres_password)}"
            f"@{self.postgres_host}:{self.postgres_port}/{quote(self.postgres_db)}"
        )

    @property
    def broker_list(self) -> list[str]:
        return [b.strip() for b in self.kafka_brokers.split(",") if b.strip()]

    def ingest_topic_for(self, version: str) -> str:
        """The ingested-event topic of the format with ``event_version`` ``version``."""
        return self.topics[ingested_role(version)]

    def dlq_topic_for(self, version: str) -> str:
        return self.topics[dlq_role(version)]

    def all_topics(self) -> list[str]:
        """Every topic the stack creates."""
        return [self.topics[t.role] for t in TOPICS if t.created_by_stack]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from the environment and refuse unsafe ones (see module doc)."""
        e = os.environ if environ is None else environ
        # Every problem is collected and reported at the end: a helper that finds one returns
        # the default so that reading can go on.
        problems: list[str] = []

        def get(name: str, default: str) -> str:
            value = e.get(name)
            return default if value is None or value == "" else value

        def get_int(name: str, default: int, minimum: int = 0) -> int:
            try:
                value = int(get(name, str(default)))
            except ValueError:
                problems.append(f"{name} must be an integer")
                return default
            if value < minimum:
                problems.append(f"{name} must be at least {minimum}")
                return default
            return value

        def get_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
            value = get(name, default).lower()
            if value not in choices:
                problems.append(f"{name} must be one of {', '.join(choices)}")
                return default
            return value

        def get_bool(name: str, default: bool) -> bool:
            raw = get(name, "1" if default else "0").lower()
            if raw not in ("0", "1", "true", "false", "yes", "no"):
                problems.append(f"{name} must be 1 or 0")
                return default
            return raw in ("1", "true", "yes")

        def get_float(name: str, default: float, minimum: float) -> float:
            try:
                value = float(get(name, str(default)))
            except ValueError:
                problems.append(f"{name} must be a number")
                return default
            if not value >= minimum:
                problems.append(f"{name} must be at least {minimum:g}")
                return default
            return value

        def get_base_url(name: str) -> str | None:
            try:
                return _base_url(e.get(name) or None)
            except ConfigError as exc:
                problems.extend(exc.problems)
                return None

        topics = _topic_names(e)
        if e.get("KAFKA_TOPICS"):
            consumed = tuple(t.strip() for t in e["KAFKA_TOPICS"].split(",") if t.strip())
        elif e.get("KAFKA_TOPIC"):
            consumed = (e["KAFKA_TOPIC"].strip(),)
        else:
            consumed = tuple(topics[ingested_role(f.version)] for f in FORMATS)

        settings = cls(
            env=get("ENV", "local"),
            postgres_host=get("POSTGRES_HOST", "127.0.0.1"),
            postgres_port=get_int("POSTGRES_PORT", 5432, 1),
            postgres_db=get("POSTGRES_DB", "exchange"),
            postgres_user=get("POSTGRES_USER", "exchange"),
            postgres_password=get("POSTGRES_PASSWORD", _SECRET_DEFAULTS["POSTGRES_PASSWORD"]),
            database_url=e.get("DATABASE_URL") or None,
            minio_endpoint=get("MINIO_ENDPOINT", "http://127.0.0.1:9000"),
            minio_access_key=get("MINIO_ACCESS_KEY", "minioadmin"),
            minio_secret_key=get("MINIO_SECRET_KEY", _SECRET_DEFAULTS["MINIO_SECRET_KEY"]),
            s3_region=get("S3_REGION", "us-east-1"),
            raw_bucket=get("RAW_BUCKET", "raw-objects"),
            kafka_brokers=get("KAFKA_BROKERS", "127.0.0.1:9092"),
            topics=topics,
            kafka_topics=consumed,
            topic_partitions=get_int("TOPIC_PARTITIONS", 6, 1),
            jwt_issuer=get("JWT_ISSUER", "exchange-stream-local"),
            jwt_audience=get("JWT_AUDIENCE", "exchange-stream"),
            jwt_secret=get("JWT_SECRET", _SECRET_DEFAULTS["JWT_SECRET"]),
            jwt_hs256=get_bool("JWT_HS256", True),
            access_token_signing_key=get(
                "ACCESS_TOKEN_SIGNING_KEY", _SECRET_DEFAULTS["ACCESS_TOKEN_SIGNING_KEY"]
            ),
            public_base_url=get_base_url("PUBLIC_BASE_URL"),
            tokenizer_hmac_secret=get(
                "TOKENIZER_HMAC_SECRET", _SECRET_DEFAULTS["TOKENIZER_HMAC_SECRET"]
            ),
            recipient_token_secret=get(
                "RECIPIENT_TOKEN_SECRET", _SECRET_DEFAULTS["RECIPIENT_TOKEN_SECRET"]
            ),
            match_token_secret=get("MATCH_TOKEN_SECRET", _SECRET_DEFAULTS["MATCH_TOKEN_SECRET"]),
            max_attempts=get_int("MAX_ATTEMPTS", 5, 1),
            backoff_base_ms=get_int("BACKOFF_BASE_MS", 200, 0),
            web_port=get_int("WEB_PORT", 8080, 0),
            normalizer_batch=get_int("NORMALIZER_BATCH", 200, 1),
            normalizer_within_ms=get_int("NORMALIZER_WITHIN_MS", 20, 1),
            pg_pool_size=get_int("PG_POOL_SIZE", 20, 2),
            pg_work_pool_size=get_int("PG_WORK_POOL_SIZE", 8, 2),
            pg_read_pool_size=get_int("PG_READ_POOL_SIZE", 20, 1),
            pg_batch_custom_plans=get_bool("PG_BATCH_CUSTOM_PLANS", True),
            raw_cache_mb=get_int("RAW_CACHE_MB", 64, 0),
            outbox_linger_ms=get_int("OUTBOX_LINGER_MS", 30, 0),
            ingest_max_backlog=get_int("INGEST_MAX_BACKLOG", 20_000, 0),
            ingest_backlog_sample_ms=get_int("INGEST_BACKLOG_SAMPLE_MS", 1000, 50),
            ingest_shed_retry_after_min_s=get_int("INGEST_SHED_RETRY_AFTER_MIN_S", 1, 1),
            ingest_shed_retry_after_max_s=get_int("INGEST_SHED_RETRY_AFTER_MAX_S", 30, 1),
            kafka_session_timeout_s=get_int("KAFKA_SESSION_TIMEOUT_S", 10, 6),
            kafka_fetch_max_wait_ms=get_int("KAFKA_FETCH_MAX_WAIT_MS", 100, 1),
            recipient_cache_ttl_s=get_float("RECIPIENT_CACHE_TTL_S", 5.0, 0.0),
            graphql_introspection=get_bool("GRAPHQL_INTROSPECTION", get("ENV", "local") == "local"),
            control_heartbeat_s=get_float("CONTROL_HEARTBEAT_S", 10.0, 0.1),
            control_takeover_after_s=get_float("CONTROL_TAKEOVER_AFTER_S", 60.0, 1.0),
            export_bucket=get("EXPORT_BUCKET", "exports"),
            export_file_max_bytes=get_int("EXPORT_FILE_MAX_BYTES", 128 * 1024 * 1024, 1024),
            export_retention_hours=get_float("EXPORT_RETENTION_HOURS", 24.0, 0.0),
            export_max_running=get_int("EXPORT_MAX_RUNNING", 2, 1),
            export_concurrency=get_int("EXPORT_CONCURRENCY", 2, 1),
            export_page_rows=get_int("EXPORT_PAGE_ROWS", 5000, 1),
            export_nice=get_int("EXPORT_NICE", 19, 0),
            read_audit_flush_ms=get_int("READ_AUDIT_FLUSH_MS", 500, 1),
            web_bind=get("WEB_BIND", "127.0.0.1"),
            event_loop=get_choice("EVENT_LOOP", "uvloop", ("uvloop", "asyncio")),
            app_id=get("APP_ID", "exchange-stream"),
            log_level=get("LOG_LEVEL", "INFO").upper(),
            data_dir=get("DATA_DIR", "exchange-stream-data"),
        )
        if settings.ingest_shed_retry_after_min_s > settings.ingest_shed_retry_after_max_s:
            problems.append(
                "INGEST_SHED_RETRY_AFTER_MIN_S must not exceed INGEST_SHED_RETRY_AFTER_MAX_S"
            )
        problems += settings.secret_problems(name for name in _SECRET_DEFAULTS if e.get(name))
        if problems:
            raise ConfigError(*problems)
        return settings

    def check(self, explicitly_set: Iterable[str] = ()) -> None:
        """Raise one ``ConfigError`` with every problem of ``secret_problems``, if any."""
        problems = self.secret_problems(explicitly_set)
        if problems:
            raise ConfigError(*problems)

    def secret_problems(self, explicitly_set: Iterable[str] = ()) -> list[str]:
        """What is wrong with the secrets, one line per variable, naming it and never its value.

        The signing key must be an Ed25519 PEM key everywhere. Outside ``ENV=local`` every
        secret must also come from the environment, none may be a local placeholder or the
        local stack's own password, and the keys this service owns must be long enough; each
        variable gets the first of these that it fails.
        """
        problems: list[str] = []
        try:
            signing_key(self.access_token_signing_key)
        except SigningKeyInvalid:
            problems.append(
                "ACCESS_TOKEN_SIGNING_KEY must be an Ed25519 private key in PEM (unencrypted)"
            )
        if self.is_local:
            return problems
        given = set(explicitly_set)
        secrets = {
            "POSTGRES_PASSWORD": self.postgres_password,
            "MINIO_SECRET_KEY": self.minio_secret_key,
            "JWT_SECRET": self.jwt_secret,
            "TOKENIZER_HMAC_SECRET": self.tokenizer_hmac_secret,
            "RECIPIENT_TOKEN_SECRET": self.recipient_token_secret,
            "MATCH_TOKEN_SECRET": self.match_token_secret,
            "ACCESS_TOKEN_SIGNING_KEY": self.access_token_signing_key,
        }
        if self.database_url:
            # The password then travels inside DATABASE_URL; POSTGRES_PASSWORD is unused.
            secrets["POSTGRES_PASSWORD"] = urlsplit(self.database_url).password or ""
            given.add("POSTGRES_PASSWORD")
        for name, value in sorted(secrets.items()):
            if name not in given:
                problems.append(
                    f"{name} is not set (ENV={self.env} refuses the defaults: they are for "
                    "ENV=local only)"
                )
            elif value == _SECRET_DEFAULTS[name]:
                problems.append(
                    f"{name} is the local stack's placeholder or password (refused with "
                    f"ENV={self.env})"
                )
            elif len(value.encode()) < _MIN_SECRET_BYTES.get(name, 0):
                problems.append(
                    f"{name} is too short (ENV={self.env} needs at least "
                    f"{_MIN_SECRET_BYTES[name]} bytes)"
                )
        return problems


def _base_url(value: str | None) -> str | None:
    """``PUBLIC_BASE_URL`` without its trailing slash; an http(s) URL without query or fragment."""
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError("PUBLIC_BASE_URL must be an http(s) URL without query or fragment")
    return value.rstrip("/")


def _topic_names(environ: Mapping[str, str]) -> dict[str, str]:
    """Topic name per role, from the environment or the defaults; the DLQs fall back to
    ``KAFKA_DLQ_TOPIC`` and the results topic is named after the control topic."""
    dlq_fallback = environ.get("KAFKA_DLQ_TOPIC") or None
    names: dict[str, str] = {}
    for topic in TOPICS:
        if topic is CONTROL_RESULTS:
            continue
        default = topic.name.default
        if topic.role.startswith("dlq.") and dlq_fallback:
            default = dlq_fallback
        names[topic.role] = environ.get(topic.name.env) or default
    names[CONTROL_RESULTS.role] = f"{names[CONTROL.role]}.results"
    return names
