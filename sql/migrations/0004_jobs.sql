-- Jobs: a gap-free keyset for jobs that read canonical rows in batches.
--
-- insert_xid is the id of the transaction that inserted the row. Every row whose insert_xid is
-- below the oldest transaction still running (pg_snapshot_xmin of a snapshot) is already
-- committed and visible, and no row with a smaller insert_xid can ever appear later, so a cursor
-- over (insert_xid, record_id) that stops at that horizon never skips a row, even while the
-- normalizer keeps inserting. record_id or normalized_at cannot promise that: a transaction
-- that started earlier can commit a smaller key after the cursor has passed it.
--
-- Rows that exist before this migration read as xid 0 (a constant default: no table rewrite);
-- rows inserted afterwards get their transaction's id.
ALTER TABLE canonical_records ADD COLUMN insert_xid xid8 NOT NULL DEFAULT '0';
ALTER TABLE canonical_records ALTER COLUMN insert_xid SET DEFAULT pg_current_xact_id();
CREATE INDEX canonical_records_insert_xid_idx ON canonical_records (insert_xid, record_id);
