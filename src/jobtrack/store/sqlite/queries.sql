-- Named queries of the SQLite job store; each begins with a "-- name: x" line.
-- Parameters are named (:name); times are integer microseconds since the
-- epoch, JSON is text, booleans are 0 and 1 (store.sqlite.store.SqliteCodec).

-- name: increment
-- The hot path: count items and apply the stage rules in one statement.
-- The triggers on stages touch the job (taking the next change sequence
-- value) and re-derive its status.
UPDATE stages SET
    completed_items = completed_items + :completed,
    failed_items = failed_items + :failed,
    status = CASE
        WHEN total_final AND completed_items + failed_items + :completed + :failed >= total_items
            THEN CASE WHEN total_items > 0 AND completed_items + :completed = 0
                      THEN 'failed' ELSE 'completed' END
        ELSE 'in_progress'
    END,
    started_at = COALESCE(started_at, :now),
    completed_at = CASE
        WHEN total_final AND completed_items + failed_items + :completed + :failed >= total_items
            THEN :now
    END,
    updated_at = :now
WHERE job_id = :job_id AND name = :stage AND status NOT IN ('completed', 'failed')
  AND (SELECT status FROM jobs WHERE id = :job_id) IN ('pending', 'in_progress')
RETURNING name, status, total_items, completed_items, failed_items, total_final, message,
          started_at, completed_at;

-- name: claim_stage_keys
-- :keys is a JSON array of keys; the changes count says how many were new.
INSERT INTO item_keys (job_id, stage, item_key)
SELECT :job_id, :stage, value FROM json_each(:keys) WHERE true
ON CONFLICT DO NOTHING;

-- name: stage_and_job
SELECT s.name, s.status, s.total_items, s.completed_items, s.failed_items, s.total_final,
       s.message, s.started_at, s.completed_at, j.status AS job_status
FROM stages s JOIN jobs j ON j.id = s.job_id
WHERE s.job_id = :job_id AND s.name = :stage;

-- name: insert_job
INSERT INTO jobs (id, job_type, status, attributes, created_at, updated_at)
VALUES (:id, :job_type, 'pending', :attributes, :now, :now);

-- name: insert_stages
-- :names is a JSON array; its index is the stage's position.
INSERT INTO stages (job_id, name, position, updated_at)
SELECT :job_id, value, key, :now FROM json_each(:names);

-- name: get_job
-- (The job's row alone: whether it exists.)
SELECT id, job_type, status, attributes, message, created_at, updated_at, completed_at, seq
FROM jobs WHERE id = :job_id;

-- name: read_job
-- The job with its stages in one statement (one snapshot): one row per
-- stage, in position order, the job's columns on each and the stage's
-- named stage_*.
SELECT j.id, j.job_type, j.status, j.attributes, j.message, j.created_at, j.updated_at,
       j.completed_at, j.seq,
       s.name AS stage_name, s.status AS stage_status, s.total_items AS stage_total_items,
       s.completed_items AS stage_completed_items, s.failed_items AS stage_failed_items,
       s.total_final AS stage_total_final, s.message AS stage_message,
       s.started_at AS stage_started_at, s.completed_at AS stage_completed_at
FROM jobs AS j LEFT JOIN stages AS s ON s.job_id = j.id
WHERE j.id = :job_id
ORDER BY s.position;

-- name: list_jobs
-- A page of jobs joined with their stages as in read_job.
-- A search (store.overview): the id's prefix, or a string at one of the
-- paths (:search_paths, SQLite JSON paths) of the job's type (:search_types,
-- the same index) that is LIKE :pattern (lowercased; LIKE folds ASCII case).
-- Ids are lowercase: :id_prefix is the term lowercased.
-- The fields are read once (fields), not for every job.
WITH fields AS MATERIALIZED (
    SELECT t.value AS job_type, p.value AS path
    FROM json_each(:search_types) AS t JOIN json_each(:search_paths) AS p ON p.key = t.key
), page AS (
    SELECT id, job_type, status, attributes, message, created_at, updated_at, completed_at, seq
    FROM jobs
    WHERE (:status IS NULL OR status = :status) AND (:job_type IS NULL OR job_type = :job_type)
      AND (:updated_since IS NULL OR updated_at >= :updated_since)
      AND (NOT :active OR status IN ('pending', 'in_progress'))
      AND (:search IS NULL OR substr(id, 1, length(:id_prefix)) = :id_prefix
           OR EXISTS (SELECT 1 FROM fields AS f
                      WHERE f.job_type = jobs.job_type
                        AND (attributes ->> f.path) LIKE :pattern ESCAPE '\'
                        AND json_type(attributes, f.path) = 'text'))
    ORDER BY created_at DESC, id DESC
    LIMIT :limit OFFSET :offset
)
SELECT j.id, j.job_type, j.status, j.attributes, j.message, j.created_at, j.updated_at,
       j.completed_at, j.seq,
       s.name AS stage_name, s.status AS stage_status, s.total_items AS stage_total_items,
       s.completed_items AS stage_completed_items, s.failed_items AS stage_failed_items,
       s.total_final AS stage_total_final, s.message AS stage_message,
       s.started_at AS stage_started_at, s.completed_at AS stage_completed_at
