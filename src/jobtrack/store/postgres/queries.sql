-- Named queries of the PostgreSQL job store; each begins with a "-- name: x" line.

-- name: add
SELECT * FROM jobtrack_add(%s, %s, %s, %s, %s::text[], %s::text[], %s);

-- name: add_many
-- The arrays go in binary: in text psycopg quotes each element of a text
-- array with a regular expression, five times slower, and a flush sends
-- thousands of elements.
SELECT * FROM jobtrack_add_many(
    %b::text[], %b::text[], %b::bigint[], %b::bigint[],
    %b::text[], %b::integer[], %b::integer[], %b::text[], %b::integer[], %b::integer[], %s);

-- name: insert_job
INSERT INTO jobs (id, job_type, status, attributes, created_at, updated_at)
VALUES (%(id)s, %(job_type)s, 'pending', %(attributes)s, %(now)s, %(now)s);

-- name: insert_stages
INSERT INTO stages (job_id, name, position)
SELECT %(job_id)s, name, position - 1
FROM unnest(%(names)s::text[]) WITH ORDINALITY AS s (name, position);

-- name: get_job
SELECT id, job_type, status, attributes, message, created_at, updated_at, completed_at
FROM jobs WHERE id = %(job_id)s;

-- name: lock_job
SELECT status FROM jobs WHERE id = %(job_id)s FOR UPDATE;

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
WITH touched AS (UPDATE jobs SET updated_at = %(now)s WHERE id = %(job_id)s RETURNING id)
SELECT jobtrack_settle_job(id, %(now)s) FROM touched;

-- name: end_job
UPDATE jobs SET status = %(status)s, message = %(message)s, updated_at = %(now)s,
    completed_at = %(now)s
WHERE id = %(job_id)s AND status IN ('pending', 'in_progress')
  AND (%(if_updated_at)s::timestamptz IS NULL OR updated_at = %(if_updated_at)s::timestamptz);

-- name: end_job_if_active
-- The status is the only guard: a row returned says this call ended the job.
UPDATE jobs SET status = %(status)s, message = %(message)s, updated_at = %(now)s,
    completed_at = %(now)s
WHERE id = %(job_id)s AND status IN ('pending', 'in_progress')
RETURNING id;

-- name: forget_keys
DELETE FROM item_keys WHERE job_id = %(job_id)s;

-- name: find_stuck
-- The seed's query; served by idx_stuck_jobs (job_type, status, updated_at).
SELECT id, job_type, status, attributes, message, created_at, updated_at, completed_at
FROM jobs
WHERE job_type = %(job_type)s AND status IN ('pending', 'in_progress')
  AND updated_at < %(before)s AND updated_at >= %(after)s
  AND (updated_at, id) > (%(after)s, %(after_id)s)
ORDER BY updated_at, id
LIMIT %(limit)s;

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
WHERE id = %(job_id)s AND updated_at = %(expected)s AND status IN ('pending', 'in_progress');

-- name: lock_job_updated_at
SELECT status, updated_at FROM jobs WHERE id = %(job_id)s FOR UPDATE;

-- name: list_changed
-- The change feed; served by idx_jobs_changed.
SELECT id, job_type, status, attributes, message, created_at, updated_at, completed_at
FROM jobs
WHERE (updated_at AT TIME ZONE 'UTC') >= (%(after)s::timestamptz AT TIME ZONE 'UTC')
  AND ((updated_at AT TIME ZONE 'UTC'), id) > ((%(after)s::timestamptz AT TIME ZONE 'UTC'), %(after_id)s)
ORDER BY (updated_at AT TIME ZONE 'UTC'), id
LIMIT %(limit)s;

-- name: stats_jobs
SELECT status, count(*) FROM jobs GROUP BY status;

-- name: stats_items
SELECT name, sum(completed_items)::bigint, sum(failed_items)::bigint FROM stages GROUP BY name;

-- name: count_items
-- Items of a stage counted over every job of a type (the monitor's
-- consumption reading across restarts); the jobs on idx_stuck_jobs.
SELECT coalesce(sum(s.completed_items + s.failed_items), 0)::bigint
FROM jobs AS j JOIN stages AS s ON s.job_id = j.id AND s.name = %(stage)s
WHERE j.job_type = %(job_type)s;

-- name: stats_events
SELECT kind, count(*) FROM job_events GROUP BY kind;

-- name: stats_stuck
SELECT count(*) FROM jobs
WHERE status IN ('pending', 'in_progress') AND updated_at < %(before)s;

-- name: stats_waiting
-- Active jobs the monitor last left alone behind a backlog: of their
-- waiting and redriven events (on idx_job_events), the latest is a waiting one.
SELECT count(*) FROM jobs AS j
WHERE j.status IN ('pending', 'in_progress')
  AND (SELECT e.kind FROM job_events AS e
       WHERE e.job_id = j.id AND e.kind IN ('waiting', 'redriven')
       ORDER BY e.id DESC LIMIT 1) = 'waiting';

-- name: recent_events
SELECT id, job_id, at, kind, message, data FROM job_events ORDER BY id DESC LIMIT %(limit)s;

-- name: last_change
-- The newest write; idx_jobs_changed read backwards.
SELECT updated_at, id FROM jobs ORDER BY (updated_at AT TIME ZONE 'UTC') DESC, id DESC LIMIT 1;
