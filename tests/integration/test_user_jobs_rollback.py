"""The rollback switch on a user's job type: real ``jobtrack worker``
processes with ``JOBTRACK_CONSUMER_PROGRESS=off`` on PostgreSQL and
RabbitMQ (a database and a virtual host of this module's own) count
nothing, but record each item's outcome in the ledger; one
``jobtrack monitor --once`` then brings the job to completed with exact
counts, its discovered stage counted and sealed in the same cycle."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobtrack.model import JobStatus
from jobtrack.runtime import App
from jobtrack.store import JobStore
from tests.apps.harness import WorkerProcess, counts, monitor_once, produce
from tests.apps.tally import MAX_ATTEMPTS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

APP = "tests.apps.tally:app"


@pytest.fixture
def workers(env: dict[str, str], tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    off = env | {"JOBTRACK_CONSUMER_PROGRESS": "off"}
    started = [WorkerProcess(APP, off, tmp_path / f"worker-{n}.log") for n in range(2)]
    yield started
    for worker in started:
        if worker.running():
            worker.stop()


async def recorded(store: JobStore, job_id: str, expected: dict[str, int]) -> None:
    """Wait until every item of each stage has its outcome in the ledger
    (``expected``: the items per stage)."""
    deadline = time.monotonic() + 60
    while True:
        tally = await store.tally_ledger(job_id)
        seen = {stage: (t.items, t.counted, t.recorded) for stage, t in tally.items()}
        if seen == {stage: (n, n, n) for stage, n in expected.items()}:
            return
        assert time.monotonic() < deadline, seen
        await asyncio.sleep(0.1)


async def test_with_progress_off_the_monitor_alone_completes_the_job_from_the_ledger(
    env: dict[str, str], app: App, workers: list[WorkerProcess]
) -> None:
    payloads: dict[str, Any] = {f"page-{n:02d}": {"parts": n % 3} for n in range(30)}
    payloads |= {f"bad-{n}": {"fail": True, "parts": 2} for n in range(4)}
    payloads |= {f"flaky-{n}": {"flaky": 2, "parts": 1} for n in range(3)}  # done on attempt 2
    payloads |= {f"lost-{n}": {"flaky": MAX_ATTEMPTS + 1} for n in range(2)}  # fails for good
    parts = sum(n % 3 for n in range(30)) + 3
    for worker in workers:
        worker.start("--concurrency", "4")
    [job_id] = await produce(app, "tally", "work", [payloads])
    await recorded(app.store, job_id, {"work": len(payloads), "extra": parts})
    for worker in workers:
        assert worker.stop() == 0
        assert "Traceback" not in worker.log.read_text()

    before = await app.store.get_job(job_id)
    assert before.status is JobStatus.PENDING or not before.status.terminal
    assert counts(before, "work") == (len(payloads), 0, 0, True)
    assert counts(before, "extra") == (parts, 0, 0, False)  # its feeder has not completed
    tally = await app.store.tally_ledger(job_id)
    assert (tally["work"].failed, tally["extra"].failed) == (6, 0)

    report = monitor_once(APP, env, "--stuck-after", "0.001")
    assert (report["stuck"], report["reconciled"], report["completed"]) == (1, 1, 1), report
    assert (report["redriven"], report["items_redriven"], report["failed"]) == (0, 0, 0), report
    job = await app.store.get_job(job_id)
    assert job.status is JobStatus.COMPLETED, job.to_dict()
    assert counts(job, "work") == (len(payloads), len(payloads) - 6, 6, True)
    assert counts(job, "extra") == (parts, parts, 0, True)
    failures = await app.store.list_failures(job_id)
    assert [(f.key, f.error, f.attempts) for f in failures] == [
        *((f"bad-{n}", f"ValueError: told to fail bad-{n}", 1) for n in range(4)),
        *(
            (f"lost-{n}", f"ConnectionError: flaky lost-{n} (attempt {MAX_ATTEMPTS})", MAX_ATTEMPTS)
            for n in range(2)
        ),
    ]
    events = await app.store.list_events(job_id)
    [reconciled] = [event for event in events if event.kind == "reconciled"]
    assert reconciled.data == {
        "work": {"before": [0, 0, len(payloads)], "after": [len(payloads) - 6, 6, len(payloads)]},
        "extra": {"before": [0, 0, parts], "after": [parts, 0, parts]},
    }
    # A second cycle finds nothing to do.
    again = monitor_once(APP, env, "--stuck-after", "0.001")
    assert (again["stuck"], again["reconciled"]) == (0, 0), again
