"""The operator's overview reads, the same on every store backend: counts
per job type, the watch list (stuck, waiting, re-driving jobs with the
monitor's last action) and the search of the job list."""

from __future__ import annotations

from datetime import timedelta

import pytest

from jobtrack.errors import InvalidRequest
from jobtrack.model import Job, JobStatus
from jobtrack.store import (
    JobQuery,
    JobStore,
    SearchField,
    TypeCounts,
    WatchQuery,
    WatchState,
)
from tests.conftest import SteppingClock


async def _job(store: JobStore, job_type: str = "scan", **attributes: object) -> Job:
    return await store.create_job(job_type, ["a"], attributes=attributes)


async def test_counts_per_type_with_stuck_waiting_and_redriving(
    store: JobStore, clock: SteppingClock
) -> None:
    old = await _job(store)  # active, then stuck
    waiting = await _job(store)
    redriven = await _job(store)
    reconciled = await _job(store)
    back = await _job(store)  # waiting, then re-driven: re-driving
    await store.start_stage(old.id, "a")
    done = await _job(store)
    await store.seal_total(done.id, "a", total=0)  # completes at once
    failed = await _job(store)
    await store.end_job(failed.id, JobStatus.FAILED, message="gone")
    other = await _job(store, "import")
    await store.end_job(other.id, JobStatus.CANCELLED)
    clock.advance(600)
    threshold = clock.now - timedelta(seconds=300)
    for job in (waiting, redriven, reconciled, back):
        await store.start_stage(job.id, "a")  # written since the threshold
    await store.add_event(waiting.id, "reconciled", "counts set")
    await store.add_event(waiting.id, "waiting", "left alone")
    await store.add_event(waiting.id, "reconciled", "counts set again")  # still waiting
    await store.add_event(redriven.id, "redriven", "3 items again")
    await store.add_event(reconciled.id, "reconciled", "counts set")
    await store.add_event(back.id, "waiting", "left alone")
    await store.add_event(back.id, "redriven", "2 items again")
    await store.add_event(failed.id, "waiting", "ended: not counted")
    await store.add_event(old.id, "cancelled", "not the monitor's")

    counts = await store.count_by_type(stuck_before=threshold)

    assert counts == [
        TypeCounts("import", cancelled=1),
        TypeCounts(
            "scan",
            in_progress=5,
            completed=1,
            failed=1,
            stuck=1,
            waiting=1,
            redriving=3,
        ),
    ]
    assert counts[1].active == 5
    stats = await store.stats(stuck_before=threshold)
    assert (stats.stuck, stats.waiting) == (counts[1].stuck, counts[1].waiting)


async def test_counts_of_an_empty_store(store: JobStore, clock: SteppingClock) -> None:
    assert await store.count_by_type(stuck_before=clock.now) == []


async def test_the_watch_list_with_the_monitors_last_action(
    store: JobStore, clock: SteppingClock
) -> None:
    stuck = await _job(store)
    clock.advance(600)
    threshold = clock.now - timedelta(seconds=300)
    waiting = await _job(store)
    redriven = await _job(store)
    await _job(store)  # active, moving, untouched by the monitor: not listed
    ended = await _job(store)
    await store.add_event(waiting.id, "waiting", "left alone: a 5 queued")
    await store.add_event(redriven.id, "reconciled", "a: 1 → 2 reconciled")
    action = await store.add_event(redriven.id, "redriven", "3 missing items published again")
    await store.add_event(ended.id, "redriven", "again")
    await store.end_job(ended.id, JobStatus.FAILED)

    listed = await store.list_watched(WatchQuery(stuck_before=threshold))

    assert [w.job_id for w in listed] == [redriven.id, waiting.id, stuck.id]
    first, second, third = listed
    assert first.states == [WatchState.REDRIVING]
    assert first.action is not None
    assert (first.action.kind, first.action.message, first.action.id) == (
        "redriven",
        "3 missing items published again",
        action.id,
    )
    assert first.action.at == action.at
    assert first.action.job_id == redriven.id
    assert second.states == [WatchState.WAITING]
    assert second.action is not None
    assert second.action.kind == "waiting"
    assert (third.states, third.action, third.job_type) == ([WatchState.STUCK], None, "scan")
    assert third.status is JobStatus.PENDING
    assert third.updated_at == stuck.updated_at


