-- Small flushes on cached generic plans.
--
-- jobtrack_add_many plans each of its statements afresh on every call
-- (force_custom_plan), so that a flush of thousands of stages gets plans
-- sized for its arrays: a generic plan guesses at their sizes, and once
-- chose nested loops that took 21 s instead of 0.4 s for 10,000 stages.
-- Most flushes are small: a worker writes the items of one job's stage,
-- tens to hundreds of keys every 100 ms. For those, planning was most of
-- the cost: about 1.5 ms of server CPU per call against 0.7 ms on cached
-- generic plans (one stage and one key), and 2.7 ms against 1.45 ms (one
-- stage, 100 keys).
--
-- jobtrack_flush takes the same arguments and returns the same rows. It
-- runs jobtrack_add_many on generic plans, planned once per connection,
-- for a batch of at most 16 stages and 2,000 keys, and on custom plans, as
-- before, for a larger one. The plan mode is set for the call alone
-- (set_config(..., true) inside a function with its own SET clause is
-- undone when the function returns), and jobtrack_add_many no longer sets
-- one of its own, so that it plans as its caller says.

ALTER FUNCTION jobtrack_add_many(
    text[], text[], bigint[], bigint[], text[], integer[], integer[], text[], integer[],
    integer[], timestamptz
) RESET plan_cache_mode;

CREATE FUNCTION jobtrack_flush(
    p_jobs text[], p_stages text[], p_completed bigint[], p_failed bigint[],
    p_ckeys text[], p_cstart integer[], p_ccount integer[],
    p_fkeys text[], p_fstart integer[], p_fcount integer[], p_now timestamptz
) RETURNS TABLE (
    found text, counted bigint, name text, status text, total_items bigint,
    completed_items bigint, failed_items bigint, total_final boolean, message text,
    started_at timestamptz, completed_at timestamptz, job_status text
) LANGUAGE plpgsql
SET plan_cache_mode = force_custom_plan
SET jit = off
AS $$
BEGIN
    IF coalesce(cardinality(p_jobs), 0) <= 16
       AND coalesce(cardinality(p_ckeys), 0) + coalesce(cardinality(p_fkeys), 0) <= 2000 THEN
        PERFORM set_config('plan_cache_mode', 'force_generic_plan', true);
    END IF;
    RETURN QUERY SELECT * FROM jobtrack_add_many(
        p_jobs, p_stages, p_completed, p_failed, p_ckeys, p_cstart, p_ccount,
        p_fkeys, p_fstart, p_fcount, p_now);
END $$;
