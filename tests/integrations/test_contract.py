"""The integrations' contract: the same bodies over Celery (RabbitMQ and
Redis), Dramatiq (RabbitMQ), arq (Redis) and RQ (Redis), each against its
real broker, with real worker processes, on PostgreSQL (see ``contract.py``)."""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobtrack.model import JobStatus
from tests.integrations.contract import (
    STAGE,
    Driver,
    counted,
    event_kinds,
    job_of,
    key,
    monitor,
    run,
    wait_counted,
    wait_ended,
    wait_still,
)

#: driver name -> module under tests/integrations/drivers with ``make(tmp_path, name)``.
DRIVERS = {
    "celery-rabbitmq": "celery",
    "celery-redis": "celery",
    "dramatiq": "dramatiq",
    "arq": "arq",
    "rq": "rq",
}


@pytest.fixture(params=sorted(DRIVERS))
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Driver]:
    name: str = request.param
    module = importlib.import_module(f"tests.integrations.drivers.{DRIVERS[name]}")
    made: Driver = module.make(tmp_path, name)
    try:
        yield made
    finally:
        made.close()


@pytest.mark.timeout(600)  # RQ forks a work horse per job: about 100 jobs/s on 2 workers
def test_exact_counts_ten_thousand_tasks_complete_the_job_once(driver: Driver) -> None:
    driver.start_workers()
    job_id = driver.produce(10_000)
    job = wait_ended(driver, job_id, within=540)
    assert counted(job) == (10_000, 10_000, 0, True)
    assert job.status is JobStatus.COMPLETED
    assert job.completed_at is not None
    assert driver.raw_count() == 10_000
    assert event_kinds(driver, job_id) == []  # done on the workers' counts, no reconciling


def test_a_task_delivered_twice_counts_once(driver: Driver) -> None:
    job_id = driver.produce(20)
    for n in (3, 11):
        driver.send_again(job_id, key(n))
    driver.start_workers()
    wait_counted(driver, job_id, 20)
    wait_still(driver, job_id, 1.0)  # the copies are done too
    job = job_of(driver, job_id)
    assert counted(job) == (20, 20, 0, True)
    assert job.status is JobStatus.COMPLETED
    assert driver.raw_count() == 22  # the copies ran: the raw counter says 22


def test_a_worker_killed_mid_run_leaves_exact_counts_after_a_restart(driver: Driver) -> None:
    total = 400
    driver.start_workers()
    # Tasks long enough for the run to last about 3 s whatever the workers'
    # slots: when a quarter is counted, the killed worker still runs some.
    job_id = driver.produce(total, pause=3.0 * driver.slots / total)
    wait_counted(driver, job_id, 100)
    driver.kill_worker()
    # What the killed process held is delivered again (or, where the
    # framework drops it, sent again by the monitor from the ledger).
    wait_still(driver, job_id, 3.0)
    job = job_of(driver, job_id)
    if not job.status.terminal:
        report = monitor(driver, "--stuck-after", "1")
        assert report["stuck"] == 1, report
        job = wait_ended(driver, job_id)
    assert counted(job) == (total, total, 0, True)
    assert job.status is JobStatus.COMPLETED
    raw = driver.raw_count()
    print(f"{driver.name}: counted {total}, raw counter {raw}")
    if driver.kill_redelivers:
        assert raw > total  # the task the kill interrupted ran twice
    assert raw >= total


def test_purged_tasks_are_sent_again_by_the_monitor_exactly(driver: Driver) -> None:
    total = 300
    # Tasks of 100 ms: with every worker slot busy, the queue still holds
    # most of them when the first 50 are counted (a busy counter writes
    # every 250 ms; arq's 20 slots would run 300 tasks of 30 ms in 0.45 s).
    job_id = driver.produce(total, pause=0.1)
    driver.start_workers()
    wait_counted(driver, job_id, 50)
    purged = driver.purge()
    assert 0 < purged < total - 50
    job = wait_still(driver, job_id, 2.0)
    stage = job.stage(STAGE)
    assert stage.completed_items == total - purged
    report = monitor(driver, "--stuck-after", "1")
    assert (report["stuck"], report["items_redriven"]) == (1, purged), report
    job = wait_ended(driver, job_id)
    assert counted(job) == (total, total, 0, True)
    assert driver.raw_count() == total  # each lost task ran once, when sent again
    assert "redriven" in event_kinds(driver, job_id)


def test_a_task_failing_every_attempt_is_a_failed_item_with_its_error(driver: Driver) -> None:
    driver.start_workers()
    job_id = driver.produce(3, task="fail")
    job = wait_ended(driver, job_id)
    assert counted(job) == (3, 0, 3, True)
    assert job.status is JobStatus.FAILED  # every item failed: the stage failed, so the job

    async def failures() -> list[tuple[str, str, int]]:
        async with driver.app() as app:
            listed = await app.store.list_failures(job_id)
        return sorted((f.key, f.error, f.attempts) for f in listed)

    found = run(failures())
    assert [(k, "ValueError" in error) for k, error, _ in found] == [
        (key(0), True),
        (key(1), True),
        (key(2), True),
    ]
    assert all(f"task {n} failed" in error for n, (_, error, _) in enumerate(found))
    assert all(attempts == 3 for _, _, attempts in found)  # the first try and 2 retries


def test_a_worker_killed_before_its_flush_ends_exact_after_reconciling(driver: Driver) -> None:
    total = 50
    # Counts wait 60 s in each process before a flush: every task has ended
    # and been reported when the kill comes, and none of it is in the store.
    driver.env["JOBTRACK_FLUSH_INTERVAL_MS"] = "60000"
    driver.start_workers()
    job_id = driver.produce(total)
    deadline = time.monotonic() + 60
    while driver.raw_count() < total:
        assert time.monotonic() < deadline, driver.raw_count()
        time.sleep(0.05)
    time.sleep(0.5)  # the last task's end reported
    driver.kill_all()
    lost = counted(job_of(driver, job_id))
    if driver.acks_after_count:
        # Each ack waited for its count, whatever the interval: the kill lost
        # no count, and the broker has nothing unacked to deliver again.
        assert lost == (total, total, 0, True), lost
        assert job_of(driver, job_id).status is JobStatus.COMPLETED
        assert driver.raw_count() == total
        return
    assert lost[1] < total, lost
    driver.env["JOBTRACK_FLUSH_INTERVAL_MS"] = "100"
    driver.start_workers()
    time.sleep(1.1)
    report = monitor(driver, "--stuck-after", "1")
    assert report["stuck"] == 1, report
    job = wait_ended(driver, job_id)
    assert counted(job) == (total, total, 0, True)
    assert driver.raw_count() == total + report["items_redriven"]
