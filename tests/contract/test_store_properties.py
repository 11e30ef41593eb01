"""Every backend follows the pure rules exactly, op for op (differential test)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobtrack.errors import InvalidRequest
from jobtrack.model import Job
from jobtrack.store import InMemoryJobStore, JobStore, SqliteJobStore
from tests.unit.test_rules import STAGES, Op, operations


def snapshot(job: Job) -> tuple[object, ...]:
    stages = tuple(
        (s.status, s.total_items, s.completed_items, s.failed_items, s.total_final)
        for s in job.stages.values()
    )
    return job.status, stages


async def apply(store: JobStore, job_id: str, op: Op, key: str | None) -> str:
    name = STAGES[op.stage]
    try:
        if op.kind == "inc":
            result = await store.increment(
                job_id, name, completed=op.completed, failed=op.failed, item_key=key
            )
            return f"counted={result.counted}"
        if op.kind == "raise":
            await store.raise_total(job_id, name, by=op.completed)
        else:
            await store.seal_total(job_id, name)
    except InvalidRequest as exc:
        return type(exc).__name__
    return "ok"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations, keys=st.lists(st.sampled_from(["a", "b", "c", None]), min_size=60))
async def test_sqlite_matches_the_reference(ops: list[Op], keys: list[str | None]) -> None:
    reference = InMemoryJobStore()
    sqlite = SqliteJobStore.open(":memory:")
    try:
        ref_job = await reference.create_job("t", STAGES)
        sql_job = await sqlite.create_job("t", STAGES)
        for op, key in zip(ops, keys, strict=False):
            expected = await apply(reference, ref_job.id, op, key)
            assert await apply(sqlite, sql_job.id, op, key) == expected
            assert snapshot(await sqlite.get_job(sql_job.id)) == snapshot(
                await reference.get_job(ref_job.id)
            )
    finally:
        await sqlite.aclose()
