-- name: replay_manifest_created
SELECT record_id, created_at FROM raw_object_manifest WHERE record_id = ANY($1::uuid[])

-- name: replay_canonical_present
SELECT record_id FROM canonical_records WHERE record_id = ANY($1::uuid[])
