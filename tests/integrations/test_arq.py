"""The arq integration against a real Redis, with an arq worker in this
process (burst mode) and a SQLite store: what the contract does not reach
(timeouts, a retry on the last try, jobs not sent as items, the sender's
re-enqueueing, the backlog, refusals)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from arq.connections import RedisSettings
from arq.worker import Retry, Worker, func

import jobtrack
from jobtrack.errors import InvalidRequest, StoreUnavailable
from jobtrack.integrations import HEADER, TaskRef
from jobtrack.integrations.arq import ArqSender, ArqTracking, arq_job_id
from jobtrack.model import JobStatus

REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass
class Queue:
    """A queue of the test's own, and the arq ids whose keys go afterwards."""

    name: str
    ids: list[str] = field(default_factory=list)


@pytest.fixture
async def queue() -> AsyncIterator[Queue]:
    """A queue of the test's own; its keys, and its jobs', deleted afterwards."""
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except (redis.exceptions.ConnectionError, OSError):
        await client.aclose()
        pytest.skip("no Redis at " + REDIS_URL)
    made = Queue(f"jobtrack-test:arq-unit:{uuid.uuid4().hex[:12]}")
    try:
        yield made
    finally:
        keys = [made.name, f"{made.name}:health-check"]
        for arq_id in made.ids:
            keys += [f"arq:{kind}:{arq_id}" for kind in ("job", "result", "retry", "in-progress")]
        await client.delete(*keys)
        await client.aclose()


def make_tracking(tmp_path: Path, queue: str) -> tuple[jobtrack.App, ArqTracking]:
    settings = jobtrack.Settings(data_dir=tmp_path, store_url=f"sqlite:///{tmp_path / 'j.db'}")
    app = jobtrack.App(settings)
    tracking = ArqTracking(app, RedisSettings.from_dsn(REDIS_URL), queue_name=queue)
    tracking.job_type("emails", ["send"])
    return app, tracking


# arq's Worker.close calls redis-py's deprecated close().
@pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning")
async def test_a_worker_counts_done_failed_retried_and_timed_out_jobs(
    tmp_path: Path, queue: Queue
) -> None:
    app, tracking = make_tracking(tmp_path, queue.name)
    plain = f"{queue.name}:plain"
    queue.ids += [f"{queue.name}:own", plain]
    calls: list[tuple[int, dict[str, Any]]] = []

    async def ok(ctx: dict[Any, Any], n: int, **extra: Any) -> int:
        calls.append((n, extra))
        return n

    async def boom(ctx: dict[Any, Any], n: int) -> None:
        raise ValueError(f"boom {n}")

    async def again(ctx: dict[Any, Any], n: int) -> None:
        raise Retry(defer=0)

    async def slow(ctx: dict[Any, Any], n: int) -> None:
        await asyncio.sleep(5)

    async with app, tracking.start_job("emails") as job:
        ids = [await job.send("send", "ok", n, _key=f"ok{n}", extra=n) for n in (0, 1)]
        ids.append(await job.send("send", "ok", 2, _job_id=f"{queue.name}:own"))
        await job.send("send", "boom", 3, _key="boom")
        await job.send("send", "again", 4, _key="again")
        await job.send("send", "slow", 5, _key="slow")
    job_id = job.job.id
    assert ids == [
        arq_job_id(job_id, "send", "ok0"),
        arq_job_id(job_id, "send", "ok1"),
        f"{queue.name}:own",
    ]

    settings: dict[str, Any] = {
        "functions": [
            func(ok, name="ok"),
            func(boom, name="boom"),
            func(again, name="again"),
            func(slow, name="slow", timeout=0.3),
        ],
        "queue_name": queue.name,
        "redis_settings": RedisSettings.from_dsn(REDIS_URL),
        "max_tries": 2,
        "keep_result": 0,
        "poll_delay": 0.01,
        "burst": True,
        "handle_signals": False,
    }
    tracking.worker(settings)
    pool = await tracking.redis()  # a job not sent as an item: run, uncounted
    assert await pool.enqueue_job("ok", 99, _queue_name=queue.name, _job_id=plain) is not None
    await tracking.aclose()
    worker = Worker(**settings)
    try:
        await worker.main()  # burst: returns once the queue is empty
    finally:
        await worker.close()  # on_shutdown: the counts flushed

    assert sorted(calls, key=lambda c: c[0]) == [
        (0, {"extra": 0}),
        (1, {"extra": 1}),
        (2, {}),
        (99, {}),
    ]
    async with app:
        stored = await app.store.get_job(job_id)
        failures = await app.store.list_failures(job_id)
    stage = stored.stage("send")
    assert (stage.total_items, stage.completed_items, stage.failed_items) == (6, 3, 3)
    assert stored.status is JobStatus.COMPLETED
    found = {f.key: (f.error, f.attempts) for f in failures}
    assert found == {
        "boom": ("ValueError: boom 3", 1),
        "again": ("arq.worker.Retry: <Retry defer 0.00s> (retried: 2 tries used)", 2),
        "slow": ("TimeoutError: the job ran past its timeout of 0.3 s", 1),
    }


