-- Named queries of the PostgreSQL job store; each begins with a "-- name: x" line.

-- name: add
SELECT * FROM jobtrack_add(
    %(job_id)s, %(stage)s, %(completed)s, %(failed)s, %(completed_keys)s::text[],
    %(failed_keys)s::text[], %(now)s);

-- name: add_many
-- The arrays go in binary: in text psycopg quotes each element of a text
-- array with a regular expression, five times slower, and a flush sends
-- thousands of elements. jobtrack_flush is jobtrack_add_many on plans
-- cached for small batches (migration 0009).
SELECT * FROM jobtrack_flush(
    %b::text[], %b::text[], %b::bigint[], %b::bigint[],
    %b::text[], %b::integer[], %b::integer[], %b::text[], %b::integer[], %b::integer[], %s);

-- name: free_jobs
-- The jobs of a flush that no other transaction holds now: those held are
-- skipped, not waited for. Run alone (autocommit), its locks end with it.
SELECT id FROM jobs WHERE id = ANY(%b::text[]) ORDER BY id FOR UPDATE SKIP LOCKED;

-- name: insert_job
INSERT INTO jobs (id, job_type, status, attributes, created_at, updated_at)
VALUES (%(id)s, %(job_type)s, 'pending', %(attributes)s, %(now)s, %(now)s);

-- name: insert_stages
-- (now: the stages of PostgreSQL have no updated_at of their own.)
INSERT INTO stages (job_id, name, position)
SELECT %(job_id)s, name, position - 1
FROM unnest(%(names)s::text[]) WITH ORDINALITY AS s (name, position);

