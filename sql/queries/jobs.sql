-- Jobs (exchange_stream/jobs): checkpoints, the patient index, data-quality checks.

-- name: jobs_checkpoint_get
SELECT checkpoint, updated_at FROM job_checkpoints WHERE job_name = $1

-- name: jobs_checkpoint_init
-- The job's first run creates its row; an existing position is kept.
INSERT INTO job_checkpoints (job_name, checkpoint) VALUES ($1, $2)
ON CONFLICT (job_name) DO NOTHING

-- name: jobs_checkpoint_lock
-- Start of a batch: the row stays locked until the batch commits, so two runs of one job take
-- turns batch by batch, each continuing from the position the other committed.
SELECT checkpoint FROM job_checkpoints WHERE job_name = $1 FOR UPDATE

-- name: jobs_checkpoint_save
UPDATE job_checkpoints SET checkpoint = $2, updated_at = now() WHERE job_name = $1

-- name: jobs_xid_next
-- The first transaction id not yet assigned: every row committed before now has a smaller one.
SELECT pg_snapshot_xmax(pg_current_snapshot())::text

-- name: patient_index_batch
-- One page of canonical rows after the cursor, in (insert_xid, record_id) order, up to the
-- horizon: below the oldest running transaction every row is committed and visible, and no
-- smaller insert_xid can appear later (migration 0004). Rows new to the index or different
-- from it are upserted unless $4 (dry run); unchanged rows are not rewritten. Rows without a
-- token cannot be indexed and are counted. The caller saves the returned cursor in the same
-- transaction.
-- $1 cursor insert_xid (text), $2 cursor record_id, $3 page size, $4 dry run
WITH horizon AS (
    SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin
), page AS (
    SELECT c.record_id, c.insert_xid, nullif(c.normalized->>'patient_token', '') AS patient_token,
           c.source, c.event_version, c.record_kind, c.schema_hint, c.ingested_at,
           c.normalized_at
    FROM canonical_records c
    WHERE (c.insert_xid, c.record_id) > ($1::text::xid8, $2::uuid)
      AND c.insert_xid < (SELECT xmin FROM horizon)
    ORDER BY c.insert_xid, c.record_id
    LIMIT $3
), changed AS (
    SELECT p.*, d.record_id IS NOT NULL AS indexed
    FROM page p LEFT JOIN derived_patient_record_index d USING (record_id)
    WHERE p.patient_token IS NOT NULL
      AND (d.record_id IS NULL
           OR (d.patient_token, d.source, d.event_version, d.record_kind, d.schema_hint,
               d.ingested_at, d.normalized_at)
              IS DISTINCT FROM
              (p.patient_token, p.source, p.event_version, p.record_kind, p.schema_hint,
               p.ingested_at, p.normalized_at))
), written AS (
    INSERT INTO derived_patient_record_index
        (patient_token, record_id, source, event_version, record_kind, schema_hint, ingested_at,
         normalized_at)
    SELECT patient_token, record_id, source, event_version, record_kind, schema_hint,
           ingested_at, normalized_at
    FROM changed
    WHERE NOT $4::bool
    ON CONFLICT (record_id) DO UPDATE SET
        patient_token = EXCLUDED.patient_token,
        source = EXCLUDED.source,
        event_version = EXCLUDED.event_version,
        record_kind = EXCLUDED.record_kind,
        schema_hint = EXCLUDED.schema_hint,
        ingested_at = EXCLUDED.ingested_at,
        normalized_at = EXCLUDED.normalized_at
    RETURNING record_id
), last AS (
    SELECT insert_xid, record_id FROM page ORDER BY insert_xid DESC, record_id DESC LIMIT 1
)
SELECT (SELECT count(*) FROM page) AS scanned,
       (SELECT count(*) FROM page WHERE patient_token IS NULL) AS skipped_no_token,
       (SELECT count(*) FROM changed WHERE NOT indexed) AS new_rows,
       (SELECT count(*) FROM changed WHERE indexed) AS changed_rows,
       (SELECT count(*) FROM written) AS written,
       (SELECT array_agg(record_id ORDER BY insert_xid, record_id) FROM changed) AS record_ids,
       (SELECT insert_xid::text FROM last) AS last_insert_xid,
       (SELECT record_id FROM last) AS last_record_id,
       (SELECT xmin::text FROM horizon) AS horizon

