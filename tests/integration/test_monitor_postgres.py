"""The fallback monitor on PostgreSQL: the store and the catalog real, the
clock moved by hand. A thousand stuck jobs at once, with two monitors
racing for them on connections of their own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jobtrack.model import JobStatus
from jobtrack.monitor import Monitor
from jobtrack.pipeline.catalog.postgres import PostgresCatalog
from jobtrack.pipeline.stages import CACHE, THUMBNAIL
from jobtrack.store.postgres import PostgresJobStore
from tests.conftest import FrozenClock
from tests.postgres import database_url, new_schema
from tests.unit.test_monitor import STUCK_AFTER, World, consumed_but_not_shrinking, counts

JOBS = 1000


@pytest.fixture
async def world(postgres_url: str, tmp_path: Path) -> AsyncIterator[World]:
    clock = FrozenClock()
    store = PostgresJobStore(postgres_url, clock=clock)
    yield World(tmp_path, clock=clock, store=store, catalog=PostgresCatalog(store, clock=clock))
    await store.aclose()


@pytest.fixture
async def own_world(postgres_url: str, tmp_path: Path) -> AsyncIterator[World]:
    """A world in a schema of its own: the clock starts at the same moment in
    every test, and the change feed would see the other tests' jobs."""
    database = postgres_url.rsplit("/", 1)[-1]
    clock = FrozenClock()
    store = PostgresJobStore(database_url(database, schema=new_schema(database)), clock=clock)
    yield World(tmp_path, clock=clock, store=store, catalog=PostgresCatalog(store, clock=clock))
    await store.aclose()


async def test_a_thousand_stuck_jobs_two_monitors_each_job_once(
    world: World, postgres_url: str
) -> None:
    # A third crashed before counting (2 of 3 items counted), a third had
    # consumer progress off (none counted), a third lost one rendition.
    jobs = []
    for n in range(JOBS):
        made, counted = [(3, 2), (3, 0), (2, 2)][n % 3]
        jobs.append(await world.job(3, made=made, counted=counted, name=f"j{n}"))
    world.clock.advance(STUCK_AFTER + 1)
    # Two monitors, each on a pool of its own: they race for the same jobs.
    stores = [PostgresJobStore(postgres_url, clock=world.clock) for _ in range(2)]
    monitors = [
        Monitor(s, [world.reconciler], stuck_after=STUCK_AFTER, clock=world.clock, max_redrives=1)
        for s in stores
    ]
    reports = await asyncio.gather(*(m.cycle() for m in monitors))
    for store in stores:
        await store.aclose()
    handled = [job_id for report in reports for job_id in report.jobs]
    assert len(handled) == len(set(handled)) == JOBS  # each job by one monitor, once
    assert all(report.jobs for report in reports)  # and both monitors took some
    missing = JOBS // 3  # 333 jobs lost one rendition of each stage: re-driven once
    # The other 667 made everything: their counts are set to it, and they complete.
    assert sum(r.reconciled for r in reports) == JOBS - missing
    assert sum(r.completed for r in reports) == JOBS - missing
    assert sum(r.redriven for r in reports) == missing
    assert sum(r.items_redriven for r in reports) == 2 * missing
    assert sum(r.errors + r.moving + r.failed for r in reports) == 0
    for n, job in enumerate(jobs):
        after = await world.store.get_job(job.id)
        made = 2 if n % 3 == 2 else 3
        assert counts(after)[THUMBNAIL] == counts(after)[CACHE] == (3, made, 0)
        assert after.status is (JobStatus.IN_PROGRESS if made == 2 else JobStatus.COMPLETED)
        kinds = [e.kind for e in await world.store.list_events(job.id)]
        assert kinds == (["redriven"] if made == 2 else ["reconciled"])
    for stage in (THUMBNAIL, CACHE):
        assert len(world.queued(stage)) == missing
    # A second cycle at once changes nothing: every job was claimed.
    again = await Monitor(
        world.store, [world.reconciler], stuck_after=STUCK_AFTER, clock=world.clock
    ).cycle()
    assert (again.stuck, again.jobs) == (0, [])


@pytest.mark.parametrize(
    ("arriving", "once"),
    [(100, False), (50, False), (100, True)],
    ids=["growing", "steady", "growing-run-once"],
)
async def test_a_backlog_consumed_but_not_shrinking_is_slow_not_stuck(
    own_world: World, arriving: int, once: bool
) -> None:
    # Consumption read from PostgreSQL: the change feed, and count_items for
    # a monitor that starts afresh every cycle.
    await consumed_but_not_shrinking(own_world, arriving=arriving, once=once)
