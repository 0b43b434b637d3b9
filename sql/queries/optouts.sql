-- Opt-outs (migration 0016; ops/optouts.py). An identity arrives tokenized: its master token and
-- its match tokens of the linking rules; nothing else of it is ever written.

-- name: opt_out_add
-- Record one opt-out and exclude its person (opt_out_add, migration 0016), with its audit row.
-- $1 master token, $2 rules, $3 tokens, $4 actor, $5 correlation id. Returns the opt-out id.
WITH added AS (
    SELECT opt_out_add($1, $2::text[], $3::bytea[], $4) AS opt_out_id
), audit AS (
    INSERT INTO audit_log (correlation_id, actor, action, entity_type, entity_id, status, details)
    SELECT $5, $4, 'opt_outs.add', 'opt_out', opt_out_id::text, 'done', '{}'::jsonb FROM added
)
SELECT opt_out_id FROM added

-- name: opt_out_lock
-- The linking lock (migration 0015), taken before removals: no record is linked, and no opt-out
-- applied, between a removal and its commit.
SELECT pg_advisory_xact_lock(1297369931, 0)

-- name: opt_out_remove
-- Remove the opt-out of one master token (its tokens, persons and records go with it), with its
-- audit row; after opt_out_lock, in the same transaction. $1 master token, $2 actor,
-- $3 correlation id. Returns the removed opt-out's id, or nothing when there was none.
WITH removed AS (
    DELETE FROM opt_outs WHERE patient_token = $1
    RETURNING opt_out_id
), audit AS (
    INSERT INTO audit_log (correlation_id, actor, action, entity_type, entity_id, status, details)
    SELECT $3, $2, 'opt_outs.remove', 'opt_out', opt_out_id::text, 'done', '{}'::jsonb
    FROM removed
)
SELECT opt_out_id FROM removed

-- name: opt_out_count
-- How many opt-outs are in force (the CLI's summary; never which).
SELECT count(*) FROM opt_outs
