-- The change sequence: every job write takes the next value of a counter
-- kept in the database, in the same transaction as the write. SQLite has one
-- writer at a time, so the order of seq is the order of commits; the change
-- feed and the monitor's compare-and-set read seq, never a clock.

CREATE TABLE change_seq (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);

ALTER TABLE jobs ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;

-- Jobs written before: numbered in the order of their last write.
UPDATE jobs SET seq = ranked.n
FROM (SELECT id, row_number() OVER (ORDER BY updated_at, id) AS n FROM jobs) AS ranked
WHERE jobs.id = ranked.id;

INSERT INTO change_seq (id, value) VALUES (1, (SELECT coalesce(max(seq), 0) FROM jobs));

CREATE INDEX idx_jobs_seq ON jobs (seq);
DROP INDEX idx_jobs_updated;

CREATE TRIGGER jobs_seq_insert AFTER INSERT ON jobs
BEGIN
    UPDATE change_seq SET value = value + 1 WHERE id = 1;
    UPDATE jobs SET seq = (SELECT value FROM change_seq WHERE id = 1) WHERE id = NEW.id;
END;

-- Any write of a job but this trigger's own (which changes seq alone).
CREATE TRIGGER jobs_seq_update AFTER UPDATE ON jobs
WHEN NEW.seq = OLD.seq
BEGIN
    UPDATE change_seq SET value = value + 1 WHERE id = 1;
    UPDATE jobs SET seq = (SELECT value FROM change_seq WHERE id = 1) WHERE id = NEW.id;
END;

-- The stage triggers touch the job and take its seq in one row write (the
-- per-item increment's path): jobs_seq_update then sees seq moved, and
-- leaves it.
DROP TRIGGER stages_touch_job;
CREATE TRIGGER stages_touch_job AFTER UPDATE ON stages
WHEN NEW.status = OLD.status
BEGIN
    UPDATE change_seq SET value = value + 1 WHERE id = 1;
    UPDATE jobs SET updated_at = NEW.updated_at,
        seq = (SELECT value FROM change_seq WHERE id = 1)
    WHERE id = NEW.job_id;
END;

DROP TRIGGER stages_settle_job;
CREATE TRIGGER stages_settle_job AFTER UPDATE ON stages
WHEN NEW.status <> OLD.status
BEGIN
    UPDATE change_seq SET value = value + 1 WHERE id = 1;
    UPDATE jobs SET
        updated_at = NEW.updated_at,
        seq = (SELECT value FROM change_seq WHERE id = 1),
        status = CASE
            WHEN status IN ('completed', 'failed', 'cancelled') THEN status
            WHEN NOT EXISTS (SELECT 1 FROM stages s
                             WHERE s.job_id = NEW.job_id AND s.status <> 'completed')
                THEN 'completed'
            WHEN NOT EXISTS (SELECT 1 FROM stages s
                             WHERE s.job_id = NEW.job_id AND s.status NOT IN ('completed', 'failed'))
                THEN 'failed'
            WHEN status = 'pending' AND NOT EXISTS (SELECT 1 FROM stages s
                             WHERE s.job_id = NEW.job_id AND s.status <> 'pending')
                THEN 'pending'
            ELSE 'in_progress'
        END
    WHERE id = NEW.job_id;
END;
