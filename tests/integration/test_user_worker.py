"""A real ``jobtrack worker --app tests.apps.simple:app`` on PostgreSQL and
RabbitMQ (a database and a virtual host of this module's own): jobs
produced by hand (the ledger written, the totals sealed, the item messages
published) end with exact counts, discovered work included, and so they do
when the worker is killed mid-run and started again."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from jobtrack.broker.rabbitmq import RabbitMQBroker
from jobtrack.jobs.messages import ItemMessage, encode_item
from jobtrack.model import Job, JobStatus
from jobtrack.store import JobStore, open_store
from jobtrack.store.ledger import LedgerItem
from tests.apps.simple import simple
from tests.postgres import database_url, scratch_database
from tests.postgres import require_server as require_postgres
from tests.rabbitmq import require_server as require_rabbitmq
from tests.rabbitmq import scratch_vhost, vhost_url

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.apps.simple:app"


@dataclass
class Worker:
    """A ``jobtrack -v worker --app …`` process."""

    env: dict[str, str]
    log: Path
    process: subprocess.Popen[str] | None = None

    def start(self, *args: str) -> None:
        stream: IO[str] = self.log.open("a")
        before = self.log.read_text().count("worker ready")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jobtrack", "-v", "worker", "--app", APP, *args],
            stdout=stream,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            cwd=ROOT,
        )
        stream.close()
        deadline = time.monotonic() + 60
        while self.log.read_text().count("worker ready") == before:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(0.05)

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    require_postgres()
    require_rabbitmq()
    base = tmp_path_factory.mktemp("user-worker")
    with scratch_database("userworker") as database, scratch_vhost("userworker") as vhost:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRACK_")}
        env |= {
            "JOBTRACK_STORE_URL": database_url(database),
            "JOBTRACK_BROKER_URL": vhost_url(vhost),
            "JOBTRACK_DATA_DIR": str(base / "state"),
        }
        yield env


@pytest.fixture
def worker(env: dict[str, str], tmp_path: Path) -> Iterator[Worker]:
    worker = Worker(env, tmp_path / "worker.log")
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
    env: dict[str, str], store: JobStore, worker: Worker
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
    env: dict[str, str], store: JobStore, worker: Worker
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
