-- name: replay_enqueue
-- One page of re-emitted events, into the outbox (the relay publishes them).
INSERT INTO outbox_events (topic, key, payload)
SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[])

-- name: replay_manifest_created
SELECT record_id, created_at FROM raw_object_manifest WHERE record_id = ANY($1::uuid[])

-- name: replay_canonical_present
SELECT record_id FROM canonical_records WHERE record_id = ANY($1::uuid[])
