"""PostgreSQL stopped in the middle of a run: the tracker keeps the items,
never crashes or blocks the producer, and the counts end exact.

This stops and starts the local server (``pg_ctlcluster``), so it runs only
where that is possible: as root on a machine with the cluster installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from jobtrack.errors import StoreError, StoreUnavailable
from jobtrack.model import Job, JobStatus, StageCounts
from jobtrack.monitor import Monitor, Truth
from jobtrack.store.postgres import PostgresJobStore
from jobtrack.tracking import ProgressTracker

ITEMS = 600


def _cluster(action: str) -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action, "-m", "fast"]
        if action == "stop"
        else ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
        check=True,
        capture_output=True,
        timeout=60,
    )


@pytest.fixture(autouse=True)
def cluster_control() -> None:
    """Stopping the server needs pg_ctlcluster, and root."""
    if shutil.which("pg_ctlcluster") is None or not Path("/etc/postgresql").is_dir():
        pytest.skip("needs pg_ctlcluster to stop and start the server")
    if os.geteuid() != 0:
        pytest.skip("needs root to stop and start the server")


@pytest.mark.parametrize("coalesce", [True, False], ids=["coalesced", "per-item"])
async def test_counts_end_exact_across_a_server_restart(
    postgres_url: str, coalesce: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="jobtrack.tracking")
    store = PostgresJobStore(postgres_url, timeout=1.0)
    job = await store.create_job("t", ["thumbnail"])
    await store.seal_total(job.id, "thumbnail", total=ITEMS)
    tracker = ProgressTracker(
        store, coalesce=coalesce, flush_interval=0.05, retry_after=0.2, max_retry_after=1.0
    )
    slowest = 0.0
    try:
        for i in range(ITEMS):
            if i == ITEMS // 3:
                await asyncio.to_thread(_cluster, "stop")
            if i == 2 * ITEMS // 3:
                await asyncio.to_thread(_cluster, "start")
            started = time.monotonic()
            tracker.add(job.id, "thumbnail", item_key=f"item-{i}")
            slowest = max(slowest, time.monotonic() - started)
            await asyncio.sleep(0.002)
    finally:
        await asyncio.to_thread(_start_if_stopped)
    try:
        # Writes failed while the server was away, and reporting never blocked.
        failures = [r for r in caplog.records if "failed" in r.getMessage()]
        assert failures, "no write failed: the server was not really stopped"
        assert slowest < 0.05
        assert await tracker.flush(max_wait=60)
        done = await _read_when_up(store, job.id)
        assert done.stage("thumbnail").completed_items == ITEMS
        assert done.status is JobStatus.COMPLETED
    finally:
        await store.aclose()  # a failure here must not leave connections to warn in later tests


async def _read_when_up(store: PostgresJobStore, job_id: str) -> Job:
    """The job, read once the pool has a connection again: just after a
    restart it may take longer than the pool's 1-s timeout to make one."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return await store.get_job(job_id)
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def _start_if_stopped() -> None:
    with contextlib.suppress(subprocess.CalledProcessError):  # already running
        _cluster("start")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        probe = subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", "5432"], check=False)
        if probe.returncode == 0:
            return
        time.sleep(0.2)


class _AllDone:
    """A job type whose three items were all produced."""

    job_type = "lost-counts"

    async def truth(self, job: Job) -> Truth:
        return Truth({"a": StageCounts(3, 3, 0)}, done={"a": ["x", "y", "z"]})

    async def backlog(self) -> dict[str, int]:
        return {}

    can_redrive = False

    async def redrive(self, job: Job, missing: Mapping[str, Sequence[str]]) -> int:
        return 0


async def test_the_monitor_rides_out_a_server_restart_and_reconciles_after(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = PostgresJobStore(postgres_url, timeout=1.0)
    job = await store.create_job("lost-counts", ["a"])
    await store.seal_total(job.id, "a", total=3)  # its counts were all lost
    monitor = Monitor(store, [_AllDone()], stuck_after=0.5)
    stop = asyncio.Event()
    await asyncio.to_thread(_cluster, "stop")
    try:
        runner = asyncio.create_task(monitor.run(stop, interval=0.2))
        await asyncio.sleep(2.0)
        assert not runner.done()  # cycles fail, the loop goes on
        assert "monitor cycle failed" in caplog.text
    finally:
        await asyncio.to_thread(_start_if_stopped)
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(StoreError):
            if (await store.get_job(job.id)).status is JobStatus.COMPLETED:
                break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    stop.set()
    await runner
    assert [e.kind for e in await store.list_events(job.id)] == ["reconciled"]
    await store.aclose()
