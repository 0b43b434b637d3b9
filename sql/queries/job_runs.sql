-- name: job_run_start
-- A new run; with a command id, only the first delivery of that command gets a row.
INSERT INTO job_runs (job_run_id, job_name, status, params, progress, command_id)
VALUES ($1, $2, 'running', $3, '{}'::jsonb, $4)
ON CONFLICT (command_id) DO NOTHING
RETURNING job_run_id

-- name: job_run_by_command
SELECT job_run_id, job_name, status, params, progress, result, error, heartbeat_at, executions
FROM job_runs WHERE command_id = $1

-- name: job_run_take_over
-- A command seen before whose run stopped heartbeating (its worker died): run it again.
UPDATE job_runs
SET heartbeat_at = now(), executions = executions + 1, status = 'running', ended_at = NULL,
    error = NULL
WHERE command_id = $1 AND status = 'running' AND heartbeat_at < now() - make_interval(secs => $2)
RETURNING job_run_id

-- name: job_run_progress
UPDATE job_runs SET progress = $2, heartbeat_at = now() WHERE job_run_id = $1

-- name: job_run_finish
UPDATE job_runs
SET status = $2, progress = $3, result = $4, error = $5, ended_at = now(), heartbeat_at = now()
WHERE job_run_id = $1

-- name: job_run_get
SELECT job_run_id, job_name, status, params, progress, result, error, started_at, ended_at,
       command_id, executions
FROM job_runs WHERE job_run_id = $1

-- name: job_run_heartbeat
UPDATE job_runs SET heartbeat_at = now() WHERE job_run_id = $1 AND status = 'running'
