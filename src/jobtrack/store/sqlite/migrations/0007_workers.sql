-- Worker heartbeats: one row per worker process, written by that worker
-- alone every heartbeat interval (its own interval kept beside, what its
-- state is judged by); stopped_at set by a graceful stop.
CREATE TABLE workers (
    worker_id     TEXT PRIMARY KEY,
    host          TEXT NOT NULL,
    pid           INTEGER NOT NULL,
    stages_json   TEXT NOT NULL DEFAULT '[]',
    concurrency   INTEGER NOT NULL,
    prefetch      INTEGER NOT NULL,
    beat_interval REAL NOT NULL,
    done          INTEGER NOT NULL DEFAULT 0,
    failed        INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    last_error_at INTEGER,
    started_at    INTEGER NOT NULL,
    beat_at       INTEGER NOT NULL,
    stopped_at    INTEGER
) WITHOUT ROWID;

-- The purge walks workers by their last beat.
CREATE INDEX idx_workers_beat ON workers (beat_at);

-- Items counted per bucket, worker, job type and stage: each worker adds
-- to its own rows only, so no two workers write the same row.
CREATE TABLE worker_throughput (
    bucket_start INTEGER NOT NULL,
    worker_id    TEXT NOT NULL,
    job_type     TEXT NOT NULL,
    stage        TEXT NOT NULL,
    done         INTEGER NOT NULL DEFAULT 0,
    failed       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket_start, worker_id, job_type, stage)
) WITHOUT ROWID;
