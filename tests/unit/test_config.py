"""Configuration: defaults for the local stack, refusal of default secrets elsewhere."""

from __future__ import annotations

import subprocess
import sys

import pytest

from exchange_stream.infra.config import ConfigError, Settings
from tests.conftest import new_signing_key_pem

SECRETS = {
    "POSTGRES_PASSWORD": "pg-s3cret-value",
    "MINIO_SECRET_KEY": "s3-s3cret-value",
    "JWT_SECRET": "jwt-s3cret-value-0123456789abcdefghij",
    "TOKENIZER_HMAC_SECRET": "hmac-s3cret-value-0123456789",
    "RECIPIENT_TOKEN_SECRET": "recipient-s3cret-value-0123456789abcdef",
    "MATCH_TOKEN_SECRET": "match-s3cret-value-0123456789abcdef012",
    "ACCESS_TOKEN_SIGNING_KEY": new_signing_key_pem(),
}


def test_local_defaults_match_the_local_stack() -> None:
    s = Settings.from_env({})
    assert s.env == "local"
    assert s.dsn == "postgresql://exchange:exchange@127.0.0.1:5432/exchange"
    assert s.minio_endpoint == "http://127.0.0.1:9000"
    assert s.raw_bucket == "raw-objects"
    assert s.broker_list == ["127.0.0.1:9092"]
    assert s.kafka_topics == ("record.ingested.v1", "record.ingested.v2")
    assert s.all_topics() == [
        "record.ingested.v1",
        "record.ingested.v2",
        "record.ingested.v1.dlq",
        "record.ingested.v2.dlq",
        "exchange.control",
        "exchange.control.results",
        "exchange.exports",
    ]
    assert (s.topic_partitions, s.max_attempts, s.backoff_base_ms, s.web_port) == (6, 5, 200, 8080)


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_default_secret_is_refused_outside_local(missing: str) -> None:
    env = {"ENV": "production", **SECRETS}
    del env[missing]
    with pytest.raises(ConfigError) as exc:
        Settings.from_env(env)
    assert missing in str(exc.value)
    for value in SECRETS.values():
        assert value not in str(exc.value)


def test_all_secrets_set_is_accepted_outside_local() -> None:
    s = Settings.from_env({"ENV": "production", **SECRETS})
    assert s.jwt_secret == SECRETS["JWT_SECRET"]


def test_repr_shows_no_secret() -> None:
    s = Settings.from_env(
        {"ENV": "production", **SECRETS, "DATABASE_URL": "postgresql://a:pg-url-s3cret@db/x"}
    )
    shown = repr(s) + str(s)
    for value in [*SECRETS.values(), "pg-url-s3cret"]:
        assert value not in shown
    assert "jwt_issuer" in shown


@pytest.mark.parametrize(
    ("name", "value"),
    [("POSTGRES_PASSWORD", "exchange"), ("MINIO_SECRET_KEY", "minioadmin")],
)
def test_the_local_stacks_passwords_are_refused_outside_local_even_when_set(
    name: str, value: str
) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({"ENV": "staging", **SECRETS, name: value})


def test_the_local_password_inside_database_url_is_refused_outside_local() -> None:
    env = {k: v for k, v in SECRETS.items() if k != "POSTGRES_PASSWORD"}
    url = "postgresql://exchange:exchange@db/x"
    with pytest.raises(ConfigError, match="POSTGRES_PASSWORD"):
        Settings.from_env({"ENV": "staging", "DATABASE_URL": url, **env})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("JWT_SECRET", "short"),
        # 31 bytes: below the 32 bytes of an HS256 key.
        ("JWT_SECRET", "x" * 31),
        ("RECIPIENT_TOKEN_SECRET", "x" * 31),
        ("RECIPIENT_TOKEN_SECRET", "dev-recipient-token-secret-change-me"),
        ("JWT_SECRET", "dev-jwt-secret-change-me"),
        ("TOKENIZER_HMAC_SECRET", "short"),
        ("TOKENIZER_HMAC_SECRET", "dev-tokenizer-secret-change-me"),
        ("ACCESS_TOKEN_SIGNING_KEY", "dev-access-token-key-change-me"),
        ("ACCESS_TOKEN_SIGNING_KEY", "not a PEM key"),
    ],
)
def test_weak_or_placeholder_keys_are_refused_outside_local(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({"ENV": "production", **SECRETS, name: value})


def test_database_url_replaces_the_postgres_parts() -> None:
    env = {k: v for k, v in SECRETS.items() if k != "POSTGRES_PASSWORD"}
    s = Settings.from_env({"ENV": "staging", "DATABASE_URL": "postgresql://a:b@db/x", **env})
    assert s.dsn == "postgresql://a:b@db/x"


def test_single_kafka_topic_and_dlq_fallback() -> None:
    s = Settings.from_env({"KAFKA_TOPIC": "record.ingested.v2", "KAFKA_DLQ_TOPIC": "all.dlq"})
    assert s.kafka_topics == ("record.ingested.v2",)
    assert s.dlq_topic_for("1") == s.dlq_topic_for("2") == "all.dlq"


def test_bad_integer_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="MAX_ATTEMPTS"):
        Settings.from_env({"MAX_ATTEMPTS": "many"})


