"""The store contract: the same bodies against every backend."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from jobtrack.errors import (
    Conflict,
    InvalidIncrement,
    InvalidRequest,
    JobNotFound,
    StageNotFound,
)
from jobtrack.model import JobStatus, StageCounts, StageStatus
from jobtrack.store import ChangeCursor, JobQuery, JobStore, StageProgress
from tests.conftest import SteppingClock

STAGES = ("scan", "thumbnail", "cache")


async def test_each_store_names_its_backend(store: JobStore) -> None:
    names = {
        "InMemoryJobStore": "memory",
        "SqliteJobStore": "sqlite",
        "PostgresJobStore": "postgres",
    }
    assert store.backend == type(store).backend == names[type(store).__name__]
    assert isinstance(store, JobStore)


async def test_create_and_get(store: JobStore) -> None:
    job = await store.create_job("collection-scan", STAGES, attributes={"collection": {"id": "c1"}})
    fetched = await store.get_job(job.id)
    assert fetched == job
    assert fetched.status is JobStatus.PENDING
    assert list(fetched.stages) == list(STAGES)
    assert all(s.status is StageStatus.PENDING for s in fetched.stages.values())
    assert fetched.to_dict()["collection"] == {"id": "c1"}


@pytest.mark.parametrize(
    ("job_type", "stages", "attributes"),
    [("", ["a"], None), ("t", [], None), ("t", ["a", "a"], None), ("t", ["a"], {"status": 1})],
)
async def test_create_refuses_bad_jobs(
    store: JobStore, job_type: str, stages: list[str], attributes: dict[str, int] | None
) -> None:
    with pytest.raises(InvalidRequest):
        await store.create_job(job_type, stages, attributes=attributes)
    assert await store.list_jobs() == []


async def test_unknown_job_and_stage(store: JobStore) -> None:
    job = await store.create_job("t", ["a"])
    with pytest.raises(JobNotFound):
        await store.get_job("nope")
    with pytest.raises(JobNotFound):
        await store.increment("nope", "a")
    with pytest.raises(JobNotFound):
        await store.increment("nope", "a", item_key="k")
    with pytest.raises(StageNotFound):
        await store.increment(job.id, "b")
    with pytest.raises(StageNotFound):
        await store.increment(job.id, "b", item_key="k")
    with pytest.raises(StageNotFound):
        await store.raise_total(job.id, "b", by=1)
    # The refused keyed increment kept no key: the real stage still counts it.
    assert (await store.get_job(job.id)).stage("a").completed_items == 0


@pytest.mark.parametrize(("completed", "failed"), [(-1, 0), (0, -1), (0, 0), (10**7, 0)])
async def test_bad_increments_are_refused(store: JobStore, completed: int, failed: int) -> None:
    job = await store.create_job("t", ["a"])
    with pytest.raises(InvalidIncrement):
        await store.increment(job.id, "a", completed=completed, failed=failed)
    assert (await store.get_job(job.id)).stage("a").completed_items == 0


async def test_increment_starts_stage_and_job(store: JobStore) -> None:
    job = await store.create_job("t", ["a", "b"])
    result = await store.increment(job.id, "a")
    assert result.counted
    assert result.stage.status is StageStatus.IN_PROGRESS
    assert result.stage.completed_items == 1
    assert result.job_status is None
    after = await store.get_job(job.id)
    assert after.status is JobStatus.IN_PROGRESS
    assert after.stage("a").started_at is not None
    assert after.stage("b").status is StageStatus.PENDING


async def test_item_key_counts_once(store: JobStore) -> None:
    job = await store.create_job("t", ["a", "b"])
    for key in ["x", "y", "x", "z", "y", "x"]:
        await store.increment(job.id, "a", item_key=key)
    duplicate = await store.increment(job.id, "a", item_key="z")
    assert not duplicate.counted
    assert duplicate.stage.completed_items == 3
    # The same key on another stage is another item.
    assert (await store.increment(job.id, "b", item_key="x")).counted
    assert (await store.get_job(job.id)).stage("b").completed_items == 1


async def test_stage_waits_for_seal(store: JobStore) -> None:
    job = await store.create_job("t", ["a"])
    await store.raise_total(job.id, "a", by=2)
    await store.increment(job.id, "a")
    await store.increment(job.id, "a")
    await store.increment(job.id, "a")  # ahead of the scanner's next raise
    stage = (await store.get_job(job.id)).stage("a")
    assert (stage.status, stage.completed_items, stage.total_items) == (
        StageStatus.IN_PROGRESS,
        3,
        2,
    )
    await store.raise_total(job.id, "a", by=1)
    assert (await store.get_job(job.id)).status is JobStatus.IN_PROGRESS
    sealed = await store.seal_total(job.id, "a")
    assert sealed.status is StageStatus.COMPLETED
    assert sealed.completed_at is not None
    done = await store.get_job(job.id)
    assert done.status is JobStatus.COMPLETED
    assert done.completed_at is not None


async def test_sealed_total_cannot_be_raised(store: JobStore) -> None:
    job = await store.create_job("t", ["a"])
    await store.seal_total(job.id, "a", total=5)
    with pytest.raises(InvalidRequest):
        await store.raise_total(job.id, "a", by=1)
    assert (await store.get_job(job.id)).stage("a").total_items == 5


async def test_completion_with_failures_and_all_failed(store: JobStore) -> None:
    job = await store.create_job("t", ["a", "b"])
    await store.seal_total(job.id, "a", total=2)
    await store.seal_total(job.id, "b", total=2)
    await store.increment(job.id, "a", failed=1)
    last = await store.increment(job.id, "a")
    assert last.stage.status is StageStatus.COMPLETED
    assert last.job_status is JobStatus.IN_PROGRESS
    ending = await store.increment(job.id, "b", failed=2)
    assert ending.job_status is JobStatus.FAILED
    final = await store.get_job(job.id)
    assert final.stage("b").status is StageStatus.FAILED
    assert final.status is JobStatus.FAILED


async def test_terminal_stage_counts_nothing_more(store: JobStore) -> None:
    job = await store.create_job("t", ["a", "b"])
    await store.seal_total(job.id, "a", total=1)
    await store.increment(job.id, "a", item_key="1")
    late = await store.increment(job.id, "a", item_key="2")
    assert not late.counted
    assert late.stage.completed_items == 1
    unkeyed = await store.increment(job.id, "a")
    assert not unkeyed.counted
    assert (await store.get_job(job.id)).stage("a").completed_items == 1


async def test_empty_sealed_stages_complete_the_job(store: JobStore) -> None:
    job = await store.create_job("t", ["a", "b"])
    await store.seal_total(job.id, "a", total=0)
    assert (await store.get_job(job.id)).status is JobStatus.IN_PROGRESS
    await store.seal_total(job.id, "b")
    assert (await store.get_job(job.id)).status is JobStatus.COMPLETED


async def test_end_job(store: JobStore) -> None:
    job = await store.create_job("t", ["a"])
    with pytest.raises(InvalidRequest):
        await store.end_job(job.id, JobStatus.IN_PROGRESS)
    cancelled, changed = await store.end_job(job.id, JobStatus.CANCELLED, message="user asked")
    assert (changed, cancelled.status, cancelled.message) == (
        True,
        JobStatus.CANCELLED,
        "user asked",
    )
    assert cancelled.completed_at is not None
    assert cancelled == await store.get_job(job.id)
    again, changed = await store.end_job(job.id, JobStatus.FAILED, message="too late")
    assert (changed, again) == (False, cancelled)
    with pytest.raises(JobNotFound):
        await store.end_job("nope", JobStatus.FAILED)


async def test_list_filters_and_pages(store: JobStore) -> None:
    made = [await store.create_job("a" if i % 2 else "b", ["s"]) for i in range(7)]
    await store.end_job(made[0].id, JobStatus.CANCELLED)
    newest_first = [job.id for job in reversed(made)]
    assert [j.id for j in await store.list_jobs(JobQuery(limit=3))] == newest_first[:3]
    assert [j.id for j in await store.list_jobs(JobQuery(limit=3, offset=3))] == newest_first[3:6]
    assert [j.id for j in await store.list_jobs(JobQuery(job_type="a"))] == [
        made[5].id,
        made[3].id,
        made[1].id,
    ]
    cancelled = await store.list_jobs(JobQuery(status=JobStatus.CANCELLED))
    assert [j.id for j in cancelled] == [made[0].id]
    assert list(cancelled[0].stages) == ["s"]


async def test_find_stuck(store: JobStore, clock: SteppingClock) -> None:
    old = await store.create_job("collection-scan", ["a"])
    moving = await store.create_job("collection-scan", ["a"])
    other_type = await store.create_job("other", ["a"])
    ended = await store.create_job("collection-scan", ["a"])
    await store.end_job(ended.id, JobStatus.FAILED)
    clock.advance(600)
    await store.increment(moving.id, "a")
    threshold = clock.now - timedelta(seconds=300)
    stuck = await store.find_stuck("collection-scan", updated_before=threshold)
    assert [job.id for job in stuck] == [old.id]
    assert other_type.id not in [
        j.id for j in await store.find_stuck("other", updated_before=old.created_at)
    ]
    # The boundary: updated exactly at the threshold is not older than it.
    assert await store.find_stuck("collection-scan", updated_before=old.updated_at) == []


async def test_find_stuck_orders_and_limits(store: JobStore, clock: SteppingClock) -> None:
    made = [await store.create_job("t", ["a"]) for _ in range(5)]
    await store.increment(made[0].id, "a")  # now the most recently updated
    stuck = await store.find_stuck("t", updated_before=clock.now + timedelta(seconds=1), limit=3)
    assert [j.id for j in stuck] == [made[1].id, made[2].id, made[3].id]


async def test_set_counts_up_and_down(store: JobStore) -> None:
    job = await store.create_job("t", ["a", "b"])
    for _ in range(5):
        await store.increment(job.id, "a")
    job = await store.set_counts(
        job.id, {"a": StageCounts(4, 3, 1), "b": StageCounts(4, 0, 0, total_final=False)}
    )
    a, b = job.stage("a"), job.stage("b")
    assert (a.status, a.total_items, a.completed_items, a.failed_items, a.total_final) == (
        StageStatus.COMPLETED,
        4,
        3,
        1,
        True,
    )
    assert (b.status, b.total_items, b.total_final) == (StageStatus.PENDING, 4, False)
    assert job.status is JobStatus.IN_PROGRESS
    job = await store.set_counts(job.id, {"b": StageCounts(4, 4, 0)})
    assert job.status is JobStatus.COMPLETED
    with pytest.raises(StageNotFound):
        await store.set_counts(job.id, {"zzz": StageCounts(1, 1, 0)})


async def test_count_items_sums_a_stage_over_every_job_of_a_type(store: JobStore) -> None:
    assert await store.count_items("t", "a") == 0
    first = await store.create_job("t", ["a", "b"])
    second = await store.create_job("t", ["a"])
    other = await store.create_job("u", ["a"])
    await store.increment(first.id, "a", completed=3, failed=1)
    await store.increment(first.id, "b", completed=5)
    await store.increment(second.id, "a", completed=2)
    await store.increment(other.id, "a", completed=7)
    await store.end_job(second.id, JobStatus.CANCELLED)  # ended jobs count too
    assert await store.count_items("t", "a") == 6
    assert await store.count_items("t", "b") == 5
    assert await store.count_items("u", "a") == 7
    assert await store.count_items("u", "b") == 0
    assert await store.count_items("v", "a") == 0


async def test_job_updated_at_moves_with_every_write(store: JobStore, clock: SteppingClock) -> None:
    job = await store.create_job("t", ["a"])
    clock.advance(10)
    await store.increment(job.id, "a")
    after = await store.get_job(job.id)
    assert after.updated_at > job.updated_at + timedelta(seconds=9)


async def test_an_ended_job_counts_nothing_more(store: JobStore) -> None:
    job = await store.create_job("t", ["a"])
    await store.increment(job.id, "a", item_key="1")
    await store.end_job(job.id, JobStatus.CANCELLED)
    for key in ("1", "1", "2", None):
        assert not (await store.increment(job.id, "a", item_key=key)).counted
    assert (await store.get_job(job.id)).stage("a").completed_items == 1


async def test_a_sealed_total_is_not_resealed_to_another(store: JobStore) -> None:
    job = await store.create_job("t", ["a"])
    await store.seal_total(job.id, "a", total=2)
    assert (await store.seal_total(job.id, "a")).total_items == 2
    assert (await store.seal_total(job.id, "a", total=2)).total_items == 2
    with pytest.raises(InvalidRequest, match="sealed at 2"):
        await store.seal_total(job.id, "a", total=1)
    assert (await store.get_job(job.id)).stage("a").total_items == 2


async def test_set_counts_is_all_or_nothing(store: JobStore) -> None:
    job = await store.create_job("t", ["a"])
    with pytest.raises(StageNotFound):
        await store.set_counts(job.id, {"a": StageCounts(1, 1, 0), "zzz": StageCounts(1, 1, 0)})
    after = await store.get_job(job.id)
    assert after.stage("a").completed_items == 0
    assert after.status is JobStatus.PENDING


async def test_add_progress_counts_keys_once_across_and_within_batches(store: JobStore) -> None:
    job = await store.create_job("t", ["a", "b"])
    first = await store.add_progress(
        [
            StageProgress(job.id, "a", completed=2, completed_keys=["x", "y", "x"]),
            StageProgress(job.id, "b", failed_keys=["x"]),
        ]
    )
    assert [(r.counted, r.refused) for r in first] == [(4, None), (1, None)]
    second = await store.add_progress(
        [StageProgress(job.id, "a", completed_keys=["y", "z"], failed_keys=["x", "w"])]
    )
    assert second[0].counted == 2  # z and w are new; x and y were counted already
    a, b = (await store.get_job(job.id)).stages.values()
    assert (a.completed_items, a.failed_items) == (5, 1)
    assert (b.completed_items, b.failed_items) == (0, 1)


async def test_add_progress_refuses_unknown_entries_alone(store: JobStore) -> None:
    job = await store.create_job("t", ["a"])
    results = await store.add_progress(
        [
            StageProgress("nope", "a", completed=1),
            StageProgress(job.id, "zzz", completed=1),
            StageProgress(job.id, "a", completed=3),
        ]
    )
    assert [r.refused for r in results] == [
        "job 'nope' not found",
        f"job {job.id!r} has no stage 'zzz'",
        None,
    ]
    assert [r.stage is None for r in results] == [True, True, False]
    assert (await store.get_job(job.id)).stage("a").completed_items == 3
    [negative] = await store.add_progress([StageProgress(job.id, "a", completed=-1)])
    assert negative.refused == "progress must not be negative: -1, 0"
    with pytest.raises(InvalidIncrement):
        negative.as_increment()


async def test_add_progress_ends_stages_and_the_job_once(store: JobStore) -> None:
    job = await store.create_job("t", ["a", "b"])
    await store.seal_total(job.id, "a", total=2)
    await store.seal_total(job.id, "b", total=1)
    results = await store.add_progress(
        [
            StageProgress(job.id, "a", completed_keys=["1", "2", "3"]),
            StageProgress(job.id, "b", completed_keys=["1"]),
        ]
    )
    assert [(r.counted, r.job_status) for r in results] == [
        (3, JobStatus.IN_PROGRESS),
        (1, JobStatus.COMPLETED),
    ]
    late = await store.add_progress([StageProgress(job.id, "a", completed=1)])
    assert (late[0].counted, late[0].job_status) == (0, None)
    done = await store.get_job(job.id)
    assert done.status is JobStatus.COMPLETED
    assert (done.stage("a").completed_items, done.stage("b").completed_items) == (3, 1)


@pytest.mark.parametrize("key", ["", "nul\x00key", "k" * 1001])
async def test_keys_no_backend_can_hold_are_refused(store: JobStore, key: str) -> None:
    job = await store.create_job("t", ["a"])
    with pytest.raises(InvalidIncrement):
        await store.increment(job.id, "a", item_key=key)
    [refused] = await store.add_progress([StageProgress(job.id, "a", completed_keys=[key])])
    assert refused.stage is None
    with pytest.raises(InvalidIncrement):
        refused.as_increment()
    assert (await store.get_job(job.id)).stage("a").completed_items == 0


async def test_set_counts_with_keys_makes_them_exactly_the_counted_items(store: JobStore) -> None:
    job = await store.create_job("t", ["a", "b"])
    await store.raise_total(job.id, "a", by=4)
    for key in ("x", "y"):
        await store.increment(job.id, "a", item_key=key)
    await store.increment(job.id, "b", item_key="x")
    # The truth: x and z are done (z's increment has not arrived yet); y is not.
    job = await store.set_counts(
        job.id,
        {"a": StageCounts(4, 2, 0, total_final=False)},
        keys={"a": ["x", "z"]},
    )
    assert job.stage("a").completed_items == 2
    late = await store.increment(job.id, "a", item_key="z")  # already counted: nothing
    again = await store.increment(job.id, "a", item_key="y")  # redone: counts now
    untouched = await store.increment(job.id, "b", item_key="x")  # other stage's keys kept
    assert (late.counted, again.counted, untouched.counted) == (False, True, False)
    assert (await store.get_job(job.id)).stage("a").completed_items == 3


async def test_set_counts_with_keys_can_end_the_job(store: JobStore) -> None:
    job = await store.create_job("t", ["a"])
    job = await store.set_counts(job.id, {"a": StageCounts(2, 2, 0)}, keys={"a": ["x", "y"]})
    assert job.status is JobStatus.COMPLETED
    assert not (await store.increment(job.id, "a", item_key="z")).counted  # ended
    with pytest.raises(StageNotFound):
        await store.set_counts(job.id, {}, keys={"zzz": ["x"]})


async def test_events_are_kept_in_order_and_listed_last_first_cut(
    store: JobStore, clock: SteppingClock
) -> None:
    job = await store.create_job("t", ["a"])
    assert await store.list_events(job.id) == []
    first = await store.add_event(job.id, "reconciled", "a 95 → 100", {"a": [95, 100]})
    clock.advance(1)
    await store.add_event(job.id, "redriven", "5 items published again")
    await store.add_event(job.id, "failed", "x" * 5000)
    events = await store.list_events(job.id)
    assert [(e.kind, e.message[:20], dict(e.data)) for e in events] == [
        ("reconciled", "a 95 → 100", {"a": [95, 100]}),
        ("redriven", "5 items published ag", {}),
        ("failed", "x" * 20, {}),
    ]
    assert len(events[2].message) == 2000
    assert events[0] == first
    assert events[0].id < events[1].id < events[2].id
    assert events[0].at < events[1].at
    assert [e.kind for e in await store.list_events(job.id, limit=2)] == ["redriven", "failed"]
    assert events[0].to_dict()["data"] == {"a": [95, 100]}


async def test_events_of_unknown_jobs_and_without_a_kind_are_refused(store: JobStore) -> None:
    with pytest.raises(JobNotFound):
        await store.add_event("nope", "reconciled", "")
    with pytest.raises(JobNotFound):
        await store.list_events("nope")
    job = await store.create_job("t", ["a"])
    with pytest.raises(InvalidRequest):
        await store.add_event(job.id, "", "no kind")
    assert await store.list_events(job.id) == []


async def test_find_stuck_pages_on_updated_at(store: JobStore, clock: SteppingClock) -> None:
    made = [await store.create_job("t", ["a"]) for _ in range(5)]
    before = clock.now + timedelta(seconds=1)
    first = await store.find_stuck("t", updated_before=before, limit=2)
    second = await store.find_stuck(
        "t", updated_before=before, after=(first[-1].updated_at, first[-1].id), limit=2
    )
    third = await store.find_stuck(
        "t", updated_before=before, after=(second[-1].updated_at, second[-1].id), limit=2
    )
    assert [j.id for j in first + second + third] == [j.id for j in made]
    last = (made[-1].updated_at, made[-1].id)
    assert await store.find_stuck("t", updated_before=before, after=last) == []


async def test_find_stuck_pages_through_jobs_updated_at_the_same_moment(
    store: JobStore, clock: SteppingClock
) -> None:
    frozen = clock.now
    made = []
    for _ in range(5):
        clock.now = frozen - timedelta(milliseconds=1)  # every reading gives `frozen`
        made.append(await store.create_job("t", ["a"]))
    assert {j.updated_at for j in made} == {frozen}
    before = frozen + timedelta(seconds=1)
    seen: list[str] = []
    after = None
    while page := await store.find_stuck("t", updated_before=before, after=after, limit=2):
        seen += [j.id for j in page]
        after = (page[-1].updated_at, page[-1].id)
    assert seen == sorted(j.id for j in made)


async def test_claim_stuck_lets_one_claimer_win_and_touches_the_job(
    store: JobStore, clock: SteppingClock
) -> None:
    job = await store.create_job("t", ["a"])
    clock.advance(600)
    claimed = await store.claim_stuck(job.id, job.seq)
    claimed_at = clock.now
    assert claimed is not None
    assert claimed > job.seq
    assert await store.claim_stuck(job.id, job.seq) is None  # the other monitor
    after = await store.get_job(job.id)
    assert (after.seq, after.updated_at) == (claimed, claimed_at)
    assert await store.find_stuck("t", updated_before=after.updated_at) == []
    await store.end_job(job.id, JobStatus.CANCELLED)
    ended = await store.get_job(job.id)
    assert await store.claim_stuck(job.id, ended.seq) is None  # ended: never claimed
    assert await store.claim_stuck("nope", ended.seq) is None


async def test_set_counts_if_seq_refuses_after_an_increment(store: JobStore) -> None:
    job = await store.create_job("t", ["a"])
    seen = job.seq
    await store.increment(job.id, "a", item_key="x")  # arrives while a reconciliation runs
    with pytest.raises(Conflict):
        await store.set_counts(job.id, {"a": StageCounts(1, 0, 0)}, keys={"a": []}, if_seq=seen)
    after = await store.get_job(job.id)
    assert after.stage("a").completed_items == 1
    assert not (await store.increment(after.id, "a", item_key="x")).counted  # key kept
    done = await store.set_counts(
        job.id, {"a": StageCounts(1, 1, 0)}, if_seq=(await store.get_job(job.id)).seq
    )
    assert done.status is JobStatus.COMPLETED


async def test_set_counts_with_keys_alone_writes_the_job(
    store: JobStore, clock: SteppingClock
) -> None:
    """Every backend writes the job on every set_counts, keys alone included:
    its seq and updated_at move, so a compare-and-set by another holder of
    the old seq fails, and the change feed passes the reconciliation on."""
    job = await store.create_job("t", ["a"])
    clock.advance(5)
    written = await store.set_counts(job.id, {}, keys={"a": ["x"]})
    assert written.seq > job.seq
    assert written.updated_at == clock.now
    assert written.stages == job.stages
    assert not (await store.increment(job.id, "a", item_key="x")).counted  # the key is set
    with pytest.raises(Conflict):
        await store.set_counts(job.id, {}, keys={"a": []}, if_seq=job.seq)
    again = await store.set_counts(job.id, {}, if_seq=written.seq)
    assert again.seq > written.seq
    changes = await store.list_changed(after=ChangeCursor(written.seq - 1))
    assert [(j.id, j.seq) for j in changes.jobs] == [(job.id, again.seq)]


async def test_end_job_if_seq_refuses_after_an_increment(store: JobStore) -> None:
    job = await store.create_job("t", ["a"])
    seen = job.seq
    await store.increment(job.id, "a", item_key="x")  # arrives while the monitor decides
    with pytest.raises(Conflict):
        await store.end_job(job.id, JobStatus.FAILED, message="stuck", if_seq=seen)
    moving = await store.get_job(job.id)
    assert (moving.status, moving.message) == (JobStatus.IN_PROGRESS, "")
    assert not (await store.increment(job.id, "a", item_key="x")).counted  # keys kept
    failed, changed = await store.end_job(
        job.id, JobStatus.FAILED, message="stuck", if_seq=moving.seq
    )
    assert (changed, failed.status, failed.message) == (True, JobStatus.FAILED, "stuck")
    assert failed.seq > moving.seq
    # Ended since the token was read: a conflict, as any write since.
    with pytest.raises(Conflict):
        await store.end_job(job.id, JobStatus.CANCELLED, if_seq=moving.seq)
    # With its current token, an ended job stays as it is, and says so.
    again, changed = await store.end_job(job.id, JobStatus.CANCELLED, if_seq=failed.seq)
    assert (changed, again) == (False, failed)


async def test_seq_strictly_increases_with_every_job_write(
    store: JobStore, clock: SteppingClock
) -> None:
    job = await store.create_job("t", ["a", "b"])
    other = await store.create_job("t", ["a"])
    assert 0 < job.seq < other.seq
    seen = [other.seq]

    async def written() -> None:
        now = (await store.get_job(job.id)).seq
        assert now > seen[-1]
        seen.append(now)

    await store.raise_total(job.id, "a", by=3)
    await written()
    await store.start_stage(job.id, "b", message="go")
    await written()
    await store.increment(job.id, "a")
    await written()
    await store.increment(job.id, "a", item_key="k")
    await written()
    await store.add_progress([StageProgress(job.id, "a", completed_keys=["k2"])])
    await written()
    await store.seal_total(job.id, "a")
    await written()
    await store.set_counts(job.id, {"b": StageCounts(1, 0, 0)})
    await written()
    claimed = await store.claim_stuck(job.id, seen[-1])
    assert claimed is not None
    await written()
    assert seen[-1] == claimed
    await store.end_job(job.id, JobStatus.CANCELLED)
    await written()
    # Nothing written: the seq stays.
    await store.add_event(job.id, "note", "an event is no job write")
    await store.end_job(job.id, JobStatus.FAILED)
    assert not (await store.increment(job.id, "b")).counted
    assert (await store.get_job(job.id)).seq == seen[-1]
    assert (await store.get_job(other.id)).seq == other.seq


async def test_list_changed_follows_writes_in_order(store: JobStore, clock: SteppingClock) -> None:
    first = await store.create_job("t", ["a"])
    second = await store.create_job("t", ["a"])
    changed, cursor = await store.list_changed()
    assert [job.id for job in changed] == [first.id, second.id]
    assert cursor.seq == second.seq
    assert (await store.list_changed(after=cursor)).jobs == []
    assert (await store.list_changed(after=cursor)).cursor.seq == cursor.seq
    await store.increment(first.id, "a", item_key="x")
    [moved], moved_cursor = await store.list_changed(after=cursor)
    assert (moved.id, moved.stage("a").completed_items) == (first.id, 1)
    assert moved_cursor.seq == moved.seq > cursor.seq
    page = await store.list_changed(limit=1)
    assert ([j.id for j in page.jobs], page.cursor.seq) == ([second.id], second.seq)
    # A job written twice shows once, at its last write.
    rest = await store.list_changed(after=page.cursor)
    assert [j.id for j in rest.jobs] == [first.id]


async def test_a_write_whose_clock_went_back_still_reaches_the_feed(
    store: JobStore, clock: SteppingClock
) -> None:
    """The feed follows the store's sequence, not the writers' clocks: a
    write stamped before the newest one seen is still read after it."""
    first = await store.create_job("t", ["a"])
    clock.advance(3600)
    second = await store.create_job("t", ["a"])
    cursor = (await store.list_changed()).cursor
    clock.advance(-7200)  # a writer whose clock is two hours behind
    await store.increment(first.id, "a")
    [moved], after = await store.list_changed(after=cursor)
    assert moved.id == first.id
    assert moved.updated_at < second.updated_at
    assert moved.seq > second.seq == cursor.seq
    assert after.seq == moved.seq


async def test_stats_count_jobs_items_events_and_stuck(
    store: JobStore, clock: SteppingClock
) -> None:
    empty = await store.stats(stuck_before=clock.now)
    assert (empty.jobs, empty.items, empty.events, empty.stuck) == ({}, {}, {}, 0)
    old = await store.create_job("t", ["a", "b"])
    await store.increment(old.id, "a", completed=3, failed=1)
    clock.advance(60)
    threshold = clock.now
    recent = await store.create_job("t", ["a"])
    await store.increment(recent.id, "a", completed=2)
    done = await store.create_job("t", ["b"])
    await store.end_job(done.id, JobStatus.CANCELLED)
    await store.add_event(done.id, "cancelled", "by the user")
    await store.add_event(old.id, "reconciled", "a 3 → 4")
    await store.add_event(old.id, "reconciled", "a 4 → 4")
    stats = await store.stats(stuck_before=threshold)
    assert stats.jobs == {"in_progress": 2, "cancelled": 1}
    assert stats.items == {"a": (5, 1), "b": (0, 0)}
    assert stats.events == {"cancelled": 1, "reconciled": 2}
    assert stats.stuck == 1  # the old one


async def test_stats_count_the_active_jobs_left_waiting_behind_a_backlog(
    store: JobStore,
) -> None:
    waiting, redriven, again, ended, other = [await store.create_job("t", ["a"]) for _ in range(5)]
    await store.add_event(waiting.id, "waiting", "behind a backlog")
    await store.add_event(waiting.id, "reconciled", "a 1 → 2")  # not a verdict on waiting
    await store.add_event(redriven.id, "waiting", "behind a backlog")
    await store.add_event(redriven.id, "redriven", "the backlog stalled")
    await store.add_event(again.id, "redriven", "missing items")
    await store.add_event(again.id, "waiting", "behind a backlog")
    await store.add_event(ended.id, "waiting", "behind a backlog")
    await store.end_job(ended.id, JobStatus.CANCELLED)
    await store.add_event(other.id, "reconciled", "a 1 → 2")
    assert (await store.stats(stuck_before=waiting.created_at)).waiting == 2


async def test_recent_events_are_every_jobs_newest_first(store: JobStore) -> None:
    first = await store.create_job("t", ["a"])
    second = await store.create_job("t", ["a"])
    assert await store.recent_events() == []
    await store.add_event(first.id, "reconciled", "one")
    await store.add_event(second.id, "redriven", "two")
    await store.add_event(first.id, "failed", "three")
    recent = await store.recent_events(limit=2)
    assert [(e.job_id, e.kind, e.message) for e in recent] == [
        (first.id, "failed", "three"),
        (second.id, "redriven", "two"),
    ]
    assert [e.message for e in await store.recent_events()] == ["three", "two", "one"]


async def test_last_change_is_the_newest_write(store: JobStore) -> None:
    assert (await store.last_change()).seq == 0
    first = await store.create_job("t", ["a"])
    second = await store.create_job("t", ["a"])
    assert (await store.last_change()).seq == second.seq
    await store.increment(first.id, "a")
    moved = await store.get_job(first.id)
    assert (await store.last_change()).seq == moved.seq > second.seq


async def test_end_job_if_active_says_whether_this_call_ended_it(store: JobStore) -> None:
    job = await store.create_job("t", ["a"])
    await store.raise_total(job.id, "a", by=3)
    await store.increment(job.id, "a", item_key="x")  # written since any read: no matter
    with pytest.raises(InvalidRequest):
        await store.end_job_if_active(job.id, JobStatus.IN_PROGRESS)
    cancelled, changed = await store.end_job_if_active(
        job.id, JobStatus.CANCELLED, message="user asked"
    )
    assert (changed, cancelled.status, cancelled.message) == (
        True,
        JobStatus.CANCELLED,
        "user asked",
    )
    assert cancelled.completed_at is not None
    assert cancelled == await store.get_job(job.id)
    again, changed = await store.end_job_if_active(job.id, JobStatus.FAILED, message="too late")
    assert (changed, again) == (False, cancelled)
    with pytest.raises(JobNotFound):
        await store.end_job_if_active("nope", JobStatus.CANCELLED)


async def test_end_job_if_active_leaves_a_completed_job_and_reports_it(store: JobStore) -> None:
    job = await store.create_job("t", ["a"])
    await store.seal_total(job.id, "a", total=0)
    ended, changed = await store.end_job_if_active(job.id, JobStatus.CANCELLED, message="late")
    assert (changed, ended.status, ended.message) == (False, JobStatus.COMPLETED, "")


async def test_two_cancels_racing_end_the_job_once(store: JobStore) -> None:
    job = await store.create_job("t", ["a"])
    outcomes = await asyncio.gather(
        *(store.end_job_if_active(job.id, JobStatus.CANCELLED, message=f"#{i}") for i in range(2))
    )
    assert sorted(changed for _, changed in outcomes) == [False, True]
    [(winner, _)] = [outcome for outcome in outcomes if outcome[1]]
    assert all(ended == winner for ended, _ in outcomes)
    assert winner.status is JobStatus.CANCELLED