FROM page AS j LEFT JOIN stages AS s ON s.job_id = j.id
ORDER BY j.created_at DESC, j.id DESC, s.position;

-- name: lock_job
-- SQLite has one writer at a time: the write transaction is the lock.
SELECT status, seq FROM jobs WHERE id = :job_id;

-- name: get_stages
-- :job_ids is a JSON array.
SELECT job_id, name, status, total_items, completed_items, failed_items, total_final, message,
       started_at, completed_at
FROM stages WHERE job_id IN (SELECT value FROM json_each(:job_ids))
ORDER BY job_id, position;

-- name: lock_stage
SELECT name, status, total_items, completed_items, failed_items, total_final, message,
       started_at, completed_at
FROM stages WHERE job_id = :job_id AND name = :stage;

-- name: put_stage
-- The triggers on stages touch the job and re-derive its status.
UPDATE stages SET
    status = :status, total_items = :total_items, completed_items = :completed_items,
    failed_items = :failed_items, total_final = :total_final, message = :message,
    started_at = :started_at, completed_at = :completed_at, updated_at = :now
WHERE job_id = :job_id AND name = :name;

-- name: touch_and_settle
-- The stage triggers have settled the job's status; the job is written.
UPDATE jobs SET updated_at = :now WHERE id = :job_id;

-- name: end_job
UPDATE jobs SET status = :status, message = :message, updated_at = :now, completed_at = :now
WHERE id = :job_id AND status IN ('pending', 'in_progress')
  AND (:if_seq IS NULL OR seq = :if_seq)
RETURNING id;

-- name: forget_keys
-- (The jobs_ended trigger has already done it; kept for the shared plan.)
DELETE FROM item_keys WHERE job_id = :job_id;

-- name: find_stuck
-- The seed's query, served by idx_stuck_jobs (job_type, status, updated_at),
-- its page joined with the stages as in read_job.
WITH page AS (
    SELECT id, job_type, status, attributes, message, created_at, updated_at, completed_at, seq
    FROM jobs
    WHERE job_type = :job_type AND status IN ('pending', 'in_progress')
      AND updated_at < :before AND updated_at >= :after AND (updated_at, id) > (:after, :after_id)
    ORDER BY updated_at, id
    LIMIT :limit
)
SELECT j.id, j.job_type, j.status, j.attributes, j.message, j.created_at, j.updated_at,
       j.completed_at, j.seq,
       s.name AS stage_name, s.status AS stage_status, s.total_items AS stage_total_items,
       s.completed_items AS stage_completed_items, s.failed_items AS stage_failed_items,
       s.total_final AS stage_total_final, s.message AS stage_message,
       s.started_at AS stage_started_at, s.completed_at AS stage_completed_at
FROM page AS j LEFT JOIN stages AS s ON s.job_id = j.id
ORDER BY j.updated_at, j.id, s.position;

-- name: forget_stage_keys
DELETE FROM item_keys WHERE job_id = :job_id AND stage = :stage;

-- name: add_event
INSERT INTO job_events (job_id, at, kind, message, data)
SELECT id, :at, :kind, :message, :data FROM jobs WHERE id = :job_id
RETURNING id;

-- name: list_events
SELECT id, job_id, at, kind, message, data FROM (
    SELECT id, job_id, at, kind, message, data
    FROM job_events WHERE job_id = :job_id ORDER BY id DESC LIMIT :limit
) ORDER BY id;

-- name: claim_stuck
UPDATE jobs SET updated_at = :now
WHERE id = :job_id AND seq = :expected AND status IN ('pending', 'in_progress')
RETURNING id;

-- name: list_changed
-- The change feed, on idx_jobs_seq. SQLite has one writer at a time, so the
-- order of seq is the order of commits: nothing is ever pending.
SELECT id, job_type, status, attributes, message, created_at, updated_at, completed_at, seq,
       1 AS from_page, NULL AS snapshot
