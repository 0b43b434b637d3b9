-- name: ingest_once
-- Everything an accepted request writes, in one statement run as its own transaction once the
-- raw object is stored, if its Idempotency-Key is new (see migration 0011): the manifest
-- ('enqueued'), the outbox event, the audit row and the key with its response. Otherwise
-- nothing, and the stored hash and response.
-- $1 record_id, $2 source, $3 bucket, $4 object_key, $5 sha256, $6 size_bytes, $7 topic,
-- $8 event, $9 correlation_id, $10 actor, $11 audit details, $12 key, $13 response, $14 route
SELECT inserted, request_sha256, response
FROM ingest_once($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)

-- name: idempotency_lookup
-- A stored key's hash and response, read without its lock: answers a retry while the object
-- store is down (a request in flight with the same key may commit after this read; its retry
-- then gets the stored answer).
SELECT request_sha256, response FROM idempotency_keys WHERE key = $1
