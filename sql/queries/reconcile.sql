-- Every finding query takes ($1 source, $2 older_than_s) and returns the same columns:
-- record_id, source, object_key, sha256, size_bytes, created_at, has_canonical.
-- Rows younger than older_than_s may be in flight (a request between its S3 write and its commit,
-- an event not yet normalized) and are not findings.

-- name: reconcile_create_seen
CREATE TEMP TABLE IF NOT EXISTS reconcile_seen (
    record_id uuid PRIMARY KEY,
    object_key text NOT NULL,
    size_bytes bigint NOT NULL,
    last_modified timestamptz NOT NULL
);
TRUNCATE reconcile_seen

-- name: reconcile_drop_seen
DROP TABLE IF EXISTS reconcile_seen

-- name: reconcile_load_seen
INSERT INTO reconcile_seen (record_id, object_key, size_bytes, last_modified)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::timestamptz[])
ON CONFLICT DO NOTHING

-- name: reconcile_raw_without_manifest
-- The crash between the S3 write and the commit leaves exactly this.
SELECT s.record_id, $1::text AS source, s.object_key, NULL::text AS sha256, s.size_bytes,
       NULL::timestamptz AS created_at, false AS has_canonical
FROM reconcile_seen s
WHERE NOT EXISTS (SELECT 1 FROM raw_object_manifest m WHERE m.record_id = s.record_id)
  AND NOT EXISTS (SELECT 1 FROM canonical_records c WHERE c.record_id = s.record_id)
  AND s.last_modified < now() - make_interval(secs => $2)
ORDER BY s.record_id

-- name: reconcile_manifest_written_not_enqueued
SELECT m.record_id, m.source, m.object_key, m.sha256, m.size_bytes, m.created_at,
       false AS has_canonical
FROM raw_object_manifest m
WHERE m.source = $1 AND m.state = 'written'
  AND m.updated_at < now() - make_interval(secs => $2)
ORDER BY m.record_id

-- name: reconcile_enqueued_without_canonical
SELECT m.record_id, m.source, m.object_key, m.sha256, m.size_bytes, m.created_at,
       false AS has_canonical
FROM raw_object_manifest m
WHERE m.source = $1 AND m.state = 'enqueued'
  AND NOT EXISTS (SELECT 1 FROM canonical_records c WHERE c.record_id = m.record_id)
  AND EXISTS (SELECT 1 FROM reconcile_seen s WHERE s.record_id = m.record_id)
  AND m.updated_at < now() - make_interval(secs => $2)
ORDER BY m.record_id

-- name: reconcile_canonical_without_manifest
SELECT c.record_id, c.source, c.raw_object_key AS object_key, c.raw_sha256 AS sha256,
       s.size_bytes, c.ingested_at AS created_at, true AS has_canonical
FROM canonical_records c
LEFT JOIN reconcile_seen s ON s.record_id = c.record_id
WHERE c.source = $1
  AND NOT EXISTS (SELECT 1 FROM raw_object_manifest m WHERE m.record_id = c.record_id)
  AND $2::float8 >= 0
ORDER BY c.record_id

-- name: reconcile_manifest_without_raw
SELECT m.record_id, m.source, m.object_key, m.sha256, m.size_bytes, m.created_at,
       EXISTS (SELECT 1 FROM canonical_records c WHERE c.record_id = m.record_id) AS has_canonical
FROM raw_object_manifest m
WHERE m.source = $1 AND m.state <> 'orphaned'
  AND NOT EXISTS (SELECT 1 FROM reconcile_seen s WHERE s.record_id = m.record_id)
  AND m.updated_at < now() - make_interval(secs => $2)
ORDER BY m.record_id

-- name: reconcile_state_mismatch
-- 'canonicalized' without a canonical row, or a canonical row whose manifest says otherwise.
SELECT m.record_id, m.source, m.object_key, m.sha256, m.size_bytes, m.created_at,
       c.record_id IS NOT NULL AS has_canonical
FROM raw_object_manifest m
LEFT JOIN canonical_records c ON c.record_id = m.record_id
WHERE m.source = $1
  AND EXISTS (SELECT 1 FROM reconcile_seen s WHERE s.record_id = m.record_id)
  AND ((m.state = 'canonicalized' AND c.record_id IS NULL)
       OR (m.state <> 'canonicalized' AND c.record_id IS NOT NULL))
  AND m.updated_at < now() - make_interval(secs => $2)
ORDER BY m.record_id

-- name: reconcile_outbox_stuck
-- Outbox rows of the source still unpublished after at least one failed attempt: a topic Kafka
-- does not have, a message it refuses, or an outage not over yet. The record id comes from the
-- event (text: the row is reported as it is, whatever it holds); the outbox columns follow.
SELECT o.payload->>'record_id' AS record_id, $1::text AS source,
       o.payload->'raw_object'->>'key' AS object_key, NULL::text AS sha256,
       NULL::bigint AS size_bytes, o.created_at, false AS has_canonical,
       o.id AS outbox_id, o.topic, o.attempts, o.last_error, o.next_attempt_at
FROM outbox_events o
WHERE o.published_at IS NULL AND o.attempts > 0
  AND o.payload->>'source' = $1
  AND o.created_at < now() - make_interval(secs => $2)
ORDER BY o.id

-- name: reconcile_upsert_manifest
INSERT INTO raw_object_manifest (record_id, source, bucket, object_key, sha256, size_bytes, state)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (record_id) DO UPDATE SET state = EXCLUDED.state, updated_at = now()

-- name: reconcile_audit
INSERT INTO audit_log (correlation_id, actor, action, entity_type, entity_id, status, details)
VALUES ($1, $2, $3, 'record', $4, $5, $6)

-- name: reconcile_same_body_accepted
-- Another record of the source with exactly these bytes: the accepted retry of a crashed request.
SELECT record_id FROM raw_object_manifest
WHERE source = $1 AND sha256 = $2 AND record_id <> $3 AND state <> 'orphaned'
ORDER BY created_at
LIMIT 1
