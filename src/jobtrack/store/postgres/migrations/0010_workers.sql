-- Worker heartbeats: one row per worker process, written by that worker
-- alone every heartbeat interval (its own interval kept beside, what its
-- state is judged by); stopped_at set by a graceful stop.
CREATE TABLE workers (
    worker_id     text PRIMARY KEY,
    host          text NOT NULL,
    pid           bigint NOT NULL,
    stages_json   text NOT NULL DEFAULT '[]',
    concurrency   integer NOT NULL,
    prefetch      integer NOT NULL,
    beat_interval double precision NOT NULL,
    done          bigint NOT NULL DEFAULT 0,
    failed        bigint NOT NULL DEFAULT 0,
    last_error    text,
    last_error_at timestamptz,
    started_at    timestamptz NOT NULL,
    beat_at       timestamptz NOT NULL,
    stopped_at    timestamptz
);

-- The purge walks workers by their last beat.
CREATE INDEX idx_workers_beat ON workers (beat_at);

-- Items counted per bucket, worker, job type and stage: each worker adds
-- to its own rows only, so no two workers write the same row.
CREATE TABLE worker_throughput (
    bucket_start timestamptz NOT NULL,
    worker_id    text NOT NULL,
    job_type     text NOT NULL,
    stage        text NOT NULL,
    done         bigint NOT NULL DEFAULT 0,
    failed       bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket_start, worker_id, job_type, stage)
);
