"""A real ``jobtrack worker --app tests.apps.simple:app`` on PostgreSQL and
RabbitMQ (a database and a virtual host of this module's own): jobs
produced by hand (the ledger written, the totals sealed, the item messages
published) end with exact counts, discovered work included, and so they do
when the worker is killed mid-run and started again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobtrack.broker.rabbitmq import RabbitMQBroker
from jobtrack.jobs.messages import ItemMessage, encode_item
from jobtrack.model import Job, JobStatus
from jobtrack.store import JobStore, open_store
from jobtrack.store.ledger import LedgerItem
from tests.apps.harness import WorkerProcess, scratch_env
from tests.apps.simple import simple

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

APP = "tests.apps.simple:app"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with scratch_env(tmp_path_factory.mktemp("user-worker"), "userworker") as env:
        yield env


@pytest.fixture
def worker(env: dict[str, str], tmp_path: Path) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(APP, env, tmp_path / "worker.log")
    yield worker
    if worker.process is not None and worker.process.poll() is None:
        worker.stop()


@pytest.fixture
async def store(env: dict[str, str]) -> AsyncIterator[JobStore]:
    store = open_store(env["JOBTRACK_STORE_URL"])
    yield store
    await store.aclose()


async def produce(env: dict[str, str], store: JobStore, payloads: dict[str, Any]) -> str:
    """A ``simple`` job with these fetch items: ledger first, total sealed,
    then one message per item."""
    job = await store.create_job(simple.name, simple.stages)
    items = [LedgerItem(key, payload) for key, payload in payloads.items()]
    assert await store.add_items(job.id, "fetch", items, seal=True) == len(items)
    broker = RabbitMQBroker(env["JOBTRACK_BROKER_URL"])
    try:
        await broker.publish_many(
            simple.queue("fetch"),
            [
                encode_item(ItemMessage(job.id, simple.name, "fetch", item.key, item.payload))
                for item in items
            ],
        )
    finally:
        await broker.aclose()
    return job.id


async def ended(store: JobStore, job_id: str, within: float = 180) -> Job:
    deadline = time.monotonic() + within
    while not (job := await store.get_job(job_id)).status.terminal:
        assert time.monotonic() < deadline, job.to_dict()
        await asyncio.sleep(0.1)
    return job


def counts(job: Job, stage: str) -> tuple[int, int, int, bool]:
    current = job.stage(stage)
    return current.total_items, current.completed_items, current.failed_items, current.total_final


async def test_a_user_worker_counts_every_item_and_the_discovered_ones_exactly(
    env: dict[str, str], store: JobStore, worker: WorkerProcess
) -> None:
    payloads: dict[str, Any] = {f"page-{n:02d}": {"parts": n % 4} for n in range(30)}
    payloads |= {"bad-1": {"fail": True, "parts": 5}, "bad-2": {"fail": True}}
    worker.start("--concurrency", "2")
    job_id = await produce(env, store, payloads)
    job = await ended(store, job_id)
    assert counts(job, "fetch") == (32, 30, 2, True)
    parts = sum(n % 4 for n in range(30))
    assert counts(job, "store") == (parts, parts, 0, True)
    failures = await store.list_failures(job_id)
    assert [(f.stage, f.key, f.error, f.attempts) for f in failures] == [
        ("fetch", "bad-1", "ValueError: told to fail bad-1", 1),
        ("fetch", "bad-2", "ValueError: told to fail bad-2", 1),
    ]
    tally = await store.tally_ledger(job_id)
    assert (tally["fetch"].items, tally["store"].items) == (32, parts)
    assert worker.stop() == 0
    assert "Traceback" not in worker.log.read_text()


async def test_a_worker_killed_mid_run_and_started_again_leaves_exact_counts(
    env: dict[str, str], store: JobStore, worker: WorkerProcess
) -> None:
    pages = 120
    payloads = {f"page-{n:03d}": {"parts": 3, "seconds": 0.01} for n in range(pages)}
    worker.start("--concurrency", "2")
    job_id = await produce(env, store, payloads)
    async with asyncio.timeout(120):  # some work counted, much left
        while (await store.get_job(job_id)).stage("store").completed_items < 30:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    worker.kill()
    killed = await store.get_job(job_id)
    assert not killed.status.terminal, killed.to_dict()
    assert killed.stage("store").completed_items < 3 * pages
    worker.start("--concurrency", "2")
    job = await ended(store, job_id)
    assert job.status is JobStatus.COMPLETED, job.to_dict()
    assert counts(job, "fetch") == (pages, pages, 0, True)
    assert counts(job, "store") == (3 * pages, 3 * pages, 0, True)
    assert await store.list_failures(job_id) == []
    assert worker.stop() == 0
