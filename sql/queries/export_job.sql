-- The run of a bulk export (ops/export.py) and the sweeper of its files (ops/export_worker.py).
-- Every write to an export names its run: the job run ($run) and its execution number ($exec);
-- none is applied once another runner has taken the run over (job_runs.executions moved on) or
-- another run owns the export (exports.job_run_id), and the missing row tells the runner so.

-- name: export_job_claim
-- The run takes the export: an accepted one, or a running one whose run is this one (a takeover)
-- or has stopped (no heartbeat for $3 seconds, or ended). Nothing when the export has ended, is
-- cancelled, or another live run has it. $1 export id, $2 job run id, $3 seconds of silence
UPDATE exports e SET status = 'running', job_run_id = $2
WHERE e.export_id = $1
  AND (e.status = 'accepted'
       OR (e.status = 'running'
           AND (e.job_run_id IS NULL OR e.job_run_id = $2 OR NOT EXISTS (
                SELECT 1 FROM job_runs j
                WHERE j.job_run_id = e.job_run_id AND j.status = 'running'
                  AND j.heartbeat_at > now() - make_interval(secs => $3)))))
RETURNING e.recipient_id, e.params, e.horizon::text AS horizon, e.transaction_time

-- name: export_job_get
-- How an export stands (when the run could not claim it). $1 export id
SELECT status, job_run_id, output, error FROM exports WHERE export_id = $1

-- name: export_job_status
-- Checked before each page: a DELETE of the export (status cancelled) stops the run.
-- $1 export id
SELECT status, job_run_id FROM exports WHERE export_id = $1

-- name: export_job_owned
-- Inside each transaction that moves the export's checkpoint or ends it: the run still owns its
-- execution (locked until the commit, so a takeover waits for it). $1 job run id, $2 execution
SELECT 1 FROM job_runs
WHERE job_run_id = $1 AND executions = $2 AND status = 'running'
FOR UPDATE

-- name: export_job_estimate
-- The rows an export may read at most, per record kind (below its horizon, before grants and
-- opt-outs): the denominator of its progress. Index-only on canonical_records_kind_feed_idx.
-- $1 kinds, $2 horizon
SELECT k.kind, (SELECT count(*) FROM canonical_records c
                WHERE c.record_kind = k.kind AND c.insert_xid < $2::text::xid8) AS n
FROM unnest($1::text[]) AS k(kind)

-- name: export_job_estimate_persons
-- The persons an export may write at most (current ones).
SELECT count(*) FROM persons WHERE merged_into IS NULL

