-- The change feed (the HTTP API's live stream): jobs in the order they were
-- last written. On an expression, not on updated_at itself: an index on
-- (updated_at, id) serves the stuck-job query's ORDER BY too, and the planner
-- then prefers walking it (through every ended job) to the seed's index.
CREATE INDEX idx_jobs_changed ON jobs ((updated_at AT TIME ZONE 'UTC'), id);