FROM jobs WHERE seq > :after
ORDER BY seq
LIMIT :limit;

-- name: last_change
SELECT coalesce(max(seq), 0) AS seq, NULL AS snapshot FROM jobs;

-- name: stats_jobs
SELECT status, count(*) AS jobs FROM jobs GROUP BY status;

-- name: stats_items
SELECT name, sum(completed_items) AS completed, sum(failed_items) AS failed
FROM stages GROUP BY name;

-- name: count_items
-- Items of a stage counted over every job of a type (the monitor's
-- consumption reading across restarts); the jobs on idx_stuck_jobs.
SELECT coalesce(sum(s.completed_items + s.failed_items), 0) AS items
FROM jobs AS j JOIN stages AS s ON s.job_id = j.id AND s.name = :stage
WHERE j.job_type = :job_type;

-- name: stats_events
SELECT kind, count(*) AS events FROM job_events GROUP BY kind;

-- name: stats_stuck
SELECT count(*) AS jobs FROM jobs
WHERE status IN ('pending', 'in_progress') AND updated_at < :before;

-- name: stats_waiting
-- Active jobs the monitor last left alone behind a backlog: of their
-- waiting and redriven events (on idx_job_events), the latest is a waiting one.
SELECT count(*) AS jobs FROM jobs AS j
WHERE j.status IN ('pending', 'in_progress')
  AND (SELECT e.kind FROM job_events AS e
       WHERE e.job_id = j.id AND e.kind IN ('waiting', 'redriven')
       ORDER BY e.id DESC LIMIT 1) = 'waiting';

-- name: recent_events
SELECT id, job_id, at, kind, message, data FROM job_events ORDER BY id DESC LIMIT :limit;

-- The migration runner's statements (store.sqlite.database), for every
-- component's migrations in this database.

-- name: migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (
    component TEXT NOT NULL, version INTEGER NOT NULL, name TEXT NOT NULL,
    applied_at INTEGER NOT NULL, PRIMARY KEY (component, version));

-- name: migrations_applied
SELECT version FROM schema_migrations WHERE component = :component;

-- name: migration_record
INSERT INTO schema_migrations (component, version, name, applied_at)
VALUES (:component, :version, :name, :now);

-- name: schema_version
SELECT COALESCE(MAX(version), 0) FROM schema_migrations WHERE component = :component;

-- The item ledger (migration 0005_item_ledger.sql).

-- name: add_items
-- :items is a JSON array of [key, payload] pairs, the payload any JSON
-- value; the changes count says how many keys were new.
INSERT INTO job_items (job_id, stage, item_key, payload, added_at)
SELECT :job_id, :stage, value ->> 0, value -> 1, :now FROM json_each(:items) WHERE true
ON CONFLICT DO NOTHING;

-- name: stage_exists
-- (lock_stage without the lock, for reads.)
SELECT name FROM stages WHERE job_id = :job_id AND name = :stage;

-- name: tally_ledger
-- Per stage: items in the ledger, of which counted (their key in
-- item_keys, or their outcome recorded), of which failed (counted with a
-- failure recorded, or recorded as failed).
SELECT l.stage, count(*) AS items,
       count(*) FILTER (WHERE k.item_key IS NOT NULL OR l.outcome IS NOT NULL) AS counted,
       count(*) FILTER (WHERE (k.item_key IS NOT NULL AND f.item_key IS NOT NULL)
                           OR (k.item_key IS NULL AND l.outcome = 'failed')) AS failed,
       count(*) FILTER (WHERE k.item_key IS NULL AND l.outcome IS NOT NULL) AS recorded
FROM job_items AS l
LEFT JOIN item_keys AS k
    ON k.job_id = l.job_id AND k.stage = l.stage AND k.item_key = l.item_key
LEFT JOIN item_failures AS f
    ON f.job_id = l.job_id AND f.stage = l.stage AND f.item_key = l.item_key
WHERE l.job_id = :job_id
GROUP BY l.stage;

-- name: missing_items
-- A page of the stage's ledger items neither counted nor with an outcome, in key order (BINARY:
-- code point order of UTF-8), on the ledger's primary key.
SELECT l.item_key, l.payload FROM job_items AS l
WHERE l.job_id = :job_id AND l.stage = :stage AND l.item_key > :after
  AND l.outcome IS NULL
  AND NOT EXISTS (SELECT 1 FROM item_keys AS k
                  WHERE k.job_id = l.job_id AND k.stage = l.stage AND k.item_key = l.item_key)
ORDER BY l.item_key
LIMIT :limit;