-- name: export_job_records
-- One page of an export's rows of one kind, in feed order after the cursor and below the
-- export's horizon (canonical_records_kind_feed_idx): every row below the horizon was committed
-- at the kick-off and none can appear later, so every execution of the run reads the same rows,
-- less those a grant no longer allows or an opt-out has excluded meanwhile (applied here, on
-- every page). Each row with its kind object as JSON text (decoded by the run a chunk at a
-- time, so a page in memory is a few thousand strings, not a million objects for the garbage
-- collector to walk), its normalized_at as RFC 3339 (the resource's
-- lastUpdated, formatted here: Postgres has a core of its own, the run's Python is the
-- bottleneck) and its person (current id; NULL when the record has none). _since and _until
-- bound normalized_at, both inclusive.
-- $1 kind, $2/$3 the cursor (insert_xid as text, record_id), $4 horizon (text), $5 since or
-- null, $6 until or null, $7 limit, $8-$12 grants
SELECT c.record_id, c.insert_xid::text AS xid, (c.normalized -> $1)::text AS object,
       to_char(c.normalized_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
           AS last_updated,
       (SELECT coalesce(p.merged_into, p.person_id)
        FROM record_persons rp JOIN persons p ON p.person_id = rp.person_id
        WHERE rp.record_id = c.record_id) AS person_id
FROM canonical_records c
WHERE c.record_kind = $1 AND (c.insert_xid, c.record_id) > ($2::text::xid8, $3::uuid)
  AND c.insert_xid < $4::text::xid8
  AND ($5::timestamptz IS NULL OR c.normalized_at >= $5)
  AND ($6::timestamptz IS NULL OR c.normalized_at <= $6)
  AND {granted $8}
  AND NOT EXISTS (SELECT 1 FROM opted_out_records o WHERE o.record_id = c.record_id)
ORDER BY c.insert_xid, c.record_id
LIMIT $7

-- name: export_job_persons
-- One page of an export's persons, by person id after the cursor: each current person with at
-- least one record the export may read (below the horizon, allowed by the grants, not opted
-- out: the conditions of export_job_records, any kind), with its creation time, the Patient's
-- lastUpdated (RFC 3339): the resource is the person's id only, which has not changed since.
-- _since and _until bound that time. Persons in primary-key order, each one's records through
-- record_persons_person_idx until the first that qualifies: a page costs about one record per
-- person, never a scan of the rest.
-- $1 the cursor (person id), $2 horizon (text), $3 since or null, $4 until or null, $5 limit,
-- $6-$10 grants
SELECT p.person_id,
       to_char(p.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS last_updated
FROM persons p
WHERE p.person_id > $1 AND p.merged_into IS NULL
  AND ($3::timestamptz IS NULL OR p.created_at >= $3)
  AND ($4::timestamptz IS NULL OR p.created_at <= $4)
  AND EXISTS (
    SELECT 1
    FROM record_persons rp
    JOIN canonical_records c ON c.record_id = rp.record_id
    WHERE rp.person_id = p.person_id
      AND c.insert_xid < $2::text::xid8
  AND {granted $6}
  AND NOT EXISTS (SELECT 1 FROM opted_out_records o WHERE o.record_id = c.record_id))
ORDER BY p.person_id
LIMIT $5

-- name: export_job_snapshot
-- The run's first snapshot (ops/export.py): every opt-out it sees, every page of the run sees.
SELECT pg_current_snapshot()::text

-- name: export_job_late_opt_outs
-- Records below the export's horizon opted out by a transaction the run's first snapshot did not
-- see (committed since, or still in progress then): the pages read before that commit may have
-- written them. Each with its kind, feed position and current person. $1 the run's first
-- snapshot (text), $2 horizon (text)
SELECT DISTINCT c.record_id, c.record_kind AS kind, c.insert_xid::text AS xid,
       (SELECT coalesce(p.merged_into, p.person_id)
        FROM record_persons rp JOIN persons p ON p.person_id = rp.person_id
        WHERE rp.record_id = c.record_id) AS person_id
FROM opted_out_records o
JOIN canonical_records c ON c.record_id = o.record_id
WHERE NOT pg_visible_in_snapshot(o.marked_xid, $1::text::pg_snapshot)
  AND c.insert_xid < $2::text::xid8

-- name: export_job_hold_opt_outs
-- In the transaction that completes an export: no opt-out commits between the run's last look
-- at them and the completion (share mode: reads go on; opt-outs and linking wait until then).
LOCK TABLE opted_out_records IN SHARE MODE

-- name: export_job_persons_readable
-- Of the persons $1, those with a record the export may still read (the conditions of
-- export_job_persons). $2 horizon (text), $3-$7 grants
SELECT p.person_id
FROM persons p
WHERE p.person_id = ANY($1::bigint[])
  AND EXISTS (
    SELECT 1
    FROM record_persons rp
    JOIN canonical_records c ON c.record_id = rp.record_id
    WHERE rp.person_id = p.person_id
      AND c.insert_xid < $2::text::xid8
      AND {granted $3}
      AND NOT EXISTS (SELECT 1 FROM opted_out_records o WHERE o.record_id = c.record_id))

-- name: export_job_complete
-- The export's end, with its files, and its read_audit row, in one statement (run inside the
-- transaction of export_job_owned). Nothing when another run owns the export or it was
-- cancelled meanwhile. $1 export id, $2 job run id, $3 files [{type, key, count, bytes}],
-- $4 retention hours, $5 kinds, $6 resources, $7 correlation id
WITH done AS (
    UPDATE exports SET status = 'completed', output = $3, completed_at = now(),
                       expires_at = now() + make_interval(secs => $4::float8 * 3600)
    WHERE export_id = $1 AND job_run_id = $2 AND status = 'running'
    RETURNING recipient_id, transaction_time, expires_at
), audit AS (
    INSERT INTO read_audit (occurred_at, recipient_id, operation, kinds, rows, duration_ms, status,
                            correlation_id)
    SELECT now(), recipient_id, 'export', $5, $6,
           extract(epoch FROM now() - transaction_time) * 1000, 'completed', $7
    FROM done
)
SELECT expires_at FROM done

-- name: export_job_end
-- An export that stopped without completing: failed ($3, with the short error $4), or seen
-- cancelled (the status stays). Its read_audit row says how it ended and what was written up to
-- then. Nothing when another run owns the export. $1 export id, $2 job run id, $3 status,
-- $4 error or null, $5 kinds, $6 resources, $7 correlation id
WITH ended AS (
    UPDATE exports SET status = CASE WHEN status = 'cancelled' THEN status ELSE $3 END,
                       error = CASE WHEN status = 'cancelled' THEN error ELSE $4 END,
                       completed_at = coalesce(completed_at, now())
    WHERE export_id = $1 AND job_run_id = $2 AND status IN ('accepted', 'running', 'cancelled')
    RETURNING recipient_id, transaction_time, status
), audit AS (
    INSERT INTO read_audit (occurred_at, recipient_id, operation, kinds, rows, duration_ms, status,
                            correlation_id)
    SELECT now(), recipient_id, 'export', $5, $6,
           extract(epoch FROM now() - transaction_time) * 1000, status, $7
    FROM ended
)
SELECT status FROM ended

-- name: export_job_files_deleted
-- The run deleted its own files (it saw the export cancelled). $1 export id
UPDATE exports SET files_deleted_at = now() WHERE export_id = $1 AND files_deleted_at IS NULL

-- name: export_sweep_claim
-- Exports whose files are to go: expired, or cancelled or failed once no live run writes them
-- any more (no run, its run ended, or silent for $2 seconds). Locked until this sweeper's
-- transaction ends, skipping those another worker's sweeper holds. $1 limit, $2 seconds
SELECT e.export_id
FROM exports e
WHERE e.files_deleted_at IS NULL
  AND ((e.status = 'completed' AND e.expires_at < now())
       OR (e.status IN ('cancelled', 'failed') AND NOT EXISTS (
            SELECT 1 FROM job_runs j
            WHERE j.job_run_id = e.job_run_id AND j.status = 'running'
              AND j.heartbeat_at > now() - make_interval(secs => $2))))
ORDER BY e.expires_at NULLS FIRST
LIMIT $1
FOR UPDATE OF e SKIP LOCKED

-- name: export_sweep_done
-- $1 export ids whose files are deleted
UPDATE exports SET files_deleted_at = now() WHERE export_id = ANY($1::uuid[])
