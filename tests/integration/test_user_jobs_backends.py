"""One user job type end to end on every store: in process (the in-memory
store and broker, the worker's consumers built by hand), and with real
``jobtrack worker`` processes on RabbitMQ with a SQLite file store, and with
PostgreSQL (a database and a virtual host of this module's own). The same
job gives the same exact counts and failures everywhere; and with the
consumers' progress off, the monitor alone completes it from the ledger."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from jobtrack.jobs.consumer import ItemConsumer
from jobtrack.jobs.executors import HandlerRunner
from jobtrack.jobs.sealer import Sealer
from jobtrack.model import JobStatus, utc_now
from jobtrack.monitor import Monitor
from jobtrack.runtime import App, Settings
from tests.apps.harness import WorkerProcess, counts, ended, monitor_once, produce
from tests.apps.tally import MAX_ATTEMPTS
from tests.apps.tally import app as tally_app
from tests.postgres import database_url, scratch_database
from tests.postgres import require_server as require_postgres
from tests.rabbitmq import require_server as require_rabbitmq
from tests.rabbitmq import scratch_vhost, vhost_url

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

APP = "tests.apps.tally:app"

PAYLOADS: dict[str, Any] = {f"page-{n:02d}": {"parts": n % 3} for n in range(24)}
PAYLOADS |= {"bad-1": {"fail": True, "parts": 2}, "flaky-1": {"flaky": 2, "parts": 1}}
PAYLOADS |= {"lost-1": {"flaky": MAX_ATTEMPTS + 1}}
PARTS = sum(n % 3 for n in range(24)) + 1
FAILURES = [
    ("work", "bad-1", "ValueError: told to fail bad-1", 1),
    ("work", "lost-1", f"ConnectionError: flaky lost-1 (attempt {MAX_ATTEMPTS})", MAX_ATTEMPTS),
]


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[str, str]]:
    """A PostgreSQL database and a RabbitMQ virtual host for this module."""
    require_postgres()
    require_rabbitmq()
    with scratch_database("ujbackends") as database, scratch_vhost("ujbackends") as vhost:
        yield database_url(database), vhost_url(vhost)


def environment(store_url: str, broker_url: str, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRACK_")}
    return env | {
        "JOBTRACK_STORE_URL": store_url,
        "JOBTRACK_BROKER_URL": broker_url,
        "JOBTRACK_DATA_DIR": str(data_dir),
        "JOBTRACK_WORKERS": "1",
    }


@asynccontextmanager
async def in_process_workers(app: App) -> AsyncIterator[None]:
    """The consumers a worker runs, on ``app``'s own (in-memory) broker."""
    runner, sealer = HandlerRunner(2), Sealer(app.store)
    tally = app.get_type("tally")
    subscriptions = []
    for stage in tally.handlers:
        consumer = ItemConsumer(
            tally,
            stage,
            store=app.store,
            broker=app.broker,
            tracker=app.tracker,
            runner=runner,
            sealer=sealer,
            durable_within=None,
        )
        subscriptions.append(await app.broker.consume(consumer.queue, consumer.handle, prefetch=4))
    try:
        yield
    finally:
        for subscription in subscriptions:
            await subscription.cancel(grace=5)
        await sealer.aclose()
        runner.shutdown()


async def check_completed(app: App, job_id: str) -> None:
    job = await ended(app.store, job_id)
    assert job.status is JobStatus.COMPLETED, job.to_dict()
    assert counts(job, "work") == (len(PAYLOADS), len(PAYLOADS) - 2, 2, True)
    assert counts(job, "extra") == (PARTS, PARTS, 0, True)
    failures = await app.store.list_failures(job_id)
    assert [(f.stage, f.key, f.error, f.attempts) for f in failures] == FAILURES


async def all_recorded(app: App, job_id: str) -> None:
    """Wait until every item's outcome is in the ledger (progress off)."""
    async with asyncio.timeout(60):
        while True:
            tally = await app.store.tally_ledger(job_id)
            seen = {stage: (t.items, t.recorded) for stage, t in tally.items()}
            if seen == {"work": (len(PAYLOADS), len(PAYLOADS)), "extra": (PARTS, PARTS)}:
                return
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("progress", [True, False], ids=["progress-on", "progress-off"])
async def test_in_process_on_the_memory_store(tmp_path: Path, progress: bool) -> None:
    memory = Settings(
        data_dir=tmp_path,
        store_url="memory://",
        broker_url="memory://",
        consumer_progress=progress,
    )
    async with tally_app.with_settings(memory) as app, in_process_workers(app):
        [job_id] = await produce(app, "tally", "work", [PAYLOADS])
        if not progress:
            await all_recorded(app, job_id)
            job = await app.store.get_job(job_id)
            assert (counts(job, "work"), counts(job, "extra")) == (
                (len(PAYLOADS), 0, 0, True),
                (PARTS, 0, 0, False),
            )
            later = utc_now() + timedelta(hours=1)
            monitor = Monitor(app.store, app.reconcilers(), clock=lambda: later)
            report = await monitor.cycle()
            assert (report.stuck, report.reconciled, report.completed) == (1, 1, 1)
        await check_completed(app, job_id)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
@pytest.mark.parametrize("progress", [True, False], ids=["progress-on", "progress-off"])
async def test_real_workers_on_rabbitmq(
    servers: tuple[str, str], tmp_path: Path, backend: str, progress: bool
) -> None:
    postgres_url, broker_url = servers
    store_url = f"sqlite:///{tmp_path / 'jobs.db'}" if backend == "sqlite" else postgres_url
    env = environment(store_url, broker_url, tmp_path / "state")
    worker_env = env | {"JOBTRACK_CONSUMER_PROGRESS": "on" if progress else "off"}
    worker = WorkerProcess(APP, worker_env, tmp_path / "worker.log")
    async with tally_app.with_settings(Settings.from_env(env)) as app:
        try:
            worker.start("--concurrency", "2")
            [job_id] = await produce(app, "tally", "work", [PAYLOADS])
            if not progress:
                await all_recorded(app, job_id)
                report = monitor_once(APP, env, "--stuck-after", "0.001")
                assert (report["reconciled"], report["completed"]) == (1, 1), report
            await check_completed(app, job_id)
            assert worker.stop() == 0
        finally:
            if worker.running():
                worker.stop()
    assert "Traceback" not in worker.log.read_text()
