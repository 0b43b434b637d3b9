-- name: normalize_start
-- Ledger, before any work: one new attempt per record, the stage state 'running' (migration
-- 0020's normalize_start: one statement, so the batch's starts commit together). Returns each
-- record's attempt number and whether a canonical row already exists (a redelivery or replay:
-- nothing left to do but acknowledge).
-- $1 record_id[], $2 correlation_id[], $3 event_version[], $4 event_id[], $5 topic[],
-- $6 partition[], $7 offset[], $8 pipeline
SELECT record_id, attempt_no, canonical
FROM normalize_start($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[],
                     $7::bigint[], $8::text)

-- name: normalize_commit
-- The canonical transaction as one statement (migration 0020's normalize_commit): canonical rows
-- (first writer wins), manifest 'canonicalized', attempts and stage state 'succeeded', then the
-- new records linked to persons. Records already canonical only close their ledger rows.
-- $1 record_id[], $2 attempt_no[], $3 source[], $4 raw_object_key[], $5 raw_sha256[],
-- $6 normalized[], $7 ingested_at[], $8 correlation_id[], $9 event_version[], $10 record_kind[],
-- $11 schema_hint[], $12 already_canonical[], $13 pipeline; to link: $14 record ids, $15/$16/$17
-- their match tokens as (owner, rule, token)
SELECT normalize_commit($1::uuid[], $2::int[], $3::text[], $4::text[], $5::text[], $6::jsonb[],
                        $7::timestamptz[], $8::text[], $9::text[], $10::text[], $11::text[],
                        $12::bool[], $13::text, $14::uuid[], $15::uuid[], $16::text[],
                        $17::bytea[])

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
