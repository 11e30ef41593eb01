-- Named queries of the SQLite job store; each begins with a "-- name: x" line.

-- name: increment
-- The hot path: count items and apply the stage rules in one statement.
-- The triggers on stages touch the job and re-derive its status.
-- Parameters: ?1 job id, ?2 stage, ?3 completed, ?4 failed, ?5 now.
UPDATE stages SET
    completed_items = completed_items + ?3,
    failed_items = failed_items + ?4,
    status = CASE
        WHEN total_final AND completed_items + failed_items + ?3 + ?4 >= total_items
            THEN CASE WHEN total_items > 0 AND completed_items + ?3 = 0
                      THEN 'failed' ELSE 'completed' END
        ELSE 'in_progress'
    END,
    started_at = COALESCE(started_at, ?5),
    completed_at = CASE
        WHEN total_final AND completed_items + failed_items + ?3 + ?4 >= total_items THEN ?5
    END,
    updated_at = ?5
WHERE job_id = ?1 AND name = ?2 AND status NOT IN ('completed', 'failed')
  AND (SELECT status FROM jobs WHERE id = ?1) IN ('pending', 'in_progress')
RETURNING name, status, total_items, completed_items, failed_items, total_final, message,
          started_at, completed_at;

-- name: claim_keys
-- ?3 is a JSON array of keys; the changes count says how many were new.
INSERT INTO item_keys (job_id, stage, item_key)
SELECT ?1, ?2, value FROM json_each(?3) WHERE true
ON CONFLICT DO NOTHING;

-- name: stage_and_job
SELECT s.name, s.status, s.total_items, s.completed_items, s.failed_items, s.total_final,
       s.message, s.started_at, s.completed_at, j.status
FROM stages s JOIN jobs j ON j.id = s.job_id
WHERE s.job_id = ?1 AND s.name = ?2;

-- name: insert_job
INSERT INTO jobs (id, job_type, status, attributes, created_at, updated_at)
VALUES (:id, :job_type, 'pending', :attributes, :now, :now);

-- name: insert_stage
INSERT INTO stages (job_id, name, position, updated_at) VALUES (:job_id, :name, :position, :now);

-- name: get_job
SELECT id, job_type, status, attributes, message, created_at, updated_at, completed_at
FROM jobs WHERE id = :job_id;

-- name: get_job_status
SELECT status FROM jobs WHERE id = :job_id;

-- name: get_stages
SELECT job_id, name, status, total_items, completed_items, failed_items, total_final, message,
       started_at, completed_at
FROM stages WHERE job_id = :job_id ORDER BY position;

-- name: get_stage
SELECT name, status, total_items, completed_items, failed_items, total_final, message,
       started_at, completed_at
FROM stages WHERE job_id = :job_id AND name = :stage;

-- name: put_stage
UPDATE stages SET
    status = :status, total_items = :total_items, completed_items = :completed_items,
    failed_items = :failed_items, total_final = :total_final, message = :message,
    started_at = :started_at, completed_at = :completed_at, updated_at = :now
WHERE job_id = :job_id AND name = :name;

-- name: end_job
UPDATE jobs SET status = :status, message = :message, updated_at = :now, completed_at = :now
WHERE id = :job_id AND status NOT IN ('completed', 'failed', 'cancelled')
  AND (:if_updated_at IS NULL OR updated_at = :if_updated_at);

-- name: end_job_if_active
-- The status is the only guard: the changes count says whether this call ended it.
UPDATE jobs SET status = :status, message = :message, updated_at = :now, completed_at = :now
WHERE id = :job_id AND status IN ('pending', 'in_progress');

-- name: find_stuck
-- The seed's query; served by idx_stuck_jobs (job_type, status, updated_at).
SELECT id, job_type, status, attributes, message, created_at, updated_at, completed_at
FROM jobs
WHERE job_type = :job_type AND status IN ('pending', 'in_progress')
  AND updated_at < :before AND updated_at >= :after AND (updated_at, id) > (:after, :after_id)
ORDER BY updated_at, id
LIMIT :limit;

-- name: forget_stage_keys
DELETE FROM item_keys WHERE job_id = ?1 AND stage = ?2;

-- name: add_event
INSERT INTO job_events (job_id, at, kind, message, data)
VALUES (:job_id, :at, :kind, :message, :data)
RETURNING id;

-- name: list_events
SELECT id, job_id, at, kind, message, data FROM (
    SELECT id, job_id, at, kind, message, data
    FROM job_events WHERE job_id = :job_id ORDER BY id DESC LIMIT :limit
) ORDER BY id;

-- name: claim_stuck
UPDATE jobs SET updated_at = :now
WHERE id = :job_id AND updated_at = :expected AND status IN ('pending', 'in_progress');

-- name: get_job_updated_at
SELECT updated_at FROM jobs WHERE id = :job_id;

-- name: list_changed
-- The change feed; served by idx_jobs_updated (updated_at, id).
SELECT id, job_type, status, attributes, message, created_at, updated_at, completed_at
FROM jobs
WHERE updated_at >= :after AND (updated_at, id) > (:after, :after_id)
ORDER BY updated_at, id
LIMIT :limit;

-- name: stats_jobs
SELECT status, count(*) FROM jobs GROUP BY status;

-- name: stats_items
SELECT name, sum(completed_items), sum(failed_items) FROM stages GROUP BY name;

-- name: count_items
-- Items of a stage counted over every job of a type (the monitor's
-- consumption reading across restarts); the jobs on idx_stuck_jobs.
SELECT coalesce(sum(s.completed_items + s.failed_items), 0)
FROM jobs AS j JOIN stages AS s ON s.job_id = j.id AND s.name = :stage
WHERE j.job_type = :job_type;

-- name: stats_events
SELECT kind, count(*) FROM job_events GROUP BY kind;

-- name: stats_stuck
SELECT count(*) FROM jobs
WHERE status IN ('pending', 'in_progress') AND updated_at < :before;

-- name: stats_waiting
-- Active jobs the monitor last left alone behind a backlog: of their
-- waiting and redriven events (on idx_job_events), the latest is a waiting one.
SELECT count(*) FROM jobs AS j
WHERE j.status IN ('pending', 'in_progress')
  AND (SELECT e.kind FROM job_events AS e
       WHERE e.job_id = j.id AND e.kind IN ('waiting', 'redriven')
       ORDER BY e.id DESC LIMIT 1) = 'waiting';

-- name: recent_events
SELECT id, job_id, at, kind, message, data FROM job_events ORDER BY id DESC LIMIT :limit;

-- name: last_change
-- The newest write; idx_jobs_updated read backwards.
SELECT updated_at, id FROM jobs ORDER BY updated_at DESC, id DESC LIMIT 1;
