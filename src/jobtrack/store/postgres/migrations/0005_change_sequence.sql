-- The change sequence: every job write takes the next value of jobs_seq,
-- and records its transaction's id, in the same statement as the write
-- (the jobs_seq trigger). nextval's order is not the order of commits: a
-- transaction that took 10 may commit after one that took 11. So the change
-- feed's cursor is (seq, the snapshot of the read): a read returns the
-- jobs past the seq or last written by a transaction that snapshot did not
-- see, and its own snapshot (queries.sql, list_changed). The xid is taken
-- before the seq: a transaction whose xid is not yet assigned at a read
-- takes a seq past every one that read can see.

CREATE SEQUENCE jobs_seq AS bigint;

ALTER TABLE jobs ADD COLUMN seq bigint, ADD COLUMN xid xid8;

-- Jobs written before: numbered in the order of their last write.
UPDATE jobs SET seq = ranked.n, xid = pg_current_xact_id()
FROM (SELECT id, row_number() OVER (ORDER BY updated_at, id) AS n FROM jobs) AS ranked
WHERE jobs.id = ranked.id;

SELECT setval('jobs_seq', coalesce((SELECT max(seq) FROM jobs), 0) + 1, false);

ALTER TABLE jobs ALTER COLUMN seq SET NOT NULL, ALTER COLUMN xid SET NOT NULL;

CREATE INDEX idx_jobs_seq ON jobs (seq);
CREATE INDEX idx_jobs_xid ON jobs (xid);
DROP INDEX idx_jobs_changed;

CREATE FUNCTION jobtrack_job_seq() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- In this order: pg_current_xact_id() assigns the xid if the
    -- transaction had none, before the seq is taken.
    NEW.xid := pg_current_xact_id();
    NEW.seq := nextval('jobs_seq');
    RETURN NEW;
END $$;

CREATE TRIGGER jobs_seq BEFORE INSERT OR UPDATE ON jobs
FOR EACH ROW EXECUTE FUNCTION jobtrack_job_seq();
