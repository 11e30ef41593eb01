-- Jobs, their stages, the item keys that make an increment count once, and
-- the functions that apply the rules of the design in one round trip.

CREATE TABLE jobs (
    id           text PRIMARY KEY,
    job_type     text NOT NULL,
    status       text NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'in_progress', 'completed', 'failed', 'cancelled')),
    attributes   jsonb NOT NULL DEFAULT '{}',
    message      text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    completed_at timestamptz
);

-- The seed's index, serving the stuck-job query.
CREATE INDEX idx_stuck_jobs ON jobs (job_type, status, updated_at);
CREATE INDEX idx_jobs_created ON jobs (created_at DESC, id DESC);

CREATE TABLE stages (
    job_id          text NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    name            text NOT NULL,
    position        integer NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'in_progress', 'completed', 'failed')),
    total_items     bigint NOT NULL DEFAULT 0 CHECK (total_items >= 0),
    completed_items bigint NOT NULL DEFAULT 0 CHECK (completed_items >= 0),
    failed_items    bigint NOT NULL DEFAULT 0 CHECK (failed_items >= 0),
    total_final     boolean NOT NULL DEFAULT false,
    message         text NOT NULL DEFAULT '',
    started_at      timestamptz,
    completed_at    timestamptz,
    PRIMARY KEY (job_id, name)
);

-- One row per counted (job, stage, item) of an active job; a job that ends
-- forgets its keys (a terminal stage or an ended job counts nothing more),
-- so the table holds the keys of active jobs only.
CREATE TABLE item_keys (
    job_id   text NOT NULL,
    stage    text NOT NULL,
    item_key text NOT NULL,
    PRIMARY KEY (job_id, stage, item_key)
);

-- The stage status the counts imply (the same rule as jobtrack.model.rules).
CREATE FUNCTION jobtrack_stage_status(
    p_total bigint, p_completed bigint, p_failed bigint, p_final boolean, p_started boolean
) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN p_final AND p_completed + p_failed >= p_total THEN
            CASE WHEN p_total > 0 AND p_completed = 0 THEN 'failed' ELSE 'completed' END
        WHEN p_started OR p_completed + p_failed > 0 THEN 'in_progress'
        ELSE 'pending'
    END
$$;

-- Re-derive a job's status from its stages. The caller holds the job's row
-- lock, so this reads every stage as committed by earlier writers.
CREATE FUNCTION jobtrack_settle_job(p_job text, p_now timestamptz)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_current text;
    v_derived text;
BEGIN
    SELECT status INTO v_current FROM jobs WHERE id = p_job;
    IF v_current IN ('completed', 'failed', 'cancelled') THEN
        RETURN v_current;
    END IF;
    SELECT CASE
        WHEN bool_and(status = 'completed') THEN 'completed'
        WHEN bool_and(status IN ('completed', 'failed')) THEN 'failed'
        WHEN v_current = 'pending' AND bool_and(status = 'pending') THEN 'pending'
        ELSE 'in_progress'
    END INTO v_derived
    FROM stages WHERE job_id = p_job;
    IF v_derived IS DISTINCT FROM v_current THEN
        UPDATE jobs SET status = v_derived,
            completed_at = CASE WHEN v_derived IN ('completed', 'failed') THEN p_now END
        WHERE id = p_job;
        IF v_derived IN ('completed', 'failed') THEN
            DELETE FROM item_keys WHERE job_id = p_job;
        END IF;
    END IF;
    RETURN v_derived;
END $$;

-- The per-item path, in one round trip: lock the job, claim the item key,
-- count the items with the stage rules, touch the job, re-derive its status
-- when the stage changed. Outcomes: counted, not_counted, no_job, no_stage.
CREATE FUNCTION jobtrack_increment(
    p_job text, p_stage text, p_completed bigint, p_failed bigint, p_key text,
    p_now timestamptz
) RETURNS TABLE (
    outcome text, name text, status text, total_items bigint, completed_items bigint,
    failed_items bigint, total_final boolean, message text, started_at timestamptz,
    completed_at timestamptz, job_status text
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_stage stages%ROWTYPE;
    v_before text;
    v_job_status text;
BEGIN
    -- The job's row lock first: it orders every writer of the job.
    PERFORM 1 FROM jobs WHERE id = p_job AND jobs.status IN ('pending', 'in_progress')
    FOR UPDATE;
    IF NOT FOUND THEN
        IF NOT EXISTS (SELECT 1 FROM jobs WHERE id = p_job) THEN
            RETURN QUERY SELECT 'no_job', NULL, NULL, NULL::bigint, NULL::bigint, NULL::bigint,
                NULL::boolean, NULL, NULL::timestamptz, NULL::timestamptz, NULL;
            RETURN;
        END IF;
        SELECT * INTO v_stage FROM stages s WHERE s.job_id = p_job AND s.name = p_stage;
        RETURN QUERY SELECT CASE WHEN v_stage.job_id IS NULL THEN 'no_stage' ELSE 'not_counted' END,
            v_stage.name, v_stage.status, v_stage.total_items, v_stage.completed_items,
            v_stage.failed_items, v_stage.total_final, v_stage.message, v_stage.started_at,
            v_stage.completed_at, NULL;
        RETURN;
    END IF;
    SELECT * INTO v_stage FROM stages s WHERE s.job_id = p_job AND s.name = p_stage FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'no_stage', NULL, NULL, NULL::bigint, NULL::bigint, NULL::bigint,
            NULL::boolean, NULL, NULL::timestamptz, NULL::timestamptz, NULL;
        RETURN;
    END IF;
    IF v_stage.status IN ('completed', 'failed') THEN
        outcome := 'not_counted';
    ELSIF p_key IS NOT NULL THEN
        INSERT INTO item_keys VALUES (p_job, p_stage, p_key) ON CONFLICT DO NOTHING;
        outcome := CASE WHEN FOUND THEN 'counted' ELSE 'not_counted' END;
    ELSE
        outcome := 'counted';
    END IF;
    IF outcome = 'counted' THEN
        UPDATE jobs SET updated_at = p_now WHERE id = p_job;
        v_before := v_stage.status;
        UPDATE stages s SET
            completed_items = s.completed_items + p_completed,
            failed_items = s.failed_items + p_failed,
            status = jobtrack_stage_status(s.total_items, s.completed_items + p_completed,
                                           s.failed_items + p_failed, s.total_final, true),
            started_at = COALESCE(s.started_at, p_now)
        WHERE s.job_id = p_job AND s.name = p_stage
        RETURNING s.* INTO v_stage;
        IF v_stage.status IN ('completed', 'failed') THEN
            UPDATE stages s SET completed_at = p_now
            WHERE s.job_id = p_job AND s.name = p_stage RETURNING s.* INTO v_stage;
            v_job_status := jobtrack_settle_job(p_job, p_now);
        ELSIF v_before = 'pending' THEN
            PERFORM jobtrack_settle_job(p_job, p_now);
        END IF;
    END IF;
    RETURN QUERY SELECT outcome, v_stage.name, v_stage.status, v_stage.total_items,
        v_stage.completed_items, v_stage.failed_items, v_stage.total_final, v_stage.message,
        v_stage.started_at, v_stage.completed_at, v_job_status;
END $$;