-- name: get_job
-- (The job's row alone: whether it exists.)
SELECT id, job_type, status, attributes, message, created_at, updated_at, completed_at, seq
FROM jobs WHERE id = %(job_id)s;

-- name: read_job
-- The job with its stages in one statement (one snapshot, one round trip):
-- one row per stage, in position order, the job's columns on each and the
-- stage's named stage_*.
SELECT j.id, j.job_type, j.status, j.attributes, j.message, j.created_at, j.updated_at,
       j.completed_at, j.seq,
       s.name AS stage_name, s.status AS stage_status, s.total_items AS stage_total_items,
       s.completed_items AS stage_completed_items, s.failed_items AS stage_failed_items,
       s.total_final AS stage_total_final, s.message AS stage_message,
       s.started_at AS stage_started_at, s.completed_at AS stage_completed_at
FROM jobs AS j LEFT JOIN stages AS s ON s.job_id = j.id
WHERE j.id = %(job_id)s
ORDER BY s.position;

-- name: lock_job
SELECT status, seq FROM jobs WHERE id = %(job_id)s FOR UPDATE;

-- name: get_stages
SELECT job_id, name, status, total_items, completed_items, failed_items, total_final, message,
       started_at, completed_at
FROM stages WHERE job_id = ANY(%(job_ids)s) ORDER BY job_id, position;

-- name: lock_stage
SELECT name, status, total_items, completed_items, failed_items, total_final, message,
       started_at, completed_at
FROM stages WHERE job_id = %(job_id)s AND name = %(stage)s FOR UPDATE;

-- name: put_stage
UPDATE stages SET
    status = %(status)s, total_items = %(total_items)s, completed_items = %(completed_items)s,
    failed_items = %(failed_items)s, total_final = %(total_final)s, message = %(message)s,
    started_at = %(started_at)s, completed_at = %(completed_at)s
WHERE job_id = %(job_id)s AND name = %(name)s;

-- name: touch_and_settle
-- The job is written (its seq moves), then its status settled.
WITH touched AS (UPDATE jobs SET updated_at = %(now)s WHERE id = %(job_id)s RETURNING id)
SELECT jobtrack_settle_job(id, %(now)s) FROM touched;

-- name: end_job
-- Without if_seq, the status is the only guard: a row returned says this
-- call ended the job.
UPDATE jobs SET status = %(status)s, message = %(message)s, updated_at = %(now)s,
    completed_at = %(now)s
WHERE id = %(job_id)s AND status IN ('pending', 'in_progress')
  AND (%(if_seq)s::bigint IS NULL OR seq = %(if_seq)s::bigint)
RETURNING id;

-- name: forget_keys
DELETE FROM item_keys WHERE job_id = %(job_id)s;

-- name: find_stuck
-- The seed's query, served by idx_stuck_jobs (job_type, status, updated_at),
-- its page joined with the stages as in read_job.
WITH page AS (
    SELECT id, job_type, status, attributes, message, created_at, updated_at, completed_at, seq
    FROM jobs
    WHERE job_type = %(job_type)s AND status IN ('pending', 'in_progress')
      AND updated_at < %(before)s AND updated_at >= %(after)s::timestamptz
      AND (updated_at, id) > (%(after)s::timestamptz, %(after_id)s)
    ORDER BY updated_at, id
    LIMIT %(limit)s
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
DELETE FROM item_keys WHERE job_id = %(job_id)s AND stage = %(stage)s;

-- name: claim_stage_keys
INSERT INTO item_keys SELECT %(job_id)s, %(stage)s, k FROM unnest(%(keys)s::text[]) k
ON CONFLICT DO NOTHING;

-- name: add_event
INSERT INTO job_events (job_id, at, kind, message, data)
SELECT id, %(at)s, %(kind)s, %(message)s, %(data)s FROM jobs WHERE id = %(job_id)s
RETURNING id;

-- name: list_events
SELECT id, job_id, at, kind, message, data FROM (
    SELECT id, job_id, at, kind, message, data
    FROM job_events WHERE job_id = %(job_id)s ORDER BY id DESC LIMIT %(limit)s
) last ORDER BY id;

-- name: claim_stuck
UPDATE jobs SET updated_at = %(now)s
WHERE id = %(job_id)s AND seq = %(expected)s AND status IN ('pending', 'in_progress')
RETURNING id;

-- name: list_changed
-- The change feed: a page of the jobs written after the cursor's seq, and
-- the jobs last written by a transaction the cursor's snapshot did not see
-- (in flight then, or not yet started: its xid at or past the snapshot's
-- xmin and not visible in it), whatever their seq; and, in the same
-- statement (so from the same snapshot), that snapshot: the next cursor's.
-- A transaction whose xid is assigned after a snapshot takes its seq after
-- it too (the jobs_seq trigger takes the xid first), so past every seq
-- the read could see. The row of the snapshot alone (id NULL) comes back
-- when no job has changed; from_page tells the page's rows (the next seq is
-- the page's last).
WITH page AS (
    SELECT id, seq FROM jobs WHERE seq > %(after)s ORDER BY seq LIMIT %(limit)s
), unseen AS (
    SELECT id, seq FROM jobs
    WHERE xid >= pg_snapshot_xmin(%(snapshot)s::pg_snapshot)
      AND NOT pg_visible_in_snapshot(xid, %(snapshot)s::pg_snapshot)
), picked AS (
    SELECT id, seq, bool_or(from_page) AS from_page
    FROM (SELECT id, seq, true AS from_page FROM page
          UNION ALL
          SELECT id, seq, false FROM unseen) AS both_reads
    GROUP BY id, seq
)
SELECT j.id, j.job_type, j.status, j.attributes, j.message, j.created_at, j.updated_at,
       j.completed_at, j.seq, picked.from_page, pg_current_snapshot()::text AS snapshot
FROM (VALUES (1)) AS snapshot (one)
LEFT JOIN picked ON true
LEFT JOIN jobs j ON j.id = picked.id
ORDER BY picked.seq;

-- name: stats_jobs
SELECT status, count(*) AS jobs FROM jobs GROUP BY status;

-- name: stats_items
SELECT name, sum(completed_items)::bigint AS completed, sum(failed_items)::bigint AS failed
FROM stages GROUP BY name;

-- name: count_items
-- Items of a stage counted over every job of a type (the monitor's
-- consumption reading across restarts); the jobs on idx_stuck_jobs.
SELECT coalesce(sum(s.completed_items + s.failed_items), 0)::bigint AS items
FROM jobs AS j JOIN stages AS s ON s.job_id = j.id AND s.name = %(stage)s
WHERE j.job_type = %(job_type)s;

-- name: stats_events
SELECT kind, count(*) AS events FROM job_events GROUP BY kind;

-- name: stats_stuck
SELECT count(*) AS jobs FROM jobs
WHERE status IN ('pending', 'in_progress') AND updated_at < %(before)s;

-- name: stats_waiting
-- Active jobs the monitor last left alone behind a backlog: of their
-- waiting and redriven events (on idx_job_events), the latest is a waiting one.
SELECT count(*) AS jobs FROM jobs AS j
WHERE j.status IN ('pending', 'in_progress')
  AND (SELECT e.kind FROM job_events AS e
       WHERE e.job_id = j.id AND e.kind IN ('waiting', 'redriven')
       ORDER BY e.id DESC LIMIT 1) = 'waiting';

-- name: recent_events
SELECT id, job_id, at, kind, message, data FROM job_events ORDER BY id DESC LIMIT %(limit)s;

-- name: last_change
-- The newest seq (idx_jobs_seq read backwards) and the snapshot it was read
-- in, from one statement: where a change feed starts.
SELECT coalesce(max(seq), 0) AS seq, pg_current_snapshot()::text AS snapshot FROM jobs;

-- name: list_jobs
-- A page of jobs joined with their stages as in read_job.
WITH page AS (
    SELECT id, job_type, status, attributes, message, created_at, updated_at, completed_at, seq
    FROM jobs
    WHERE (%(status)s::text IS NULL OR status = %(status)s)
      AND (%(job_type)s::text IS NULL OR job_type = %(job_type)s)
      AND (%(updated_since)s::timestamptz IS NULL OR updated_at >= %(updated_since)s)
      AND (NOT %(active)s::boolean OR status IN ('pending', 'in_progress'))
      -- A search (store.overview): the id's prefix, or a string at one of the
      -- dotted paths (%(search_paths)s) of the job's type (%(search_types)s,
      -- the same index), holding the lowercased %(pattern)s. Ids are lowercase:
      -- %(id_prefix)s is the term lowercased.
      AND (%(search)s::text IS NULL
           OR substr(id, 1, length(%(id_prefix)s::text)) = %(id_prefix)s::text
           OR EXISTS (SELECT 1
                      FROM unnest(%(search_types)s::text[], %(search_paths)s::text[])
                          AS f(job_type, path)
                      WHERE f.job_type = jobs.job_type
                        AND jsonb_typeof(attributes #> string_to_array(f.path, '.')) = 'string'
                        AND lower(attributes #>> string_to_array(f.path, '.'))
                            LIKE %(pattern)s::text ESCAPE '\'))
    ORDER BY created_at DESC, id DESC
    LIMIT %(limit)s OFFSET %(offset)s
)
SELECT j.id, j.job_type, j.status, j.attributes, j.message, j.created_at, j.updated_at,
       j.completed_at, j.seq,
       s.name AS stage_name, s.status AS stage_status, s.total_items AS stage_total_items,
       s.completed_items AS stage_completed_items, s.failed_items AS stage_failed_items,
       s.total_final AS stage_total_final, s.message AS stage_message,
       s.started_at AS stage_started_at, s.completed_at AS stage_completed_at
FROM page AS j LEFT JOIN stages AS s ON s.job_id = j.id
ORDER BY j.created_at DESC, j.id DESC, s.position;

-- The migration runner's statements (store.postgres.store.migrate), for
-- every component's migrations in this database.

-- name: migration_lock
SELECT pg_advisory_xact_lock(%(lock)s);

-- name: migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (
    component text NOT NULL, version integer NOT NULL, name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (component, version));

-- name: migrations_applied
SELECT version FROM schema_migrations WHERE component = %(component)s;

-- name: migration_record
INSERT INTO schema_migrations (component, version, name)
VALUES (%(component)s, %(version)s, %(name)s);

-- The item ledger (migration 0007_item_ledger.sql). Keys and stage names
-- of the ledger are in the "C" collation; compared with item_keys' under
-- "default" (equality is the same in both), so item_keys' index serves.

-- name: add_items
-- The arrays go in binary (see add_many); the payloads as JSON text. The
-- rows changed are the new keys.
INSERT INTO job_items (job_id, stage, item_key, payload, added_at)
SELECT %(job_id)s, %(stage)s, k, p::jsonb, %(now)s
FROM unnest(%(keys)b::text[], %(payloads)b::text[]) AS t (k, p)
ON CONFLICT DO NOTHING;

-- name: stage_exists
-- (lock_stage without the lock, for reads.)
SELECT name FROM stages WHERE job_id = %(job_id)s AND name = %(stage)s;

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
    ON k.job_id = l.job_id AND k.stage = l.stage COLLATE "default"
   AND k.item_key = l.item_key COLLATE "default"
LEFT JOIN item_failures AS f
    ON f.job_id = l.job_id AND f.stage = l.stage AND f.item_key = l.item_key
WHERE l.job_id = %(job_id)s
GROUP BY l.stage;

-- name: missing_items
-- A page of the stage's ledger items neither counted nor with an outcome, in key order (code
-- point), a range of the ledger's primary key.
SELECT l.item_key, l.payload FROM job_items AS l
WHERE l.job_id = %(job_id)s AND l.stage = %(stage)s AND l.item_key > %(after)s
  AND l.outcome IS NULL
  AND NOT EXISTS (SELECT 1 FROM item_keys AS k
                  WHERE k.job_id = l.job_id AND k.stage = l.stage COLLATE "default"
                    AND k.item_key = l.item_key COLLATE "default")
ORDER BY l.item_key
LIMIT %(limit)s;

-- name: settled_items
-- A page of the stage's ledger keys counted or with an outcome, in key
-- order (code point), a range of the ledger's primary key.
SELECT l.item_key FROM job_items AS l
WHERE l.job_id = %(job_id)s AND l.stage = %(stage)s AND l.item_key > %(after)s
  AND (l.outcome IS NOT NULL
       OR EXISTS (SELECT 1 FROM item_keys AS k
                  WHERE k.job_id = l.job_id AND k.stage = l.stage COLLATE "default"
                    AND k.item_key = l.item_key COLLATE "default"))
ORDER BY l.item_key
LIMIT %(limit)s;

-- name: ledger_items
SELECT item_key, payload FROM job_items
WHERE job_id = %(job_id)s AND stage = %(stage)s AND item_key = ANY(%(keys)s::text[])
ORDER BY item_key;

-- name: record_outcomes
-- The arrays go in binary: every key and its outcome ('done' or 'failed');
-- keys not in the stage's ledger are left out of the rows changed.
UPDATE job_items AS l SET outcome = t.o, outcome_at = %(now)s
FROM unnest(%(keys)b::text[], %(outcomes)b::text[]) AS t (k, o)
WHERE l.job_id = %(job_id)s AND l.stage = %(stage)s AND l.item_key = t.k COLLATE "C";

-- name: record_failure
-- Nothing is written (no row returned) when the job or the stage is unknown.
INSERT INTO item_failures (job_id, stage, item_key, error, attempts, failed_at)
SELECT job_id, name, %(key)s, %(error)s, %(attempts)s, %(now)s FROM stages
WHERE job_id = %(job_id)s AND name = %(stage)s
ON CONFLICT (job_id, stage, item_key) DO UPDATE SET
    error = excluded.error, attempts = excluded.attempts, failed_at = excluded.failed_at
RETURNING item_key;

-- name: list_failures
SELECT f.stage, f.item_key, f.error, f.attempts, f.failed_at, l.payload
FROM item_failures AS f
LEFT JOIN job_items AS l
    ON l.job_id = f.job_id AND l.stage = f.stage AND l.item_key = f.item_key
WHERE f.job_id = %(job_id)s AND (%(stage)s::text IS NULL OR f.stage = %(stage)s)
  AND (f.stage, f.item_key) > (%(after_stage)s, %(after_key)s)
ORDER BY f.stage, f.item_key
LIMIT %(limit)s;

-- name: purgeable_jobs
-- Jobs that ended before the cutoff and still have ledger rows or
-- failures, oldest end first, on idx_jobs_ended.
SELECT id FROM jobs AS j
WHERE j.completed_at < %(before)s AND j.status IN ('completed', 'failed', 'cancelled')
  AND (EXISTS (SELECT 1 FROM job_items AS l WHERE l.job_id = j.id)
       OR EXISTS (SELECT 1 FROM item_failures AS f WHERE f.job_id = j.id))
ORDER BY j.completed_at, j.id
LIMIT %(limit)s;

-- name: purge_items
DELETE FROM job_items WHERE job_id = ANY(%(job_ids)s::text[]);

-- name: purge_failures
DELETE FROM item_failures WHERE job_id = ANY(%(job_ids)s::text[]);

-- The operator's overview (store.overview; migration 0011_watch_list.sql).
-- A job's verdict is the kind of its latest waiting or redriven event, its
-- action its latest waiting, redriven or reconciled event, both on
-- idx_job_events and read for active jobs only.

-- name: count_by_type
-- The statuses counted over every job (a plain GROUP BY); the marks
-- computed over the active jobs only, each with one event on idx_job_events
-- (LEFT JOIN LATERAL): its latest waiting or redriven one, else a
-- reconciled one. No per-job subquery in a CASE, which the planner priced
-- high enough to JIT-compile (most of the query's time, at 10,000 jobs).
WITH statuses AS (
    SELECT job_type,
           count(*) FILTER (WHERE status = 'pending') AS pending,
           count(*) FILTER (WHERE status = 'in_progress') AS in_progress,
           count(*) FILTER (WHERE status = 'completed') AS completed,
           count(*) FILTER (WHERE status = 'failed') AS failed,
           count(*) FILTER (WHERE status = 'cancelled') AS cancelled
    FROM jobs
    GROUP BY job_type
), marks AS (
    SELECT j.job_type,
           count(*) FILTER (WHERE j.updated_at < %(before)s) AS stuck,
           count(*) FILTER (WHERE v.kind = 'waiting') AS waiting,
           count(*) FILTER (WHERE v.kind IN ('redriven', 'reconciled')) AS redriving
    FROM jobs AS j
    LEFT JOIN LATERAL (SELECT e.kind FROM job_events AS e
                       WHERE e.job_id = j.id
                         AND e.kind IN ('waiting', 'redriven', 'reconciled')
                       ORDER BY e.kind = 'reconciled', e.id DESC LIMIT 1) AS v ON true
    WHERE j.status IN ('pending', 'in_progress')
    GROUP BY j.job_type
)
SELECT s.job_type, s.pending, s.in_progress, s.completed, s.failed, s.cancelled,
       coalesce(m.stuck, 0) AS stuck, coalesce(m.waiting, 0) AS waiting,
       coalesce(m.redriving, 0) AS redriving
FROM statuses AS s LEFT JOIN marks AS m ON m.job_type = s.job_type
ORDER BY s.job_type;

-- name: list_watched
-- The active jobs on idx_jobs_active, newest first; %(state)s NULL, 'stuck',
-- 'waiting' or 'redriving'.
WITH active AS (
    SELECT j.id, j.job_type, j.status, j.message, j.created_at, j.updated_at,
           j.updated_at < %(before)s AS stuck,
           (SELECT e.kind FROM job_events AS e
            WHERE e.job_id = j.id AND e.kind IN ('waiting', 'redriven')
            ORDER BY e.id DESC LIMIT 1) AS verdict,
           (SELECT e.id FROM job_events AS e
            WHERE e.job_id = j.id AND e.kind IN ('waiting', 'redriven', 'reconciled')
            ORDER BY e.id DESC LIMIT 1) AS action_id
    FROM jobs AS j
    WHERE j.status IN ('pending', 'in_progress')
      AND (%(job_type)s::text IS NULL OR j.job_type = %(job_type)s::text)
), marked AS (
    SELECT id, job_type, status, message, created_at, updated_at, stuck, action_id,
           coalesce(verdict = 'waiting', false) AS waiting,
           coalesce(verdict = 'redriven', false) OR (verdict IS NULL AND action_id IS NOT NULL)
               AS redriving
    FROM active
)
SELECT m.id, m.job_type, m.status, m.message, m.created_at, m.updated_at,
       m.stuck, m.waiting, m.redriving,
       e.id AS action_id, e.kind AS action_kind, e.message AS action_message,
       e.at AS action_at, e.data AS action_data
FROM marked AS m LEFT JOIN job_events AS e ON e.id = m.action_id
WHERE (m.stuck OR m.waiting OR m.redriving)
  AND (%(state)s::text IS NULL OR (%(state)s::text = 'stuck' AND m.stuck)
       OR (%(state)s::text = 'waiting' AND m.waiting)
       OR (%(state)s::text = 'redriving' AND m.redriving))
ORDER BY m.created_at DESC, m.id DESC
LIMIT %(limit)s OFFSET %(offset)s;
-- Worker heartbeats and throughput (store/workers.py).

-- name: beat_worker
-- Skipped (no row changed) when the row holds this beat's number or a later
-- one: a beat written again; its counts are then not added again.
INSERT INTO workers (worker_id, host, pid, stages_json, concurrency, prefetch, beat_interval,
                     done, failed, last_error, last_error_at, started_at, beat_at, stopped_at,
                     beat_seq)
VALUES (%(worker_id)s, %(host)s, %(pid)s, %(stages_json)s, %(concurrency)s, %(prefetch)s,
        %(interval)s, %(done)s, %(failed)s, %(last_error)s, %(last_error_at)s,
        %(started_at)s, %(beat_at)s, %(stopped_at)s, %(seq)s)
ON CONFLICT (worker_id) DO UPDATE SET
    host = excluded.host, pid = excluded.pid, stages_json = excluded.stages_json,
    concurrency = excluded.concurrency, prefetch = excluded.prefetch,
    beat_interval = excluded.beat_interval, done = excluded.done, failed = excluded.failed,
    last_error = excluded.last_error, last_error_at = excluded.last_error_at,
    started_at = excluded.started_at, beat_at = excluded.beat_at,
    stopped_at = excluded.stopped_at, beat_seq = GREATEST(workers.beat_seq, excluded.beat_seq)
WHERE excluded.beat_seq = 0 OR workers.beat_seq < excluded.beat_seq;

-- name: add_throughput
-- Only this worker writes its rows: no other writer waits on them.
INSERT INTO worker_throughput (bucket_start, worker_id, job_type, stage, done, failed)
VALUES (%(bucket_start)s, %(worker_id)s, %(job_type)s, %(stage)s, %(done)s, %(failed)s)
ON CONFLICT (bucket_start, worker_id, job_type, stage) DO UPDATE SET
    done = worker_throughput.done + excluded.done,
    failed = worker_throughput.failed + excluded.failed;

-- name: list_workers
SELECT worker_id, host, pid, stages_json, concurrency, prefetch, beat_interval, done, failed,
       last_error, last_error_at, started_at, beat_at, stopped_at, beat_seq
FROM workers
ORDER BY beat_at DESC, worker_id
LIMIT %(limit)s;

-- name: throughput
-- Summed over the workers, on the primary key's range of buckets.
SELECT bucket_start, job_type, stage, SUM(done) AS done, SUM(failed) AS failed
FROM worker_throughput
WHERE bucket_start >= %(since)s
GROUP BY bucket_start, job_type, stage
ORDER BY bucket_start, job_type, stage;

-- name: purge_workers
-- Workers stopped, or silent (dead), since before the cutoff.
DELETE FROM workers WHERE beat_at < %(before)s;

-- name: purge_throughput
DELETE FROM worker_throughput WHERE bucket_start < %(before)s;
