-- The core tables (docs/CONTRACT.md §5). Names and columns are contract: later migrations add,
-- never rename.

CREATE TABLE idempotency_keys (
    key             text PRIMARY KEY,
    request_sha256  text        NOT NULL,
    response        jsonb       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    route           text,
    record_id       uuid
);

CREATE TABLE outbox_events (
    id            bigserial PRIMARY KEY,
    topic         text        NOT NULL,
    key           text        NOT NULL,
    payload       jsonb       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz,
    attempts      integer     NOT NULL DEFAULT 0,
    last_error    text
);
-- The relay only ever scans what is still pending.
CREATE INDEX outbox_events_pending_idx ON outbox_events (id) WHERE published_at IS NULL;

CREATE TABLE audit_log (
    id              bigserial PRIMARY KEY,
    occurred_at     timestamptz NOT NULL DEFAULT now(),
    correlation_id  text,
    actor           text        NOT NULL,
    action          text        NOT NULL,
    entity_type     text        NOT NULL,
    entity_id       text        NOT NULL,
    status          text        NOT NULL,
    details         jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_entity_idx ON audit_log (entity_type, entity_id);

CREATE TABLE raw_object_manifest (
    record_id   uuid PRIMARY KEY,
    source      text        NOT NULL,
    bucket      text        NOT NULL,
    object_key  text        NOT NULL,
    sha256      text        NOT NULL,
    size_bytes  bigint      NOT NULL,
    state       text        NOT NULL
        CHECK (state IN ('written', 'enqueued', 'canonicalized', 'orphaned')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX raw_object_manifest_source_state_idx ON raw_object_manifest (source, state);

CREATE TABLE canonical_records (
    record_id       uuid PRIMARY KEY,
    source          text        NOT NULL,
    raw_object_key  text        NOT NULL,
    raw_sha256      text        NOT NULL,
    normalized      jsonb       NOT NULL,
    ingested_at     timestamptz NOT NULL,
    normalized_at   timestamptz NOT NULL DEFAULT now(),
    correlation_id  text,
    event_version   text        NOT NULL,
    record_kind     text        NOT NULL,
    schema_hint     text        NOT NULL
);
CREATE INDEX canonical_records_source_idx ON canonical_records (source);

CREATE TABLE processing_stage_state (
    record_id           uuid        NOT NULL,
    pipeline            text        NOT NULL,
    status              text        NOT NULL
        CHECK (status IN ('running', 'succeeded', 'failed_retryable', 'dlq')),
    attempt_count       integer     NOT NULL DEFAULT 0,
    first_started_at    timestamptz NOT NULL DEFAULT now(),
    last_started_at     timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    correlation_id      text,
    event_version       text,
    event_id            text,
    kafka_topic         text,
    kafka_partition     integer,
    kafka_offset        bigint,
    last_error_type     text,
    last_error_message  text,
    last_error_stage    text,
    PRIMARY KEY (record_id, pipeline)
);
CREATE INDEX processing_stage_state_status_idx ON processing_stage_state (status);

-- One row per attempt: inserted as 'started' before the work, closed once with its outcome.
CREATE TABLE processing_attempts (
    id               bigserial PRIMARY KEY,
    record_id        uuid        NOT NULL,
    pipeline         text        NOT NULL,
    attempt_no       integer     NOT NULL,
    status           text        NOT NULL
        CHECK (status IN ('started', 'succeeded', 'failed', 'dlq_published')),
    started_at       timestamptz NOT NULL DEFAULT now(),
    ended_at         timestamptz,
    error_type       text,
    error_message    text,
    error_stage      text,
    transient        boolean,
    result           jsonb,
    kafka_topic      text,
    kafka_partition  integer,
    kafka_offset     bigint,
    UNIQUE (record_id, pipeline, attempt_no)
);

CREATE TABLE job_runs (
    job_run_id  uuid PRIMARY KEY,
    job_name    text        NOT NULL,
    status      text        NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    started_at  timestamptz NOT NULL DEFAULT now(),
    ended_at    timestamptz,
    params      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    progress    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    error       text,
    command_id  text UNIQUE
);
CREATE INDEX job_runs_name_idx ON job_runs (job_name, started_at);

CREATE TABLE job_checkpoints (
    job_name    text PRIMARY KEY,
    checkpoint  jsonb       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE derived_patient_record_index (
    patient_token  text        NOT NULL,
    record_id      uuid PRIMARY KEY,
    source         text        NOT NULL,
    event_version  text        NOT NULL,
    record_kind    text        NOT NULL,
    schema_hint    text        NOT NULL,
    ingested_at    timestamptz NOT NULL,
    normalized_at  timestamptz NOT NULL
);
CREATE INDEX derived_patient_record_index_token_idx ON derived_patient_record_index (patient_token);
