"""``App.working``: an open app's handlers run in its own process, on the
in-process broker, so the process that produces a job works it too."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import jobtrack
from jobtrack.errors import InvalidRequest
from jobtrack.model import Job


def pages_app(settings: jobtrack.Settings) -> jobtrack.App:
    """Job type ``pages``: each ``fetch`` item adds ``payload`` parts to
    ``store``, and fails when its key starts with ``bad``."""
    app = jobtrack.App(settings)
    pages = app.job_type("pages", ["fetch", "store"])

    @pages.handler("fetch", feeds=["store"])
    def fetch(item: jobtrack.Item) -> None:
        if item.key.startswith("bad"):
            raise ValueError(f"no page {item.key}")
        for part in range(item.payload):
            item.add("store", f"{item.key}/{part}")

    @pages.handler("store")
    async def store(item: jobtrack.Item) -> None:
        await asyncio.sleep(0)

    return app


async def ended(app: jobtrack.App, job_id: str) -> Job:
    async with asyncio.timeout(60):
        while not (job := await app.store.get_job(job_id)).status.terminal:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    return job


@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_an_app_works_its_own_jobs_on_the_in_process_broker(
    tmp_path: Path, store: str
) -> None:
    url = "memory://" if store == "memory" else f"sqlite:///{tmp_path / 'jobtrack.db'}"
    settings = jobtrack.Settings(data_dir=tmp_path, store_url=url)
    app = pages_app(settings)
    async with app, app.working(concurrency=3):
        async with app.start_job("pages") as producer:
            await producer.add("fetch", [(f"p{n:02d}", n % 3) for n in range(20)])
            await producer.add("fetch", [("bad-1", 0), ("bad-2", 5)])
        job = await ended(app, producer.job.id)
        failures = await app.store.list_failures(job.id)
    parts = sum(n % 3 for n in range(20))
    fetch, stored = job.stage("fetch"), job.stage("store")
    assert (fetch.total_items, fetch.completed_items, fetch.failed_items) == (22, 20, 2)
    assert (stored.total_items, stored.completed_items, stored.failed_items) == (parts, parts, 0)
    assert stored.total_final
    assert [(f.stage, f.key, f.error) for f in failures] == [
        ("fetch", "bad-1", "ValueError: no page bad-1"),
        ("fetch", "bad-2", "ValueError: no page bad-2"),
    ]


async def test_working_needs_the_app_open_and_a_handler(tmp_path: Path) -> None:
    settings = jobtrack.Settings(data_dir=tmp_path, store_url="memory://")
    app = pages_app(settings)
    with pytest.raises(InvalidRequest, match="needs the app open"):
        async with app.working():
            pass
    bare = jobtrack.App(settings)
    bare.job_type("plain", ["one"])
    async with bare:
        with pytest.raises(InvalidRequest, match="no job type with a handler"):
            async with bare.working():
                pass


def test_a_worker_process_still_refuses_the_in_process_broker(tmp_path: Path) -> None:
    settings = jobtrack.Settings(data_dir=tmp_path, store_url=f"sqlite:///{tmp_path / 'j.db'}")
    with pytest.raises(InvalidRequest, match="not memory://"):
        jobtrack.Worker(app=pages_app(settings))
    with pytest.raises(InvalidRequest, match="give it the app"):
        jobtrack.Worker(settings, in_process=True)


async def test_run_open_needs_its_app_open(tmp_path: Path) -> None:
    settings = jobtrack.Settings(data_dir=tmp_path, store_url="memory://")
    worker = jobtrack.Worker(app=pages_app(settings), in_process=True)
    with pytest.raises(InvalidRequest, match="needs the worker's app open"):
        await worker.run_open(asyncio.Event())


async def test_a_worker_flushes_once_half_its_prefetch_waits(tmp_path: Path) -> None:
    # Acks wait for durable counts, so a queue holds at most its prefetch in
    # the tracker: waiting out the flush interval with it full would cap the
    # worker at prefetch items per interval.
    settings = jobtrack.Settings(data_dir=tmp_path, store_url="memory://")
    app = pages_app(settings)
    worker = jobtrack.Worker(app=app, prefetch=500, in_process=True)
    async with app:
        assert app.tracker.max_batch == 50_000
        stop, ready = asyncio.Event(), asyncio.Event()
        running = asyncio.create_task(worker.run_open(stop, ready=ready))
        await asyncio.wait_for(ready.wait(), 10)
        assert app.tracker.max_batch == 250
        stop.set()
        await running
