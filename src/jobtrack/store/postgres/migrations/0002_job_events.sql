-- Each job's history: started, reconciled, re-driven, failed, cancelled.
CREATE TABLE job_events (
    id      bigserial PRIMARY KEY,
    job_id  text NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    at      timestamptz NOT NULL,
    kind    text NOT NULL,
    message text NOT NULL DEFAULT '',
    data    jsonb NOT NULL DEFAULT '{}'
);

CREATE INDEX idx_job_events ON job_events (job_id, id);
