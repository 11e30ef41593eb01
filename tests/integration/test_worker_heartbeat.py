"""A real ``jobtrack worker`` (PostgreSQL and RabbitMQ of this module's
own) writes heartbeats with what it counted, a last beat with stopped_at on
SIGTERM, and, SIGKILLed, shows as dead once two intervals have passed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from jobtrack.model import utc_now
from jobtrack.store import JobStore, WorkerInfo, WorkerState, open_store
from tests.apps.harness import WorkerProcess, scratch_env
from tests.integration.test_user_worker import ended, produce

pytestmark = [pytest.mark.timeout(120)]

APP = "tests.apps.simple:app"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with scratch_env(
        tmp_path_factory.mktemp("heartbeat"), "heartbeat", JOBTRACK_HEARTBEAT_INTERVAL="1"
    ) as env:
        yield env


@pytest.fixture
async def store(env: dict[str, str]) -> AsyncIterator[JobStore]:
    store = open_store(env["JOBTRACK_STORE_URL"])
    yield store
    await store.aclose()


async def _the_worker(store: JobStore, pid: int) -> WorkerInfo:
    (found,) = [w for w in await store.list_workers() if w.beat.pid == pid]
    return found


async def test_beats_count_the_items_and_sigterm_writes_stopped_at(
    env: dict[str, str], store: JobStore, tmp_path: Path
) -> None:
    worker = WorkerProcess(APP, env, tmp_path / "worker.log")
    worker.start("--concurrency", "2")
    assert worker.process is not None
    pid = worker.process.pid
    try:
        job_id = await produce(env, store, {f"k{i}": {"parts": 2} for i in range(5)})
        await ended(store, job_id, within=60)
        await asyncio.sleep(1.5)  # one more beat after the last item
        info = await _the_worker(store, pid)
        points = await store.throughput(since=utc_now().replace(microsecond=0) - _minutes(5))
    finally:
        assert worker.stop() == 0

    assert info.state is WorkerState.LIVE
    assert info.beat.stages == ("simple/fetch", "simple/store")
    assert (info.beat.done, info.beat.failed, info.beat.concurrency) == (15, 0, 2)
    assert info.beat.interval == 1.0
    by_stage = {p.stage: 0 for p in points}
    for point in points:
        by_stage[point.stage] += point.done
    assert by_stage == {"fetch": 5, "store": 10}
    stopped = await _the_worker(store, pid)
    assert stopped.state is WorkerState.STOPPED
    assert stopped.beat.stopped_at is not None
    assert stopped.beat.stopped_at >= info.beat.beat_at


async def test_a_sigkilled_worker_is_dead_after_two_intervals(
    env: dict[str, str], store: JobStore, tmp_path: Path
) -> None:
    worker = WorkerProcess(APP, env, tmp_path / "worker.log")
    worker.start()
    assert worker.process is not None
    pid = worker.process.pid
    await asyncio.sleep(1.2)
    assert (await _the_worker(store, pid)).state is WorkerState.LIVE
    worker.kill()
    killed = time.monotonic()

    while (info := await _the_worker(store, pid)).state is not WorkerState.DEAD:
        assert time.monotonic() - killed < 3.0, info
        await asyncio.sleep(0.05)

    assert info.beat.stopped_at is None
    assert 2.0 < (utc_now() - info.beat.beat_at).total_seconds() < 3.5


def _minutes(n: int) -> timedelta:
    return timedelta(minutes=n)
