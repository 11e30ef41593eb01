-- The item ledger: every item added to a job's stage, with its JSON payload,
-- so the items not yet counted (in item_keys) can be told and published
-- again; and why items failed. Both are kept after the job ends (item_keys
-- are not) until the ledger is purged.
--
-- Stage names and keys are in the "C" collation: the primary key's order is
-- code point order, as Python sorts, so a page of missing items is a range
-- of the index. A join with item_keys (the database's default collation)
-- compares under "default", which for equality is the same.

-- job_items has no foreign key: its check, a lookup of the job per row,
-- cost a third of a batch's insert, and add_items holds the job's row lock
-- when it inserts (the job exists). The jobs_forget_ledger trigger deletes
-- a deleted job's items instead, as ON DELETE CASCADE would.
CREATE TABLE job_items (
    job_id   text NOT NULL,
    stage    text COLLATE "C" NOT NULL,
    item_key text COLLATE "C" NOT NULL,
    payload  jsonb NOT NULL DEFAULT 'null',
    added_at timestamptz NOT NULL,
    PRIMARY KEY (job_id, stage, item_key)
);

CREATE TABLE item_failures (
    job_id    text NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    stage     text COLLATE "C" NOT NULL,
    item_key  text COLLATE "C" NOT NULL,
    error     text NOT NULL,
    attempts  integer NOT NULL,
    failed_at timestamptz NOT NULL,
    PRIMARY KEY (job_id, stage, item_key)
);

CREATE FUNCTION jobtrack_forget_ledger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM job_items WHERE job_id = OLD.id;
    RETURN OLD;
END $$;

CREATE TRIGGER jobs_forget_ledger AFTER DELETE ON jobs
FOR EACH ROW EXECUTE FUNCTION jobtrack_forget_ledger();

-- The purge walks ended jobs by when they ended.
CREATE INDEX idx_jobs_ended ON jobs (completed_at) WHERE completed_at IS NOT NULL;