-- name: settled_items
-- A page of the stage's ledger keys counted or with an outcome, in key order.
SELECT l.item_key FROM job_items AS l
WHERE l.job_id = :job_id AND l.stage = :stage AND l.item_key > :after
  AND (l.outcome IS NOT NULL
       OR EXISTS (SELECT 1 FROM item_keys AS k
                  WHERE k.job_id = l.job_id AND k.stage = l.stage AND k.item_key = l.item_key))
ORDER BY l.item_key
LIMIT :limit;

-- name: ledger_items
-- :keys is a JSON array.
SELECT item_key, payload FROM job_items
WHERE job_id = :job_id AND stage = :stage
  AND item_key IN (SELECT value FROM json_each(:keys))
ORDER BY item_key;

-- name: record_outcomes
-- :keys and :failed are JSON arrays (every key, and the failed among them);
-- keys not in the stage's ledger are left out of the changes count.
UPDATE job_items
SET outcome = CASE WHEN item_key IN (SELECT value FROM json_each(:failed))
                   THEN 'failed' ELSE 'done' END,
    outcome_at = :now
WHERE job_id = :job_id AND stage = :stage
  AND item_key IN (SELECT value FROM json_each(:keys));

-- name: record_failure
-- Nothing is written (no row returned) when the job or the stage is unknown.
INSERT INTO item_failures (job_id, stage, item_key, error, attempts, failed_at)
SELECT job_id, name, :key, :error, :attempts, :now FROM stages
WHERE job_id = :job_id AND name = :stage
ON CONFLICT (job_id, stage, item_key) DO UPDATE SET
    error = excluded.error, attempts = excluded.attempts, failed_at = excluded.failed_at
RETURNING item_key;

-- name: list_failures
SELECT f.stage, f.item_key, f.error, f.attempts, f.failed_at, l.payload
FROM item_failures AS f
LEFT JOIN job_items AS l
    ON l.job_id = f.job_id AND l.stage = f.stage AND l.item_key = f.item_key
WHERE f.job_id = :job_id AND (:stage IS NULL OR f.stage = :stage)
  AND (f.stage, f.item_key) > (:after_stage, :after_key)
ORDER BY f.stage, f.item_key
LIMIT :limit;

-- name: purgeable_jobs
-- Jobs that ended before :before and still have ledger rows or failures,
-- oldest end first, on idx_jobs_ended.
SELECT id FROM jobs AS j
WHERE j.completed_at < :before AND j.status IN ('completed', 'failed', 'cancelled')
  AND (EXISTS (SELECT 1 FROM job_items AS l WHERE l.job_id = j.id)
       OR EXISTS (SELECT 1 FROM item_failures AS f WHERE f.job_id = j.id))
ORDER BY j.completed_at, j.id
LIMIT :limit;

-- name: purge_items
-- :job_ids is a JSON array.
DELETE FROM job_items WHERE job_id IN (SELECT value FROM json_each(:job_ids));

-- name: purge_failures
DELETE FROM item_failures WHERE job_id IN (SELECT value FROM json_each(:job_ids));

-- The operator's overview (store.overview; migration 0008_watch_list.sql).
-- A job's verdict is the kind of its latest waiting or redriven event, its
-- action its latest waiting, redriven or reconciled event, both on
-- idx_job_events and read for active jobs only.

-- name: count_by_type
WITH marked AS (
    SELECT j.job_type, j.status,
           j.status IN ('pending', 'in_progress') AND j.updated_at < :before AS stuck,
           CASE WHEN j.status IN ('pending', 'in_progress') THEN
               (SELECT e.kind FROM job_events AS e
                WHERE e.job_id = j.id AND e.kind IN ('waiting', 'redriven')
                ORDER BY e.id DESC LIMIT 1) END AS verdict,
           CASE WHEN j.status IN ('pending', 'in_progress') THEN
               EXISTS (SELECT 1 FROM job_events AS e
                       WHERE e.job_id = j.id AND e.kind = 'reconciled') END AS reconciled
    FROM jobs AS j
)
SELECT job_type,
       count(*) FILTER (WHERE status = 'pending') AS pending,
       count(*) FILTER (WHERE status = 'in_progress') AS in_progress,
       count(*) FILTER (WHERE status = 'completed') AS completed,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
       count(*) FILTER (WHERE stuck) AS stuck,
       count(*) FILTER (WHERE verdict = 'waiting') AS waiting,
       count(*) FILTER (WHERE verdict = 'redriven' OR (verdict IS NULL AND reconciled))
           AS redriving
FROM marked
GROUP BY job_type
ORDER BY job_type;

