-- An item's outcome as the worker recorded it in the ledger ('done' or
-- 'failed', with when), whatever the progress setting: with the consumers'
-- progress off (the rollback switch), no key is counted, and the monitor
-- brings a job to its counts from these alone.
ALTER TABLE job_items ADD COLUMN outcome TEXT CHECK (outcome IN ('done', 'failed'));
ALTER TABLE job_items ADD COLUMN outcome_at INTEGER;