async def test_the_sender_enqueues_again_only_ids_not_in_the_queue(
    tmp_path: Path, queue: Queue
) -> None:
    app, tracking = make_tracking(tmp_path, queue.name)
    async with app, tracking.start_job("emails") as job:
        for n in range(3):
            queue.ids.append(await job.send("send", "ok", n, _key=f"k{n}"))
    job_id = job.job.id
    running, finished, waiting = (arq_job_id(job_id, "send", f"k{n}") for n in range(3))
    assert queue.ids == [running, finished, waiting]
    sender = app.get_type("emails").sender
    assert isinstance(sender, ArqSender)
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        assert await client.zcard(queue.name) == 3
        assert await sender.backlog("send") == 3
        await client.set(f"arq:in-progress:{running}", b"1", px=60_000)
        assert await sender.backlog("send") == 2  # a running job is left out
        body = await client.get(f"arq:job:{running}")
        # As arq leaves a finished job: out of the queue, its body gone, its result kept.
        await client.zrem(queue.name, finished)
        await client.delete(f"arq:job:{finished}")
        await client.set(f"arq:result:{finished}", b"kept", px=60_000)
        pool = await tracking.redis()
        assert await pool.enqueue_job("ok", 1, _job_id=finished, _queue_name=queue.name) is None
        async with app:
            items = await app.store.ledger_items(job_id, "send", ["k0", "k1", "k2"])
            await sender.send(job.job, "send", items)
        await tracking.aclose()
        assert sorted(await client.zrange(queue.name, 0, -1)) == sorted(
            i.encode() for i in (running, finished, waiting)
        )
        assert await client.get(f"arq:job:{running}") == body
        assert await client.exists(f"arq:result:{finished}") == 0
        assert await client.exists(f"arq:job:{finished}") == 1
    finally:
        await client.aclose()


async def test_what_is_refused(tmp_path: Path, queue: Queue) -> None:
    app, tracking = make_tracking(tmp_path, queue.name)
    app.job_type("plain", ["s"])
    with pytest.raises(InvalidRequest, match="'plain' does not send arq jobs"):
        tracking.start_job("plain")
    async with app, tracking.start_job("emails") as job:
        with pytest.raises(InvalidRequest, match="'jobtrack' is jobtrack's own"):
            await job.send("send", "ok", jobtrack={})
        with pytest.raises(InvalidRequest, match="_defer_by is seconds"):
            await job.send("send", "ok", _defer_by="soon")  # type: ignore[arg-type]
        queue.ids.append(await job.send("send", "ok", 1, _key="one"))
    await tracking.aclose()
    with pytest.raises(InvalidRequest, match="need their functions"):
        tracking.worker({"functions": []})
    with pytest.raises(InvalidRequest, match="a class or a dict"):
        tracking.worker(42)


async def ok(ctx: dict[Any, Any], n: int) -> int:
    """An arq function that returns ``n``."""
    return n


async def again(ctx: dict[Any, Any], n: int) -> None:
    """An arq function that asks for a retry.

    :raises Retry: always.
    """
    raise Retry(defer=60)


async def test_a_function_used_without_its_worker_starts_the_counter_off_the_loop(
    tmp_path: Path, queue: Queue
) -> None:
    app, tracking = make_tracking(tmp_path, queue.name)
    async with app, tracking.start_job("emails") as job:
        for key in ("k1", "k2"):
            queue.ids.append(await job.send("send", "ok", 1, _key=key))
    counter = tracking.counter
    opened_on_a_loop: list[bool] = []
    original = counter._started

    def started() -> Any:
        if not counter.running:
            opened_on_a_loop.append(asyncio._get_running_loop() is not None)
        return original()

    counter._started = started  # type: ignore[method-assign]
    counted = tracking.function(ok)
    header = TaskRef(job.job.id, "send", "k1").header()
    assert await counted.coroutine({"job_try": 1}, 7, **{HEADER: header}) == 7
    await asyncio.to_thread(counter.close)  # as the worker's shutdown does
    # A run cancelled, settled after the counter was closed.
    ctx: dict[Any, Any] = {
        "redis": await tracking.redis(),
        "job_id": f"{queue.name}:gone",
        "jobtrack_cancelled": (TaskRef(job.job.id, "send", "k2"), "CancelledError: x", 1),
    }
    await tracking._settle(ctx)
    await asyncio.to_thread(counter.close)
    await tracking.aclose()
    assert opened_on_a_loop == [False, False]
    async with app:
        stage = (await app.store.get_job(job.job.id)).stage("send")
    assert (stage.total_items, stage.completed_items, stage.failed_items) == (2, 1, 1)


async def test_a_counter_that_cannot_start_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, tracking = make_tracking(tmp_path, "unused")
    counter = tracking.counter

    def down() -> None:
        raise StoreUnavailable("the store is down")

    counter.start = down  # type: ignore[method-assign]
    counted = tracking.function(ok)
    header = TaskRef("j1", "send", "k1").header()
    with caplog.at_level(logging.WARNING, logger="jobtrack.integrations.arq"):
        assert await counted.coroutine({"job_try": 1}, 3, **{HEADER: header}) == 3
    assert [
        r.getMessage()
        for r in caplog.records
        if getattr(r, "action", None) == "task_counter_not_started"
    ] == ["the task counter could not start: the store is down; a task's end is not counted"]
    assert (counter.running, counter.reported) == (False, 0)


async def test_a_retry_before_the_last_try_touches_the_job(tmp_path: Path, queue: Queue) -> None:
    app, tracking = make_tracking(tmp_path, queue.name)
    async with app, tracking.start_job("emails") as job:
        queue.ids.append(await job.send("send", "again", 1, _key="again"))
    counted = tracking.function(again, max_tries=2)
    header = TaskRef(job.job.id, "send", "again").header()
    with pytest.raises(Retry):
        await counted.coroutine({"job_try": 1}, 1, **{HEADER: header})
    await asyncio.to_thread(tracking.counter.close)
    async with app:
        stage = (await app.store.get_job(job.job.id)).stage("send")
    assert (stage.message, stage.completed_items, stage.failed_items) == (
        "retrying: again and maybe more",
        0,
        0,
    )
