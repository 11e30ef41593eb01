-- The watch list (store.overview): the active jobs, newest first, without a
-- scan of the ended ones; the monitor's events of each found on idx_job_events.
CREATE INDEX idx_jobs_active ON jobs (created_at DESC, id DESC)
    WHERE status IN ('pending', 'in_progress');
