-- Operations: a run's liveness, so a command whose worker died mid-run can be taken over
-- (re-executed) instead of being acknowledged forever as "already seen".
ALTER TABLE job_runs ADD COLUMN heartbeat_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE job_runs ADD COLUMN result jsonb;
ALTER TABLE job_runs ADD COLUMN executions integer NOT NULL DEFAULT 1;
CREATE INDEX job_runs_status_idx ON job_runs (status);
