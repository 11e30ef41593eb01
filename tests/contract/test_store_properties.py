"""Every backend follows the pure rules exactly, op for op (differential test)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from jobtrack.errors import InvalidRequest
from jobtrack.model import Job, JobStatus, Stage, StageCounts
from jobtrack.store import InMemoryJobStore, JobStore, SqliteJobStore, StageProgress
from tests.conftest import FrozenClock
from tests.postgres import database_url, new_schema
from tests.unit.test_rules import STAGES, Op, increments, raises, seals


@dataclass(frozen=True)
class StoreOp:
    """An operation only stores have: start, end, reconcile."""

    kind: str  # "start", "end", "counts" or "batch"
    stage: int = 0
    status: JobStatus = JobStatus.CANCELLED
    counts: StageCounts = field(default_factory=lambda: StageCounts(0, 0, 0))
    completed_keys: tuple[str, ...] = ()
    failed_keys: tuple[str, ...] = ()


counts = st.builds(
    StageCounts,
    total_items=st.integers(0, 6),
    completed_items=st.integers(0, 6),
    failed_items=st.integers(0, 3),
    total_final=st.booleans(),
)
store_ops = st.one_of(
    st.builds(StoreOp, kind=st.just("start"), stage=st.integers(0, 2)),
    st.builds(
        StoreOp,
        kind=st.just("end"),
        status=st.sampled_from([JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED]),
    ),
    st.builds(StoreOp, kind=st.just("counts"), stage=st.integers(0, 2), counts=counts),
    st.builds(
        StoreOp,
        kind=st.just("batch"),
        stage=st.integers(0, 2),
        counts=counts,
        completed_keys=st.lists(st.sampled_from("abcde"), max_size=4).map(tuple),
        failed_keys=st.lists(st.sampled_from("abcde"), max_size=3).map(tuple),
    ),
)
# Ending a job is rare, so most sequences keep going after it.
operations = st.lists(st.one_of(increments, increments, raises, seals, store_ops), max_size=50)


def snapshot(job: Job) -> tuple[object, ...]:
    stages = tuple(
        (
            s.status,
            s.total_items,
            s.completed_items,
            s.failed_items,
            s.total_final,
            s.message,
            s.started_at,
            s.completed_at,
        )
        for s in job.stages.values()
    )
    return job.status, job.message, job.updated_at, job.completed_at, stages


async def apply(store: JobStore, job_id: str, op: Op | StoreOp, key: str | None) -> str:
    name = STAGES[op.stage]
    try:
        if isinstance(op, StoreOp):
            if op.kind == "start":
                await store.start_stage(job_id, name, message="started")
            elif op.kind == "end":
                await store.end_job(job_id, op.status, message="ended")
            elif op.kind == "batch":
                [result] = await store.add_progress(
                    [
                        StageProgress(
                            job_id,
                            name,
                            completed=op.counts.completed_items % 3,
                            failed=op.counts.failed_items % 2,
                            completed_keys=op.completed_keys,
                            failed_keys=op.failed_keys,
                        )
                    ]
                )
                return f"counted={result.counted} ended={result.job_status}"
            else:
                await store.set_counts(job_id, {name: op.counts})
        elif op.kind == "inc":
            one = await store.increment(
                job_id, name, completed=op.completed, failed=op.failed, item_key=key
            )
            return f"counted={one.counted} ended={one.job_status}"
        elif op.kind == "raise":
            await store.raise_total(job_id, name, by=op.completed)
        else:
            await store.seal_total(job_id, name)
    except InvalidRequest as exc:
        return type(exc).__name__
    return "ok"


async def replay(
    store: JobStore, clock: FrozenClock, ops: list[Op | StoreOp], keys: list[str | None]
) -> None:
    """Apply the operations to ``store`` and to the reference, comparing each step."""
    reference = InMemoryJobStore(clock=clock)
    ref_job = await reference.create_job("t", STAGES)
    job = await store.create_job("t", STAGES)
    seq, ref_seq = job.seq, ref_job.seq
    for op, key in zip(ops, keys, strict=False):
        clock.advance(0.001)
        expected = await apply(reference, ref_job.id, op, key)
        assert await apply(store, job.id, op, key) == expected
        now, ref_now = await store.get_job(job.id), await reference.get_job(ref_job.id)
        assert snapshot(now) == snapshot(ref_now)
        # The job is written (its seq moves on) exactly when the reference's is.
        assert (now.seq > seq, now.seq >= seq) == (ref_now.seq > ref_seq, True)
        seq, ref_seq = now.seq, ref_now.seq


KEYS = st.lists(st.sampled_from(["a", "b", "c", None]), min_size=50)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations, keys=KEYS)
async def test_sqlite_matches_the_reference(
    ops: list[Op | StoreOp], keys: list[str | None]
) -> None:
    clock = FrozenClock()  # one reading per operation, the same for both stores
    sqlite = SqliteJobStore.open(":memory:", clock=clock)
    try:
        await replay(sqlite, clock, ops, keys)
    finally:
        await sqlite.aclose()


@pytest.fixture(scope="module")
def postgres_url(postgres_database: str) -> str:
    """One schema for every example: each example makes its own job."""
    return database_url(postgres_database, schema=new_schema(postgres_database))


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(ops=operations, keys=KEYS)
async def test_postgres_matches_the_reference(
    postgres_url: str, ops: list[Op | StoreOp], keys: list[str | None]
) -> None:
    from jobtrack.store.postgres import PostgresJobStore

    clock = FrozenClock()
    store = PostgresJobStore(postgres_url, clock=clock, max_size=1)
    try:
        await replay(store, clock, ops, keys)
    finally:
        await store.aclose()


# Batches over several jobs: entries for up to three jobs (and an unknown
# one), three stages (and an unknown one), with keys; a batch may name the
# same stage twice. PostgreSQL applies a batch without repeats in one
# statement, and a batch with repeats entry by entry: both must give what
# the reference gives, entry by entry.
entries = st.lists(
    st.tuples(
        st.integers(0, 3),  # job (3: unknown)
        st.integers(0, 3),  # stage (3: unknown)
        st.integers(0, 2),  # completed
        st.integers(0, 1),  # failed
        st.lists(st.sampled_from("abcdef"), max_size=4),
        st.lists(st.sampled_from("abcdef"), max_size=2),
    ),
    min_size=1,
    max_size=9,
)
setup = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)), max_size=9
)  # (job, stage, total): raise the stage's total by that much and seal it


async def replay_batches(
    store: JobStore,
    clock: FrozenClock,
    seals: list[tuple[int, int, int]],
    cancelled: list[int],
    batches: list[list[tuple[int, int, int, int, list[str], list[str]]]],
) -> None:
    reference = InMemoryJobStore(clock=clock)
    pairs = []
    for _ in range(3):
        pairs.append(
            ((await store.create_job("t", STAGES)).id, (await reference.create_job("t", STAGES)).id)
        )
    # The store orders a batch by job id; give both stores that order.
    pairs.sort()
    pairs.append(("no-such-job", "no-such-job"))
    names = [*STAGES, "no-such-stage"]
    for job, stage, total in seals:
        for target, side in ((store, 0), (reference, 1)):
            if not (await target.get_job(pairs[job][side])).stage(names[stage]).total_final:
                await target.raise_total(pairs[job][side], names[stage], by=total)
                await target.seal_total(pairs[job][side], names[stage])
    for job in cancelled:
        await store.end_job(pairs[job][0], JobStatus.CANCELLED)
        await reference.end_job(pairs[job][1], JobStatus.CANCELLED)
    for unsorted in batches:
        clock.advance(0.001)
        batch = sorted(unsorted, key=lambda e: (e[0], names[e[1]]))
        outcomes = []
        for target, side in ((store, 0), (reference, 1)):
            progress = [
                StageProgress(
                    pairs[j][side],
                    names[s],
                    completed=c,
                    failed=f,
                    completed_keys=ck,
                    failed_keys=fk,
                )
                for j, s, c, f, ck, fk in batch
            ]
            outcomes.append(
                [
                    (
                        r.counted,
                        r.job_status,
                        r.refused is None,
                        r.stage and snapshot_stage(r.stage),
                    )
                    for r in await target.add_progress(progress)
                ]
            )
        got, expected = outcomes
        assert got == expected
        for pg_id, ref_id in pairs[:3]:
            assert snapshot(await store.get_job(pg_id)) == snapshot(await reference.get_job(ref_id))


def snapshot_stage(s: Stage) -> tuple[object, ...]:
    return (
        s.name,
        s.status,
        s.total_items,
        s.completed_items,
        s.failed_items,
        s.total_final,
        s.started_at,
        s.completed_at,
    )


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    seals=setup,
    cancelled=st.lists(st.integers(0, 2), max_size=1),
    batches=st.lists(entries, min_size=1, max_size=6),
)
# Two stages of one job end in one batch: only the second ends the job.
# (Three entries: a batch of two or fewer goes entry by entry.)
@example(
    seals=[(0, 0, 1), (0, 1, 1), (0, 2, 0)],
    cancelled=[],
    batches=[[(0, 0, 1, 0, [], []), (0, 1, 1, 0, [], []), (1, 0, 1, 0, ["k"], ["k", "j", "j"])]],
)
async def test_postgres_batches_match_the_reference(
    postgres_url: str,
    seals: list[tuple[int, int, int]],
    cancelled: list[int],
    batches: list[list[tuple[int, int, int, int, list[str], list[str]]]],
) -> None:
    from jobtrack.store.postgres import PostgresJobStore

    clock = FrozenClock()
    store = PostgresJobStore(postgres_url, clock=clock, max_size=1)
    try:
        await replay_batches(store, clock, seals, cancelled, batches)
    finally:
        await store.aclose()
