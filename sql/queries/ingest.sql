-- name: ingest_lock_and_lookup
-- Serialises requests per Idempotency-Key for the rest of the transaction.
SELECT request_sha256, response FROM idempotency_lock_and_lookup($1)

-- name: ingest_record
-- Everything an accepted request writes, in one statement of the ingest transaction:
-- the manifest (already 'enqueued': the outbox row commits with it), the outbox event,
-- the audit row and the idempotency key with its response.
-- $1 record_id, $2 source, $3 bucket, $4 object_key, $5 sha256, $6 size_bytes, $7 topic,
-- $8 event, $9 correlation_id, $10 actor, $11 audit details, $12 key, $13 response, $14 route
WITH manifest AS (
    INSERT INTO raw_object_manifest
        (record_id, source, bucket, object_key, sha256, size_bytes, state)
    VALUES ($1, $2, $3, $4, $5, $6, 'enqueued')
), audit AS (
    INSERT INTO audit_log
        (correlation_id, actor, action, entity_type, entity_id, status, details)
    VALUES ($9, $10, 'ingest', 'record', $1::text, 'accepted', $11)
), idempotency AS (
    INSERT INTO idempotency_keys (key, request_sha256, response, route, record_id)
    VALUES ($12, $5, $13, $14, $1)
)
SELECT outbox_enqueue(ARRAY[$7::text], ARRAY[$1::text], ARRAY[$8::jsonb])
