"""The integrations' contract: what a framework's driver does for the test
bodies of ``test_contract.py``, which run the same over every framework.

Every driver's app module declares the jobtrack job type ``contract``, one
stage ``work``, whose items are the framework's tasks:

- ``ok``: ``HINCRBY`` the raw counter (a Redis hash field, the naive
  Sidekiq-style counter), sleep ``pause`` seconds, return;
- ``fail``: raise ``ValueError("task N failed")`` on every attempt; the
  framework retries it (2 retries, no delay) before it fails for good.

Items are keyed ``k00000``, ``k00001``... Every process of a driver runs
with :attr:`Driver.env`: the store (a PostgreSQL database of its own), the
framework's broker (a RabbitMQ virtual host or Redis names of its own), the
raw counter's key.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from jobtrack.model import Job
from jobtrack.runtime import App
from tests.apps.harness import monitor_once

TYPE = "contract"
STAGE = "work"


def key(n: int) -> str:
    """The key of the ``n``-th item."""
    return f"k{n:05d}"


class Driver(Protocol):
    """One framework (on one broker) under the contract."""

    name: str
    """``celery-rabbitmq``, ``celery-redis``, ``dramatiq``, ``arq``, ``rq``."""
    app_spec: str
    """``module:attr`` of the jobtrack App, for ``jobtrack monitor --app``."""
    env: dict[str, str]
    """The environment of every process of the test."""
    slots: int
    """How many tasks the test's workers run at once, in all."""
    kill_redelivers: bool
    """Whether the framework delivers again a task whose worker was killed
    while running it (then the raw counter over-counts it)."""
    acks_after_count: bool
    """Whether the framework acks a task only once its count is durable (a
    flush before the ack): a worker killed before its flush has acked
    nothing it ran, and the broker delivers it again."""

    def app(self) -> App:
        """A jobtrack App (unopened) for this test process: the same job
        type, store and sender as the workers'."""
        ...

    def produce(self, n: int, *, task: str = "ok", pause: float = 0.0) -> str:
        """Open a job of ``contract``, send ``n`` tasks ``task`` as the items
        of ``work`` (keys ``key(0)``...), seal it; its id."""
        ...

    def send_again(self, job_id: str, item: str) -> None:
        """Deliver the task of ``item`` once more: the same task id and the
        same jobtrack reference, as a redelivery would."""
        ...

    def start_workers(self) -> None:
        """Start the framework's workers, 2 processes (or a concurrency of 2),
        and return once they consume."""
        ...

    def kill_worker(self) -> None:
        """SIGKILL one process that is running tasks (a prefork child, a work
        horse, the worker itself where it runs them), and have the framework
        or the test start a replacement, as a supervisor would."""
        ...

    def kill_all(self) -> None:
        """SIGKILL every worker process of the test."""
        ...

    def stop_workers(self) -> None:
        """Stop the workers gracefully and wait for them."""
        ...

    def purge(self) -> int:
        """Drop the tasks waiting in the framework's queue; how many."""
        ...

    def raw_count(self) -> int:
        """The raw counter: how many times ``ok`` tasks ran."""
        ...

    def close(self) -> None:
        """Stop what runs and drop the test's queues and keys."""
        ...


def run(coro: Any) -> Any:
    """Run a coroutine from the sync test bodies."""
    return asyncio.run(coro)


async def _job(app: App, job_id: str) -> Job:
    async with app:
        return await app.store.get_job(job_id)


def job_of(driver: Driver, job_id: str) -> Job:
    """The job as the store has it now."""
    job: Job = run(_job(driver.app(), job_id))
    return job


def counted(job: Job) -> tuple[int, int, int, bool]:
    """The stage's (total, completed, failed, sealed)."""
    stage = job.stage(STAGE)
    return (stage.total_items, stage.completed_items, stage.failed_items, stage.total_final)


def wait_ended(driver: Driver, job_id: str, within: float = 120.0) -> Job:
    """The job once it has ended; fails after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        job = job_of(driver, job_id)
        if job.status.terminal:
            return job
        assert time.monotonic() < deadline, f"job not ended: {counted(job)}"
        time.sleep(0.1)


def wait_counted(driver: Driver, job_id: str, at_least: int, within: float = 60.0) -> Job:
    """The job once ``at_least`` of its items are counted."""
    deadline = time.monotonic() + within
    while True:
        job = job_of(driver, job_id)
        stage = job.stage(STAGE)
        if stage.completed_items + stage.failed_items >= at_least:
            return job
        assert time.monotonic() < deadline, f"not {at_least} counted: {counted(job)}"
        time.sleep(0.05)


def wait_still(driver: Driver, job_id: str, seconds: float) -> Job:
    """The job once its counts have not moved for ``seconds``."""
    last = counted(job_of(driver, job_id))
    still_since = time.monotonic()
    while time.monotonic() - still_since < seconds:
        time.sleep(0.1)
        now = counted(job_of(driver, job_id))
        if now != last:
            last, still_since = now, time.monotonic()
    return job_of(driver, job_id)


def monitor(driver: Driver, *args: str) -> dict[str, Any]:
    """One cycle of ``jobtrack monitor`` on the driver's app; its report."""
    return monitor_once(driver.app_spec, driver.env, *args)


def event_kinds(driver: Driver, job_id: str) -> list[str]:
    """The kinds of the job's events, oldest first (``reconciled``,
    ``redriven``, ``failed``...: what the monitor did to it)."""

    async def read() -> list[str]:
        async with driver.app() as app:
            events = await app.store.list_events(job_id)
        return [event.kind for event in events]

    kinds: list[str] = run(read())
    return kinds