def test_worker_refuses_to_start_with_default_secrets() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "exchange_stream", "worker"],
        env={"ENV": "production", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "JWT_SECRET" in result.stderr
    assert "TOKENIZER_HMAC_SECRET" in result.stderr


def test_hs256_and_public_base_url_settings() -> None:
    s = Settings.from_env({})
    assert (s.jwt_hs256, s.public_base_url) == (True, None)
    s = Settings.from_env({"JWT_HS256": "0", "PUBLIC_BASE_URL": "https://x.test/api/"})
    assert (s.jwt_hs256, s.public_base_url) == (False, "https://x.test/api")
    with pytest.raises(ConfigError, match="PUBLIC_BASE_URL"):
        Settings.from_env({"PUBLIC_BASE_URL": "x.test"})


def test_every_problem_is_reported_at_once_one_line_each_without_secret_values() -> None:
    env = {
        "ENV": "production",
        **SECRETS,
        "MAX_ATTEMPTS": "many",
        "EVENT_LOOP": "tokio",
        "JWT_HS256": "maybe",
        "PUBLIC_BASE_URL": "x.test",
        "JWT_SECRET": "short-jwt-s3cret",
        "TOKENIZER_HMAC_SECRET": "dev-tokenizer-secret-change-me",
        "MINIO_SECRET_KEY": "minioadmin",
        "ACCESS_TOKEN_SIGNING_KEY": "not-a-pem-s3cret",
    }
    del env["POSTGRES_PASSWORD"]
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    named = [
        "MAX_ATTEMPTS",
        "EVENT_LOOP",
        "JWT_HS256",
        "PUBLIC_BASE_URL",
        "JWT_SECRET",
        "TOKENIZER_HMAC_SECRET",
        "MINIO_SECRET_KEY",
        "ACCESS_TOKEN_SIGNING_KEY",
        "POSTGRES_PASSWORD",
    ]
    problems = caught.value.problems
    assert sorted(p.split()[0] for p in problems) == sorted(named)
    text = str(caught.value)
    assert text.splitlines()[0] == f"{len(named)} problems:"
    assert len(text.splitlines()) == len(named) + 1
    # No value at all: neither the secrets nor the local placeholders, which are named as such.
    for value in {*SECRETS.values(), *(env[n] for n in named if n in env)}:
        assert value not in text, value


def test_one_problem_is_one_line() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"MAX_ATTEMPTS": "0"})
    assert str(caught.value) == "MAX_ATTEMPTS must be at least 1"


def test_every_command_prints_every_problem() -> None:
    env = {
        "ENV": "production",
        "PATH": "/usr/bin:/bin",
        "MAX_ATTEMPTS": "many",
        "JWT_SECRET": "short-jwt-s3cret",
    }
    for command in (["migrate"], ["worker"], ["create-topics"], ["replay", "--source", "x"]):
        result = subprocess.run(
            [sys.executable, "-m", "exchange_stream", *command],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stderr
        # MAX_ATTEMPTS, and each secret of SECRETS.
        problems = 1 + len(SECRETS)
        assert result.stderr.startswith(
            f"exchange-stream: configuration error: {problems} problems:"
        ), result.stderr
        for name in ["MAX_ATTEMPTS", *sorted(SECRETS)]:
            assert name in result.stderr
        assert "short-jwt-s3cret" not in result.stderr
