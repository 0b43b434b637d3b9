-- name: job_run_start
-- A new run; with a command id, only the first delivery of that command gets a row.
-- $1 job_run_id, $2 job_name, $3 params, $4 command_id, $5 runner
INSERT INTO job_runs (job_run_id, job_name, status, params, progress, command_id, runner)
VALUES ($1, $2, 'running', $3, '{}'::jsonb, $4, $5)
ON CONFLICT (command_id) DO NOTHING
RETURNING job_run_id, executions

-- name: job_run_by_command
SELECT job_run_id, job_name, status, params, progress, result, error, heartbeat_at, executions,
       runner, now() - heartbeat_at AS silent_for
FROM job_runs WHERE command_id = $1

-- name: job_run_take_over
-- A command seen before whose run stopped heartbeating (its worker died or hangs): run it again
-- under the next execution number, which fences the old runner's writes.
-- $1 command_id, $2 seconds without a heartbeat, $3 runner
UPDATE job_runs
SET heartbeat_at = now(), executions = executions + 1, status = 'running', ended_at = NULL,
    error = NULL, runner = $3
WHERE command_id = $1 AND status = 'running' AND heartbeat_at < now() - make_interval(secs => $2)
RETURNING job_run_id, executions

-- name: job_run_progress
-- Every write of a runner names its execution number: none is applied once the run was taken
-- over, and the missing RETURNING row tells the runner so.
UPDATE job_runs SET progress = $3, heartbeat_at = now()
WHERE job_run_id = $1 AND executions = $2 AND status = 'running'
RETURNING job_run_id

-- name: job_run_finish
UPDATE job_runs
SET status = $3, progress = $4, result = $5, error = $6, ended_at = now(), heartbeat_at = now()
WHERE job_run_id = $1 AND executions = $2 AND status = 'running'
RETURNING job_run_id

-- name: job_run_heartbeat
UPDATE job_runs SET heartbeat_at = now()
WHERE job_run_id = $1 AND executions = $2 AND status = 'running'
RETURNING job_run_id

-- name: job_run_reject
-- A command that failed validation, recorded once per command id.
-- $1 job_run_id, $2 job_name, $3 command_id, $4 error, $5 runner
INSERT INTO job_runs
    (job_run_id, job_name, status, params, progress, command_id, runner, error, ended_at)
VALUES ($1, $2, 'failed', '{}'::jsonb, '{}'::jsonb, $3, $5, $4, now())
ON CONFLICT (command_id) DO NOTHING
RETURNING job_run_id
