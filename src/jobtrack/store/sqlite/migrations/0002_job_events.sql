-- Each job's history: started, reconciled, re-driven, failed, cancelled.
CREATE TABLE job_events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id  TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    at      INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    data    TEXT NOT NULL DEFAULT '{}'
);

CREATE INDEX idx_job_events ON job_events (job_id, id);
