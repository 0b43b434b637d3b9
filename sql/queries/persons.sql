-- name: link_records
-- Link a batch's new canonical records to persons (migration 0015's link_records: the decision
-- rule, the merges and the lock). $1 record ids, $2/$3/$4 their match tokens of the linking
-- rules as (owner, rule, token). Runs in the canonical rows' transaction.
SELECT link_records($1::uuid[], $2::uuid[], $3::text[], $4::bytea[])

-- name: link_backfill_page
-- The next canonical rows without a person, after the cursor, by record id. $1 cursor, $2 limit.
SELECT c.record_id, c.raw_object_key, c.event_version
FROM canonical_records c
WHERE c.record_id > $1
  AND NOT EXISTS (SELECT 1 FROM record_persons rp WHERE rp.record_id = c.record_id)
ORDER BY c.record_id
LIMIT $2

-- name: link_backfill_remaining
-- How many canonical rows after the cursor have no person ($1 cursor).
SELECT count(*)
FROM canonical_records c
WHERE c.record_id > $1
  AND NOT EXISTS (SELECT 1 FROM record_persons rp WHERE rp.record_id = c.record_id)