-- name: list_watched
-- The active jobs on idx_jobs_active, newest first; :state NULL, 'stuck',
-- 'waiting' or 'redriving'.
WITH active AS (
    SELECT j.id, j.job_type, j.status, j.message, j.created_at, j.updated_at,
           j.updated_at < :before AS stuck,
           (SELECT e.kind FROM job_events AS e
            WHERE e.job_id = j.id AND e.kind IN ('waiting', 'redriven')
            ORDER BY e.id DESC LIMIT 1) AS verdict,
           (SELECT e.id FROM job_events AS e
            WHERE e.job_id = j.id AND e.kind IN ('waiting', 'redriven', 'reconciled')
            ORDER BY e.id DESC LIMIT 1) AS action_id
    FROM jobs AS j
    WHERE j.status IN ('pending', 'in_progress') AND (:job_type IS NULL OR j.job_type = :job_type)
), marked AS (
    SELECT id, job_type, status, message, created_at, updated_at, stuck, action_id,
           coalesce(verdict = 'waiting', 0) AS waiting,
           coalesce(verdict = 'redriven', 0) OR (verdict IS NULL AND action_id IS NOT NULL)
               AS redriving
    FROM active
)
SELECT m.id, m.job_type, m.status, m.message, m.created_at, m.updated_at,
       m.stuck, m.waiting, m.redriving,
       e.id AS action_id, e.kind AS action_kind, e.message AS action_message,
       e.at AS action_at, e.data AS action_data
FROM marked AS m LEFT JOIN job_events AS e ON e.id = m.action_id
WHERE (m.stuck OR m.waiting OR m.redriving)
  AND (:state IS NULL OR (:state = 'stuck' AND m.stuck) OR (:state = 'waiting' AND m.waiting)
       OR (:state = 'redriving' AND m.redriving))
ORDER BY m.created_at DESC, m.id DESC
LIMIT :limit OFFSET :offset;
-- Worker heartbeats and throughput (store/workers.py).

-- name: beat_worker
-- Skipped (no row changed) when the row holds this beat's number or a later
-- one: a beat written again; its counts are then not added again.
INSERT INTO workers (worker_id, host, pid, stages_json, concurrency, prefetch, beat_interval,
                     done, failed, last_error, last_error_at, started_at, beat_at, stopped_at,
                     beat_seq)
VALUES (:worker_id, :host, :pid, :stages_json, :concurrency, :prefetch,
        :interval, :done, :failed, :last_error, :last_error_at,
        :started_at, :beat_at, :stopped_at, :seq)
ON CONFLICT (worker_id) DO UPDATE SET
    host = excluded.host, pid = excluded.pid, stages_json = excluded.stages_json,
    concurrency = excluded.concurrency, prefetch = excluded.prefetch,
    beat_interval = excluded.beat_interval, done = excluded.done, failed = excluded.failed,
    last_error = excluded.last_error, last_error_at = excluded.last_error_at,
    started_at = excluded.started_at, beat_at = excluded.beat_at,
    stopped_at = excluded.stopped_at, beat_seq = MAX(workers.beat_seq, excluded.beat_seq)
WHERE excluded.beat_seq = 0 OR workers.beat_seq < excluded.beat_seq;

-- name: add_throughput
-- Only this worker writes its rows: no other writer waits on them.
INSERT INTO worker_throughput (bucket_start, worker_id, job_type, stage, done, failed)
VALUES (:bucket_start, :worker_id, :job_type, :stage, :done, :failed)
ON CONFLICT (bucket_start, worker_id, job_type, stage) DO UPDATE SET
    done = worker_throughput.done + excluded.done,
    failed = worker_throughput.failed + excluded.failed;

-- name: list_workers
SELECT worker_id, host, pid, stages_json, concurrency, prefetch, beat_interval, done, failed,
       last_error, last_error_at, started_at, beat_at, stopped_at, beat_seq
FROM workers
ORDER BY beat_at DESC, worker_id
LIMIT :limit;

-- name: throughput
-- Summed over the workers, on the primary key's range of buckets.
SELECT bucket_start, job_type, stage, SUM(done) AS done, SUM(failed) AS failed
FROM worker_throughput
WHERE bucket_start >= :since
GROUP BY bucket_start, job_type, stage
ORDER BY bucket_start, job_type, stage;

-- name: purge_workers
-- Workers stopped, or silent (dead), since before the cutoff.
DELETE FROM workers WHERE beat_at < :before;

-- name: purge_throughput
DELETE FROM worker_throughput WHERE bucket_start < :before;
