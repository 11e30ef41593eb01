-- The item ledger: every item added to a job's stage, with its JSON payload,
-- so the items not yet counted (in item_keys) can be told and published
-- again; and why items failed. Both are kept after the job ends (item_keys
-- are not) until the ledger is purged.

-- A rowid table: rows are appended in the order they come, and the primary
-- key's index, which takes keys in any order, holds the keys alone, not the
-- payloads (inserting batches of keys in no order was about a quarter
-- faster than into a WITHOUT ROWID table).
CREATE TABLE job_items (
    job_id   TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    stage    TEXT NOT NULL,
    item_key TEXT NOT NULL,
    payload  TEXT NOT NULL DEFAULT 'null',
    added_at INTEGER NOT NULL,
    PRIMARY KEY (job_id, stage, item_key)
);

CREATE TABLE item_failures (
    job_id    TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    stage     TEXT NOT NULL,
    item_key  TEXT NOT NULL,
    error     TEXT NOT NULL,
    attempts  INTEGER NOT NULL,
    failed_at INTEGER NOT NULL,
    PRIMARY KEY (job_id, stage, item_key)
) WITHOUT ROWID;

-- The purge walks ended jobs by when they ended.
CREATE INDEX idx_jobs_ended ON jobs (completed_at) WHERE completed_at IS NOT NULL;
