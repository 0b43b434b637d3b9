-- name: migrations_try_lock
-- One migrator at a time across every worker; the key is arbitrary but fixed. Polled, not
-- waited for inside Postgres (infra/migrate.py says why).
SELECT pg_try_advisory_lock(7211504001)

-- name: migrations_unlock
SELECT pg_advisory_unlock(7211504001)

-- name: migrations_create_table
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     text PRIMARY KEY,
    name        text        NOT NULL,
    sha256      text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)

-- name: migrations_applied
SELECT version, name, sha256 FROM schema_migrations ORDER BY version

-- name: migrations_record
INSERT INTO schema_migrations (version, name, sha256) VALUES ($1, $2, $3)
