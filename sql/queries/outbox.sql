-- name: outbox_enqueue
-- Events into the outbox, as many as given ($1 topics, $2 keys, $3 payloads, in step); the relay
-- publishes them. The same function is called by the ingest statement (migration 0010).
SELECT outbox_enqueue($1::text[], $2::text[], $3::jsonb[])

-- name: outbox_claim
-- Rows another relay holds are skipped, not waited for: each pending row goes to one relay.
-- A row that failed on its own waits for its next_attempt_at; the rest go in id order, through
-- the partial index of pending rows.
SELECT id, topic, key, payload, created_at
FROM outbox_events
WHERE published_at IS NULL
  AND (next_attempt_at IS NULL OR next_attempt_at <= now())
ORDER BY id
LIMIT $1
FOR UPDATE SKIP LOCKED

-- name: outbox_mark_published
UPDATE outbox_events SET published_at = now() WHERE id = ANY($1::bigint[])

-- name: outbox_mark_failed
-- Kafka did not answer for the whole batch: the relay backs off as a whole, so the rows stay due
-- and go out as soon as Kafka is back.
UPDATE outbox_events
SET attempts = attempts + 1, last_error = $2
WHERE id = ANY($1::bigint[]) AND published_at IS NULL

-- name: outbox_mark_retry
-- ($1 ids, $2 error types, $3 first delay s, $4 longest delay s) Rows that failed on their own
-- while Kafka answered: each waits base * 2^(its earlier such failures) seconds, capped.
UPDATE outbox_events o
SET attempts = o.attempts + 1,
    row_failures = o.row_failures + 1,
    last_error = f.error_type,
    next_attempt_at = now() + make_interval(
        secs => least($4::float8, $3::float8 * power(2, least(o.row_failures, 30)))
    )
FROM unnest($1::bigint[], $2::text[]) AS f(id, error_type)
WHERE o.id = f.id AND o.published_at IS NULL

-- name: outbox_pending_count
-- Pending rows, and among them those waiting for a retry after failing on their own.
SELECT count(*) AS pending,
       count(*) FILTER (WHERE next_attempt_at > now()) AS waiting_retry
FROM outbox_events
WHERE published_at IS NULL