-- name: patient_index_remaining
-- Canonical rows after the cursor: the work left (or, after a run, what arrived meanwhile).
SELECT count(*) FROM canonical_records
WHERE (insert_xid, record_id) > ($1::text::xid8, $2::uuid)

-- name: patient_index_verify
-- Index against canonical rows, optionally for one source. A canonical row absent from the index
-- is 'missing' when the checkpoint has passed it (a gap) and 'pending' when the next run will
-- reach it; 'orphaned' index rows have no canonical row; 'mismatched' ones differ from it.
-- At most $4 record ids per finding.
-- $1 cursor insert_xid (text), $2 cursor record_id, $3 source or NULL, $4 list limit
WITH canon AS (
    SELECT c.record_id, nullif(c.normalized->>'patient_token', '') AS patient_token, c.source,
           c.event_version, c.record_kind, c.schema_hint, c.ingested_at, c.normalized_at,
           (c.insert_xid, c.record_id) <= ($1::text::xid8, $2::uuid) AS passed
    FROM canonical_records c
    WHERE $3::text IS NULL OR c.source = $3
), idx AS (
    SELECT * FROM derived_patient_record_index d WHERE $3::text IS NULL OR d.source = $3
), findings AS (
    SELECT coalesce(c.record_id, d.record_id) AS record_id,
           CASE
               WHEN c.record_id IS NULL THEN 'orphaned'
               WHEN d.record_id IS NULL AND c.patient_token IS NULL THEN 'unindexable_no_token'
               WHEN d.record_id IS NULL AND c.passed THEN 'missing'
               WHEN d.record_id IS NULL THEN 'pending'
               WHEN (d.patient_token, d.source, d.event_version, d.record_kind, d.schema_hint,
                     d.ingested_at, d.normalized_at)
                    IS DISTINCT FROM
                    (c.patient_token, c.source, c.event_version, c.record_kind, c.schema_hint,
                     c.ingested_at, c.normalized_at) THEN 'mismatched'
           END AS finding
    FROM canon c FULL JOIN idx d USING (record_id)
), ranked AS (
    SELECT finding, record_id, count(*) OVER (PARTITION BY finding) AS n,
           row_number() OVER (PARTITION BY finding ORDER BY record_id) AS rn
    FROM findings
    WHERE finding IS NOT NULL
)
SELECT finding, n AS count, array_agg(record_id ORDER BY record_id) AS record_ids
FROM ranked WHERE rn <= $4
GROUP BY finding, n

-- name: patient_index_counts
-- $1 source or NULL
SELECT (SELECT count(*) FROM canonical_records WHERE $1::text IS NULL OR source = $1)
           AS canonical_rows,
       (SELECT count(*) FROM derived_patient_record_index WHERE $1::text IS NULL OR source = $1)
           AS index_rows