async def test_the_watch_list_filtered_and_paged(store: JobStore, clock: SteppingClock) -> None:
    stuck_scan = await _job(store)
    stuck_import = await _job(store, "import")
    clock.advance(600)
    threshold = clock.now - timedelta(seconds=300)
    waiting = [await _job(store) for _ in range(3)]
    for job in waiting:
        await store.add_event(job.id, "waiting", "left alone")
    await store.add_event(stuck_scan.id, "waiting", "left alone, then stuck")

    def query(**filters: object) -> WatchQuery:
        return WatchQuery(stuck_before=threshold, **filters)  # type: ignore[arg-type]

    stuck = await store.list_watched(query(state=WatchState.STUCK))
    assert [w.job_id for w in stuck] == [stuck_import.id, stuck_scan.id]
    assert stuck[1].states == [WatchState.STUCK, WatchState.WAITING]
    waiting_ids = [w.job_id for w in await store.list_watched(query(state=WatchState.WAITING))]
    assert waiting_ids == [*(job.id for job in reversed(waiting)), stuck_scan.id]
    imports = await store.list_watched(query(job_type="import"))
    assert [w.job_id for w in imports] == [stuck_import.id]
    assert await store.list_watched(query(state=WatchState.REDRIVING)) == []
    pages = [
        [w.job_id for w in await store.list_watched(query(limit=2, offset=offset))]
        for offset in (0, 2, 4)
    ]
    assert pages == [
        [waiting[2].id, waiting[1].id],
        [waiting[0].id, stuck_import.id],
        [stuck_scan.id],
    ]


def test_a_watch_page_is_bounded() -> None:
    with pytest.raises(InvalidRequest):
        WatchQuery(stuck_before=SteppingClock().now, limit=201)
    with pytest.raises(InvalidRequest):
        WatchQuery(stuck_before=SteppingClock().now, offset=-1)


SCAN_PATH = (SearchField("scan", "collection.path"),)


async def _ids(
    store: JobStore, search: str, fields: tuple[SearchField, ...] = SCAN_PATH
) -> set[str]:
    jobs = await store.list_jobs(JobQuery(search=search, search_fields=fields))
    return {job.id for job in jobs}


async def test_search_by_a_declared_field_case_insensitively(store: JobStore) -> None:
    holidays = await _job(store, collection={"id": "c1", "path": "/photos/Holidays 2026"})
    garden = await _job(store, collection={"id": "c2", "path": "/photos/garden"})
    await _job(store, collection={"id": "c3"})  # the path missing
    await _job(store, collection="not an object")
    await _job(store)  # no attributes at all
    await _job(store, collection={"path": 2026})  # not a string: not searched
    # Another type's attributes are not its searchable field.
    await _job(store, "import", collection={"path": "/photos/holidays"})

    assert await _ids(store, "holidays") == {holidays.id}
    assert await _ids(store, "PHOTOS/") == {holidays.id, garden.id}
    assert await _ids(store, "2026") == {holidays.id}
    assert await _ids(store, "nowhere") == set()
    assert await _ids(store, "holidays", ()) == set()  # no field declared


async def test_search_takes_wildcards_literally(store: JobStore) -> None:
    percent = await _job(store, collection={"path": "/data/100% done"})
    underscore = await _job(store, collection={"path": "/data/a_b"})
    backslash = await _job(store, collection={"path": "C:\\data\\x"})
    await _job(store, collection={"path": "/data/100 percent, axb"})

    assert await _ids(store, "%") == {percent.id}
    assert await _ids(store, "0% d") == {percent.id}
    assert await _ids(store, "a_b") == {underscore.id}
    assert await _ids(store, "_") == {underscore.id}
    assert await _ids(store, "\\data\\") == {backslash.id}


async def test_search_by_id_prefix_with_the_other_filters(store: JobStore) -> None:
    first = await _job(store)
    second = await _job(store, "import")
    await store.end_job(second.id, JobStatus.CANCELLED)

    assert await _ids(store, first.id[:8]) == {first.id}
    assert await _ids(store, first.id) == {first.id}
    assert await _ids(store, first.id[1:9]) == set()  # a prefix, not any part
    assert await _ids(store, first.id.upper()) == {first.id}  # case-insensitive, as the rest
    assert await _ids(store, first.id[:8].upper()) == {first.id}
    cancelled = await store.list_jobs(
        JobQuery(status=JobStatus.CANCELLED, job_type="import", search=second.id[:6])
    )
    assert [job.id for job in cancelled] == [second.id]
    scans = await store.list_jobs(JobQuery(job_type="scan", search=second.id))
    assert scans == []


async def test_only_the_active_jobs(store: JobStore) -> None:
    pending = await _job(store)
    moving = await _job(store, "import")
    await store.start_stage(moving.id, "a")
    ended = await _job(store)
    await store.end_job(ended.id, JobStatus.CANCELLED)

    active = await store.list_jobs(JobQuery(active=True))
    assert [job.id for job in active] == [moving.id, pending.id]
    scans = await store.list_jobs(JobQuery(active=True, job_type="scan"))
    assert [job.id for job in scans] == [pending.id]


@pytest.mark.parametrize("term", ["a\x00b", "\ud800"])
def test_a_search_no_backend_can_compare_is_refused(term: str) -> None:
    with pytest.raises(InvalidRequest, match="a search must"):
        JobQuery(search=term)
