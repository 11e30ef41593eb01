-- Item keys claimed before the job locks, and a flush of few statements.
--
-- Claiming keys was the cost of a keyed flush: an INSERT … ON CONFLICT DO
-- NOTHING costs about 10 µs a key, and it ran under the job's row lock, so
-- on a hot job every writer's keys went through that lock one flush after
-- another (about 11 ms for a flush of 625 keys, 100,000 keys a second
-- needing more than one core inside one lock). Now both functions claim the
-- keys first, with no job lock held, and lock the jobs after: flushes claim
-- their keys side by side, and a job's lock covers only the counting.
--
-- Claiming before locking is safe:
-- - two writers of one key: the second waits for the first's transaction
--   (the unique index) and does not count it if it commits. Writers claim
--   keys holding no job lock, so a writer holding a job lock never waits
--   for a key; and each INSERT claims them in (job, stage, key) order,
--   sorted here by code point (COLLATE "C", whatever the database's
--   collation, and whatever order the caller sent, completed and failed
--   keys together), so two claims do not wait for each other in a circle.
--   Two paths still claim keys under a job lock: a batch that names a
--   stage twice (applied entry by entry: the second entry claims its keys
--   holding the first's lock), and reconciliation with keys (below). If
--   one meets a writer that holds a key it needs and waits for that lock,
--   PostgreSQL reports a deadlock after deadlock_timeout and rolls one call
--   back whole; the store reports it as unavailable, and the caller
--   writes again (a flush's items are kept), so nothing counts twice;
-- - an entry whose job is missing or ended, or whose stage has ended, counts
--   nothing, as before: once its job is locked, the keys it claimed are
--   deleted again in the same transaction, so none is left behind;
-- - a job that ends forgets its keys under its lock; keys another writer
--   claimed and not yet committed are not among them, but that writer then
--   finds the job ended and deletes its own.
-- Reconciliation with keys (claim_stage_keys) takes them under the job's
-- lock. Should it meet a key a flush has claimed and the
-- flush wait for that job's lock, PostgreSQL reports a deadlock after
-- deadlock_timeout and rolls one back; the store reports that as
-- unavailable, and the caller retries.
--
-- The set-based flush (jobtrack_add_many) was also one statement of eleven
-- CTEs planned afresh on every call (force_custom_plan), about 6 ms of a
-- spread flush before it wrote a row. It is now a few plain statements,
-- each a join of the arrays with the tables' primary keys, planned quickly.
-- Entry i's keys are p_ckeys[p_cstart[i] .. p_cstart[i] + p_ccount[i] - 1]
-- as before, and the entries' ranges must follow one another in entry order
-- from position 1 (as the store lays them out): the keys are paired with
-- their entries by position (p_ccount alone), not sliced out of the array
-- (slicing a text array walks it from the start, once per entry). A batch
-- holding the same (job, stage) twice is still applied entry by entry.
--
-- Every job written gets one UPDATE per call, as before.

CREATE OR REPLACE FUNCTION jobtrack_add_many(
    p_jobs text[], p_stages text[], p_completed bigint[], p_failed bigint[],
    p_ckeys text[], p_cstart integer[], p_ccount integer[],
    p_fkeys text[], p_fstart integer[], p_fcount integer[], p_now timestamptz
) RETURNS TABLE (
    found text, counted bigint, name text, status text, total_items bigint,
    completed_items bigint, failed_items bigint, total_final boolean, message text,
    started_at timestamptz, completed_at timestamptz, job_status text
) LANGUAGE plpgsql
-- Planned for each call's arrays (the statements are small, so planning is
-- quick), and no JIT.
SET plan_cache_mode = force_custom_plan
SET jit = off
AS $$
#variable_conflict use_column
DECLARE
    v_n integer := coalesce(cardinality(p_jobs), 0);
    -- The keys given, and those claimed: (job, stage, key, failed).
    v_gjobs text[];
    v_gstages text[];
    v_gkeys text[];
    v_gfailed boolean[];
    v_cjobs text[];
    v_cstages text[];
    v_ckeys text[];
    v_cfailed boolean[];
    -- Per claimed (job, stage): keys claimed, of which failed.
    v_kjobs text[];
    v_kstages text[];
    v_kall bigint[];
    v_kfailed bigint[];
    -- Per entry, in entry order, read under the job locks.
    v_has_job boolean[];
    v_has_stage boolean[];
    v_open boolean[];
    v_before text[];
    v_c bigint[];
    v_f bigint[];
    -- Per entry: its stage ended in this call.
    v_ended boolean[];
    -- Jobs written, and those of them to settle.
    v_touched text[];
    v_moved text[];
    v_done text[];
BEGIN
    IF v_n = 0 THEN
        RETURN;
    END IF;
    -- A stage named twice: entry by entry, since the second entry must see
    -- the first one's effects.
    IF v_n > 1 AND EXISTS (
        SELECT FROM unnest(p_jobs, p_stages) d (j, s) GROUP BY d.j, d.s HAVING count(*) > 1
    ) THEN
        FOR i IN 1 .. v_n LOOP
            RETURN QUERY SELECT * FROM jobtrack_add(
                p_jobs[i], p_stages[i], p_completed[i], p_failed[i],
                p_ckeys[p_cstart[i] : p_cstart[i] + p_ccount[i] - 1],
                p_fkeys[p_fstart[i] : p_fstart[i] + p_fcount[i] - 1],
                p_now);
        END LOOP;
        RETURN;
    END IF;

    -- 1. The keys, before any job lock: each key with its entry's job and
    -- stage (the owners, one row per key, in the keys' order) and whether
    -- it was given as failed; completed keys first. They are claimed in
    -- (job, stage, key) order by code point, whatever order they came in,
    -- so that two flushes claim the keys they share in one order.
    IF coalesce(cardinality(p_ckeys), 0) + coalesce(cardinality(p_fkeys), 0) > 0 THEN
        v_gjobs := ARRAY(
            SELECT d.j FROM unnest(p_jobs, p_ccount) WITH ORDINALITY d (j, n, i),
                            generate_series(1, d.n)
            ORDER BY d.i)
            || ARRAY(
            SELECT d.j FROM unnest(p_jobs, p_fcount) WITH ORDINALITY d (j, n, i),
                            generate_series(1, d.n)
            ORDER BY d.i);
        v_gstages := ARRAY(
            SELECT d.s FROM unnest(p_stages, p_ccount) WITH ORDINALITY d (s, n, i),
                            generate_series(1, d.n)
            ORDER BY d.i)
            || ARRAY(
            SELECT d.s FROM unnest(p_stages, p_fcount) WITH ORDINALITY d (s, n, i),
                            generate_series(1, d.n)
            ORDER BY d.i);
        v_gkeys := coalesce(p_ckeys, '{}') || coalesce(p_fkeys, '{}');
        v_gfailed := array_fill(false, ARRAY[coalesce(cardinality(p_ckeys), 0)])
            || array_fill(true, ARRAY[coalesce(cardinality(p_fkeys), 0)]);
        -- Claimed with a plain INSERT first: ON CONFLICT DO NOTHING costs
        -- about half as much again a key, and a key there already is rare
        -- (an item delivered twice). When one is, the INSERT fails as a
        -- whole (in a subtransaction: this block) and the keys are claimed
        -- again, skipping those there. A key given as completed and as
        -- failed for one stage is one key, counted as completed.
        BEGIN
            INSERT INTO item_keys (job_id, stage, item_key)
            SELECT g.j, g.s, g.k FROM unnest(v_gjobs, v_gstages, v_gkeys) g (j, s, k)
            ORDER BY g.j COLLATE "C", g.s COLLATE "C", g.k COLLATE "C";
            v_cjobs := v_gjobs;
            v_cstages := v_gstages;
            v_ckeys := v_gkeys;
            v_cfailed := v_gfailed;
        EXCEPTION WHEN unique_violation THEN
            WITH claimed AS (
                INSERT INTO item_keys (job_id, stage, item_key)
                SELECT g.j, g.s, g.k FROM unnest(v_gjobs, v_gstages, v_gkeys) g (j, s, k)
                ORDER BY g.j COLLATE "C", g.s COLLATE "C", g.k COLLATE "C"
                ON CONFLICT DO NOTHING
                RETURNING item_keys.job_id, item_keys.stage, item_keys.item_key
            ),
            flags AS (
                SELECT g.j, g.s, g.k, bool_and(g.failed) AS failed
                FROM unnest(v_gjobs, v_gstages, v_gkeys, v_gfailed) g (j, s, k, failed)
                GROUP BY g.j, g.s, g.k
            )
            SELECT array_agg(claimed.job_id), array_agg(claimed.stage),
                   array_agg(claimed.item_key), array_agg(flags.failed)
            INTO v_cjobs, v_cstages, v_ckeys, v_cfailed
            FROM claimed
            JOIN flags ON flags.j = claimed.job_id AND flags.s = claimed.stage
                      AND flags.k = claimed.item_key;
        END;
        -- Per stage: the keys claimed, and how many of them failed.
        SELECT array_agg(c.j), array_agg(c.s), array_agg(c.n), array_agg(c.nf)
        INTO v_kjobs, v_kstages, v_kall, v_kfailed
        FROM (SELECT k.j, k.s, count(*) AS n, count(*) FILTER (WHERE k.failed) AS nf
              FROM unnest(v_cjobs, v_cstages, v_cfailed) k (j, s, failed)
              GROUP BY k.j, k.s) c;
    END IF;

    -- 2. Every writer of a job holds its row lock: take them in one order.
    PERFORM FROM jobs WHERE jobs.id = ANY (p_jobs) ORDER BY jobs.id FOR UPDATE;

    -- 3. The entries as they stand under the locks (each statement here
    -- takes its snapshot after them): what each one counts.
    SELECT array_agg(e.has_job ORDER BY e.i), array_agg(e.has_stage ORDER BY e.i),
           array_agg(e.open ORDER BY e.i), array_agg(e.before ORDER BY e.i),
           array_agg(CASE WHEN e.open THEN e.c + e.kc ELSE 0 END ORDER BY e.i),
           array_agg(CASE WHEN e.open THEN e.f + e.kf ELSE 0 END ORDER BY e.i)
    INTO v_has_job, v_has_stage, v_open, v_before, v_c, v_f
    FROM (
        SELECT d.i, d.c, d.f, st.status AS before,
               jb.id IS NOT NULL AS has_job, st.name IS NOT NULL AS has_stage,
               coalesce(jb.status IN ('pending', 'in_progress')
                        AND st.status NOT IN ('completed', 'failed'), false) AS open,
               coalesce(k.n - k.nf, 0) AS kc, coalesce(k.nf, 0) AS kf
        FROM unnest(p_jobs, p_stages, p_completed, p_failed) WITH ORDINALITY d (j, s, c, f, i)
        LEFT JOIN jobs jb ON jb.id = d.j
        LEFT JOIN stages st ON st.job_id = d.j AND st.name = d.s
        LEFT JOIN unnest(v_kjobs, v_kstages, v_kall, v_kfailed) k (j, s, n, nf)
          ON k.j = d.j AND k.s = d.s
    ) e;

    -- Keys claimed for an entry that counts nothing go again (those this
    -- call claimed, no other writer's).
    IF v_kjobs IS NOT NULL AND false = ANY (v_open) THEN
        DELETE FROM item_keys ik
        USING unnest(v_cjobs, v_cstages, v_ckeys) c (j, s, k),
              unnest(p_jobs, p_stages, v_open) d (j, s, open)
        WHERE NOT d.open AND c.j = d.j AND c.s = d.s
          AND ik.job_id = c.j AND ik.stage = c.s AND ik.item_key = c.k;
    END IF;

    -- 4. The stages: counted with the stage rules; an ended one gets its
    -- completed_at.
    WITH counted AS (
        UPDATE stages st SET
            completed_items = st.completed_items + d.c,
            failed_items = st.failed_items + d.f,
            status = jobtrack_stage_status(st.total_items, st.completed_items + d.c,
                                           st.failed_items + d.f, st.total_final, true),
            started_at = coalesce(st.started_at, p_now),
            completed_at = CASE
                WHEN jobtrack_stage_status(st.total_items, st.completed_items + d.c,
                                           st.failed_items + d.f, st.total_final, true)
                     IN ('completed', 'failed') THEN p_now
                ELSE st.completed_at END
        FROM unnest(p_jobs, p_stages, v_c, v_f, v_before) WITH ORDINALITY d (j, s, c, f, before, i)
        WHERE d.c + d.f > 0 AND st.job_id = d.j AND st.name = d.s
        RETURNING d.i, st.job_id, st.status, d.before
    )
    SELECT array_agg(DISTINCT counted.job_id),
           array_agg(DISTINCT counted.job_id) FILTER (
               WHERE counted.status IN ('completed', 'failed') OR counted.before = 'pending'),
           (SELECT array_agg(coalesce(x.ended, false) ORDER BY x.i)
            FROM (SELECT g.i, c2.status IN ('completed', 'failed') AS ended
                  FROM generate_series(1, v_n) g (i)
                  LEFT JOIN counted c2 ON c2.i = g.i) x)
    INTO v_touched, v_moved, v_ended
    FROM counted;

    -- 5. The jobs written: touched, and settled when a stage of theirs ended
    -- or left pending; one UPDATE each.
    IF v_touched IS NOT NULL THEN
        WITH derived AS (
            SELECT st.job_id,
                   CASE
                       WHEN bool_and(st.status = 'completed') THEN 'completed'
                       WHEN bool_and(st.status IN ('completed', 'failed')) THEN 'failed'
                       WHEN min(jb.status) = 'pending' AND bool_and(st.status = 'pending')
                           THEN 'pending'
                       ELSE 'in_progress'
                   END AS status
            FROM stages st JOIN jobs jb ON jb.id = st.job_id
            WHERE v_moved IS NOT NULL AND st.job_id = ANY (v_moved)
            GROUP BY st.job_id
        ),
        touched AS (
            UPDATE jobs jb SET
                updated_at = p_now,
                status = coalesce(derived.status, jb.status),
                completed_at = CASE
                    WHEN derived.status IS NULL OR derived.status = jb.status THEN jb.completed_at
                    WHEN derived.status IN ('completed', 'failed') THEN p_now
                END
            FROM unnest(v_touched) t (id)
            LEFT JOIN derived ON derived.job_id = t.id
            WHERE jb.id = t.id
            RETURNING jb.id, jb.status
        )
        SELECT array_agg(touched.id) FILTER (WHERE touched.status IN ('completed', 'failed'))
        INTO v_done
        FROM touched;
        -- A job that ended forgets its keys.
        IF v_done IS NOT NULL THEN
            DELETE FROM item_keys WHERE item_keys.job_id = ANY (v_done);
        END IF;
    END IF;

    -- 6. One row per entry, in entry order. The job status an entry reports
    -- when it ended its stage: what settling after it gave, entry by entry.
    -- Before the job's last ending entry another of its stages is still
    -- open, so that is in_progress.
    RETURN QUERY
    SELECT
        CASE WHEN NOT d.has_job THEN 'no_job'
             WHEN NOT d.has_stage THEN 'no_stage'
             ELSE 'ok' END,
        d.c + d.f,
        st.name, st.status, st.total_items, st.completed_items, st.failed_items,
        st.total_final, st.message, st.started_at, st.completed_at,
        CASE
            WHEN NOT d.ended THEN NULL
            WHEN d.i = max(d.i) FILTER (WHERE d.ended) OVER (PARTITION BY d.j) THEN jb.status
            ELSE 'in_progress'
        END
    FROM unnest(p_jobs, p_stages, v_has_job, v_has_stage, v_c, v_f, v_ended)
         WITH ORDINALITY d (j, s, has_job, has_stage, c, f, ended, i)
    LEFT JOIN stages st ON d.has_stage AND st.job_id = d.j AND st.name = d.s
    LEFT JOIN jobs jb ON d.ended AND jb.id = d.j
    ORDER BY d.i;
END $$;

-- One stage's progress, for the per-item path and for a batch naming a
-- stage twice: the keys claimed first, in order and with no lock held, as
-- above; then the job locked, the items counted with the stage rules, the
-- job touched, and its status re-derived when the stage changed. found is
-- ok, no_job or no_stage; counted is how many items counted.
CREATE OR REPLACE FUNCTION jobtrack_add(
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
    v_claimed text[];
BEGIN
    -- A key given as completed and as failed counts as completed; the
    -- failed keys are claimed together with the completed ones, so that
    -- all are claimed in one order.
    IF coalesce(cardinality(p_failed_keys), 0) = 0
       AND coalesce(cardinality(p_completed_keys), 0) > 0 THEN
        -- Completed keys only: the usual case, one statement.
        WITH claimed AS (
            INSERT INTO item_keys
            SELECT p_job, p_stage, k FROM unnest(p_completed_keys) k
            ORDER BY k COLLATE "C"
            ON CONFLICT DO NOTHING
            RETURNING item_key
        )
        SELECT array_agg(claimed.item_key) INTO v_claimed FROM claimed;
        v_new_completed := coalesce(cardinality(v_claimed), 0);
    ELSIF coalesce(cardinality(p_completed_keys), 0)
          + coalesce(cardinality(p_failed_keys), 0) > 0 THEN
        WITH claimed AS (
            INSERT INTO item_keys
            SELECT p_job, p_stage, k
            FROM unnest(coalesce(p_completed_keys, '{}') || coalesce(p_failed_keys, '{}')) k
            ORDER BY k COLLATE "C"
            ON CONFLICT DO NOTHING
            RETURNING item_key
        ),
        failed_only AS (
            SELECT f.k FROM unnest(p_failed_keys) f (k)
            EXCEPT
            SELECT c.k FROM unnest(p_completed_keys) c (k)
        )
        SELECT count(*) - count(failed_only.k), count(failed_only.k),
               array_agg(claimed.item_key)
        INTO v_new_completed, v_new_failed, v_claimed
        FROM claimed LEFT JOIN failed_only ON failed_only.k = claimed.item_key;
    END IF;
    SELECT j.status INTO v_job FROM jobs j WHERE j.id = p_job FOR UPDATE;
    IF NOT FOUND THEN
        IF v_new_completed + v_new_failed > 0 THEN
            DELETE FROM item_keys ik WHERE ik.job_id = p_job AND ik.stage = p_stage
                AND ik.item_key = ANY (v_claimed);
        END IF;
        RETURN QUERY SELECT 'no_job', 0::bigint, NULL, NULL, NULL::bigint, NULL::bigint,
            NULL::bigint, NULL::boolean, NULL, NULL::timestamptz, NULL::timestamptz, NULL;
        RETURN;
    END IF;
    SELECT * INTO v_stage FROM stages s WHERE s.job_id = p_job AND s.name = p_stage FOR UPDATE;
    IF NOT FOUND THEN
        IF v_new_completed + v_new_failed > 0 THEN
            DELETE FROM item_keys ik WHERE ik.job_id = p_job AND ik.stage = p_stage
                AND ik.item_key = ANY (v_claimed);
        END IF;
        RETURN QUERY SELECT 'no_stage', 0::bigint, NULL, NULL, NULL::bigint, NULL::bigint,
            NULL::bigint, NULL::boolean, NULL, NULL::timestamptz, NULL::timestamptz, NULL;
        RETURN;
    END IF;
    IF v_job IN ('pending', 'in_progress') AND v_stage.status NOT IN ('completed', 'failed') THEN
        v_new_completed := v_new_completed + p_completed;
        v_new_failed := v_new_failed + p_failed;
    ELSE
        IF v_new_completed + v_new_failed > 0 THEN
            DELETE FROM item_keys ik WHERE ik.job_id = p_job AND ik.stage = p_stage
                AND ik.item_key = ANY (v_claimed);
        END IF;
        v_new_completed := 0;
        v_new_failed := 0;
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