-- name: data_quality_canonical
-- Canonical rows an operator must look at, one scan: no usable token (absent or not 64 lower-case
-- hex characters), a kind outside the contract, or a normalized record_kind that disagrees with
-- the column. At most $2 record ids per check. (A character-class test, not '^[0-9a-f]{64}$':
-- Postgres' regex engine is far slower with a counted repetition.)
-- $1 source or NULL, $2 list limit
WITH checked AS (
    SELECT * FROM (
        SELECT c.record_id,
               NOT coalesce(length(c.normalized->>'patient_token') = 64
                            AND c.normalized->>'patient_token' !~ '[^0-9a-f]', false)
                   AS without_token,
               c.record_kind NOT IN ('encounter', 'claim', 'lab_result') AS unknown_kind,
               c.normalized->>'record_kind' IS DISTINCT FROM c.record_kind AS kind_mismatch
        FROM canonical_records c
        WHERE $1::text IS NULL OR c.source = $1
    ) AS all_rows
    WHERE without_token OR unknown_kind OR kind_mismatch
), flagged AS (
    SELECT 'canonical_without_token' AS name, record_id FROM checked WHERE without_token
    UNION ALL
    SELECT 'canonical_unknown_kind', record_id FROM checked WHERE unknown_kind
    UNION ALL
    SELECT 'canonical_kind_mismatch', record_id FROM checked WHERE kind_mismatch
), ranked AS (
    SELECT name, record_id, count(*) OVER (PARTITION BY name) AS n,
           row_number() OVER (PARTITION BY name ORDER BY record_id) AS rn
    FROM flagged
)
SELECT name, n AS count, array_agg(record_id ORDER BY record_id) AS record_ids
FROM ranked WHERE rn <= $2
GROUP BY name, n

-- name: data_quality_manifest_stuck
-- Manifest rows still 'written' or 'enqueued' $2 seconds after their last change, oldest first.
-- $1 source or NULL, $2 stuck after (s), $3 list limit
WITH stuck AS (
    SELECT m.state, m.record_id, count(*) OVER (PARTITION BY m.state) AS n,
           row_number() OVER (PARTITION BY m.state ORDER BY m.updated_at, m.record_id) AS rn
    FROM raw_object_manifest m
    WHERE m.state IN ('written', 'enqueued')
      AND m.updated_at < now() - make_interval(secs => $2)
      AND ($1::text IS NULL OR m.source = $1)
)
SELECT 'manifest_stuck_' || state AS name, n AS count,
       array_agg(record_id ORDER BY rn) AS record_ids
FROM stuck WHERE rn <= $3
GROUP BY state, n

-- name: data_quality_dlq_by_stage_type
-- Ledger attempts that ended in a DLQ publish within the last $2 seconds, by stage and type.
-- A record's source comes from its manifest or canonical row.
-- $1 source or NULL, $2 window (s)
SELECT coalesce(a.error_stage, '') AS stage, coalesce(a.error_type, '') AS type,
       count(*) AS count
FROM processing_attempts a
WHERE a.status = 'dlq_published'
  AND coalesce(a.ended_at, a.started_at) >= now() - make_interval(secs => $2)
  AND ($1::text IS NULL
       OR EXISTS (SELECT 1 FROM raw_object_manifest m
                  WHERE m.record_id = a.record_id AND m.source = $1)
       OR EXISTS (SELECT 1 FROM canonical_records c
                  WHERE c.record_id = a.record_id AND c.source = $1))
GROUP BY 1, 2
ORDER BY count DESC, stage, type

-- name: data_quality_dlq_records
-- The records behind data_quality_dlq_by_stage_type, most recent first.
-- $1 source or NULL, $2 window (s), $3 list limit
WITH dlq AS (
    SELECT a.record_id, max(coalesce(a.ended_at, a.started_at)) AS last_at
    FROM processing_attempts a
    WHERE a.status = 'dlq_published'
      AND coalesce(a.ended_at, a.started_at) >= now() - make_interval(secs => $2)
      AND ($1::text IS NULL
           OR EXISTS (SELECT 1 FROM raw_object_manifest m
                      WHERE m.record_id = a.record_id AND m.source = $1)
           OR EXISTS (SELECT 1 FROM canonical_records c
                      WHERE c.record_id = a.record_id AND c.source = $1))
    GROUP BY a.record_id
)
SELECT record_id, count(*) OVER () AS count
FROM dlq ORDER BY last_at DESC, record_id LIMIT $3

-- name: data_quality_transient_failures
-- Records with at least $3 transient failures (retried, or dead-lettered after the last retry)
-- among attempts started in the last $2 seconds, most failures first.
-- $1 source or NULL, $2 window (s), $3 minimum failures, $4 list limit
WITH failing AS (
    SELECT a.record_id, count(*) AS failures
    FROM processing_attempts a
    WHERE a.transient
      AND a.status IN ('failed', 'dlq_published')
      AND a.started_at >= now() - make_interval(secs => $2)
      AND ($1::text IS NULL
           OR EXISTS (SELECT 1 FROM raw_object_manifest m
                      WHERE m.record_id = a.record_id AND m.source = $1)
           OR EXISTS (SELECT 1 FROM canonical_records c
                      WHERE c.record_id = a.record_id AND c.source = $1))
    GROUP BY a.record_id
    HAVING count(*) >= $3
)
SELECT record_id, failures, count(*) OVER () AS count
FROM failing ORDER BY failures DESC, record_id LIMIT $4

-- name: patient_index_orphans_delete
-- A rebuild from the start also drops index rows whose canonical row is gone. An index row is
-- only ever written from a committed canonical row, so its absence is not a race.
DELETE FROM derived_patient_record_index d
WHERE NOT EXISTS (SELECT 1 FROM canonical_records c WHERE c.record_id = d.record_id)

-- name: patient_index_orphans_count
SELECT count(*) FROM derived_patient_record_index d
WHERE NOT EXISTS (SELECT 1 FROM canonical_records c WHERE c.record_id = d.record_id)
