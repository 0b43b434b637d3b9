-- name: normalize_start_attempts
-- Ledger, before any work: one new attempt per record, the stage state 'running'. One statement,
-- so the batch's starts commit together. Returns each record's attempt number and whether a
-- canonical row already exists (a redelivery or replay: nothing left to do but acknowledge).
-- $1 record_id[], $2 correlation_id[], $3 event_version[], $4 event_id[], $5 topic[],
-- $6 partition[], $7 offset[], $8 pipeline
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::int[], $7::bigint[])
        AS t(record_id, correlation_id, event_version, event_id, kafka_topic, kafka_partition,
             kafka_offset)
), state AS (
    INSERT INTO processing_stage_state AS s
        (record_id, pipeline, status, attempt_count, correlation_id, event_version, event_id,
         kafka_topic, kafka_partition, kafka_offset)
    SELECT record_id, $8, 'running', 1, correlation_id, event_version, event_id,
           kafka_topic, kafka_partition, kafka_offset
    FROM input
    ORDER BY record_id
    ON CONFLICT (record_id, pipeline) DO UPDATE SET
        status = 'running',
        attempt_count = s.attempt_count + 1,
        last_started_at = now(),
        updated_at = now(),
        finished_at = NULL,
        correlation_id = EXCLUDED.correlation_id,
        event_version = EXCLUDED.event_version,
        event_id = EXCLUDED.event_id,
        kafka_topic = EXCLUDED.kafka_topic,
        kafka_partition = EXCLUDED.kafka_partition,
        kafka_offset = EXCLUDED.kafka_offset
    RETURNING record_id, attempt_count
), attempts AS (
    INSERT INTO processing_attempts
        (record_id, pipeline, attempt_no, status, kafka_topic, kafka_partition, kafka_offset)
    SELECT st.record_id, $8, st.attempt_count, 'started', i.kafka_topic, i.kafka_partition,
           i.kafka_offset
    FROM state st JOIN input i USING (record_id)
)
SELECT st.record_id, st.attempt_count AS attempt_no,
       EXISTS (SELECT 1 FROM canonical_records c WHERE c.record_id = st.record_id) AS canonical
FROM state st

-- name: normalize_commit_success
-- The canonical transaction: canonical rows (first writer wins), manifest 'canonicalized',
-- attempts and stage state 'succeeded'. Records already canonical only close their ledger rows.
-- $1 record_id[], $2 attempt_no[], $3 source[], $4 raw_object_key[], $5 raw_sha256[],
-- $6 normalized[], $7 ingested_at[], $8 correlation_id[], $9 event_version[], $10 record_kind[],
-- $11 schema_hint[], $12 already_canonical[], $13 pipeline
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[], $4::text[], $5::text[], $6::jsonb[],
                         $7::timestamptz[], $8::text[], $9::text[], $10::text[], $11::text[],
                         $12::bool[])
        AS t(record_id, attempt_no, source, raw_object_key, raw_sha256, normalized, ingested_at,
             correlation_id, event_version, record_kind, schema_hint, already_canonical)
), canon AS (
    INSERT INTO canonical_records
        (record_id, source, raw_object_key, raw_sha256, normalized, ingested_at, normalized_at,
         correlation_id, event_version, record_kind, schema_hint)
    SELECT record_id, source, raw_object_key, raw_sha256, normalized, ingested_at, now(),
           correlation_id, event_version, record_kind, schema_hint
    FROM input
    WHERE NOT already_canonical
    ORDER BY record_id
    ON CONFLICT (record_id) DO NOTHING
    RETURNING record_id
), manifest AS (
    UPDATE raw_object_manifest m
    SET state = 'canonicalized', updated_at = now()
    FROM input i
    WHERE m.record_id = i.record_id AND m.state <> 'canonicalized'
), attempts AS (
    UPDATE processing_attempts a
    SET status = 'succeeded', ended_at = now(),
        result = jsonb_build_object('canonical_row', CASE WHEN c.record_id IS NULL
                                                         THEN 'existing' ELSE 'inserted' END)
    FROM input i LEFT JOIN canon c USING (record_id)
    WHERE a.record_id = i.record_id AND a.pipeline = $13 AND a.attempt_no = i.attempt_no
)
UPDATE processing_stage_state s
SET status = 'succeeded', finished_at = now(), updated_at = now(),
    last_error_type = NULL, last_error_message = NULL, last_error_stage = NULL
FROM input i
WHERE s.record_id = i.record_id AND s.pipeline = $13

-- name: normalize_record_failure
-- A failed attempt, closed with its sanitised error. $6 is the attempt's final status
-- ('failed' before a retry, 'dlq_published' once the DLQ holds the event) and $7 the stage
-- state ('failed_retryable' or 'dlq').
-- $1 record_id, $2 attempt_no, $3 error_type, $4 error_message, $5 error_stage,
-- $6 attempt status, $7 stage status, $8 transient, $9 pipeline
WITH attempt AS (
    UPDATE processing_attempts
    SET status = $6, ended_at = coalesce(ended_at, now()), error_type = $3,
        error_message = $4, error_stage = $5, transient = $8
    WHERE record_id = $1 AND pipeline = $9 AND attempt_no = $2
)
UPDATE processing_stage_state
SET status = $7, updated_at = now(),
    finished_at = CASE WHEN $7 = 'dlq' THEN now() END,
    last_error_type = $3, last_error_message = $4, last_error_stage = $5
WHERE record_id = $1 AND pipeline = $9
