-- The read API (exchange_stream/read/graphql.py). Every list is in receipt order, (ingested_at,
-- record_id), and continues after a cursor of that pair; each reads one index range.

-- name: read_patient_exists
SELECT EXISTS (SELECT 1 FROM canonical_records WHERE normalized ->> 'patient_token' = $1)

-- name: read_patient_kind
-- One patient's records of one kind: their kind object only. $1 master token, $2 kind,
-- $3/$4 the cursor (ingested_at, record_id), $5 limit
SELECT record_id, ingested_at, normalized -> $2 AS object
FROM canonical_records
WHERE normalized ->> 'patient_token' = $1 AND record_kind = $2
  AND (ingested_at, record_id) > ($3, $4)
ORDER BY ingested_at, record_id
LIMIT $5

-- name: read_records
-- $1/$2 the cursor, $3 limit, $4 kind or null
SELECT record_id, source, record_kind, schema_hint, ingested_at, normalized_at, normalized
FROM canonical_records
WHERE (ingested_at, record_id) > ($1, $2) AND ($4::text IS NULL OR record_kind = $4)
ORDER BY ingested_at, record_id
LIMIT $3

-- name: read_records_of_source
-- $1/$2 the cursor, $3 limit, $4 kind or null, $5 source
SELECT record_id, source, record_kind, schema_hint, ingested_at, normalized_at, normalized
FROM canonical_records
WHERE source = $5 AND (ingested_at, record_id) > ($1, $2)
  AND ($4::text IS NULL OR record_kind = $4)
ORDER BY ingested_at, record_id
LIMIT $3
