-- migrate: no transaction
-- The read feed (docs/API.md, GraphQL `records`): pages in commit order, (insert_xid,
-- record_id) of migration 0004, read only below the oldest running transaction. One index per
-- filter a recipient can give, so that a rare kind or a small source reads only its own rows
-- (an equality on the leading column, then the feed order); updatedSince finds where its first
-- page starts through (normalized_at, insert_xid). The receipt-order indexes of 0009 now serve
-- only the `records` of workers from before this migration; they stay so that such workers still
-- read fast during a rolling upgrade (measured without them: records(first: 500) of 4306c4f went
-- from 0.5 s to 6 s), and a later migration drops them once none runs.
--
-- Built CONCURRENTLY, so a deployed table keeps taking inserts while each index is built (a
-- plain CREATE INDEX holds a SHARE lock on canonical_records for the whole build: the normalizer
-- would wait, and time out on a large table). CONCURRENTLY cannot run inside a transaction, so
-- the first line of this file asks infra/migrate.py to run its statements one by one outside
-- one, and to record the migration after the last. A build that failed halfway leaves an
-- INVALID index: each CREATE is preceded by a DROP of the same name, so running the migration
-- again (the migration is recorded only once every statement succeeded) rebuilds it cleanly.
DROP INDEX CONCURRENTLY IF EXISTS canonical_records_kind_feed_idx;
CREATE INDEX CONCURRENTLY canonical_records_kind_feed_idx
    ON canonical_records (record_kind, insert_xid, record_id);
DROP INDEX CONCURRENTLY IF EXISTS canonical_records_source_feed_idx;
CREATE INDEX CONCURRENTLY canonical_records_source_feed_idx
    ON canonical_records (source, insert_xid, record_id);
DROP INDEX CONCURRENTLY IF EXISTS canonical_records_source_kind_feed_idx;
CREATE INDEX CONCURRENTLY canonical_records_source_kind_feed_idx
    ON canonical_records (source, record_kind, insert_xid, record_id);
DROP INDEX CONCURRENTLY IF EXISTS canonical_records_normalized_at_idx;
CREATE INDEX CONCURRENTLY canonical_records_normalized_at_idx
    ON canonical_records (normalized_at, insert_xid);
