-- The HTTP side of bulk exports (web/fhir.py): kick-off, status, cancel and downloads. Every
-- statement names the recipient, so that an export is seen only by the one who started it. An
-- export is gone (404) once cancelled, or once its expiry has passed (a DELETE sets it to now),
-- or, when it completed, once its files are deleted; the export run's statements are in
-- export_job.sql.

-- name: export_lock_recipient
-- A kick-off's first statement: the recipient's row, locked until the kick-off commits, so that
-- two kick-offs of one recipient count its live exports one after the other. $1 recipient
SELECT status FROM recipients WHERE recipient_id = $1 FOR UPDATE

-- name: export_create
-- A new export, unless the recipient already has $6 live ones (accepted or running). Run after
-- export_lock_recipient, in its transaction: this statement's snapshot sees every kick-off that
-- committed before the lock was granted. The horizon is this snapshot's xmin (migration 0016):
-- every canonical row below it is committed, and no row committed later is below it.
-- Nothing when over the limit. $1 recipient, $2 export id, $3 the kick-off URL, $4 params,
-- $5 informational OperationOutcomes, $6 the most live exports a recipient may have
INSERT INTO exports (export_id, recipient_id, status, request_url, params, transaction_time,
                     horizon, errors)
SELECT $2::uuid, $1::text, 'accepted', $3::text, $4::jsonb, now(),
       pg_snapshot_xmin(pg_current_snapshot()), $5::jsonb
WHERE (SELECT count(*) FROM exports
       WHERE recipient_id = $1::text AND status IN ('accepted', 'running')) < $6::int
RETURNING transaction_time

-- name: export_status
-- What the status URL answers: the export, whether it is gone, and its run's progress.
-- $1 export id, $2 recipient
SELECT e.status, e.request_url, e.transaction_time, e.output, e.errors, e.expires_at,
       e.status = 'cancelled' OR e.expires_at <= now()
           OR (e.status = 'completed' AND e.files_deleted_at IS NOT NULL) AS gone,
       j.progress
FROM exports e
LEFT JOIN job_runs j ON j.job_run_id = e.job_run_id
WHERE e.export_id = $1 AND e.recipient_id = $2

-- name: export_cancel
-- DELETE of the status URL: a live export is cancelled (its run sees it and stops), and every
-- export's files expire now (the sweeper deletes them). Nothing when the export is unknown,
-- another recipient's, or gone already. $1 export id, $2 recipient
UPDATE exports
SET status = CASE WHEN status IN ('accepted', 'running') THEN 'cancelled' ELSE status END,
    expires_at = now()
WHERE export_id = $1 AND recipient_id = $2 AND status <> 'cancelled'
  AND (expires_at IS NULL OR expires_at > now())
  AND NOT (status = 'completed' AND files_deleted_at IS NOT NULL)
RETURNING export_id

-- name: export_file
-- One file of a completed export that is not gone: its manifest entry ({type, key, count,
-- bytes}), NULL past the last index. $1 export id, $2 recipient, $3 index
SELECT e.output -> $3::int AS file
FROM exports e
WHERE e.export_id = $1 AND e.recipient_id = $2 AND e.status = 'completed'
  AND e.files_deleted_at IS NULL AND (e.expires_at IS NULL OR e.expires_at > now())

-- name: export_errors
-- The informational OperationOutcomes of a completed export that is not gone.
-- $1 export id, $2 recipient
SELECT e.errors
FROM exports e
WHERE e.export_id = $1 AND e.recipient_id = $2 AND e.status = 'completed'
  AND e.files_deleted_at IS NULL AND (e.expires_at IS NULL OR e.expires_at > now())
