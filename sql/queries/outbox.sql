-- name: outbox_claim
-- Rows another relay holds are skipped, not waited for: each pending row goes to one relay.
SELECT id, topic, key, payload, created_at
FROM outbox_events
WHERE published_at IS NULL
ORDER BY id
LIMIT $1
FOR UPDATE SKIP LOCKED

-- name: outbox_mark_published
UPDATE outbox_events SET published_at = now() WHERE id = ANY($1::bigint[])

-- name: outbox_mark_failed
UPDATE outbox_events
SET attempts = attempts + 1, last_error = $2
WHERE id = ANY($1::bigint[]) AND published_at IS NULL

-- name: outbox_pending_count
SELECT count(*) FROM outbox_events WHERE published_at IS NULL
