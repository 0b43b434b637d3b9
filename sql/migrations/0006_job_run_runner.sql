-- Which worker runs a command: a takeover names the new runner, and every write of a runner is
-- fenced by the run's execution number (job_runs.executions), so the old runner, if it is still
-- alive, changes nothing more once the run is taken over.
ALTER TABLE job_runs ADD COLUMN runner text;
