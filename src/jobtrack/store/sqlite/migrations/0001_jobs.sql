-- Jobs, their stages, and the item keys that make an increment count once.
-- Times are integer microseconds since the Unix epoch, UTC.

CREATE TABLE jobs (
    id           TEXT PRIMARY KEY,
    job_type     TEXT NOT NULL,
    status       TEXT NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'in_progress', 'completed', 'failed', 'cancelled')),
    attributes   TEXT NOT NULL DEFAULT '{}',
    message      TEXT NOT NULL DEFAULT '',
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    completed_at INTEGER
);

-- The seed's index, serving the stuck-job query.
CREATE INDEX idx_stuck_jobs ON jobs (job_type, status, updated_at);
CREATE INDEX idx_jobs_created ON jobs (created_at DESC, id DESC);

CREATE TABLE stages (
    job_id          TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    position        INTEGER NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'in_progress', 'completed', 'failed')),
    total_items     INTEGER NOT NULL DEFAULT 0 CHECK (total_items >= 0),
    completed_items INTEGER NOT NULL DEFAULT 0 CHECK (completed_items >= 0),
    failed_items    INTEGER NOT NULL DEFAULT 0 CHECK (failed_items >= 0),
    total_final     INTEGER NOT NULL DEFAULT 0,
    message         TEXT NOT NULL DEFAULT '',
    started_at      INTEGER,
    completed_at    INTEGER,
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (job_id, name)
) WITHOUT ROWID;

-- One row per counted (job, stage, item); removed when the job ends, so the
-- table holds the keys of active jobs only.
CREATE TABLE item_keys (
    job_id   TEXT NOT NULL,
    stage    TEXT NOT NULL,
    item_key TEXT NOT NULL,
    PRIMARY KEY (job_id, stage, item_key)
) WITHOUT ROWID;

-- Every stage write touches its job, so the stuck-job query sees activity.
CREATE TRIGGER stages_touch_job AFTER UPDATE ON stages
WHEN NEW.status = OLD.status
BEGIN
    UPDATE jobs SET updated_at = NEW.updated_at WHERE id = NEW.job_id;
END;

-- A stage that changes status re-derives its job's status, in the same
-- statement as the stage write (rule 5 of the design).
CREATE TRIGGER stages_settle_job AFTER UPDATE ON stages
WHEN NEW.status <> OLD.status
BEGIN
    UPDATE jobs SET
        updated_at = NEW.updated_at,
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

-- A job that ends records when, and forgets its item keys.
CREATE TRIGGER jobs_ended AFTER UPDATE OF status ON jobs
WHEN NEW.status IN ('completed', 'failed', 'cancelled')
 AND OLD.status NOT IN ('completed', 'failed', 'cancelled')
BEGIN
    UPDATE jobs SET completed_at = COALESCE(completed_at, NEW.updated_at) WHERE id = NEW.id;
    DELETE FROM item_keys WHERE job_id = NEW.id;
END;
