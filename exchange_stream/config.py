"""All configuration, read once from the environment (SPEC §3).

Defaults match the local stack. Outside ``ENV=local`` a secret left at its default is refused,
so a misconfigured deployment stops at start instead of running with a well-known key.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

# Secrets whose local defaults must never reach a real deployment.
_SECRET_DEFAULTS = {
    "POSTGRES_PASSWORD": "exchange",
    "MINIO_SECRET_KEY": "minioadmin",
    "JWT_SECRET": "dev-jwt-secret-change-me",
    "TOKENIZER_HMAC_SECRET": "dev-tokenizer-secret-change-me",
}


class ConfigError(ValueError):
    """The environment does not describe a runnable configuration."""


@dataclass(frozen=True)
class Settings:
    env: str = "local"
    postgres_host: str = "127.0.0.1"
    postgres_port: int = 5432
    postgres_db: str = "exchange"
    postgres_user: str = "exchange"
    postgres_password: str = _SECRET_DEFAULTS["POSTGRES_PASSWORD"]
    database_url: str | None = None
    minio_endpoint: str = "http://127.0.0.1:9000"
    minio_access_key: str = "minioadmin"
    minio_secret_key: str = _SECRET_DEFAULTS["MINIO_SECRET_KEY"]
    s3_region: str = "us-east-1"
    raw_bucket: str = "raw-objects"
    kafka_brokers: str = "127.0.0.1:9092"
    topic_record_ingested_v1: str = "record.ingested.v1"
    topic_record_ingested_v2: str = "record.ingested.v2"
    kafka_topics: tuple[str, ...] = ("record.ingested.v1", "record.ingested.v2")
    kafka_dlq_topic_v1: str = "record.ingested.v1.dlq"
    kafka_dlq_topic_v2: str = "record.ingested.v2.dlq"
    topic_control: str = "exchange.control"
    topic_partitions: int = 6
    jwt_issuer: str = "exchange-stream-local"
    jwt_audience: str = "exchange-stream"
    jwt_secret: str = _SECRET_DEFAULTS["JWT_SECRET"]
    tokenizer_hmac_secret: str = _SECRET_DEFAULTS["TOKENIZER_HMAC_SECRET"]
    max_attempts: int = 5
    backoff_base_ms: int = 200
    web_port: int = 8080
    normalizer_concurrency: int = 4
    pg_pool_size: int = 20
    kafka_session_timeout_s: int = 10
    web_bind: str = "127.0.0.1"
    app_id: str = "exchange-stream"
    log_level: str = "INFO"
    data_dir: str = "exchange-stream-data"

    @property
    def is_local(self) -> bool:
        return self.env == "local"

    @property
    def topic_control_results(self) -> str:
        return f"{self.topic_control}.results"

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

    def dlq_topic_for(self, event_version: str) -> str:
        return self.kafka_dlq_topic_v2 if event_version == "2" else self.kafka_dlq_topic_v1

    def ingest_topic_for(self, event_version: str) -> str:
        return (
            self.topic_record_ingested_v2 if event_version == "2" else self.topic_record_ingested_v1
        )

    def all_topics(self) -> list[str]:
        """Every topic of SPEC §5 that the stack creates."""
        return [
            self.topic_record_ingested_v1,
            self.topic_record_ingested_v2,
            self.kafka_dlq_topic_v1,
            self.kafka_dlq_topic_v2,
            self.topic_control,
            self.topic_control_results,
        ]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from the environment and refuse unsafe ones (see module doc)."""
        e = os.environ if environ is None else environ

        def get(name: str, default: str) -> str:
            value = e.get(name)
            return default if value is None or value == "" else value

        def get_int(name: str, default: int, minimum: int = 0) -> int:
            raw = get(name, str(default))
            try:
                value = int(raw)
            except ValueError:
                raise ConfigError(f"{name} must be an integer") from None
            if value < minimum:
                raise ConfigError(f"{name} must be at least {minimum}")
            return value

        v1 = get("TOPIC_RECORD_INGESTED_V1", "record.ingested.v1")
        v2 = get("TOPIC_RECORD_INGESTED_V2", "record.ingested.v2")
        if e.get("KAFKA_TOPICS"):
            topics = tuple(t.strip() for t in e["KAFKA_TOPICS"].split(",") if t.strip())
        elif e.get("KAFKA_TOPIC"):
            topics = (e["KAFKA_TOPIC"].strip(),)
        else:
            topics = (v1, v2)
        dlq_fallback = e.get("KAFKA_DLQ_TOPIC") or None

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
            topic_record_ingested_v1=v1,
            topic_record_ingested_v2=v2,
            kafka_topics=topics,
            kafka_dlq_topic_v1=get("KAFKA_DLQ_TOPIC_V1", dlq_fallback or "record.ingested.v1.dlq"),
            kafka_dlq_topic_v2=get("KAFKA_DLQ_TOPIC_V2", dlq_fallback or "record.ingested.v2.dlq"),
            topic_control=get("TOPIC_CONTROL", "exchange.control"),
            topic_partitions=get_int("TOPIC_PARTITIONS", 6, 1),
            jwt_issuer=get("JWT_ISSUER", "exchange-stream-local"),
            jwt_audience=get("JWT_AUDIENCE", "exchange-stream"),
            jwt_secret=get("JWT_SECRET", _SECRET_DEFAULTS["JWT_SECRET"]),
            tokenizer_hmac_secret=get(
                "TOKENIZER_HMAC_SECRET", _SECRET_DEFAULTS["TOKENIZER_HMAC_SECRET"]
            ),
            max_attempts=get_int("MAX_ATTEMPTS", 5, 1),
            backoff_base_ms=get_int("BACKOFF_BASE_MS", 200, 0),
            web_port=get_int("WEB_PORT", 8080, 0),
            normalizer_concurrency=get_int("NORMALIZER_CONCURRENCY", 4, 1),
            pg_pool_size=get_int("PG_POOL_SIZE", 20, 2),
            kafka_session_timeout_s=get_int("KAFKA_SESSION_TIMEOUT_S", 10, 6),
            web_bind=get("WEB_BIND", "127.0.0.1"),
            app_id=get("APP_ID", "exchange-stream"),
            log_level=get("LOG_LEVEL", "INFO").upper(),
            data_dir=get("DATA_DIR", "exchange-stream-data"),
        )
        settings.check(name for name in _SECRET_DEFAULTS if e.get(name))
        return settings

    def check(self, explicitly_set: Iterable[str] = ()) -> None:
        """Outside ``ENV=local``: every secret must come from the environment, and the two keys
        this service owns must not be the local placeholders nor shorter than 16 characters.
        Messages name variables, never values."""
        if self.is_local:
            return
        given = set(explicitly_set)
        secrets = {
            "POSTGRES_PASSWORD": self.postgres_password,
            "MINIO_SECRET_KEY": self.minio_secret_key,
            "JWT_SECRET": self.jwt_secret,
            "TOKENIZER_HMAC_SECRET": self.tokenizer_hmac_secret,
        }
        if self.database_url:
            # The password then travels inside DATABASE_URL; POSTGRES_PASSWORD is unused.
            secrets.pop("POSTGRES_PASSWORD")
        unset = sorted(name for name in secrets if name not in given)
        if unset:
            raise ConfigError(
                f"ENV={self.env} refuses default secrets: set {', '.join(unset)} in the "
                "environment (defaults are allowed only with ENV=local)"
            )
        weak = sorted(
            name
            for name in ("JWT_SECRET", "TOKENIZER_HMAC_SECRET")
            if secrets[name] == _SECRET_DEFAULTS[name] or len(secrets[name]) < 16
        )
        if weak:
            raise ConfigError(
                f"ENV={self.env} refuses weak secrets: {', '.join(weak)} must be at least "
                "16 characters and not the local placeholder"
            )
