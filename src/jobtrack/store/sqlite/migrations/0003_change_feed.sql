-- The change feed (the HTTP API's live stream): jobs in the order they were
-- last written.
CREATE INDEX idx_jobs_updated ON jobs (updated_at, id);
