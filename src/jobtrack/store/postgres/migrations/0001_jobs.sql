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

-- Add progress to one stage: lock the job (its row lock orders every writer
-- of the job), claim the new item keys, count the items with the stage
-- rules, touch the job, and re-derive its status when the stage changed.
-- found is ok, no_job or no_stage; counted is how many items counted.
CREATE FUNCTION jobtrack_add(
    p_job text, p_stage text, p_completed bigint, p_failed bigint,
    p_completed_keys text[], p_failed_keys text[], p_now timestamptz
) RETURNS TABLE (
    found text, counted bigint, name text, status text, total_items bigint,
    completed_items bigint, failed_items bigint, total_final boolean, message text,
    started_at timestamptz, completed_at timestamptz, job_status text
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_stage stages%ROWTYPE;
    v_job text;
    v_before text;
    v_new_completed bigint := 0;
    v_new_failed bigint := 0;
    v_ended text;
BEGIN
    SELECT j.status INTO v_job FROM jobs j WHERE j.id = p_job FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'no_job', 0::bigint, NULL, NULL, NULL::bigint, NULL::bigint,
            NULL::bigint, NULL::boolean, NULL, NULL::timestamptz, NULL::timestamptz, NULL;
        RETURN;
    END IF;
    SELECT * INTO v_stage FROM stages s WHERE s.job_id = p_job AND s.name = p_stage FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'no_stage', 0::bigint, NULL, NULL, NULL::bigint, NULL::bigint,
            NULL::bigint, NULL::boolean, NULL, NULL::timestamptz, NULL::timestamptz, NULL;
        RETURN;
    END IF;
    IF v_job IN ('pending', 'in_progress') AND v_stage.status NOT IN ('completed', 'failed') THEN
        IF cardinality(p_completed_keys) > 0 THEN
            INSERT INTO item_keys SELECT p_job, p_stage, k FROM unnest(p_completed_keys) k
            ON CONFLICT DO NOTHING;
            GET DIAGNOSTICS v_new_completed = ROW_COUNT;
        END IF;
        IF cardinality(p_failed_keys) > 0 THEN
            INSERT INTO item_keys SELECT p_job, p_stage, k FROM unnest(p_failed_keys) k
            ON CONFLICT DO NOTHING;
            GET DIAGNOSTICS v_new_failed = ROW_COUNT;
        END IF;
        v_new_completed := v_new_completed + p_completed;
        v_new_failed := v_new_failed + p_failed;
    END IF;
    IF v_new_completed + v_new_failed > 0 THEN
        v_before := v_stage.status;
        UPDATE jobs SET updated_at = p_now WHERE id = p_job;
        UPDATE stages s SET
            completed_items = s.completed_items + v_new_completed,
            failed_items = s.failed_items + v_new_failed,
            status = jobtrack_stage_status(s.total_items, s.completed_items + v_new_completed,
                                           s.failed_items + v_new_failed, s.total_final, true),
            started_at = COALESCE(s.started_at, p_now)
        WHERE s.job_id = p_job AND s.name = p_stage
        RETURNING s.* INTO v_stage;
        IF v_stage.status IN ('completed', 'failed') THEN
            UPDATE stages s SET completed_at = p_now
            WHERE s.job_id = p_job AND s.name = p_stage RETURNING s.* INTO v_stage;
            v_ended := jobtrack_settle_job(p_job, p_now);
        ELSIF v_before = 'pending' THEN
            PERFORM jobtrack_settle_job(p_job, p_now);
        END IF;
    END IF;
    RETURN QUERY SELECT 'ok', v_new_completed + v_new_failed, v_stage.name, v_stage.status,
        v_stage.total_items, v_stage.completed_items, v_stage.failed_items,
        v_stage.total_final, v_stage.message, v_stage.started_at, v_stage.completed_at, v_ended;
END $$;

-- Many stages' progress in one round trip (the coalesced flush). Entry i's
-- keys are p_ckeys[p_cstart[i] .. p_cstart[i] + p_ccount[i] - 1] (and the
-- same for failed keys). Callers sort entries by job, so that concurrent
-- flushes lock jobs in one order and never deadlock.
CREATE FUNCTION jobtrack_add_many(
    p_jobs text[], p_stages text[], p_completed bigint[], p_failed bigint[],
    p_ckeys text[], p_cstart integer[], p_ccount integer[],
    p_fkeys text[], p_fstart integer[], p_fcount integer[], p_now timestamptz
) RETURNS TABLE (
    found text, counted bigint, name text, status text, total_items bigint,
    completed_items bigint, failed_items bigint, total_final boolean, message text,
    started_at timestamptz, completed_at timestamptz, job_status text
) LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. coalesce(cardinality(p_jobs), 0) LOOP
        RETURN QUERY SELECT * FROM jobtrack_add(
            p_jobs[i], p_stages[i], p_completed[i], p_failed[i],
            p_ckeys[p_cstart[i] : p_cstart[i] + p_ccount[i] - 1],
            p_fkeys[p_fstart[i] : p_fstart[i] + p_fcount[i] - 1],
            p_now);
    END LOOP;
END $$;
